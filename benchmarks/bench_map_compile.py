"""Compile time of the MAP's L-BFGS step: the potential inlined against the compiled potential
called back (:func:`skinn_jax.inference.fit.map.compiled_objective`), side by side in one run.

For mock system ``k`` and each mode: NumPyro's potential is compiled once (``value_and_grad``,
timed); then, for each variant, ``max_steps`` L-BFGS iterations (optax's L-BFGS and zoom line
search) from the start point in coordinates whitened by the identity: the first iteration's wall
time (compilation + one step), the median time of the later ones, and the final value, which
must agree between the variants (same arithmetic: the callback returns the compiled potential's
bits).

Run: ``python benchmarks/bench_map_compile.py [--system 1] [--modes joint kinematics]
[--steps 4]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from skinn_jax.inference.data import SystemData  # noqa: E402
from skinn_jax.inference.fit import make_potential  # noqa: E402
from skinn_jax.inference.fit.map import _lbfgs_step, compiled_objective  # noqa: E402
from skinn_jax.inference.kinematics import load_emulator  # noqa: E402
from skinn_jax.inference.mocks.fit import mock_setup  # noqa: E402
from skinn_jax.inference.mocks.system import make_mock_system  # noqa: E402
from skinn_jax.inference.mocks.truth import truth_values  # noqa: E402


def run_steps(fun, z0: np.ndarray, start, steps: int) -> tuple[float, float, float]:
    """``(first iteration s, median later iteration s, final value)`` of L-BFGS on ``fun``."""
    import optax

    from skinn_jax.inference.fit.map import _strongly_typed

    opt, step = _lbfgs_step(fun, 10)
    x = jnp.asarray(z0)
    state = optax.tree.set(opt.init(x), value=jnp.asarray(start[0]), grad=jnp.asarray(start[1]))
    state = _strongly_typed(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x, state = jax.block_until_ready(step(x, state, {}))
        times.append(time.perf_counter() - t0)
    return times[0], float(np.median(times[1:])), float(optax.tree.get(state, "value"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["joint", "kinematics"])
    parser.add_argument("--checkpoint", default="pca64s")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)

    system = make_mock_system(args.system)
    data = SystemData.from_mock(system)
    emulator = load_emulator(args.checkpoint)
    for mode in args.modes:
        setup = mock_setup(system, data, mode, emulator)
        pot = make_potential(data, setup, truth_values(system, mode, setup.priors))
        t0 = time.perf_counter()
        start = jax.block_until_ready(pot.value_and_grad(jnp.asarray(pot.z0)))
        print(f"{mode}: potential + gradient compiled in {time.perf_counter() - t0:.1f} s")
        rows = {}
        for label, fun in (
            ("potential inlined (before)", pot.potential),
            ("compiled potential called back", compiled_objective(pot.value_and_grad, pot.z0.size)),
        ):
            rows[label] = run_steps(fun, pot.z0, start, args.steps)
            first, later, value = rows[label]
            print(f"  {label:>32}: first iteration {first:6.1f} s, later {later:6.2f} s, "
                  f"value {value:.10f}")  # fmt: skip
        (old, *_), (new, *_) = rows.values()
        print(f"  first iteration (compile + step): {old:.1f} s -> {new:.1f} s, {old / new:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
