"""Time a benchmark under an earlier revision of skinn-jax and under the working tree, side by side.

The benchmark script (one of ``benchmarks/``, taken from the working tree) runs alternately with
``skinn_jax`` imported from a ``git worktree`` of ``--old`` and from the working tree, ``--rounds``
times each, in one run, so both see the same machine load. Every output line ending a label with a
time (``<label> <number> ms``) is collected; the table gives, per label, the median over rounds for
the old and the new code and their ratio (old / new: > 1 is faster now).

Run (one pinned core, as a chain of a parallel fit gets)::

    taskset -c 0 python benchmarks/compare_revisions.py --old HEAD~1 --rounds 3 -- \\
        benchmarks/profile_model_eval.py --system 1 --modes joint

The old revision must have the functions the benchmark imports. ``training/`` and the shipped
checkpoints come from the working tree in both (they are installed from it).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"^(?P<label>.*?\S)\s+(?P<ms>[0-9]+(?:\.[0-9]+)?) ms\b")


def timings(output: str) -> dict[str, float]:
    """``{label: ms}`` of the lines ``<label> <number> ms ...`` of a benchmark's output (a label
    seen twice gets its occurrence number appended)."""
    found: dict[str, float] = {}
    for line in output.splitlines():
        match = TIMING.match(line.strip())
        if not match:
            continue
        label, n = match["label"], 2
        while label in found:
            label, n = f"{match['label']} ({n})", n + 1
        found[label] = float(match["ms"])
    return found


def run_once(script: list[str], package_root: Path) -> tuple[dict[str, float], list[str]]:
    """Run the benchmark with ``skinn_jax`` imported from ``package_root``: its timings, and its
    other output lines (e.g. a fit's convergence line)."""
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    done = subprocess.run(
        [sys.executable, *script], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script[0]} failed under {package_root}:\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    return timings(done.stdout), [x for x in lines if x.strip() and not TIMING.match(x.strip())]


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision of the old code (e.g. HEAD~1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating (>= 1)")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    args = parser.parse_args(argv)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        parser.error("give the benchmark after --, e.g. -- benchmarks/profile_model_eval.py")
    if args.rounds < 1:
        parser.error(f"--rounds = {args.rounds}: allowed range [1, inf)")
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.old], cwd=ROOT, capture_output=True, text=True
    )
    if rev.returncode != 0:
        parser.error(f"--old {args.old}: not a git revision of {ROOT}")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(tree), args.old], cwd=ROOT, check=True
        )
        try:
            runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for i in range(args.rounds):
                for name, root in (("old", tree), ("new", ROOT)):
                    found, other = run_once(script, root)
                    runs[name].append(found)
                    print(f"round {i + 1}/{args.rounds} {name} done", file=sys.stderr, flush=True)
                    for line in other:
                        print(f"  [{name} {i + 1}] {line}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    labels = [k for k in runs["new"][0] if all(k in r for r in runs["old"] + runs["new"])]
    print(f"{' '.join(script)}: old = {rev.stdout.strip()} ({args.old}), new = working tree; "
          f"medians of {args.rounds} alternating runs")  # fmt: skip
    print("| timing | old (ms) | new (ms) | old / new |\n|---|---|---|---|")
    for label in labels:
        old = statistics.median(r[label] for r in runs["old"])
        new = statistics.median(r[label] for r in runs["new"])
        print(f"| {label} | {_ms(old)} | {_ms(new)} | {old / new:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
