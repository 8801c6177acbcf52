"""Model predictions at given parameter values, by tracing the model itself.

:func:`predict` substitutes the values of the sampled sites into
:func:`skinn_jax.inference.model.model` (called with ``predictions=True``, which records the
predicted image, time delays and binned v_rms as deterministic sites) and reads the predictions
and χ² terms from its trace (``numpyro.handlers``): nothing of the model is coded twice. For
posterior predictions over many draws use :class:`numpyro.infer.Predictive` on the same model.

Imports: :mod:`.data`, :mod:`.model`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from .data import SystemData
from .lensing.imaging import LensParams
from .lensing.lens import lens_params, with_central_image
from .model import ModelSetup, model, site_names


class Prediction(NamedTuple):
    """Model predictions at one parameter point (NumPy).

    Attributes:
        image: model image, counts/s per pixel (None in kinematics mode).
        time_delays: predicted delays of images B-D relative to A, days (None in kinematics mode).
        vrms: predicted binned v_rms, km/s (None in lensing mode).
        chi2: χ² of the terms present (``imaging``, ``time_delays``, ``kinematics``) and
            ``lens_eq_residual_arcsec``, the largest ``|β(θ_i) - β_s|`` of the solved images.
    """

    image: np.ndarray | None
    time_delays: np.ndarray | None
    vrms: np.ndarray | None
    chi2: dict


def trace_at(data: SystemData, setup: ModelSetup, values: dict, predictions: bool = True) -> dict:
    """The model's trace (site name -> value) at constrained ``values`` of the sampled sites.

    Keys of ``values`` that are not sampled sites of ``setup.mode`` are ignored (the model
    derives every deterministic site itself).
    """
    names = set(site_names(setup.mode))
    point = {k: jnp.asarray(v) for k, v in values.items() if k in names}
    missing = names - set(point)
    if missing:
        raise ValueError(f"values lack the sampled sites {sorted(missing)} of mode {setup.mode!r}")

    # one compiled program: run op by op, the model's first trace compiles each of its hundreds
    # of primitives separately (~15 s for the joint model on 2 CPU cores; ~2-6 s compiled)
    @jax.jit
    def values_of(point):
        tr = handlers.trace(handlers.substitute(model, data=point)).get_trace(
            data, setup, predictions=predictions
        )
        return {name: site["value"] for name, site in tr.items()}

    return values_of(point)


def predict(data: SystemData, setup: ModelSetup, values: dict) -> Prediction:
    """Predictions and χ² terms of :func:`~skinn_jax.inference.model.model` at constrained
    ``values`` of the sampled sites (read from the model's trace, :func:`trace_at`)."""
    sites = trace_at(data, setup, values)

    def get(name):
        return np.asarray(sites[name]) if name in sites else None

    chi2 = {}
    for term in ("imaging", "time_delays", "kinematics"):
        if f"chi2_{term}" in sites:
            chi2[term] = float(sites[f"chi2_{term}"])
    if "lens_eq_residual" in sites:
        chi2["lens_eq_residual_arcsec"] = float(sites["lens_eq_residual"])
    return Prediction(get("image_pred"), get("time_delays_pred"), get("vrms_pred"), chi2)


def lens_at(data: SystemData, setup: ModelSetup, values: dict) -> LensParams:
    """The imaging parameters (:class:`LensParams`, central image included) at constrained
    ``values`` of the sampled sites of a lensing or joint ``setup`` (the solved lens read from
    the model's trace, :func:`trace_at`)."""
    if setup.imaging is None:
        raise ValueError(f"mode {setup.mode!r} has no imaging: no lens parameters")
    sites = trace_at(data, setup, values, predictions=False)
    lens = lens_params(sites, setup.zero_point)
    return with_central_image(setup.imaging, lens)
