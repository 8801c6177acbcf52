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
    """The public API under x64: maps (pca64s) or points over the field (cips, whose float64
    full map is slow on a CPU) agree with the float32-loaded emulator to float32 rounding."""
    c = np.linspace(-5.0, 5.0, 41)
    x, y = np.meshgrid(c, c)
    out = {}
    for x64 in (False, True):
        with jax.enable_x64(x64):
            emu = skinn_jax.Emulator.load(name)
            if name == "pca64s":
                values = emu.vrms_map(PAPER_POINT)
            else:
                values = emu.vrms_at(PAPER_POINT, x, y)
            assert values.dtype == (np.float64 if x64 else np.float32)
            out[x64] = (np.asarray(values), emu.variables)
    (v32, w32), (v64, w64) = out[False], out[True]
    assert np.all(np.isfinite(v64)) and np.max(v64) > 100.0
    assert np.max(np.abs(v64 - v32)) < 1e-3 * np.max(v32)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), w32, w64
    )
