"""Trained emulator checkpoints shipped with skinn-jax (installed as ``skinn_jax.checkpoints``)."""
