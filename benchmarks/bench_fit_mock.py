"""Wall time of ``skinn-jax fit-mock`` (the README's first command) and of its phases.

Runs ``python -m skinn_jax.cli fit-mock`` in a fresh temporary output directory (every phase
computed, nothing loaded) and prints one ``<label> <ms> ms`` line per phase, from the wall clock
and the fit's ``report.json``, then the fit's convergence line. Side by side with an earlier
revision, in one run (``benchmarks/compare_revisions.py`` imports ``skinn_jax`` from a ``git
worktree`` of it; 2 idle cores, as the README's figure)::

    python benchmarks/compare_revisions.py --old REV --rounds 1 -- benchmarks/bench_fit_mock.py

Phases: the four of the fit's ``report.json`` (the potential's compilation, the MAP, the warm-up,
the sampling); ``between phases``: the rest of the fit's own clock (the model's potential, built
twice, the source mask, the chains' start, the convergence checks); ``outside the fit``:
start-up, the mock system and its JAM truth, the emulator, the model's set-up, and the outputs
(the posterior files and figures).

Each run compiles everything, as a first run on a new machine: the persistent compilation cache
(``SKINN_JAX_CACHE_DIR``) is a fresh directory inside the temporary one, unless ``--cache DIR``
names one to use (run twice with the same ``DIR`` to time a run that finds its programs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("joint", "lensing", "kinematics"), default="joint")
    parser.add_argument("--keep", type=Path, default=None, help="write the fit here (kept)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="compilation cache (default: a fresh directory)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = (args.keep or Path(tmp) / "fit").resolve()
        cmd = [sys.executable, "-m", "skinn_jax.cli", "fit-mock", "--mode", args.mode]
        cmd += ["--out", str(out), "--no-progress"]
        t = time.perf_counter()
        # (run from the temporary directory: ``-m`` puts the working directory first on the
        # path, which would shadow the revision compare_revisions.py put on PYTHONPATH)
        cache = (args.cache or Path(tmp) / "xla").resolve()
        env = {**os.environ, "SKINN_JAX_CACHE_DIR": str(cache)}
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            return done.returncode
        report = json.loads((out / "report.json").read_text())
    timings = report["timings_s"]
    phases = {k: timings[f"{k}_s"] for k in ("compile_potential", "map", "warmup", "sampling")}
    in_fit = timings["total_this_run_s"]  # the fit's clock: potential to the last draw
    lines = {
        "fit-mock wall": wall,
        **{k.replace("_", " "): v for k, v in phases.items()},
        "between phases": in_fit - sum(phases.values()),
        "outside the fit": wall - in_fit,
    }
    for label, seconds in lines.items():
        print(f"{label} {1e3 * seconds:.0f} ms")
    evaluations = report["evaluations"]
    print(f"gradient evaluations: {evaluations['total']} (warm-up {evaluations['warmup']}, "
          f"sampling {evaluations['sampling']})")  # fmt: skip
    print(report["convergence"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
