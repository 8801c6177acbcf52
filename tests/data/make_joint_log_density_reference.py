"""Write ``joint_log_density_reference.npz``: the model's log density at fixed points.

Issue 19's case 4: the joint lensing + time-delay + kinematics model (and the lensing and
kinematics modes) must keep the same log density, to 1e-10 relative, through the refactoring into
composable blocks. This script evaluates, in float64, with the code of the commit it is run from,

- ``log_density(data, setup, values)``: the joint log density on the constrained sites, and
- the potential energy on the unconstrained space (``numpyro.infer.util.potential_energy``, the
  function the sampler sees: Jacobians of the sampler's bijections included),

for mock system 3 of ``tests/test_inference.py`` (``PARAMS``, 50 x 50 image, 31 x 31 spaxels) at
three points per mode: the truth and two deterministic perturbations of it inside the prior.
``tests/test_log_density_reference.py`` recomputes them with the code of its own commit.

Run from the repository root: ``python tests/data/make_joint_log_density_reference.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "joint_log_density_reference.npz"

PARAMS = np.array([1.2, 2.0, 0.8, 0.8, 0.9, 3.0, 0.1, 70.0])
SYSTEM = 3
MODES = ("joint", "lensing", "kinematics")
PERTURBATIONS = (0.0, 0.003, 0.005)
"""Relative size (of each site's prior-box width) of the three points' offsets from the truth."""
PS_STEP_ARCSEC = 0.02
"""Offsets of the sampled image positions, arcsec per unit of the relative size above."""


def points(truth: dict, names: tuple[str, ...], boxes: dict) -> list[dict]:
    """The three points of one mode: the truth and two seeded offsets inside the boxes."""
    out = []
    for k, eps in enumerate(PERTURBATIONS):
        rng = np.random.default_rng(1000 + k)
        point = {}
        for name in names:
            v = np.asarray(truth[name], float)
            if name in ("ps_x", "ps_y_abc"):
                v = v + eps * PS_STEP_ARCSEC * rng.standard_normal(v.shape)
            else:
                lo, hi = boxes[name]
                v = np.clip(v + eps * (hi - lo) * rng.standard_normal(v.shape), lo, hi)
            point[name] = v
        out.append(point)
    return out


def site_boxes(setup, data) -> dict:
    """The support of each sampled site (from the model's own trace)."""
    from numpyro import handlers

    from skinn_jax.inference.model import model

    with handlers.seed(rng_seed=0):
        trace = handlers.trace(model).get_trace(data, setup)
    boxes = {}
    for name, site in trace.items():
        if site["type"] == "sample" and not site.get("is_observed", False):
            fn = site["fn"]
            while hasattr(fn, "base_dist"):
                fn = fn.base_dist
            boxes[name] = (np.asarray(fn.low), np.asarray(fn.high))
    return boxes


def evaluate(data, setup, point: dict) -> tuple[float, float]:
    """``(log_density, potential_energy on the unconstrained space)`` at a constrained point."""
    from numpyro.infer.util import potential_energy, unconstrain_fn

    from skinn_jax.inference.model import log_density, model

    values = {k: jnp.asarray(v) for k, v in point.items()}
    ld = float(log_density(data, setup, values))
    z = unconstrain_fn(model, (data, setup), {}, values)
    pe = float(potential_energy(model, (data, setup), {}, z))
    return ld, pe


def build(mode: str, system, data, emulator):
    from skinn_jax.inference.mocks.truth import solver_start_from_truth
    from skinn_jax.inference.model import build_setup

    return build_setup(data, mode, emulator=emulator, solver_start=solver_start_from_truth(system))


def compute(system, data, emulator) -> dict[str, np.ndarray]:
    """Every mode's points, flattened site by site, and the two densities at each point."""
    from skinn_jax.inference.mocks.truth import truth_values
    from skinn_jax.inference.model import site_names

    arrays: dict[str, np.ndarray] = {}
    for mode in MODES:
        setup = build(mode, system, data, emulator)
        names = site_names(mode)
        pts = points(truth_values(system, mode), names, site_boxes(setup, data))
        dens = np.array([evaluate(data, setup, p) for p in pts])
        arrays[f"{mode}/log_density"] = dens[:, 0]
        arrays[f"{mode}/potential_energy"] = dens[:, 1]
        for name in names:
            arrays[f"{mode}/point/{name}"] = np.stack([p[name] for p in pts])
    return arrays


def mock(settings_only: bool = False):
    """Mock system 3 of tests/test_inference.py, its data and the paper-box emulator."""
    from skinn_jax.inference.data import SystemData
    from skinn_jax.inference.kinematics import load_emulator
    from skinn_jax.inference.lensing import ImagingSettings
    from skinn_jax.inference.mocks.kinematics import MockSettings
    from skinn_jax.inference.mocks.system import MockSystemSettings, make_mock_system

    settings = MockSystemSettings(
        imaging=ImagingSettings(n_pix=50), kinematics=MockSettings(n_pix=31)
    )
    system = make_mock_system(SYSTEM, PARAMS, settings=settings)
    return system, SystemData.from_mock(system), load_emulator()


def main() -> int:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=HERE
    ).stdout.strip()
    with jax.enable_x64(True):
        system, data, emulator = mock()
        arrays = compute(system, data, emulator)
    np.savez(OUT, commit=np.array(commit), **arrays)
    for mode in MODES:
        print(mode, arrays[f"{mode}/log_density"], arrays[f"{mode}/potential_energy"])
    print(f"wrote {OUT} (commit {commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
