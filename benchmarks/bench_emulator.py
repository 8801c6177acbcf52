"""Emulator speed on this machine (its CPU, or the GPU JAX finds), beside the jampy generator.

* full 551 x 551 map: ``Emulator.vrms_map`` (jitted, one map; and batched with vmap) against
  ``training.jam.jam_quadrant`` + mirroring (the generator's full map), for the same parameters;
* ``vrms_at`` and its gradient with respect to the eight parameters on 110 x 110 points (the
  kinematic likelihood's supersampled 55 x 55 grid).

Run: ``python benchmarks/bench_emulator.py [--checkpoint default] [--n-jam 10]
[--reference pca64s]``; writes ``docs/benchmarks/emulator_speed.md``. With ``--reference`` the
same timings of a second checkpoint are measured in the same run and reported as ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from skinn_jax.training.jam import jam_quadrant

from skinn_jax.emulator import Emulator
from skinn_jax.grid import mirror_quadrant


def _time(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` (which must block) over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--n-jam", type=int, default=10, help="JAM maps to time")
    ap.add_argument("--reference", default=None, help="second checkpoint timed in the same run")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/emulator_speed.md"))
    args = ap.parse_args()
    emu = Emulator.load(args.checkpoint)
    params = emu.space.sample(np.random.default_rng(99), max(args.n_jam, 64))
    t_jam = [
        _time(lambda p=p: mirror_quadrant(jam_quadrant(p).vrms), 1) for p in params[: args.n_jam]
    ]
    t_map, t_batch, t_at, t_grad = emulator_timings(emu, params)
    reference = ""
    if args.reference:
        ref = Emulator.load(args.reference)
        r_map, _, r_at, r_grad = emulator_timings(
            ref, ref.space.sample(np.random.default_rng(99), 64)
        )
        reference = (
            f"\n\nSame run, reference `{args.reference}`: one map {r_map * 1e3:.2f} ms "
            f"(this / reference = {t_map / r_map:.2f}), `vrms_at` on 110 x 110 {r_at * 1e3:.2f} ms "
            f"({t_at / r_at:.2f}), with gradient {r_grad * 1e3:.2f} ms ({t_grad / r_grad:.2f})."
        )
    report(args, emu, float(np.median(t_jam)), t_map, t_batch, t_at, t_grad, reference)


def emulator_timings(emu: Emulator, params: np.ndarray) -> tuple[float, ...]:
    """Median seconds: one map, one map of a vmapped batch of 64, vrms_at and its gradient."""
    p0 = jnp.asarray(params[0], jnp.float32)
    vrms_map = jax.jit(emu.vrms_map)
    vrms_map(p0).block_until_ready()
    t_map = _time(lambda: vrms_map(p0).block_until_ready(), 50)
    batch = jnp.asarray(params[:64], jnp.float32)
    batched = jax.jit(jax.vmap(emu.vrms_map))
    batched(batch).block_until_ready()
    t_batch = _time(lambda: batched(batch).block_until_ready(), 5) / len(batch)

    x1 = jnp.linspace(-1.375, 1.375, 110)
    x, y = jnp.meshgrid(x1, x1)
    at = jax.jit(emu.vrms_at)
    at(p0, x, y).block_until_ready()
    t_at = _time(lambda: at(p0, x, y).block_until_ready(), 50)
    vg = jax.jit(jax.value_and_grad(lambda p: jnp.sum(emu.vrms_at(p, x, y) ** 2)))
    jax.block_until_ready(vg(p0))
    t_grad = _time(lambda: jax.block_until_ready(vg(p0)), 50)
    return t_map, t_batch, t_at, t_grad


def report(args, emu, jam_med, t_map, t_batch, t_at, t_grad, reference: str) -> None:
    lines = [
        f"# Emulator speed ({jax.default_backend().upper()})",
        "",
        f"`python benchmarks/bench_emulator.py --checkpoint {args.checkpoint}` on "
        f"{jax.devices()[0].device_kind} ({len(jax.devices())} device), one run, median wall "
        "times.",
        "",
        "| quantity | time | ratio to jampy generator |",
        "|---|---|---|",
        f"| jampy generator, full 551 x 551 map (quadrant + mirror), {args.n_jam} maps | "
        f"{jam_med * 1e3:.0f} ms | 1 |",
        f"| emulator `vrms_map`, one map (jit) | {t_map * 1e3:.2f} ms | {jam_med / t_map:.0f}x |",
        f"| emulator `vrms_map`, batch of 64 with vmap, per map | {t_batch * 1e3:.2f} ms | "
        f"{jam_med / t_batch:.0f}x |",
        f"| `vrms_at` on 110 x 110 points | {t_at * 1e3:.2f} ms | |",
        f"| `vrms_at` on 110 x 110 points + gradient w.r.t. the {emu.space.n_params} "
        f"parameters | {t_grad * 1e3:.2f} ms | |",
    ]
    if reference:
        lines += ["", reference.strip()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
