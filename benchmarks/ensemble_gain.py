"""How much an ensemble of coefficient MLPs gains over its members, on the validation maps.

Each member of an ``n_members > 1`` PCA checkpoint is taken out as a single-network emulator
(same basis, its own MLP) and evaluated beside the ensemble on the same maps, full 551 x 551
pixels (median and 95th percentile of |E|, km/s).

    python benchmarks/ensemble_gain.py --checkpoint real-lens --val data/rl_val
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import jax
import numpy as np
from skinn_jax.training.evaluate import predict
from skinn_jax.training.train import full_map_errors, load_maps

from skinn_jax import Emulator


def member(emu: Emulator, i: int) -> Emulator:
    """Member ``i`` of an ensemble checkpoint as a single-network emulator."""
    params = dict(emu.variables["params"])
    params["mapping"] = jax.tree_util.tree_map(lambda a: a[i], params["mapping"]["members"])
    variables = {**emu.variables, "params": params}
    return Emulator(replace(emu.config, n_members=1), variables, emu.metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="real-lens")
    ap.add_argument("--val", default="data/rl_val")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    emu = Emulator.load(args.checkpoint)
    m = emu.config.n_members
    if m < 2:
        raise SystemExit(f"{args.checkpoint} is not an ensemble (n_members = {m})")
    params, truth, _ = load_maps(args.val, args.n)
    rows = {}
    for name, e in [*((f"member {i}", member(emu, i)) for i in range(m)), ("ensemble", emu)]:
        _, abs_e = full_map_errors(predict(e, params), truth)
        rows[name] = (float(np.median(abs_e)), float(np.percentile(abs_e, 95)))
        print(f"{name:10s} median |E| {rows[name][0]:.3f}  95th {rows[name][1]:.3f} km/s")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
