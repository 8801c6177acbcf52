"""The shipped default checkpoint, from a non-editable install, against stored JAM maps.

``tests/data/jam_reference.npz`` holds the first maps of the held-out test set (JAM truth,
seed 3). The wheel is built and installed into a fresh directory; a subprocess that cannot see
the checkout loads ``skinn_jax.Emulator.load()`` from there and must reproduce the maps within
the accuracy its metadata claims (the test-set 95th percentile of |E|; the worst map may reach
the test-set maximum).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "jam_reference.npz"

SCRIPT = r"""
import json, sys
import numpy as np
import skinn_jax
from skinn_jax.training.train import full_map_errors
assert skinn_jax.__file__.startswith(sys.argv[1]), skinn_jax.__file__
emu = skinn_jax.Emulator.load()
ref = np.load(sys.argv[2])
pred = np.asarray(emu.vrms_quadrant(ref["params"])).reshape(len(ref["params"]), -1)
e, abs_e = full_map_errors(pred, ref["vrms"].reshape(len(pred), -1))
print(json.dumps({"abs_E": abs_e.tolist(), "E": e.tolist(),
                  "claimed": emu.metadata.get("test_metrics", {}),
                  "file": skinn_jax.__file__}))
"""


@pytest.mark.skipif(not (ROOT / "checkpoints" / "DEFAULT").exists(), reason="no default weights")
def test_installed_default_checkpoint_reproduces_stored_jam_maps(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("skinn_jax-*.whl"))
    assert wheel.stat().st_size < 50e6, "shipped weights must stay under 50 MB"
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    assert not (target / "training").exists() and not (target / "inference").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(target), str(REFERENCE)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    claimed = result["claimed"]
    assert claimed, "the default checkpoint must state its test-set accuracy"
    abs_e = np.array(result["abs_E"])
    assert np.median(abs_e) <= claimed["p95_abs_E"]
    assert abs_e.max() <= claimed["max_abs_E"] * 1.05
    assert abs(np.mean(result["E"])) <= claimed["p95_abs_E"]
