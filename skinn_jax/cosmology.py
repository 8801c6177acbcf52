"""Flat ΛCDM angular-diameter distances, critical density and the kinematic distance rescaling.

CONVENTIONS §3-4. Flat ΛCDM without radiation: ``E(z) = sqrt(Om (1+z)**3 + 1 - Om)``. The comoving
distance ``D_C(z1, z2) = (c / H0) * integral_{z1}^{z2} dz / E(z)`` is computed with a fixed
64-node Gauss-Legendre rule on ``[z1, z2]``. The integrand is analytic with its nearest
singularities about one unit away from the real axis, so the rule is accurate to ~1e-15
(relative) for ``0 <= z <= 10`` and any ``Om`` in ``(0, 1]``. Every JAX function is a pure
function of its arguments: jit-, vmap- and grad-safe in ``z``, ``H0`` and ``Om``, and broadcasts
over array inputs (outputs have the broadcast shape of the inputs).

Units: redshifts dimensionless, ``H0`` in km/s/Mpc, distances in Mpc, surface densities in
Msun/pc².

Validation: called with concrete Python or NumPy numbers, the public functions raise ``ValueError``
for negative redshifts, ``z_s <= z_d``, ``H0 <= 0`` or ``Om`` outside ``(0, 1]``. Values that are
JAX arrays (traced or not) are never checked, so nothing here forces a device sync or breaks
under ``jax.jit``.

:data:`FIDUCIAL` holds the distances at the fiducial cosmology and redshifts (H0 = 72, Om = 0.32,
z_d = 0.5, z_s = 2) as plain Python floats, computed with NumPy at import:
D_d = 1215.739, D_s = 1650.753, D_ds = 1042.883, D_dt = 2886.54 Mpc.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

SPEED_OF_LIGHT_KM_S = 299792.458
"""Speed of light, km/s."""

GRAVITATIONAL_CONSTANT_PC_KMS2_PER_MSUN = 4.30091727e-3
"""Newton's constant G in pc Msun⁻¹ (km/s)²."""

FIDUCIAL_H0 = 72.0
"""Fiducial Hubble constant, km/s/Mpc."""
FIDUCIAL_OM = 0.32
"""Fiducial matter density parameter (flat, no radiation)."""
FIDUCIAL_Z_D = 0.5
"""Fiducial deflector redshift."""
FIDUCIAL_Z_S = 2.0
"""Fiducial source redshift."""

_GL_ORDER = 64
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(_GL_ORDER)
_MPC_PER_PC = 1.0e-6


class LensDistances(NamedTuple):
    """Angular-diameter distances of a lens system and its time-delay distance, all in Mpc.

    Attributes:
        D_d: observer-deflector distance.
        D_s: observer-source distance.
        D_ds: deflector-source distance.
        D_dt: time-delay distance ``(1 + z_d) D_d D_s / D_ds``.
    """

    D_d: ArrayLike
    D_s: ArrayLike
    D_ds: ArrayLike
    D_dt: ArrayLike


# ----------------------------------------------------------------------------------------------
# Eager validation (concrete Python / NumPy inputs only)


def _concrete(value: object) -> np.ndarray | None:
    """Return ``value`` as a float NumPy array if it is a Python or NumPy number, else ``None``."""
    if isinstance(value, (bool, int, float, np.ndarray, np.generic)):
        return np.asarray(value, dtype=float)
    return None


def _check_redshift(z: object, name: str) -> None:
    """Raise ``ValueError`` if a concrete redshift is negative."""
    arr = _concrete(z)
    if arr is not None and np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {z}")


def _check_cosmology(H0: object, Om: object) -> None:
    """Raise ``ValueError`` if a concrete ``H0 <= 0`` or ``Om`` is outside ``(0, 1]``."""
    h0 = _concrete(H0)
    if h0 is not None and np.any(h0 <= 0):
        raise ValueError(f"H0 must be > 0 km/s/Mpc, got {H0}")
    om = _concrete(Om)
    if om is not None and np.any((om <= 0) | (om > 1)):
        raise ValueError(f"Om must be in (0, 1], got {Om}")


def _check_ordered(z1: object, z2: object, name1: str, name2: str, strict: bool) -> None:
    """Raise ``ValueError`` if concrete redshifts violate ``z1 < z2`` (or ``<=`` if not strict)."""
    a, b = _concrete(z1), _concrete(z2)
    if a is None or b is None:
        return
    bad = np.any(b <= a) if strict else np.any(b < a)
    if bad:
        relation = ">" if strict else ">="
        raise ValueError(f"{name2} must be {relation} {name1}, got {name1}={z1}, {name2}={z2}")


def _check_positive(value: object, name: str) -> None:
    """Raise ``ValueError`` if a concrete value is not strictly positive."""
    arr = _concrete(value)
    if arr is not None and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {value}")


# ----------------------------------------------------------------------------------------------
# Quadrature (shared by the NumPy and JAX paths through the array module ``xp``)


def _inverse_efunc(z, Om, xp: ModuleType):
    """``1 / E(z)`` of flat ΛCDM without radiation; broadcasts ``z`` against ``Om``."""
    return 1.0 / xp.sqrt(Om * (1.0 + z) ** 3 + (1.0 - Om))


def _comoving_integral(z1, z2, Om, xp: ModuleType):
    """``integral_{z1}^{z2} dz / E(z)`` by 64-node Gauss-Legendre; shape: broadcast of inputs."""
    z1 = xp.asarray(z1)[..., None]
    z2 = xp.asarray(z2)[..., None]
    Om = xp.asarray(Om)[..., None]
    half = 0.5 * (z2 - z1)
    nodes = z1 + half * (1.0 + xp.asarray(_GL_NODES))
    weights = xp.asarray(_GL_WEIGHTS)
    return half[..., 0] * xp.sum(weights * _inverse_efunc(nodes, Om, xp), axis=-1)


def _hubble_distance_mpc(H0, xp: ModuleType):
    """``c / H0`` in Mpc for ``H0`` in km/s/Mpc."""
    return SPEED_OF_LIGHT_KM_S / xp.asarray(H0)


def _lens_distances(z_d, z_s, H0, Om, xp: ModuleType) -> LensDistances:
    """Lens distances (Mpc) with array module ``xp`` (NumPy or ``jax.numpy``); no validation."""
    d_h = _hubble_distance_mpc(H0, xp)
    dc_d = d_h * _comoving_integral(0.0, z_d, Om, xp)
    dc_s = d_h * _comoving_integral(0.0, z_s, Om, xp)
    dc_ds = d_h * _comoving_integral(z_d, z_s, Om, xp)
    D_d = dc_d / (1.0 + xp.asarray(z_d))
    D_s = dc_s / (1.0 + xp.asarray(z_s))
    D_ds = dc_ds / (1.0 + xp.asarray(z_s))
    D_dt = (1.0 + xp.asarray(z_d)) * D_d * D_s / D_ds
    return LensDistances(D_d=D_d, D_s=D_s, D_ds=D_ds, D_dt=D_dt)


# ----------------------------------------------------------------------------------------------
# Public JAX functions


def comoving_distance_mpc(z: ArrayLike, H0: ArrayLike, Om: ArrayLike) -> Array:
    """Line-of-sight comoving distance to redshift ``z`` in flat ΛCDM.

    Args:
        z: redshift(s), ``>= 0``; any shape.
        H0: Hubble constant, km/s/Mpc; broadcastable against ``z``.
        Om: matter density parameter in ``(0, 1]``; broadcastable against ``z``.

    Returns:
        ``D_C(z)`` in Mpc, broadcast shape of the inputs.

    Raises:
        ValueError: for concrete (Python/NumPy) ``z < 0``, ``H0 <= 0`` or ``Om`` outside (0, 1].
    """
    _check_redshift(z, "z")
    _check_cosmology(H0, Om)
    return _hubble_distance_mpc(H0, jnp) * _comoving_integral(0.0, z, Om, jnp)


def angular_diameter_distance_mpc(z: ArrayLike, H0: ArrayLike, Om: ArrayLike) -> Array:
    """Angular-diameter distance ``D_C(z) / (1 + z)`` in flat ΛCDM.

    Args:
        z: redshift(s), ``>= 0``; any shape.
        H0: Hubble constant, km/s/Mpc; broadcastable against ``z``.
        Om: matter density parameter in ``(0, 1]``; broadcastable against ``z``.

    Returns:
        Distance in Mpc, broadcast shape of the inputs.

    Raises:
        ValueError: for concrete (Python/NumPy) ``z < 0``, ``H0 <= 0`` or ``Om`` outside (0, 1].
    """
    return comoving_distance_mpc(z, H0, Om) / (1.0 + jnp.asarray(z))


def angular_diameter_distance_between_mpc(
    z1: ArrayLike, z2: ArrayLike, H0: ArrayLike, Om: ArrayLike
) -> Array:
    """Angular-diameter distance from ``z1`` to ``z2``, flat: ``(D_C(z2) - D_C(z1)) / (1 + z2)``.

    The comoving separation is integrated directly over ``[z1, z2]`` (no cancellation).

    Args:
        z1: nearer redshift(s), ``>= 0``.
        z2: farther redshift(s), ``>= z1``; broadcastable against ``z1``.
        H0: Hubble constant, km/s/Mpc.
        Om: matter density parameter in ``(0, 1]``.

    Returns:
        Distance in Mpc, broadcast shape of the inputs.

    Raises:
        ValueError: for concrete (Python/NumPy) negative redshifts, ``z2 < z1``, ``H0 <= 0`` or
            ``Om`` outside (0, 1].
    """
    _check_redshift(z1, "z1")
    _check_redshift(z2, "z2")
    _check_ordered(z1, z2, "z1", "z2", strict=False)
    _check_cosmology(H0, Om)
    d_h = _hubble_distance_mpc(H0, jnp)
    return d_h * _comoving_integral(z1, z2, Om, jnp) / (1.0 + jnp.asarray(z2))


def lens_distances(
    z_d: ArrayLike,
    z_s: ArrayLike,
    H0: ArrayLike = FIDUCIAL_H0,
    Om: ArrayLike = FIDUCIAL_OM,
) -> LensDistances:
    """Distances of a lens system in flat ΛCDM.

    Args:
        z_d: deflector redshift, ``>= 0``.
        z_s: source redshift, ``> z_d``; broadcastable against ``z_d``.
        H0: Hubble constant, km/s/Mpc.
        Om: matter density parameter in ``(0, 1]``.

    Returns:
        :class:`LensDistances` of JAX arrays in Mpc (broadcast shape of the inputs), with
        ``D_dt = (1 + z_d) D_d D_s / D_ds``.

    Raises:
        ValueError: for concrete (Python/NumPy) negative redshifts, ``z_s <= z_d``, ``H0 <= 0`` or
            ``Om`` outside (0, 1].
    """
    _check_redshift(z_d, "z_d")
    _check_redshift(z_s, "z_s")
    _check_ordered(z_d, z_s, "z_d", "z_s", strict=True)
    _check_cosmology(H0, Om)
    return _lens_distances(z_d, z_s, H0, Om, jnp)


def sigma_crit_msun_pc2(D_d: ArrayLike, D_s: ArrayLike, D_ds: ArrayLike) -> Array:
    """Critical surface density for lensing, ``c² D_s / (4 π G D_d D_ds)``.

    Constants: ``c = 299792.458`` km/s, ``G = 4.30091727e-3`` pc Msun⁻¹ (km/s)²; distances are
    converted from Mpc to pc (factor 1e6).

    Args:
        D_d: observer-deflector angular-diameter distance, Mpc.
        D_s: observer-source angular-diameter distance, Mpc.
        D_ds: deflector-source angular-diameter distance, Mpc.

    Returns:
        ``Sigma_crit`` in Msun/pc², broadcast shape of the inputs (about 2165 at the fiducial
        distances).

    Raises:
        ValueError: for a concrete (Python/NumPy) non-positive distance.
    """
    _check_positive(D_d, "D_d")
    _check_positive(D_s, "D_s")
    _check_positive(D_ds, "D_ds")
    prefactor = SPEED_OF_LIGHT_KM_S**2 / (4.0 * math.pi * GRAVITATIONAL_CONSTANT_PC_KMS2_PER_MSUN)
    D_d, D_s, D_ds = jnp.asarray(D_d), jnp.asarray(D_s), jnp.asarray(D_ds)
    return prefactor * _MPC_PER_PC * D_s / (D_d * D_ds)


# ----------------------------------------------------------------------------------------------
# Fiducial distances (plain floats, NumPy at import) and the kinematic rescaling

FIDUCIAL = LensDistances(
    *(float(d) for d in _lens_distances(FIDUCIAL_Z_D, FIDUCIAL_Z_S, FIDUCIAL_H0, FIDUCIAL_OM, np))
)
"""Distances (Mpc, Python floats) at H0 = 72, Om = 0.32, z_d = 0.5, z_s = 2 (CONVENTIONS §4)."""


def vrms_distance_factor(D_dt: ArrayLike, D_d: ArrayLike, z_d: ArrayLike) -> Array:
    """Factor that rescales fiducial-distance v_rms maps to a lens's distances (paper eq. 10).

    ``v_rms = v_rms_fid * sqrt( (D_dt / ((1 + z_d) D_d)) / (D_s_fid / D_ds_fid) )``: the mass
    normalisation scales with ``Sigma_crit * D_d² ∝ D_s D_d / D_ds = D_dt / (1 + z_d)``, and the
    velocity dispersion with the square root of mass over physical size (``∝ D_d``). Equals 1 at
    the fiducial distances of :data:`FIDUCIAL`.

    Args:
        D_dt: time-delay distance, Mpc.
        D_d: observer-deflector angular-diameter distance, Mpc.
        z_d: deflector redshift.

    Returns:
        Dimensionless factor, broadcast shape of the inputs.

    Raises:
        ValueError: for concrete (Python/NumPy) non-positive distances or a negative ``z_d``.
    """
    _check_positive(D_dt, "D_dt")
    _check_positive(D_d, "D_d")
    _check_redshift(z_d, "z_d")
    ds_over_dds = jnp.asarray(D_dt) / ((1.0 + jnp.asarray(z_d)) * jnp.asarray(D_d))
    return jnp.sqrt(ds_over_dds / (FIDUCIAL.D_s / FIDUCIAL.D_ds))
