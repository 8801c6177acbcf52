"""The Emulator interface (CONVENTIONS §7) and checkpoints, on a freshly initialised network.

These tests check the machinery with the shipped architecture; the accuracy of the shipped
weights is tested in test_shipped_checkpoint.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skinn_jax.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from skinn_jax.emulator import Emulator
from skinn_jax.grid import map_coordinates
from skinn_jax.networks import NetworkConfig, dense_pca, factorise_basis, make_network
from skinn_jax.params import INCLINATION_MIN_DEG, PARAM_NAMES, sample_params

P = np.array([1.2, 2.0, 0.8, 0.75, 0.9, 3.5, 0.1, 70.0])


def _random_emulator(kind="cips", seed=0, basis_rank=0):
    config = NetworkConfig(
        kind=kind,
        n_basis=8,
        mapping_width=32,
        mapping_depth=2,
        generator_width=32,
        embedding_shape=(16, 5, 4),
    )
    net = make_network(config)
    variables = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8)), jnp.zeros(2), jnp.zeros(2))
    # give the output layer a positive offset so that v_rms is non-zero everywhere
    variables = jax.tree_util.tree_map(np.asarray, variables)
    last = variables["params"]["mapping"][f"Dense_{config.mapping_depth}"]
    last["bias"] = last["bias"].copy()
    last["bias"][0] = 1.5
    if kind == "pca":
        rng = np.random.default_rng(seed)
        variables["constants"]["basis"] = rng.uniform(
            0.5, 1.0, variables["constants"]["basis"].shape
        ).astype(np.float32)
    if basis_rank:
        rows, core, cols = factorise_basis(variables["constants"]["basis"], basis_rank)
        config = NetworkConfig(**{**config.to_dict(), "basis_rank": basis_rank})
        variables["constants"] = {"rows": rows, "core": core, "cols": cols}
    return Emulator(config, variables), config, variables


@pytest.fixture(scope="module")
def emu():
    return _random_emulator()[0]


def test_param_names(emu):
    assert emu.param_names == PARAM_NAMES


def test_shapes_and_mirror_symmetry(emu):
    m = np.asarray(emu.vrms_map(P))
    assert m.shape == (551, 551)
    np.testing.assert_array_equal(m, m[::-1, :])
    np.testing.assert_array_equal(m, m[:, ::-1])
    batch = np.asarray(emu.vrms_map(np.stack([P, P])))
    assert batch.shape == (2, 551, 551)
    np.testing.assert_allclose(batch[1], m, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind, rank", [("cips", 0), ("pca", 0), ("pca", 5)])
def test_vrms_map_and_vrms_at_agree_on_grid_points(kind, rank):
    emu = _random_emulator(kind, basis_rank=rank)[0]
    x, y = map_coordinates()
    rng = np.random.default_rng(1)
    i, j = rng.integers(0, 551, 300), rng.integers(0, 551, 300)
    at = np.asarray(emu.vrms_at(P, x[i, j], y[i, j]))
    m = np.asarray(emu.vrms_map(P))
    np.testing.assert_allclose(at, m[i, j], rtol=2e-5, atol=1e-3)


def test_vrms_at_shapes(emu):
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    assert emu.vrms_at(P, x, x.T.reshape(3, 4)).shape == (3, 4)
    assert emu.vrms_at(np.stack([P, P, P]), x, x).shape == (3, 3, 4)
    assert emu.vrms_at(P, 0.3, -0.2).shape == ()


def test_jit_vmap_grad(emu):
    x = jnp.linspace(-1.0, 1.0, 7)
    f = jax.jit(emu.vrms_at)
    np.testing.assert_allclose(f(P, x, x), emu.vrms_at(P, x, x), rtol=1e-5)
    ps = sample_params(np.random.default_rng(2), 4)
    batched = jax.vmap(lambda p: emu.vrms_at(p, x, x))(jnp.asarray(ps, jnp.float32))
    np.testing.assert_allclose(batched, emu.vrms_at(ps, x, x), rtol=1e-5)
    maps = jax.jit(jax.vmap(emu.vrms_map))(jnp.asarray(ps[:2], jnp.float32))
    assert maps.shape == (2, 551, 551)
    g = jax.grad(lambda p: emu.vrms_at(p, x, x).sum())(jnp.asarray(P, jnp.float32))
    assert g.shape == (8,) and np.all(np.isfinite(g))
    gm = jax.grad(lambda p: emu.vrms_map(p)[200:260, 250:300].mean())(jnp.asarray(P, jnp.float32))
    assert np.all(np.isfinite(gm))


def test_gradients_finite_across_the_box_and_match_finite_differences(emu):
    rng = np.random.default_rng(3)
    lo = np.array([0.5, 1.5, 0.6, 0.6, 0.25, 2.0, -0.4, INCLINATION_MIN_DEG])
    hi = np.array([2.0, 2.5, 1.0, 1.0, 1.0, 4.0, 0.4, 90.0])
    corners = [np.where(rng.random(8) < 0.5, lo, hi) for _ in range(4)]
    for c in corners:
        c[4] = c[0] * (0.5 if rng.random() < 0.5 else 1.0)
    points = list(sample_params(rng, 4)) + corners
    x = jnp.asarray([-0.3, 0.0, 1.7, 4.9])
    y = jnp.asarray([0.2, 0.0, -2.2, 5.4])
    f = lambda p: jnp.sum(emu.vrms_at(p, x, y))  # noqa: E731
    grad = jax.jit(jax.grad(f))
    with jax.enable_x64(True):
        emu64 = Emulator(
            emu.config, jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), emu.variables)
        )
        # jitted, so that finite-difference steps just outside a box face are not rejected
        f64 = jax.jit(lambda p: jnp.sum(emu64.vrms_at(p, x.astype(float), y.astype(float))))
        grad64 = jax.jit(jax.grad(f64))
        for p in points:
            g = np.asarray(grad(jnp.asarray(p, jnp.float32)))
            assert np.all(np.isfinite(g)), p
            g64 = np.asarray(grad64(jnp.asarray(p)))
            for k in range(8):
                h = 1e-5 * max(1.0, abs(p[k]))
                e = np.zeros(8)
                e[k] = h
                fd = (float(f64(jnp.asarray(p + e))) - float(f64(jnp.asarray(p - e)))) / (2 * h)
                assert g64[k] == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_eager_calls_validate(emu):
    bad = P.copy()
    bad[6] = 0.5
    with pytest.raises(
        ValueError, match=r"beta_z = 0.5 is outside the allowed range \[-0.4, 0.4\]"
    ):
        emu.vrms_map(bad)
    bad[6] = np.nan
    with pytest.raises(ValueError, match="beta_z = nan is not finite"):
        emu.vrms_at(bad, 0.0, 0.0)
    with pytest.raises(ValueError, match="outside the emulator's field"):
        emu.vrms_at(P, np.array([0.0, 6.0]), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        emu.vrms_map(P[:7])


@pytest.mark.parametrize("kind, rank", [("cips", 0), ("pca", 0), ("pca", 5)])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, kind, rank):
    emu, config, variables = _random_emulator(kind, seed=4, basis_rank=rank)
    path = save_checkpoint(tmp_path / "ck", config, variables, {"note": "test"})
    loaded = Emulator.load(path)
    for a, b in zip(
        jax.tree_util.tree_leaves(variables),
        jax.tree_util.tree_leaves(loaded.variables),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(loaded.vrms_map(P)), np.asarray(emu.vrms_map(P)))
    assert loaded.metadata["note"] == "test"


def test_factorised_basis_is_the_projection_of_the_dense_one():
    rng = np.random.default_rng(3)
    # a basis of exact row/column rank 6 plus a small full-rank part
    # (any N x N grid: 80 keeps the full-rank case cheap)
    a, b = rng.standard_normal((80, 6)), rng.standard_normal((80, 6))
    core = rng.standard_normal((6, 6, 9))
    exact = np.einsum("ia,abk,jb->ijk", a, core, b)
    noisy = exact + 1e-3 * rng.standard_normal(exact.shape)
    for basis, rank, tol in ((exact, 6, 1e-4), (noisy, 6, 1e-2), (noisy, 80, 1e-4)):
        rows, c, cols = factorise_basis(basis, rank)
        np.testing.assert_allclose(rows.T @ rows, np.eye(rank), atol=1e-4)
        back = np.einsum("ia,abk,jb->ijk", rows, c, cols)
        assert np.max(np.abs(back - basis)) < tol * np.max(np.abs(basis))
    with pytest.raises(ValueError, match="rank"):
        factorise_basis(exact, 81)


def test_factorised_emulator_matches_its_dense_twin():
    emu, config, variables = _random_emulator("pca", seed=2, basis_rank=5)
    dense_config, dense_variables = dense_pca(config, variables)
    dense = Emulator(dense_config, dense_variables)
    batch = sample_params(np.random.default_rng(0), 3)
    np.testing.assert_allclose(
        np.asarray(emu.vrms_map(batch)), np.asarray(dense.vrms_map(batch)), rtol=1e-5, atol=1e-3
    )
    # off-grid points: bilinear interpolation of the factorised basis is exact in the factors
    net = make_network(config)
    x, y = np.array([-1.234, 0.517, 3.3]), np.array([0.0071, -2.2, 4.9])
    feats = net.apply(emu.variables, x, y, method="features")
    np.testing.assert_allclose(feats, dense.features(x, y), rtol=1e-4, atol=1e-5)
    grad = jax.grad(lambda p: jnp.sum(emu.vrms_map(p)))(jnp.asarray(P, jnp.float32))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_corrupt_or_mismatched_checkpoints_fail_clearly(tmp_path):
    _, config, variables = _random_emulator(seed=5)
    path = save_checkpoint(tmp_path / "ck", config, variables, {})
    meta = json.loads((path / "metadata.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    meta["training_box"]["gamma"] = [1.0, 3.0]
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="box"):
        load_checkpoint(path)
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a skinn-jax checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Emulator.load("no-such-checkpoint")


def test_output_target_v_is_the_square_root_space_of_u():
    """The same PCA network read as a second moment u or as a velocity v: v_u² = v_v v_scale."""
    emu_u, config, variables = _random_emulator("pca")
    emu_v = Emulator(NetworkConfig(**{**config.to_dict(), "target": "v"}), variables)
    x = np.linspace(-2.0, 2.0, 7)
    v_u = np.asarray(emu_u.vrms_at(P, x, 0.3 * x), np.float64)
    v_v = np.asarray(emu_v.vrms_at(P, x, 0.3 * x), np.float64)
    scale = 200.0 * np.sqrt(P[0])
    np.testing.assert_allclose(v_u**2, v_v * scale, rtol=1e-5)
    assert not np.allclose(v_u, v_v)
    with pytest.raises(ValueError, match="target"):
        NetworkConfig(kind="pca", target="w")
