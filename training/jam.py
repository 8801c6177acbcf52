"""JAM truth: v_rms maps from jampy on checked MGEs (CONVENTIONS §3).

``jam_vrms(params, x, y)`` is the project's ground truth for the emulator. It calls jampy's
``jam_axi_proj`` (``align='cyl'``, ``moment='zz'``, analytic line-of-sight integral, no PSF) on
the checked multi-Gaussian expansions of :mod:`training.mge`, at the fiducial distances of
CONVENTIONS §4 unless others are given.

How a dense set of points is computed
-------------------------------------
jampy's cost is per evaluated point (an adaptive quadrature over ``N_light x N_mass`` Gaussian
pairs), so like jampy itself we evaluate it exactly on a polar grid in elliptical coordinates
(``n_radii`` log-spaced elliptical radii ``m = sqrt(x**2 + (y/q_light)**2)`` x ``n_angles``
eccentric anomalies in [0, pi/2]) and interpolate. Unlike jampy's bilinear interpolation we
interpolate ``v_rms**2`` with a bicubic spline in ``(ln m, angle)`` whose angular axis is extended
by the map's mirror symmetries (``angle -> -angle`` and ``pi - angle``), which makes the
interpolant smooth across the axes. ``JamSettings()`` (28 x 7 points) reproduces jampy's direct
evaluation to ~0.003 km/s median per map; ``benchmarks/bench_generator.py`` measures it against
tighter settings and tighter MGEs. Points closer to the centre than the grid's inner radius
(the centre pixel) are evaluated directly. JAM is singular exactly at (0, 0): such points are
moved to ``(CENTRE_OFFSET_ARCSEC, 0)``.

Zero and negative second moments
--------------------------------
For high ``beta_z`` and round light, the projected second moment can come out <= 0 in parts of
the map (paper Sec. 4.1). jampy reports such points as exactly 0 km/s (``jam_axi_proj`` returns
``sqrt(clip(v2, 0))``). The truth keeps that: v_rms is 0 km/s there and :class:`JamMap` counts
those pixels. Before the clip, though, the second moment is a smooth function that crosses zero,
so we take it *signed* from jampy's own projection routine (``psf_conv``, the function
``jam_axi_proj`` calls before it clips; :func:`jampy_signed_v2`), interpolate the smooth signed
function, and clip only at the end. Interpolating the clipped values instead would put the
spline's ringing around the kink into the truth. The signed values are also kept
(:attr:`JamMap.vrms_negative`): an emulator can learn the smooth function and clip its own output.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.interpolate import RectBivariateSpline

from skinn_jax.cosmology import FIDUCIAL, LensDistances, sigma_crit_msun_pc2
from skinn_jax.grid import QUADRANT_SIZE, quadrant_coordinates
from skinn_jax.params import PAPER_SPACE, space_of
from skinn_jax.profiles import SersicLight

from .mge import (
    MGE,
    light_mge,
    mass_mge,
    plain_light_mge,
    plain_mass_mge,
    power_law_mge,
    sersic_mge,
)

CENTRE_OFFSET_ARCSEC = 1e-4
"""JAM is singular at (0, 0): points there are evaluated at this offset along x."""


@dataclass(frozen=True)
class JamSettings:
    """Accuracy settings of the polar interpolation grid.

    Attributes:
        n_radii: number of log-spaced elliptical radii.
        n_angles: number of eccentric anomalies in [0, pi/2] (both ends included).
        direct: evaluate jampy at every point (exact, slow: ~0.3-1.5 ms per point).
    """

    n_radii: int = 28
    n_angles: int = 7
    direct: bool = False


DEFAULT_SETTINGS = JamSettings()


class JamModel(NamedTuple):
    """The MGE inputs of jampy for one parameter vector (units as jampy wants them).

    Attributes:
        surf_light: peak surface brightness of each light Gaussian (arbitrary units), ``(K_l,)``.
        sigma_light: dispersions of the light Gaussians, arcsec, ``(K_l,)``.
        q_light: observed axis ratio of each light Gaussian, ``(K_l,)`` (a light of several
            components has several).
        surf_mass: peak surface density of each mass Gaussian, Msun/pc^2, ``(K_m,)``.
        sigma_mass: dispersions of the mass Gaussians, arcsec, ``(K_m,)``.
        q_mass: observed axis ratio of the mass (every Gaussian).
        beta_z: constant anisotropy.
        inclination_deg: inclination, degrees.
        distance_mpc: angular-diameter distance of the lens D_d, Mpc.
        light_rel_error: checked MGE error of the light over 0.01-8 arcsec.
        mass_rel_error: checked MGE error of the mass over 0.01-8 arcsec.
    """

    surf_light: np.ndarray
    sigma_light: np.ndarray
    q_light: np.ndarray
    surf_mass: np.ndarray
    sigma_mass: np.ndarray
    q_mass: float
    beta_z: float
    inclination_deg: float
    distance_mpc: float
    light_rel_error: float
    mass_rel_error: float


def _component_params(space, p: np.ndarray, light: SersicLight) -> list[tuple[float, np.ndarray]]:
    """``(amplitude, parameter vector)`` per light component, each checked against ``space``."""
    light = SersicLight.checked(light)
    out = []
    for k, (amp, q, r_s, n) in enumerate(zip(*(np.atleast_1d(f) for f in light), strict=True)):
        pk = p.copy()
        pk[3], pk[4], pk[5] = q, r_s, n
        out.append((float(amp), space.validate(pk, what=f"light component {k}")))
    return out


def jam_model(
    params,
    distances: LensDistances = FIDUCIAL,
    *,
    plain_mge: bool = False,
    light: SersicLight | None = None,
) -> JamModel:
    """Build and check the MGEs for one parameter vector.

    Args:
        params: shape (8,) (the paper space, CONVENTIONS §1: fixed 0.08" core) or (9,) (the
            real-lens space, §9: ``r_core`` in arcsec last), validated against its box.
        distances: D_d, D_s, D_ds (Mpc) that set Sigma_crit and the arcsec -> pc scale.
        plain_mge: paper space only: one plain ``mge_fit_1d`` per profile (20 Gaussians) instead
            of the tabulated dispersions, the slow reference approach (checked and reported).
        light: a light of several Sérsic components (real-lens space). The tracer is then the
            sum of their MGEs, each Gaussian with its component's axis ratio, and the light
            entries of ``params`` (``q_light``, ``r_sersic``, ``n_sersic``) are not used; every
            component must lie in the box with the mass, anisotropy and inclination of
            ``params`` (inclination rule included).
    """
    space = space_of(params)
    p = space.validate(params)
    if p.ndim != 1:
        raise ValueError(f"jam_model takes one parameter vector, got shape {p.shape}")
    theta_e, gamma, q_mass, q_light, r_sersic, n_sersic, beta_z, inc = (float(v) for v in p[:8])
    if space is PAPER_SPACE:
        if light is not None:
            raise ValueError(
                "a light of several components needs the real-lens space (9 parameters)"
            )
        lights = [
            (
                1.0,
                plain_light_mge(r_sersic, n_sersic) if plain_mge else light_mge(r_sersic, n_sersic),
                q_light,
            )
        ]
        mass: MGE = plain_mass_mge(gamma) if plain_mge else mass_mge(gamma)
    else:
        if plain_mge:
            raise ValueError(
                "plain_mge is the paper space's reference; the real-lens MGEs are NNLS fits"
            )
        components = [(1.0, p)] if light is None else _component_params(space, p, light)
        lights = [(amp, sersic_mge(pk[4], pk[5]), pk[3]) for amp, pk in components]
        mass = power_law_mge(gamma, float(p[8]))
    kappa_amplitude = theta_e ** (gamma - 1.0) * (3.0 - gamma) / (1.0 + q_mass)
    sigma_crit = sigma_crit_msun_pc2(distances.D_d, distances.D_s, distances.D_ds)
    return JamModel(
        surf_light=np.concatenate([amp * m.peak for amp, m, _ in lights]),
        sigma_light=np.concatenate([m.sigma_arcsec for _, m, _ in lights]),
        q_light=np.concatenate([np.full(m.peak.size, q) for _, m, q in lights]),
        surf_mass=mass.peak * kappa_amplitude * float(sigma_crit),
        sigma_mass=mass.sigma_arcsec,
        q_mass=q_mass,
        beta_z=beta_z,
        inclination_deg=inc,
        distance_mpc=float(distances.D_d),
        light_rel_error=max(m.max_rel_error for _, m, _ in lights),
        mass_rel_error=mass.max_rel_error,
    )


def jampy_direct(model: JamModel, x: np.ndarray, y: np.ndarray, analytic_los: bool = True):
    """jampy's ``jam_axi_proj`` v_rms (km/s) evaluated exactly at each point (no interpolation).

    Args:
        model: MGE inputs from :func:`jam_model`.
        x, y: galaxy-frame coordinates, arcsec, 1-D of equal length, none exactly at (0, 0).
        analytic_los: jampy's analytic line-of-sight integral (True, the truth) or its numerical
            one (False; slow, used as an independent check).
    """
    from jampy.axi.jam_axi_proj import jam_axi_proj

    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    kl, km = model.surf_light.size, model.surf_mass.size
    # nrad * nang > number of points makes jampy evaluate every point directly; with
    # analytic_los=False it integrates numerically on its own (nrad, nang) grid instead.
    nrad, nang = (10**6, 10**6) if analytic_los else (60, 20)
    with contextlib.redirect_stdout(io.StringIO()):
        jam = jam_axi_proj(
            model.surf_light, model.sigma_light, model.q_light,
            model.surf_mass, model.sigma_mass, np.full(km, model.q_mass),
            model.inclination_deg, 0.0, model.distance_mpc, x, y,
            align="cyl", moment="zz", beta=np.full(kl, model.beta_z),
            analytic_los=analytic_los, plot=False, quiet=True, nrad=nrad, nang=nang,
            interp=analytic_los,
        )  # fmt: skip
    return np.asarray(jam.model, dtype=float)


def jampy_signed_v2(model: JamModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """jampy's projected second moment ``<v_los**2>`` (km^2/s^2) *before* its clip at zero.

    The same computation as :func:`jampy_direct` (``align='cyl'``, ``moment='zz'``, analytic
    line-of-sight integral, no PSF, every point evaluated directly), through jampy's
    ``psf_conv``, which ``jam_axi_proj`` calls and then returns as ``sqrt(clip(v2, 0))``. Where
    the result is positive, ``sqrt`` of it is ``jampy_direct`` (tested); where it is negative the
    Jeans solution is unphysical and the truth is 0 km/s.

    Args:
        model: MGE inputs from :func:`jam_model`.
        x, y: galaxy-frame coordinates, arcsec, 1-D of equal length, none exactly at (0, 0).
    """
    from jampy.axi.jam_axi_proj import psf_conv

    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    kl, km = model.surf_light.size, model.surf_mass.size
    pc = model.distance_mpc * np.pi / 0.648  # arcsec -> pc, as jam_axi_proj converts
    # nrad * nang > number of points without PSF: psf_conv evaluates every point directly.
    v2, *_ = psf_conv(
        x * pc, y * pc, model.inclination_deg,
        model.surf_light, model.sigma_light * pc, model.q_light,
        model.surf_mass, model.sigma_mass * pc, np.full(km, model.q_mass),
        0.0, np.full(kl, model.beta_z), np.zeros(kl), False, "zz", "cyl",
        np.zeros(1), np.ones(1), 0.0, 0.0, 0.0, 10**6, 10**6, 1500, 1e-2, True, True,
    )  # fmt: skip
    return np.asarray(v2, dtype=float)


def _mirror_angles(angles: np.ndarray, values: np.ndarray, k: int = 3):
    """Extend samples on [0, pi/2] by f(-a) = f(a) and f(pi - a) = f(a) (k points each side)."""
    ext_angles = np.concatenate([-angles[k:0:-1], angles, np.pi - angles[-2 : -k - 2 : -1]])
    ext_values = np.concatenate([values[:, k:0:-1], values, values[:, -2 : -k - 2 : -1]], axis=1)
    return ext_angles, ext_values


def _elliptical_polar(x, y, q):
    radius = np.hypot(x, y / q)
    angle = np.arctan2(np.abs(y / q), np.abs(x))
    return radius, angle


def jam_vrms_squared(
    model: JamModel, x: np.ndarray, y: np.ndarray, settings: JamSettings = DEFAULT_SETTINGS
) -> np.ndarray:
    """Signed second moment ``<v_los**2>`` (km^2/s^2) at galaxy-frame points ``x, y``.

    Negative where JAM's Jeans solution is unphysical (the truth there is 0 km/s); see
    :func:`jam_vrms_squared_clipped` for the truth.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    shape = np.broadcast_shapes(x.shape, y.shape)
    x, y = (np.broadcast_to(v, shape).ravel() for v in (x, y))
    at_centre = (x == 0) & (y == 0)
    x = np.where(at_centre, CENTRE_OFFSET_ARCSEC, x)
    n_grid = settings.n_radii * settings.n_angles
    if settings.direct or x.size <= n_grid:
        return jampy_signed_v2(model, x, y).reshape(shape)

    q = float(np.min(model.q_light))
    radius, angle = _elliptical_polar(x, y, q)
    # Points inside the inner grid radius (at most a few pixels near the centre) go direct.
    r_inner = max(0.01, float(np.min(radius[radius >= 0.01], initial=np.inf)))
    inner = radius < r_inner
    log_r = np.linspace(np.log(0.95 * r_inner), np.log(1.01 * radius.max()), settings.n_radii)
    angles = np.linspace(0.0, np.pi / 2, settings.n_angles)
    lr, an = np.meshgrid(log_r, angles, indexing="ij")
    grid_x = np.exp(lr) * np.cos(an)
    grid_y = np.exp(lr) * np.sin(an) * q
    v2_grid = jampy_signed_v2(model, grid_x.ravel(), grid_y.ravel()).reshape(lr.shape)
    ext_angles, ext_v2 = _mirror_angles(angles, v2_grid)
    spline = RectBivariateSpline(log_r, ext_angles, ext_v2, kx=3, ky=3)
    out = np.empty(x.size)
    outer = ~inner
    out[outer] = spline(np.log(radius[outer]), angle[outer], grid=False)
    if inner.any():
        out[inner] = jampy_signed_v2(model, x[inner], y[inner])
    return out.reshape(shape)


def jam_vrms_squared_clipped(
    model: JamModel, x: np.ndarray, y: np.ndarray, settings: JamSettings = DEFAULT_SETTINGS
) -> np.ndarray:
    """Clipped second moment ``max(v_rms**2, 0)`` (km^2/s^2) at galaxy-frame points ``x, y``."""
    return np.clip(jam_vrms_squared(model, x, y, settings), 0.0, None)


def jam_vrms(
    params,
    x,
    y,
    distances: LensDistances = FIDUCIAL,
    settings: JamSettings = DEFAULT_SETTINGS,
    *,
    light: SersicLight | None = None,
) -> np.ndarray:
    """JAM v_rms (km/s) at galaxy-frame points: the emulator's truth.

    Args:
        params: shape (8,) in the order of ``skinn_jax.PARAM_NAMES`` (paper space) or (9,) with
            ``r_core`` (arcsec) last (real-lens space, ``skinn_jax.params.REAL_LENS_SPACE``).
        x: galaxy-frame x (along the projected major axis), arcsec, any shape.
        y: galaxy-frame y, arcsec, broadcastable with ``x``.
        distances: lens distances (Mpc); default the fiducial ones of CONVENTIONS §4.
        settings: accuracy settings of the polar interpolation grid.
        light: a light of several Sérsic components (real-lens space; see :func:`jam_model`).

    Returns:
        v_rms in km/s with the broadcast shape of ``x`` and ``y``; 0 where JAM's second moment
        is <= 0.

    Raises:
        ValueError: parameters outside the training box or non-finite.
        training.mge.MGEFitError: an MGE that does not reproduce its profile to 0.5 %.
    """
    model = jam_model(params, distances, light=light)
    return np.sqrt(jam_vrms_squared_clipped(model, x, y, settings))


class JamMap(NamedTuple):
    """A quadrant map of JAM truth and what is known about it.

    Attributes:
        vrms: v_rms (km/s) on the 276 x 276 quadrant of CONVENTIONS §5, float64.
        vrms_negative: ``-sqrt(-v2)`` (km/s) where the signed second moment ``v2`` is negative,
            0 elsewhere, so that ``vrms + vrms_negative = sign(v2) sqrt(|v2|)``: the smooth,
            signed velocity that crosses zero where ``vrms`` is clipped.
        n_zero: number of pixels whose second moment is <= 0 (stored as 0 km/s).
        light_rel_error, mass_rel_error: checked MGE errors.
        n_light, n_mass: number of Gaussians.
    """

    vrms: np.ndarray
    vrms_negative: np.ndarray
    n_zero: int
    light_rel_error: float
    mass_rel_error: float
    n_light: int
    n_mass: int


def jam_quadrant(
    params,
    distances: LensDistances = FIDUCIAL,
    settings: JamSettings = DEFAULT_SETTINGS,
    *,
    plain_mge: bool = False,
) -> JamMap:
    """JAM v_rms on the quadrant ``[:276, :276]`` (x <= 0, y <= 0) of the 551 x 551 map."""
    model = jam_model(params, distances, plain_mge=plain_mge)
    x, y = quadrant_coordinates()
    v2 = jam_vrms_squared(model, x, y, settings)
    assert v2.shape == (QUADRANT_SIZE, QUADRANT_SIZE)
    return JamMap(
        vrms=np.sqrt(np.clip(v2, 0.0, None)),
        vrms_negative=0.0 - np.sqrt(np.clip(-v2, 0.0, None)),  # 0.0 - x: no -0.0
        n_zero=int(np.sum(v2 <= 0.0)),
        light_rel_error=model.light_rel_error,
        mass_rel_error=model.mass_rel_error,
        n_light=int(model.surf_light.size),
        n_mass=int(model.surf_mass.size),
    )
