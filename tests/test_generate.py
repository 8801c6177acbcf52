"""Data-set generation: resumable after a kill, bit-identical, worker- and scheduler-independent."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from skinn_jax.training.generate import DataSet, generate, map_params, sha256_file
from skinn_jax.training.jam import JamSettings

COARSE = JamSettings(n_radii=12, n_angles=4)  # the machinery, not the accuracy, is under test
N, SHARD = 8, 2


def _hashes(path):
    return {p.name: sha256_file(p) for p in sorted(path.glob("shard_*.npz"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ds"
    generate(out, N, seed=11, workers=1, shard_size=SHARD, settings=COARSE, progress=False)
    return out


def test_contents_and_manifest(reference):
    ds = DataSet(reference)
    assert ds.n_maps == N and ds.complete_shards == [0, 1, 2, 3]
    data = ds.load(("params", "vrms", "n_zero"))
    assert data["vrms"].shape == (N, 276, 276) and data["vrms"].dtype == np.float32
    np.testing.assert_array_equal(data["params"][5], map_params(11, 5))
    assert np.all(np.isfinite(data["vrms"])) and np.all(data["vrms"] >= 0)
    m = ds.manifest
    assert m["seed"] == 11 and m["settings"]["n_radii"] == 12 and "jampy" in m["versions"]
    assert m["cpu_seconds"] > 0


def test_more_workers_same_bytes(reference, tmp_path):
    out = tmp_path / "ds"
    generate(out, N, seed=11, workers=2, shard_size=SHARD, settings=COARSE, progress=False)
    assert _hashes(out) == _hashes(reference)


def test_extending_keeps_the_first_maps(reference, tmp_path):
    out = tmp_path / "ds"
    generate(out, 4, seed=11, workers=1, shard_size=SHARD, settings=COARSE, progress=False)
    generate(out, N, seed=11, workers=1, shard_size=SHARD, settings=COARSE, progress=False)
    assert _hashes(out) == _hashes(reference)


def test_corrupt_and_missing_shards_are_regenerated(reference, tmp_path):
    out = tmp_path / "ds"
    generate(out, N, seed=11, workers=1, shard_size=SHARD, settings=COARSE, progress=False)
    path = out / "shard_00001.npz"
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    (out / "shard_00002.npz").unlink()
    generate(out, N, seed=11, workers=1, shard_size=SHARD, settings=COARSE, progress=False)
    assert _hashes(out) == _hashes(reference)


def test_other_settings_refuse_to_mix(reference, tmp_path):
    out = tmp_path / "ds"
    generate(out, 2, seed=11, workers=1, shard_size=SHARD, settings=COARSE, progress=False)
    with pytest.raises(ValueError, match="generated with"):
        generate(out, 2, seed=12, workers=1, shard_size=SHARD, settings=COARSE, progress=False)


def test_killed_run_resumes_bit_identically(reference, tmp_path):
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        "-m",
        "skinn_jax.cli",
        "generate",
        "--n",
        str(N),
        "--seed",
        "11",
        "--out",
        str(out),
        "--workers",
        "1",
        "--shard-size",
        str(SHARD),
        "--n-radii",
        "12",
        "--n-angles",
        "4",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = out / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 1:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers, mid-shard
    proc.wait()
    done_before = len(json.loads((out / "manifest.json").read_text())["shards"])
    assert 1 <= done_before < N // SHARD, "the run should have been killed part-way"
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    assert _hashes(out) == _hashes(reference)
    assert not list(out.glob("*.tmp"))


def test_dask_local_cluster_gives_identical_output(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        out = tmp_path / "ds"
        generate(
            out,
            N,
            seed=11,
            shard_size=SHARD,
            settings=COARSE,
            scheduler=cluster.scheduler_address,
            progress=False,
        )
    assert _hashes(out) == _hashes(reference)
