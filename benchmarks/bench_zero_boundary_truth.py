"""JAM truth next to the zero boundary: data format 2 against format 1 and direct jampy.

Format 1 interpolated jampy's *clipped* second moment on the polar grid; format 2 interpolates the
signed one (``training.jam.jampy_signed_v2``) and clips at the end. For the test maps with the most
zero-valued pixels this compares both with jampy evaluated directly at each pixel, at 60 pixels
where either is below 20 km/s and 60 random ones.

Run: ``python benchmarks/bench_zero_boundary_truth.py [--maps 6]`` (needs ``data/test``); writes
``docs/benchmarks/zero_boundary_truth.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.interpolate import RectBivariateSpline
from skinn_jax.training.generate import DataSet
from skinn_jax.training.jam import (
    DEFAULT_SETTINGS,
    _elliptical_polar,
    _mirror_angles,
    jam_model,
    jam_quadrant,
    jampy_direct,
    jampy_signed_v2,
)

from skinn_jax.grid import quadrant_coordinates


def format1_quadrant(model, x, y):
    """v_rms (km/s) the format-1 way: the same polar grid, bicubic spline of the clipped v2."""
    s = DEFAULT_SETTINGS
    radius, angle = _elliptical_polar(x, y, model.q_light)
    r_in = max(0.01, float(np.min(radius[radius >= 0.01])))
    log_r = np.linspace(np.log(0.95 * r_in), np.log(1.01 * radius.max()), s.n_radii)
    angles = np.linspace(0, np.pi / 2, s.n_angles)
    lr, an = np.meshgrid(log_r, angles, indexing="ij")
    gx, gy = np.exp(lr) * np.cos(an), np.exp(lr) * np.sin(an) * model.q_light
    v2 = jampy_signed_v2(model, gx.ravel(), gy.ravel()).reshape(lr.shape)
    ext_angles, ext_v2 = _mirror_angles(angles, np.clip(v2, 0, None))
    spline = RectBivariateSpline(log_r, ext_angles, ext_v2, kx=3, ky=3)
    u = spline(np.log(np.maximum(radius, r_in)), angle, grid=False)
    return np.sqrt(np.clip(u, 0, None)), radius > r_in


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/zero_boundary_truth.md"))
    args = ap.parse_args()
    data = DataSet("data/test").load(("params", "n_zero"))
    x, y = (c.ravel() for c in quadrant_coordinates())
    rng = np.random.default_rng(0)
    lines = [
        "# JAM truth next to the zero boundary",
        "",
        f"`python benchmarks/bench_zero_boundary_truth.py --maps {args.maps}`: the test maps with "
        "the most zero-valued pixels; errors against jampy evaluated directly at 60 pixels where "
        "either truth is below 20 km/s and 60 random pixels (km/s).",
        "",
        "| test map | zero pixels | format 2: median / max | format 1: median / max "
        "| full-map mean \\|format 2 - format 1\\| |",
        "|---|---|---|---|---|",
    ]
    for i in np.argsort(data["n_zero"])[::-1][: args.maps]:
        p = data["params"][i]
        model = jam_model(p)
        new = jam_quadrant(p).vrms.ravel()
        old, outside_core = format1_quadrant(model, x, y)
        near = np.flatnonzero(((new < 20) | (old < 20)) & outside_core)
        pick = np.concatenate(
            [rng.choice(near, 60, replace=False), rng.choice(np.flatnonzero(outside_core), 60)]
        )
        ref = jampy_direct(model, x[pick], y[pick])
        e_new, e_old = np.abs(new[pick] - ref), np.abs(old[pick] - ref)
        lines.append(
            f"| {i} | {data['n_zero'][i]} | {np.median(e_new):.3f} / {e_new.max():.2f} | "
            f"{np.median(e_old):.3f} / {e_old.max():.2f} | {np.mean(np.abs(new - old)):.2f} |"
        )
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
