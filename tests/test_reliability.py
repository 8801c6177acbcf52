"""The reliability suite (issue 21): hostile and careless input, one test per reproducer.

Categories: silent wrong results (checkpoint resolution, non-finite weights, checksum coverage,
bad input under jit, data containers), lost or overwritten work (train export, fit-mock results,
generate's lock, temporaries, workers and shard size), and late or raw failures (every CLI
argument and config checked before work, one line per error, exit code 2, no traceback).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skinn_jax.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    weights_sha256,
)
from skinn_jax.emulator import Emulator, checkpoint_dir, resolve_checkpoint
from skinn_jax.networks import NetworkConfig, make_network
from skinn_jax.params import PAPER_SPACE, REAL_LENS_SPACE

P = np.array(PAPER_SPACE.typical)
TINY = NetworkConfig(
    kind="cips",
    n_basis=8,
    mapping_width=32,
    mapping_depth=2,
    generator_width=32,
    embedding_shape=(16, 5, 4),
)


def _tiny_variables(seed: int = 0) -> dict:
    net = make_network(TINY)
    variables = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8)), jnp.zeros(2), jnp.zeros(2))
    variables = jax.tree_util.tree_map(np.array, variables)
    variables["params"]["mapping"][f"Dense_{TINY.mapping_depth}"]["bias"][0] = 1.5
    return variables


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny"
    return save_checkpoint(path, TINY, _tiny_variables(), {"note": "tiny"})


@pytest.fixture(scope="module")
def tiny_emu(tiny_checkpoint) -> Emulator:
    return Emulator.load(tiny_checkpoint)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_metadata(path: Path, **changes) -> None:
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(changes)
    (path / "metadata.json").write_text(json.dumps(meta))


# ----------------------------------------------------------------------------------------------
# 1. a bare name is a shipped checkpoint, never a folder of the working directory


def test_bare_name_never_loads_a_folder_of_the_working_directory(
    tiny_checkpoint, tmp_path, monkeypatch
):
    default = (checkpoint_dir() / "DEFAULT").read_text().strip()
    _copy(tiny_checkpoint, tmp_path / default)
    _copy(tiny_checkpoint, tmp_path / "cips")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(None) == checkpoint_dir() / default
    assert resolve_checkpoint("default") == checkpoint_dir() / default
    assert resolve_checkpoint("cips") == checkpoint_dir() / "cips"
    shipped = Emulator.load()
    expected = json.loads((checkpoint_dir() / default / "metadata.json").read_text())
    assert shipped.metadata.get("note") is None
    assert shipped.config.n_basis == expected["network"]["n_basis"]
    # a path is given as a path
    assert Emulator.load(f"./{default}").metadata["note"] == "tiny"
    assert Emulator.load(Path("cips")).metadata["note"] == "tiny"
    assert resolve_checkpoint(str(tmp_path / "cips")) == tmp_path / "cips"


def test_unknown_name_lists_shipped_and_hints_at_the_path(tiny_checkpoint, tmp_path, monkeypatch):
    _copy(tiny_checkpoint, tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"shipped checkpoint.*'\./mine'"):
        resolve_checkpoint("mine")
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        resolve_checkpoint("./does-not-exist")
    with pytest.raises(FileNotFoundError, match="shipped"):
        resolve_checkpoint(".")


# ----------------------------------------------------------------------------------------------
# 2. non-finite weights are neither exported nor loaded; training configs are checked at load


def test_non_finite_weights_are_not_exported(tmp_path):
    variables = _tiny_variables()
    variables["params"]["mapping"]["Dense_0"]["kernel"][0, :3] = np.nan
    with pytest.raises(ValueError, match=r"refusing to export .*3 non-finite weights"):
        save_checkpoint(tmp_path / "nan", TINY, variables, {})
    assert not (tmp_path / "nan").exists() and not (tmp_path / "nan.tmp").exists()


def test_non_finite_weights_are_not_loaded(tiny_checkpoint, tmp_path):
    import orbax.checkpoint as ocp

    from skinn_jax.checkpoint import seal_checkpoint

    path = _copy(tiny_checkpoint, tmp_path / "nan")
    _, variables, _ = load_checkpoint(path)
    variables["params"]["mapping"]["Dense_1"]["bias"][:] = np.nan
    shutil.rmtree(path / "weights")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((path / "weights").resolve(), variables)
    checkpointer.wait_until_finished()
    meta = json.loads((path / "metadata.json").read_text())
    meta["weights_sha256"] = weights_sha256(variables)
    (path / "metadata.json").write_text(json.dumps(meta))
    seal_checkpoint(path)  # checksums consistent: only the values are wrong
    with pytest.raises(CheckpointError, match=r"32 non-finite weights .*Dense_1"):
        Emulator.load(path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("learning_rate", math.nan, "learning_rate = nan: must be a finite number > 0"),
        ("learning_rate", 0.0, "learning_rate = 0: must be a finite number > 0"),
        ("batch_maps", 0, "batch_maps = 0: must be an integer >= 1"),
        ("batch_pixels", 0, "batch_pixels = 0: must be an integer >= 1"),
        ("n_val", 0, "n_val = 0: must be an integer >= 1"),
        ("checkpoint_every", 0, "checkpoint_every = 0: must be an integer >= 1"),
        ("eval_every", 0, "eval_every = 0: must be an integer >= 1"),
        ("steps", 2.5, "steps = 2.5: must be an integer"),
        ("ema_decay", 1.0, "ema_decay = 1: must be a finite number >= 0 and < 1"),
    ],
)
def test_training_config_is_checked_at_load(tmp_path, key, value, message):
    from skinn_jax.training.train import TrainConfig

    path = tmp_path / "config.json"
    path.write_text(json.dumps({key: value}))  # NaN is written as the JSON extension NaN
    with pytest.raises(ValueError, match=message) as err:
        TrainConfig.from_file(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------------
# 3. the checksum covers everything that changes the output


@pytest.mark.parametrize(
    "field, value",
    [
        ("network", {**TINY.to_dict(), "target": "v"}),
        ("network", {**TINY.to_dict(), "generator_depth": 3}),
        ("param_space", "real-lens"),
        ("weights_sha256", "0" * 64),
    ],
)
def test_edited_metadata_fails_its_checksum(tiny_checkpoint, tmp_path, field, value):
    path = _copy(tiny_checkpoint, tmp_path / "edited")
    _edit_metadata(path, **{field: value})
    with pytest.raises(CheckpointError):
        Emulator.load(path)


def test_network_edit_u_to_v_names_the_config_checksum(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint, tmp_path / "edited")
    _edit_metadata(path, network={**TINY.to_dict(), "target": "v"})
    with pytest.raises(CheckpointError, match="does not match its config_sha256"):
        read_metadata(path)


def test_missing_config_checksum_is_refused_until_sealed(tiny_checkpoint, tmp_path):
    from skinn_jax.checkpoint import seal_checkpoint

    path = _copy(tiny_checkpoint, tmp_path / "old")
    meta = json.loads((path / "metadata.json").read_text())
    del meta["config_sha256"]
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="no config_sha256.*seal_checkpoint"):
        Emulator.load(path)
    seal_checkpoint(path)
    assert Emulator.load(path).metadata["note"] == "tiny"


def test_info_cannot_override_the_checkpoints_own_fields(tmp_path):
    info = {"weights_sha256": "0" * 64, "config_sha256": "1" * 64, "format_version": 7}
    path = save_checkpoint(tmp_path / "ck", TINY, _tiny_variables(), info)
    meta = read_metadata(path)
    assert meta["format_version"] == 1 and meta["weights_sha256"] != "0" * 64


@pytest.mark.parametrize("name", ["cips", "pca64", "pca64s", "real-lens"])
def test_shipped_checkpoints_carry_a_valid_config_checksum(name):
    meta = read_metadata(checkpoint_dir() / name)
    assert len(meta["config_sha256"]) == 64


def test_format_version_as_a_string_is_explained(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint, tmp_path / "string")
    _edit_metadata(path, format_version="1")
    with pytest.raises(CheckpointError, match=r"format_version '1' \(str\).*1 \(an integer\)"):
        read_metadata(path)


# ----------------------------------------------------------------------------------------------
# 4. under jit, points outside the field and parameters outside the box are NaN


@pytest.mark.parametrize("x", [5.6, 6.0, 8.0, 20.0, 100.0, -7.0, math.nan, math.inf])
def test_jit_vrms_at_outside_the_field_is_nan(tiny_emu, x):
    f = jax.jit(tiny_emu.vrms_at)
    xs = jnp.asarray([0.5, x, 0.5, 5.5])
    ys = jnp.asarray([0.0, 0.0, x, -5.5])
    v = np.asarray(f(jnp.asarray(P), xs, ys))
    assert np.all(np.isfinite(v[[0, 3]])) and v[0] > 0
    assert np.all(np.isnan(v[1:3]))
    np.testing.assert_allclose(v[[0, 3]], tiny_emu.vrms_at(P, [0.5, 5.5], [0.0, -5.5]), rtol=1e-5)


@pytest.mark.parametrize("index, value", [(0, 5.0), (1, 3.0), (6, -0.9), (7, 20.0), (0, math.nan)])
def test_jit_outside_the_box_is_nan(tiny_emu, index, value):
    p = P.copy()
    p[index] = value
    v = jax.jit(tiny_emu.vrms_at)(jnp.asarray(p), jnp.asarray([0.0, 1.0]), jnp.zeros(2))
    assert np.all(np.isnan(np.asarray(v)))
    m = np.asarray(jax.jit(tiny_emu.vrms_map)(jnp.asarray(p)))
    assert m.shape == (551, 551) and np.all(np.isnan(m))
    batch = np.asarray(jax.jit(tiny_emu.vrms_map)(jnp.asarray(np.stack([P, p]))))
    assert np.all(np.isfinite(batch[0])) and np.all(np.isnan(batch[1]))


def test_jit_gradients_stay_finite_inside_and_next_to_bad_points(tiny_emu):
    x = jnp.asarray([0.3, 2.0, 9.0, jnp.nan])

    def total(p, x):
        return jnp.nansum(tiny_emu.vrms_at(p, x, 0.5 * x))

    g = jax.jit(jax.grad(total))(jnp.asarray(P), x)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
    p_out = P.copy()
    p_out[0] = 5.0
    g_out = jax.jit(jax.grad(total))(jnp.asarray(p_out), x)
    assert np.all(np.isfinite(np.asarray(g_out)))


@pytest.mark.parametrize("space", [PAPER_SPACE, REAL_LENS_SPACE])
def test_traceable_box_mask_agrees_with_in_box(space):
    rng = np.random.default_rng(5)
    inside = space.sample(rng, 64)
    low = np.array([space.box[n][0] for n in space.names])
    high = np.array([space.box[n][1] for n in space.names])
    outside = inside.copy()
    k = rng.integers(0, space.n_params, len(outside))
    rows = np.arange(len(outside))
    outside[rows, k] = np.where(rng.random(len(outside)) < 0.5, low[k], high[k])
    outside[rows, k] += np.where(outside[rows, k] == low[k], -0.1, 0.1) * (high[k] - low[k])
    for p in (inside, outside):
        mask = np.asarray(jax.jit(space.in_box_mask)(jnp.asarray(p)))
        np.testing.assert_array_equal(mask, space.in_box(p))
    assert np.all(space.in_box(inside)) and not np.any(space.in_box(outside))


# ----------------------------------------------------------------------------------------------
# 5. data containers refuse impossible data


def _kinematic_data(**overrides):
    from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid

    kwargs = dict(
        grid=SpaxelGrid.regular((4, 4), 0.05),
        bin_map=np.arange(16).reshape(4, 4) // 4,
        vrms=np.full(4, 200.0),
        covariance=np.eye(4) * 100.0,
        psf=PSF.gaussian(0.1),
    )
    kwargs.update(overrides)
    return KinematicData(**kwargs)


def test_negative_vrms_is_refused():
    assert _kinematic_data().n_bins == 4
    with pytest.raises(ValueError, match=r"vrms has negative values in bins \[2\]"):
        _kinematic_data(vrms=np.array([200.0, 210.0, -5.0, 190.0]))


@pytest.mark.parametrize("sigma", [[10.0, -10.0, 10.0, 10.0], [10.0, 0.0, 10.0, 10.0]])
def test_non_positive_sigma_in_diagonal_is_refused(sigma):
    from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid

    grid, bins = SpaxelGrid.regular((4, 4), 0.05), np.arange(16).reshape(4, 4) // 4
    with pytest.raises(ValueError, match=r"sigma must be finite and > 0 .*bins \[1\]"):
        KinematicData.diagonal(grid, bins, np.full(4, 200.0), np.array(sigma), PSF.none())


def test_boolean_bin_map_is_refused():
    with pytest.raises(ValueError, match="bin_map is boolean"):
        _kinematic_data(bin_map=np.ones((4, 4), bool), vrms=np.array([200.0, 1.0]),
                        covariance=np.eye(2))  # fmt: skip


def test_psf_kernel_with_negative_entries_is_refused():
    from skinn_jax.ifu import PSF

    kernel = np.array([[0.0, -0.1, 0.0], [0.3, 0.5, 0.3], [0.0, 0.0, 0.0]])
    assert kernel.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"1 negative entries .*\[\[0, 1\]\]"):
        PSF.pixelated(kernel, 1)


@pytest.mark.parametrize("fwhm", [1e6, 12.0, math.inf])
def test_huge_psf_is_refused_before_allocating(fwhm):
    from skinn_jax.ifu import PSF

    with pytest.raises(ValueError, match=r"PSF FWHM = .* must be a finite number in \[0, 11"):
        PSF.gaussian(fwhm)


def test_gaussian_kernel_size_is_bounded():
    from skinn_jax.ifu import gaussian_kernel

    assert gaussian_kernel(0.5, np.diag([0.05, 0.05]), 4).shape == (171, 171)
    with pytest.raises(ValueError, match="limit 2001 x 2001"):
        gaussian_kernel(10.0, np.diag([0.05, 0.05]), 10)


def test_time_delay_distance_below_d_d_is_refused():
    from skinn_jax.forward import SkyParams, build_forward_model, check_sky_params
    from skinn_jax.ifu import PSF, SpaxelGrid

    grid = SpaxelGrid.regular((21, 21), 0.1)
    model = build_forward_model(grid, np.zeros(grid.shape, int), PSF.gaussian(0.1))
    check_sky_params(model, SkyParams(0.3, 0.0, 0.0, 2886.5, 1215.7))
    with pytest.raises(ValueError, match=r"D_dt = 1215.7 Mpc < D_d = 2886.5 Mpc"):
        check_sky_params(model, SkyParams(0.3, 0.0, 0.0, 1215.7, 2886.5))


def test_the_likelihood_refuses_d_dt_below_d_d_unless_the_model_allows_it():
    from skinn_jax.forward import SkyParams
    from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid
    from skinn_jax.likelihood import KinematicLikelihood

    grid = SpaxelGrid.regular((11, 11), 0.1)
    bins = np.where(np.arange(121).reshape(11, 11) % 2 == 0, 0, 1)
    data = KinematicData.diagonal(grid, bins, np.array([200.0, 210.0]), np.full(2, 10.0),
                                  PSF.gaussian(0.1))  # fmt: skip

    def field(p, x, y):
        return 200.0 + 0.0 * x

    swapped = SkyParams(0.3, 0.0, 0.0, 1215.7, 2886.5)
    with pytest.raises(ValueError, match="D_dt = 1215.7 Mpc < D_d"):
        KinematicLikelihood(data, field, supersampling=1)(P, swapped)
    prior_draw = KinematicLikelihood(data, field, supersampling=1, physical_distances=False)
    assert np.isfinite(float(prior_draw(P, swapped)))


# ----------------------------------------------------------------------------------------------
# 6. train: export only a finished run (or when asked), never over a checkpoint without --overwrite

COARSE_FLAGS = ["--n-radii", "12", "--n-angles", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from skinn_jax.training.generate import generate
    from skinn_jax.training.jam import JamSettings

    root = tmp_path_factory.mktemp("data")
    coarse = JamSettings(n_radii=12, n_angles=4)
    generate(root / "train", 4, seed=21, workers=1, shard_size=2, settings=coarse, progress=False)
    generate(root / "val", 2, seed=22, workers=1, shard_size=2, settings=coarse, progress=False)
    return root


def _train_config(data: Path, out: Path, export: Path, steps: int = 4):
    from skinn_jax.training.train import TrainConfig

    return TrainConfig(
        train_data=str(data / "train"), val_data=str(data / "val"), n_val=2, network=TINY,
        steps=steps, batch_maps=2, batch_pixels=64, warmup_steps=1, checkpoint_every=2,
        eval_every=2, out=str(out), export=str(export),
    )  # fmt: skip


def test_train_never_overwrites_a_checkpoint_and_exports_only_when_finished(
    data, tiny_checkpoint, tmp_path
):
    from skinn_jax.training.train import train

    export = _copy(tiny_checkpoint, tmp_path / "cips")  # e.g. a shipped checkpoint
    before = (export / "metadata.json").read_text()
    cfg = _train_config(data, tmp_path / "run", export)
    partial = train(cfg, progress=False, max_steps_this_run=2)
    assert partial["finished"] is False and partial["exported"] is None
    assert (export / "metadata.json").read_text() == before
    with pytest.raises(ValueError, match="already exists.*--overwrite"):
        train(cfg, progress=False)
    assert (export / "metadata.json").read_text() == before
    done = train(cfg, progress=False, overwrite=True)
    assert done["finished"] is True and done["exported"] == str(export)
    meta = read_metadata(export)
    assert meta["training"]["finished"] is True and meta["training"]["steps"] == 4


def test_train_exports_an_unfinished_run_only_when_asked(data, tmp_path):
    from skinn_jax.training.train import train

    cfg = _train_config(data, tmp_path / "run", tmp_path / "export", steps=6)
    train(cfg, progress=False, max_steps_this_run=2)
    assert not (tmp_path / "export").exists()
    result = train(cfg, progress=False, max_steps_this_run=1, export_unfinished=True)
    assert result["exported"] and read_metadata(tmp_path / "export")["training"]["steps"] == 3


def test_a_diverging_run_stops_without_checkpointing_or_exporting(data, tmp_path):
    from dataclasses import replace

    from skinn_jax.training.train import train

    cfg = replace(_train_config(data, tmp_path / "run", tmp_path / "export"), learning_rate=1e30)
    with pytest.raises(ValueError, match=r"training diverged at step (\d+)") as err:
        train(cfg, progress=False)
    diverged = int(err.value.args[0].split("step ")[1].split(":")[0])
    assert not (tmp_path / "export").exists()
    orbax = tmp_path / "run" / "orbax"
    saved = [int(p.name) for p in orbax.iterdir() if p.name.isdigit()] if orbax.exists() else []
    assert all(step < diverged for step in saved), (saved, diverged)


def test_train_cli_refuses_an_existing_export_before_any_work(tiny_checkpoint, tmp_path, capsys):
    export = _copy(tiny_checkpoint, tmp_path / "cips")
    config = tmp_path / "config.json"
    run = tmp_path / "run"
    config.write_text(json.dumps({"out": str(run), "export": str(export), "train_data": "none"}))
    rc, err = _cli(capsys, "train", "--config", str(config))
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert not run.exists()


# ----------------------------------------------------------------------------------------------
# 7. fit-mock never deletes a finished fit made with other inputs


def _finished_fit(out: Path, fingerprint: str) -> None:
    from skinn_jax.inference.fit import FINAL_FILES, STATE_FILE

    out.mkdir(parents=True)
    for name in FINAL_FILES:
        (out / name).write_text("result")
    (out / STATE_FILE).write_text(json.dumps({"fingerprint": fingerprint, "phase": "complete"}))


def test_fit_with_other_inputs_keeps_the_finished_result(tmp_path):
    from skinn_jax.inference.fit import FINAL_FILES, OutputExistsError, prepare_out_dir

    out = tmp_path / "fit"
    _finished_fit(out, "aaa")
    with pytest.raises(OutputExistsError, match=r"finished fit with other inputs.*--out.*--force"):
        prepare_out_dir(out, "bbb", force=False, quiet=True)
    assert all((out / name).read_text() == "result" for name in FINAL_FILES)
    assert prepare_out_dir(out, "aaa", force=False, quiet=True)["phase"] == "complete"
    assert prepare_out_dir(out, "bbb", force=True, quiet=True) == {}
    assert not any((out / name).exists() for name in FINAL_FILES)


def test_fit_keeps_an_interrupted_fit_with_other_inputs(tmp_path):
    from skinn_jax.inference.fit import STATE_FILE, OutputExistsError, prepare_out_dir

    out = tmp_path / "fit"
    out.mkdir()
    (out / "map.npz").write_bytes(b"x")
    (out / STATE_FILE).write_text(json.dumps({"fingerprint": "aaa", "phase": "map"}))
    with pytest.raises(OutputExistsError, match="interrupted fit"):
        prepare_out_dir(out, "bbb", force=False, quiet=True)
    assert (out / "map.npz").exists()


# ----------------------------------------------------------------------------------------------
# 8-11. generate: a lock, only its own temporaries, workers die with it, shard size from --n


def _generate(out: Path, n: int = 2, seed: int = 11, **kw):
    from skinn_jax.training.generate import generate
    from skinn_jax.training.jam import JamSettings

    kw.setdefault("workers", 1)
    settings = JamSettings(n_radii=12, n_angles=4)
    return generate(out, n, seed=seed, settings=settings, progress=False, **kw)


def test_generate_refuses_a_directory_another_run_holds(tmp_path):
    from skinn_jax.training.generate import directory_lock

    out = tmp_path / "ds"
    out.mkdir()
    with directory_lock(out):
        with pytest.raises(ValueError, match=r"being written by another skinn-jax generate"):
            _generate(out)
    assert not (out / "manifest.json").exists()
    assert _generate(out).n_maps == 2  # released


def test_two_concurrent_generate_runs_into_one_directory(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ds"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skinn_jax.cli",
                "generate",
                "--n",
                "2",
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--workers",
                "1",
                *COARSE_FLAGS,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "being written by another" in loser or "generated with" in loser
    winner_seed = 1 if results[0][0] == 0 else 2
    from skinn_jax.training.generate import DataSet, map_params

    ds = DataSet(out)
    assert ds.manifest["seed"] == winner_seed
    np.testing.assert_array_equal(ds.load(("params",))["params"][1], map_params(winner_seed, 1))


def test_generate_deletes_only_its_own_temporaries(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.tmp").write_text("mine")
    (out / "shard_00000.npz.tmp").write_bytes(b"half-written")
    (out / "manifest.json.tmp").write_text("{")
    _generate(out, shard_size=2)
    assert (out / "notes.tmp").read_text() == "mine"
    assert not (out / "manifest.json.tmp").exists()
    assert not (out / "shard_00000.npz.tmp").exists() and (out / "shard_00000.npz").exists()


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_generate_workers_die_with_the_main_process(tmp_path, sig):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "skinn_jax.cli", "generate", "--n", "400", "--seed", "3",
           "--out", str(out), "--workers", "2", "--shard-size", "200"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    main = psutil.Process(proc.pid)
    deadline = time.time() + 120
    children = []
    while time.time() < deadline and len(children) < 3:  # 2 workers + the resource tracker
        children = main.children(recursive=True)
        time.sleep(0.2)
    assert len(children) >= 2, children
    time.sleep(1.0)  # the workers are computing
    os.kill(proc.pid, getattr(signal, sig))
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=20)
    for child in alive:  # clean up before failing
        child.kill()
    assert not alive, [c.cmdline() for c in alive]


def test_default_shard_size_keeps_a_kill_cheap(tmp_path):
    from skinn_jax.training.generate import default_shard_size

    assert default_shard_size(40, 1) == 10 and default_shard_size(40, 2) == 5
    assert default_shard_size(3, 8) == 1 and default_shard_size(100_000, 2) == 50
    out = tmp_path / "ds"
    ds = _generate(out, n=4, workers=1)
    assert ds.manifest["shard_size"] == 1 and ds.complete_shards == [0, 1, 2, 3]
    # resuming with other workers keeps the data set's shard size
    assert _generate(out, n=5, workers=2).manifest["shard_size"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (json.dumps({"name": "somebody else's"}), "not a skinn-jax data-set manifest"),
        ("{broken", "is corrupt"),
    ],
)
def test_foreign_or_corrupt_manifest_is_named(tmp_path, content, message):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        _generate(out)
    assert str(out / "manifest.json") in str(err.value)
    assert (out / "manifest.json").read_text() == content


# ----------------------------------------------------------------------------------------------
# late or raw failures: every argument checked before work, one line, exit code 2


def _cli(capsys, *argv) -> tuple[int, str]:
    from skinn_jax.cli import main

    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fit-mock", "--chunks", "0"], "argument --chunks: 0: must be an integer >= 1"),
        (["fit-mock", "--chains", "0"], "argument --chains: 0: must be an integer >= 1"),
        (["fit-mock", "--samples", "10", "--chunks", "20"], "must be <= the number of draws"),
        (["fit-mock", "--seed", "-3"], "argument --seed: -3: must be an integer >= 0"),
        (["generate", "--n", "4", "--seed", "1", "--out", "X", "--n-angles", "1"],
         "argument --n-angles: 1: must be an integer >= 3"),
        (["generate", "--n", "4", "--seed", "1", "--out", "X", "--n-radii", "0"],
         "argument --n-radii: 0: must be an integer >= 4"),
        (["generate", "--n", "4", "--seed", "-1", "--out", "X"],
         "argument --seed: -1: must be an integer >= 0"),
        (["generate", "--n", "4", "--seed", "1", "--out", "X", "--workers", "-1"],
         "argument --workers: -1: must be an integer >= 1"),
        (["generate", "--n", "four", "--seed", "1", "--out", "X"],
         "argument --n: 'four' is not an integer"),
        (["train", "--config", "c.json", "--max-steps", "0"],
         "argument --max-steps: 0: must be an integer >= 1"),
        (["train-baseline", "--learning-rate", "nan"],
         "argument --learning-rate: nan: must be a finite number > 0"),
        (["evaluate", "--n", "0"], "argument --n: 0: must be an integer >= 1"),
        (["evaluate", "does-not-exist"], "argument emulators: no checkpoint 'does-not-exist'"),
        (["jam-map", "--params", "5", "2", "0.8", "0.75", "0.9", "3.5", "0.1", "70"],
         "argument --params: theta_E = 5 is outside the allowed range [0.5, 2]"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(capsys, *argv)
    assert rc == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "X").exists() and not (tmp_path / "runs").exists()


def test_out_that_is_a_file_or_under_a_file_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out, message in ((a_file, "is a file"), (a_file / "sub", "is not a writable directory")):
        rc, err = _cli(capsys, "generate", "--n", "2", "--seed", "1", "--out", str(out))
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
        rc, err = _cli(capsys, "fit-mock", "--out", str(out))
        assert rc == 2 and message in err and "Traceback" not in err


def test_evaluate_checks_the_test_set_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(capsys, "evaluate", "cips", "--test", "nowhere")
    assert rc == 2 and "nowhere is not a data set" in err


def test_os_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from skinn_jax.cli import main

    rc, err = _cli(capsys, "factorise-basis", "./missing", "--export", str(tmp_path / "x"))
    assert rc == 2 and "no checkpoint directory './missing'" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(FileNotFoundError):
        main(["--debug", "factorise-basis", "./missing", "--export", str(tmp_path / "x")])


@pytest.mark.parametrize("bad", [{"theta_E": 1.2}, P.astype(complex) + 1e-3j])
def test_dict_or_complex_parameters_are_a_clear_value_error(tiny_emu, bad):
    with pytest.raises(ValueError, match="got a dict|must be real numbers"):
        tiny_emu.vrms_map(bad)
    with pytest.raises(ValueError, match="got a dict|must be real numbers"):
        tiny_emu.vrms_at(bad, 0.0, 0.0)


def test_grid_features_first_called_inside_jit_and_the_docs_say_so(tiny_checkpoint):
    emu = Emulator.load(tiny_checkpoint)
    first = jax.jit(lambda p: emu.vrms_map(p)[275, 275])(jnp.asarray(P))
    second = jax.jit(lambda p: emu.vrms_map(p)[270, 275])(jnp.asarray(P))
    assert np.isfinite(float(first)) and np.isfinite(float(second))
    assert not isinstance(emu.grid_features(), jax.core.Tracer)
    text = (Path(__file__).parents[1] / "docs" / "forward_model.md").read_text()
    assert "UnexpectedTracerError" not in text and "traced values are not checked" not in text
