"""The eight emulator parameters: names, units, training box, sampling and validation.

CONVENTIONS §1. The order is fixed and shared by the JAM generator, the data sets, the emulator
and the inference code:

====  ===================  ========  ==============================================
 #    name                 unit      training box
====  ===================  ========  ==============================================
 0    ``theta_E``          arcsec    [0.5, 2.0]  (cored PEMD normalisation, §2)
 1    ``gamma``            --        [1.5, 2.5]  (2 = isothermal)
 2    ``q_mass``           --        [0.6, 1.0]
 3    ``q_light``          --        [0.6, 1.0]
 4    ``r_sersic``         arcsec    ``r_sersic / theta_E`` in [0.5, 1.0]
 5    ``n_sersic``         --        [2, 4]
 6    ``beta_z``           --        [-0.4, 0.4]
 7    ``inclination_deg``  degree    [arccos(0.6) + 2 deg, 90] (90 = edge-on)
====  ===================  ========  ==============================================
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

PARAM_NAMES: tuple[str, ...] = (
    "theta_E",
    "gamma",
    "q_mass",
    "q_light",
    "r_sersic",
    "n_sersic",
    "beta_z",
    "inclination_deg",
)
PARAM_UNITS: tuple[str, ...] = ("arcsec", "", "", "", "arcsec", "", "", "deg")
N_PARAMS = len(PARAM_NAMES)

INCLINATION_MIN_DEG = math.degrees(math.acos(0.6)) + 2.0
"""Lowest inclination (deg): every MGE component with q >= 0.6 stays deprojectable."""

R_SERSIC_RATIO_BOX = (0.5, 1.0)
"""Allowed range of ``r_sersic / theta_E``."""

# Box of each parameter; for r_sersic this is the absolute range implied by theta_E's box,
# the binding constraint is the ratio R_SERSIC_RATIO_BOX.
PARAM_BOX: dict[str, tuple[float, float]] = {
    "theta_E": (0.5, 2.0),
    "gamma": (1.5, 2.5),
    "q_mass": (0.6, 1.0),
    "q_light": (0.6, 1.0),
    "r_sersic": (0.25, 2.0),
    "n_sersic": (2.0, 4.0),
    "beta_z": (-0.4, 0.4),
    "inclination_deg": (INCLINATION_MIN_DEG, 90.0),
}
PARAM_LOW = np.array([PARAM_BOX[n][0] for n in PARAM_NAMES])
PARAM_HIGH = np.array([PARAM_BOX[n][1] for n in PARAM_NAMES])

TYPICAL_PARAMS: tuple[float, ...] = (1.2, 2.0, 0.8, 0.75, 0.9, 3.5, 0.1, 70.0)
"""An ordinary lens, in ``PARAM_NAMES`` order: isothermal, mildly flattened, every parameter at
least 20 % of its box width from the box faces (``skinn-jax jam-map``'s default and the built-in
system of ``skinn-jax fit-mock``)."""


class EmulatorParams(NamedTuple):
    """The eight emulator parameters as a typed container (a JAX pytree of scalars or arrays).

    Attributes:
        theta_E: Einstein radius of the cored PEMD (CONVENTIONS §2), arcsec.
        gamma: 2D power-law slope of the mass (2 = isothermal).
        q_mass: axis ratio of the mass.
        q_light: axis ratio of the Sérsic light.
        r_sersic: major-axis Sérsic half-light radius, arcsec.
        n_sersic: Sérsic index.
        beta_z: constant anisotropy ``1 - <v_z^2>/<v_R^2>``.
        inclination_deg: inclination in degrees (90 = edge-on).
    """

    theta_E: float
    gamma: float
    q_mass: float
    q_light: float
    r_sersic: float
    n_sersic: float
    beta_z: float
    inclination_deg: float

    def to_array(self):
        """Stack into an array of shape ``(..., 8)`` (NumPy or JAX, whatever the fields are)."""
        if any(type(v).__module__.startswith("jax") for v in self):
            import jax.numpy as jnp

            return jnp.stack([jnp.asarray(v) for v in self], axis=-1)
        return np.stack([np.asarray(v, dtype=float) for v in self], axis=-1)

    @classmethod
    def from_array(cls, p) -> EmulatorParams:
        """Split an array of shape ``(..., 8)`` into the eight named fields."""
        if p.shape[-1] != N_PARAMS:
            raise ValueError(f"parameter array must have last dimension 8, got shape {p.shape}")
        return cls(*(p[..., i] for i in range(N_PARAMS)))


def validate_params(p, *, what: str = "parameters") -> np.ndarray:
    """Check eight-parameter vectors against the training box; return them as float64 NumPy.

    Args:
        p: array-like of shape ``(8,)`` or ``(B, 8)`` in the order of :data:`PARAM_NAMES`
            (or an :class:`EmulatorParams`).
        what: word used in error messages.

    Returns:
        ``np.ndarray`` of the same shape, float64.

    Raises:
        ValueError: wrong shape, a non-finite value, or a value outside the box, naming the
            parameter, its value and its allowed range (for ``r_sersic``, the ratio to ``theta_E``).
    """
    if isinstance(p, EmulatorParams):
        p = p.to_array()
    arr = np.asarray(p, dtype=float)
    if arr.ndim not in (1, 2) or arr.shape[-1] != N_PARAMS:
        raise ValueError(
            f"{what} must have shape (8,) or (B, 8) in the order {PARAM_NAMES}, got {arr.shape}"
        )
    rows = arr.reshape(-1, N_PARAMS)
    # A tiny relative tolerance lets values round-tripped through float32 sit on the box faces.
    tol = 1e-6
    for row_index, row in enumerate(rows):
        where = f" (row {row_index})" if arr.ndim == 2 else ""
        for i, name in enumerate(PARAM_NAMES):
            value = row[i]
            low, high = PARAM_BOX[name]
            if not np.isfinite(value):
                raise ValueError(
                    f"{name}{where} = {value} is not finite; allowed range [{low:.6g}, {high:.6g}]"
                )
            if name == "r_sersic":
                ratio = value / row[0]
                lo_r, hi_r = R_SERSIC_RATIO_BOX
                if not (lo_r - tol <= ratio <= hi_r + tol):
                    raise ValueError(
                        f"r_sersic{where} = {value:.6g} arcsec gives "
                        f"r_sersic/theta_E = {ratio:.6g}, "
                        f"outside the allowed range [{lo_r}, {hi_r}] "
                        f"(i.e. [{lo_r * row[0]:.6g}, {hi_r * row[0]:.6g}] arcsec)"
                    )
                continue
            if not (low - tol * max(1.0, abs(low)) <= value <= high + tol * max(1.0, abs(high))):
                raise ValueError(
                    f"{name}{where} = {value:.6g} is outside the allowed range "
                    f"[{low:.6g}, {high:.6g}]"
                )
    return arr


def sample_params(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Draw parameters uniformly in the training box (``r_sersic = theta_E * U(0.5, 1)``).

    Args:
        rng: NumPy random generator.
        n: number of draws; ``None`` returns a single vector.

    Returns:
        Array of shape ``(8,)`` or ``(n, 8)``, float64, in the order of :data:`PARAM_NAMES`.
    """
    size = 1 if n is None else n
    u = rng.uniform(size=(size, N_PARAMS))
    p = PARAM_LOW + u * (PARAM_HIGH - PARAM_LOW)
    lo_r, hi_r = R_SERSIC_RATIO_BOX
    p[:, 4] = p[:, 0] * (lo_r + u[:, 4] * (hi_r - lo_r))
    return p[0] if n is None else p


def normalise_params(p):
    """Map parameters to [-1, 1] per dimension (``r_sersic`` through its ratio to ``theta_E``).

    Works on NumPy or JAX arrays of shape ``(..., 8)``; used as the network input.
    """
    xp = np if isinstance(p, np.ndarray) else __import__("jax.numpy", fromlist=["numpy"])
    lo_r, hi_r = R_SERSIC_RATIO_BOX
    low = xp.asarray(PARAM_LOW)
    high = xp.asarray(PARAM_HIGH)
    unit = (p - low) / (high - low)
    ratio_unit = (p[..., 4] / p[..., 0] - lo_r) / (hi_r - lo_r)
    unit = xp.concatenate([unit[..., :4], ratio_unit[..., None], unit[..., 5:]], axis=-1)
    return 2.0 * unit - 1.0
