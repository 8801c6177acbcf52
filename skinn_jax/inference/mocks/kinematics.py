"""Seeded mock IFU kinematic data from JAM truth (paper Sec. 5.2), never from an emulator.

One system (:func:`make_mock_kinematics`):

- eight emulator parameters (given, or drawn in the training box) and the five sky parameters of
  paper Table 2: φ ~ U[0°, 90°] (Herculens convention, radians), centre ~ U[-0.15″, 0.15″]² and
  ``D_dt``, ``D_d`` ~ fiducial x U[0.8, 1.2], independently;
- 55 x 55 spaxels of 0.05″ centred on the origin, Gaussian PSF of FWHM 0.1″;
- the lens-light image that defines the bins: the exact-b_n Sérsic (CONVENTIONS §2) normalised to a
  total magnitude 19 (zero point 26), seeing-convolved and integrated over each spaxel, observed
  for 200 s with a sky of 20 mag/arcsec² and a read noise of 21 e⁻ per spaxel (gain 1 e⁻/count):
  ``signal = I t``, ``noise = sqrt(I t + sky t + rn²)`` in electrons per spaxel. The Voronoi bins
  (``vorbin``, target S/N 15, all spaxels) are computed from this expected signal and noise (a
  noisy realisation is returned too, for display, but does not drive the binning);
- the noiseless binned v_rms: JAM truth (``training.jam.jam_vrms``, evaluated at the true lens
  distances: ``D_d`` and ``D_s/D_ds = D_dt / ((1 + z_d) D_d)``), on the forward model's
  supersampled sub-pixels, luminosity-weighted and seeing-convolved per CONVENTIONS §6 with
  :mod:`skinn_jax.forward`;
- Gaussian noise per bin with a relative width that is 10 % at S/N <= 10, 5 % at S/N >= 40, and
  linear in S/N in between (S/N = vorbin's bin S/N); diagonal covariance of those widths.

JAM truth accuracy: ``jam_vrms`` evaluates jampy exactly on the polar grid of its default
``JamSettings()`` (log elliptical radius x eccentric anomaly) and interpolates ``v_rms²`` with a
bicubic spline; it reproduces jampy's direct evaluation to a few 0.001 km/s median
(``training/jam.py``); the binned values average many sub-pixels and inherit this accuracy
(measured against jampy's own PSF convolution in ``docs/forward_model.md``).

:func:`tabulated_jam_field` turns JAM truth at fixed parameters into a JAX field callable (for
the forward model under jit/grad): ``jam_vrms`` on a regular galaxy-frame table (one quadrant,
mirrored) interpolated with Keys' cubic convolution (C¹, third order;
:func:`skinn_jax.forward.cubic_interpolate`).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from skinn_jax.cosmology import FIDUCIAL, LensDistances
from skinn_jax.forward import (
    ForwardModel,
    MapField,
    SkyParams,
    VrmsField,
    binned_vrms_from_fields,
    build_forward_model,
    convolved_light_image,
    galaxy_frame_points,
    lens_light,
)
from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid
from skinn_jax.params import sample_params, validate_params
from skinn_jax.profiles import SersicLight, sersic_total_flux
from skinn_jax.training.jam import DEFAULT_SETTINGS, JamSettings, jam_vrms

# one compiled program each (op by op, each primitive would be compiled on its own), the forward
# model's tables constants in it
_convolved_light_image = jax.jit(convolved_light_image, static_argnums=0)
_lens_light = jax.jit(lens_light, static_argnums=0)
_binned_vrms_from_fields = jax.jit(binned_vrms_from_fields, static_argnums=0)


@dataclass(frozen=True)
class MockSettings:
    """Observation settings of the mock (defaults: paper Sec. 5.2 and Table 2).

    Attributes:
        n_pix: spaxels per side.
        pixel_scale: spaxel side, arcsec.
        psf_fwhm: Gaussian PSF FWHM, arcsec.
        supersampling: sub-pixels per spaxel side for the truth.
        target_sn: vorbin target S/N.
        magnitude: total magnitude of the lens light.
        zero_point: magnitude giving 1 count/s.
        exposure_s: exposure time, s.
        sky_magnitude: sky surface brightness, mag/arcsec².
        read_noise: read noise, electrons per spaxel.
        noise_sn: S/N values at which the relative v_rms noise is specified.
        noise_frac: relative v_rms noise at those S/N (linear in between, constant outside).
        phi_range_deg: range of the position angle, degrees.
        center_half_range: half-width of the centre range, arcsec.
        distance_frac: half-width of the relative range of ``D_dt`` and ``D_d`` around fiducial.
        z_d: deflector redshift.
        jam: accuracy settings of the JAM truth.
    """

    n_pix: int = 55
    pixel_scale: float = 0.05
    psf_fwhm: float = 0.1
    supersampling: int = 5
    target_sn: float = 15.0
    magnitude: float = 19.0
    zero_point: float = 26.0
    exposure_s: float = 200.0
    sky_magnitude: float = 20.0
    read_noise: float = 21.0
    noise_sn: tuple[float, float] = (10.0, 40.0)
    noise_frac: tuple[float, float] = (0.10, 0.05)
    phi_range_deg: tuple[float, float] = (0.0, 90.0)
    center_half_range: float = 0.15
    distance_frac: float = 0.2
    z_d: float = 0.5
    jam: JamSettings = field(default=DEFAULT_SETTINGS)


class MockKinematics(NamedTuple):
    """One mock system.

    Attributes:
        data: the kinematic data (noisy v_rms per bin, diagonal covariance, PSF, ``z_d``).
        params: true emulator parameters, (8,).
        sky: true sky parameters (floats).
        distances: the lens distances JAM was evaluated at (Mpc).
        vrms_true: noiseless binned v_rms, km/s, (n_bins,).
        sigma: noise width per bin, km/s, (n_bins,).
        bin_sn: vorbin S/N per bin, (n_bins,).
        light_expected: expected lens-light electrons per spaxel, ``(n_pix, n_pix)``.
        light_noise: noise per spaxel, electrons.
        light_observed: a noisy realisation of the light image, electrons.
        seed: the seed.
    """

    data: KinematicData
    params: np.ndarray
    sky: SkyParams
    distances: LensDistances
    vrms_true: np.ndarray
    sigma: np.ndarray
    bin_sn: np.ndarray
    light_expected: np.ndarray
    light_noise: np.ndarray
    light_observed: np.ndarray
    seed: int


def draw_sky_params(rng: np.random.Generator, settings: MockSettings = MockSettings()) -> SkyParams:
    """Draw the five sky parameters uniformly in the ranges of paper Table 2 (floats)."""
    lo, hi = settings.phi_range_deg
    phi = math.radians(rng.uniform(lo, hi))
    cx, cy = rng.uniform(-settings.center_half_range, settings.center_half_range, 2)
    f = settings.distance_frac
    d_dt = FIDUCIAL.D_dt * rng.uniform(1.0 - f, 1.0 + f)
    d_d = FIDUCIAL.D_d * rng.uniform(1.0 - f, 1.0 + f)
    return SkyParams(phi, float(cx), float(cy), float(d_dt), float(d_d))


def jam_distances(sky: SkyParams, z_d: float) -> LensDistances:
    """Lens distances with the sky's ``D_d`` and ``D_dt`` (``D_ds`` kept at its fiducial value).

    JAM depends on the distances only through ``D_d`` and ``D_s / D_ds = D_dt / ((1+z_d) D_d)``.
    """
    d_d, d_dt = float(sky.D_d), float(sky.D_dt)
    ratio = d_dt / ((1.0 + z_d) * d_d)
    d_ds = FIDUCIAL.D_ds
    return LensDistances(D_d=d_d, D_s=ratio * d_ds, D_ds=d_ds, D_dt=d_dt)


def noise_fraction(sn: np.ndarray, settings: MockSettings = MockSettings()) -> np.ndarray:
    """Relative v_rms noise for bin S/N ``sn`` (linear between the two anchors, clamped)."""
    return np.interp(sn, settings.noise_sn, settings.noise_frac)


def light_image(
    model: ForwardModel, params: np.ndarray, sky: SkyParams, settings: MockSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Expected lens-light electrons per spaxel and their noise (seeing-convolved, noiseless).

    Returns:
        ``(signal, noise)`` in electrons, each of shape ``grid.shape``.
    """
    q_light, r_sersic, n_sersic = (float(params[i]) for i in (3, 4, 5))
    with jax.enable_x64(True):
        mean_sb = np.asarray(_convolved_light_image(model, jnp.asarray(params), sky))
        flux = float(sersic_total_flux(r_sersic, n_sersic, q_light))  # arcsec²
    total_cps = 10.0 ** (-0.4 * (settings.magnitude - settings.zero_point))
    amplitude = total_cps / flux  # cps / arcsec²
    area = model.grid.pixel_area
    t = settings.exposure_s
    signal = mean_sb * amplitude * area * t
    sky_e = 10.0 ** (-0.4 * (settings.sky_magnitude - settings.zero_point)) * area * t
    noise = np.sqrt(signal + sky_e + settings.read_noise**2)
    return signal, noise


def voronoi_bins(
    grid: SpaxelGrid, signal: np.ndarray, noise: np.ndarray, target_sn: float, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi bins (``vorbin``) over all spaxels.

    Returns:
        ``(bin_map, sn)``: bin index per spaxel (``grid.shape``) and S/N per bin.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*VorBin is deprecated.*")
        from vorbin.voronoi_2d_binning import voronoi_2d_binning

    x, y = grid.coordinates()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*VorBin is deprecated.*")
        out = voronoi_2d_binning(
            x.ravel(), y.ravel(), signal.ravel(), noise.ravel(), target_sn,
            pixelsize=grid.pixel_scale, plot=False, quiet=True, seed=seed,
        )  # fmt: skip
    bin_num, sn = out[0], out[5]
    return bin_num.reshape(grid.shape).astype(np.int64), np.asarray(sn, dtype=float)


def jam_truth_bins(
    model: ForwardModel,
    params: np.ndarray,
    sky: SkyParams,
    distances: LensDistances,
    settings: JamSettings = DEFAULT_SETTINGS,
    light: SersicLight | None = None,
) -> np.ndarray:
    """Binned v_rms (km/s) from JAM truth at ``distances`` through the forward model (float64).

    ``jam_vrms`` is evaluated at every point of the model that affects a used bin; no distance
    rescaling is applied (JAM is run at the given distances). With ``light`` (several Sérsic
    components, real-lens space) JAM runs with their combined MGE as the tracer and the
    weighting light is their sum: ``I v_JAM**2 = sum_k I_k v_k**2`` (CONVENTIONS §9).
    """
    with jax.enable_x64(True):
        x_gal, y_gal = (np.asarray(a) for a in galaxy_frame_points(model, sky))
        if light is None:
            brightness = _lens_light(
                model, jnp.asarray(params), sky, jnp.asarray(x_gal), jnp.asarray(y_gal)
            )
        else:
            brightness = light.surface_brightness(jnp.asarray(x_gal), jnp.asarray(y_gal))
        needed = np.ones(model.point_shape, bool) if model.needed is None else model.needed
        vrms = np.zeros(model.point_shape)
        vrms[needed] = jam_vrms(
            params, x_gal[needed], y_gal[needed], distances, settings, light=light
        )
        return np.asarray(_binned_vrms_from_fields(model, brightness, jnp.asarray(vrms), sky))


def make_mock_kinematics(
    seed: int, params: np.ndarray | None = None, settings: MockSettings = MockSettings()
) -> MockKinematics:
    """Build one seeded mock system (see module docstring).

    Args:
        seed: seed of ``numpy.random.default_rng``; draws, in order, the eight parameters (if
            not given), the sky parameters, the v_rms noise and the light-image noise.
        params: the eight emulator parameters, (8,); drawn in the training box if None.
        settings: observation settings.

    Returns:
        The :class:`MockKinematics`.
    """
    rng = np.random.default_rng(seed)
    params = sample_params(rng) if params is None else validate_params(params)
    sky = draw_sky_params(rng, settings)
    grid = SpaxelGrid.regular((settings.n_pix, settings.n_pix), settings.pixel_scale)
    psf = PSF.gaussian(settings.psf_fwhm)
    all_used = np.zeros(grid.shape, dtype=np.int64)
    light_model = build_forward_model(
        grid, all_used, psf, supersampling=settings.supersampling, sampling="points"
    )
    signal, noise = light_image(light_model, params, sky, settings)
    bin_map, bin_sn = voronoi_bins(grid, signal, noise, settings.target_sn, seed=seed % 2**31)
    model = build_forward_model(
        grid, bin_map, psf, supersampling=settings.supersampling, sampling="points"
    )
    distances = jam_distances(sky, settings.z_d)
    vrms_true = jam_truth_bins(model, params, sky, distances, settings.jam)
    sigma = noise_fraction(bin_sn, settings) * vrms_true
    vrms_obs = vrms_true + sigma * rng.standard_normal(vrms_true.size)
    light_observed = signal + noise * rng.standard_normal(signal.shape)
    data = KinematicData.diagonal(grid, bin_map, vrms_obs, sigma, psf, settings.z_d)
    return MockKinematics(
        data=data,
        params=np.asarray(params, dtype=float),
        sky=sky,
        distances=distances,
        vrms_true=vrms_true,
        sigma=sigma,
        bin_sn=bin_sn,
        light_expected=signal,
        light_noise=noise,
        light_observed=light_observed,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------
# JAM truth as a JAX field


def tabulated_jam_field(
    params: np.ndarray,
    half_width: float,
    step: float = 0.005,
    distances: LensDistances = FIDUCIAL,
    settings: JamSettings = DEFAULT_SETTINGS,
) -> MapField:
    """JAM truth at fixed ``params`` as a JAX field covering ``|x|, |y| <= half_width``.

    ``jam_vrms`` is evaluated on one quadrant of a regular grid of spacing ``step`` (plus two
    stencil points beyond ``half_width``); the field is the library's one
    :class:`~skinn_jax.forward.MapField` of that fixed table (mirrored, cubic-convolution
    interpolated; ``params`` of a call are ignored, their gradient is zero).

    Args:
        params: the eight emulator parameters, (8,).
        half_width: half-width of the square the field must cover, arcsec.
        step: table spacing, arcsec.
        distances: lens distances of the JAM evaluation (default fiducial, as the emulator's).
        settings: JAM accuracy settings.

    Returns:
        ``vrms_at(params, x, y)``, km/s at galaxy-frame points in arcsec.
    """
    n_half = int(math.ceil(half_width / step)) + 2
    coords = np.arange(n_half + 1) * step
    xq, yq = np.meshgrid(coords, coords)
    quadrant = jam_vrms(params, xq, yq, distances, settings)  # [i, j] = v(x_j, y_i), x, y >= 0
    table = np.ascontiguousarray(quadrant[::-1, ::-1])  # x, y <= 0, centre last (symmetric map)
    return MapField(lambda p: table, step=step)


def field_for_forward_model(
    model: ForwardModel, params: np.ndarray, step: float = 0.005, **kwargs
) -> VrmsField:
    """:func:`tabulated_jam_field` covering every point ``model`` can request."""
    return tabulated_jam_field(params, model.max_radius + step, step, **kwargs)
