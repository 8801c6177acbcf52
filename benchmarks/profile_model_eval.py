"""Cost of one potential-and-gradient evaluation of the inference model, and of its parts.

For mock system ``k`` (``skinn_jax.inference.mocks.system``; box parameters if there is no test
set) and each mode, the median time of ``value_and_grad`` of NumPyro's potential (what one NUTS
leapfrog step costs), float64 as in the fits, after compilation; then, in joint mode, the value
and gradient of each part alone with respect to the same inputs:

* ``solve_lens``: the Newton solve of the lens equations and its log-Jacobian;
* ``imaging``: χ² of the Herculens image (lens solved once, outside the timing), and of its
  parts: the lens light, the lensed source and the quasar's images;
* ``time delays``: χ² of the delays;
* ``kinematics``: the emulator's kinematic log-likelihood.

``--baseline`` also times, in the same run, the potential with the kinematic forward model the fits
used before the centre-aligned quadrature (point-sampled, 4 sub-pixels per spaxel side) and, in
lensing and joint modes, with the quasar's images drawn over the whole image (before model v6's
windows), and prints old, new and their ratio.

The lensed source is computed inside the mask the fits use (``lensing.imaging.source_mask`` at
the truth, ``FitSettings.source_mask`` and ``source_mask_dilation``); ``--no-source-mask``:
over every pixel.

Run: ``python benchmarks/profile_model_eval.py [--system 1|builtin] [--repeats 30]
[--modes joint ...] [--baseline] [--no-source-mask]`` (pin to one core with ``taskset -c 0`` to
time what one chain of a parallel fit gets).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from skinn_jax.inference.data import SystemData  # noqa: E402
from skinn_jax.inference.fit import FitSettings, make_potential  # noqa: E402
from skinn_jax.inference.kinematics import emulator_params, load_emulator, sky_params  # noqa: E402
from skinn_jax.inference.lensing.imaging import ImagingModel, source_mask  # noqa: E402
from skinn_jax.inference.lensing.lens import solve_lens, solved_lens_params  # noqa: E402
from skinn_jax.inference.mocks.fit import mock_setup  # noqa: E402
from skinn_jax.inference.mocks.system import make_mock_system  # noqa: E402
from skinn_jax.inference.mocks.truth import solver_start_from_truth, truth_values  # noqa: E402
from skinn_jax.inference.model import build_setup  # noqa: E402


def median_time_ms(fn, args, repeats: int) -> float:
    """Median wall time (ms) of ``fn(*args)`` after one compiling call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def masked_setup(setup, system, data):
    """``setup`` with the lensed source computed inside the fits' mask, built at the truth."""
    settings = FitSettings()
    mask = source_mask(
        setup.imaging,
        system.truth.lens,
        data.imaging.noise_map,
        settings.source_mask,
        settings.source_mask_dilation,
    )
    img = setup.imaging
    print(f"  lensed source on {mask.mean():.0%} of the pixels (the fits' mask, at the truth)")
    return dataclasses.replace(setup, imaging=ImagingModel(img.settings, img.windows, mask))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--system", default="1", help="study mock system K, or builtin (fit-mock's system)"
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--modes", nargs="+", default=["joint", "lensing", "kinematics"])
    parser.add_argument("--checkpoint", default="pca64s")
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--no-source-mask", dest="source_mask", action="store_false")
    args = parser.parse_args(argv)

    if args.system == "builtin":
        system = make_mock_system(0, params_source="builtin")
    else:
        system = make_mock_system(int(args.system))
    data = SystemData.from_mock(system)
    emulator = load_emulator(args.checkpoint)
    print(f"system {args.system} ({system.params_source}), {jax.devices()[0].platform}")
    for mode in args.modes:
        setup = mock_setup(system, data, mode, emulator)
        truths = truth_values(system, mode)
        if args.source_mask and setup.imaging is not None:
            setup = masked_setup(setup, system, data)
        pot = make_potential(data, setup, truths)
        z = jnp.asarray(pot.z0)
        t = median_time_ms(pot.value_and_grad, (z,), args.repeats)
        print(f"{mode:>10}: potential + gradient {t:7.1f} ms ({z.size} parameters)")
        if args.baseline and mode != "lensing":
            old = build_setup(
                data,
                mode,
                emulator=emulator,
                solver_start=solver_start_from_truth(system),
                supersampling=4,
                sampling="points",
            )
            pot_old = make_potential(data, old, truths)
            t_old = median_time_ms(pot_old.value_and_grad, (jnp.asarray(pot_old.z0),), args.repeats)
            print(f"{'':>10}  points s=4 (before): {t_old:7.1f} ms; ratio {t_old / t:.2f}x")
        if args.baseline and mode != "kinematics":
            whole = dataclasses.replace(setup, imaging=ImagingModel(setup.imaging.settings))
            pot_old = make_potential(data, whole, truths)
            t_old = median_time_ms(pot_old.value_and_grad, (jnp.asarray(pot_old.z0),), args.repeats)
            print(f"{'':>10}  quasar over the whole image (before): {t_old:7.1f} ms; "
                  f"ratio {t_old / t:.2f}x")  # fmt: skip
        if mode != "joint":
            continue
        values = {k: jnp.asarray(v) for k, v in truths.items()}
        grad_keys = ("gamma", "center_x", "center_y", "ps_x", "ps_y_abc")

        def lens_part(sub, values=values, setup=setup):
            solved, residual, log_jac = solve_lens(setup, {**values, **sub})
            return log_jac + residual

        sub = {k: values[k] for k in grad_keys}
        f = jax.jit(jax.value_and_grad(lens_part))
        print(f"{'':>10}  solve_lens      {median_time_ms(f, (sub,), args.repeats):7.1f} ms")

        lens, derived, _, _ = solved_lens_params(setup, values)
        img = data.imaging

        def imaging_part(lens, setup=setup, img=img):
            model = setup.imaging.model_image(lens)
            return jnp.sum(((jnp.asarray(img.image) - model) / jnp.asarray(img.noise_map)) ** 2)

        f = jax.jit(jax.value_and_grad(imaging_part))
        print(f"{'':>10}  imaging         {median_time_ms(f, (lens,), args.repeats):7.1f} ms")
        model, noise = setup.imaging, jnp.asarray(img.noise_map)
        parts = {
            "lens light": partial(model.extended_image, source=False),
            "lensed source": partial(model.extended_image, lens_light=False),
            "quasar images": model.point_sources_only,
        }
        for name, part in parts.items():
            f = jax.jit(jax.value_and_grad(lambda p, g=part, s=noise: jnp.sum((g(p) / s) ** 2)))
            print(f"{'':>10}    {name:<14}{median_time_ms(f, (lens,), args.repeats):7.1f} ms")

        def delay_part(lens, d_dt, setup=setup, td=data.time_delays):
            d = setup.imaging.time_delays(lens, d_dt)
            return jnp.sum(((d - jnp.asarray(td.delays)) / jnp.asarray(td.sigma)) ** 2)

        f = jax.jit(jax.value_and_grad(delay_part, argnums=(0, 1)))
        d_dt = values["D_dt"]
        print(f"{'':>10}  time delays     {median_time_ms(f, (lens, d_dt), args.repeats):7.1f} ms")

        full = {**values, **derived}  # joint truths hold D_dt and D_d
        em, sky = emulator_params(full), sky_params(full)
        f = jax.jit(jax.value_and_grad(setup.kinematics, argnums=(0, 1)))
        print(f"{'':>10}  kinematics      {median_time_ms(f, (em, sky), args.repeats):7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
