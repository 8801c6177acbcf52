"""Kinematic log L + gradient, today's point-sampled forward model against the centre-aligned one.

Both forward models in one run, float64, the shipped emulator through the fits' map-route field
(``inference.model.EmulatorField`` restricted to the forward model's points), centre box ±0.3"
(the fits' prior), at a lens centre that is not a sample point of either model:

* ``study``: mock system 1's IFU set (55 x 55 spaxels of 0.05", Gaussian PSF FWHM 0.1", 49 bins);
* ``kcwi``: a KCWI-format set (43 x 43 spaxels of 0.1457", RA to the left, Gaussian PSF FWHM 0.96",
  41 bins in the central 3": the central spaxel, then 8, 16 and 16 sectors of the annuli
  0.1-0.55", 0.55-1.0", 1.0-1.5").

Printed per set: the median time of ``log L`` and of ``log L`` + its gradient with respect to all
13 parameters (after compilation) for ``points`` at s = 5 (today's default) and ``centred`` at its
default lattice, the ratio, and each model's largest per-bin difference (km/s) from a converged
reference (``centred`` at s = 8; ``--check`` also compares it with ``points`` at s = 16, slow).

Run: ``taskset -c 0 python benchmarks/bench_kinematics_speed.py [--repeats 30]
[--sets study kcwi]``.
"""

from __future__ import annotations

import argparse
import os

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from profile_model_eval import median_time_ms  # noqa: E402  (benchmarks/ is on the path)

from skinn_jax.forward import CenterBox, SkyParams  # noqa: E402
from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid  # noqa: E402
from skinn_jax.inference.data import SystemData  # noqa: E402
from skinn_jax.inference.kinematics import emulator_field, load_emulator  # noqa: E402
from skinn_jax.inference.mocks.system import make_mock_system  # noqa: E402
from skinn_jax.likelihood import KinematicLikelihood  # noqa: E402

PARAMS = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.5, 0.15, 70.0])
SKY = SkyParams(0.6, 0.0123, -0.0071, 2700.0, 1250.0)
CENTER_BOX = CenterBox(-0.3, 0.3, -0.3, 0.3)


def kcwi_data() -> KinematicData:
    """The KCWI-format set (see module docstring), data = 250 km/s +- 10 km/s per bin."""
    grid = SpaxelGrid.regular((43, 43), 0.1457, flip_ra=True, center=(0.03, -0.02))
    x, y = grid.coordinates()
    r, angle = np.hypot(x - 0.03, y + 0.02), np.arctan2(y + 0.02, x - 0.03)
    bins = np.full(grid.shape, -1)
    bins[r < 0.1] = 0
    first = 1
    for r0, r1, n in [(0.1, 0.55, 8), (0.55, 1.0, 16), (1.0, 1.5, 16)]:
        ring = (r >= r0) & (r < r1)
        sector = np.floor((angle + np.pi) / (2 * np.pi) * n).astype(int) % n
        bins[ring] = first + sector[ring]
        first += n
    return KinematicData.diagonal(grid, bins, np.full(first, 250.0), np.full(first, 10.0),
                                  PSF.gaussian(0.96))  # fmt: skip


def study_data() -> KinematicData:
    """Mock system 1's IFU set."""
    return SystemData.from_mock(make_mock_system(1)).kinematics


def likelihood(data, field, **options) -> KinematicLikelihood:
    lik = KinematicLikelihood(data, field, center_box=CENTER_BOX, **options)
    lik.vrms_at = field.for_forward_model(lik.forward)
    return lik


def timings(lik, repeats: int) -> tuple[float, float]:
    params = jnp.asarray(PARAMS)
    sky = SkyParams(*(jnp.asarray(v) for v in SKY))
    value = jax.jit(lik)
    both = jax.jit(jax.value_and_grad(lik, argnums=(0, 1)))
    return median_time_ms(value, (params, sky), repeats), median_time_ms(
        both, (params, sky), repeats
    )


def prediction(lik) -> np.ndarray:
    return np.asarray(jax.jit(lik.predict)(jnp.asarray(PARAMS), SKY))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sets", nargs="+", default=["study", "kcwi"])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    field = emulator_field(load_emulator())
    print(f"# jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} cores visible, "
          f"affinity {sorted(os.sched_getaffinity(0))}, float64")  # fmt: skip
    for name in args.sets:
        data = kcwi_data() if name == "kcwi" else study_data()
        old = likelihood(data, field, sampling="points", supersampling=5)
        new = likelihood(data, field, sampling="centred")
        reference = prediction(likelihood(data, field, sampling="centred", supersampling=8))
        t_old, t_new = timings(old, args.repeats), timings(new, args.repeats)
        err_old = np.max(np.abs(prediction(old) - reference))
        err_new = np.max(np.abs(prediction(new) - reference))
        print(f"{name}: {data.grid.shape} spaxels of {data.grid.pixel_scale:.4f}\", PSF "
              f"{data.psf.fwhm}\", {data.n_bins} bins")  # fmt: skip
        if args.check:
            check = prediction(likelihood(data, field, sampling="points", supersampling=16))
            print(f"  reference (centred s=8) vs points s=16: "
                  f"max {np.max(np.abs(check - reference)):.4f} km/s")  # fmt: skip
        print(f"  points  s={old.forward.supersampling} ({old.forward.n_points:6d} points): "
              f"log L {t_old[0]:6.2f} ms, log L + grad {t_old[1]:6.2f} ms, "
              f"max |bin - reference| {err_old:.4f} km/s")  # fmt: skip
        print(f"  centred s={new.forward.supersampling} ({new.forward.n_points:6d} points): "
              f"log L {t_new[0]:6.2f} ms, log L + grad {t_new[1]:6.2f} ms, "
              f"max |bin - reference| {err_new:.4f} km/s")  # fmt: skip
        print(f"  ratio (points / centred): log L {t_old[0] / t_new[0]:.1f}x, "
              f"log L + grad {t_old[1] / t_new[1]:.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
