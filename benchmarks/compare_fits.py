"""Side-by-side table of finished fits: the same systems fitted two ways (two output trees).

Reads each fit's ``report.json`` (written by :func:`skinn_jax.inference.fit.fit`) and prints, per
system and mode, the draws per chain the convergence policy needed, the sampler's gradient
evaluations (warm-up + sampling), the smallest bulk and tail ESS, the divergences, and the
smallest bulk ESS per 1,000 sampling evaluations (the efficiency that does not depend on the
machine's load), with the ratio B / A.

Example (session 15: the study's kinematics fits in the logit coordinate, kept aside, against
the probit ones of model v7)::

    python benchmarks/compare_fits.py tmp/logit_fits docs/benchmarks/study_policy \\
        --modes kinematics --labels logit probit
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fit_row(report: dict) -> dict:
    """The compared figures of one fit's ``report.json``."""
    d, ev = report["diagnostics"], report["evaluations"]
    return {
        "draws": d["policy"]["n_draws"],
        "evaluations": ev["warmup"] + ev["sampling"],
        "ess_bulk": d["min_ess_bulk"],
        "ess_tail": d["min_ess_tail"],
        "divergences": d["divergences"],
        "ess_per_1k": 1e3 * d["min_ess_bulk"] / max(ev["sampling"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="first tree of fits: A/<system>/<mode>/report.json")
    parser.add_argument("b", type=Path, help="second tree of fits")
    parser.add_argument("--modes", nargs="+", default=["joint", "kinematics", "lensing"])
    parser.add_argument("--labels", nargs=2, default=["A", "B"])
    args = parser.parse_args(argv)
    la, lb = args.labels
    print(
        f"| system | mode | draws {la} / {lb} | evaluations {la} / {lb} | min ESS bulk, tail "
        f"{la} / {lb} | divergences {la} / {lb} | ESS per 1k sampling evals {la} / {lb} (ratio) |"
    )
    print("|---|---|---|---|---|---|---|")
    for path_a in sorted(args.a.glob("*/*/report.json")):
        system, mode = path_a.parent.parent.name, path_a.parent.name
        path_b = args.b / system / mode / "report.json"
        if mode not in args.modes or not path_b.exists():
            continue
        a, b = (fit_row(json.loads(p.read_text())) for p in (path_a, path_b))
        ratio = b["ess_per_1k"] / a["ess_per_1k"]
        print(
            f"| {system} | {mode} | {a['draws']} / {b['draws']} | {a['evaluations']:,} / "
            f"{b['evaluations']:,} | {a['ess_bulk']:.0f}, {a['ess_tail']:.0f} / "
            f"{b['ess_bulk']:.0f}, {b['ess_tail']:.0f} | {a['divergences']} / {b['divergences']} | "
            f"{a['ess_per_1k']:.1f} / {b['ess_per_1k']:.1f} ({ratio:.2f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
