"""``skinn_jax.Emulator``: the public interface of CONVENTIONS §7.

::

    emu = skinn_jax.Emulator.load()          # default checkpoint shipped (real-lens, P = 9)
    emu.param_names                          # the P input names, in order (P = 8 or 9)
    emu.vrms_map(p)                          # (P,) or (B, P) -> (551, 551) or (B, 551, 551), km/s
    emu.vrms_at(p, x, y)                     # galaxy-frame arcsec, any shape -> same shape, km/s

Everything works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. Called eagerly (with concrete
arrays), the methods validate the parameters (``ValueError`` naming the parameter, its value and
range) and the coordinates (the emulator's field is |x|, |y| <= 5.5 arcsec).

Traced values (inside ``jax.jit``, ``vmap``, ``grad``) cannot raise. There the methods return NaN
instead of a number the emulator cannot vouch for: ``vrms_at`` at a point outside the field or with
a non-finite coordinate, and every output (point or map) of a parameter vector outside the
training box or non-finite (:meth:`~skinn_jax.params.ParamSpace.in_box_mask`: the box of
:meth:`Emulator.in_box` with each face widened by 0.1 % of its range, so that finite-difference
steps at a face still get numbers). NaN propagates into a likelihood, so a
sampler rejects the step instead of using an extrapolation. Gradients stay finite wherever the
value is finite (the masked inputs are replaced by safe ones before the network sees them). To
find *which* input was bad inside a jitted function, call the same function eagerly on the
offending values: it raises the ``ValueError`` with the name, value and range.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import checkpoint_space, load_checkpoint
from .grid import HALF_WIDTH_ARCSEC, QUADRANT_SIZE, mirror_index, quadrant_coordinates
from .networks import (
    NetworkConfig,
    cusp_weight,
    dense_pca,
    make_network,
    relative_velocity,
    velocity_scale,
)
from .params import ParamSpace

_MIRROR_INDEX = mirror_index()
_QUADRANT_RADIUS = np.hypot(*quadrant_coordinates())
DEFAULT_FILE = "DEFAULT"
"""A text file in the checkpoint directory naming the default checkpoint (e.g. ``cips``)."""
FIELD_TOLERANCE_ARCSEC = 1e-6


def _is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def checkpoint_dir() -> Path:
    """Directory of the shipped checkpoints (``skinn_jax/checkpoints`` once installed)."""
    try:
        path = Path(str(resources.files("skinn_jax.checkpoints")))
        if path.is_dir():
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[1] / "checkpoints"  # running from a checkout


def _looks_like_path(name_or_path: str | Path) -> bool:
    """A :class:`~pathlib.Path`, or a string with a directory separator or starting with ``~``."""
    if isinstance(name_or_path, Path):
        return True
    text = str(name_or_path)
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return text.startswith("~") or any(sep in text for sep in separators)


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints shipped with the package."""
    root = checkpoint_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def resolve_checkpoint(name_or_path: str | Path | None) -> Path:
    """The checkpoint directory meant by ``name_or_path``.

    * ``None`` or ``"default"``: the shipped default (named in ``checkpoints/DEFAULT``).
    * a bare name (a string without a directory separator, e.g. ``"cips"``): a shipped
      checkpoint, never a directory of that name in the working directory;
    * a path (a :class:`~pathlib.Path`, or a string containing ``/`` or starting with ``~``,
      e.g. ``"./cips"`` or ``"runs/cips"``): that directory.

    Raises:
        FileNotFoundError: no such shipped checkpoint, or no such directory.
    """
    if name_or_path is None or str(name_or_path) == "default":
        default_file = checkpoint_dir() / DEFAULT_FILE
        if not default_file.exists():
            raise FileNotFoundError(f"no default checkpoint: {default_file} is missing")
        name_or_path = default_file.read_text().strip()
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no checkpoint directory {str(name_or_path)!r}")
        return path
    shipped = checkpoint_dir() / str(name_or_path)
    if str(name_or_path) not in (".", "..") and shipped.is_dir():
        return shipped
    hint = ""
    if Path(name_or_path).is_dir():
        hint = f"; to load the directory of that name give it as a path: './{name_or_path}'"
    raise FileNotFoundError(
        f"no checkpoint {str(name_or_path)!r}: a bare name means a shipped checkpoint, one of "
        f"{shipped_checkpoints()}{hint}"
    )


class Emulator:
    """A trained emulator of JAM v_rms maps (km/s, fiducial distances of CONVENTIONS §4).

    Attributes:
        config: the network architecture.
        variables: the Flax variables (float32 arrays).
        metadata: the checkpoint's metadata (training data, metrics, versions).
    """

    def __init__(self, config: NetworkConfig, variables, metadata: dict | None = None):
        self.config = config
        self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
        self.metadata = metadata or {}
        self.space: ParamSpace = checkpoint_space(self.metadata)
        self._net = make_network(config)
        self._grid_features = None
        # a factorised PCA basis gives full maps; points are looked up in its dense twin
        self._factorised = config.kind == "pca" and config.basis_rank > 0
        self._point_net, self._point_variables = self._net, self.variables
        if self._factorised:
            dense_config, dense_variables = dense_pca(config, self.variables)
            self._point_net, self._point_variables = make_network(dense_config), dense_variables

    @classmethod
    def load(cls, path: str | Path | None = None) -> Emulator:
        """Load a checkpoint: the shipped default (``None``), a shipped one by bare name
        (``"cips"``), or a directory given as a path (``Path(...)``, ``"./cips"``, ``"runs/x"``);
        see :func:`resolve_checkpoint`. A bare name never loads a folder of the working
        directory."""
        config, variables, metadata = load_checkpoint(resolve_checkpoint(path))
        return cls(config, variables, metadata)

    @property
    def param_names(self) -> tuple[str, ...]:
        """The input names in order: the eight of CONVENTIONS §1, then ``r_core`` (arcsec) for a
        real-lens emulator (§9)."""
        return self.space.names

    @property
    def box(self) -> dict:
        """The training box: each name of :attr:`param_names` -> ``(low, high)`` in user units,
        ``"r_sersic_over_theta_E"`` -> ``(low, high)``, and for a real-lens emulator
        ``"inclination_margin_deg"`` -> m of the rule
        ``inclination_deg >= degrees(arccos(min(q_mass, q_light))) + m``."""
        return self.space.public_box()

    def in_box(self, p) -> np.ndarray:
        """Whether each parameter vector (..., P) lies in the training box (bool, ``p.shape[:-1]``).

        Raises ValueError only for a wrong shape; non-finite values are simply outside."""
        return self.space.in_box(p)

    # -- building blocks ----------------------------------------------------------------------

    def features(self, x, y):
        """Per-pixel features (..., K + 1) at galaxy-frame coordinates (arcsec)."""
        return self._point_net.apply(self._point_variables, x, y, method="features")

    def style(self, p):
        """Style vector (..., K + 1) for parameters (..., P) in physical units."""
        return self._net.apply(self.variables, self.space.normalise(p), method="style")

    def velocity_from_output(self, p, out, radius):
        """v_rms (km/s) from the network output ``out`` (``p.shape[:-1] + S``) for parameters
        ``p`` (..., P) at galaxy-frame radii ``radius`` (shape S, arcsec):
        ``v_scale(p) * relative_velocity(out / w)`` (see ``NetworkConfig.target``), with ``w``
        the :func:`~skinn_jax.networks.cusp_weight` when the network emulates ``w u``."""
        extra = (1,) * (out.ndim - p.ndim + 1)
        if self.config.cusp_weight:
            w = cusp_weight(p, jnp.ravel(radius)).reshape(p.shape[:-1] + jnp.shape(radius))
            out = out / w
        scale = velocity_scale(p).reshape(p.shape[:-1] + extra)
        return scale * relative_velocity(out, self.config.target)

    def _safe_params(self, p):
        """``(p with out-of-box rows replaced by the typical lens, in-box mask)``, traceable."""
        ok = self.space.in_box_mask(p)
        typical = jnp.asarray(self.space.typical, p.dtype)
        return jnp.where(ok[..., None], p, typical), ok

    def _check(self, p, x=None, y=None):
        if _is_concrete(p):
            self.space.validate(p)  # not np.asarray(p): a dict must reach its own message
        for name, c in (("x", x), ("y", y)):
            if c is not None and _is_concrete(c):
                c = np.asarray(c)
                if not np.all(np.isfinite(c)):
                    raise ValueError(f"{name} contains non-finite coordinates")
                worst = float(np.max(np.abs(c), initial=0.0))
                if worst > HALF_WIDTH_ARCSEC + FIELD_TOLERANCE_ARCSEC:
                    raise ValueError(
                        f"|{name}| = {worst:.4g} arcsec is outside the emulator's field: "
                        f"allowed range [-{HALF_WIDTH_ARCSEC}, {HALF_WIDTH_ARCSEC}] arcsec"
                    )

    # -- public interface ----------------------------------------------------------------------

    def vrms_at(self, p, x, y):
        """v_rms (km/s) at galaxy-frame points.

        Args:
            p: parameters, shape (P,) or (B, P), order of :attr:`param_names`.
            x: galaxy-frame x along the projected major axis, arcsec, any shape S.
            y: galaxy-frame y, arcsec, same shape S (broadcastable).

        Returns:
            shape S for p of shape (P,), (B, *S) for p of shape (B, P).

        Raises:
            ValueError: (concrete inputs only) parameters outside the training box or not
                finite; a coordinate outside |x|, |y| <= 5.5 arcsec or not finite.

        Under ``jax.jit`` (traced inputs) nothing raises: points outside the field or with a
        non-finite coordinate are NaN, and so is every point of a parameter vector outside the
        box (see the module docstring).
        """
        self._check(p, x, y)
        p = jnp.asarray(p, jnp.result_type(float))
        x, y = jnp.broadcast_arrays(jnp.asarray(x, p.dtype), jnp.asarray(y, p.dtype))
        limit = HALF_WIDTH_ARCSEC + FIELD_TOLERANCE_ARCSEC
        in_field = (jnp.abs(x) <= limit) & (jnp.abs(y) <= limit)  # False for NaN
        x, y = jnp.where(in_field, x, 0.0), jnp.where(in_field, y, 0.0)
        p, in_box = self._safe_params(p)
        style = self.style(p)  # (..., K+1)
        u = self._point_net.apply(
            self._point_variables, style.reshape(-1, style.shape[-1]), x, y, method="values_at"
        )
        u = u.reshape(p.shape[:-1] + x.shape)
        v = self.velocity_from_output(p, u, jnp.hypot(x, y))
        ok = in_box.reshape(in_box.shape + (1,) * x.ndim) & in_field
        return jnp.where(ok, v, jnp.nan)

    def grid_features(self):
        """Features on the 276 x 276 quadrant grid, (276 * 276, K + 1), computed once."""
        if self._grid_features is None:
            x, y = quadrant_coordinates()
            # concrete even when first called inside a jit trace (the weights are constants)
            with jax.ensure_compile_time_eval():
                self._grid_features = jax.jit(self.features)(
                    jnp.asarray(x.ravel(), jnp.float32), jnp.asarray(y.ravel(), jnp.float32)
                )
        return self._grid_features

    def vrms_quadrant(self, p):
        """v_rms (km/s) on the quadrant ``[:276, :276]``: (P,) -> (276, 276), (B, P) -> (B, ...).

        Concrete parameters outside the box raise ``ValueError``; traced ones give a NaN map."""
        self._check(p)
        p = jnp.asarray(p, jnp.result_type(float))
        p, in_box = self._safe_params(p)
        style = self.style(p)
        if self._factorised:
            u = self._net.apply(self.variables, style, method="quadrant")
        else:
            u = style @ self.grid_features().T.astype(style.dtype)
            u = u.reshape(p.shape[:-1] + (QUADRANT_SIZE, QUADRANT_SIZE))
        v = self.velocity_from_output(p, u, _QUADRANT_RADIUS)
        return jnp.where(in_box[..., None, None], v, jnp.nan)

    def vrms_map(self, p):
        """Full 551 x 551 v_rms map (km/s): (P,) -> (551, 551), (B, P) -> (B, 551, 551).

        Concrete parameters outside the box raise ``ValueError``; traced ones give a NaN map."""
        quadrant = self.vrms_quadrant(p)
        flat = quadrant.reshape(quadrant.shape[:-2] + (QUADRANT_SIZE * QUADRANT_SIZE,))
        return jnp.take(flat, _MIRROR_INDEX, axis=-1)  # one gather instead of two flips
