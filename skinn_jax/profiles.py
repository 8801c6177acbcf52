"""Mass and light profiles of the emulator, and explicit conversions from Herculens's parameters.

CONVENTIONS §2. All lengths in arcsec; "galaxy frame" means centred on the galaxy with x along the
projected major axis. Every JAX function here is pure, elementwise and broadcasting (outputs have
the broadcast shape of the inputs) and safe under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Emulator profiles (galaxy frame):

- cored PEMD convergence
  ``kappa = theta_E**(gamma-1) (3-gamma)/(1+q) (x² + y²/q² + r_c²)**((1-gamma)/2)``, r_c = 0.08;
- Sérsic light on the major-axis radius ``m = sqrt(x² + y²/q²)``:
  ``I = amplitude exp(-b_n ((m/r_sersic)**(1/n) - 1))`` with the exact
  ``b_n = gammaincinv(2n, 1/2)``, so ``amplitude`` is the surface brightness at ``m = r_sersic``.

Herculens conventions (read from ``herculens/Util/param_util.py``, ``herculens/Util/util.py``,
``herculens/MassModel/Profiles/epl.py`` and ``herculens/LightModel/Profiles/sersic.py``):

- Ellipticity: ``e1 = (1-q)/(1+q) cos 2φ``, ``e2 = (1-q)/(1+q) sin 2φ``; inversely
  ``φ = arctan2(e2, e1)/2`` in ``(-π/2, π/2]`` and ``q = (1-|e|)/(1+|e|)`` with ``|e|`` clipped at
  0.9999. φ is in radians, counter-clockwise from the +x axis of the coordinates the profiles are
  evaluated on (Herculens's angular x, y; no East-of-North convention is implied). The major axis
  points along ``(cos φ, sin φ)``.
- Frame: ``x' = cos φ (x - x_c) + sin φ (y - y_c)``, ``y' = -sin φ (x - x_c) + cos φ (y - y_c)``
  (``herculens.Util.util.rotate``); x' is the major axis.
- EPL (singular): ``kappa = (3-γ)/2 (theta_E / sqrt(q x'² + y'²/q))**(γ-1)``, i.e. theta_E is
  defined on the intermediate-axis (circularised) radius; internally Herculens uses the
  Tessore & Metcalf form with ``b = theta_E sqrt(q)`` and ``R = sqrt(q² x'² + y'²)``. Hence
  ``theta_E = theta_E_EPL ((1+q)/2)**(1/(γ-1)) / sqrt(q)``.
- Sérsic: with the default ``radius_major_axis=True`` the radius is the major-axis radius
  ``sqrt(x'² + y'²/q²)`` (despite the class docstring, which shows the circularised one), so
  ``R_sersic`` equals our ``r_sersic`` directly; with ``radius_major_axis=False`` it is the
  circularised ``sqrt(q x'² + y'²/q)`` and ``r_sersic = R_sersic / sqrt(q)``. ``amp`` is the surface
  brightness at ``R = R_sersic``. Herculens uses the approximation ``b_n = 1.9992 n - 0.3271``
  (not the exact value), floors R at 1e-5 arcsec and sets the profile to zero beyond
  ``1000 R_sersic``: its Sérsic equals ours only when ``b_n`` is replaced by the exact value.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax import Array
from jax.scipy.special import gammainc, gammaln
from jax.typing import ArrayLike

R_CORE_ARCSEC = 0.08
"""Core radius of the cored PEMD, arcsec (CONVENTIONS §2)."""

_SERSIC_B_NEWTON_STEPS = 6
_GAMMA_SERIES_TERMS = 96


def _float_array(value: ArrayLike) -> Array:
    """``value`` as a JAX array of the default float dtype (float32, or float64 with x64)."""
    return jnp.asarray(value, dtype=jnp.result_type(float))


# ----------------------------------------------------------------------------------------------
# Mass


def kappa_cored_pemd(
    x: ArrayLike,
    y: ArrayLike,
    theta_E: ArrayLike,
    gamma: ArrayLike,
    q_mass: ArrayLike,
    r_core: ArrayLike = R_CORE_ARCSEC,
) -> Array:
    """Convergence of the cored power-law elliptical mass distribution (CONVENTIONS §2).

    ``kappa = theta_E**(gamma-1) (3-gamma)/(1+q) (x² + y²/q² + r_core²)**((1-gamma)/2)``.

    Args:
        x: galaxy-frame coordinate along the major axis, arcsec.
        y: galaxy-frame coordinate along the minor axis, arcsec.
        theta_E: Einstein radius in the emulator's convention, arcsec.
        gamma: 3D density slope (2 = isothermal).
        q_mass: axis ratio (minor/major) of the mass.
        r_core: core radius, arcsec. With ``r_core = 0`` the profile is singular at the origin.

    Returns:
        Dimensionless convergence, broadcast shape of the inputs.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    m2 = x**2 + y**2 / q_mass**2 + jnp.asarray(r_core) ** 2
    return theta_E ** (gamma - 1.0) * (3.0 - gamma) / (1.0 + q_mass) * m2 ** ((1.0 - gamma) / 2.0)


# ----------------------------------------------------------------------------------------------
# Light


def sersic_b_np(n: ArrayLike) -> np.ndarray:
    """Exact Sérsic ``b_n = gammaincinv(2 n, 1/2)`` with SciPy (NumPy in, NumPy out).

    Args:
        n: Sérsic index, any shape.

    Returns:
        ``b_n`` (float64), same shape as ``n``.
    """
    return scipy.special.gammaincinv(2.0 * np.asarray(n, dtype=float), 0.5)


def _sersic_b_ciotti_bertin(n: Array) -> Array:
    """Asymptotic series of Ciotti & Bertin (1999) for ``b_n``; ~3e-4 absolute at ``n = 0.5``."""
    return (
        2.0 * n
        - 1.0 / 3.0
        + 4.0 / (405.0 * n)
        + 46.0 / (25515.0 * n**2)
        + 131.0 / (1148175.0 * n**3)
        - 2194697.0 / (30690717750.0 * n**4)
    )


def _regularised_gamma_density(a: Array, b: Array) -> Array:
    """``d/db P(a, b) = b**(a-1) exp(-b) / Gamma(a)``."""
    return jnp.exp((a - 1.0) * jnp.log(b) - b - gammaln(a))


def _regularised_gamma_series(a: Array, x: Array) -> Array:
    """``P(a, x) = sum_k x**(a+k) exp(-x) / Gamma(a+k+1)``, 96 terms.

    Used only for ``dP/da`` in :func:`sersic_b`'s derivative: unlike ``jax.scipy.special.gammainc``
    (whose ``a``-derivative has no derivative itself) it is built from elementary functions, so
    derivatives of every order exist. Accurate to ~1e-15 for ``x <= a <= 20`` (``n <= 10``).
    """
    k = jnp.arange(_GAMMA_SERIES_TERMS, dtype=a.dtype)
    a, x = a[..., None], x[..., None]
    log_terms = (a + k) * jnp.log(x) - x - gammaln(a + k + 1.0)
    return jnp.sum(jnp.exp(log_terms), axis=-1)


@jax.custom_jvp
def sersic_b(n: ArrayLike) -> Array:
    """Exact Sérsic ``b_n`` (solution of ``P(2n, b_n) = 1/2``) in JAX.

    Six Newton steps on the regularised incomplete gamma function ``P`` (``jax.scipy``), started
    from the Ciotti-Bertin series; fixed iteration count, so jit-safe. Matches SciPy's
    ``gammaincinv(2n, 0.5)`` to ~1e-14 (float64) for ``n`` in ``[0.5, 10]``. Derivatives (of any
    order) by implicit differentiation, ``db/dn = -2 (dP/da) / (dP/db)`` at ``a = 2n``.

    Args:
        n: Sérsic index in ``[0.5, 10]``, any shape.

    Returns:
        ``b_n``, same shape as ``n``.
    """
    n = _float_array(n)
    a = 2.0 * n
    b = _sersic_b_ciotti_bertin(n)
    for _ in range(_SERSIC_B_NEWTON_STEPS):
        b = b - (gammainc(a, b) - 0.5) / _regularised_gamma_density(a, b)
    return b


@sersic_b.defjvp
def _sersic_b_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    """Implicit-function derivative of :func:`sersic_b`."""
    (n,), (dn,) = primals, tangents
    n = _float_array(n)
    b = sersic_b(n)
    a = 2.0 * n
    _, dP_da = jax.jvp(lambda a_: _regularised_gamma_series(a_, b), (a,), (jnp.ones_like(a),))
    db_dn = -2.0 * dP_da / _regularised_gamma_density(a, b)
    return b, db_dn * dn


def _log_sersic_total_flux(xp, gammaln_fn, b, r_sersic, n_sersic, q):
    """``log(2 π n q R² e^b b^(-2n) Γ(2n))`` with the array module ``xp`` (JAX or NumPy)."""
    return (
        xp.log(2.0 * xp.pi * n_sersic * q * r_sersic**2)
        + b
        - 2.0 * n_sersic * xp.log(b)
        + gammaln_fn(2.0 * n_sersic)
    )


def sersic_total_flux(r_sersic: ArrayLike, n_sersic: ArrayLike, q: ArrayLike = 1.0) -> Array:
    """Total flux (arcsec²) of the elliptical Sérsic of unit surface brightness at ``r_sersic``.

    ``2 π n q R² e^b b^(-2n) Γ(2n)`` with the exact :func:`sersic_b` (JAX, differentiable).

    Args:
        r_sersic: major-axis half-light radius, arcsec.
        n_sersic: Sérsic index.
        q: axis ratio.
    """
    b = sersic_b(n_sersic)
    return jnp.exp(_log_sersic_total_flux(jnp, gammaln, b, r_sersic, n_sersic, q))


@jax.custom_jvp
def _regularised_gamma(a: Array, x: Array) -> Array:
    """``P(a, x)`` (``jax.scipy``) with derivatives of every order: ``dP/dx`` is the gamma
    density and ``dP/da`` comes from :func:`_regularised_gamma_series` (``gammainc``'s own
    ``a``-derivative has no derivative itself)."""
    return gammainc(a, x)


@_regularised_gamma.defjvp
def _regularised_gamma_jvp(primals, tangents):
    (a, x), (da, dx) = primals, tangents
    _, dP_da = jax.jvp(lambda a_: _regularised_gamma_series(a_, x), (a,), (da,))
    return _regularised_gamma(a, x), dP_da + _regularised_gamma_density(a, x) * dx


def sersic_enclosed_fraction(radius: ArrayLike, r_sersic: ArrayLike, n_sersic: ArrayLike) -> Array:
    """Fraction of the Sérsic's total flux inside the isophote of major-axis radius ``radius``.

    ``P(2n, b_n (radius / r_sersic)**(1/n))`` with the exact :func:`sersic_b`, for any axis ratio
    (the isophotes are similar ellipses); 1/2 at ``radius = r_sersic``. Differentiable to every
    order in ``r_sersic`` and ``n_sersic``.

    Args:
        radius: major-axis radius of the aperture, arcsec (> 0).
        r_sersic: major-axis half-light radius, arcsec.
        n_sersic: Sérsic index in ``[0.5, 10]``.

    Returns:
        The fraction, in (0, 1), with the broadcast shape of the inputs.

    Example:
        >>> float(sersic_enclosed_fraction(1.0, 1.0, 4.0))  # doctest: +ELLIPSIS
        0.5...
    """
    n = _float_array(n_sersic)
    x = sersic_b(n) * (_float_array(radius) / _float_array(r_sersic)) ** (1.0 / n)
    return _regularised_gamma(2.0 * n, x)


def sersic_total_flux_np(r_sersic: float, n_sersic: float, q: float = 1.0) -> float:
    """:func:`sersic_total_flux` in NumPy/SciPy float64 (for JAX-free code such as the training
    data generator's workers, as :func:`sersic_b_np`): the same formula, arcsec²."""
    b = float(sersic_b_np(n_sersic))
    log_flux = _log_sersic_total_flux(np, scipy.special.gammaln, b, r_sersic, n_sersic, q)
    return float(np.exp(log_flux))


def sersic_light(
    x: ArrayLike,
    y: ArrayLike,
    r_sersic: ArrayLike,
    n_sersic: ArrayLike,
    q_light: ArrayLike,
    amplitude: ArrayLike = 1.0,
) -> Array:
    """Elliptical Sérsic surface brightness on the major-axis radius (CONVENTIONS §2).

    ``I = amplitude exp(-b_n ((m / r_sersic)**(1/n) - 1))``, ``m = sqrt(x² + y²/q_light²)``, with
    the exact ``b_n`` of :func:`sersic_b`.

    At the centre the spatial gradient (a cusp) is returned as 0; parameter gradients stay finite.

    Args:
        x: galaxy-frame coordinate along the major axis, arcsec.
        y: galaxy-frame coordinate along the minor axis, arcsec.
        r_sersic: major-axis half-light radius, arcsec.
        n_sersic: Sérsic index.
        q_light: axis ratio (minor/major) of the light.
        amplitude: surface brightness at ``m = r_sersic`` (any unit).

    Returns:
        Surface brightness in the unit of ``amplitude``, broadcast shape of the inputs.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    m2 = x**2 + y**2 / q_light**2
    positive = m2 > 0
    m2_safe = jnp.where(positive, m2, 1.0)
    # exp of a log rather than a power: the gradient reuses it instead of evaluating a second power
    u = jnp.where(positive, jnp.exp((0.5 / n_sersic) * jnp.log(m2_safe / r_sersic**2)), 0.0)
    return amplitude * jnp.exp(-sersic_b(n_sersic) * (u - 1.0))


class SersicLight(NamedTuple):
    """A lens light made of K elliptical Sérsic components with a common centre and position angle.

    Each field has shape ``(K,)`` (or is a scalar for K = 1); a JAX pytree, so it can be traced.
    By linearity of the Jeans equations in the tracer, the luminosity-weighted second moment of
    the sum is ``sum_k A_k I_k v_k**2`` over ``sum_k A_k I_k`` (CONVENTIONS §9), with ``v_k`` the
    v_rms of component k alone in the shared potential.

    Attributes:
        amplitude: surface brightness of each component at ``m = r_sersic`` (any common unit),
            > 0.
        q_light: axis ratio of each component, in (0, 1].
        r_sersic: major-axis half-light radius of each component, arcsec, > 0.
        n_sersic: Sérsic index of each component, > 0.

    Example:
        >>> light = SersicLight(amplitude=[3.0, 1.0], q_light=[0.8, 0.7],
        ...                     r_sersic=[0.25, 1.6], n_sersic=[1.6, 1.1])
        >>> SersicLight.checked(light).amplitude.shape
        (2,)
    """

    amplitude: ArrayLike
    q_light: ArrayLike
    r_sersic: ArrayLike
    n_sersic: ArrayLike

    @classmethod
    def checked(cls, light: SersicLight) -> SersicLight:
        """Validate concrete values; return the components as float64 NumPy arrays ``(K,)``.

        Raises:
            ValueError: no component, fields of different lengths, a non-finite value, a
                non-positive amplitude, radius or index, or an axis ratio outside (0, 1].
        """
        if not isinstance(light, SersicLight):
            raise ValueError(f"light must be a SersicLight, got {type(light).__name__}")
        fields = {}
        for name, value in light._asdict().items():
            arr = np.atleast_1d(np.asarray(value, dtype=float))
            if arr.ndim != 1:
                raise ValueError(
                    f"light.{name} must be a scalar or 1-D (K,), got shape {arr.shape}"
                )
            fields[name] = arr
        sizes = {arr.size for arr in fields.values()}
        if len(sizes) != 1:
            shapes = {k: v.shape for k, v in fields.items()}
            raise ValueError(f"light components disagree in number: {shapes}")
        if sizes == {0}:
            raise ValueError("light has no component: give at least one Sérsic component")
        rules = {
            "amplitude": (lambda v: v > 0, "> 0"),
            "q_light": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
            "r_sersic": (lambda v: v > 0, "> 0 arcsec"),
            "n_sersic": (lambda v: v > 0, "> 0"),
        }
        for name, arr in fields.items():
            ok, rule = rules[name]
            bad = ~np.isfinite(arr) | ~ok(np.where(np.isfinite(arr), arr, 1.0))
            if bad.any():
                k = int(np.argmax(bad))
                raise ValueError(f"light.{name}[{k}] = {arr[k]:.6g} must be finite and {rule}")
        return cls(**fields)

    def surface_brightness(self, x: ArrayLike, y: ArrayLike) -> Array:
        """Sum of the components' :func:`sersic_light` at galaxy-frame ``x, y`` (arcsec)."""
        return jnp.sum(self.component_brightness(x, y), axis=0)

    def component_brightness(self, x: ArrayLike, y: ArrayLike) -> Array:
        """Each component's surface brightness, shape ``(K,) + broadcast(x, y).shape``."""
        x, y = jnp.asarray(x), jnp.asarray(y)
        fields = [jnp.atleast_1d(jnp.asarray(f, dtype=x.dtype)) for f in self]
        amp, q, r_s, n = (f.reshape(f.shape + (1,) * x.ndim) for f in fields)
        return sersic_light(x[None], y[None], r_s, n, q, amp)


# ----------------------------------------------------------------------------------------------
# Conversions from Herculens / lenstronomy parameters


def theta_E_from_epl(theta_E_epl: ArrayLike, gamma: ArrayLike, q: ArrayLike) -> Array:
    """Emulator Einstein radius from the Herculens/lenstronomy EPL Einstein radius.

    ``theta_E = theta_E_EPL ((1+q)/2)**(1/(gamma-1)) / sqrt(q)`` makes :func:`kappa_cored_pemd`
    with ``r_core = 0`` equal to the EPL convergence
    ``(3-γ)/2 (theta_E_EPL / sqrt(q x² + y²/q))**(γ-1)``.

    Args:
        theta_E_epl: EPL Einstein radius, arcsec.
        gamma: 3D density slope (``!= 1``).
        q: mass axis ratio (minor/major).

    Returns:
        ``theta_E`` in arcsec, broadcast shape of the inputs.
    """
    q = jnp.asarray(q)
    return theta_E_epl * ((1.0 + q) / 2.0) ** (1.0 / (gamma - 1.0)) / jnp.sqrt(q)


def theta_E_epl_from_emulator(theta_E: ArrayLike, gamma: ArrayLike, q: ArrayLike) -> Array:
    """Inverse of :func:`theta_E_from_epl`: EPL Einstein radius from the emulator's ``theta_E``.

    Args:
        theta_E: emulator Einstein radius, arcsec.
        gamma: 3D density slope (``!= 1``).
        q: mass axis ratio (minor/major).

    Returns:
        ``theta_E_EPL`` in arcsec, broadcast shape of the inputs.
    """
    q = jnp.asarray(q)
    return theta_E * jnp.sqrt(q) * ((1.0 + q) / 2.0) ** (-1.0 / (gamma - 1.0))


def r_sersic_major_from_circularised(R_circ: ArrayLike, q: ArrayLike) -> Array:
    """Major-axis Sérsic radius from a radius defined on ``sqrt(q x² + y²/q)``: ``R_circ/sqrt(q)``.

    Args:
        R_circ: half-light radius on the circularised (product-average) radius, arcsec.
        q: light axis ratio (minor/major).

    Returns:
        Major-axis half-light radius, arcsec.
    """
    return R_circ / jnp.sqrt(jnp.asarray(q))


def r_sersic_circularised_from_major(r_major: ArrayLike, q: ArrayLike) -> Array:
    """Inverse of :func:`r_sersic_major_from_circularised`: ``r_major * sqrt(q)``.

    Args:
        r_major: major-axis half-light radius, arcsec.
        q: light axis ratio (minor/major).

    Returns:
        Half-light radius on the circularised radius, arcsec.
    """
    return r_major * jnp.sqrt(jnp.asarray(q))


def q_phi_from_e1e2(e1: ArrayLike, e2: ArrayLike) -> tuple[Array, Array]:
    """Axis ratio and position angle from Herculens's ellipticity components.

    ``phi = arctan2(e2, e1) / 2``, ``q = (1 - |e|) / (1 + |e|)`` with ``|e|`` clipped at 0.9999,
    as ``herculens.Util.param_util.ellipticity2phi_q`` (which returns ``(phi, q)``). Unlike it,
    the gradient at ``e1 = e2 = 0`` is finite (zero) rather than NaN.

    Args:
        e1: first ellipticity component.
        e2: second ellipticity component.

    Returns:
        ``(q, phi)``: axis ratio (minor/major) and angle in radians, counter-clockwise from +x,
        in ``(-π/2, π/2]``; broadcast shape of the inputs.
    """
    e1, e2 = jnp.asarray(e1), jnp.asarray(e2)
    e_sq = e1**2 + e2**2
    nonzero = e_sq > 0
    e1_safe = jnp.where(nonzero, e1, 1.0)
    e2_safe = jnp.where(nonzero, e2, 0.0)
    phi = jnp.where(nonzero, jnp.arctan2(e2_safe, e1_safe) / 2.0, 0.0)
    c = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, e_sq, 1.0)), 0.0)
    c = jnp.minimum(c, 0.9999)
    q = (1.0 - c) / (1.0 + c)
    return q, phi


def e1e2_from_q_phi(q: ArrayLike, phi: ArrayLike) -> tuple[Array, Array]:
    """Herculens's ellipticity components from axis ratio and position angle.

    ``e1 = (1-q)/(1+q) cos 2φ``, ``e2 = (1-q)/(1+q) sin 2φ``, as
    ``herculens.Util.param_util.phi_q2_ellipticity`` (which takes ``(phi, q)``).

    Args:
        q: axis ratio (minor/major).
        phi: position angle of the major axis, radians, counter-clockwise from +x.

    Returns:
        ``(e1, e2)``, broadcast shape of the inputs.
    """
    q, phi = jnp.asarray(q), jnp.asarray(phi)
    modulus = (1.0 - q) / (1.0 + q)
    return modulus * jnp.cos(2.0 * phi), modulus * jnp.sin(2.0 * phi)


def to_galaxy_frame(
    x: ArrayLike,
    y: ArrayLike,
    center_x: ArrayLike,
    center_y: ArrayLike,
    phi: ArrayLike,
) -> tuple[Array, Array]:
    """Sky-frame coordinates to the galaxy frame (x along the major axis), Herculens's rotation.

    ``x' = cos φ (x - center_x) + sin φ (y - center_y)``,
    ``y' = -sin φ (x - center_x) + cos φ (y - center_y)``.

    Args:
        x: sky-frame x coordinate (Herculens's angular x), arcsec.
        y: sky-frame y coordinate, arcsec.
        center_x: galaxy centre x, arcsec.
        center_y: galaxy centre y, arcsec.
        phi: position angle of the major axis (e.g. from :func:`q_phi_from_e1e2`), radians.

    Returns:
        ``(x_gal, y_gal)`` in arcsec, broadcast shape of the inputs.
    """
    dx = jnp.asarray(x) - center_x
    dy = jnp.asarray(y) - center_y
    cos, sin = jnp.cos(phi), jnp.sin(phi)
    return cos * dx + sin * dy, -sin * dx + cos * dy
