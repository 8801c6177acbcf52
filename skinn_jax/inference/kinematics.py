"""The emulator's v_rms field for the model's kinematics, and the emulator's inputs.

:class:`EmulatorField` is the emulator's instance of the library's one galaxy-frame v_rms field,
:class:`skinn_jax.forward.MapField` (km/s at fiducial distances, at galaxy-frame points in arcsec):
the emulator's 551 x 551 map, cubic-convolution interpolated, refined within the central 0.1″ by
a fine table of ``vrms_at``, with the network features of that table cached. (The JAM truth at
fixed parameters is a ``MapField`` of a fixed table, built by
:mod:`skinn_jax.inference.mocks.kinematics`.) :func:`emulator_params` and :func:`sky_params` turn
the model's values into the emulator's eight inputs and the five sky parameters.

Imports: ``skinn_jax`` core (``forward``, ``grid``, ``params``, the emulator at load).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from skinn_jax.cosmology import FIDUCIAL
from skinn_jax.forward import MapField, SkyParams
from skinn_jax.grid import QUADRANT_SIZE, quadrant_coordinates

KINEMATICS_REFERENCE_D_D = FIDUCIAL.D_d
"""``D_d`` (Mpc) at which kinematics mode evaluates the likelihood, with ``D_dt = ratio x D_d``.

Any value gives the same v_rms (it depends on the distances only through ``D_dt / D_d``); the
fiducial one keeps :func:`skinn_jax.forward.check_sky_params`'s positivity check meaningful."""


class EmulatorField(MapField):
    """The emulator's :class:`~skinn_jax.forward.MapField` (``emu.vrms_quadrant`` refined by
    ``emu.vrms_at`` near the centre), with two savings:

    - the fine table's network features depend only on its fixed coordinates and are computed
      once, so each evaluation costs two small matrix-vector products (map and table);
    - a cropped map (:meth:`~skinn_jax.forward.MapField.for_forward_model`) computes only the
      quadrant's central corner (``(n / 276)²`` of the network's map).

    Network evaluations run in float32 (the network's precision), the interpolation in
    ``interp_dtype`` (float32 by default: log L agrees with float64 to ~1e-6); results are returned
    in the caller's dtype.

    Args:
        emu: a ``skinn_jax.Emulator``.
        interp_dtype: precision of the interpolation.
        inner_half_width, inner_step: the refined central square, arcsec.
    """

    def __init__(self, emu, interp_dtype=jnp.float32, inner_half_width=0.1, inner_step=0.0025):
        super().__init__(
            lambda p: emu.vrms_quadrant(jnp.asarray(p).astype(jnp.float32)),
            emu.vrms_at,
            inner_half_width=inner_half_width,
            inner_step=inner_step,
            interp_dtype=interp_dtype,
        )
        self.emu = emu
        inner_x, inner_y = self._inner_xy
        with jax.ensure_compile_time_eval():
            emu.grid_features()  # cache eagerly (a first call inside a trace would cache a tracer)
            self._inner_features = np.asarray(
                jax.jit(emu.features)(
                    jnp.asarray(inner_x, jnp.float32), jnp.asarray(inner_y, jnp.float32)
                )
            )

    def quadrant_size(self, params) -> int:
        return QUADRANT_SIZE

    def quadrant_corner(self, params, n: int):
        """v_rms on the quadrant's central corner ``[-n:, -n:]`` (the ``n x n`` pixels nearest
        the centre), as ``emu.vrms_quadrant`` computes the whole quadrant."""
        emu = self.emu
        p = jnp.asarray(params).astype(jnp.float32)
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

    def inner_table(self, params, dtype=None):
        """The fine central table of ``vrms_at`` from the cached features, and its origin."""
        p = jnp.asarray(params).astype(jnp.float32)
        u = jnp.asarray(self._inner_features) @ self.emu.style(p)
        radius = np.hypot(*self._inner_xy)
        table = self.emu.velocity_from_output(p, u, radius).astype(dtype or self.interp_dtype)
        return table, -self._n_inner * self.inner_step


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
