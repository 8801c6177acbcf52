"""True values of a mock system in the model's coordinates (mock users only).

Imports: :mod:`skinn_jax.inference.model`, :mod:`skinn_jax.inference.lensing`.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from ..lensing.lens import SOLVED, aperture_magnitude
from ..model import (
    LOG_THETA_E_SITE,
    RATIO,
    RATIO_SITE,
    RATIO_THETA_E_SITE,
    THETA_E_FRACTION_SITE,
    Mode,
    site_names,
)
from ..priors import (
    DEFAULT_PRIORS,
    Priors,
    fraction_from_log_theta_E,
    kinematic_scale_coordinates,
)
from .system import MockSystem


def truth_values(
    system: MockSystem, mode: Mode = "joint", priors: Priors = DEFAULT_PRIORS
) -> dict[str, np.ndarray]:
    """True values of the sampled sites of ``mode`` and of the main derived quantities.

    Kinematics mode has :data:`RATIO` (``D_dt / D_d``) and :data:`RATIO_SITE` (its log) and no
    ``D_dt`` or ``D_d``; joint mode has ``D_dt``, ``D_d`` and :data:`RATIO`. ``priors``: the
    boxes of the fit (kinematics mode's ``theta_E_fraction`` depends on them)."""
    t = system.truth
    p = t.params
    lens = t.lens
    log_ratio_theta_E = float(
        kinematic_scale_coordinates(p[0], math.log(t.sky.D_dt / t.sky.D_d))[1]
    )
    with jax.enable_x64(True):
        lens_mag_aperture = float(aperture_magnitude(t.lens_magnitude, p[4], p[5]))
    values = {
        "theta_E": p[0],
        "gamma": p[1],
        "q_mass": p[2],
        "phi": t.sky.phi,
        "center_x": t.sky.center_x,
        "center_y": t.sky.center_y,
        "gamma1": lens.gamma1,
        "gamma2": lens.gamma2,
        "q_light": p[3],
        "r_sersic_ratio": p[4] / p[0],
        "n_sersic": p[5],
        "lens_mag": t.lens_magnitude,
        "lens_mag_aperture": lens_mag_aperture,
        "src_x": lens.src_x,
        "src_y": lens.src_y,
        "src_r": lens.src_r,
        "src_n": lens.src_n,
        "src_mag": t.source_magnitude,
        "ps_x": lens.ps_x,
        "ps_y": lens.ps_y,
        "ps_y_abc": np.asarray(lens.ps_y)[:3],
        "ps_mag": t.ps_magnitudes,
        "beta_z": p[6],
        "inclination_deg": p[7],
        "D_dt": t.sky.D_dt,
        "D_d": t.sky.D_d,
        "log_D_dt": math.log(t.sky.D_dt),
        "log_D_d": math.log(t.sky.D_d),
        RATIO_SITE: math.log(t.sky.D_dt / t.sky.D_d),
        RATIO: t.sky.D_dt / t.sky.D_d,
        LOG_THETA_E_SITE: math.log(p[0]),
        RATIO_THETA_E_SITE: log_ratio_theta_E,
        THETA_E_FRACTION_SITE: float(
            fraction_from_log_theta_E(
                math.log(p[0]), log_ratio_theta_E, priors.theta_E, priors.D_dt, priors.D_d
            )
        ),
        "r_sersic": p[4],
        "theta_E_epl": lens.theta_E_epl,
        "e1": lens.e1,
        "e2": lens.e2,
    }
    keep = set(site_names(mode)) | {"r_sersic", "theta_E", "q_mass", "phi"}
    if mode != "kinematics":  # (kinematics mode has no D_dt, D_d: only their ratio)
        keep |= {"theta_E_epl", "e1", "e2", "gamma1", "gamma2", "src_x", "src_y", "ps_y"}
        keep |= {"D_dt", "D_d", "lens_mag"}
    if mode != "lensing":
        keep.add(RATIO)
    if mode == "kinematics":
        keep |= {RATIO_SITE, LOG_THETA_E_SITE}
    return {k: np.asarray(values[k], dtype=float) for k in values if k in keep}


def solver_start_from_truth(system: MockSystem) -> dict:
    """Solver start (:func:`build_setup`'s ``solver_start``) at a mock's true lens."""
    lens = system.truth.lens
    start = {k: float(np.asarray(getattr(lens, k))) for k in SOLVED}
    start["ps_y"] = np.asarray(lens.ps_y, float)
    return start
