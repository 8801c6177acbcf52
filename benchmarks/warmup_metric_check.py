"""How well the warm-up's metric correction estimates the posterior's broad directions.

For a finished study fit (``docs/benchmarks/study_policy/K/MODE``), the warm-up is run again with
the fit's settings and seed (deterministic on CPU: it reproduces the fit's correction), and the
draws the correction used (second half of the warm-up, every chain) are kept. Along the pooled
eigen-directions of those draws (Laplace-whitened), the script prints the variance ratio the
correction used (pooled), the per-chain variances and their median, a pooled MAD estimate, and the
variance of the fit's sampled draws (``posterior.nc``) along the same directions: the reference.

Run (about 10 minutes on 2 cores for a joint fit):
``python benchmarks/warmup_metric_check.py --system 4 [--mode joint] [--study
docs/benchmarks/study_policy]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpyro

numpyro.set_host_device_count(4)  # the study's parallel chains

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from skinn_jax.inference.fit import driver  # noqa: E402
from skinn_jax.inference.fit.settings import default_settings  # noqa: E402
from skinn_jax.inference.kinematics import load_emulator  # noqa: E402
from skinn_jax.inference.mocks.fit import fit_mock  # noqa: E402
from skinn_jax.inference.mocks.system import make_mock_system  # noqa: E402


class _Kept(Exception):
    pass


def warmup_draws(k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(laplace_cov, draws)`` that the metric correction of system ``k`` in ``mode`` uses."""
    kept = {}
    real = driver.corrected_metric

    def keep(cov, draws):
        kept.update(cov=np.asarray(cov), draws=np.asarray(draws))
        raise _Kept

    driver.corrected_metric = keep
    out = Path(tempfile.mkdtemp(prefix="warmup_metric_"))
    try:
        system = make_mock_system(k, params_source="test")
        emulator = load_emulator("pca64s") if mode != "lensing" else None
        fit_mock(system, mode, out, emulator=emulator, settings=default_settings(mode))
    except _Kept:
        pass
    finally:
        driver.corrected_metric = real
        shutil.rmtree(out, ignore_errors=True)
    return kept["cov"], kept["draws"]


def sampled_unconstrained(k: int, mode: str, fit_dir: Path) -> np.ndarray:
    """The fit's sampled draws in the sampler's unconstrained coordinates, ``(n, d)`` (sites
    sorted by name, as the flat positions)."""
    import arviz as az
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    from skinn_jax.inference.data import SystemData
    from skinn_jax.inference.mocks.fit import mock_setup
    from skinn_jax.inference.mocks.truth import truth_values
    from skinn_jax.inference.model import model, site_names

    system = make_mock_system(k, params_source="test")
    data = SystemData.from_mock(system)
    setup = mock_setup(system, data, mode, load_emulator("pca64s") if mode != "lensing" else None)
    names = site_names(mode)
    truth = truth_values(system, mode, setup.priors)
    trace = handlers.trace(
        handlers.substitute(model, data={n: jnp.asarray(truth[n]) for n in names})
    ).get_trace(data, setup)
    post = az.from_netcdf(fit_dir / "posterior.nc").posterior
    cols = []
    for n in sorted(names):
        x = np.asarray(post[n].values)
        u = np.asarray(biject_to(trace[n]["fn"].support).inv(jnp.asarray(x)))
        cols.append(u.reshape(x.shape[0] * x.shape[1], -1))
    return np.concatenate(cols, axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", type=int, default=4)
    parser.add_argument("--mode", default="joint", choices=["joint", "lensing"])
    parser.add_argument("--study", type=Path, default=Path("docs/benchmarks/study_policy"))
    parser.add_argument("--chains", type=int, default=4)
    args = parser.parse_args(argv)
    fit_dir = args.study / str(args.system) / args.mode
    cov, draws = warmup_draws(args.system, args.mode)
    sampled = sampled_unconstrained(args.system, args.mode, fit_dir)
    chol = np.linalg.cholesky(cov)
    n, d = draws.shape
    white = np.linalg.solve(chol, (draws - draws.mean(axis=0)).T)
    pooled, vectors = np.linalg.eigh(white @ white.T / (n - 1))
    proj = vectors.T @ white  # (d, n), chain-major columns
    per_chain = proj.reshape(d, args.chains, -1).var(axis=2, ddof=1)  # (d, chains)
    centred = proj - np.median(proj, axis=1, keepdims=True)
    mad = (1.4826 * np.median(np.abs(centred), axis=1)) ** 2
    ref = vectors.T @ np.linalg.solve(chol, (sampled - sampled.mean(axis=0)).T)
    print(f"system {args.system} {args.mode}: {n} warm-up draws, {sampled.shape[0]} sampled")
    print("| direction | pooled (used) | per-chain median | per-chain range | MAD | sampled |")
    print("|---|---|---|---|---|---|")
    for i in list(range(2)) + list(range(d - 4, d)):
        print(f"| {i} | {pooled[i]:.2f} | {np.median(per_chain[i]):.2f} | "
              f"{per_chain[i].min():.2f}-{per_chain[i].max():.2f} | {mad[i]:.2f} | "
              f"{ref[i].var():.2f} |")  # fmt: skip
    means = proj[-1].reshape(args.chains, -1).mean(axis=1)
    print(f"chain means along the broadest direction (Laplace σ): {np.round(means, 2)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
