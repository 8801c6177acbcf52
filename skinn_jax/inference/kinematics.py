"""The emulator's v_rms field for the model's kinematics, and the emulator's inputs.

:class:`EmulatorField` is the one galaxy-frame v_rms field of the inference (km/s at fiducial
distances, at galaxy-frame points in arcsec): the emulator's 551 x 551 map, cubic-convolution
interpolated, refined within the central 0.1″ by a fine table of ``vrms_at``. The same class
serves any quadrant function (``EmulatorField.from_quadrant``: e.g. a JAM-truth quadrant) and a
fixed table (:class:`TabulatedField`, e.g. JAM truth at fixed parameters, built by
:mod:`skinn_jax.inference.mocks.kinematics`). :func:`emulator_params` and :func:`sky_params` turn
the model's values into the emulator's eight inputs and the five sky parameters.

Imports: ``skinn_jax`` core (``forward``, ``grid``, ``params``, the emulator at load).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from skinn_jax.cosmology import FIDUCIAL
from skinn_jax.forward import ForwardModel, SkyParams, cubic_interpolate
from skinn_jax.grid import PIXEL_ARCSEC, QUADRANT_SIZE, quadrant_coordinates

KINEMATICS_REFERENCE_D_D = FIDUCIAL.D_d
"""``D_d`` (Mpc) at which kinematics mode evaluates the likelihood, with ``D_dt = ratio x D_d``.

Any value gives the same v_rms (it depends on the distances only through ``D_dt / D_d``); the
fiducial one keeps :func:`skinn_jax.forward.check_sky_params`'s positivity check meaningful."""


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


def kinematic_distances(ratio) -> tuple[Array, Array]:
    """``(D_dt, D_d)`` (Mpc) with ``D_dt / D_d = ratio`` at :data:`KINEMATICS_REFERENCE_D_D`.

    The kinematic likelihood depends on the distances only through their ratio, so this pair
    stands for every pair with that ratio (kinematics mode)."""
    return ratio * KINEMATICS_REFERENCE_D_D, jnp.full_like(ratio, KINEMATICS_REFERENCE_D_D)
