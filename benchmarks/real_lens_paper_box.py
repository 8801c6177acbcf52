"""The real-lens emulator inside the paper's box, side by side with the paper-box default.

Draws maps in the paper's box (CONVENTIONS §1) with its fixed 0.08" core, computes their JAM
truth with the real-lens pipeline (``r_core = 0.08`` as the ninth parameter; for a few maps also
with the paper pipeline, to show the two truths agree), and reports the accuracy of the real-lens
emulator and of the paper-box emulator on them (the real-lens issue asks for the new default to
stay within 2x of the old one there).

    python benchmarks/real_lens_paper_box.py --emulator real-lens --reference pca64s --n 150
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from skinn_jax.training.evaluate import predict
from skinn_jax.training.jam import jam_quadrant
from skinn_jax.training.train import full_map_errors
from tqdm import tqdm

from skinn_jax import Emulator
from skinn_jax.params import PAPER_SPACE
from skinn_jax.profiles import R_CORE_ARCSEC

CACHE = Path("data/rl_paperbox")


def truth_maps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(params (n, 9), vrms (n, 276*276))``: cached in data/, rebuilt from the seed."""
    path = CACHE / f"seed{seed}_n{n}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["params"], f["vrms"]
    p8 = PAPER_SPACE.sample(np.random.default_rng(seed), n)
    p9 = np.concatenate([p8, np.full((n, 1), R_CORE_ARCSEC)], axis=1)
    vrms = np.stack([jam_quadrant(p).vrms.ravel() for p in tqdm(p9, desc="JAM truth")])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, params=p9, vrms=vrms.astype(np.float32))
    return p9, vrms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emulator", default="real-lens")
    ap.add_argument("--reference", default="pca64s")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/real_lens_paper_box.md"))
    args = ap.parse_args()
    t0 = time.time()
    p9, truth = truth_maps(args.n, args.seed)
    # the two JAM pipelines (paper tables vs real-lens NNLS MGEs) on the first few maps
    pipes = [full_map_errors(jam_quadrant(p[:8]).vrms.ravel()[None], t[None])[1][0]
             for p, t in zip(p9[:5], truth[:5], strict=True)]  # fmt: skip
    new = Emulator.load(args.emulator)
    ref = Emulator.load(args.reference)
    _, abs_new = full_map_errors(predict(new, p9), truth)
    _, abs_ref = full_map_errors(predict(ref, p9[:, :8]), truth)
    result = {
        "n_maps": args.n,
        "seed": args.seed,
        "truth_pipelines_abs_E": [float(v) for v in pipes],
        args.emulator: {
            "median_abs_E": float(np.median(abs_new)),
            "p95_abs_E": float(np.percentile(abs_new, 95)),
        },  # fmt: skip
        args.reference: {
            "median_abs_E": float(np.median(abs_ref)),
            "p95_abs_E": float(np.percentile(abs_ref, 95)),
        },  # fmt: skip
        "seconds": time.time() - t0,
    }
    ratio = result[args.emulator]["median_abs_E"] / result[args.reference]["median_abs_E"]
    ratio95 = result[args.emulator]["p95_abs_E"] / result[args.reference]["p95_abs_E"]
    lines = [
        "# The real-lens emulator inside the paper's box",
        "",
        f"Reproduce: `python benchmarks/real_lens_paper_box.py --emulator {args.emulator} "
        f"--reference {args.reference} --n {args.n} --seed {args.seed}`.",
        f"{args.n} maps drawn in the paper's box (fixed 0.08\" core), JAM truth from the "
        "real-lens pipeline; the paper pipeline's truth differs from it by "
        f"{max(pipes):.4f} km/s (largest \\|E\\| of 5 maps).",
        "",
        "| emulator | median \\|E\\| [km/s] | 95th pct |",
        "|---|---|---|",
        *(
            f"| `{k}` | {result[k]['median_abs_E']:.4f} | {result[k]['p95_abs_E']:.4f} |"
            for k in (args.emulator, args.reference)
        ),  # fmt: skip
        "",
        f"Ratio real-lens / paper-box: median {ratio:.2f}, 95th percentile {ratio95:.2f} "
        "(target: within 2x).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
