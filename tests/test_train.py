"""Training: a real (tiny) run on real JAM maps, killed and resumed exactly; device sharding."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from skinn_jax.training.generate import generate
from skinn_jax.training.jam import JamSettings

from skinn_jax.checkpoint import read_metadata
from skinn_jax.emulator import Emulator

TINY_NET = {
    "kind": "cips",
    "n_basis": 8,
    "mapping_width": 32,
    "mapping_depth": 2,
    "generator_width": 32,
    "generator_depth": 2,
    "embedding_shape": [16, 5, 4],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    coarse = JamSettings(n_radii=12, n_angles=4)
    generate(root / "train", 8, seed=21, workers=2, shard_size=4, settings=coarse, progress=False)
    generate(root / "val", 4, seed=22, workers=2, shard_size=4, settings=coarse, progress=False)
    return root


def _config(data: Path, out: Path, steps=60, batch_maps=4) -> Path:
    cfg = {
        "train_data": str(data / "train"),
        "val_data": str(data / "val"),
        "n_val": 4,
        "network": TINY_NET,
        "steps": steps,
        "batch_maps": batch_maps,
        "batch_pixels": 256,
        "warmup_steps": 5,
        "checkpoint_every": 5,
        "eval_every": 20,
        "out": str(out / "run"),
        "export": str(out / "export"),
    }
    path = out / "config.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def _train_cmd(config: Path, *extra):
    return [sys.executable, "-m", "skinn_jax.cli", "train", "--config", str(config), *extra]


def test_killed_run_resumes_exactly(data, tmp_path):
    ref = _config(data, tmp_path / "ref")
    subprocess.run(_train_cmd(ref), check=True, capture_output=True)
    ref_meta = read_metadata(tmp_path / "ref" / "export")

    cfg = _config(data, tmp_path / "killed")
    proc = subprocess.Popen(
        _train_cmd(cfg),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    orbax_dir = tmp_path / "killed" / "run" / "orbax"
    deadline = time.time() + 180
    while time.time() < deadline:
        steps = (
            [int(p.name) for p in orbax_dir.glob("*") if p.name.isdigit()]
            if (orbax_dir.exists())
            else []
        )
        if steps and max(steps) >= 10:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "export").exists(), "the run should have been killed early"
    subprocess.run(_train_cmd(cfg), check=True, capture_output=True)
    meta = read_metadata(tmp_path / "killed" / "export")
    assert meta["training"]["steps"] == 60
    # same weights, bit for bit, as the uninterrupted run
    assert meta["weights_sha256"] == ref_meta["weights_sha256"]
    emu = Emulator.load(tmp_path / "killed" / "export")
    assert np.all(
        np.isfinite(np.asarray(emu.vrms_map(np.array([1.2, 2.0, 0.8, 0.75, 0.9, 3.5, 0.1, 70.0]))))
    )
    assert (tmp_path / "killed" / "run" / "curve.png").exists()


def test_two_host_devices_shard_the_batch(data, tmp_path):
    cfg = _config(data, tmp_path / "two", steps=10, batch_maps=4)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(_train_cmd(cfg), check=True, capture_output=True, text=True, env=env)
    meta = read_metadata(tmp_path / "two" / "export")
    assert len(meta["training"]["devices"]) == 2
    assert np.isfinite(meta["validation_metrics"]["val_median_abs_E"]), out.stdout
    one = _config(data, tmp_path / "one", steps=10, batch_maps=4)
    subprocess.run(_train_cmd(one), check=True, capture_output=True)
    meta1 = read_metadata(tmp_path / "one" / "export")
    assert meta1["validation_metrics"]["val_median_abs_E"] == pytest.approx(
        meta["validation_metrics"]["val_median_abs_E"], rel=1e-3
    )


def test_batch_not_divisible_by_devices_is_rejected(data, tmp_path):
    cfg = _config(data, tmp_path / "odd", steps=2, batch_maps=3)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(_train_cmd(cfg), capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "divisible by the number of devices" in out.stderr + out.stdout


@pytest.mark.parametrize("target", ["u", "v"])
def test_baseline_trains_exports_and_loads(data, tmp_path, target):
    """A baseline run exports a checkpoint that loads behind the one interface; the ``u`` run is
    an ensemble of three coefficient MLPs (members differ: own init, own batches) whose
    exported map is the members' mean ``u`` map, the ``v`` run a single network."""
    import jax.numpy as jnp
    from skinn_jax.training.baseline import BaselineConfig, train_baseline
    from skinn_jax.training.train import load_maps

    from skinn_jax.networks import make_network, relative_velocity, velocity_scale

    members = 3 if target == "u" else 1
    cfg = BaselineConfig(
        train_data=str(data / "train"), val_data=str(data / "val"), n_val=4, n_components=4,
        n_pca_maps=8, steps=200, batch=8, mapping_width=32, mapping_depth=2, target=target,
        signed=target == "u", n_members=members, export=str(tmp_path / "pca"),
    )  # fmt: skip
    result = train_baseline(cfg, progress=False)
    emu = Emulator.load(tmp_path / "pca")
    assert emu.config.target == target and emu.config.n_basis == 4
    assert emu.config.n_members == members
    assert read_metadata(tmp_path / "pca")["validation_metrics"] == {
        k: result[k] for k in ("val_median_abs_E", "val_p95_abs_E", "val_median_E")
    }
    # 4 components from 8 JAM maps: a crude emulator, but a v_rms map of the right scale
    assert 0.0 < result["val_median_abs_E"] < 30.0
    if target == "v":
        with pytest.raises(ValueError, match="signed maps need target 'u'"):
            train_baseline(replace(cfg, signed=True), progress=False)
        with pytest.raises(ValueError, match="n_members must be an integer >= 1"):
            replace(emu.config, n_members=0)
        return
    kernel = emu.variables["params"]["mapping"]["members"]["Dense_0"]["kernel"]
    assert kernel.shape[0] == members and not np.allclose(kernel[0], kernel[1])
    params, _, _ = load_maps(data / "val", 2)
    net = make_network(emu.config)
    p_norm = jnp.asarray(emu.space.normalise(params.astype(np.float32)))
    coeffs = net.apply(
        emu.variables,
        jnp.broadcast_to(p_norm, (members, *p_norm.shape)),
        method="member_coefficients",
    )
    x = jnp.array([0.3, 1.1, 2.0])
    y = jnp.array([0.0, 0.4, -1.5])
    feats = net.apply(emu.variables, x, y, method="features")
    u_members = jnp.einsum("mbk,pk->mbp", coeffs, feats[:, 1:]) + feats[:, 0]
    expected = velocity_scale(params)[:, None] * relative_velocity(u_members.mean(axis=0))
    got = np.stack([np.asarray(emu.vrms_at(p, x, y)) for p in params])
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-3)


def test_signed_maps_are_the_truth_plus_its_negative_part(data, tmp_path):
    import shutil

    from skinn_jax.training.generate import DataSet
    from skinn_jax.training.train import load_maps

    params, clipped, n_zero = load_maps(data / "train")
    _, signed, _ = load_maps(data / "train", signed=True)
    negative = DataSet(data / "train").load(("vrms_negative",))["vrms_negative"]
    np.testing.assert_array_equal(signed, clipped + negative.reshape(len(params), -1))
    assert np.all(negative <= 0) and np.all(clipped[negative.reshape(len(params), -1) < 0] == 0)
    assert np.all(n_zero >= (negative < 0).reshape(len(params), -1).sum(axis=1))
    # a format-1 data set has no signed part: refused with a clear error
    old = tmp_path / "old"
    shutil.copytree(data / "train", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format version 1"):
        load_maps(old, signed=True)


def test_cips_trains_on_the_real_lens_space_with_the_cusp_weight(tmp_path):
    """A CIPS run on real-lens JAM maps exports a 9-parameter checkpoint whose emulator agrees
    with the trainer's own prediction (same cusp weight, same internal coordinates)."""
    import jax.numpy as jnp
    from skinn_jax.training.train import TrainConfig, load_maps, make_network, predict_quadrants
    from skinn_jax.training.train import train as run_train

    from skinn_jax.networks import NetworkConfig
    from skinn_jax.params import REAL_LENS_SPACE

    coarse = JamSettings(n_radii=12, n_angles=4)
    for name, seed, n in (("train", 31, 4), ("val", 32, 2)):
        generate(tmp_path / name, n, seed=seed, workers=1, shard_size=n, settings=coarse,
                 progress=False, space=REAL_LENS_SPACE)  # fmt: skip
    net_cfg = NetworkConfig.from_dict({**TINY_NET, "cusp_weight": True})
    cfg = TrainConfig(
        train_data=str(tmp_path / "train"),
        val_data=str(tmp_path / "val"),
        n_val=2,
        network=net_cfg,
        steps=10,
        batch_maps=2,
        batch_pixels=128,
        warmup_steps=2,
        checkpoint_every=5,
        eval_every=10,
        negative_scale=0.05,
        out=str(tmp_path / "run"),
        export=str(tmp_path / "export"),
    )
    result = run_train(cfg, progress=False)
    assert result["finished"] and np.isfinite(result["val_median_abs_E"])
    assert read_metadata(tmp_path / "export")["param_space"] == REAL_LENS_SPACE.name
    emu = Emulator.load(tmp_path / "export")
    assert emu.param_names == REAL_LENS_SPACE.names and emu.config.cusp_weight
    params, _, _ = load_maps(tmp_path / "val")
    ours = predict_quadrants(
        make_network(net_cfg), emu.variables, params, space=REAL_LENS_SPACE
    ).reshape(-1, 276, 276)
    theirs = np.asarray(emu.vrms_quadrant(jnp.asarray(params, jnp.float32)))
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=1e-2)  # float32 sqrt near 0
