"""The posterior's curvature where a stored study fit diverged, against where it did not.

For study fit ``(K, MODE)`` (default: the policy study's, ``docs/benchmarks/study_policy``), the
model's potential is rebuilt as the fit sampled it (the fit is loaded from a copy of its
directory, so nothing in the study is rewritten) and its exact Hessian ``H`` (autodiff; the lens
solver's derivatives are implicit, exact to second order) is taken at draws of the stored chains,
in NUTS's unconstrained coordinates. ``H`` is whitened by the draws' covariance ``Σ = L Lᵀ``:
``W = Lᵀ H L``. For a Gaussian posterior every eigenvalue of ``W`` is ~1 everywhere; NUTS's
step size, tuned on the bulk, fails where the largest eigenvalue ``λ_max`` is many times
larger (a leapfrog step is unstable above ``λ ε² ~ 4`` with ``ε`` in whitened units).

Prints ``λ_max`` at the draws that ended a divergent transition and at as many random other
draws, and the sites that carry the top eigenvector at the divergent draws.

Run: ``python benchmarks/divergence_curvature.py --system 2 --mode lensing [--draws 40]``
(needs ``data/test``: ``skinn-jax generate --n 1000 --seed 3 --out data/test``; ~2 min).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from skinn_jax.inference.fit import make_potential  # noqa: E402
from skinn_jax.inference.study import FitTask, StudyOptions, fit_one  # noqa: E402

STUDY = Path("docs/benchmarks/study_policy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", type=int, default=2)
    parser.add_argument("--mode", default="lensing", choices=("joint", "lensing", "kinematics"))
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--draws", type=int, default=40, help="non-divergent draws to compare")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="the study's budget")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        fit_dir = Path(tmp) / str(args.system) / args.mode
        shutil.copytree(args.study / str(args.system) / args.mode, fit_dir)
        options = StudyOptions(  # the study's options (its fits ran with --max-minutes 60)
            out=Path(tmp), checkpoint="pca64s", params_source="test",
            settings_changes=(("max_wall_s", 60.0 * args.max_minutes),), quiet=True,
        )  # fmt: skip
        loaded = fit_one(FitTask(args.system, args.mode, options))
        posterior = az.from_netcdf(fit_dir / "posterior.nc")
    pot = make_potential(loaded["data"], loaded["setup"], loaded["truths"])

    draws = posterior.posterior
    div = np.asarray(posterior.sample_stats["diverging"].values, bool)
    n_chains, n_draws = div.shape

    def unconstrained(c: int, i: int) -> np.ndarray:
        values = {k: jnp.asarray(draws[k].values[c, i]) for k in pot.names}
        return np.asarray(ravel_pytree({k: pot.transforms[k].inv(v) for k, v in values.items()})[0])

    everything = np.array([unconstrained(c, i) for c in range(n_chains) for i in range(n_draws)])
    _, unravel = ravel_pytree({k: jnp.asarray(draws[k].values[0, 0]) for k in pot.names})
    labels = [
        f"{k}[{j}]" if np.size(v) > 1 else k
        for k, v in unravel(np.arange(everything.shape[1])).items()
        for j in range(np.size(v))
    ]
    chol = np.linalg.cholesky(np.cov(everything.T))
    hessian = jax.jit(jax.hessian(pot.potential))

    def top(z: np.ndarray) -> tuple[float, np.ndarray]:
        w = chol.T @ np.asarray(hessian(jnp.asarray(z))) @ chol
        vals, vecs = np.linalg.eigh(0.5 * (w + w.T))
        return float(vals[-1]), chol @ vecs[:, -1]

    rng = np.random.default_rng(0)
    divergent = np.argwhere(div)
    ordinary = np.argwhere(~div)
    ordinary = ordinary[rng.choice(len(ordinary), min(args.draws, len(ordinary)), replace=False)]
    print(f"system {args.system} {args.mode}: {len(divergent)} divergent draws of {div.size}")
    for name, picks in (("divergent", divergent), ("other", ordinary)):
        tops = [top(everything[c * n_draws + i]) for c, i in picks]
        lam = np.array([t[0] for t in tops])
        q50, q90 = np.quantile(lam, [0.5, 0.9])
        print(f"  {name:>9}: λ_max median {q50:8.1f}, 90 % {q90:8.1f}, max {lam.max():8.1f} "
              f"({len(lam)} draws)")  # fmt: skip
        if name == "divergent" and len(tops):
            weight = np.mean([np.abs(t[1]) / np.abs(t[1]).max() for t in tops], axis=0)
            order = np.argsort(weight)[::-1][:6]
            print("     top eigenvector (mean |component| / max, unconstrained, raw units): "
                  + ", ".join(f"{labels[j]} {weight[j]:.2f}" for j in order))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
