"""Benchmark the kinematic likelihood in the paper's setting, against the same likelihood on jampy.

Setting (paper Sec. 5.2): a seeded mock (``inference.mock_kinematics``, seed 6: 34 Voronoi bins)
of 55 x 55 spaxels of 0.05", Gaussian PSF of FWHM 0.1", supersampling 5 (unless changed).

Timed, in one run, after jit warm-up, median of ``--repeats`` calls:

* ``log L``: ``jax.jit(KinematicLikelihood(data, field))`` at the true parameters;
* ``log L + grad``: ``jax.jit(jax.value_and_grad(...))`` with respect to all 13 parameters;
* ``jampy``: the same forward model and likelihood with the field recomputed from JAM truth per
  evaluation (``training.jam.jam_vrms`` -- MGEs, jampy on its polar grid, spline -- at every
  needed sub-pixel), i.e. what a jampy-based likelihood costs; its gradient needs at least 14
  evaluations (one-sided finite differences), which is the number the ratio uses.

``--field`` picks the JAX field: ``analytic`` (a cheap smooth function: the cost of the forward
model itself), ``jam`` (JAM truth tabulated at the true parameters and interpolated in JAX: a table
lookup), ``emulator`` (``skinn_jax.Emulator.load("pca64s").vrms_at``; skipped with a message if the
emulator or its checkpoint is not available) or ``untrained`` (an untrained network of the
emulator's default architecture, ``skinn_jax.networks.NetworkConfig()``: the emulator's cost before
trained weights exist). ``emulator`` and ``untrained`` evaluate ``vrms_at`` at every sub-pixel;
``emulator-map`` and ``untrained-map`` evaluate ``vrms_quadrant`` once and interpolate the map,
refined by ``vrms_at`` on an 85 x 85 central table (:func:`skinn_jax.forward.field_from_quadrant`).
Both float32 and float64 are timed.

Run: ``python benchmarks/bench_likelihood.py [--field analytic|jam|emulator|emulator-map|untrained|
untrained-map] [--supersampling 5] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from skinn_jax.training.jam import jam_vrms  # noqa: E402

from skinn_jax.cosmology import FIDUCIAL, vrms_distance_factor  # noqa: E402
from skinn_jax.forward import (  # noqa: E402
    SkyParams,
    binned_vrms_from_fields,
    field_from_quadrant,
    galaxy_frame_points,
    lens_light,
)
from skinn_jax.inference.mocks.kinematics import (  # noqa: E402
    field_for_forward_model,
    make_mock_kinematics,
)
from skinn_jax.likelihood import KinematicLikelihood, gaussian_log_likelihood  # noqa: E402

SEED = 6


def analytic_field(p, x, y):
    """Smooth symmetric stand-in field (km/s) that depends on all eight parameters."""
    theta_e, gamma, q_m, q_l, r_s, n_s, beta, inc = (p[i] for i in range(8))
    m2 = x**2 + (y / q_m) ** 2
    amplitude = 180.0 * theta_e**0.5 * (1.0 + 0.3 * (gamma - 2.0)) * (1.0 + 0.2 * beta)
    amplitude = amplitude * jnp.sin(inc * math.pi / 180.0) ** 0.3
    amplitude = amplitude * (1.0 + 0.05 * (n_s - 3.0)) * (1.0 + 0.1 * (q_l - 0.8))
    return amplitude * (0.4 + m2 / (0.3 * r_s**2 + m2)) ** 0.5


def load_emulator():
    """``Emulator.load("pca64s")`` (the paper box of the stand-in fields), or None (a message)."""
    try:
        import skinn_jax

        emulator_class = getattr(skinn_jax, "Emulator", None)
        if emulator_class is None:
            from skinn_jax.emulator import Emulator as emulator_class
        emu = emulator_class.load("pca64s")
    except Exception as err:  # noqa: BLE001 - any failure means "not available yet"
        print(f"emulator not available ({type(err).__name__}: {err}); skipping --field emulator")
        return None
    return emu


def untrained_emulator():
    """An untrained network of the shipped architecture (default config, seed 0)."""
    from skinn_jax.emulator import Emulator
    from skinn_jax.networks import NetworkConfig, make_network

    config = NetworkConfig()
    p_norm = jnp.zeros((8,), jnp.float32)
    xy = jnp.zeros((4,), jnp.float32)
    variables = make_network(config).init(jax.random.PRNGKey(0), p_norm, xy, xy)
    return Emulator(config, variables)


def median_time(fn, repeats: int) -> float:
    """Median wall time (s) of ``fn()`` (which must block until done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_jax(mock, field, dtype, repeats: int, supersampling: int) -> dict:
    """Compile and time log L and its 13-parameter gradient."""
    lik = KinematicLikelihood(mock.data, field, supersampling=supersampling)
    params = jnp.asarray(mock.params, dtype=dtype)
    sky = SkyParams(*(jnp.asarray(v, dtype=dtype) for v in mock.sky))
    value = jax.jit(lik)
    value_and_grad = jax.jit(jax.value_and_grad(lik, argnums=(0, 1)))
    t0 = time.perf_counter()
    jax.block_until_ready(value(params, sky))
    jax.block_until_ready(value_and_grad(params, sky))
    compile_s = time.perf_counter() - t0
    t_value = median_time(lambda: jax.block_until_ready(value(params, sky)), repeats)
    t_grad = median_time(lambda: jax.block_until_ready(value_and_grad(params, sky)), repeats)
    log_l, grads = value_and_grad(params, sky)
    finite = bool(
        np.all(np.isfinite(np.asarray(grads[0]))) and all(np.isfinite(g) for g in grads[1])
    )
    return dict(compile=compile_s, value=t_value, grad=t_grad, log_l=float(log_l), finite=finite,
                n_points=lik.forward.n_points)  # fmt: skip


def jampy_log_likelihood(lik: KinematicLikelihood, params: np.ndarray, sky: SkyParams) -> float:
    """The same likelihood with JAM truth recomputed at every needed sub-pixel (NumPy + jampy)."""
    model = lik.forward
    with jax.enable_x64(True):
        x_gal, y_gal = (np.asarray(a) for a in galaxy_frame_points(model, sky))
        needed = np.ones(model.point_shape, bool) if model.needed is None else model.needed
        vrms = np.zeros(model.point_shape)
        vrms[needed] = jam_vrms(params, x_gal[needed], y_gal[needed], FIDUCIAL)
        light = lens_light(model, jnp.asarray(params), sky, jnp.asarray(x_gal), jnp.asarray(y_gal))
        pred = binned_vrms_from_fields(model, light, jnp.asarray(vrms), sky)
        pred = pred * vrms_distance_factor(sky.D_dt, sky.D_d, lik.data.z_d)
        r = np.asarray(pred) - lik.data.vrms
        return float(gaussian_log_likelihood(r, lik.data.cholesky))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--field",
        choices=["analytic", "jam", "emulator", "emulator-map", "untrained", "untrained-map"],
        default="analytic",
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--jampy-repeats", type=int, default=3)
    parser.add_argument("--supersampling", type=int, default=5)
    args = parser.parse_args()

    mock = make_mock_kinematics(SEED)
    machine = platform.processor() or platform.machine()
    print(f"# bench_likelihood: {machine}, {os.cpu_count()} cores visible, "
          f"jax {jax.__version__} on {jax.default_backend()}")  # fmt: skip
    print(f"mock seed {SEED}: {mock.data.grid.shape} spaxels of {mock.data.grid.pixel_scale}\", "
          f"PSF FWHM {mock.data.psf.fwhm}\", {mock.data.n_bins} bins, "
          f"supersampling {args.supersampling}")  # fmt: skip

    with jax.enable_x64(True):
        lik64 = KinematicLikelihood(mock.data, analytic_field, supersampling=args.supersampling)
        if args.field == "analytic":
            field = analytic_field
        elif args.field == "jam":
            field = field_for_forward_model(lik64.forward, mock.params)
        else:
            emu = untrained_emulator() if args.field.startswith("untrained") else load_emulator()
            if emu is None:
                return
            # Emulator.grid_features caches lazily; fill the cache eagerly, outside any trace.
            emu.grid_features()
            field = (
                field_from_quadrant(emu.vrms_quadrant)
                if args.field.endswith("-map")
                else (emu.vrms_at)
            )

    results = {}
    for name, x64, dtype in (("float32", False, jnp.float32), ("float64", True, jnp.float64)):
        with jax.enable_x64(x64):
            results[name] = time_jax(mock, field, dtype, args.repeats, args.supersampling)
        r = results[name]
        print(f"{args.field:>8s} {name}: {r['n_points']} field points; "
              f"compile {r['compile']:.2f} s; "
              f"log L {1e3 * r['value']:.2f} ms; log L + grad(13) {1e3 * r['grad']:.2f} ms; "
              f"log L = {r['log_l']:.3f}; grads finite: {r['finite']}")  # fmt: skip

    sky = SkyParams(*mock.sky)
    jampy_log_likelihood(lik64, mock.params, sky)  # warm-up (imports, MGE table)
    t_jampy = median_time(lambda: jampy_log_likelihood(lik64, mock.params, sky), args.jampy_repeats)
    log_l_jampy = jampy_log_likelihood(lik64, mock.params, sky)
    print(f"   jampy float64: log L {1e3 * t_jampy:.0f} ms (log L = {log_l_jampy:.3f}); gradient "
          f">= 14 evaluations = {14 * t_jampy:.1f} s")  # fmt: skip
    for name, r in results.items():
        print(f"ratio jampy / {args.field} {name}: log L {t_jampy / r['value']:.0f}x, "
              f"log L + grad {14 * t_jampy / r['grad']:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
