"""Training-side tools of skinn-jax: JAM truth, data sets, training and evaluation.

Installed as ``skinn_jax.training``; from a checkout's root it is importable as ``training``.
"""
