"""The joint lensing + time-delay + kinematics model: a plain NumPyro model function.

``model(data, setup)`` (NumPyro-examples style: the model is a function of the data and a static
set-up; inference lives in :mod:`skinn_jax.inference.fit`). The log likelihood is paper eq. 12::

    log L = -1/2 (χ²_img + χ²_TD + χ²_kin)

``setup.mode`` picks the terms: ``"joint"`` (all), ``"lensing"`` (imaging + time delays),
``"kinematics"`` (the IFU alone).

Prior
-----
The same in every mode: uniform in the paper's parameters -- the emulator's
mass ``theta_E``, ``gamma``, ``q_mass`` and position angle ``phi``, the centre, the light,
kinematic and distance parameters (paper Tables 1 and 2, the distributions the mock truths are
drawn from, so that the coverage test is calibrated) -- and in the shear ``gamma1, gamma2``, the
source position and the remaining source and magnitude parameters, each inside the box of
:class:`Priors` (the emulator's training box for the eight emulator inputs). Herculens's EPL
``theta_E_epl, e1, e2`` are converted to and from the emulator's ``theta_E, q_mass, phi`` only by
the tested :func:`skinn_jax.profiles.theta_E_from_epl`, :func:`skinn_jax.profiles.q_phi_from_e1e2`
and their inverses; the emulator's eight inputs are :func:`emulator_params` of those values:
nothing is converted by hand. (Versions <= 4 were uniform in ``(theta_E_epl, e1, e2)``: density
in ``q_mass`` ∝ ``(1 - q)/(1 + q)³``, 6.7x higher at q = 0.6 than at 0.9, which pulled the
kinematics-only fits to low ``q_mass`` (-2.6σ, -2.8σ on systems 0 and 9); and the lensing modes'
image-position Jacobian had the wrong sign, a tilt of ~10 per unit ``gamma`` in log density.)

Sampled coordinates
-------------------
Every box is a :class:`~skinn_jax.inference.priors.BoxUniform`: the sampler moves its probit
``Φ⁻¹((x - low) / (high - low))``, in which the uniform prior is a standard normal, so that a
posterior against a face has a Gaussian tail in the sampled coordinate (NumPyro's default logit
gives an exponential one; see ``docs/convergence.md``).

Lensing and joint modes: the quasar's four images are measured to ~1 mas by the imaging, and
sampling the lens parameters directly makes a strongly curved posterior (a change of the
loosely constrained slope must be compensated by non-linear changes of the tightly constrained
ellipticity, shear, Einstein radius and source position that keep the images in place: measured
on mock system 0, the Hessian in the Laplace metric's whitened coordinates changed by factors of
up to 10³, and turned indefinite, one σ away from the MAP; NUTS needed 127-step trajectories and
still mixed badly). The model therefore samples the **image positions** and solves the lens for
them, as lenstronomy's lens-equation solvers do:

=====================  ======================  ===============================================
site                    unit                    meaning
=====================  ======================  ===============================================
``gamma``               --                      power-law slope
``center_x, center_y``  arcsec                  lens centre (mass, light, kinematics)
``ps_x``                arcsec, (4,)            x of the quasar images A-D (A arrives first)
``ps_y_abc``            arcsec, (3,)            y of images A-C
``q_light``             --                      lens-light axis ratio
``r_sersic_ratio``      --                      lens-light half-light radius / emulator theta_E
``n_sersic``            --                      lens-light Sérsic index
``lens_mag_aperture``   mag                     lens-light magnitude inside the 1″ isophote
``src_r, src_n``        arcsec, --              source Sérsic radius and index
``src_mag``             mag                     source total magnitude
``ps_mag``              mag, (4,)               quasar image magnitudes
``beta_z``              --                      anisotropy (joint)
``inclination_deg``     deg                     inclination (joint)
``D_dt``                Mpc                     time-delay distance (lensing)
``log_D_dt, log_D_d``   log Mpc                 log distances (joint; ``D_dt``, ``D_d``
                                                deterministic)
=====================  ======================  ===============================================

and :func:`solve_lens` finds ``theta_E_epl, e1, e2, gamma1, gamma2, src_x, src_y`` and image D's
``y`` such that the four images are exact images of one source (eight lens equations, eight
unknowns; Newton's method from ``setup.solver_start``, fixed iteration count, differentiable).
The change of variables adds ``log |det ∂(lens)/∂(images)|`` (``solve_lens``'s log-Jacobian, of
the EPL parameters) minus :func:`log_epl_jacobian` (EPL -> emulator mass), so that the prior is
uniform in ``(theta_E, q_mass, phi, gamma1, gamma2, src_x, src_y)``; solutions outside the lens
boxes get zero prior. ``ps_x, ps_y_abc`` are
sampled within ``Priors.ps_offset`` of the positions measured on the image. The emulator's
``theta_E``, ``q_mass`` and the position angle ``phi`` (shared by mass and light) are
deterministic sites. With these coordinates the posterior is close to Gaussian (whitened Hessian
within a factor ~3 of the identity one σ away from the MAP on mock system 0). The lens equations
can have several solutions; Newton's method follows the one connected to ``solver_start`` (the
truth for mock systems, as the fit starts there; a round lens fitted to the measured positions by
default, :func:`default_solver_start`).

Kinematics mode samples ``gamma``, ``q_mass``, ``phi``, the centre, ``q_light``,
``r_sersic_ratio``, ``n_sersic``, ``beta_z``, ``inclination_deg``, ``log_ratio_theta_E = log(D_dt /
D_d x theta_E / 1″)`` and ``theta_E_fraction``, with ``log_theta_E = log(theta_E / 1″)`` (emulator
convention), ``theta_E``, ``log_ratio = log(D_dt / D_d)`` and ``ratio_D_dt_D_d = D_dt / D_d``
deterministic sites; ``D_dt`` and ``D_d`` are not sites of this mode. The IFU alone measures the
distances only through their ratio (v_rms scales as ``sqrt(D_dt / ((1 + z_d) D_d)) / sqrt(D_s_fid /
D_ds_fid)``, CONVENTIONS §4, :func:`skinn_jax.cosmology.vrms_distance_factor`), and without the
imaging the mass normalisation ``theta_E`` and that ratio are degenerate: the emulator's velocity
scale is ``200 km/s sqrt(theta_E)``, so ``v_rms² ∝ ratio x theta_E``. ``log_ratio_theta_E`` is that
combination (twice the log of the v_rms normalisation, up to a constant): sampled as ``(theta_E,
log_ratio)`` the posterior was a curved ridge (mock system 0, Laplace correlation -0.98 at the MAP;
warm-up unfinished after 13 min), sampled as ``(log D_dt, log D_d)`` a ridge along the whole
distance box (system 9: 645 s of warm-up, 79k evaluations, 15 divergences). The prior is
the same as in the other modes: uniform in ``(theta_E, q_mass, phi)`` and uniform
``(D_dt, D_d)`` in their boxes, whose marginal for ``log_ratio`` is :func:`log_ratio_prior`;
:func:`log_kinematic_scale_prior` is the density of ``(log_theta_E, log_ratio_theta_E)`` they
imply, with the Jacobian ``|∂(theta_E, log_ratio) / ∂(log_theta_E, log_ratio_theta_E)| = theta_E``.
Its support is a parallelogram (the ratio's range gives it slanted faces), so ``log_theta_E`` is
sampled as ``theta_E_fraction``, its place in the interval the parallelogram allows at the sampled
``log_ratio_theta_E`` (:func:`skinn_jax.inference.priors.log_theta_E_from_fraction`): the sampled
rectangle maps onto the parallelogram and the log density has no wall inside it. With
``data.light_shape`` (the light's ellipticity measured on the imaging) the mode adds it as a
Gaussian prior on ``(q_light, phi)`` (:func:`skinn_jax.inference.priors.log_light_shape_prior`),
which fixes ``phi`` for an elongated light where the kinematics of a near-round mass cannot.
The kinematic likelihood is evaluated at ``D_d =`` :data:`KINEMATICS_REFERENCE_D_D` and ``D_dt =
ratio x D_d``, which gives the same v_rms as any pair with that ratio.

Quasar images and light
-----------------------
The four outer images' fluxes are free (``ps_mag``); the central image's position is solved from
the lens centre and its flux is the quasar flux the outer images imply,
``mean_i(F_i/|μ_i|) |μ_c|``. Lens light: the exact-b_n Sérsic of the emulator's ``q_light``,
``r_sersic``, ``n_sersic`` at the mass's ``phi`` and centre.

Kinematics: :class:`skinn_jax.likelihood.KinematicLikelihood` (centre-aligned quadrature) with the
emulator's map route (:class:`EmulatorField`: one 551 x 551 map per evaluation, interpolated at the
forward model's points, with the central 0.1″ refined from a fixed 85 x 85 table whose network
features are computed once).

Before sampling, :func:`check_inputs` raises ``ValueError`` for non-finite or non-positive data,
priors outside the emulator's training box, and (through ``KinematicLikelihood``) a kinematic grid
that needs the v_rms field outside the emulator's 5.5″ field for some centre in the prior box.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro
from jax import Array

from skinn_jax.forward import MapField
from skinn_jax.ifu import KinematicData
from skinn_jax.likelihood import KinematicLikelihood
from skinn_jax.params import PARAM_NAMES

from .data import SystemData
from .kinematics import (
    emulator_field,
    emulator_params,
    kinematic_distances,
    load_emulator,
    sky_params,
)
from .lensing.imaging import ImagingModel, ImagingSettings, quasar_windows
from .lensing.lens import (
    SOLVED,
    log_epl_jacobian,
    solved_lens_params,
    solver_start_vector,
    total_magnitude,
)
from .priors import (
    DEFAULT_PRIORS,
    BoxUniform,
    Priors,
    distance_log_jacobian,
    from_kinematic_scale_coordinates,
    log_kinematic_scale_prior,
    log_light_shape_prior,
    log_theta_E_from_fraction,
    ratio_theta_E_box,
)

Mode = Literal["joint", "lensing", "kinematics"]

MODES: tuple[str, ...] = ("joint", "lensing", "kinematics")

N_IMAGES = 4
"""Quasar images with free positions and fluxes (the central image is derived)."""

DEFAULT_IMAGING = ImagingSettings()

MODEL_VERSION = 7
"""Version of the model, part of every fit's fingerprint (what changed in each version:
CHANGELOG.md, "Model versions")."""

MODEL_QUAD_NODES = 16
"""Gauss-Legendre nodes of the model's cored power law (the mocks use ``ImagingSettings``'s 24).

Against 64 nodes, over a 7″ field, θ_E = 1.2″, γ = 1.5-2.5, e1 = 0-0.3 (measured): deflections
agree to <= 8e-6″ and the Fermat potential to <= 4e-6 arcsec² (< 1e-3 day for D_Δt ~ 3 Gpc);
24 nodes agree to 5e-8″. With 16 nodes the lensing log L + gradient costs ~2/3 of 24 nodes'."""

MODEL_SUPERSAMPLING = 1
"""Lattice cells per spaxel side of the model's kinematic forward model (centre-aligned
quadrature, ``skinn_jax.quadrature``; the mocks' truth samples 5 fixed sub-pixels per side).

On mock system 1's IFU set (0.05″ spaxels, 0.1″ PSF) with the shipped emulator the binned v_rms is
within 0.01 km/s of the converged (8-cell) prediction, a smooth function of the centre; 5 fixed
sub-pixels miss it by 0.05 km/s off a sample point and by 5 km/s on one."""

DISTANCE_SITES: tuple[str, ...] = ("log_D_dt", "log_D_d")
"""Sampled distance coordinates of joint mode: ``log(D_dt / Mpc)`` and ``log(D_d / Mpc)``.

The time delays measure D_dt (to 5-20 % in the mock systems) and the kinematics the ratio
D_dt / D_d (to 5-9 %), so D_d = D_dt / ratio is a product of the two and its posterior is skewed in
D_d itself (measured on three joint fits sampled uniformly in (D_dt, D_d): tail ESS 41-45 for D_d of
600 draws, against 130-440 for D_dt and the ratio). In logarithms the relation is linear,
``log D_d = log D_dt - log ratio``, and the dense metric absorbs the correlation. The prior stays
uniform in (D_dt, D_d) inside their boxes: the model adds the Jacobian ``log D_dt + log D_d``.
"""

RATIO_SITE = "log_ratio"
"""Deterministic site of kinematics mode: ``log(D_dt / D_d)`` (dimensionless)."""

LOG_THETA_E_SITE = "log_theta_E"
"""Deterministic site of kinematics mode: ``log(theta_E / 1″)``, the emulator-convention Einstein
radius (``theta_E`` is one too)."""

THETA_E_FRACTION_SITE = "theta_E_fraction"
"""Sampled site of kinematics mode, in ``(0, 1)``: where ``log_theta_E`` lies in the interval the
prior allows at the sampled ``log_ratio_theta_E`` (:func:`log_theta_E_from_fraction`)."""

RATIO_THETA_E_SITE = "log_ratio_theta_E"
"""Sampled site of kinematics mode: ``log(D_dt / D_d x theta_E / 1″)``, the combination the IFU
alone measures (``v_rms² ∝ (D_dt / D_d) theta_E``); ``log_ratio`` is this minus ``log_theta_E``."""

RATIO = "ratio_D_dt_D_d"
"""Deterministic site of kinematics mode: ``D_dt / D_d`` (dimensionless)."""


PAPER_PARAMETERS: tuple[str, ...] = PARAM_NAMES + ("phi", "center_x", "center_y", "D_dt", "D_d")
"""The 13 parameters of paper Tables 1 and 2 (``r_sersic`` is a deterministic site).

Kinematics mode has 11 of them (``theta_E`` deterministic) and :data:`RATIO` instead of ``D_dt``
and ``D_d``."""


@dataclass(frozen=True, eq=False)
class ModelSetup:
    """Static part of the model (built once by :func:`build_setup`).

    Attributes:
        mode: ``"joint"``, ``"lensing"`` or ``"kinematics"``.
        priors: the prior boxes.
        imaging: the imaging forward model (None in kinematics mode).
        kinematics: the kinematic likelihood (None in lensing mode).
        zero_point: magnitude of 1 count/s.
        newton_iterations: Newton iterations of the lens-equation solvers.
        solver_start: start of the lens solver, ``SOLVED`` values + image D's y (arcsec), (8,).
        z_d: deflector redshift.
    """

    mode: str
    priors: Priors
    imaging: ImagingModel | None
    kinematics: KinematicLikelihood | None
    zero_point: float = 26.0
    newton_iterations: int = 10
    solver_start: np.ndarray | None = None
    z_d: float = 0.5
    extra: dict = field(default_factory=dict)


def build_setup(
    data: SystemData,
    mode: Mode = "joint",
    *,
    emulator=None,
    checkpoint=None,
    priors: Priors = DEFAULT_PRIORS,
    imaging_settings: ImagingSettings | None = None,
    newton_iterations: int = 10,
    supersampling: int = MODEL_SUPERSAMPLING,
    sampling: str = "auto",
    quad_nodes: int | None = MODEL_QUAD_NODES,
    field=None,
    solver_start: dict | None = None,
) -> ModelSetup:
    """Check the inputs and build the static set-up of :func:`model`.

    Args:
        data: the observations.
        mode: ``"joint"``, ``"lensing"`` or ``"kinematics"``.
        emulator: a loaded ``skinn_jax.Emulator``; if None, :func:`load_emulator(checkpoint)`
            (not needed in lensing mode).
        checkpoint: checkpoint name or directory for :func:`load_emulator` (None: the default).
        priors: prior boxes.
        imaging_settings: imaging settings (default: ``data.imaging_settings``, else the
            defaults); must match the data's image size.
        newton_iterations: Newton iterations of the lens-equation solvers.
        supersampling: sub-pixels (lattice cells) per spaxel side of the kinematic forward model.
        sampling: the kinematic forward model's sampling (see
            ``skinn_jax.forward.build_forward_model``).
        quad_nodes: Gauss-Legendre nodes of the model's cored power law, replacing
            ``imaging_settings.quad_nodes`` (None: keep it).
        field: a ``vrms_at(params, x, y)`` field to use instead of the emulator (e.g. JAM truth).
        solver_start: values of ``SOLVED`` (and ``ps_y``) to start the lens solver from (e.g.
            the truth of a mock, or a previous fit); by default a round lens fitted to the
            measured image positions (:func:`default_solver_start`).

    Returns:
        The :class:`ModelSetup`.

    Raises:
        ValueError: see :func:`check_inputs`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if imaging_settings is None:
        imaging_settings = data.imaging_settings or DEFAULT_IMAGING
    check_inputs(data, priors, imaging_settings)
    if quad_nodes is not None:
        imaging_settings = replace(imaging_settings, quad_nodes=int(quad_nodes))
    imaging = (
        ImagingModel(imaging_settings, model_quasar_windows(data, priors, imaging_settings))
        if uses_imaging(mode)
        else None
    )
    kinematics = None
    if uses_kinematics(mode):
        if field is None:
            emu = emulator if emulator is not None else load_emulator(checkpoint)
            field = emulator_field(emu)
        # the distance boxes (paper Table 2) include D_dt < D_d, which numpyro's initial trace
        # evaluates with concrete prior draws: those are in the prior, not an input error
        kinematics = KinematicLikelihood(
            data.kinematics,
            field,
            supersampling=supersampling,
            center_box=priors.center_box(),
            physical_distances=False,
            sampling=sampling,
        )
        if isinstance(field, MapField):
            # the same field, restricted to this forward model's sub-pixels (faster gradient)
            kinematics.vrms_at = field.for_forward_model(kinematics.forward)
    return ModelSetup(
        mode=mode,
        priors=priors,
        imaging=imaging,
        kinematics=kinematics,
        zero_point=imaging_settings.zero_point,
        newton_iterations=newton_iterations,
        solver_start=solver_start_vector(data, solver_start, imaging),
        z_d=data.kinematics.z_d,
    )


CENTRAL_IMAGE_OFFSET = 0.1
"""Largest distance (arcsec) of the quasar's central image from the lens centre (it lies inside
the mass's core, 0.08", where the source maps near the centre)."""


def model_quasar_windows(data: SystemData, priors: Priors, imaging_settings: ImagingSettings):
    """The windows in which the model draws the quasar's images
    (:func:`~skinn_jax.inference.lensing.imaging.quasar_windows`): around the measured outer
    positions (their prior box ``ps_offset``) and the middle of the lens-centre box (its half
    diagonal plus :data:`CENTRAL_IMAGE_OFFSET`), plus the PSF kernel's reach."""
    cx, cy = priors.center_x, priors.center_y
    half_width = max(
        max(abs(v) for v in priors.ps_offset),
        0.5 * math.hypot(cx[1] - cx[0], cy[1] - cy[0]) + CENTRAL_IMAGE_OFFSET,
    )
    central = (0.5 * (cx[0] + cx[1]), 0.5 * (cy[0] + cy[1]))
    return quasar_windows(imaging_settings, data.image_positions, central, half_width)


def check_inputs(data: SystemData, priors: Priors, imaging_settings: ImagingSettings) -> None:
    """Checks before any sampling.

    Raises:
        ValueError: priors outside the training box (:meth:`Priors.check`); an image or noise map
            of the wrong shape, with NaN/inf pixels or non-positive noise; non-finite time delays
            or non-positive uncertainties; kinematic data that are not a ``KinematicData``
            (whose constructor rejects NaN bins and a bad covariance).
    """
    priors.check()
    image = np.asarray(data.imaging.image, dtype=float)
    noise = np.asarray(data.imaging.noise_map, dtype=float)
    n = imaging_settings.n_pix
    for name, arr in (("image", image), ("noise_map", noise)):
        if arr.shape != (n, n):
            raise ValueError(f"imaging {name} has shape {arr.shape}, expected ({n}, {n})")
        bad = ~np.isfinite(arr)
        if bad.any():
            where = np.argwhere(bad)[:5].tolist()
            raise ValueError(
                f"imaging {name} has {int(bad.sum())} non-finite pixels (NaN or inf), e.g. at "
                f"(row, column) {where}: mask or fill them before fitting"
            )
    if np.any(noise <= 0):
        raise ValueError(f"imaging noise_map has {int(np.sum(noise <= 0))} pixels <= 0")
    delays = np.asarray(data.time_delays.delays, float)
    sigma = np.asarray(data.time_delays.sigma, float)
    if delays.shape != (N_IMAGES - 1,) or sigma.shape != delays.shape:
        raise ValueError(
            f"time delays must have shape ({N_IMAGES - 1},) (images B, C, D relative to A), "
            f"got delays {delays.shape} and sigma {sigma.shape}"
        )
    if not (np.all(np.isfinite(delays)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"time delays contain non-finite values: {delays}, sigma {sigma}")
    if np.any(sigma <= 0):
        raise ValueError(f"time-delay uncertainties must be > 0 days, got {sigma}")
    pos = np.asarray(data.image_positions, float)
    if pos.shape != (N_IMAGES, 2) or not np.all(np.isfinite(pos)):
        raise ValueError(
            f"image_positions must be {N_IMAGES} finite (x, y) pairs in arcsec, got {pos.tolist()}"
        )
    if not isinstance(data.kinematics, KinematicData):
        raise ValueError(
            f"kinematics must be a skinn_jax.ifu.KinematicData, got {type(data.kinematics)}"
        )


def _inside(value, box) -> Array:
    return (value >= box[0]) & (value <= box[1])


def _uniform(name: str, box: tuple, shape: tuple[int, ...] = ()):
    """A :class:`BoxUniform` site in ``box = (low, high)`` (scalars, or arrays of ``shape``)."""
    d = BoxUniform(box[0], box[1])
    if shape:
        d = d.expand(shape).to_event(len(shape))
    return numpyro.sample(name, d)


# ----------------------------------------------------------------------------------------------
# Blocks: each samples a few sites (or adds likelihood terms) and fills the values dict ``v``


class Block(NamedTuple):
    """One block of :func:`model`: ``fn(v, data, setup, predictions)`` adds its sites to the
    trace and its values to ``v``; ``sites`` are the sites it samples (in order)."""

    sites: tuple[str, ...]
    fn: Callable[[dict, SystemData, ModelSetup, bool], None]


def _sample_boxes(v: dict, setup: ModelSetup, names: tuple[str, ...]) -> None:
    for name in names:
        v[name] = _uniform(name, getattr(setup.priors, name))


def _block(*sites: str):
    """Decorator: a :class:`Block` sampling ``sites`` with the function's body."""

    def wrap(fn) -> Block:
        return Block(tuple(sites), fn)

    return wrap


def _boxes_block(*sites: str) -> Block:
    """A block of independent uniform priors in the boxes of :class:`Priors`."""
    return Block(tuple(sites), lambda v, data, setup, predictions: _sample_boxes(v, setup, sites))


mass_block = _boxes_block("gamma", "q_mass", "phi", "center_x", "center_y")
"""Kinematics mode: the mass and centre, uniform in their boxes."""

light_block = _boxes_block("q_light", "r_sersic_ratio", "n_sersic")
"""Every mode: the lens light's shape."""


@_block("lens_mag_aperture", "src_r", "src_n", "src_mag", "ps_mag")
def flux_block(v, data, setup, predictions) -> None:
    """Lensing and joint modes: lens-light and source magnitudes and sizes, quasar magnitudes.

    The lens light's magnitude is sampled inside the isophote of major-axis radius
    :data:`~skinn_jax.inference.lensing.lens.LENS_MAG_APERTURE_ARCSEC` (what the imaging
    measures), not as its total (an extrapolation that trades off against ``r_sersic`` and
    ``n_sersic``); the total ``lens_mag`` is a deterministic site of :func:`lens_block`.
    """
    _sample_boxes(v, setup, ("lens_mag_aperture", "src_r", "src_n", "src_mag"))
    v["ps_mag"] = _uniform("ps_mag", setup.priors.ps_mag, (N_IMAGES,))


anisotropy_block = _boxes_block("beta_z", "inclination_deg")
"""Kinematics and joint modes: the anisotropy and inclination."""

time_delay_distance_block = _boxes_block("D_dt")
"""Lensing mode: the time-delay distance, uniform (Mpc)."""


@_block("gamma", "center_x", "center_y", "ps_x", "ps_y_abc")
def image_position_block(v, data, setup, predictions) -> None:
    """Lensing and joint modes: slope, centre and the image positions around the measured ones."""
    _sample_boxes(v, setup, ("gamma", "center_x", "center_y"))
    measured = np.asarray(data.image_positions, float)
    lo, hi = setup.priors.ps_offset
    v["ps_x"] = _uniform("ps_x", (measured[:, 0] + lo, measured[:, 0] + hi), (N_IMAGES,))
    v["ps_y_abc"] = _uniform(
        "ps_y_abc", (measured[:3, 1] + lo, measured[:3, 1] + hi), (N_IMAGES - 1,)
    )


@_block(RATIO_THETA_E_SITE, THETA_E_FRACTION_SITE)
def kinematic_scale_block(v, data, setup, predictions) -> None:
    """Kinematics mode: ``log_ratio_theta_E = log(D_dt / D_d x theta_E)``, the combination the IFU
    measures, so the ridge of the ``(theta_E, ratio)`` degeneracy is close to a coordinate axis,
    and ``theta_E_fraction``, where ``log_theta_E`` lies in the interval the prior allows at that
    ``log_ratio_theta_E`` (:func:`log_theta_E_from_fraction`).

    The prior of ``(log_theta_E, log_ratio_theta_E)`` is the other modes' (uniform ``theta_E``
    and ``(D_dt, D_d)``), Jacobian included (:func:`log_kinematic_scale_prior`), times the
    Jacobian of the fraction; the two uniform draws' constants are replaced by it. Its support,
    a parallelogram in ``(log_theta_E, log_ratio_theta_E)``, is the whole sampled rectangle: the
    log density has no ``-inf`` inside the sampled coordinates.
    """
    pr = setup.priors
    box_w = ratio_theta_E_box(pr.theta_E, pr.D_dt, pr.D_d)
    log_ratio_theta_E = _uniform(RATIO_THETA_E_SITE, box_w)
    fraction = _uniform(THETA_E_FRACTION_SITE, (0.0, 1.0))
    log_theta_E, log_jacobian = log_theta_E_from_fraction(
        log_ratio_theta_E, fraction, pr.theta_E, pr.D_dt, pr.D_d
    )
    numpyro.factor(
        "scale_prior",
        log_kinematic_scale_prior(log_theta_E, log_ratio_theta_E, pr.theta_E, pr.D_dt, pr.D_d)
        + log_jacobian
        + math.log(box_w[1] - box_w[0]),
    )
    v[LOG_THETA_E_SITE] = numpyro.deterministic(LOG_THETA_E_SITE, log_theta_E)
    v["theta_E"] = numpyro.deterministic("theta_E", jnp.exp(log_theta_E))
    _, log_ratio = from_kinematic_scale_coordinates(log_theta_E, log_ratio_theta_E)
    log_ratio = numpyro.deterministic(RATIO_SITE, log_ratio)
    ratio = numpyro.deterministic(RATIO, jnp.exp(log_ratio))
    v["D_dt"], v["D_d"] = kinematic_distances(ratio)


@_block()
def light_shape_block(v, data, setup, predictions) -> None:
    """Kinematics mode: the light's ellipticity measured on the imaging (``data.light_shape``,
    if given) as a prior on ``(q_light, phi)`` (:func:`log_light_shape_prior`)."""
    if data.light_shape is not None:
        numpyro.factor(
            "light_shape", log_light_shape_prior(v["q_light"], v["phi"], data.light_shape)
        )


@_block(*DISTANCE_SITES)
def log_distance_block(v, data, setup, predictions) -> None:
    """Joint mode: ``log D_dt``, ``log D_d`` (Mpc) with the Jacobian that keeps ``(D_dt, D_d)``
    uniform."""
    pr = setup.priors
    log_dt = _uniform("log_D_dt", (math.log(pr.D_dt[0]), math.log(pr.D_dt[1])))
    log_dd = _uniform("log_D_d", (math.log(pr.D_d[0]), math.log(pr.D_d[1])))
    v["D_dt"] = numpyro.deterministic("D_dt", jnp.exp(log_dt))
    v["D_d"] = numpyro.deterministic("D_d", jnp.exp(log_dd))
    numpyro.factor("distance_prior", distance_log_jacobian(log_dt, log_dd))


@_block()
def lens_block(v, data, setup, predictions) -> None:
    """Lensing and joint modes: solve the lens for the image positions; χ²_img and χ²_TD.

    The prior is uniform in ``(theta_E, q_mass, phi, gamma1, gamma2, src_x, src_y)`` inside their
    boxes (zero outside): the sampled image positions carry the density
    ``|∂(lens)/∂(images)| = |∂(lens)/∂(EPL)| |∂(EPL)/∂(images)|`` at fixed ``gamma`` and centre.
    """
    pr = setup.priors
    imaging = setup.imaging
    lens, derived, residual, log_jac = solved_lens_params(setup, v)
    v.update(derived)
    for name in SOLVED + ("theta_E", "q_mass", "phi", "ps_y"):
        numpyro.deterministic(name, derived[name])
    numpyro.deterministic("lens_eq_residual", residual)
    numpyro.deterministic(
        "lens_mag", total_magnitude(v["lens_mag_aperture"], lens.r_sersic, v["n_sersic"])
    )
    inside = _inside(v["theta_E"], pr.theta_E) & _inside(v["q_mass"], pr.q_mass)
    for name in ("gamma1", "gamma2", "src_x", "src_y"):
        inside = inside & _inside(v[name], getattr(pr, name))
    log_prior = log_jac - log_epl_jacobian(v["theta_E"], v["gamma"], v["q_mass"], v["phi"])
    numpyro.factor("lens_prior", jnp.where(inside, log_prior, -jnp.inf))
    image_model = imaging.model_image(lens)
    img = data.imaging
    chi2_img = jnp.sum(((jnp.asarray(img.image) - image_model) / jnp.asarray(img.noise_map)) ** 2)
    numpyro.factor("imaging", -0.5 * chi2_img)
    delays = imaging.time_delays(lens, v["D_dt"])
    td = data.time_delays
    chi2_td = jnp.sum(((delays - jnp.asarray(td.delays)) / jnp.asarray(td.sigma)) ** 2)
    numpyro.factor("time_delays", -0.5 * chi2_td)
    numpyro.deterministic("chi2_imaging", chi2_img)
    numpyro.deterministic("chi2_time_delays", chi2_td)
    if predictions:
        numpyro.deterministic("image_pred", image_model)
        numpyro.deterministic("time_delays_pred", delays)


@_block()
def light_size_block(v, data, setup, predictions) -> None:
    """Every mode, after ``theta_E`` is known (sampled or solved): ``r_sersic``, arcsec."""
    numpyro.deterministic("r_sersic", v["r_sersic_ratio"] * v["theta_E"])


@_block()
def kinematics_block(v, data, setup, predictions) -> None:
    """Kinematics and joint modes: log L of the binned v_rms (``setup.kinematics``)."""
    params, sky = emulator_params(v), sky_params(v)
    log_l_kin = setup.kinematics(params, sky)
    numpyro.factor("kinematics", log_l_kin)
    numpyro.deterministic("chi2_kinematics", -2.0 * log_l_kin)
    if predictions:
        numpyro.deterministic("vrms_pred", setup.kinematics.predict(params, sky))


MODE_BLOCKS: dict[str, tuple[Block, ...]] = {
    "joint": (
        image_position_block,
        light_block,
        flux_block,
        anisotropy_block,
        log_distance_block,
        lens_block,
        light_size_block,
        kinematics_block,
    ),
    "lensing": (
        image_position_block,
        light_block,
        flux_block,
        time_delay_distance_block,
        lens_block,
        light_size_block,
    ),
    "kinematics": (
        mass_block,
        light_block,
        light_shape_block,
        anisotropy_block,
        kinematic_scale_block,
        light_size_block,
        kinematics_block,
    ),
}
"""The one per-mode table: the blocks of each mode, in order (the sampled sites, the set-up it
needs and the likelihood terms all follow from it)."""


def mode_blocks(mode: Mode) -> tuple[Block, ...]:
    """The blocks of ``mode`` (:data:`MODE_BLOCKS`)."""
    if mode not in MODE_BLOCKS:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return MODE_BLOCKS[mode]


def site_names(mode: Mode) -> tuple[str, ...]:
    """The sampled sites of a mode, in the model's order."""
    return tuple(name for block in mode_blocks(mode) for name in block.sites)


def uses_imaging(mode: Mode) -> bool:
    """Whether ``mode`` has the imaging and time delays (the lens block)."""
    return lens_block in mode_blocks(mode)


def uses_kinematics(mode: Mode) -> bool:
    """Whether ``mode`` has the kinematic likelihood."""
    return kinematics_block in mode_blocks(mode)


def uses_light_shape(mode: Mode) -> bool:
    """Whether ``mode`` takes ``SystemData.light_shape`` as a prior (the modes without imaging)."""
    return light_shape_block in mode_blocks(mode)


def model(data: SystemData, setup: ModelSetup, predictions: bool = False) -> None:
    """NumPyro model of one lens system: the blocks of ``setup.mode`` (:data:`MODE_BLOCKS`).

    Args:
        data: the observations (imaging, time delays, kinematics, measured image positions).
        setup: the static set-up from :func:`build_setup` (mode, priors, forward models).
        predictions: also record the predictions as deterministic sites ``image_pred``
            (counts/s per pixel), ``time_delays_pred`` (days) and ``vrms_pred`` (km/s per bin),
            for :func:`skinn_jax.inference.predict.predict` (off when sampling: draws would store
            whole images).
    """
    v: dict = {}
    for block in mode_blocks(setup.mode):
        block.fn(v, data, setup, predictions)


def log_density(data: SystemData, setup: ModelSetup, values: dict) -> Array:
    """The model's joint log density (priors + likelihood terms) at constrained ``values``."""
    from numpyro.infer.util import log_density as numpyro_log_density

    values = {k: jnp.asarray(v) for k, v in values.items() if k in site_names(setup.mode)}
    return numpyro_log_density(model, (data, setup), {}, values)[0]
