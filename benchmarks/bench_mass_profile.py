"""Cost of the cored power law (the imaging model's mass) and its gradient, at few and many points.

Times ``value_and_grad`` with respect to the six mass parameters of a scalar made of the
deflection, the potential or the Hessian of :class:`~skinn_jax.inference.lensing.CoredPowerLaw`
at ``n`` random points (4: the lens solve's images; 4 360: a lensed source of ~22 % of the
70 x 70 image at 2 x 2 sub-pixels), float64, the model's quadrature nodes; medians after
compilation. Each line reads ``<label> <ms> ms``, so :mod:`benchmarks.compare_revisions` can set
two revisions side by side.

Run: ``taskset -c 0 python benchmarks/bench_mass_profile.py [--points 4 4360] [--repeats 200]``
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from profile_model_eval import median_time_ms  # noqa: E402  (benchmarks/ is on the path)

from skinn_jax.inference.lensing import CoredPowerLaw  # noqa: E402
from skinn_jax.inference.model import MODEL_QUAD_NODES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[4, 4360])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    profile = CoredPowerLaw(n_nodes=MODEL_QUAD_NODES)
    mass = jnp.array([1.2, 2.05, 0.05, -0.03, 0.01, -0.02])  # theta_E, gamma, e1, e2, centre
    rng = np.random.default_rng(0)
    for n in args.points:
        x, y = (jnp.asarray(a) for a in rng.uniform(-2.0, 2.0, (2, n)))
        parts = {
            "deflection": lambda p, x=x, y=y: sum(
                jnp.sum(a**2) for a in profile.derivatives(x, y, *p)
            ),
            "potential": lambda p, x=x, y=y: jnp.sum(profile.function(x, y, *p) ** 2),
            "hessian": lambda p, x=x, y=y: sum(jnp.sum(h**2) for h in profile.hessian(x, y, *p)),
        }
        for name, part in parts.items():
            t = median_time_ms(jax.jit(jax.value_and_grad(part)), (mass,), args.repeats)
            print(f"{n} points {name} + gradient {t:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
