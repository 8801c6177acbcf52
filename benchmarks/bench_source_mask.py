"""The lensed source ray-shot only where it matters (issue 20): cost and error, side by side.

For mock systems (test-set parameters, as the study), the potential + gradient of the inference
model (float64, after compilation, median of ``--repeats``) with the imaging as the fits use it
(the source ray-shot on every sub-pixel) and with ``ImagingModel(source_pixels=source_mask(...))``
(the source only on the pixels where, at the truth, the PSF-convolved source exceeds
``--threshold`` x noise, dilated by ``--dilation`` pixels); prints both, their ratio, the masked
fraction, and the change of the potential at the truth and at a random point near it (the largest
per-pixel change of the image at the truth too, in σ).

Run: ``taskset -c 0 python benchmarks/bench_source_mask.py --systems 1 4 [--modes joint lensing]``
(needs ``data/test``: ``skinn-jax generate --n 1000 --seed 3 --out data/test``).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from skinn_jax.inference.data import SystemData  # noqa: E402
from skinn_jax.inference.fit import make_potential  # noqa: E402
from skinn_jax.inference.fit.map import time_evaluation  # noqa: E402
from skinn_jax.inference.kinematics import load_emulator  # noqa: E402
from skinn_jax.inference.lensing.imaging import ImagingModel, source_mask  # noqa: E402
from skinn_jax.inference.mocks.fit import mock_setup  # noqa: E402
from skinn_jax.inference.mocks.system import make_mock_system  # noqa: E402
from skinn_jax.inference.mocks.truth import truth_values  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["joint", "lensing"])
    parser.add_argument("--threshold", type=float, default=1e-3)
    parser.add_argument("--dilation", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    emulator = load_emulator("pca64s")
    rows = []
    for k in args.systems:
        system = make_mock_system(k, params_source="test")
        data = SystemData.from_mock(system)
        for mode in args.modes:
            setup = mock_setup(system, data, mode, emulator)
            truths = truth_values(system, mode, setup.priors)
            img = setup.imaging
            mask = source_mask(img, system.truth.lens, data.imaging.noise_map,
                               args.threshold, args.dilation)  # fmt: skip
            masked_img = ImagingModel(img.settings, img.windows, source_pixels=mask)
            masked = dataclasses.replace(setup, imaging=masked_img)
            pots = {name: make_potential(data, s, truths) for name, s in
                    (("every pixel", setup), ("masked", masked))}  # fmt: skip
            z0 = jnp.asarray(pots["every pixel"].z0)
            ms = {name: 1e3 * time_evaluation(p.value_and_grad, z0, args.repeats)
                  for name, p in pots.items()}  # fmt: skip
            # the potential's change at the truth and at a random point 0.05 away in every
            # unconstrained coordinate
            noise = np.asarray(data.imaging.noise_map)
            p_true = system.truth.lens
            full_img = np.asarray(img.extended_image(p_true))
            mask_img = np.asarray(masked_img.extended_image(p_true))
            worst = float(np.max(np.abs(full_img - mask_img) / noise))
            dchi2 = float(pots["masked"].potential(z0) - pots["every pixel"].potential(z0))
            rng = np.random.default_rng(k)
            z1 = z0 + 0.05 * jnp.asarray(rng.standard_normal(z0.shape))
            dchi2_off = float(pots["masked"].potential(z1) - pots["every pixel"].potential(z1))
            rows.append((k, mode, mask.mean(), ms["every pixel"], ms["masked"], dchi2, dchi2_off,
                         worst))  # fmt: skip
            print(f"system {k} {mode}: mask {mask.mean():.1%} of the pixels; potential + "
                  f"gradient {ms['every pixel']:.1f} -> {ms['masked']:.1f} ms "
                  f"({ms['every pixel'] / ms['masked']:.2f}x); Δpotential at truth {dchi2:+.2e}, "
                  f"off truth {dchi2_off:+.2e}; worst pixel {worst:.1e} σ", flush=True)  # fmt: skip
    print("\n| system | mode | masked pixels | every pixel (ms) | masked (ms) | ratio | "
          "Δ potential at truth | off truth | worst pixel (σ) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for k, mode, frac, a, b, d0, d1, w in rows:
        print(f"| {k} | {mode} | {frac:.0%} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {d0:+.1e} | "
              f"{d1:+.1e} | {w:.1e} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
