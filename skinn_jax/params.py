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
from dataclasses import dataclass
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


# ----------------------------------------------------------------------------------------------
# Parameter spaces: the paper box above, and the real-lens box of CONVENTIONS §9


def inclination_floor_deg(q_mass, q_light, margin_deg: float):
    """Lowest inclination (deg) at which every MGE component deprojects, plus ``margin_deg``.

    ``cos² i < q²`` for both axis ratios: ``degrees(arccos(min(q_mass, q_light))) + margin_deg``.
    Works on NumPy or JAX arrays (any broadcastable shapes).
    """
    xp = _array_module(q_mass, q_light)
    return xp.degrees(xp.arccos(xp.minimum(q_mass, q_light))) + margin_deg


def _array_module(*arrays):
    if any(type(a).__module__.startswith("jax") for a in arrays):
        import jax.numpy as jnp

        return jnp
    return np


@dataclass(frozen=True)
class ParamSpace:
    """A model space of the emulator: parameter names, units, box, sampling and the network's
    internal (unit-cube) coordinates.

    Two exist: :data:`PAPER_SPACE` (the eight parameters of CONVENTIONS §1, fixed 0.08" core) and
    :data:`REAL_LENS_SPACE` (CONVENTIONS §9: a free core ``r_core`` down to the singular power
    law, a wide light box and every deprojectable inclination). A checkpoint records its space
    by :attr:`name`.

    Attributes:
        name: identifier stored in checkpoints and data-set manifests.
        names: parameter names in order (the first eight are those of CONVENTIONS §1).
        units: unit of each parameter ("" for dimensionless).
        box: ``name -> (low, high)`` in user units. For ``r_sersic`` the absolute range implied by
            ``theta_E``'s box (the binding rule is :attr:`r_sersic_ratio`); for
            ``inclination_deg`` the widest range (the binding rule is the floor below).
        r_sersic_ratio: allowed ``r_sersic / theta_E``.
        inclination_margin_deg: ``None``: the inclination box is fixed (paper); a number ``m``:
            the rule ``inclination_deg >= degrees(arccos(min(q_mass, q_light))) + m``.
        log_scaled: parameters whose internal coordinate is logarithmic (``r_sersic`` means its
            ratio to ``theta_E``).
        r_core_zero_fraction: fraction of training draws with ``r_core = 0`` exactly (the
            singular law is a face of the box that real lens models sit on).
        typical: an ordinary lens, every parameter well inside the box.

    Internal coordinates (:meth:`normalise`, each in [-1, 1], a rectangular box): linear in each
    parameter, except ``r_sersic`` through ``r_sersic / theta_E``; log-scaled ones in log;
    ``inclination_deg`` as its fraction of the allowed range ``(i - i_min(q)) / (90 - i_min(q))``;
    ``r_core`` as ``sqrt(r_core / r_core_max)``, smooth at the singular law (a core changes the
    mass by ~ r_core^(3-gamma), so v_rms moves like a power of r_core, never like log r_core).

    Example:
        >>> import numpy as np
        >>> from skinn_jax.params import REAL_LENS_SPACE as space
        >>> p = space.sample(np.random.default_rng(0), 4)
        >>> bool(np.all(space.in_box(p)))
        True
    """

    name: str
    names: tuple[str, ...]
    units: tuple[str, ...]
    box: dict[str, tuple[float, float]]
    r_sersic_ratio: tuple[float, float]
    inclination_margin_deg: float | None
    log_scaled: tuple[str, ...]
    r_core_zero_fraction: float
    typical: tuple[float, ...]

    @property
    def n_params(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def public_box(self) -> dict:
        """The box as :attr:`skinn_jax.Emulator.box` reports it (CONVENTIONS §9)."""
        out = {n: tuple(float(v) for v in self.box[n]) for n in self.names}
        out["r_sersic_over_theta_E"] = tuple(float(v) for v in self.r_sersic_ratio)
        if self.inclination_margin_deg is not None:
            out["inclination_margin_deg"] = float(self.inclination_margin_deg)
        return out

    def inclination_floor(self, p):
        """Lowest allowed inclination (deg) for parameters ``p`` (..., n_params)."""
        if self.inclination_margin_deg is None:
            return self.box["inclination_deg"][0] + 0.0 * p[..., 0]
        return inclination_floor_deg(p[..., 2], p[..., 3], self.inclination_margin_deg)

    def _violation(self, row: np.ndarray, i: int, tol: float = 1e-6) -> str | None:
        """Why parameter ``i`` of one vector ``row`` is outside the space (None if inside)."""
        name, value = self.names[i], row[i]
        low, high = self.box[name]
        if not np.isfinite(value):
            return f"{name} = {value} is not finite; allowed range [{low:.6g}, {high:.6g}]"
        if name == "r_sersic":
            (lo_r, hi_r), ratio = self.r_sersic_ratio, value / row[0]
            if lo_r - tol <= ratio <= hi_r + tol:
                return None
            return (
                f"r_sersic = {value:.6g} arcsec gives r_sersic/theta_E = {ratio:.6g}, outside "
                f"the allowed range [{lo_r}, {hi_r}] "
                f"(i.e. [{lo_r * row[0]:.6g}, {hi_r * row[0]:.6g}] arcsec)"
            )
        if name == "inclination_deg" and self.inclination_margin_deg is not None:
            floor = float(self.inclination_floor(row))
            if not np.isfinite(floor) or floor - tol <= value <= 90.0 + tol:
                return None  # a non-finite q is reported on its own
            return (
                f"inclination_deg = {value:.6g} is outside the allowed range [{floor:.6g}, 90] "
                f"for q_mass = {row[2]:.6g}, q_light = {row[3]:.6g} (rule: inclination_deg >= "
                f"degrees(arccos(min(q_mass, q_light))) + {self.inclination_margin_deg:g}, so "
                "that every component deprojects)"
            )
        if low - tol * max(1.0, abs(low)) <= value <= high + tol * max(1.0, abs(high)):
            return None
        return f"{name} = {value:.6g} is outside the allowed range [{low:.6g}, {high:.6g}]"

    def _violations(self, rows: np.ndarray):
        """Yield ``(row index, message)`` for every value of ``rows`` (B, n) outside the space."""
        for row_index, row in enumerate(rows):
            for i in range(self.n_params):
                message = self._violation(row, i)
                if message is not None:
                    yield row_index, message

    def _as_rows(self, p, what: str) -> np.ndarray:
        if isinstance(p, EmulatorParams):
            p = p.to_array()
        if isinstance(p, dict):
            raise ValueError(
                f"{what} must be an array of shape ({self.n_params},) or (B, {self.n_params}) in "
                f"the order {self.names}, got a dict"
            )
        if np.iscomplexobj(np.asarray(p)):
            raise ValueError(f"{what} must be real numbers, got complex values")
        arr = np.asarray(p, dtype=float)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.n_params:
            raise ValueError(
                f"{what} must have shape ({self.n_params},) or (B, {self.n_params}) in the order "
                f"{self.names}, got {arr.shape}"
            )
        return arr

    def validate(self, p, *, what: str = "parameters") -> np.ndarray:
        """Check parameter vectors against the space; return them as float64 NumPy.

        Args:
            p: array-like of shape ``(n_params,)`` or ``(B, n_params)`` in the order of
                :attr:`names`.
            what: word used in error messages.

        Raises:
            ValueError: wrong shape, a non-finite value, or a value outside the box, naming the
                parameter, its value and its allowed range (or rule).
        """
        arr = self._as_rows(p, what)
        for row_index, message in self._violations(arr.reshape(-1, self.n_params)):
            where = f" (row {row_index})" if arr.ndim == 2 else ""
            name, rest = message.split(" = ", 1)
            prefix = "" if what == "parameters" else f"{what}: "
            raise ValueError(f"{prefix}{name}{where} = {rest}")
        return arr

    def in_box(self, p) -> np.ndarray:
        """Whether each parameter vector lies in the space: bool, shape ``p.shape[:-1]``."""
        arr = self._as_rows(p, "parameters")
        rows = arr.reshape(-1, self.n_params)
        ok = np.ones(len(rows), dtype=bool)
        for row_index, _ in self._violations(rows):
            ok[row_index] = False
        return ok.reshape(arr.shape[:-1])

    def in_box_mask(self, p, margin: float = 1e-3):
        """Traceable in-box test for JAX arrays (for use under ``jax.jit``): bool, shape
        ``p.shape[:-1]``; False for any non-finite entry.

        The rules of :meth:`in_box`, each face widened by ``margin`` x the width of its range
        (the ratio range for ``r_sersic``, ``[floor, 90]`` for the inclination rule), so that
        finite-difference steps at a face still get the (smooth) emulator's values.
        """
        import jax.numpy as jnp

        ok = jnp.all(jnp.isfinite(p), axis=-1)
        for i, name in enumerate(self.names):
            value, (low, high) = p[..., i], self.box[name]
            if name == "r_sersic":
                value, (low, high) = value / p[..., 0], self.r_sersic_ratio
            elif name == "inclination_deg" and self.inclination_margin_deg is not None:
                low = self.inclination_floor(p)
            slack = margin * (high - low)
            ok = ok & (value >= low - slack) & (value <= high + slack)
        return ok

    def normalise(self, p):
        """Internal coordinates in [-1, 1], shape ``(..., n_params)`` (NumPy or JAX): the network
        input. See the class docstring for the coordinate of each parameter."""
        xp = _array_module(p)
        cols = []
        for i, name in enumerate(self.names):
            value = p[..., i]
            low, high = self.box[name]
            if name == "r_sersic":
                value = value / p[..., 0]
                low, high = self.r_sersic_ratio
            if name == "inclination_deg" and self.inclination_margin_deg is not None:
                floor = self.inclination_floor(p)
                unit = (value - floor) / (90.0 - floor)
            elif name == "r_core":
                # sqrt with a finite (zero) derivative at the singular law, where the true one is
                # infinite for gamma > 2 (v_rms moves like r_core^((3-gamma)/2) there)
                positive = value > 0
                unit = xp.where(positive, xp.sqrt(xp.where(positive, value, 1.0) / high), 0.0)
            elif name in self.log_scaled:
                unit = (xp.log(value) - np.log(low)) / (np.log(high) - np.log(low))
            else:
                unit = (value - low) / (high - low)
            cols.append(unit)
        return 2.0 * xp.stack(cols, axis=-1) - 1.0

    def sample(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """Draw parameters uniformly in the internal coordinates (:meth:`normalise`).

        For the paper space this is uniform in each parameter (``r_sersic = theta_E U(0.5, 1)``),
        exactly as before; in the real-lens space ``r_core`` is 0 with probability
        :attr:`r_core_zero_fraction` and otherwise uniform in ``sqrt(r_core)``.

        Returns:
            ``(n_params,)`` or ``(n, n_params)``, float64.
        """
        size = 1 if n is None else n
        u = rng.uniform(size=(size, self.n_params))
        p = np.empty_like(u)
        for i, name in enumerate(self.names):
            low, high = self.box[name]
            if name == "r_sersic":
                low, high = self.r_sersic_ratio
            if name == "r_core":
                f = self.r_core_zero_fraction
                p[:, i] = high * (np.clip(u[:, i] - f, 0.0, None) / (1.0 - f)) ** 2
            elif name in self.log_scaled:
                p[:, i] = np.exp(np.log(low) + u[:, i] * (np.log(high) - np.log(low)))
            else:
                p[:, i] = low + u[:, i] * (high - low)
        p[:, 4] = p[:, 0] * p[:, 4]
        if self.inclination_margin_deg is not None:
            floor = self.inclination_floor(p)
            p[:, 7] = floor + u[:, 7] * (90.0 - floor)
        return p[0] if n is None else p


PAPER_SPACE = ParamSpace(
    name="paper",
    names=PARAM_NAMES,
    units=PARAM_UNITS,
    box=PARAM_BOX,
    r_sersic_ratio=R_SERSIC_RATIO_BOX,
    inclination_margin_deg=None,
    log_scaled=(),
    r_core_zero_fraction=0.0,
    typical=TYPICAL_PARAMS,
)
"""The paper's box (CONVENTIONS §1): eight parameters, fixed 0.08" core."""

REAL_LENS_MARGIN_DEG = 2.0
R_CORE_MAX_ARCSEC = 0.1

REAL_LENS_SPACE = ParamSpace(
    name="real-lens",
    names=PARAM_NAMES + ("r_core",),
    units=PARAM_UNITS + ("arcsec",),
    box={
        "theta_E": (0.5, 2.0),
        "gamma": (1.5, 2.5),
        "q_mass": (0.5, 1.0),
        "q_light": (0.5, 1.0),
        "r_sersic": (0.075, 5.0),
        "n_sersic": (1.0, 6.0),
        "beta_z": (-0.4, 0.4),
        "inclination_deg": (REAL_LENS_MARGIN_DEG, 90.0),
        "r_core": (0.0, R_CORE_MAX_ARCSEC),
    },
    r_sersic_ratio=(0.15, 2.5),
    inclination_margin_deg=REAL_LENS_MARGIN_DEG,
    log_scaled=("r_sersic", "n_sersic"),
    r_core_zero_fraction=0.1,
    typical=TYPICAL_PARAMS + (0.0,),
)
"""The real-lens space (CONVENTIONS §9): nine parameters, ``r_core`` (arcsec) last."""

SPACES: dict[str, ParamSpace] = {s.name: s for s in (PAPER_SPACE, REAL_LENS_SPACE)}


def space_named(name: str | None) -> ParamSpace:
    """The parameter space called ``name`` (``None``: the paper space, for old files)."""
    name = name or PAPER_SPACE.name
    if name not in SPACES:
        raise ValueError(f"unknown parameter space {name!r}; known: {sorted(SPACES)}")
    return SPACES[name]


def space_of(p) -> ParamSpace:
    """The parameter space whose vectors have the length of ``p``'s last axis (8 or 9)."""
    n = np.shape(p)[-1] if np.ndim(p) else 0
    for space in SPACES.values():
        if space.n_params == n:
            return space
    raise ValueError(
        f"parameters must have 8 (paper space) or 9 (real-lens space, r_core last) entries in "
        f"their last axis, got shape {np.shape(p)}"
    )
