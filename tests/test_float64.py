"""The emulators load and agree under ``jax_enable_x64`` (float32 weights, float64 arithmetic)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import skinn_jax
from skinn_jax.networks import NetworkConfig, make_network

PAPER_POINT = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.2, 0.15, 70.0])


def test_network_parameters_are_float32_under_x64():
    """The abstract tree the checkpoint loader restores into is float32 in both modes."""
    net = make_network(NetworkConfig(kind="cips", n_basis=4, mapping_width=8, mapping_depth=1,
                                     generator_width=8, generator_depth=1,
                                     embedding_shape=(5, 3, 2)))  # fmt: skip
    with jax.enable_x64(True):
        abstract = jax.eval_shape(
            lambda: net.init(jax.random.PRNGKey(0), np.zeros((1, 8)), np.zeros(1), np.zeros(1))
        )
    dtypes = {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(abstract)}
    assert dtypes == {"float32"}


@pytest.mark.parametrize("name", ["pca64s", "cips"])
def test_load_under_x64_matches_float32(name):
    with jax.enable_x64(False):
        emu32 = skinn_jax.Emulator.load(name)
        map32 = np.asarray(emu32.vrms_map(PAPER_POINT))
    with jax.enable_x64(True):
        emu64 = skinn_jax.Emulator.load(name)
        map64 = emu64.vrms_map(PAPER_POINT)
        assert map64.dtype == np.float64
        at64 = np.asarray(emu64.vrms_at(PAPER_POINT, np.array([0.3, -1.0]), np.array([0.1, 0.4])))
    map64 = np.asarray(map64)
    # the same float32 weights; float64 arithmetic differs only by float32 rounding
    assert np.max(np.abs(map64 - map32)) < 1e-3 * np.max(map32)
    assert np.all(np.isfinite(at64)) and np.all(at64 > 0)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        emu32.variables,
        emu64.variables,
    )
