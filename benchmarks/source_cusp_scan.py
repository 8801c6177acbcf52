"""Is the imaging χ² smooth in the source position? Its curvature scanned at two softenings.

For mock system ``k`` (lensing set-up, lens at the truth), the χ² of the lensed source alone
against the mock image, and its derivative with respect to ``src_x`` (``jax.grad``), on 201 offsets
of ``src_x`` in ±``--half-width`` arcsec; the curvature is the finite difference of the derivative.
A point-sampled cusp shows as jumps of the curvature between neighbouring offsets (the lens light's
cusp did, before its 0.02″ softening: docs/convergence.md). Printed for the source softening the
model uses (``ImagingSettings.source_core``, 0.005″) and for 0.02″, at the true source size and at
``--small-r``.

Run: ``python benchmarks/source_cusp_scan.py --system 2 [--small-r 0.05] [--half-width 0.01]``
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from skinn_jax.inference.data import SystemData  # noqa: E402
from skinn_jax.inference.lensing.imaging import ImagingModel  # noqa: E402
from skinn_jax.inference.lensing.lens import solved_lens_params  # noqa: E402
from skinn_jax.inference.mocks.fit import mock_setup  # noqa: E402
from skinn_jax.inference.mocks.system import make_mock_system  # noqa: E402
from skinn_jax.inference.mocks.truth import truth_values  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", type=int, default=2)
    parser.add_argument("--small-r", type=float, default=0.05, help="a small source, arcsec")
    parser.add_argument("--half-width", type=float, default=0.01, help="scan half-width, arcsec")
    args = parser.parse_args(argv)
    system = make_mock_system(args.system)
    data = SystemData.from_mock(system)
    setup = mock_setup(system, data, "lensing", None)
    truths = {k: jnp.asarray(v) for k, v in truth_values(system, "lensing").items()}
    lens = solved_lens_params(setup, truths)[0]
    image, noise = jnp.asarray(data.imaging.image), jnp.asarray(data.imaging.noise_map)
    offsets = jnp.linspace(-args.half_width, args.half_width, 201)
    step = float(offsets[1] - offsets[0])
    r_true, n_true = float(lens.src_r), float(lens.src_n)
    print(f"system {args.system}: true src_r {r_true:.3f}″, src_n {n_true:.2f}")
    for core in (setup.imaging.settings.source_core, 0.02):
        model = ImagingModel(dataclasses.replace(setup.imaging.settings, source_core=core))

        def chi2(dx, r, model=model):
            p = lens._replace(src_x=lens.src_x + dx, src_r=r)
            return jnp.sum(((image - model.extended_image(p, lens_light=False)) / noise) ** 2)

        grad = jax.jit(jax.vmap(jax.grad(chi2), in_axes=(0, None)))
        for r in (r_true, args.small_r):
            curvature = np.diff(np.asarray(grad(offsets, r))) / step
            jump = np.abs(np.diff(curvature)).max() / np.abs(np.median(curvature))
            print(
                f"  softening {core:.3f}″, src_r {r:.3f}″: d²χ²/d src_x² median "
                f"{np.median(curvature):.4g} (range {curvature.min():.4g} to "
                f"{curvature.max():.4g}); largest step between neighbours {jump:.2%} of the median"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
