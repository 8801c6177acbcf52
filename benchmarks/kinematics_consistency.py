"""Does the kinematics model reproduce its own mock at the truth? (the q_mass investigation)

Run: ``python benchmarks/kinematics_consistency.py [K ...] [--v4-posterior K=PATH ...]``
(default systems 0 and 9). For every mock system K (:func:`make_mock_system`):

1. the noiseless binned v_rms of the mock (JAM truth, 5 x 5 sub-pixels per spaxel) against the
   model's prediction at the true parameters, as χ² in the mock's noise units: with the
   default emulator (``pca64s``) and with JAM truth through the model's own forward model
   (:data:`MODEL_SUPERSAMPLING` sub-pixels); a model that reproduces the mock gives χ² << 1;
2. the χ² of the noisy data at the truth (~ the number of bins if the noise is as stated);
3. optionally, for a kinematics-mode posterior of model version <= 4 (prior uniform in
   Herculens's ``theta_E_epl, e1, e2``), its importance reweighting to the version-5 prior
   (uniform in ``theta_E, q_mass, phi``): weights ``exp(-log_epl_jacobian)``, the effective
   sample size and every parameter's pull (mean - truth) / sd before and after.

Prints a table per system.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402

from skinn_jax.inference.data import SystemData  # noqa: E402
from skinn_jax.inference.kinematics import load_emulator  # noqa: E402
from skinn_jax.inference.lensing.lens import log_epl_jacobian  # noqa: E402
from skinn_jax.inference.mocks.kinematics import jam_distances, jam_truth_bins  # noqa: E402
from skinn_jax.inference.mocks.system import make_mock_system  # noqa: E402
from skinn_jax.inference.model import build_setup  # noqa: E402
from skinn_jax.params import PARAM_NAMES  # noqa: E402

PULL_SITES = ("theta_E", "gamma", "q_mass", "q_light", "n_sersic", "beta_z", "inclination_deg")
SKY_SITES = ("phi", "center_x", "center_y")


def consistency(k: int, emulator) -> dict:
    """Noiseless χ² of the emulator and of JAM-through-the-model against mock system ``k``."""
    system = make_mock_system(k)
    data = SystemData.from_mock(system)
    lik = build_setup(data, "kinematics", emulator=emulator).kinematics
    mock = system.kinematics
    params, sky = np.asarray(system.truth.params, float), system.truth.sky
    noiseless, sigma = np.asarray(mock.vrms_true), np.asarray(mock.sigma)
    emu = np.asarray(lik.predict(params, sky))
    jam = jam_truth_bins(lik.forward, params, sky, jam_distances(sky, data.kinematics.z_d))
    observed = np.asarray(data.kinematics.vrms)
    return {
        "n_bins": int(noiseless.size),
        "chi2_emulator": float(np.sum(((emu - noiseless) / sigma) ** 2)),
        "chi2_jam_model_grid": float(np.sum(((jam - noiseless) / sigma) ** 2)),
        "max_abs_emulator_km_s": float(np.max(np.abs(emu - noiseless))),
        "chi2_data_at_truth": float(np.sum(((observed - noiseless) / sigma) ** 2)),
        "system": system,
    }


def reweight_to_version_5(system, path: str) -> tuple[float, int, list[tuple]]:
    """Importance reweighting of a version-4 kinematics posterior to the version-5 prior."""
    post = az.from_netcdf(path).posterior

    def draws(name):
        return np.asarray(post[name]).ravel()

    log_jac = jax.vmap(log_epl_jacobian)(
        draws("theta_E"), draws("gamma"), draws("q_mass"), draws("phi")
    )
    log_w = -np.asarray(log_jac)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    t = system.truth
    truth = dict(zip(PARAM_NAMES, np.asarray(t.params, float), strict=True))
    truth.update(phi=t.sky.phi, center_x=t.sky.center_x, center_y=t.sky.center_y)
    rows = []
    for name in PULL_SITES + SKY_SITES:
        x = draws(name)
        mean_w = float(np.sum(w * x))
        sd_w = float(np.sqrt(np.sum(w * (x - mean_w) ** 2)))
        rows.append(
            (name, truth[name], (x.mean() - truth[name]) / x.std(), (mean_w - truth[name]) / sd_w)
        )
    return float(1.0 / np.sum(w**2)), int(w.size), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("systems", type=int, nargs="*", default=[0, 9])
    parser.add_argument("--checkpoint", default="pca64s")
    parser.add_argument("--v4-posterior", nargs="*", default=[], metavar="K=PATH")
    args = parser.parse_args(argv)
    posteriors = dict(item.split("=", 1) for item in args.v4_posterior)
    emulator = load_emulator(args.checkpoint)
    for k in args.systems:
        c = consistency(k, emulator)
        print(f"system {k}: {c['n_bins']} bins")
        print(f"  noiseless χ², emulator ({args.checkpoint}) at the truth: {c['chi2_emulator']:.4f}"
              f" (largest |Δv| {c['max_abs_emulator_km_s']:.3f} km/s)")  # fmt: skip
        print(f"  noiseless χ², JAM on the model's sub-pixel grid: {c['chi2_jam_model_grid']:.4f}")
        print(f"  χ² of the data at the truth: {c['chi2_data_at_truth']:.1f}")
        if str(k) in posteriors:
            ess, n, rows = reweight_to_version_5(c["system"], posteriors[str(k)])
            print(f"  version-4 posterior reweighted to the version-5 prior: ESS {ess:.0f} of {n}")
            print("    parameter          truth   pull v4   pull v5")
            for name, truth, pull4, pull5 in rows:
                print(f"    {name:16s} {truth:8.3f}  {pull4:+7.2f}  {pull5:+7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
