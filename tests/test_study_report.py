"""The study report's calibration (P-P) statistics and plot, on exact Gaussian posteriors."""

from __future__ import annotations

from types import SimpleNamespace

import arviz as az
import numpy as np
import pytest

from skinn_jax.inference import study


def _results(width_factor: float, n: int = 150) -> dict:
    """``n`` systems whose 'posterior' of gamma is Gaussian around a noisy observation of the
    truth: exact for width_factor 1, overconfident below."""
    rng = np.random.default_rng(3)
    results = {}
    for k in range(n):
        truth = rng.uniform(1.5, 2.5)
        observed = truth + 0.1 * rng.standard_normal()
        draws = observed + 0.1 * width_factor * rng.standard_normal((2, 300))
        idata = az.from_dict(posterior={"gamma": draws})
        results[k] = {"joint": {"result": SimpleNamespace(idata=idata), "truths": {"gamma": truth}}}
    return results


@pytest.mark.parametrize("width_factor, calibrated", [(1.0, True), (0.4, False)])
def test_pp_curve_of_exact_posteriors_follows_the_diagonal(width_factor, calibrated):
    u = study.truth_quantiles(_results(width_factor), "joint")["gamma"]
    assert u.shape == (150,) and np.all((u >= 0) & (u <= 1))
    levels = np.linspace(0.0, 1.0, 21)
    curve = study.pp_curve(u, levels)
    assert curve[0] == 0.0 and curve[-1] == 1.0
    band = 3 * np.sqrt(levels * (1 - levels) / u.size) + 1e-9
    assert bool(np.all(np.abs(curve - levels) <= band)) == calibrated


def test_pp_plot_is_written_per_mode_with_converged_subset(tmp_path):
    results = _results(1.0, n=20)
    converged = {(k, "joint"): k % 2 == 0 for k in results}
    path = tmp_path / "pp.png"
    study.plot_pp(results, ["joint"], path, converged)
    assert path.stat().st_size > 10_000


def test_report_uses_the_truths_the_fits_were_made_with():
    """A report rebuilds the mock systems; where they differ from the fitted ones (another test
    set), the fit's stored truths (its summary table) are used and the mismatch is flagged."""
    from skinn_jax.inference import fit as fit_mod

    draws = {"gamma": np.random.default_rng(0).normal(2.0, 0.1, (2, 200))}
    table = fit_mod.summary_table(draws, {"gamma": 2.0}, ["gamma"])
    result = SimpleNamespace(summary=table, idata=az.from_dict(posterior=draws))
    rebuilt = {"result": result, "truths": {"gamma": 2.4}}
    assert study.stored_truth(rebuilt, "gamma") == 2.0
    assert not study.rebuilt_system_matches(rebuilt)
    assert study.rebuilt_system_matches({"result": result, "truths": {"gamma": 2.0}})
    u = study.truth_quantiles({0: {"joint": rebuilt}}, "joint")["gamma"]
    assert 0.3 < u[0] < 0.7


def test_study_options_carry_chains_draws_and_budget_to_every_fit(tmp_path):
    import argparse

    args = argparse.Namespace(
        out=tmp_path, checkpoint="pca64s", params_source="box", test_set=tmp_path / "t",
        chains=4, warmup=100, samples=200, max_samples=1000, max_minutes=60.0,
        no_converge=False, no_progress=True, replace_changed=False,
    )  # fmt: skip
    options = study.study_options(args)
    for mode in ("joint", "kinematics"):
        settings = study.fit_settings(mode, options)
        assert (settings.num_chains, settings.num_warmup, settings.num_samples) == (4, 100, 200)
        assert settings.max_samples == 1000 and settings.max_wall_s == 3600.0
        assert settings.converge and not settings.progress_bar
    assert study.fit_settings("kinematics", options).adapt_mass_matrix  # the mode's defaults
    task = study.FitTask(3, "joint", options)
    assert task.out_dir == tmp_path / "3" / "joint"
    assert study.pending_tasks([task]) == [task]
