"""How many draws per chain the convergence policy needs from chains that mix perfectly.

The policy (:mod:`skinn_jax.inference.convergence`) asks every reported parameter for split R-hat
<= 1.01 and bulk and tail ESS >= 400. R-hat is itself a noisy statistic: with few draws per chain
it exceeds 1.01 by chance even for chains that sample the posterior exactly, and the more
parameters are judged, the likelier one of them does. This benchmark measures that floor: it
draws ``--chains`` stationary AR(1) chains (lag-1 correlation ``--rho``; 0 is independent draws,
negative values are the antithetic draws NUTS often makes) for ``--parameters`` independent
parameters, and runs :func:`~skinn_jax.inference.convergence.assess` (the policy's own verdict,
ArviZ's R-hat and ESS) at each number of draws per chain, ``--trials`` times. It prints, per
number of draws, the fraction of trials that pass, the median of the largest R-hat, and the
smallest bulk and tail ESS.

A joint fit reports 44 parameters (37 distinct: ``ps_y`` repeats ``ps_y_abc``, ``D_dt`` and
``D_d`` are monotone in ``log_D_dt`` and ``log_D_d``), 4 chains. Run::

    python benchmarks/policy_draws_needed.py [--parameters 37] [--chains 4] [--rho -0.2]
"""

from __future__ import annotations

import argparse

import numpy as np

from skinn_jax.inference.convergence import assess


def ar1_chains(rng, n_params: int, n_chains: int, n_draws: int, rho: float) -> np.ndarray:
    """Stationary AR(1) chains with unit variance: ``(n_params, n_chains, n_draws)``."""
    x = rng.standard_normal((n_params, n_chains, n_draws))
    out = np.empty_like(x)
    out[..., 0] = x[..., 0]
    scale = np.sqrt(1.0 - rho**2)
    for t in range(1, n_draws):
        out[..., t] = rho * out[..., t - 1] + scale * x[..., t]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=int, default=37)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--rho", type=float, default=0.0, help="lag-1 autocorrelation")
    parser.add_argument("--draws", type=int, nargs="+", default=[200, 300, 400, 500, 700])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not -1.0 < args.rho < 1.0:
        parser.error(f"--rho {args.rho}: allowed range (-1, 1)")
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.parameters} parameters, {args.chains} chains, AR(1) rho = {args.rho:g}, "
        f"{args.trials} trials per row"
    )
    print("draws per chain | P(pass) | median max R-hat | median min ESS bulk / tail")
    for n in args.draws:
        passed, rhat, bulk, tail = [], [], [], []
        for _ in range(args.trials):
            x = ar1_chains(rng, args.parameters, args.chains, n, args.rho)
            verdict = assess({f"p{i}": x[i] for i in range(args.parameters)})
            passed.append(verdict.mixed)
            rhat.append(verdict.max_rhat)
            bulk.append(verdict.min_ess_bulk)
            tail.append(verdict.min_ess_tail)
        print(
            f"{n:>15} | {np.mean(passed):7.2f} | {np.median(rhat):16.4f} | "
            f"{np.median(bulk):.0f} / {np.median(tail):.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
