"""Seeded mock lens systems for joint lensing + time-delay + kinematics inference (paper Sec. 5.2).

System ``k`` (:func:`make_mock_system`):

- **Eight emulator parameters**: from the held-out test set (``data/test``, read with
  ``skinn_jax.training.generate.DataSet``; system ``k`` is test map ``k``, except system
  :data:`ZERO_PIXEL_SYSTEM`, which is the test map with the most zero-valued JAM pixels: the
  paper's worst case), or drawn uniformly in the training box with ``numpy.random.default_rng(k)``
  (``params_source="box"``; system :data:`ZERO_PIXEL_SYSTEM` is then :data:`ZERO_PIXEL_PARAMS`, a
  round, strongly radially anisotropic, steep lens whose JAM map has zero-valued pixels), or
  :data:`BUILTIN_PARAMS` for every ``k`` (``params_source="builtin"``: the typical lens of
  ``skinn-jax fit-mock``, independent of any data set), or given.
- **Sky parameters** (paper Table 2): φ ~ U[0°, 90°], centre ~ U[-0.15″, 0.15″]², D_Δt and D_d ~
  fiducial x U[0.8, 1.2], drawn by :func:`skinn_jax.inference.mocks.kinematics.make_mock_kinematics`
  with seed ``k`` (the same draws define the kinematics and the imaging).
- **Kinematics**: ``make_mock_kinematics(k, params)`` -- 55 x 55 spaxels of 0.05″, Gaussian PSF of
  FWHM 0.1″, Voronoi bins at S/N 15, binned v_rms from **JAM truth** at the system's distances
  (never the emulator), 5-10 % noise per bin.
- **Imaging** (:mod:`skinn_jax.inference.lensing`, Herculens): 70 x 70 pixels of 0.1″; mass = the
  emulator's cored power law (r_c = 0.08″) with Herculens's EPL parameters (EPL Einstein radius and
  e1, e2 from the emulator's θ_E, q_mass, φ with
  :func:`skinn_jax.profiles.theta_E_epl_from_emulator`
  and :func:`skinn_jax.profiles.e1e2_from_q_phi`) plus an external shear of strength U[0, 0.05]
  and random angle; lens light = the exact-b_n Sérsic of the emulator parameters, same centre and
  φ, total magnitude 19; source = circular Sérsic (R = 0.1″, n = 1, magnitude 22.5) with a quasar of
  magnitude 21.75 at its centre, at a position drawn uniformly inside the region of the source
  plane that gives four images (rejection sampling in a disk of radius 0.4 θ_E); Moffat PSF (FWHM
  0.15″, β = 3); 200 s exposure, zero point 26, sky 20 mag/arcsec², read noise 21 e⁻ per pixel;
  Gaussian noise of variance ``background² + model / t`` (the noise map of the noiseless image, as
  Herculens's ``simulation(compute_true_noise_map=True)``). The quasar has five images: four
  outer ones (labelled by arrival time) and a demagnified central one inside the core, all with
  flux = quasar flux x |magnification|.
- **Time delays**: ``t_i - t_A`` for the three later images, from the Fermat potential and D_Δt,
  with an uncertainty of 2 % or 1 day, whichever is larger, and Gaussian noise of that width.

- **Light shape from the imaging** (the prior of kinematics-only fits): the light's true
  ellipticity components plus Gaussian noise of 0.01 each
  (:class:`~skinn_jax.inference.data.LightShape`).

Random numbers: ``make_mock_kinematics`` uses ``default_rng(k)``; the imaging (shear, source
position, pixel and time-delay noise) uses ``default_rng([k, 1])``, the light shape
``default_rng([k, 2])``. Everything is reproducible from
``k`` (and the parameter source).

:func:`plot_mock_system` draws the paper's Fig. 6 for one system.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from skinn_jax.forward import SkyParams
from skinn_jax.params import PARAM_NAMES, TYPICAL_PARAMS, sample_params, validate_params
from skinn_jax.profiles import (
    e1e2_from_q_phi,
    sersic_total_flux,
    theta_E_epl_from_emulator,
    to_galaxy_frame,
)

from ..data import ImagingData, LightShape, TimeDelayData, light_shape_from_q_phi
from ..lensing.imaging import (
    TIME_DELAY_DAYS_PER_MPC_ARCSEC2,
    Images,
    ImagingModel,
    ImagingSettings,
    LensParams,
    grid_local_minima,
    ray_shoot,
    render,
    solve_lens_equation,
)
from ..lensing.profiles import flux_from_magnitude
from .kinematics import MockKinematics, MockSettings, make_mock_kinematics

ZERO_PIXEL_SYSTEM = 9
"""The system that is the paper's worst case: a JAM map with zero-valued pixels."""

ZERO_PIXEL_PARAMS = np.array([1.2, 2.4, 0.8, 0.98, 1.0, 3.0, 0.4, 85.0])
"""Emulator parameters of the zero-pixel system when not taken from the test set (10 846 of the
76 176 quadrant pixels of its JAM map are zero)."""

BUILTIN_PARAMS = np.array(TYPICAL_PARAMS)
"""Emulator parameters of ``skinn-jax fit-mock``'s built-in system (``params_source="builtin"``):
``skinn_jax.params.TYPICAL_PARAMS``, every parameter at least 20 % of its box width from the box
faces. Fits of lenses near a face (e.g. the box draw of system 0, q_mass = 0.616 for a face
at 0.6) meet the prior's hard wall in the solved q_mass and need deeper NUTS trees; the study's
systems cover those cases."""

DEFAULT_TEST_SET = Path("data/test")
"""Held-out test set (``bash training/make_datasets.sh``), relative to the working directory."""

ParamsSource = Literal["auto", "test", "box", "builtin"]


@dataclass(frozen=True)
class MockSystemSettings:
    """Settings of a mock system (defaults: paper Sec. 5.2).

    Attributes:
        imaging: imaging observation and numerics.
        kinematics: IFU observation (``mock_kinematics.MockSettings``).
        lens_magnitude: total magnitude of the lens light.
        source_magnitude: total magnitude of the extended source.
        source_r_sersic: source half-light radius, arcsec.
        source_n_sersic: source Sérsic index.
        quasar_magnitude: intrinsic magnitude of the quasar.
        shear_max: external shear strength ~ U[0, shear_max].
        source_radius_frac: sources are drawn in a disk of this radius in units of θ_E (EPL).
        image_margin: the four outer images must lie this far (arcsec) inside the image edge.
        td_rel_error: relative time-delay uncertainty.
        td_min_error_days: floor of the time-delay uncertainty, days.
        max_source_draws: source positions tried before giving up.
        light_shape_sigma: uncertainty of each light ellipticity component "measured on the
            imaging" (:class:`~skinn_jax.inference.data.LightShape`, the prior of kinematics-only
            fits): the truth plus Gaussian noise of this width.
    """

    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    kinematics: MockSettings = field(default_factory=MockSettings)
    lens_magnitude: float = 19.0
    source_magnitude: float = 22.5
    source_r_sersic: float = 0.1
    source_n_sersic: float = 1.0
    quasar_magnitude: float = 21.75
    shear_max: float = 0.05
    source_radius_frac: float = 0.4
    image_margin: float = 0.3
    td_rel_error: float = 0.02
    td_min_error_days: float = 1.0
    max_source_draws: int = 2000
    light_shape_sigma: float = 0.01


def measure_image_positions(
    image: np.ndarray, noise_map: np.ndarray, model: ImagingModel, approx: np.ndarray
) -> np.ndarray:
    """Quasar image positions measured on the data, as a modeller would start a fit.

    For each approximate position (arcsec, (k, 2)): the brightest pixel within 0.25″, then the
    flux-weighted centroid of the 3 x 3 pixels around it (positive pixels). Accurate to a few
    0.01″: only the start of the image-position solver, never a constraint.
    """
    x, y = model.coordinates
    out = np.empty((len(approx), 2))
    for i, (ax, ay) in enumerate(approx):
        near = np.hypot(x - ax, y - ay) <= 0.25
        masked = np.where(near, image, -np.inf)
        r, c = np.unravel_index(np.argmax(masked), image.shape)
        rs = slice(max(r - 1, 0), r + 2)
        cs = slice(max(c - 1, 0), c + 2)
        w = np.clip(image[rs, cs], 0.0, None)
        out[i] = (np.sum(w * x[rs, cs]) / np.sum(w), np.sum(w * y[rs, cs]) / np.sum(w))
    return out


class SystemTruth(NamedTuple):
    """True parameters of a mock system.

    Attributes:
        params: the eight emulator parameters, (8,), order of ``skinn_jax.PARAM_NAMES``.
        sky: the five sky parameters (φ radians, centre arcsec, D_dt and D_d Mpc).
        lens: the imaging parameters (:class:`~skinn_jax.inference.lensing.LensParams`).
        lens_magnitude: total lens-light magnitude.
        source_magnitude: total source magnitude.
        quasar_magnitude: intrinsic quasar magnitude.
        ps_magnitudes: magnitudes of the four outer quasar images, (4,).
        time_delays: true ``t_i - t_0``, days, (3,).
    """

    params: np.ndarray
    sky: SkyParams
    lens: LensParams
    lens_magnitude: float
    source_magnitude: float
    quasar_magnitude: float
    ps_magnitudes: np.ndarray
    time_delays: np.ndarray


@dataclass(frozen=True, eq=False)
class MockSystem:
    """One mock lens system.

    Attributes:
        k: the system number.
        test_index: index of its parameters in the test set, or None.
        params_source: ``"test"``, ``"box"``, ``"builtin"`` or ``"given"``.
        settings: the settings it was built with.
        truth: the true parameters.
        imaging: the imaging data.
        image_true: the noiseless image, counts/s per pixel.
        time_delays: the measured time delays.
        kinematics: the kinematic mock (``data`` is the binned IFU data).
        images: all exact images of the quasar (outer four first, by arrival time; then central).
        measured_positions: the four outer images' positions measured on the data (centroids),
            arcsec, (4, 2): where a fit starts its image-position solver.
        n_zero_pixels: zero-valued pixels in the test-set JAM quadrant (None if not from it).
        light_shape: the light's ellipticity as the imaging measures it (the prior of
            kinematics-only fits).
    """

    k: int
    test_index: int | None
    params_source: str
    settings: MockSystemSettings
    truth: SystemTruth
    imaging: ImagingData
    image_true: np.ndarray
    time_delays: TimeDelayData
    kinematics: MockKinematics
    images: Images
    measured_positions: np.ndarray
    n_zero_pixels: int | None = None
    light_shape: LightShape | None = None

    @property
    def seed(self) -> int:
        """Seed of the kinematic mock (the imaging uses ``[seed, 1]``)."""
        return self.k


# ----------------------------------------------------------------------------------------------
# Parameters


def system_params(
    k: int, params_source: ParamsSource = "auto", test_set: str | Path = DEFAULT_TEST_SET
) -> tuple[np.ndarray, int | None, str, int | None]:
    """The eight emulator parameters of system ``k``.

    Args:
        k: system number (>= 0).
        params_source: ``"test"`` (test set; raises if missing), ``"box"`` (seeded uniform draw),
            ``"auto"`` (the test set if it exists and has more than ``k`` maps, else the box), or
            ``"builtin"`` (:data:`BUILTIN_PARAMS`, whatever ``k``).
        test_set: directory of the test set.

    Returns:
        ``(params, test_index, source, n_zero)``: parameters (8,), test-set index (or None), the
        source used (``"test"``, ``"box"`` or ``"builtin"``) and the JAM map's zero-pixel count
        (or None).
    """
    if k < 0:
        raise ValueError(f"system number must be >= 0, got {k}")
    if params_source not in ("auto", "test", "box", "builtin"):
        raise ValueError(
            f"params_source must be 'auto', 'test', 'box' or 'builtin', got {params_source!r}"
        )
    if params_source == "builtin":
        return BUILTIN_PARAMS.copy(), None, "builtin", None
    test_set = Path(test_set)
    if params_source in ("auto", "test"):
        from skinn_jax.training.generate import DataSet

        try:
            data = DataSet(test_set).load(("params", "n_zero"))
        except (FileNotFoundError, ValueError) as err:
            if params_source == "test":
                raise FileNotFoundError(f"no usable test set at {test_set}: {err}") from err
            data = None
        if data is not None and len(data["params"]) > max(k, ZERO_PIXEL_SYSTEM):
            if k == ZERO_PIXEL_SYSTEM:
                index = int(np.argmax(data["n_zero"]))
            else:
                index = k
            return data["params"][index].astype(float), index, "test", int(data["n_zero"][index])
        if params_source == "test":
            raise ValueError(f"the test set at {test_set} has too few maps for system {k}")
    if k == ZERO_PIXEL_SYSTEM:
        return ZERO_PIXEL_PARAMS.copy(), None, "box", None
    return sample_params(np.random.default_rng(k)), None, "box", None


def lens_params_from_emulator(
    params: np.ndarray,
    sky: SkyParams,
    *,
    gamma1: float,
    gamma2: float,
    lens_amp: float,
    src_x: float,
    src_y: float,
    src_amp: float,
    src_r: float,
    src_n: float,
    ps_x=None,
    ps_y=None,
    ps_amp=None,
    ps_central_amp: float = 0.0,
) -> LensParams:
    """Imaging parameters from the eight emulator parameters and the sky parameters.

    The EPL Einstein radius and ``e1, e2`` come from the tested conversions
    :func:`skinn_jax.profiles.theta_E_epl_from_emulator` and
    :func:`skinn_jax.profiles.e1e2_from_q_phi`. Image positions and fluxes default to zeros.
    """
    ps_x, ps_y, ps_amp = (np.zeros(4) if a is None else a for a in (ps_x, ps_y, ps_amp))
    theta_E, gamma, q_mass, q_light, r_sersic, n_sersic = (float(v) for v in params[:6])
    e1, e2 = e1e2_from_q_phi(q_mass, sky.phi)
    return LensParams(
        theta_E_epl=float(theta_E_epl_from_emulator(theta_E, gamma, q_mass)),
        gamma=gamma,
        e1=float(e1),
        e2=float(e2),
        center_x=float(sky.center_x),
        center_y=float(sky.center_y),
        gamma1=gamma1,
        gamma2=gamma2,
        lens_amp=lens_amp,
        r_sersic=r_sersic,
        n_sersic=n_sersic,
        q_light=q_light,
        phi=float(sky.phi),
        src_x=src_x,
        src_y=src_y,
        src_amp=src_amp,
        src_r=src_r,
        src_n=src_n,
        ps_x=np.asarray(ps_x, float),
        ps_y=np.asarray(ps_y, float),
        ps_amp=np.asarray(ps_amp, float),
        ps_central_amp=float(ps_central_amp),
    )


# ----------------------------------------------------------------------------------------------
# The quad


def _is_quad(images: Images, half_width: float, margin: float) -> bool:
    outer = images.kind != "max"
    n_min = int(np.sum(images.kind == "min"))
    n_saddle = int(np.sum(images.kind == "saddle"))
    n_max = int(np.sum(images.kind == "max"))
    if (n_min, n_saddle, n_max) != (2, 2, 1):
        return False
    inside = (np.abs(images.x[outer]) < half_width - margin) & (
        np.abs(images.y[outer]) < half_width - margin
    )
    return bool(np.all(inside))


def draw_quad_source(
    model: ImagingModel,
    lens: LensParams,
    rng: np.random.Generator,
    settings: MockSystemSettings,
) -> tuple[float, float, Images]:
    """Draw a source position uniformly in the four-image region of the source plane.

    Rejection sampling: positions uniform in a disk of radius ``source_radius_frac θ_E`` around
    the lens centre, kept when the lens equation has two minima, two saddles and one maximum (the
    central image) and the four outer images lie ``image_margin`` inside the image.

    Returns:
        ``(src_x, src_y, images)``.

    Raises:
        RuntimeError: no quad found in ``max_source_draws`` draws.
    """
    radius = settings.source_radius_frac * float(lens.theta_E_epl)
    half = model.settings.half_width
    solver = _QuadSolver(model, lens)
    for _ in range(settings.max_source_draws):
        r = radius * math.sqrt(rng.uniform())
        angle = rng.uniform(0.0, 2.0 * math.pi)
        sx = float(lens.center_x) + r * math.cos(angle)
        sy = float(lens.center_y) + r * math.sin(angle)
        if not solver.maybe_quad(sx, sy):
            continue
        images = solve_lens_equation(model, lens._replace(src_x=sx, src_y=sy))
        if _is_quad(images, half, settings.image_margin):
            return sx, sy, images
    raise RuntimeError(
        f"no four-image source position found in {settings.max_source_draws} draws "
        f"(lens θ_E_EPL = {float(lens.theta_E_epl):.3f}, e = ({float(lens.e1):.3f}, "
        f"{float(lens.e2):.3f}), shear = ({float(lens.gamma1):.3f}, {float(lens.gamma2):.3f}))"
    )


class _QuadSolver:
    """Cheap pre-screen: count local minima of |β(θ) - β_s| on a coarse ray-shot grid."""

    def __init__(self, model: ImagingModel, lens: LensParams, step: float = 0.03):
        half = model.settings.half_width
        coords = np.arange(-half, half + step / 2, step)
        gx, gy = np.meshgrid(coords, coords)
        bx, by = ray_shoot(model, lens, jnp.asarray(gx), jnp.asarray(gy))
        self.bx, self.by = np.asarray(bx), np.asarray(by)

    def maybe_quad(self, sx: float, sy: float) -> bool:
        return int(grid_local_minima(np.hypot(self.bx - sx, self.by - sy)).sum()) >= 5


def order_images(images: Images) -> Images:
    """Outer images by arrival time (Fermat potential ascending), then the central image(s)."""
    outer = np.flatnonzero(images.kind != "max")
    central = np.flatnonzero(images.kind == "max")
    order = np.concatenate([outer[np.argsort(images.fermat[outer])], central])
    return Images(*(np.asarray(a)[order] for a in images))


# ----------------------------------------------------------------------------------------------
# The mock


def make_mock_system(
    k: int,
    params: np.ndarray | None = None,
    *,
    params_source: ParamsSource = "auto",
    test_set: str | Path = DEFAULT_TEST_SET,
    settings: MockSystemSettings = MockSystemSettings(),
) -> MockSystem:
    """Build mock system ``k`` (see the module docstring).

    Args:
        k: system number; seeds every random draw.
        params: the eight emulator parameters; if None, from :func:`system_params`.
        params_source: where to take the parameters from when ``params`` is None.
        test_set: directory of the held-out test set.
        settings: observation settings.

    Returns:
        The :class:`MockSystem`.
    """
    if params is None:
        params, test_index, source, n_zero = system_params(k, params_source, test_set)
    else:
        params, test_index, source, n_zero = validate_params(params), None, "given", None
    with jax.enable_x64(True):
        kin = make_mock_kinematics(k, params=params, settings=settings.kinematics)
        sky = SkyParams(*(float(v) for v in kin.sky))
        rng = np.random.default_rng([k, 1])
        shear = settings.shear_max * rng.uniform()
        shear_angle = rng.uniform(0.0, math.pi)
        gamma1, gamma2 = shear * math.cos(2 * shear_angle), shear * math.sin(2 * shear_angle)

        zp = settings.imaging.zero_point
        q_light, r_sersic, n_sersic = params[3], params[4], params[5]
        lens_flux = float(flux_from_magnitude(settings.lens_magnitude, zp))
        lens_amp = lens_flux / float(sersic_total_flux(r_sersic, n_sersic, q_light))
        src_flux = float(flux_from_magnitude(settings.source_magnitude, zp))
        src_amp = src_flux / float(
            sersic_total_flux(settings.source_r_sersic, settings.source_n_sersic, 1.0)
        )
        lens = lens_params_from_emulator(
            params,
            sky,
            gamma1=gamma1,
            gamma2=gamma2,
            lens_amp=lens_amp,
            src_x=0.0,
            src_y=0.0,
            src_amp=src_amp,
            src_r=settings.source_r_sersic,
            src_n=settings.source_n_sersic,
        )
        model = ImagingModel(settings.imaging)
        src_x, src_y, images = draw_quad_source(model, lens, rng, settings)
        images = order_images(images)
        quasar_flux = float(flux_from_magnitude(settings.quasar_magnitude, zp))
        amps = quasar_flux * np.abs(images.magnification)
        lens = lens._replace(
            src_x=src_x,
            src_y=src_y,
            ps_x=images.x[:4],
            ps_y=images.y[:4],
            ps_amp=amps[:4],
            ps_central_amp=float(amps[4]),
        )
        image_true, quasar = (np.asarray(a) for a in render(model, lens))
        noise_map = np.sqrt(np.asarray(model.noise_variance(image_true, quasar)))
        image = image_true + noise_map * rng.standard_normal(image_true.shape)

        tau = images.fermat[:4]
        delays_true = sky.D_dt * TIME_DELAY_DAYS_PER_MPC_ARCSEC2 * (tau[1:] - tau[0])
        td_sigma = np.maximum(
            settings.td_rel_error * np.abs(delays_true), settings.td_min_error_days
        )
        delays = delays_true + td_sigma * rng.standard_normal(delays_true.shape)

    truth = SystemTruth(
        params=np.asarray(params, float),
        sky=sky,
        lens=lens,
        lens_magnitude=settings.lens_magnitude,
        source_magnitude=settings.source_magnitude,
        quasar_magnitude=settings.quasar_magnitude,
        ps_magnitudes=zp - 2.5 * np.log10(amps[:4]),
        time_delays=delays_true,
    )
    return MockSystem(
        k=k,
        test_index=test_index,
        params_source=source,
        settings=settings,
        truth=truth,
        imaging=ImagingData(image=image, noise_map=noise_map),
        image_true=image_true,
        time_delays=TimeDelayData(delays=delays, sigma=td_sigma),
        kinematics=kin,
        images=images,
        measured_positions=measure_image_positions(
            image, noise_map, model, np.stack([images.x[:4], images.y[:4]], axis=-1)
        ),
        n_zero_pixels=n_zero,
        light_shape=measured_light_shape(k, params[3], sky.phi, settings.light_shape_sigma),
    )


def measured_light_shape(k: int, q_light: float, phi: float, sigma: float) -> LightShape:
    """System ``k``'s light ellipticity "measured on the imaging": the true ``(e1, e2)`` plus
    Gaussian noise of width ``sigma`` (``default_rng([k, 2])``, apart from the other draws)."""
    truth = light_shape_from_q_phi(float(q_light), float(phi), sigma)
    e1, e2 = np.array([truth.e1, truth.e2]) + sigma * np.random.default_rng([k, 2]).normal(size=2)
    return truth._replace(e1=float(e1), e2=float(e2))


def describe(system: MockSystem) -> str:
    """One-paragraph text description of a mock system."""
    t = system.truth
    emu = ", ".join(f"{n}={v:.3f}" for n, v in zip(PARAM_NAMES, t.params, strict=True))
    origin = (
        f"test map {system.test_index}" if system.test_index is not None else system.params_source
    )
    return (
        f"system {system.k} ({origin}): {emu}; φ={math.degrees(t.sky.phi):.1f}°, "
        f"centre=({t.sky.center_x:.3f}, {t.sky.center_y:.3f})″, D_dt={t.sky.D_dt:.1f} Mpc, "
        f"D_d={t.sky.D_d:.1f} Mpc; shear=({float(t.lens.gamma1):.3f}, {float(t.lens.gamma2):.3f}); "
        f"{system.kinematics.data.n_bins} kinematic bins; time delays "
        + ", ".join(
            f"{d:.1f}±{s:.1f}"
            for d, s in zip(system.time_delays.delays, system.time_delays.sigma, strict=True)
        )
        + " days"
    )


# ----------------------------------------------------------------------------------------------
# Figure (paper Fig. 6)


def jam_map_on_spaxels(system: MockSystem) -> np.ndarray:
    """Noiseless JAM v_rms (km/s) at the spaxel centres, at the system's distances."""
    from skinn_jax.training.jam import jam_vrms

    grid = system.kinematics.data.grid
    x, y = grid.coordinates()
    sky = system.truth.sky
    with jax.enable_x64(True):
        xg, yg = (np.asarray(a) for a in to_galaxy_frame(x, y, sky.center_x, sky.center_y, sky.phi))
    return jam_vrms(system.truth.params, xg, yg, system.kinematics.distances)


def plot_mock_system(system: MockSystem, path: str | Path | None = None):
    """Paper Fig. 6 for one system: lensing image, deflector light, JAM v_rms, binned data.

    Args:
        system: the mock.
        path: PNG to write (e.g. ``docs/figures/inference_mock_<k>.png``); None: don't save.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    kin = system.kinematics
    data = kin.data
    grid = data.grid
    h_img = system.settings.imaging.half_width
    cx, cy = grid.pixel_to_angle(np.array([-0.5, grid.shape[1] - 0.5]), np.array([-0.5, -0.5]))
    _, cy2 = grid.pixel_to_angle(np.array([-0.5]), np.array([grid.shape[0] - 0.5]))
    kin_extent = [min(cx), max(cx), cy[0], cy2[0]]
    jam = jam_map_on_spaxels(system)
    binned = data.bins_to_image(data.vrms)
    vmin = np.nanmin([jam[jam > 0].min() if np.any(jam > 0) else 0.0, np.nanmin(binned)])
    vmax = np.nanmax([jam.max(), np.nanmax(binned)])

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    img = system.imaging.image
    stretch = np.arcsinh(img / (3 * np.median(system.imaging.noise_map)))
    axes[0].imshow(stretch, origin="lower", extent=[-h_img, h_img, -h_img, h_img], cmap="magma")
    axes[0].add_patch(
        Rectangle(
            (kin_extent[0], kin_extent[2]),
            kin_extent[1] - kin_extent[0],
            kin_extent[3] - kin_extent[2],
            fill=False,
            color="red",
            lw=1.2,
        )
    )
    axes[0].plot(system.images.x[:4], system.images.y[:4], "c+", ms=8, mew=1)
    for i, (x, y) in enumerate(zip(system.images.x[:4], system.images.y[:4], strict=True)):
        axes[0].text(x + 0.12, y + 0.12, "ABCD"[i], color="c", fontsize=9)
    axes[0].set_title("imaging (asinh), images A-D")
    axes[1].imshow(
        np.arcsinh(kin.light_observed / np.median(kin.light_noise)),
        origin="lower",
        extent=kin_extent,
        cmap="magma",
    )
    axes[1].set_title("deflector light (kinematics)")
    im2 = axes[2].imshow(jam, origin="lower", extent=kin_extent, vmin=vmin, vmax=vmax)
    axes[2].set_title("JAM v_rms, noiseless")
    im3 = axes[3].imshow(binned, origin="lower", extent=kin_extent, vmin=vmin, vmax=vmax)
    axes[3].set_title(f"binned v_rms + noise ({data.n_bins} bins)")
    for ax in axes:
        ax.set_xlabel("x [arcsec]")
    axes[0].set_ylabel("y [arcsec]")
    fig.colorbar(im2, ax=axes[2], fraction=0.046, label="km/s")
    fig.colorbar(im3, ax=axes[3], fraction=0.046, label="km/s")
    origin = f"test map {system.test_index}" if system.test_index is not None else "box draw"
    zero = f", {system.n_zero_pixels} zero JAM pixels" if system.n_zero_pixels else ""
    fig.suptitle(
        f"mock system {system.k} ({origin}{zero}): "
        + ", ".join(f"{n}={v:.2f}" for n, v in zip(PARAM_NAMES, system.truth.params, strict=True)),
        fontsize=9,
    )
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def main(argv: list[str] | None = None) -> int:
    """``python -m skinn_jax.inference.mocks.system [K ...] [--out docs/figures]``: Fig. 6 PNGs."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("systems", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--params-source", default="auto", choices=["auto", "test", "box"])
    args = parser.parse_args(argv)
    for k in args.systems:
        system = make_mock_system(k, params_source=args.params_source)
        path = args.out / f"inference_mock_{k}.png"
        plot_mock_system(system, path)
        print(f"{path}: {describe(system)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
