"""The emulator networks (Flax): a CIPS-style pixel generator and a PCA baseline.

Both networks map the *normalised* eight parameters (``params.normalise_params``, shape (B, 8))
and galaxy-frame pixel coordinates (arcsec) to the normalised second moment

    u(x, y; p) = v_rms(x, y; p)**2 / v_scale(p)**2,   v_scale(p) = 200 km/s * sqrt(theta_E / 1")

(see :func:`velocity_scale`), as a low-rank product

    u(x, y; p) = sum_k  h_k(x, y) * s_k(p)  +  s_0(p)

of per-pixel features ``h`` (the generator G, a function of position only) and a style vector
``s`` (the mapping network M, a function of the parameters only).

CIPS (Anokhin et al. 2020), as SKiNN uses it, computes every pixel independently from a Fourier
positional encoding plus a learned coordinate embedding, through fully connected layers whose
weights are modulated by the style vector, with modulated "ToRGB" skip outputs. Here the
modulation is kept only in the output layer (a modulated 1 x 1 projection without
demodulation, exactly CIPS's ToRGB): the hidden layers are unmodulated, so the per-pixel
features do not depend on the parameters. That is what makes a full map a matrix product
(features on the fixed grid are computed once) and the network fast on a CPU, and it is exact
network output at any coordinates (the coordinate embedding is a learned grid read by bilinear
interpolation, continuous in position). Noise injection is left out: maps are deterministic.

Physics built in (docs/architecture.md):

* quadrant symmetry: features depend on ``x**2`` and ``y**2`` only (CONVENTIONS §5);
* the sharp core (r_c = 0.08"): radius is warped as ``t = log(1 + r**2/r_c**2) / log(1 +
  r_max**2/r_c**2)``, so a quarter of the feature resolution sits inside 0.3";
* zero-valued regions: the network predicts the second moment, which crosses zero smoothly,
  and ``v_rms = v_scale * sqrt(max(u, 0))`` (paper Sec. 4.1 sets negative output to zero).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp

from .grid import HALF_WIDTH_ARCSEC, QUADRANT_SIZE
from .profiles import R_CORE_ARCSEC

R_MAX_ARCSEC = float(HALF_WIDTH_ARCSEC * 2**0.5)
"""Largest radius in the map (its corner), arcsec."""
VELOCITY_SCALE_KM_S = 200.0


def velocity_scale(params):
    """Physical velocity scale ``200 km/s * sqrt(theta_E / arcsec)``, shape ``params.shape[:-1]``.

    For a power law ``v**2 ~ G M(<r) / r`` is ~ ``theta_E`` at ``r ~ theta_E``; dividing it out
    leaves the network an O(1) target.
    """
    return VELOCITY_SCALE_KM_S * jnp.sqrt(params[..., 0])


CUSP_SOFTNESS = 0.05
"""Width in gamma of the smooth switch-on of :func:`cusp_exponent` at gamma = 2."""
CUSP_MIN_RADIUS_ARCSEC = 1e-4
"""Radius at which the map's centre pixel is evaluated (JAM is singular exactly at 0)."""


def cusp_exponent(gamma):
    """``max(gamma - 2, 0)``, smoothed over :data:`CUSP_SOFTNESS` (a softplus)."""
    return CUSP_SOFTNESS * jnp.logaddexp(0.0, (gamma - 2.0) / CUSP_SOFTNESS)


def cusp_weight(params, radius):
    """``(max(R, 1e-4") / theta_E)**cusp_exponent(gamma)``: makes the central cusp bounded.

    With a singular mass (``r_core = 0``) and ``gamma > 2``, ``v_rms**2 ~ R**(2 - gamma)``
    diverges at the centre; ``w v_rms**2`` stays bounded (and goes to 0 with a core), so a
    real-lens network emulates ``w u`` and the emulator divides by ``w``.

    Args:
        params: parameters ``(..., P)`` (uses ``theta_E`` and ``gamma``).
        radius: galaxy-frame radius ``sqrt(x**2 + y**2)``, arcsec, broadcastable with
            ``params.shape[:-1] + (n,)`` after the caller's reshape.
    """
    theta_e = params[..., 0:1]
    exponent = cusp_exponent(params[..., 1:2])
    return (jnp.maximum(radius, CUSP_MIN_RADIUS_ARCSEC) / theta_e) ** exponent


def safe_sqrt_positive(u):
    """``sqrt(max(u, 0))`` with a finite (zero) gradient where ``u <= 0``."""
    positive = u > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, u, 1.0)), 0.0)


TARGETS = ("u", "v")
"""Network output spaces (:attr:`NetworkConfig.target`)."""


def relative_velocity(out, target: str = "u"):
    """``v_rms / v_scale`` from the network output ``out`` (any shape) in ``target`` space."""
    if target == "u":
        return safe_sqrt_positive(out)
    return jnp.maximum(out, 0.0)


def normalised_target(relative_vrms, target: str = "u"):
    """The training target in ``target`` space from ``v_rms / v_scale`` (inverse of
    :func:`relative_velocity` where ``v_rms > 0``).

    A negative input is a *signed* velocity ``sign(v2) sqrt(|v2|) / v_scale`` (the data sets'
    ``vrms + vrms_negative``): its target is the signed second moment ``v2 / v_scale**2`` in
    ``u`` and the signed velocity itself in ``v``, both smooth across the zero boundary.
    """
    return relative_vrms * jnp.abs(relative_vrms) if target == "u" else relative_vrms


def compress_negative(target, negative_scale: float):
    """``e tanh(t / e)`` where ``t < 0`` (``e = negative_scale > 0``), ``t`` elsewhere.

    Applied to signed training targets: the emulator clips negative output to 0 anyway, and deep
    negative regions would otherwise take a share of the loss. Identity for ``t >= 0`` and
    smooth through 0 (slope 1, curvature 0), so the clipped output is unchanged.
    """
    if negative_scale <= 0:
        return target
    return jnp.where(target < 0, negative_scale * jnp.tanh(target / negative_scale), target)


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture hyper-parameters (stored in every checkpoint).

    Attributes:
        kind: ``"cips"`` (learned continuous pixel features) or ``"pca"`` (fixed PCA basis on the
            quadrant grid, bilinear between pixels).
        n_basis: number of per-pixel features / PCA components ``K``.
        mapping_width: width of the mapping network M.
        mapping_depth: number of hidden layers of M.
        generator_width: width of the generator's per-pixel MLP (cips).
        generator_depth: hidden layers of the per-pixel MLP (cips).
        n_radial_frequencies: Fourier frequencies of the warped radius (cips).
        n_angular_harmonics: harmonics ``cos(2 k theta)`` (cips).
        embedding_shape: (radial, angular, channels) of the learned coordinate embedding (cips).
        target: what the network outputs per pixel: ``"u"``, the normalised second moment
            ``(v_rms / v_scale)**2`` (v_rms = v_scale sqrt(max(u, 0))), or ``"v"``, the normalised
            velocity ``v_rms / v_scale`` (v_rms = v_scale max(out, 0)).
        basis_rank: pca only: 0 stores the basis densely, ``(276, 276, K + 1)``; ``r > 0``
            stores it factorised, ``basis[i, j, k] = sum_ab rows[i, a] core[a, b, k] cols[j, b]``
            (a truncated Tucker decomposition, :func:`factorise_basis`), which makes a full map
            two small matrix products instead of one product with the whole basis.
        cusp_weight: the network emulates ``cusp_weight(p, R) * u`` (bounded at a singular
            centre, :func:`cusp_weight`) instead of ``u``; the real-lens networks do.
        n_members: number of mapping networks averaged (an ensemble, :class:`MappingNetwork`);
            1 is a single network.
    """

    kind: str = "cips"
    n_basis: int = 64
    mapping_width: int = 256
    mapping_depth: int = 4
    generator_width: int = 128
    generator_depth: int = 2
    n_radial_frequencies: int = 16
    n_angular_harmonics: int = 8
    embedding_shape: tuple[int, int, int] = (64, 17, 16)
    extra: dict = field(default_factory=dict)
    target: str = "u"
    basis_rank: int = 0
    cusp_weight: bool = False
    n_members: int = 1

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"network target must be one of {TARGETS}, got {self.target!r}")
        if not isinstance(self.n_members, int) or self.n_members < 1:
            raise ValueError(f"n_members must be an integer >= 1, got {self.n_members!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        d = dict(d)
        if "embedding_shape" in d:
            d["embedding_shape"] = tuple(d["embedding_shape"])
        return cls(**d)


def polar_features(x, y):
    """Warped radius ``t`` in [0, ~1] and ``cos(2 theta)``, smooth and even in x and y.

    Args:
        x, y: galaxy-frame coordinates, arcsec, same shape.

    Returns:
        ``(t, cos2theta, angle01)`` each of the input shape; ``angle01 = theta / (pi/2)`` with
        ``theta = arctan2(|y|, |x|)`` for the embedding lookup.
    """
    r2 = x**2 + y**2
    t = jnp.log1p(r2 / R_CORE_ARCSEC**2) / jnp.log1p(R_MAX_ARCSEC**2 / R_CORE_ARCSEC**2)
    cos2 = (x**2 - y**2) / (r2 + 1e-12)
    angle01 = jnp.arctan2(jnp.abs(y), jnp.abs(x) + 1e-12) / (jnp.pi / 2)
    return t, cos2, angle01


def bilinear_lookup(table, u, v):
    """Bilinear interpolation of ``table`` (Nu, Nv, C) at ``u, v`` in [0, 1] (clipped)."""
    nu, nv, _ = table.shape
    fu = jnp.clip(u, 0.0, 1.0) * (nu - 1)
    fv = jnp.clip(v, 0.0, 1.0) * (nv - 1)
    iu = jnp.clip(jnp.floor(fu).astype(jnp.int32), 0, nu - 2)
    iv = jnp.clip(jnp.floor(fv).astype(jnp.int32), 0, nv - 2)
    du = (fu - iu)[..., None]
    dv = (fv - iv)[..., None]
    return (
        table[iu, iv] * (1 - du) * (1 - dv)
        + table[iu + 1, iv] * du * (1 - dv)
        + table[iu, iv + 1] * (1 - du) * dv
        + table[iu + 1, iv + 1] * du * dv
    )


def linear_lookup(table, t):
    """Linear interpolation of the rows of ``table`` (N, C) at ``t`` in [0, 1] (clipped), (..., C).

    The one-dimensional factor of :func:`bilinear_lookup`: bilinear interpolation of a factorised
    table ``sum_ab R[i, a] M[a, b] C[j, b]`` is ``linear(R, u) M linear(C, v)``, exactly.
    """
    n = table.shape[0]
    f = jnp.clip(t, 0.0, 1.0) * (n - 1)
    i = jnp.clip(jnp.floor(f).astype(jnp.int32), 0, n - 2)
    d = (f - i)[..., None]
    return table[i] * (1 - d) + table[i + 1] * d


def factorise_basis(basis, rank: int):
    """Truncated Tucker (higher-order SVD) factors of a quadrant basis ``(N, N, C)``.

    Returns ``(rows (N, rank), core (rank, rank, C), cols (N, rank))`` with orthonormal ``rows``
    and ``cols`` (the leading left singular vectors of the basis unfolded along its row and its
    column axis), so that ``einsum('ia,abk,jb->ijk', rows, core, cols)`` is the projection of
    ``basis`` onto them. NumPy, float64 internally.
    """
    import numpy as np

    b = np.asarray(basis, np.float64)
    n_rows, n_cols, _ = b.shape
    if not 0 < rank <= min(n_rows, n_cols):
        raise ValueError(f"basis rank must be in [1, {min(n_rows, n_cols)}], got {rank}")
    rows = np.linalg.svd(b.reshape(n_rows, -1), full_matrices=False)[0][:, :rank]
    cols = np.linalg.svd(b.transpose(1, 0, 2).reshape(n_cols, -1), full_matrices=False)[0]
    cols = cols[:, :rank]
    core = np.einsum("ia,ijk,jb->abk", rows, b, cols, optimize=True)
    return rows.astype(np.float32), core.astype(np.float32), cols.astype(np.float32)


def _mlp(config: NetworkConfig, h):
    """The mapping MLP's layers, created in the calling module's compact scope."""
    for _ in range(config.mapping_depth):
        h = nn.silu(nn.Dense(config.mapping_width)(h))
    return nn.Dense(config.n_basis + 1)(h)


class _MappingMember(nn.Module):
    config: NetworkConfig

    @nn.compact
    def __call__(self, p_norm):
        return _mlp(self.config, p_norm)


class MappingNetwork(nn.Module):
    """M: normalised parameters (..., P) -> style (..., K + 1).

    With ``config.n_members = m > 1`` it is an ensemble: m MLPs of the same shape (parameters
    with a leading axis m, trained independently on their own batches) whose outputs are
    averaged. Every output is linear in the style, so the average of the styles is the average
    of the members' ``u`` maps.

    Args:
        p_norm: normalised parameters (..., P); with ``per_member=True`` one batch per member,
            (m, ..., P).
        per_member: return each member's style (m, ..., K + 1) instead of their mean (training).
    """

    config: NetworkConfig

    @nn.compact
    def __call__(self, p_norm, per_member: bool = False):
        m = self.config.n_members
        if m == 1:  # with per_member the input already has its member axis (1, ..., P)
            return _mlp(self.config, p_norm)
        members = nn.vmap(
            _MappingMember,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=0,
            out_axes=0,
            axis_size=m,
        )(self.config, name="members")
        if per_member:
            return members(p_norm)
        return members(jnp.broadcast_to(p_norm, (m, *p_norm.shape))).mean(axis=0)


class CIPSGenerator(nn.Module):
    """G: galaxy-frame coordinates (arcsec) -> per-pixel features (..., K)."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, x, y):
        c = self.config
        t, cos2, angle01 = polar_features(x, y)
        k = jnp.arange(1, c.n_radial_frequencies + 1, dtype=t.dtype)
        radial = jnp.concatenate(
            [jnp.sin(jnp.pi * k * t[..., None]), jnp.cos(jnp.pi * k * t[..., None])], axis=-1
        )
        # cos(2 j theta) = T_j(cos 2 theta): Chebyshev recursion, smooth in (x, y)
        harmonics = [jnp.ones_like(cos2), cos2]
        for _ in range(c.n_angular_harmonics - 1):
            harmonics.append(2 * cos2 * harmonics[-1] - harmonics[-2])
        angular = jnp.stack(harmonics[1:], axis=-1)
        # float32 like every Dense kernel (flax's default param_dtype), also under x64: the
        # checkpoint loader restores into this abstract tree and checksums dtypes too
        embedding = self.param(
            "coordinate_embedding", nn.initializers.normal(0.1), c.embedding_shape, jnp.float32
        )
        learned = bilinear_lookup(embedding, t, angle01)
        h = jnp.concatenate([t[..., None], radial, angular, learned], axis=-1)
        for _ in range(c.generator_depth):
            h = nn.silu(nn.Dense(c.generator_width)(h))
        return nn.Dense(c.n_basis)(h)


class _StyledFeatures:
    """What both networks share: ``u = style · features``, the style from the parameters and the
    features from the position (subclasses define ``style`` and ``features``)."""

    def values_at(self, style, x, y):
        """``u`` (B, *S) for style vectors (B, K + 1) at points ``x, y`` of shape S."""
        return jnp.einsum("...k,bk->b...", self.features(x, y), style)

    def __call__(self, p_norm, x, y):
        """u for every map in ``p_norm`` (B, 8) at every point of ``x, y`` (P,) -> (B, P)."""
        return self.style(p_norm) @ self.features(x, y).T


class CIPSNet(_StyledFeatures, nn.Module):
    """The CIPS-style emulator network: ``u = G(x, y) . M(p)[1:] + M(p)[0]``."""

    config: NetworkConfig

    def setup(self):
        self.mapping = MappingNetwork(self.config)
        self.generator = CIPSGenerator(self.config)

    def features(self, x, y):
        """Per-pixel features with a leading constant, (..., K + 1)."""
        h = self.generator(x, y)
        return jnp.concatenate([jnp.ones_like(h[..., :1]), h], axis=-1)

    def style(self, p_norm):
        """Style vector (..., K + 1) for normalised parameters (..., 8)."""
        return self.mapping(p_norm)


class PCANet(_StyledFeatures, nn.Module):
    """The baseline: a fixed PCA basis of the quadrant maps and an MLP for its coefficients.

    The basis (``constants`` collection, the mean map and the components on the 276 x 276
    quadrant) is computed from the training maps; between pixels it is interpolated bilinearly.
    Stored densely (``basis``, (276, 276, K + 1)) or, with ``config.basis_rank = r``, factorised
    (``rows`` (276, r), ``core`` (r, r, K + 1), ``cols`` (276, r), :func:`factorise_basis`).
    """

    config: NetworkConfig

    def setup(self):
        self.mapping = MappingNetwork(self.config)
        n = QUADRANT_SIZE
        k = self.config.n_basis + 1
        r = self.config.basis_rank
        if r:
            self.rows = self.variable("constants", "rows", lambda: jnp.zeros((n, r), jnp.float32))
            self.core = self.variable(
                "constants", "core", lambda: jnp.zeros((r, r, k), jnp.float32)
            )
            self.cols = self.variable("constants", "cols", lambda: jnp.zeros((n, r), jnp.float32))
        else:
            self.basis = self.variable(
                "constants", "basis", lambda: jnp.zeros((n, n, k), jnp.float32)
            )

    @staticmethod
    def _grid_position(x, y):
        # quadrant pixel [i, j] is at ((j - 275) * 0.02, (i - 275) * 0.02); fold onto x, y <= 0
        row = (HALF_WIDTH_ARCSEC - jnp.abs(y)) / HALF_WIDTH_ARCSEC
        col = (HALF_WIDTH_ARCSEC - jnp.abs(x)) / HALF_WIDTH_ARCSEC
        return row, col

    def features(self, x, y):
        row, col = self._grid_position(x, y)
        if not self.config.basis_rank:
            return bilinear_lookup(self.basis.value, row, col)
        a = linear_lookup(self.rows.value, row)
        b = linear_lookup(self.cols.value, col)
        return jnp.einsum("...a,abk,...b->...k", a, self.core.value, b)

    def style(self, p_norm):
        # The mean map's coefficient is exactly 1: predicting it would put a large-norm,
        # non-orthonormal direction into the coefficient loss.
        coeffs = self.mapping(p_norm)[..., 1:]
        return jnp.concatenate([jnp.ones_like(coeffs[..., :1]), coeffs], axis=-1)

    def member_coefficients(self, p_norm):
        """Each ensemble member's coefficients (m, ..., K) for one batch of normalised
        parameters per member (m, ..., P) (the training loss; :class:`MappingNetwork`)."""
        return self.mapping(p_norm, per_member=True)[..., 1:]

    def quadrant(self, style):
        """``u`` on the quadrant grid (..., 276, 276) for style vectors (..., K + 1); factorised
        basis only (a dense basis is the product with the emulator's cached grid features)."""
        if not self.config.basis_rank:
            raise ValueError("PCANet.quadrant needs a factorised basis (basis_rank > 0)")
        m = jnp.einsum("abk,...k->...ab", self.core.value, style)
        return jnp.einsum("ia,...ab,jb->...ij", self.rows.value, m, self.cols.value)


def dense_pca(config: NetworkConfig, variables) -> tuple[NetworkConfig, dict]:
    """The dense twin ``(config, variables)`` of a factorised PCA network: the same coefficient
    network with the basis multiplied out, ``(276, 276, K + 1)``.

    Point lookups (``features``, ``vrms_at``) are fastest on the dense basis (four rows per
    point) and full maps on the factors, so the emulator keeps both; they agree to float32
    rounding.
    """
    c = variables["constants"]
    basis = jnp.einsum("ia,abk,jb->ijk", c["rows"], c["core"], c["cols"])
    dense = NetworkConfig(**{**config.to_dict(), "basis_rank": 0})
    return dense, {"params": variables["params"], "constants": {"basis": basis}}


def make_network(config: NetworkConfig) -> nn.Module:
    """The Flax module for ``config.kind``."""
    if config.kind == "cips":
        return CIPSNet(config)
    if config.kind == "pca":
        return PCANet(config)
    raise ValueError(f"unknown network kind {config.kind!r}; expected 'cips' or 'pca'")


def count_parameters(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
