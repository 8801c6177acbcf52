"""Learning curves: validation accuracy against the number of training maps, per emulator.

``python -m skinn_jax.training.learning_curve --kind pca --sizes 500 1000 2000 4000`` trains one
model per size (the first N maps of the training set), evaluates it on the validation set
(median and 95th percentile of |E| over full maps) and writes ``docs/learning_curve_<kind>.json``
and ``docs/figures/learning_curve.png`` (all kinds measured so far).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from .baseline import BaselineConfig, train_baseline
from .train import TrainConfig, train


def run(kind: str, sizes: list[int], steps: int, workdir: Path, config: str | None) -> dict:
    results = {}
    for n in sizes:
        if kind == "pca":
            cfg = BaselineConfig(n_train=n, steps=steps, export=str(workdir / f"pca_{n}"))
            r = train_baseline(cfg, progress=False)
        else:
            base = TrainConfig.from_file(config) if config else TrainConfig()
            cfg = replace(
                base,
                n_train=n,
                steps=steps,
                eval_every=steps,
                checkpoint_every=steps,
                out=str(workdir / f"run_cips_{n}"),
                export=str(workdir / f"cips_{n}"),
            )
            r = train(cfg, progress=False)
        results[n] = {k: r[k] for k in ("val_median_abs_E", "val_p95_abs_E", "val_median_E")}
        print(n, results[n], flush=True)
    return results


def plot(docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for path in sorted(docs.glob("learning_curve_*.json")):
        data = json.loads(path.read_text())
        sizes = sorted(int(k) for k in data["results"])
        med = [data["results"][str(n)]["val_median_abs_E"] for n in sizes]
        p95 = [data["results"][str(n)]["val_p95_abs_E"] for n in sizes]
        label = f"{data.get('label', data['kind'])} ({data['steps']} steps)"
        line = ax.loglog(sizes, med, "o-", label=f"{label}: median |E|")[0]
        ax.loglog(sizes, p95, "s--", color=line.get_color(), label=f"{label}: 95th pct")
    ax.axhline(0.05, color="k", lw=0.8, ls=":", label="target median")
    ax.set(xlabel="training maps", ylabel="validation |E| [km/s]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / "figures" / "learning_curve.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=["pca", "cips"], default="pca")
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--config", default=None, help="CIPS training config to start from")
    ap.add_argument("--workdir", type=Path, default=Path("runs/learning_curve"))
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--label", default=None, help="name of the curve (default: the kind)")
    args = ap.parse_args()
    results = run(args.kind, args.sizes, args.steps, args.workdir, args.config)
    label = args.label or args.kind
    out = args.docs / f"learning_curve_{label}.json"
    record = {"kind": args.kind, "label": label, "steps": args.steps, "results": results}
    out.write_text(json.dumps(record, indent=1))
    plot(args.docs)


if __name__ == "__main__":
    main()
