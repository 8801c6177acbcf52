"""Figure: a mock kinematic data set (paper Sec. 5.2) with the forward model's prediction.

Panels: the lens-light image that defines the Voronoi bins (with the bin boundaries); the noisy
binned v_rms data; the model (the likelihood's prediction at the true 13 parameters, with JAM
truth tabulated at the true parameters as the field); and the normalised residual
``(data - model) / sigma``. Bin values are painted onto their spaxels.

Run: ``python benchmarks/plot_mock_kinematics.py [--seed 6] [--out FILE]`` (default
``docs/figures/mock_kinematics.png``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from skinn_jax.forward import SkyParams  # noqa: E402
from skinn_jax.inference.mocks.kinematics import (  # noqa: E402
    field_for_forward_model,
    make_mock_kinematics,
)
from skinn_jax.likelihood import KinematicLikelihood  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bin_edges(bin_map: np.ndarray) -> np.ndarray:
    """Boolean image, True on spaxels next to a different bin (for outlining the bins)."""
    edge = np.zeros(bin_map.shape, dtype=bool)
    edge[:, 1:] |= bin_map[:, 1:] != bin_map[:, :-1]
    edge[1:, :] |= bin_map[1:, :] != bin_map[:-1, :]
    return edge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=6)
    default_out = ROOT / "docs" / "figures" / "mock_kinematics.png"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    mock = make_mock_kinematics(args.seed)
    data = mock.data
    with jax.enable_x64(True):
        lik = KinematicLikelihood(data, lambda p, x, y: 0.0 * x)
        field = field_for_forward_model(lik.forward, mock.params)
        lik = KinematicLikelihood(data, field)
        sky = SkyParams(*mock.sky)
        model = np.asarray(lik.predict(jnp.asarray(mock.params), sky))
        chi2 = float(-2.0 * lik(jnp.asarray(mock.params), sky))
    residual = (data.vrms - model) / mock.sigma

    ny, nx = data.grid.shape
    half = 0.5 * data.grid.pixel_scale
    x, y = data.grid.coordinates()
    extent = (x.min() - half, x.max() + half, y.min() - half, y.max() + half)
    vmin, vmax = np.percentile(np.concatenate([data.vrms, model]), [1, 99])

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4), constrained_layout=True)
    light = np.log10(np.clip(mock.light_observed, 1.0, None))
    im = axes[0].imshow(light, origin="lower", extent=extent, cmap="magma")
    edges = np.ma.masked_where(~bin_edges(data.bin_map), np.ones(data.grid.shape))
    axes[0].imshow(edges, origin="lower", extent=extent, cmap="Greys", vmin=0, vmax=1, alpha=0.6)
    fig.colorbar(im, ax=axes[0], label="log10 electrons per spaxel")
    axes[0].set_title(f"lens light, {data.n_bins} Voronoi bins (S/N 15)")
    panels = [
        (data.bins_to_image(data.vrms), "data v_rms (km/s)", "viridis", (vmin, vmax)),
        (data.bins_to_image(model), "model v_rms (km/s)", "viridis", (vmin, vmax)),
        (data.bins_to_image(residual), "(data - model) / sigma", "RdBu_r", (-3, 3)),
    ]
    for ax, (image, title, cmap, (lo, hi)) in zip(axes[1:], panels, strict=True):
        im = ax.imshow(image, origin="lower", extent=extent, cmap=cmap, vmin=lo, vmax=hi)
        fig.colorbar(im, ax=ax)
        ax.set_title(title)
    axes[3].set_title(f"(data - model) / sigma, chi2 = {chi2:.1f} / {data.n_bins}")
    phi_deg = math.degrees(mock.sky.phi)
    for ax in axes:
        ax.set_xlabel("x (arcsec)")
        ax.plot(mock.sky.center_x, mock.sky.center_y, "+", color="w", ms=8)
        ax.plot(
            mock.sky.center_x + np.array([-1, 1]) * 0.6 * math.cos(mock.sky.phi),
            mock.sky.center_y + np.array([-1, 1]) * 0.6 * math.sin(mock.sky.phi),
            "-", color="w", lw=0.8,
        )  # fmt: skip
    axes[0].set_ylabel("y (arcsec)")
    p = mock.params
    fig.suptitle(
        f"mock seed {args.seed}: theta_E={p[0]:.2f}, gamma={p[1]:.2f}, q_m={p[2]:.2f}, "
        f"q_l={p[3]:.2f}, r_s={p[4]:.2f}, n={p[5]:.2f}, beta_z={p[6]:.2f}, i={p[7]:.1f}; "
        f"phi={phi_deg:.1f} deg, centre=({mock.sky.center_x:.3f}, {mock.sky.center_y:.3f}), "
        f"D_dt={mock.sky.D_dt:.0f}, D_d={mock.sky.D_d:.0f} Mpc",
        fontsize=9,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} (chi2 = {chi2:.1f} for {data.n_bins} bins)")


if __name__ == "__main__":
    main()
