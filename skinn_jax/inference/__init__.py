"""Mock systems and joint lensing + kinematics inference (installed as ``skinn_jax.inference``)."""
