"""Prior boxes of the lens-system model and the densities of its distance coordinates.

:class:`Priors` holds the uniform boxes ``(low, high)`` of every parameter of
:func:`skinn_jax.inference.model.model` (units: arcsec for angles on the sky and lengths, radians
for ``phi``, Mpc for distances, magnitudes for fluxes). The functions below are the densities the
model adds when it samples distances through their logarithms (joint mode) or the kinematic scale
``log(D_dt / D_d x theta_E)`` (kinematics mode), so that the prior stays uniform in ``theta_E``,
``D_dt`` and ``D_d`` whatever the sampled coordinates, and the prior that the imaging's
measurement of the light's ellipticity puts on kinematics-only fits. User priors of any NumPyro
distribution for kinematics-only models are in :mod:`skinn_jax.inference.blocks`.

Imports: ``skinn_jax`` core only (``params``, ``cosmology``, ``forward``, ``profiles``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as _dist
from jax import Array
from jax.scipy.special import ndtr, ndtri
from numpyro.distributions import constraints as _constraints
from numpyro.distributions import transforms as _transforms

from skinn_jax.cosmology import FIDUCIAL
from skinn_jax.forward import CenterBox
from skinn_jax.params import INCLINATION_MIN_DEG, PARAM_BOX, R_SERSIC_RATIO_BOX
from skinn_jax.profiles import e1e2_from_q_phi


@dataclass(frozen=True)
class Priors:
    """Prior boxes ``(low, high)`` (units as in the module table); see the module docstring.

    The eight emulator-related boxes default to the training box (CONVENTIONS §1); the others are
    broad boxes that contain every mock system of :mod:`skinn_jax.inference.mocks.system` (Table 2
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
    lens_mag_aperture: tuple[float, float] = (16.0, 22.0)
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
    # a box edge mixes poorly (box [0.5, 1.5], mock system 1: D_d ESS 24 of 600)
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


# ----------------------------------------------------------------------------------------------
# Uniform boxes sampled through the normal CDF


class _NormalCDFTransform(_transforms.ParameterFreeTransform):
    """``z -> Φ(z)``, the standard normal CDF, from the real line onto (0, 1)."""

    domain = _constraints.real
    codomain = _constraints.unit_interval
    sign = 1

    def __call__(self, x):
        return ndtr(x)

    def _inverse(self, y):
        return ndtri(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return -0.5 * x**2 - 0.5 * math.log(2.0 * math.pi)


class _ProbitInterval(_constraints._Interval):
    """An interval whose unconstrained coordinate is the probit ``Φ⁻¹((x - low)/(high - low))``
    (:func:`probit_box_transform`) instead of NumPyro's logit."""


def probit_box_transform(constraint: _ProbitInterval) -> _transforms.Transform:
    """``z -> low + (high - low) Φ(z)``: the bijection from the real line onto the box."""
    low, high = constraint.lower_bound, constraint.upper_bound
    return _transforms.ComposeTransform(
        [
            _NormalCDFTransform(),
            _transforms.AffineTransform(low, high - low, domain=_constraints.unit_interval),
        ]
    )


_transforms.biject_to.register(_ProbitInterval, probit_box_transform)


class BoxUniform(_dist.Uniform):
    """``Uniform(low, high)`` whose sampler coordinate is the probit, ``z = Φ⁻¹(u)`` with
    ``u = (x - low) / (high - low)``: the prior is a standard normal in ``z``, exactly.

    NumPyro's default coordinate for a box, the logit, turns a posterior that reaches a face of
    its box into an exponential tail (the density of the logit ``t`` of a flat posterior falls as
    ``e^-|t|``), far from the Gaussian the sampler's metric assumes; the probit turns it into a
    Gaussian tail. On the study's joint system 4 (draws of the logit fit), the excess kurtosis of
    the coordinates of the parameters near faces fell from 2.47 to 0.95 (``r_sersic_ratio``),
    1.69 to 0.27 (``beta_z``), 1.00 to 0.30 (``n_sersic``), 0.87 to -0.15 (inclination), and the
    others' stayed near zero. The density of ``x`` is unchanged.

    Args:
        low, high: the box, in the parameter's unit (arrays broadcast).

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro.distributions.transforms import biject_to
        >>> d = BoxUniform(0.0, 2.0)
        >>> float(biject_to(d.support)(jnp.asarray(0.0)))  # z = 0 is the middle of the box
        1.0
    """

    @_constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return _ProbitInterval(self.low, self.high)


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


def log_theta_E_interval(
    log_ratio_theta_E,
    theta_E_box: tuple[float, float],
    D_dt_box: tuple[float, float],
    D_d_box: tuple[float, float],
) -> tuple[Array, Array]:
    """The ``log_theta_E`` inside the prior's parallelogram at a given ``log_ratio_theta_E``.

    ``u = log theta_E`` must be in :func:`log_theta_E_box` ``[a, b]`` and ``w - u`` in
    :func:`log_ratio_box` ``[s_lo, s_hi]``: ``u`` in ``[max(a, w - s_hi), min(b, w - s_lo)]``, an
    interval of positive length for every ``w`` strictly inside :func:`ratio_theta_E_box`.

    Args:
        log_ratio_theta_E: ``w = log(D_dt / D_d x theta_E / 1″)``, any shape.
        theta_E_box: ``(a_θ, b_θ)``, arcsec, ``a_θ > 0``.
        D_dt_box, D_d_box: the distance boxes, Mpc.

    Returns:
        ``(low, high)`` of ``u``, the shape of ``log_ratio_theta_E``.
    """
    a, b = log_theta_E_box(theta_E_box)
    s_lo, s_hi = log_ratio_box(D_dt_box, D_d_box)
    w = jnp.asarray(log_ratio_theta_E)
    return jnp.maximum(a, w - s_hi), jnp.minimum(b, w - s_lo)


def log_theta_E_from_fraction(
    log_ratio_theta_E,
    fraction,
    theta_E_box: tuple[float, float],
    D_dt_box: tuple[float, float],
    D_d_box: tuple[float, float],
) -> tuple[Array, Array]:
    """``(log_theta_E, log |∂ log_theta_E / ∂ fraction|)`` of kinematics mode's sampled coordinates.

    Kinematics mode samples ``w = log_ratio_theta_E`` in :func:`ratio_theta_E_box` and
    ``fraction`` in ``(0, 1)``, the position of ``u = log_theta_E`` in the interval
    :func:`log_theta_E_interval` ``[lo(w), hi(w)]``: ``u = lo + fraction (hi - lo)``. The whole
    sampled rectangle then maps onto the prior's parallelogram, whose slanted faces (the
    ``D_dt / D_d`` range) become the coordinate faces ``fraction = 0, 1``: no wall inside the
    sampled coordinates. The Jacobian of ``(w, fraction) -> (u, w)`` is ``hi - lo``.

    Args:
        log_ratio_theta_E: ``w``, any shape.
        fraction: in ``[0, 1]``, broadcastable with ``w``.
        theta_E_box, D_dt_box, D_d_box: as :func:`log_theta_E_interval`.

    Returns:
        ``(u, log(hi - lo))``, broadcast shape of the inputs.

    Example:
        >>> u, log_jac = log_theta_E_from_fraction(1.0, 0.5, (0.5, 2.0), (500.0, 5000.0),
        ...                                        (300.0, 3000.0))
    """
    lo, hi = log_theta_E_interval(log_ratio_theta_E, theta_E_box, D_dt_box, D_d_box)
    return lo + jnp.asarray(fraction) * (hi - lo), jnp.log(hi - lo)


def fraction_from_log_theta_E(
    log_theta_E,
    log_ratio_theta_E,
    theta_E_box: tuple[float, float],
    D_dt_box: tuple[float, float],
    D_d_box: tuple[float, float],
) -> Array:
    """The inverse of :func:`log_theta_E_from_fraction`: ``fraction`` of ``(u, w)`` (inside the
    parallelogram: in ``[0, 1]``)."""
    lo, hi = log_theta_E_interval(log_ratio_theta_E, theta_E_box, D_dt_box, D_d_box)
    return (jnp.asarray(log_theta_E) - lo) / (hi - lo)


def log_light_shape_prior(q_light, phi, light_shape) -> Array:
    """Log density of the light's measured ellipticity given ``(q_light, phi)`` (a Gaussian prior
    from the imaging, for fits without the imaging).

    The imaging measures the lens light's ellipticity components ``e1 = ε cos 2φ``,
    ``e2 = ε sin 2φ``, ``ε = (1 - q) / (1 + q)`` (:func:`skinn_jax.profiles.e1e2_from_q_phi`)
    with independent Gaussian errors ``sigma``. In ``(q, φ)`` the prior on the position angle
    is then as sharp as the light is elongated (``σ_φ ≈ sigma / 2ε``) and it is flat for a round
    light, with no singularity at ``q = 1`` and the period π of ``φ`` built in.

    Args:
        q_light: light axis ratio, any shape.
        phi: position angle of the major axis, radians, counter-clockwise from +x.
        light_shape: a :class:`~skinn_jax.inference.data.LightShape` (``e1``, ``e2``, ``sigma``).

    Returns:
        The normalised 2-D Gaussian log density, broadcast shape of ``q_light`` and ``phi``.
    """
    e1, e2 = e1e2_from_q_phi(q_light, phi)
    s = light_shape.sigma
    chi2 = ((e1 - light_shape.e1) ** 2 + (e2 - light_shape.e2) ** 2) / s**2
    return -0.5 * chi2 - math.log(2.0 * math.pi * s**2)
