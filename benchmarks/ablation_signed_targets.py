"""Ablation: signed vs clipped second-moment targets for the PCA baseline (validation set).

Run: ``python benchmarks/ablation_signed_targets.py N_TRAIN STEPS`` (e.g. ``2000 20000``): trains
the 40-component baseline on the first N_TRAIN training maps twice, on the signed and on the
clipped second moment, and evaluates both on the 500 validation maps (km/s, per-map |E| over
the full map); writes ``runs/ablation_signed_<N>.json``.
"""

import json
import sys

import numpy as np
from skinn_jax.training.baseline import BaselineConfig, train_baseline
from skinn_jax.training.evaluate import predict
from skinn_jax.training.train import full_map_errors, load_maps

from skinn_jax.emulator import Emulator

n_train = int(sys.argv[1])
steps = int(sys.argv[2])
params, truth, n_zero = load_maps("data/val")
out = {}
for signed in (True, False):
    name = f"runs/abl_{'signed' if signed else 'clipped'}_{n_train}"
    cfg = BaselineConfig(
        n_train=n_train,
        n_components=40,
        n_pca_maps=n_train,
        steps=steps,
        signed=signed,
        export=name,
    )
    train_baseline(cfg, progress=False)
    pred = predict(Emulator.load(name), params)
    e, a = full_map_errors(pred, truth)
    z = n_zero > 0
    hard = (params[:, 6] > 0.3) | (params[:, 1] < 1.6)
    out[name] = {
        k: float(v)
        for k, v in {
            "median": np.median(a),
            "p95": np.percentile(a, 95),
            "zero_median": np.median(a[z]),
            "zero_p95": np.percentile(a[z], 95),
            "hard_median": np.median(a[hard]),
            "hard_p95": np.percentile(a[hard], 95),
            "nonzero_median": np.median(a[~z]),
            "n_zero_maps": z.sum(),
        }.items()
    }
    print(name, out[name], flush=True)
json.dump(out, open(f"runs/ablation_signed_{n_train}.json", "w"), indent=1)
