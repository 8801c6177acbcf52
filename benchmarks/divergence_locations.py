"""Where the divergent transitions of stored fits lie in their posteriors.

For each fit directory with a ``posterior.nc`` (default: every fit of the policy study,
``docs/benchmarks/study_policy/K/MODE``) that has divergent transitions, prints their number per
chain, the NUTS tree depth and acceptance at them against the chains' mean, the lens-equation
solver's residual there against its 99th percentile over all draws (a failing solve would show
as a jump), and the parameters whose draws at the divergences lie furthest from the posterior
mean, in posterior standard deviations (the draw a divergent transition returned, not the point
where the trajectory diverged).

Run: ``python benchmarks/divergence_locations.py [DIR ...] [--top 4]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import arviz as az
import numpy as np

STUDY = Path("docs/benchmarks/study_policy")


def describe(path: Path, top: int) -> list[str]:
    """Lines describing the divergent draws of the fit in ``path`` (empty if it has none)."""
    data = az.from_netcdf(path / "posterior.nc")
    div = np.asarray(data.sample_stats["diverging"].values, bool)
    if not div.any():
        return []
    stats = data.sample_stats
    depth = np.asarray(stats["tree_depth"].values)
    accept = np.asarray(stats["acceptance_rate"].values)
    lines = [
        f"{path}: {int(div.sum())} divergent of {div.size} draws (per chain {div.sum(1).tolist()});"
        f" tree depth there {depth[div].mean():.1f} (all {depth.mean():.1f}), acceptance"
        f" {accept[div].mean():.2f} (all {accept.mean():.2f})"
    ]
    post = data.posterior
    if "lens_eq_residual" in post:
        res = np.asarray(post["lens_eq_residual"].values)
        lines.append(
            f"  lens-equation residual there max {res[div].max():.1e} arcsec "
            f"(all draws: 99 % {np.quantile(res, 0.99):.1e}, max {res.max():.1e})"
        )
    shifts = []
    for name, var in post.data_vars.items():
        x = np.asarray(var.values)
        if x.ndim != 2 or name.startswith("chi2_") or name == "lens_eq_residual":
            continue
        sd = x.std()
        if sd > 0:
            z = (x[div] - x.mean()) / sd
            shifts.append((float(np.abs(z).mean()), name, float(np.median(z))))
    shifts.sort(reverse=True)
    lines += [
        f"  {name:<18} mean |z| {mean_abs:.2f}, median z {median:+.2f}"
        for mean_abs, name, median in shifts[:top]
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fits", nargs="*", type=Path)
    parser.add_argument("--top", type=int, default=4)
    args = parser.parse_args(argv)
    fits = args.fits or sorted(p.parent for p in STUDY.glob("*/*/posterior.nc"))
    found = 0
    for path in fits:
        lines = describe(path, args.top)
        if lines:
            found += 1
            print("\n".join(lines))
    print(f"{found} of {len(fits)} fits have divergent transitions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
