"""The shipped checkpoints, from a non-editable install, against stored JAM maps.

``tests/data/jam_reference.npz`` holds the first maps of the paper-box held-out test set (JAM
truth, seed 3) and ``tests/data/jam_reference_real_lens.npz`` those of the real-lens test set
(seed 13). The wheel is built and installed into a fresh directory once; a subprocess that cannot
see the checkout loads ``skinn_jax.Emulator.load(name)`` from there and must reproduce the maps of
its own parameter space within the accuracy its metadata claims (the test-set 95th percentile of
|E|; the worst map may reach the test-set maximum).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = {
    "paper": ROOT / "tests" / "data" / "jam_reference.npz",
    "real-lens": ROOT / "tests" / "data" / "jam_reference_real_lens.npz",
}

SCRIPT = r"""
import json, sys
import numpy as np
import skinn_jax
from skinn_jax.training.train import full_map_errors
assert skinn_jax.__file__.startswith(sys.argv[1]), skinn_jax.__file__
emu = skinn_jax.Emulator.load(None if sys.argv[2] == "default" else sys.argv[2])
ref = np.load(json.loads(sys.argv[3])[emu.space.name])
pred = np.asarray(emu.vrms_quadrant(ref["params"])).reshape(len(ref["params"]), -1)
e, abs_e = full_map_errors(pred, ref["vrms"].reshape(len(pred), -1))
print(json.dumps({"abs_E": abs_e.tolist(), "E": e.tolist(), "space": emu.space.name,
                  "claimed": emu.metadata.get("test_metrics", {}),
                  "file": skinn_jax.__file__}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh non-editable install of the package (wheel), outside the checkout."""
    tmp_path = tmp_path_factory.mktemp("install")
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
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert not (target / "training").exists() and not (target / "inference").exists()
    return target


def _run(target: Path, name: str) -> dict:
    refs = json.dumps({k: str(v) for k, v in REFERENCES.items()})
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(target), name, refs],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=target.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (ROOT / "checkpoints" / "DEFAULT").exists(), reason="no default weights")
@pytest.mark.parametrize("name", ["default", "pca64s", "real-lens"])
def test_installed_checkpoint_reproduces_stored_jam_maps(installed, name):
    result = _run(installed, name)
    if name == "default":
        shipped = (ROOT / "checkpoints" / "DEFAULT").read_text().strip()
        expected = json.loads((ROOT / "checkpoints" / shipped / "metadata.json").read_text())
        assert result["space"] == expected.get("param_space", "paper")
    claimed = result["claimed"]
    assert claimed, "a shipped checkpoint must state its test-set accuracy"
    abs_e = np.array(result["abs_E"])
    assert np.median(abs_e) <= claimed["p95_abs_E"]
    assert abs_e.max() <= claimed["max_abs_E"] * 1.05
    assert abs(np.mean(result["E"])) <= claimed["p95_abs_E"]
