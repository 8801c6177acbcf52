"""Cropping the forward model to the used spaxels: same prediction, lower cost (issue 19).

A 43 x 43 KCWI-format cube (0.1457" spaxels, RA to the left, 0.96" FWHM Gaussian seeing) with
41 bins in the central 3" (:func:`skinn_jax.inference.data.kcwi_example_layout`), the shipped
paper-space emulator ``pca64s``, float64. For each sampling of the forward model, the uncropped
version evaluates every spaxel of the cube (``sampling="points"``: ``crop=False``;
``"centred"``, which always works on the bounding box of the used spaxels: the unused spaxels
put into one extra bin, i.e. what it would cost to evaluate the whole cube), and the cropped one
only the bounding box of the used spaxels plus the PSF margin. (For ``"centred"`` the whole
cube plus its 5-sigma PSF margin reaches 8.2" from the centre, beyond the emulator's 5.5" field,
so only the cropped model exists; ``"points"`` requests the field of unneeded sub-pixels at the
centre, so its whole-cube model exists and is the "before" of this benchmark.) Reported: the
largest difference of the 41 binned v_rms, the number of field evaluations, and the median
time of a jitted prediction and of its gradient (all 8 + 5 parameters).

Run: ``python benchmarks/bench_cropping.py [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from profile_model_eval import median_time_ms  # noqa: E402  (benchmarks/ is on the path)

import skinn_jax  # noqa: E402
from skinn_jax.cosmology import FIDUCIAL  # noqa: E402
from skinn_jax.forward import SkyParams  # noqa: E402
from skinn_jax.ifu import PSF  # noqa: E402
from skinn_jax.inference.data import kcwi_example_layout, kinematic_data  # noqa: E402
from skinn_jax.likelihood import KinematicLikelihood  # noqa: E402

PARAMS = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.2, 0.15, 70.0])
SKY = SkyParams(0.4, 0.05, -0.03, FIDUCIAL.D_dt, FIDUCIAL.D_d)


def likelihoods(emu, sampling: str):
    """(cropped, uncropped) likelihoods of the KCWI-format layout for one sampling."""
    grid, bins = kcwi_example_layout(center=(0.05, -0.03))
    n = int(bins.max()) + 1

    def make(bin_map, crop):
        m = int(bin_map.max()) + 1
        data = kinematic_data(grid, bin_map, np.full(m, 250.0), np.eye(m) * 100.0,
                              PSF.gaussian(0.96), z_d=0.5, kind="vrms")  # fmt: skip
        return KinematicLikelihood(data, emu.vrms_at, sampling=sampling, crop=crop)

    if sampling == "points":
        return make(bins, True), make(bins, False), n
    every_spaxel = np.where(bins >= 0, bins, n)  # the rest of the cube as one extra bin
    return make(bins, True), make(every_spaxel, True), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    emu = skinn_jax.Emulator.load("pca64s")
    params, sky = jnp.asarray(PARAMS), SkyParams(*(jnp.asarray(v) for v in SKY))
    print('43 x 43 KCWI-format cube, 0.1457" spaxels, RA to the left, 0.96" FWHM, 41 bins in '
          'the central 3"; emulator pca64s, float64, ' f"{jax.devices()[0].platform}")  # fmt: skip
    print(
        "| sampling | points (cropped / whole cube) | max abs diff, km/s | prediction, ms "
        "(cropped / whole, ratio) | gradient, ms (cropped / whole, ratio) |"
    )
    print("|---|---|---|---|---|")
    for sampling in ("points", "centred"):
        try:
            pair = likelihoods(emu, sampling)
        except ValueError:  # the whole cube plus the PSF margin exceeds the field
            lik = KinematicLikelihood(likelihoods(emu, "points")[0].data, emu.vrms_at,
                                      sampling=sampling)  # fmt: skip
            t = median_time_ms(jax.jit(lik.predict), (params, sky), args.repeat)
            print(f"| {sampling} | {lik.forward.n_points} / whole cube beyond the field | - | "
                  f"{t:.1f} / - | - |")  # fmt: skip
            continue
        cropped, whole, n = pair
        times, grads, preds = [], [], []
        for lik in (cropped, whole):
            predict = jax.jit(lik.predict)
            gradient = jax.jit(jax.grad(lambda p, s, lik=lik: jnp.sum(lik.predict(p, s) ** 2),
                                        argnums=(0, 1)))  # fmt: skip
            preds.append(np.asarray(predict(params, sky))[:n])
            times.append(median_time_ms(predict, (params, sky), args.repeat))
            grads.append(median_time_ms(gradient, (params, sky), args.repeat))
        diff = float(np.max(np.abs(preds[0] - preds[1])))
        print(
            f"| {sampling} | {cropped.forward.n_points} / {whole.forward.n_points} | "
            f"{diff:.1e} | {times[0]:.1f} / {times[1]:.1f} ({times[1] / times[0]:.1f}x) | "
            f"{grads[0]:.1f} / {grads[1]:.1f} ({grads[1] / grads[0]:.1f}x) |"
        )


if __name__ == "__main__":
    main()
