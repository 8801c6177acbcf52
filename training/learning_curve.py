"""Learning curves: validation accuracy against the number of training maps, per emulator.

``python -m training.learning_curve --kind pca --sizes 500 1000 2000 4000`` trains one
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
from .generate import DataSet
from .train import TrainConfig, train


def run(
    kind: str,
    sizes: list[int],
    steps: int,
    workdir: Path,
    config: str | None,
    baseline: BaselineConfig | None = None,
    done: dict | None = None,
    on_result=None,
) -> dict:
    """Train one model per size; ``done`` holds sizes already measured (skipped), ``on_result``
    is called with the results after each size so a killed curve keeps what it measured."""
    results = dict(done or {})
    for n in sizes:
        if str(n) in results:
            continue
        if kind == "pca":
            base = baseline or BaselineConfig()
            cfg = replace(
                base, n_train=n, n_pca_maps=n, steps=steps, export=str(workdir / f"pca_{n}")
            )
            r = train_baseline(cfg, progress=False)
        else:
            base = TrainConfig.from_file(config) if config else TrainConfig()
            cfg = replace(
                base,
                n_train=n,
                steps=steps,
                eval_every=steps,
                checkpoint_every=min(steps, 5000),
                out=str(workdir / f"run_cips_{n}"),
                export=str(workdir / f"cips_{n}"),
            )
            r = train(cfg, progress=False)
        keys = ("val_median_abs_E", "val_p95_abs_E", "val_median_E", "cpu_seconds")
        results[str(n)] = {k: r[k] for k in keys if k in r}
        print(n, results[str(n)], flush=True)
        if on_result is not None:
            on_result(results)
    return results


def plot(docs: Path, space: str = "paper") -> None:
    """One figure per parameter space: ``learning_curve.png`` (paper box) or
    ``learning_curve_<space>.png``, with every curve measured on that space's data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for path in sorted(docs.glob("learning_curve_*.json")):
        data = json.loads(path.read_text())
        if data.get("space", "paper") != space:
            continue
        sizes = sorted(int(k) for k in data["results"])
        med = [data["results"][str(n)]["val_median_abs_E"] for n in sizes]
        p95 = [data["results"][str(n)]["val_p95_abs_E"] for n in sizes]
        label = f"{data.get('label', data['kind'])} ({data['steps']} steps)"
        line = ax.loglog(sizes, med, "o-", label=f"{label}: median |E|")[0]
        ax.loglog(sizes, p95, "s--", color=line.get_color(), label=f"{label}: 95th pct")
    target = 0.05 if space == "paper" else 0.10
    ax.axhline(target, color="k", lw=0.8, ls=":", label="target median")
    ax.set(xlabel="training maps", ylabel="validation |E| [km/s]", title=f"{space} box")
    ax.legend(fontsize=7)
    fig.tight_layout()
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    name = "learning_curve.png" if space == "paper" else f"learning_curve_{space}.png"
    fig.savefig(docs / "figures" / name, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=["pca", "cips"], default="pca")
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--config", default=None, help="CIPS training config to start from")
    ap.add_argument("--components", type=int, default=40, help="PCA components (pca)")
    ap.add_argument("--width", type=int, default=256, help="mapping-network width (pca)")
    ap.add_argument(
        "--negative-scale", type=float, default=0.0, help="signed-target compression (pca)"
    )
    ap.add_argument("--train", default="data/train", help="training data set (pca)")
    ap.add_argument("--val", default="data/val", help="validation data set (pca)")
    ap.add_argument("--cusp-weight", action="store_true", help="cusp-weighted target (pca)")
    ap.add_argument("--mapping-depth", type=int, default=4, help="mapping-network depth (pca)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/learning_curve"))
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--label", default=None, help="name of the curve (default: the kind)")
    args = ap.parse_args()
    label = args.label or args.kind
    out = args.docs / f"learning_curve_{label}.json"
    settings = {"kind": args.kind, "label": label, "steps": args.steps}
    if args.kind == "pca":
        settings |= {
            "components": args.components,
            "width": args.width,
            "negative_scale": args.negative_scale,
        }
        space = DataSet(args.train).space.name
        if space != "paper":  # keys absent from the paper curves, so those still resume
            settings |= {"space": space, "train": args.train, "cusp_weight": args.cusp_weight,
                         "depth": args.mapping_depth}  # fmt: skip
    else:
        settings["config"] = args.config
        base = TrainConfig.from_file(args.config) if args.config else TrainConfig()
        space = DataSet(base.train_data).space.name
        if space != "paper":
            settings["space"] = space
    space = settings.get("space", "paper")
    done = {}
    if out.exists():  # resume a curve with the same settings; never mix settings
        old = json.loads(out.read_text())
        if {k: old.get(k) for k in settings} == settings:
            done = old["results"]

    def save(results: dict) -> None:
        out.write_text(json.dumps({**settings, "results": results}, indent=1))
        plot(args.docs, space)

    baseline = BaselineConfig(
        train_data=args.train,
        val_data=args.val,
        n_components=args.components,
        mapping_width=args.width,
        mapping_depth=args.mapping_depth,
        negative_scale=args.negative_scale,
        cusp_weight=args.cusp_weight,
    )
    run(args.kind, args.sizes, args.steps, args.workdir, args.config, baseline, done, save)


if __name__ == "__main__":
    main()
