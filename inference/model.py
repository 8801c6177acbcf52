"""The joint lensing + time-delay + kinematics model: a plain NumPyro model function.

``model(data, setup)`` (NumPyro-examples style: the model is a function of the data and a static
set-up; inference lives in :mod:`skinn_jax.inference.fit`). The log likelihood is paper eq. 12::

    log L = -1/2 (χ²_img + χ²_TD + χ²_kin)

``setup.mode`` picks the terms: ``"joint"`` (all), ``"lensing"`` (imaging + time delays),
``"kinematics"`` (the IFU alone).

Prior
-----
The same in every mode (model version 5): uniform in the paper's parameters -- the emulator's
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
``lens_mag``            mag                     lens-light total magnitude
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

Kinematics mode (model versions >= 4) samples ``log_theta_E = log(theta_E / 1″)`` (emulator
convention), ``gamma``, ``q_mass``, ``phi``, the centre, ``q_light``, ``r_sersic_ratio``,
``n_sersic``, ``beta_z``, ``inclination_deg`` and ``log_ratio_theta_E = log(D_dt / D_d x theta_E /
1″)``, with ``theta_E``, ``log_ratio = log(D_dt / D_d)`` and ``ratio_D_dt_D_d = D_dt / D_d``
deterministic sites; ``D_dt`` and ``D_d`` are not sites of this mode. The IFU alone measures the
distances only through their ratio (v_rms scales as ``sqrt(D_dt / ((1 + z_d) D_d)) / sqrt(D_s_fid /
D_ds_fid)``, CONVENTIONS §4, :func:`skinn_jax.cosmology.vrms_distance_factor`), and without the
imaging the mass normalisation ``theta_E`` and that ratio are degenerate: the emulator's velocity
scale is ``200 km/s sqrt(theta_E)``, so ``v_rms² ∝ ratio x theta_E``. ``log_ratio_theta_E`` is that
combination (twice the log of the v_rms normalisation, up to a constant): sampled as ``(theta_E,
log_ratio)`` the posterior was a curved ridge (mock system 0, Laplace correlation -0.98 at the MAP;
warm-up unfinished after 13 min), sampled as ``(log D_dt, log D_d)`` a ridge along the whole
distance box (system 9, version 3: 645 s of warm-up, 79k evaluations, 15 divergences). The prior is
the same as in the other modes: uniform in ``(theta_E, q_mass, phi)`` and uniform
``(D_dt, D_d)`` in their boxes, whose marginal for ``log_ratio`` is :func:`log_ratio_prior`;
:func:`log_kinematic_scale_prior` is the density of ``(log_theta_E, log_ratio_theta_E)`` they
imply, with the Jacobian ``|∂(theta_E, log_ratio) / ∂(log_theta_E, log_ratio_theta_E)| = theta_E``.
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
from dataclasses import dataclass, field, fields, replace
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array

from skinn_jax.cosmology import FIDUCIAL
from skinn_jax.forward import CenterBox, ForwardModel, SkyParams, cubic_interpolate
from skinn_jax.grid import (
    PIXEL_ARCSEC,
    QUADRANT_SIZE,
    quadrant_coordinates,
)
from skinn_jax.ifu import KinematicData
from skinn_jax.likelihood import KinematicLikelihood
from skinn_jax.params import INCLINATION_MIN_DEG, PARAM_BOX, PARAM_NAMES, R_SERSIC_RATIO_BOX
from skinn_jax.profiles import (
    e1e2_from_q_phi,
    q_phi_from_e1e2,
    sersic_total_flux,
    theta_E_epl_from_emulator,
    theta_E_from_epl,
)

from .lensing import (
    ImagingModel,
    ImagingSettings,
    LensParams,
    flux_from_magnitude,
)
from .mock_system import ImagingData, MockSystem, TimeDelayData

Mode = Literal["joint", "lensing", "kinematics"]
MODES: tuple[str, ...] = ("joint", "lensing", "kinematics")

N_IMAGES = 4
"""Quasar images with free positions and fluxes (the central image is derived)."""


# ----------------------------------------------------------------------------------------------
# Priors


@dataclass(frozen=True)
class Priors:
    """Prior boxes ``(low, high)`` (units as in the module table); see the module docstring.

    The eight emulator-related boxes default to the training box (CONVENTIONS §1); the others are
    broad boxes that contain every mock system of :mod:`skinn_jax.inference.mock_system` (Table 2
    ranges with margins; distances fiducial x [0.3, 3]). In lensing and joint modes
    ``theta_E``, ``q_mass``, ``gamma1``, ``gamma2``, ``src_x``, ``src_y`` are solved, not sampled:
    their boxes are the support of the prior (zero density outside); ``ps_offset`` is the box of
    the sampled image coordinates around their measured positions (a coordinate range for the
    sampler, not a prior: the prior is uniform in ``theta_E, q_mass, phi`` and the other lens
    parameters).
    """

    theta_E: tuple[float, float] = PARAM_BOX["theta_E"]
    gamma: tuple[float, float] = PARAM_BOX["gamma"]
    q_mass: tuple[float, float] = PARAM_BOX["q_mass"]
    phi: tuple[float, float] = (-math.pi / 4, 3 * math.pi / 4)
    center_x: tuple[float, float] = (-0.3, 0.3)
    center_y: tuple[float, float] = (-0.3, 0.3)
    gamma1: tuple[float, float] = (-0.15, 0.15)
    gamma2: tuple[float, float] = (-0.15, 0.15)
    q_light: tuple[float, float] = PARAM_BOX["q_light"]
    r_sersic_ratio: tuple[float, float] = R_SERSIC_RATIO_BOX
    n_sersic: tuple[float, float] = PARAM_BOX["n_sersic"]
    lens_mag: tuple[float, float] = (16.0, 22.0)
    src_x: tuple[float, float] = (-1.0, 1.0)
    src_y: tuple[float, float] = (-1.0, 1.0)
    src_r: tuple[float, float] = (0.02, 0.5)
    src_n: tuple[float, float] = (0.5, 4.0)
    src_mag: tuple[float, float] = (19.0, 26.0)
    ps_mag: tuple[float, float] = (15.0, 28.0)
    ps_offset: tuple[float, float] = (-0.25, 0.25)
    beta_z: tuple[float, float] = PARAM_BOX["beta_z"]
    inclination_deg: tuple[float, float] = PARAM_BOX["inclination_deg"]
    # broad distance boxes (the mocks draw fiducial x [0.8, 1.2]): a joint posterior that reaches
    # a box edge mixes poorly (model-v2 study, system 1, box [0.5, 1.5]: D_d ESS 24 of 600)
    D_dt: tuple[float, float] = (0.3 * FIDUCIAL.D_dt, 3.0 * FIDUCIAL.D_dt)
    D_d: tuple[float, float] = (0.3 * FIDUCIAL.D_d, 3.0 * FIDUCIAL.D_d)

    EMULATOR_BOXES = {
        "theta_E": PARAM_BOX["theta_E"],
        "gamma": PARAM_BOX["gamma"],
        "q_mass": PARAM_BOX["q_mass"],
        "q_light": PARAM_BOX["q_light"],
        "r_sersic_ratio": R_SERSIC_RATIO_BOX,
        "n_sersic": PARAM_BOX["n_sersic"],
        "beta_z": PARAM_BOX["beta_z"],
        "inclination_deg": (INCLINATION_MIN_DEG, 90.0),
    }

    def check(self) -> None:
        """Raise ``ValueError`` for an empty or non-finite box, or an emulator box too wide.

        Every box must be finite with ``low < high``; the eight emulator-related boxes must lie
        inside the training box (``theta_E`` and ``r_sersic_ratio`` included); distances must be
        positive.
        """
        tol = 1e-9
        for f in fields(self):
            low, high = getattr(self, f.name)
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise ValueError(f"prior {f.name} = ({low}, {high}) must be finite with low < high")
        for name, (lo_box, hi_box) in self.EMULATOR_BOXES.items():
            low, high = getattr(self, name)
            if low < lo_box - tol or high > hi_box + tol:
                raise ValueError(
                    f"prior {name} = ({low:.6g}, {high:.6g}) extends outside the emulator's "
                    f"training box [{lo_box:.6g}, {hi_box:.6g}]"
                )
        for name in ("D_dt", "D_d"):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"prior {name} = {getattr(self, name)} Mpc must be > 0")
        if self.phi[1] - self.phi[0] > math.pi + tol:
            raise ValueError(
                f"prior phi = {self.phi} spans more than π: φ and φ + π are the same ellipse"
            )

    def center_box(self) -> CenterBox:
        """The centre box the kinematic forward model must be valid for."""
        return CenterBox(self.center_x[0], self.center_x[1], self.center_y[0], self.center_y[1])

    def contains(self, values: dict[str, np.ndarray]) -> dict[str, bool]:
        """For each site in ``values`` with a prior here: is every element inside its box?"""
        out = {}
        for name, v in values.items():
            if hasattr(self, name) and name != "EMULATOR_BOXES":
                low, high = getattr(self, name)
                v = np.asarray(v)
                out[name] = bool(np.all((v >= low) & (v <= high)))
        return out


DEFAULT_PRIORS = Priors()
DEFAULT_IMAGING = ImagingSettings()


MODEL_VERSION = 5
"""Version of the model, part of every fit's fingerprint (2: log distances; 3: the model's own
numerics, :data:`MODEL_QUAD_NODES` and :data:`MODEL_SUPERSAMPLING`, distance boxes fiducial x
[0.3, 3]; 4: kinematics mode samples ``log_theta_E`` and ``log_ratio_theta_E = log(D_dt / D_d x
theta_E)`` instead of ``theta_E`` and the two distances, with the same prior,
:func:`log_kinematic_scale_prior`; 5: the prior is uniform in the emulator's ``(theta_E, q_mass,
phi)`` in every mode, and the image-position Jacobian has the right sign)."""

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
"""Sampled site of kinematics mode: ``log(theta_E / 1″)``, the emulator-convention Einstein radius
(``theta_E`` is a deterministic site)."""

RATIO_THETA_E_SITE = "log_ratio_theta_E"
"""Sampled site of kinematics mode: ``log(D_dt / D_d x theta_E / 1″)``, the combination the IFU
alone measures (``v_rms² ∝ (D_dt / D_d) theta_E``); ``log_ratio`` is this minus ``log_theta_E``."""

RATIO = "ratio_D_dt_D_d"
"""Deterministic site of kinematics mode: ``D_dt / D_d`` (dimensionless)."""

KINEMATICS_REFERENCE_D_D = FIDUCIAL.D_d
"""``D_d`` (Mpc) at which kinematics mode evaluates the likelihood, with ``D_dt = ratio x D_d``.

Any value gives the same v_rms (it depends on the distances only through ``D_dt / D_d``); the
fiducial one keeps :func:`skinn_jax.forward.check_sky_params`'s positivity check meaningful."""


def site_names(mode: Mode) -> tuple[str, ...]:
    """The sampled sites of a mode, in the model's order."""
    light = ("q_light", "r_sersic_ratio", "n_sersic")
    kinematic = ("beta_z", "inclination_deg")
    if mode == "kinematics":
        mass = (LOG_THETA_E_SITE, "gamma", "q_mass", "phi", "center_x", "center_y")
        return mass + light + kinematic + (RATIO_THETA_E_SITE,)
    lensing = ("gamma", "center_x", "center_y", "ps_x", "ps_y_abc") + light
    lensing += ("lens_mag", "src_r", "src_n", "src_mag", "ps_mag")
    if mode == "joint":
        return lensing + kinematic + DISTANCE_SITES
    if mode == "lensing":
        return lensing + ("D_dt",)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


SOLVED: tuple[str, ...] = ("theta_E_epl", "e1", "e2", "gamma1", "gamma2", "src_x", "src_y")
"""Lens parameters solved from the image positions in lensing and joint modes (plus ``ps_y[3]``)."""


PAPER_PARAMETERS: tuple[str, ...] = PARAM_NAMES + ("phi", "center_x", "center_y", "D_dt", "D_d")
"""The 13 parameters of paper Tables 1 and 2 (``r_sersic`` is a deterministic site).

Kinematics mode has 11 of them (``theta_E`` deterministic) and :data:`RATIO` instead of ``D_dt``
and ``D_d``."""


# ----------------------------------------------------------------------------------------------
# Data and set-up


class SystemData(NamedTuple):
    """The observations of one lens system.

    Attributes:
        imaging: image and noise map (counts/s per pixel).
        time_delays: delays of images 1..3 relative to image 0 and their uncertainties (days).
        kinematics: binned IFU v_rms data.
        image_positions: positions of the four outer quasar images measured on the image
            (A first: the delays are relative to it), arcsec, (4, 2).
        imaging_settings: the imaging's pixel grid, PSF, noise and numerics (None: the defaults
            of :class:`~skinn_jax.inference.lensing.ImagingSettings`).
    """

    imaging: ImagingData
    time_delays: TimeDelayData
    kinematics: KinematicData
    image_positions: np.ndarray
    imaging_settings: ImagingSettings | None = None

    @classmethod
    def from_mock(cls, system: MockSystem) -> SystemData:
        return cls(
            system.imaging,
            system.time_delays,
            system.kinematics.data,
            np.asarray(system.measured_positions, float),
            system.settings.imaging,
        )


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


class EmulatorField:
    """The emulator's galaxy-frame v_rms field by the fast map route (a ``VrmsField``).

    As :func:`skinn_jax.forward.field_from_quadrant` of ``emu.vrms_quadrant`` with its central
    refinement (the 551 x 551 map, cubic-convolution interpolated, and within
    ``|x|, |y| <= inner_half_width`` a fine ``inner_step`` table of ``vrms_at``), with two savings:

    - the fine table's network features depend only on its fixed coordinates and are computed
      once, so each evaluation costs two small matrix-vector products (map and table);
    - :meth:`for_forward_model` gives a field for one kinematic forward model that interpolates the
      fine table only at the sub-pixels that can fall inside the refined square for some centre in
      the forward model's ``center_box`` (~8 % of them for 55 x 55 spaxels and a ±0.3″ box),
      instead of at every sub-pixel: the same values, ~2x faster log L + gradient.

    Network evaluations run in float32 (the network's precision), the interpolation in
    ``interp_dtype`` (float32 by default: log L agrees with float64 to ~1e-6); results are returned
    in the caller's dtype.

    Args:
        emu: a ``skinn_jax.Emulator``.
        interp_dtype: precision of the interpolation.
        inner_half_width, inner_step: the refined central square, arcsec.
    """

    def __init__(self, emu, interp_dtype=jnp.float32, inner_half_width=0.1, inner_step=0.0025):
        self.emu = emu
        self.interp_dtype = interp_dtype
        self.inner_half_width = float(inner_half_width)
        self.inner_step = float(inner_step)
        self._n_inner = int(np.ceil(inner_half_width / inner_step)) + 2
        coords = np.arange(-self._n_inner, self._n_inner + 1) * inner_step
        self._inner_shape = (coords.size, coords.size)
        inner_x, inner_y = np.meshgrid(coords, coords)
        self._inner_xy = (inner_x, inner_y)
        with jax.ensure_compile_time_eval():
            emu.grid_features()  # cache eagerly (a first call inside a trace would cache a tracer)
            self._inner_features = np.asarray(
                jax.jit(emu.features)(
                    jnp.asarray(inner_x, jnp.float32), jnp.asarray(inner_y, jnp.float32)
                )
            )

    def map_table(self, params, half_width: float | None = None):
        """The map padded by two edge pixels (interpolation dtype), and its origin.

        With ``half_width`` (arcsec), only the central ``n x n`` pixels of the quadrant that cover
        ``|x|, |y| <= half_width`` (and the interpolation's reach) are computed: the network's map
        costs ``(n / 276)²`` of the full one.
        """
        p = jnp.asarray(params).astype(jnp.float32)
        n = QUADRANT_SIZE
        if half_width is not None:
            n = min(QUADRANT_SIZE, int(math.ceil(half_width / PIXEL_ARCSEC)) + 3)
        if n == QUADRANT_SIZE:
            quadrant = self.emu.vrms_quadrant(p)
        else:
            quadrant = self._quadrant_corner(p, n)
        quadrant = quadrant.astype(self.interp_dtype)
        top = jnp.concatenate([quadrant, quadrant[:, -2::-1]], axis=1)
        full = jnp.concatenate([top, top[-2::-1, :]], axis=0)
        return jnp.pad(full, 2, mode="edge"), -(n - 1) * PIXEL_ARCSEC - 2 * PIXEL_ARCSEC

    def _quadrant_corner(self, p, n: int):
        """v_rms on the quadrant's central corner ``[-n:, -n:]`` (the ``n x n`` pixels nearest
        the centre), as ``emu.vrms_quadrant`` computes the whole quadrant."""
        emu = self.emu
        style = emu.style(p)
        if emu.config.kind == "pca" and emu.config.basis_rank > 0:  # factorised basis
            c = emu.variables["constants"]
            core = jnp.einsum("abk,k->ab", c["core"], style)
            u = c["rows"][-n:] @ core @ c["cols"][-n:].T
        else:
            k = style.shape[-1]
            features = emu.grid_features().reshape(QUADRANT_SIZE, QUADRANT_SIZE, k)
            u = features[-n:, -n:] @ style.astype(features.dtype)
        radius = np.hypot(*quadrant_coordinates())[-n:, -n:]
        return emu.velocity_from_output(p, u, radius)

    def inner_table(self, params):
        """The fine central table of ``vrms_at`` (interpolation dtype), and its origin."""
        p = jnp.asarray(params).astype(jnp.float32)
        u = jnp.asarray(self._inner_features) @ self.emu.style(p)
        radius = np.hypot(*self._inner_xy)
        table = self.emu.velocity_from_output(p, u, radius).astype(self.interp_dtype)
        return table, -self._n_inner * self.inner_step

    def _combine(self, params, x, y):
        """Coarse and fine interpolation at flat points ``x, y`` (interpolation dtype)."""
        padded, origin = self.map_table(params)
        coarse = cubic_interpolate(padded, origin, PIXEL_ARCSEC, x, y)
        table, inner_origin = self.inner_table(params)
        fine = cubic_interpolate(table, inner_origin, self.inner_step, x, y)
        inside = (jnp.abs(x) <= self.inner_half_width) & (jnp.abs(y) <= self.inner_half_width)
        return jnp.where(inside, fine, coarse)

    def __call__(self, params, x, y):
        """v_rms (km/s, fiducial distances) at galaxy-frame points ``x, y`` (arcsec), any shape."""
        x, y = jnp.asarray(x), jnp.asarray(y)
        out_dtype = jnp.result_type(x, float)
        xi, yi = x.astype(self.interp_dtype), y.astype(self.interp_dtype)
        return self._combine(params, xi, yi).astype(out_dtype)

    def for_forward_model(self, forward: ForwardModel) -> _ForwardModelField:
        """A field specialised to the points of ``forward`` (see class docstring)."""
        return _ForwardModelField(self, forward)


class _ForwardModelField:
    """:class:`EmulatorField` restricted to one forward model's points.

    Called with galaxy-frame arrays of the forward model's point shape (as
    ``skinn_jax.forward.predict_binned_vrms`` does), the fine table is interpolated only at the
    candidate points that can lie within ``inner_half_width sqrt(2)`` of the centre
    (``ForwardModel.points_near_centre``). Any other shape falls back to the generic
    :class:`EmulatorField`.
    """

    def __init__(self, field: EmulatorField, forward: ForwardModel):
        self.field = field
        self.shape = forward.point_shape
        reach = field.inner_half_width * math.sqrt(2.0) + 1e-9
        self.candidates = forward.points_near_centre(reach)
        self.half_width = forward.max_radius  # no point lies farther from the centre

    def __call__(self, params, x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.shape != self.shape or y.shape != self.shape:
            return self.field(params, x, y)
        f = self.field
        out_dtype = jnp.result_type(x, float)
        xi, yi = x.astype(f.interp_dtype), y.astype(f.interp_dtype)
        padded, origin = f.map_table(params, self.half_width)
        # (interpolating the 2-D arrays, then flattening, is ~2x faster in reverse mode on CPU
        # than interpolating flattened arrays)
        coarse = cubic_interpolate(padded, origin, PIXEL_ARCSEC, xi, yi).ravel()
        cand = self.candidates  # NumPy indices: compile-time constants
        xc, yc = xi.ravel()[cand], yi.ravel()[cand]
        table, inner_origin = f.inner_table(params)
        fine = cubic_interpolate(table, inner_origin, f.inner_step, xc, yc)
        inside = (jnp.abs(xc) <= f.inner_half_width) & (jnp.abs(yc) <= f.inner_half_width)
        out = coarse.at[cand].set(jnp.where(inside, fine, coarse[cand]))
        return out.reshape(self.shape).astype(out_dtype)


def emulator_field(emu, interp_dtype=jnp.float32) -> EmulatorField:
    """The fast map-route field of ``emu`` (see :class:`EmulatorField`)."""
    return EmulatorField(emu, interp_dtype)


PAPER_BOX_EMULATOR = "pca64s"
"""The shipped emulator of the paper's eight-parameter box, which this model's priors, mock
systems and parameter conversions are written for (the package default is the real-lens one)."""


def load_emulator(checkpoint=None):
    """``skinn_jax.Emulator.load(checkpoint)`` (:data:`PAPER_BOX_EMULATOR` if None), float32
    weights.

    Loaded with float64 disabled, so that the constants the emulator derives at load are float32
    as in the fits behind the committed study (``Emulator.load`` itself works under
    ``jax_enable_x64``).
    """
    import skinn_jax

    with jax.enable_x64(False):
        return skinn_jax.Emulator.load(checkpoint or PAPER_BOX_EMULATOR)


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
    imaging = ImagingModel(imaging_settings) if mode in ("joint", "lensing") else None
    kinematics = None
    if mode in ("joint", "kinematics"):
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
        if isinstance(field, EmulatorField):
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


# ----------------------------------------------------------------------------------------------
# Parameter conversions (all through skinn_jax.profiles)


def emulator_params(values: dict) -> Array:
    """The emulator's eight inputs (order of ``PARAM_NAMES``) from sampled/derived values.

    Needs ``theta_E`` and ``q_mass`` in the emulator's convention (sampled in kinematics mode,
    derived by :func:`mass_from_epl` otherwise); ``r_sersic = r_sersic_ratio * theta_E``.
    """
    theta_E = values["theta_E"]
    return jnp.stack(
        [
            jnp.asarray(theta_E),
            jnp.asarray(values["gamma"]),
            jnp.asarray(values["q_mass"]),
            jnp.asarray(values["q_light"]),
            values["r_sersic_ratio"] * theta_E,
            jnp.asarray(values["n_sersic"]),
            jnp.asarray(values["beta_z"]),
            jnp.asarray(values["inclination_deg"]),
        ]
    )


def sky_params(values: dict) -> SkyParams:
    """The five sky parameters of paper Table 2 from sampled/derived values."""
    return SkyParams(
        values["phi"], values["center_x"], values["center_y"], values["D_dt"], values["D_d"]
    )


def mass_from_epl(theta_E_epl, gamma, e1, e2) -> dict:
    """Emulator mass parameters from Herculens EPL ones, by the tested conversions.

    :func:`skinn_jax.profiles.q_phi_from_e1e2` and :func:`skinn_jax.profiles.theta_E_from_epl`.

    Returns:
        ``{"theta_E", "q_mass", "phi"}``.
    """
    q, phi = q_phi_from_e1e2(e1, e2)
    return {"theta_E": theta_E_from_epl(theta_E_epl, gamma, q), "q_mass": q, "phi": phi}


def epl_from_mass(theta_E, gamma, q_mass, phi) -> dict:
    """Herculens EPL parameters from emulator ones (tested conversions; inverse of the above).

    :func:`skinn_jax.profiles.theta_E_epl_from_emulator` and
    :func:`skinn_jax.profiles.e1e2_from_q_phi`.
    """
    e1, e2 = e1e2_from_q_phi(q_mass, phi)
    return {"theta_E_epl": theta_E_epl_from_emulator(theta_E, gamma, q_mass), "e1": e1, "e2": e2}


def log_epl_jacobian(theta_E, gamma, q_mass, phi) -> Array:
    """``log |det ∂(theta_E_epl, e1, e2) / ∂(theta_E, q_mass, phi)|`` at fixed ``gamma``.

    Subtracted in lensing and joint modes, where the EPL parameters are solved from the image
    positions, so that the prior is uniform in ``(theta_E, q_mass, phi)``.
    """

    def f(u):
        out = epl_from_mass(u[0], gamma, u[1], u[2])
        return jnp.stack([out["theta_E_epl"], out["e1"], out["e2"]])

    u = jnp.stack([jnp.asarray(theta_E), jnp.asarray(q_mass), jnp.asarray(phi)])
    return jnp.linalg.slogdet(jax.jacfwd(f)(u))[1]


def lens_params(values: dict, zero_point: float) -> LensParams:
    """Herculens imaging parameters from a dict with the EPL mass, shear, source and images.

    ``values`` holds ``theta_E_epl, e1, e2, gamma, center_x, center_y, gamma1, gamma2,
    src_x, src_y, ps_x (4,), ps_y (4,)``, the light parameters and magnitudes, and the emulator
    ``theta_E`` and ``phi`` (for ``r_sersic`` and the light's position angle). Amplitudes come
    from total magnitudes with the exact Sérsic total flux; the central image's flux is left at
    zero (:func:`with_central_image`).
    """
    r_sersic = values["r_sersic_ratio"] * values["theta_E"]
    lens_flux = flux_from_magnitude(values["lens_mag"], zero_point)
    src_flux = flux_from_magnitude(values["src_mag"], zero_point)
    return LensParams(
        theta_E_epl=values["theta_E_epl"],
        gamma=values["gamma"],
        e1=values["e1"],
        e2=values["e2"],
        center_x=values["center_x"],
        center_y=values["center_y"],
        gamma1=values["gamma1"],
        gamma2=values["gamma2"],
        lens_amp=lens_flux / sersic_total_flux(r_sersic, values["n_sersic"], values["q_light"]),
        r_sersic=r_sersic,
        n_sersic=values["n_sersic"],
        q_light=values["q_light"],
        phi=values["phi"],
        src_x=values["src_x"],
        src_y=values["src_y"],
        src_amp=src_flux / sersic_total_flux(values["src_r"], values["src_n"], 1.0),
        src_r=values["src_r"],
        src_n=values["src_n"],
        ps_x=values["ps_x"],
        ps_y=values["ps_y"],
        ps_amp=flux_from_magnitude(values["ps_mag"], zero_point),
        ps_central_amp=0.0,
    )


def with_central_image(imaging: ImagingModel, lens: LensParams) -> LensParams:
    """Set the central image's flux to ``mean_i(F_i / |μ_i|) |μ_c|`` (the implied quasar flux)."""
    xc, yc = imaging.central_image(lens)
    mu = imaging.magnification(
        lens, jnp.concatenate([jnp.atleast_1d(lens.ps_x), xc[None]]),
        jnp.concatenate([jnp.atleast_1d(lens.ps_y), yc[None]]),
    )  # fmt: skip
    quasar_flux = jnp.mean(lens.ps_amp / jnp.abs(mu[:-1]))
    return lens._replace(ps_central_amp=quasar_flux * jnp.abs(mu[-1]))


# ----------------------------------------------------------------------------------------------
# The lens solver (lensing and joint modes)


def lens_light_centre(data: SystemData, imaging: ImagingModel) -> np.ndarray:
    """The lens light's peak, measured on the image: (x, y) arcsec.

    The flux-weighted centroid of the 3 x 3 pixels around the brightest pixel that lies within
    1″ of the images' mean position and more than 0.3″ from every quasar image.
    """
    pos = np.asarray(data.image_positions, float)
    x, y = imaging.coordinates
    image = np.asarray(data.imaging.image, float)
    mean = pos.mean(axis=0)
    allowed = np.hypot(x - mean[0], y - mean[1]) < 1.0
    for px, py in pos:
        allowed &= np.hypot(x - px, y - py) > 0.3
    r, c = np.unravel_index(np.argmax(np.where(allowed, image, -np.inf)), image.shape)
    rs, cs = slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2)
    w = np.clip(image[rs, cs], 0.0, None)
    return np.array([np.sum(w * x[rs, cs]), np.sum(w * y[rs, cs])]) / np.sum(w)


def default_solver_start(
    data: SystemData, imaging: ImagingModel, gamma: float = 2.0, max_iter: int = 100
) -> dict:
    """A start for the lens solver from the measured image positions alone.

    Starting from a slightly elliptical, slightly sheared lens centred on the lens light's peak
    (:func:`lens_light_centre`), with ``theta_E_epl`` the images' mean distance from it, damped
    Newton iterations (eager,
    at most ``max_iter``) solve the lens equations for the measured positions at slope
    ``gamma``; the solution is the start of the in-model solver.

    Raises:
        ValueError: the iterations do not converge (pass ``solver_start`` to :func:`build_setup`).
    """
    pos = np.asarray(data.image_positions, float)
    centre = lens_light_centre(data, imaging)
    u = np.array(
        [
            np.mean(np.hypot(*(pos - centre).T)),
            0.01,
            0.01,
            0.01,
            0.01,
            centre[0],
            centre[1],
            pos[3, 1],
        ]
    )
    fixed = {"gamma": gamma, "center_x": centre[0], "center_y": centre[1]}

    @jax.jit
    def newton(u):
        def res(uu):
            return _solver_residual(
                imaging, fixed, uu, jnp.asarray(pos[:, 0]), jnp.asarray(pos[:3, 1])
            )

        r = res(u)
        return jnp.linalg.solve(jax.jacfwd(res)(u), r), jnp.sqrt(jnp.sum(r**2))

    with jax.enable_x64(True):
        for _ in range(max_iter):
            step, norm = (np.asarray(a) for a in newton(jnp.asarray(u)))
            if not np.all(np.isfinite(step)):
                break
            scale = min(1.0, 0.2 / max(np.max(np.abs(step[:5])), 1e-12))
            u = u - scale * step
            if float(norm) < 1e-10:
                break
        else:
            norm = np.inf
    if not (np.all(np.isfinite(u)) and float(norm) < 1e-8):
        raise ValueError(
            "could not solve the lens equations for the measured image positions from a round "
            "start; pass solver_start (e.g. a previous fit's lens) to build_setup"
        )
    names = SOLVED + ("ps_y_d",)
    start = {k: float(u[i]) for i, k in enumerate(names) if k != "ps_y_d"}
    start["ps_y"] = np.concatenate([pos[:3, 1], [u[7]]])
    return start


def solver_start_vector(
    data: SystemData, start: dict | None, imaging: ImagingModel | None
) -> np.ndarray | None:
    """The solver's start as the vector ``(SOLVED..., ps_y[3])``, (8,) (None without imaging)."""
    if imaging is None:
        return None
    start = default_solver_start(data, imaging) if start is None else start
    return np.array([float(np.asarray(start[k])) for k in SOLVED] + [float(start["ps_y"][3])])


def _solver_residual(imaging: ImagingModel, fixed: dict, u: Array, ps_x, ps_y_abc) -> Array:
    """Lens-equation residuals ``β(θ_i) - β_s`` of the four images (8,) for unknowns ``u``."""
    theta_E_epl, e1, e2, g1, g2, sx, sy, y_d = (u[i] for i in range(8))
    kw = [
        {
            "theta_E": theta_E_epl,
            "gamma": fixed["gamma"],
            "e1": e1,
            "e2": e2,
            "center_x": fixed["center_x"],
            "center_y": fixed["center_y"],
        },
        {"gamma1": g1, "gamma2": g2, "ra_0": 0.0, "dec_0": 0.0},
    ]
    ys = jnp.concatenate([ps_y_abc, y_d[None]])
    bx, by = imaging.mass_model.ray_shooting(ps_x, ys, kw)
    return jnp.concatenate([bx - sx, by - sy])


def solve_lens(setup: ModelSetup, values: dict) -> tuple[dict, Array, Array]:
    """Solve the lens for the sampled image positions (lensing and joint modes).

    The unknowns ``u = (theta_E_epl, e1, e2, gamma1, gamma2, src_x, src_y, ps_y[3])`` make the
    four images ``(ps_x[i], ps_y[i])`` exact images of one source, for the sampled ``gamma`` and
    centre: eight lens equations, eight unknowns, Newton's method from ``setup.solver_start``
    (fixed iteration count; differentiable).

    Returns:
        ``(solved, residual, log_jacobian)``: the solved values (dict, ``ps_y`` of all four
        images included), the largest remaining ``|β(θ_i) - β_s|`` (arcsec) and
        ``log |det ∂(theta_E_epl, e1, e2, gamma1, gamma2, src_x, src_y)/∂(ps_x, ps_y[:3])|``,
        the change-of-variables term to the solved (EPL) lens parameters.
    """
    imaging = setup.imaging
    fixed = {k: values[k] for k in ("gamma", "center_x", "center_y")}
    ps_x = jnp.asarray(values["ps_x"])
    ps_y_abc = jnp.asarray(values["ps_y_abc"])

    def res(u):
        return _solver_residual(imaging, fixed, u, ps_x, ps_y_abc)

    def step(_, u):
        return u - jnp.linalg.solve(jax.jacfwd(res)(u), res(u))

    u = jax.lax.fori_loop(0, setup.newton_iterations, step, jnp.asarray(setup.solver_start))
    residual = res(u)
    solved = {k: u[i] for i, k in enumerate(SOLVED)}
    solved["ps_y"] = jnp.concatenate([ps_y_abc, u[7:8]])

    # Jacobian of the map lens7 -> images7 (at fixed gamma, centre): the implicit function theorem
    # on F(u, images) = 0, with images7 = (ps_x[0..3], ps_y[0..2]) and u7 = u[:7].
    def res_full(u7, img7):
        uu = jnp.concatenate([u7, u[7:8]])
        return _solver_residual(imaging, fixed, uu, img7[:4], img7[4:7])

    img7 = jnp.concatenate([ps_x, ps_y_abc])
    u7 = u[:7]
    f_y = jax.jacfwd(lambda yd: _solver_residual(
        imaging, fixed, jnp.concatenate([u7, yd]), ps_x, ps_y_abc))(u[7:8])  # fmt: skip
    f_u = jax.jacfwd(res_full, argnums=0)(u7, img7)  # (8, 7)
    f_i = jax.jacfwd(res_full, argnums=1)(u7, img7)  # (8, 7)
    # d(u7, y_d) / d(img7) = -[f_u, f_y]^{-1} f_i ; the first seven rows are d u7 / d img7
    du = -jnp.linalg.solve(jnp.concatenate([f_u, f_y], axis=1), f_i)
    log_jac = jnp.linalg.slogdet(du[:7])[1]
    return solved, jnp.max(jnp.abs(residual)), log_jac


def _inside(value, box) -> Array:
    return (value >= box[0]) & (value <= box[1])


def solved_lens_params(setup: ModelSetup, values: dict) -> tuple[LensParams, dict, Array, Array]:
    """Solve the lens, derive the emulator mass, build the imaging parameters.

    Returns:
        ``(lens, derived, residual, log_jacobian)``: :class:`LensParams` (central image
        included), the derived values (solved EPL parameters, ``theta_E``, ``q_mass``, ``phi``,
        ``ps_y``), and the solver's residual and log-Jacobian (:func:`solve_lens`).
    """
    solved, residual, log_jac = solve_lens(setup, values)
    derived = dict(solved)
    derived.update(
        mass_from_epl(solved["theta_E_epl"], values["gamma"], solved["e1"], solved["e2"])
    )
    lens = lens_params({**values, **derived}, setup.zero_point)
    lens = with_central_image(setup.imaging, lens)
    return lens, derived, residual, log_jac


def truth_values(system: MockSystem, mode: Mode = "joint") -> dict[str, np.ndarray]:
    """True values of the sampled sites of ``mode`` and of the main derived quantities.

    Kinematics mode has :data:`RATIO` (``D_dt / D_d``) and :data:`RATIO_SITE` (its log) and no
    ``D_dt`` or ``D_d``; joint mode has ``D_dt``, ``D_d`` and :data:`RATIO`."""
    t = system.truth
    p = t.params
    lens = t.lens
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
        RATIO_THETA_E_SITE: float(
            kinematic_scale_coordinates(p[0], math.log(t.sky.D_dt / t.sky.D_d))[1]
        ),
        "r_sersic": p[4],
        "theta_E_epl": lens.theta_E_epl,
        "e1": lens.e1,
        "e2": lens.e2,
    }
    keep = set(site_names(mode)) | {"r_sersic", "theta_E", "q_mass", "phi"}
    if mode != "kinematics":  # (kinematics mode has no D_dt, D_d: only their ratio)
        keep |= {"theta_E_epl", "e1", "e2", "gamma1", "gamma2", "src_x", "src_y", "ps_y"}
        keep |= {"D_dt", "D_d"}
    if mode != "lensing":
        keep.add(RATIO)
    if mode == "kinematics":
        keep.add(RATIO_SITE)
    return {k: np.asarray(values[k], dtype=float) for k in values if k in keep}


def solver_start_from_truth(system: MockSystem) -> dict:
    """Solver start (:func:`build_setup`'s ``solver_start``) at a mock's true lens."""
    lens = system.truth.lens
    start = {k: float(np.asarray(getattr(lens, k))) for k in SOLVED}
    start["ps_y"] = np.asarray(lens.ps_y, float)
    return start


# ----------------------------------------------------------------------------------------------
# The model


def _uniform(name: str, box: tuple[float, float], shape: tuple[int, ...] = ()):
    d = dist.Uniform(box[0], box[1])
    if shape:
        d = d.expand(shape).to_event(len(shape))
    return numpyro.sample(name, d)


def distance_log_jacobian(log_D_dt, log_D_d):
    """``log |∂(D_dt, D_d) / ∂(log D_dt, log D_d)| = log D_dt + log D_d``: with it, uniform
    priors on the log coordinates' boxes become the uniform prior in (D_dt, D_d)."""
    return log_D_dt + log_D_d


def log_ratio_box(
    D_dt_box: tuple[float, float], D_d_box: tuple[float, float]
) -> tuple[float, float]:
    """Range of ``log(D_dt / D_d)`` over the box rectangle: ``(log(a_t/b_d), log(b_t/a_d))``."""
    return (math.log(D_dt_box[0] / D_d_box[1]), math.log(D_dt_box[1] / D_d_box[0]))


def log_ratio_prior(log_ratio, D_dt_box: tuple[float, float], D_d_box: tuple[float, float]):
    """Log density of ``s = log(D_dt / D_d)`` when ``(D_dt, D_d)`` is uniform in its boxes.

    With ``D_dt ~ U[a_t, b_t]`` and ``D_d ~ U[a_d, b_d]`` independent, the ratio ``r = D_dt / D_d``
    has density ``p_r(r) = ∫ y p_t(r y) p_d(y) dy = (hi² - lo²) / (2 (b_t - a_t)(b_d - a_d))``
    with ``lo = max(a_d, a_t / r)``, ``hi = min(b_d, b_t / r)`` (the ``D_d`` for which
    ``r D_d`` is in the ``D_dt`` box), zero where ``hi <= lo``, i.e. outside
    :func:`log_ratio_box`. In ``s`` the Jacobian ``dr/ds = r`` multiplies it:
    ``p_s(s) = r p_r(r)``. (With both boxes fiducial x [0.3, 3], ``p_s`` is a tent peaked at the
    fiducial ratio, ``∝ 9ρ - 0.09/ρ`` below and ``9/ρ - 0.09ρ`` above it, ``ρ = r / r_fid``.)

    Args:
        log_ratio: ``log(D_dt / D_d)``, any shape.
        D_dt_box, D_d_box: the distance boxes ``(low, high)``, Mpc, ``low > 0``.

    Returns:
        ``log p_s``, the shape of ``log_ratio`` (``-inf`` outside the range).
    """
    (a_t, b_t), (a_d, b_d) = D_dt_box, D_d_box
    r = jnp.exp(jnp.asarray(log_ratio))
    lo = jnp.maximum(a_d, a_t / r)
    hi = jnp.minimum(b_d, b_t / r)
    mass = hi**2 - lo**2
    inside = mass > 0
    # (the double where keeps the gradient finite outside the range)
    safe = jnp.where(inside, mass, 1.0)
    log_p = jnp.log(r * safe) - math.log(2.0 * (b_t - a_t) * (b_d - a_d))
    return jnp.where(inside, log_p, -jnp.inf)


def log_theta_E_box(theta_E_box: tuple[float, float]) -> tuple[float, float]:
    """Box of ``log(theta_E / 1″)`` for the ``theta_E`` box ``(low, high)`` (arcsec, low > 0)."""
    return (math.log(theta_E_box[0]), math.log(theta_E_box[1]))


def ratio_theta_E_box(
    theta_E_box: tuple[float, float], D_dt_box: tuple[float, float], D_d_box: tuple[float, float]
) -> tuple[float, float]:
    """Box of ``log(D_dt / D_d x theta_E / 1″)`` implied by the extremes of its two terms.

    ``(log a_θ + log(a_t / b_d), log b_θ + log(b_t / a_d))`` for ``theta_E`` in ``[a_θ, b_θ]``
    (arcsec) and the ratio's range :func:`log_ratio_box`. The support of the prior is not this
    rectangle in ``(log_theta_E, log_ratio_theta_E)`` but the parallelogram where
    ``log_ratio_theta_E - log_theta_E`` is in :func:`log_ratio_box`: the prior is ``-inf`` in the
    rest (:func:`log_kinematic_scale_prior`).
    """
    a, b = log_theta_E_box(theta_E_box)
    s_lo, s_hi = log_ratio_box(D_dt_box, D_d_box)
    return (a + s_lo, b + s_hi)


def kinematic_scale_coordinates(theta_E, log_ratio) -> tuple[Array, Array]:
    """``(log_theta_E, log_ratio_theta_E) = (log theta_E, log_ratio + log theta_E)``.

    Args:
        theta_E: emulator-convention Einstein radius, arcsec.
        log_ratio: ``log(D_dt / D_d)``.
    """
    log_theta_E = jnp.log(jnp.asarray(theta_E))
    return log_theta_E, jnp.asarray(log_ratio) + log_theta_E


def from_kinematic_scale_coordinates(log_theta_E, log_ratio_theta_E) -> tuple[Array, Array]:
    """``(theta_E, log_ratio)`` (arcsec, --): the inverse of :func:`kinematic_scale_coordinates`."""
    log_theta_E = jnp.asarray(log_theta_E)
    return jnp.exp(log_theta_E), jnp.asarray(log_ratio_theta_E) - log_theta_E


def log_kinematic_scale_prior(
    log_theta_E,
    log_ratio_theta_E,
    theta_E_box: tuple[float, float],
    D_dt_box: tuple[float, float],
    D_d_box: tuple[float, float],
):
    """Log density of ``(log_theta_E, log_ratio_theta_E)`` (kinematics mode's coordinates).

    The prior of the other modes, ``theta_E ~ U[a_θ, b_θ]`` and ``(D_dt, D_d)`` uniform in
    their boxes, independent, gives ``theta_E`` and ``s = log(D_dt / D_d)`` the density
    ``p_s(s) / (b_θ - a_θ)`` (:func:`log_ratio_prior`). With ``u = log theta_E`` and
    ``w = s + u``, ``(theta_E, s) = (e^u, w - u)`` has
    ``|det ∂(theta_E, s) / ∂(u, w)| = |det [[e^u, 0], [-1, 1]]| = e^u = theta_E``, so

        log p(u, w) = u - log(b_θ - a_θ) + log p_s(w - u),

    for ``u`` in ``[log a_θ, log b_θ]`` and ``w - u`` in :func:`log_ratio_box`, ``-inf``
    elsewhere (normalised: it integrates to 1 over the plane).

    Args:
        log_theta_E: ``u = log(theta_E / 1″)``.
        log_ratio_theta_E: ``w = log(D_dt / D_d x theta_E / 1″)``.
        theta_E_box: ``(a_θ, b_θ)``, arcsec, ``a_θ > 0``.
        D_dt_box, D_d_box: the distance boxes, Mpc.

    Returns:
        ``log p(u, w)``, broadcast shape of the inputs.
    """
    u = jnp.asarray(log_theta_E)
    lo, hi = log_theta_E_box(theta_E_box)
    inside = (u >= lo) & (u <= hi)
    log_p = (
        u
        - math.log(theta_E_box[1] - theta_E_box[0])
        + log_ratio_prior(jnp.asarray(log_ratio_theta_E) - u, D_dt_box, D_d_box)
    )
    return jnp.where(inside, log_p, -jnp.inf)


def kinematic_distances(ratio) -> tuple[Array, Array]:
    """``(D_dt, D_d)`` (Mpc) with ``D_dt / D_d = ratio`` at :data:`KINEMATICS_REFERENCE_D_D`.

    The kinematic likelihood depends on the distances only through their ratio, so this pair
    stands for every pair with that ratio (kinematics mode)."""
    return ratio * KINEMATICS_REFERENCE_D_D, jnp.full_like(ratio, KINEMATICS_REFERENCE_D_D)


def model(data: SystemData, setup: ModelSetup) -> None:
    """NumPyro model of one lens system (see the module docstring).

    Args:
        data: the observations (imaging, time delays, kinematics, measured image positions).
        setup: the static set-up from :func:`build_setup` (mode, priors, forward models).
    """
    pr = setup.priors
    mode = setup.mode
    v = {}
    if mode == "kinematics":
        # theta_E through its log (see log_ratio_theta_E below); the prior factor is added there
        log_theta_E = _uniform(LOG_THETA_E_SITE, log_theta_E_box(pr.theta_E))
        v["theta_E"] = numpyro.deterministic("theta_E", jnp.exp(log_theta_E))
        for name in ("gamma", "q_mass", "phi", "center_x", "center_y"):
            v[name] = _uniform(name, getattr(pr, name))
    else:
        for name in ("gamma", "center_x", "center_y"):
            v[name] = _uniform(name, getattr(pr, name))
        measured = np.asarray(data.image_positions, float)
        lo, hi = pr.ps_offset
        v["ps_x"] = numpyro.sample(
            "ps_x", dist.Uniform(measured[:, 0] + lo, measured[:, 0] + hi).to_event(1)
        )
        v["ps_y_abc"] = numpyro.sample(
            "ps_y_abc", dist.Uniform(measured[:3, 1] + lo, measured[:3, 1] + hi).to_event(1)
        )
    for name in ("q_light", "r_sersic_ratio", "n_sersic"):
        v[name] = _uniform(name, getattr(pr, name))
    if mode != "kinematics":
        for name in ("lens_mag", "src_r", "src_n", "src_mag"):
            v[name] = _uniform(name, getattr(pr, name))
        v["ps_mag"] = _uniform("ps_mag", pr.ps_mag, (N_IMAGES,))
    if mode != "lensing":
        v["beta_z"] = _uniform("beta_z", pr.beta_z)
        v["inclination_deg"] = _uniform("inclination_deg", pr.inclination_deg)
    if mode == "lensing":
        v["D_dt"] = _uniform("D_dt", pr.D_dt)
    elif mode == "kinematics":
        # the combination the IFU measures, log(D_dt / D_d x theta_E): the ridge of the
        # (theta_E, ratio) degeneracy is then close to a coordinate axis. Its prior and that of
        # log_theta_E are the other modes' (uniform theta_E, (D_dt, D_d)), Jacobian included; the
        # two uniform draws' constants -log(width) are replaced by it, and it is -inf where the
        # ratio is outside its range (the box of log_ratio_theta_E is wider than the support)
        box_u, box_w = log_theta_E_box(pr.theta_E), ratio_theta_E_box(pr.theta_E, pr.D_dt, pr.D_d)
        log_ratio_theta_E = _uniform(RATIO_THETA_E_SITE, box_w)
        numpyro.factor(
            "scale_prior",
            log_kinematic_scale_prior(log_theta_E, log_ratio_theta_E, pr.theta_E, pr.D_dt, pr.D_d)
            + math.log(box_u[1] - box_u[0])
            + math.log(box_w[1] - box_w[0]),
        )
        _, log_ratio = from_kinematic_scale_coordinates(log_theta_E, log_ratio_theta_E)
        log_ratio = numpyro.deterministic(RATIO_SITE, log_ratio)
        ratio = numpyro.deterministic(RATIO, jnp.exp(log_ratio))
        v["D_dt"], v["D_d"] = kinematic_distances(ratio)
    else:
        log_dt = _uniform("log_D_dt", (math.log(pr.D_dt[0]), math.log(pr.D_dt[1])))
        log_dd = _uniform("log_D_d", (math.log(pr.D_d[0]), math.log(pr.D_d[1])))
        v["D_dt"] = numpyro.deterministic("D_dt", jnp.exp(log_dt))
        v["D_d"] = numpyro.deterministic("D_d", jnp.exp(log_dd))
        # uniform prior in (D_dt, D_d): the Jacobian of (log D_dt, log D_d) -> (D_dt, D_d)
        numpyro.factor("distance_prior", distance_log_jacobian(log_dt, log_dd))

    if mode != "kinematics":
        imaging = setup.imaging
        lens, derived, residual, log_jac = solved_lens_params(setup, v)
        v.update(derived)
        for name in SOLVED + ("theta_E", "q_mass", "phi", "ps_y"):
            numpyro.deterministic(name, derived[name])
        numpyro.deterministic("lens_eq_residual", residual)
        # prior: uniform in (theta_E, q_mass, phi, gamma1, gamma2, src_x, src_y) inside their
        # boxes (zero outside). The sampled image positions carry the density
        # |∂(lens)/∂(images)| = |∂(lens)/∂(EPL)| |∂(EPL)/∂(images)|, at fixed gamma and centre
        inside = _inside(v["theta_E"], pr.theta_E) & _inside(v["q_mass"], pr.q_mass)
        for name in ("gamma1", "gamma2", "src_x", "src_y"):
            inside = inside & _inside(v[name], getattr(pr, name))
        log_prior = log_jac - log_epl_jacobian(v["theta_E"], v["gamma"], v["q_mass"], v["phi"])
        numpyro.factor("lens_prior", jnp.where(inside, log_prior, -jnp.inf))
        # χ²_img
        image_model = imaging.model_image(lens)
        img = data.imaging
        chi2_img = jnp.sum(
            ((jnp.asarray(img.image) - image_model) / jnp.asarray(img.noise_map)) ** 2
        )
        numpyro.factor("imaging", -0.5 * chi2_img)
        # χ²_TD
        delays = imaging.time_delays(lens, v["D_dt"])
        td = data.time_delays
        chi2_td = jnp.sum(((delays - jnp.asarray(td.delays)) / jnp.asarray(td.sigma)) ** 2)
        numpyro.factor("time_delays", -0.5 * chi2_td)
        numpyro.deterministic("chi2_imaging", chi2_img)
        numpyro.deterministic("chi2_time_delays", chi2_td)
    numpyro.deterministic("r_sersic", v["r_sersic_ratio"] * v["theta_E"])

    if mode != "lensing":
        log_l_kin = setup.kinematics(emulator_params(v), sky_params(v))
        numpyro.factor("kinematics", log_l_kin)
        numpyro.deterministic("chi2_kinematics", -2.0 * log_l_kin)


# ----------------------------------------------------------------------------------------------
# Evaluating the model at given values (figures, tests)


class Prediction(NamedTuple):
    """Model predictions at one parameter point (NumPy).

    Attributes:
        image: model image, counts/s per pixel (None in kinematics mode).
        time_delays: predicted delays, days (None in kinematics mode).
        vrms: predicted binned v_rms, km/s (None in lensing mode).
        chi2: χ² of the terms present (``imaging``, ``time_delays``, ``kinematics``) and
            ``lens_eq_residual_arcsec``, the largest ``|β(θ_i) - β_s|`` of the solved images.
    """

    image: np.ndarray | None
    time_delays: np.ndarray | None
    vrms: np.ndarray | None
    chi2: dict


def with_kinematic_scale(values: dict) -> dict:
    """``values`` with ``theta_E`` (arcsec) and ``log_ratio`` derived from kinematics mode's
    ``log_theta_E`` and ``log_ratio_theta_E`` (unchanged if it lacks them)."""
    if LOG_THETA_E_SITE not in values or RATIO_THETA_E_SITE not in values:
        return values
    theta_E, log_ratio = from_kinematic_scale_coordinates(
        values[LOG_THETA_E_SITE], values[RATIO_THETA_E_SITE]
    )
    return {**values, "theta_E": theta_E, RATIO_SITE: log_ratio}


def with_distances(values: dict) -> dict:
    """``values`` with ``D_dt`` and ``D_d`` (Mpc) derived from the sampled distance coordinates.

    From ``log_D_dt, log_D_d`` (joint mode), or from ``log_ratio`` or kinematics mode's sampled
    ``log_theta_E, log_ratio_theta_E`` (:func:`with_kinematic_scale`; the pair of
    :func:`kinematic_distances`, which stands for every pair with that ratio).
    """
    values = with_kinematic_scale(values)
    if "log_D_dt" in values:
        return {**values, "D_dt": jnp.exp(values["log_D_dt"]), "D_d": jnp.exp(values["log_D_d"])}
    if RATIO_SITE in values:
        d_dt, d_d = kinematic_distances(jnp.exp(jnp.asarray(values[RATIO_SITE])))
        return {**values, "D_dt": d_dt, "D_d": d_d}
    return values


def predict(data: SystemData, setup: ModelSetup, values: dict) -> Prediction:
    """Predictions and χ² terms of :func:`model` at constrained ``values`` of the sampled sites."""
    values = with_distances({k: jnp.asarray(v) for k, v in values.items()})
    image = delays = vrms = None
    chi2 = {}
    if setup.mode != "kinematics":
        imaging = setup.imaging
        lens, derived, residual, _ = solved_lens_params(setup, values)
        values.update(derived)
        image = np.asarray(imaging.model_image(lens))
        delays = np.asarray(imaging.time_delays(lens, values["D_dt"]))
        chi2["imaging"] = float(
            np.sum(((data.imaging.image - image) / data.imaging.noise_map) ** 2)
        )
        chi2["time_delays"] = float(
            np.sum(((delays - data.time_delays.delays) / data.time_delays.sigma) ** 2)
        )
        chi2["lens_eq_residual_arcsec"] = float(residual)
    if setup.mode != "lensing":
        vrms = np.asarray(setup.kinematics.predict(emulator_params(values), sky_params(values)))
        chi2["kinematics"] = float(
            -2.0 * setup.kinematics(emulator_params(values), sky_params(values))
        )
    return Prediction(image, delays, vrms, chi2)


def log_density(data: SystemData, setup: ModelSetup, values: dict) -> Array:
    """The model's joint log density (priors + likelihood terms) at constrained ``values``."""
    from numpyro.infer.util import log_density as numpyro_log_density

    values = {k: jnp.asarray(v) for k, v in values.items() if k in site_names(setup.mode)}
    return numpyro_log_density(model, (data, setup), {}, values)[0]


__all__ = [
    "MODES",
    "N_IMAGES",
    "PAPER_PARAMETERS",
    "PARAM_NAMES",
    "EmulatorField",
    "ModelSetup",
    "Priors",
    "SystemData",
    "build_setup",
    "check_inputs",
    "emulator_field",
    "emulator_params",
    "lens_params",
    "load_emulator",
    "log_density",
    "model",
    "predict",
    "site_names",
    "sky_params",
    "solve_lens",
    "solved_lens_params",
    "solver_start_from_truth",
    "mass_from_epl",
    "epl_from_mass",
    "SOLVED",
    "truth_values",
    "with_central_image",
    "with_distances",
    "distance_log_jacobian",
    "kinematic_distances",
    "log_ratio_box",
    "log_ratio_prior",
    "log_theta_E_box",
    "ratio_theta_E_box",
    "kinematic_scale_coordinates",
    "from_kinematic_scale_coordinates",
    "log_kinematic_scale_prior",
    "with_kinematic_scale",
    "LOG_THETA_E_SITE",
    "RATIO_THETA_E_SITE",
    "MODEL_VERSION",
    "DISTANCE_SITES",
    "KINEMATICS_REFERENCE_D_D",
    "RATIO",
    "RATIO_SITE",
]
