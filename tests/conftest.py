"""Suite-wide settings: XLA compiles faster and reuses what it compiled.

The suite is dominated by XLA compilation (a fit compiles its potential, Hessian-vector products,
L-BFGS step and NUTS loops once each; evaluating them takes milliseconds). Two settings, made in
the controller before the xdist workers start, so that all processes share them:

- ``XLA_FLAGS=--xla_backend_optimization_level=0`` unless the caller sets an optimisation level:
  about half the compile time, at about twice the run time of compiled code;
- ``JAX_COMPILATION_CACHE_DIR``, a fresh directory per run unless set: JAX's persistent cache,
  so that a computation compiled again (a NUTS chunk of a fit extended by the convergence policy,
  the same model in another test or notebook kernel) is loaded, not recompiled.
"""

from __future__ import annotations

import os
import shutil
import tempfile

OPT_LEVEL_FLAG = "--xla_backend_optimization_level"


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has set the environment
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if OPT_LEVEL_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {OPT_LEVEL_FLAG}=0".strip()
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="skinn-jax-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._skinn_jax_cache = cache


def pytest_unconfigure(config):
    cache = getattr(config, "_skinn_jax_cache", None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
