"""Gaussian kinematic likelihood (paper eq. 11, CONVENTIONS §6).

``log L = -1/2 r^T C^{-1} r`` with ``r = v_pred - v_data``, evaluated as ``-1/2 |L^{-1} r|²``
with the lower Cholesky factor ``L`` of ``C`` computed once when the data are built
(:class:`skinn_jax.ifu.KinematicData`) and a triangular solve per call. No normalisation constant
(it does not depend on the parameters).

:class:`KinematicLikelihood` is built once from the data and a v_rms field and maps the thirteen
parameters (eight emulator parameters, shape (8,), and a :class:`SkyParams` of the five of paper
Table 2) to log L. It is a pure function of those parameters: ``jax.jit``, ``jax.grad`` and
``jax.vmap`` apply directly::

    lik = KinematicLikelihood(data, emu.vrms_at)
    value = jax.jit(lik)(params, sky)
    grads = jax.jit(jax.grad(lik, argnums=(0, 1)))(params, sky)
    batch = jax.vmap(lik)(params_batch, sky_batch)

Called eagerly with concrete values it first checks them (finite parameters, positive distances,
centre inside the box the forward model was built for) and raises ``ValueError``; traced values
are not checked.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import solve_triangular
from jax.typing import ArrayLike

from .forward import (
    DEFAULT_CENTER_BOX,
    CenterBox,
    ForwardModel,
    SkyParams,
    VrmsField,
    build_forward_model_for_data,
    check_sky_params,
    predict_binned_vrms,
    predict_binned_vrms_components,
)
from .grid import HALF_WIDTH_ARCSEC
from .ifu import KinematicData
from .params import PARAM_NAMES, space_of
from .profiles import SersicLight

__all__ = [
    "KinematicLikelihood",
    "SkyParams",
    "gaussian_log_likelihood",
    "split_theta",
]

THETA_NAMES: tuple[str, ...] = PARAM_NAMES + SkyParams._fields
"""Names of the 13 parameters in the order of :func:`split_theta`."""


def gaussian_log_likelihood(residual: ArrayLike, cholesky: ArrayLike) -> Array:
    """``-1/2 r^T C^{-1} r`` from the lower Cholesky factor of ``C``.

    Args:
        residual: ``r``, shape ``(n,)`` or ``(..., n)``.
        cholesky: lower-triangular ``L`` with ``L L^T = C``, shape ``(n, n)``.

    Returns:
        log L (without normalisation), shape ``residual.shape[:-1]``.
    """
    residual = jnp.asarray(residual)
    chol = jnp.asarray(cholesky, dtype=residual.dtype)
    batch = residual.shape[:-1]
    columns = residual.reshape((-1, residual.shape[-1])).T
    whitened = solve_triangular(chol, columns, lower=True)
    return -0.5 * jnp.sum(whitened**2, axis=0).reshape(batch)


def split_theta(theta: ArrayLike) -> tuple[Array, SkyParams]:
    """Split a 13-vector (order :data:`THETA_NAMES`) into the eight parameters and sky params."""
    theta = jnp.asarray(theta)
    if theta.shape[-1] != 13:
        raise ValueError(f"theta must end in dimension 13 ({THETA_NAMES}), got {theta.shape}")
    return theta[..., :8], SkyParams.from_array(theta[..., 8:])


def _check_params(params) -> None:
    """Eager shape/finiteness check of concrete emulator parameters (8 or 9 of them)."""
    if isinstance(params, jax.core.Tracer):
        return
    p = np.asarray(params, dtype=float)
    if p.shape not in ((8,), (9,)):
        raise ValueError(
            f"params must have shape (8,) (paper space) or (9,) (real-lens space, r_core last), "
            f"got {p.shape}"
        )
    names = space_of(p).names
    for name, value in zip(names, p, strict=True):
        if not np.isfinite(value):
            raise ValueError(f"parameter {name} = {value} is not finite")


class KinematicLikelihood:
    """Kinematic log-likelihood of binned IFU v_rms data for the 8 + 5 parameters.

    Built once (eagerly) from the data and the field; afterwards a pure function of
    ``(params, sky)``.

    Args:
        data: the binned kinematic data (grid, bin map, v_rms, covariance, PSF, ``z_d``).
        vrms_at: galaxy-frame field ``vrms_at(params, x, y)`` in km/s at the fiducial
            distances, e.g. ``skinn_jax.Emulator.load().vrms_at``.
        supersampling, light, moment, convolution, center_box, field_half_width, sampling, crop:
            forward-model options, see :func:`skinn_jax.forward.build_forward_model`.
        physical_distances: refuse concrete ``D_dt < D_d`` (impossible: ``D_dt = (1 + z_d) D_d
            D_s / D_ds``); False for a model whose distance prior includes such pairs.

    Attributes:
        data: the data.
        vrms_at: the field.
        forward: the precomputed :class:`~skinn_jax.forward.ForwardModel`.
    """

    def __init__(
        self,
        data: KinematicData,
        vrms_at: VrmsField,
        *,
        supersampling: int | None = None,
        light: Literal["sersic", "herculens"] = "sersic",
        moment: Literal["second", "first"] = "second",
        convolution: Literal["fft", "direct"] = "fft",
        center_box: CenterBox = DEFAULT_CENTER_BOX,
        field_half_width: float = HALF_WIDTH_ARCSEC,
        sampling: Literal["auto", "centred", "points"] = "auto",
        crop: bool = True,
        physical_distances: bool = True,
    ) -> None:
        if not isinstance(data, KinematicData):
            raise ValueError(f"data must be a KinematicData, got {type(data).__name__}")
        if not callable(vrms_at):
            raise ValueError("vrms_at must be a callable vrms_at(params, x_gal, y_gal) -> km/s")
        self.data = data
        self.vrms_at = vrms_at
        self.physical_distances = physical_distances
        self.forward: ForwardModel = build_forward_model_for_data(
            data,
            supersampling=supersampling,
            light=light,
            moment=moment,
            convolution=convolution,
            center_box=center_box,
            field_half_width=field_half_width,
            sampling=sampling,
            crop=crop,
        )

    def predict(self, params: ArrayLike, sky: SkyParams, light: SersicLight | None = None) -> Array:
        """Predicted v_rms per bin, km/s, shape ``(n_bins,)``.

        Args:
            params: emulator parameters, shape (P,).
            sky: the five sky parameters.
            light: a light of several Sérsic components (CONVENTIONS §9); ``None``: the single
                Sérsic of ``params``.
        """
        _check_params(params)
        check_sky_params(self.forward, sky, physical=self.physical_distances)
        if light is None:
            return predict_binned_vrms(self.forward, self.vrms_at, params, sky, self.data.z_d)
        if not any(isinstance(f, jax.core.Tracer) for f in light):
            SersicLight.checked(light)
        return predict_binned_vrms_components(
            self.forward, self.vrms_at, params, light, sky, self.data.z_d
        )

    def residual(
        self, params: ArrayLike, sky: SkyParams, light: SersicLight | None = None
    ) -> Array:
        """``v_pred - v_data`` per bin, km/s."""
        pred = self.predict(params, sky, light)
        return pred - jnp.asarray(self.data.vrms, dtype=pred.dtype)

    def __call__(
        self, params: ArrayLike, sky: SkyParams, light: SersicLight | None = None
    ) -> Array:
        """log L (scalar) for the emulator parameters, the five sky parameters and, optionally,
        a light of several components."""
        return gaussian_log_likelihood(self.residual(params, sky, light), self.data.cholesky)

    def from_theta(self, theta: ArrayLike) -> Array:
        """log L from one 13-vector in the order of :data:`THETA_NAMES`."""
        params, sky = split_theta(theta)
        return self(params, sky)
