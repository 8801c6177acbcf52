"""Benchmark the JAM truth generator: speed against the plain approach, and accuracy settings.

For the same random parameter vectors (seed 777, from the training box), in one run on one core:

* ``fast``: this project's generator (tabulated MGE dispersions + NNLS, 28 x 7 polar grid with a
  mirrored bicubic spline) -- ``training.jam.jam_quadrant``;
* ``plain``: one checked ``mge_fit_1d`` per profile (20 Gaussians, CONVENTIONS §3 ranges) and a
  plain ``jam_axi_proj`` call on the 276 x 276 quadrant with jampy's own interpolation
  (``nrad=60, nang=20``);
* ``tight grid``: the fast pipeline with the polar grid doubled (56 x 14);
* ``tight MGE``: the fast grid on much tighter expansions (light: mge_fit_1d with 36 Gaussians
  per map; mass: 9 log-spaced dispersions per decade with NNLS amplitudes, ~1e-6);
* ``direct``: jampy evaluated exactly at 300 random pixels per map (no interpolation);
* ``plain-MGE``: the fast grid on plain mge_fit_1d expansions (20 Gaussians).

Run: ``python benchmarks/bench_generator.py [--n 10]``; writes ``docs/benchmarks/generator.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np  # noqa: E402
from skinn_jax.training import mge  # noqa: E402
from skinn_jax.training.jam import (  # noqa: E402
    DEFAULT_SETTINGS,
    JamModel,
    JamSettings,
    jam_model,
    jam_quadrant,
    jam_vrms_squared_clipped,
    jampy_direct,
)

from skinn_jax.grid import quadrant_coordinates  # noqa: E402
from skinn_jax.params import sample_params  # noqa: E402


def tight_mge_model(p: np.ndarray) -> JamModel:
    """The same JamModel with much tighter expansions of light and mass."""
    base = jam_model(p)
    gamma, r_sersic, n_sersic = p[1], p[4], p[5]
    radii = np.geomspace(
        mge.LIGHT_FIT_INNER_ARCSEC, mge.light_fit_outer_radius(r_sersic, n_sersic), 600
    )
    light = lambda r: mge.sersic_shape(r / r_sersic, n_sersic)  # noqa: E731
    _, light_peak, light_sigma = mge._best_direct_fit(
        radii, light, np.geomspace(0.01, 8, 400), (36,)
    )
    radii = np.geomspace(*mge.MASS_FIT_RANGE_ARCSEC, 600)
    sigma = np.geomspace(0.005, 300.0, int(9 * np.log10(300 / 0.005)) + 1)
    mass_peak = mge.nnls_amplitudes(radii, mge.cored_power_law_shape(radii, gamma), sigma)
    keep = mass_peak > 0
    scale = base.surf_mass.sum() / mge.mass_mge(gamma).peak.sum()
    return base._replace(
        surf_light=light_peak,
        sigma_light=light_sigma,
        surf_mass=mass_peak[keep] * scale,
        sigma_mass=sigma[keep],
    )


def plain_quadrant(p: np.ndarray) -> np.ndarray:
    """The plain reference: per-map mge_fit_1d + jam_axi_proj(nrad=60, nang=20) on all pixels."""
    from jampy.axi.jam_axi_proj import jam_axi_proj

    model = jam_model(p, plain_mge=True)
    x, y = quadrant_coordinates()
    x = x.ravel().copy()
    y = y.ravel()
    x[(x == 0) & (y == 0)] = 1e-4
    kl, km = model.surf_light.size, model.surf_mass.size
    with contextlib.redirect_stdout(io.StringIO()):
        jam = jam_axi_proj(
            model.surf_light, model.sigma_light, np.full(kl, model.q_light),
            model.surf_mass, model.sigma_mass, np.full(km, model.q_mass),
            model.inclination_deg, 0.0, model.distance_mpc, x, y, align="cyl", moment="zz",
            beta=np.full(kl, model.beta_z), plot=False, quiet=True, nrad=60, nang=20,
        )  # fmt: skip
    return jam.model.reshape(276, 276)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10, help="number of maps")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/generator.md"))
    args = ap.parse_args()
    rng = np.random.default_rng(777)
    params = sample_params(rng, args.n)
    jam_quadrant(params[0])  # warm-up: imports, table load
    x, y = quadrant_coordinates()
    rows = []
    for i, p in enumerate(params):
        t = time.process_time()
        fast = jam_quadrant(p)
        t_fast = time.process_time() - t
        t = time.process_time()
        plain = plain_quadrant(p)
        t_plain = time.process_time() - t
        tight = jam_quadrant(p, settings=JamSettings(n_radii=56, n_angles=14)).vrms
        tight_mge = np.sqrt(jam_vrms_squared_clipped(tight_mge_model(p), x, y, DEFAULT_SETTINGS))
        plain_mge = jam_quadrant(p, plain_mge=True).vrms
        idx = np.random.default_rng(i).choice(x.size, 300, replace=False)
        direct = jampy_direct(jam_model(p), x.ravel()[idx], y.ravel()[idx])
        d_tight = np.abs(fast.vrms - tight)
        d_direct = np.abs(fast.vrms.ravel()[idx] - direct)
        d_plain = np.abs(fast.vrms - plain)
        d_mge = np.abs(fast.vrms - plain_mge)
        d_tight_mge = np.abs(fast.vrms - tight_mge)
        rows.append(
            (
                t_fast,
                t_plain,
                np.median(d_tight),
                d_tight.max(),
                np.median(d_direct),
                d_direct.max(),
                np.median(d_plain),
                np.median(d_mge),
                fast.n_zero,
                fast.n_light,
                fast.n_mass,
                np.median(d_tight_mge),
                d_tight_mge.max(),
            )
        )
        print(
            f"map {i}: fast {t_fast:.2f} s, plain {t_plain:.2f} s, ratio {t_plain / t_fast:.1f}; "
            f"|fast-tight| median {rows[-1][2]:.4f} max {rows[-1][3]:.3f}; |fast-direct| "
            f"median {rows[-1][4]:.4f} max {rows[-1][5]:.3f}; |fast-plain| median "
            f"{rows[-1][6]:.3f}; |fast-plainMGE| median {rows[-1][7]:.4f}; |fast-tightMGE| median "
            f"{rows[-1][11]:.4f} max {rows[-1][12]:.3f} km/s",
            flush=True,
        )
    a = np.array(rows)
    lines = [
        "# JAM generator benchmark",
        "",
        f"`python benchmarks/bench_generator.py --n {args.n}` (one core, CPU time per 276 x 276 "
        "quadrant, same parameter vectors for every method).",
        "",
        "| quantity | median | max |",
        "|---|---|---|",
        f"| fast generator, s/map | {np.median(a[:, 0]):.3f} | {a[:, 0].max():.3f} |",
        f"| plain mge_fit_1d + jam_axi_proj (nrad 60, nang 20), s/map | {np.median(a[:, 1]):.3f} "
        f"| {a[:, 1].max():.3f} |",
        f"| speed-up (plain / fast), per map | {np.median(a[:, 1] / a[:, 0]):.1f} | "
        f"{(a[:, 1] / a[:, 0]).max():.1f} |",
        f"| per-map median \\|fast - tight grid (56 x 14)\\|, km/s | {np.median(a[:, 2]):.4f} | "
        f"{a[:, 2].max():.4f} |",
        f"| per-map max \\|fast - tight\\|, km/s | {np.median(a[:, 3]):.3f} | "
        f"{a[:, 3].max():.3f} |",
        f"| per-map median \\|fast - tight MGE\\|, km/s | {np.median(a[:, 11]):.4f} | "
        f"{a[:, 11].max():.4f} |",
        f"| per-map max \\|fast - tight MGE\\|, km/s | {np.median(a[:, 12]):.3f} | "
        f"{a[:, 12].max():.3f} |",
        f"| per-map median \\|fast - direct jampy\\| (300 px), km/s | {np.median(a[:, 4]):.4f} | "
        f"{a[:, 4].max():.4f} |",
        f"| per-map max \\|fast - direct jampy\\|, km/s | {np.median(a[:, 5]):.3f} | "
        f"{a[:, 5].max():.3f} |",
        f"| per-map median \\|fast - plain\\|, km/s | {np.median(a[:, 6]):.3f} | "
        f"{a[:, 6].max():.3f} |",
        f"| per-map median \\|tabulated MGE - plain MGE\\| (same grid), km/s | "
        f"{np.median(a[:, 7]):.4f} | {a[:, 7].max():.4f} |",
        f"| Gaussians light / mass | {np.median(a[:, 9]):.0f} / {np.median(a[:, 10]):.0f} | "
        f"{a[:, 9].max():.0f} / {a[:, 10].max():.0f} |",
        "",
        f"Maps with zero-valued pixels: {int(np.sum(a[:, 8] > 0))} of {len(a)}.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
