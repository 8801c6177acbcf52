"""Tests of the convergence policy (skinn_jax.inference.convergence) on small NumPyro models.

Real NUTS runs (4 vectorised chains, a few hundred draws, seconds in all): a Gaussian that
converges, two separated modes that cannot, and a posterior against a box face.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from skinn_jax.inference.convergence import (
    ConvergencePolicy,
    assess,
    budget_left,
    uniform_boxes,
)

MAX_TREE_DEPTH = 6


def _run(model, num_samples=300, init_params=None, seed=0):
    """4 vectorised NUTS chains; returns (samples by chain, extra fields by chain)."""
    mcmc = MCMC(
        NUTS(model, max_tree_depth=MAX_TREE_DEPTH),
        num_warmup=150,
        num_samples=num_samples,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(
        jax.random.PRNGKey(seed), init_params=init_params, extra_fields=("diverging", "num_steps")
    )
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return samples, extra


def gaussian_2d():
    cov = jnp.array([[1.0, 0.8], [0.8, 1.0]])
    numpyro.sample("x", dist.MultivariateNormal(jnp.array([1.0, -2.0]), covariance_matrix=cov))
    numpyro.sample("s", dist.Normal(3.0, 0.5))


def two_modes():
    """Modes at ±8 of width 0.5: NUTS never crosses between them."""
    mix = dist.MixtureSameFamily(
        dist.Categorical(jnp.array([0.5, 0.5])), dist.Normal(jnp.array([-8.0, 8.0]), 0.5)
    )
    numpyro.sample("m", mix)
    numpyro.sample("y", dist.Normal(0.0, 1.0))


def against_a_face():
    """A uniform prior box [0, 1] with the likelihood peaked below it: draws pile up at 0."""
    a = numpyro.sample("a", dist.Uniform(0.0, 1.0))
    numpyro.sample("b", dist.Uniform(-1.0, 1.0))
    numpyro.factor("like", dist.Normal(-0.1, 0.1).log_prob(a))


def _assess(model, samples, extra, **kwargs):
    return assess(
        samples,
        boxes=uniform_boxes(model),
        diverging=extra["diverging"],
        num_steps=extra["num_steps"],
        max_tree_depth=MAX_TREE_DEPTH,
        **kwargs,
    )


def test_a_gaussian_converges_and_says_so_in_one_line():
    samples, extra = _run(gaussian_2d, num_samples=600)
    verdict = _assess(gaussian_2d, samples, extra)
    assert verdict.converged and verdict.mixed and not verdict.failing, verdict.line
    assert verdict.line.startswith("converged: yes (R-hat max 1.0")
    assert "\n" not in verdict.line
    assert verdict.max_rhat <= 1.01 and min(verdict.min_ess_bulk, verdict.min_ess_tail) >= 400
    assert [p.name for p in verdict.parameters] == ["s", "x[0]", "x[1]"]
    assert verdict.n_chains == 4 and verdict.n_draws == 600 and verdict.causes == ()
    # the same draws with too few of them (first 40 per chain) fail the ESS threshold
    short = _assess(gaussian_2d, {k: v[:, :40] for k, v in samples.items()}, extra)
    assert not short.converged and "slow mixing" in short.line
    assert short.line.startswith("converged: NO — ")


def test_two_separated_modes_do_not_converge_and_are_named_multimodal():
    init = {"m": jnp.array([-8.0, -8.0, 8.0, 8.0]), "y": jnp.zeros(4)}
    samples, extra = _run(two_modes, num_samples=300, init_params=init)
    verdict = _assess(two_modes, samples, extra)
    assert not verdict.converged and verdict.failing == ("m",), verdict.line
    assert verdict.parameters[0].separation > 20
    assert "multimodality between chains: m" in verdict.line
    assert re.search(r"m: chains 0,1 at -(7\.9|8\.0)\d* \| chains 2,3 at (7\.9|8\.0)", verdict.line)
    assert verdict.line.startswith("converged: NO — m R-hat ")


def test_a_parameter_against_a_box_face_is_detected():
    samples, extra = _run(against_a_face, num_samples=300)
    boxes = uniform_boxes(against_a_face)
    assert set(boxes) == {"a", "b"} and float(boxes["b"][0]) == -1.0
    verdict = _assess(against_a_face, samples, extra, policy=ConvergencePolicy(min_ess_tail=1e6))
    faces = {p.name: p.face for p in verdict.parameters}
    assert faces == {"a": "lower", "b": None}, verdict.line
    assert not verdict.converged and "box face: a (lower)" in verdict.line


def test_vector_site_boxes_and_divergences_and_budget():
    rng = np.random.default_rng(0)
    draws = {"v": rng.normal(0.5, 0.1, size=(4, 500, 2))}
    draws["v"][..., 1] = np.abs(draws["v"][..., 1] - 0.5) * 0.1  # piles up at 0
    diverging = np.zeros((4, 500), bool)
    diverging[0, :3] = True
    verdict = assess(draws, boxes={"v": (np.zeros(2), np.ones(2))}, diverging=diverging)
    assert [p.face for p in verdict.parameters] == [None, "lower"]
    assert verdict.mixed and not verdict.converged  # 3 divergences > 0 allowed
    assert "3 divergent transitions" in verdict.line
    assert assess(draws, ConvergencePolicy(max_divergences=3), diverging=diverging).converged
    policy = ConvergencePolicy(max_samples=1000, max_wall_s=60.0)
    assert budget_left(500, 10.0, 500, policy) is None
    assert "1000" in budget_left(600, 10.0, 500, policy)
    assert "60 s" in budget_left(500, 61.0, 100, policy)


@pytest.mark.parametrize(
    "field, value", [("max_rhat", 0.9), ("face_band", 0.7), ("max_samples", 0)]
)
def test_bad_policy_settings_raise_naming_the_value_and_range(field, value):
    draws = {"x": np.random.default_rng(0).normal(size=(2, 50))}
    with pytest.raises(ValueError, match=rf"{field} = {value}.*allowed range"):
        assess(draws, ConvergencePolicy(**{field: value}))


def test_bad_sample_shapes_raise():
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        assess({"x": np.zeros(10)})
    with pytest.raises(ValueError, match="different"):
        assess({"x": np.zeros((2, 10)), "y": np.zeros((2, 11))})


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--max-samples", "100", "--samples", "200"], "argument --max-samples: 100: must be >="),
        (["--max-minutes", "0"], "argument --max-minutes: 0.0: must be a finite number > 0"),
        (["--max-minutes", "nan"], "argument --max-minutes: nan: must be a finite number > 0"),
    ],
)
def test_fit_mock_budget_flags_are_checked_before_any_work(tmp_path, monkeypatch, capsys, argv,
                                                           expected):  # fmt: skip
    from skinn_jax.cli import main

    monkeypatch.chdir(tmp_path)
    try:
        rc = main(["fit-mock", *argv])
    except SystemExit as exc:  # argparse's own checks exit; later ones return 2
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_fit_mock_settings_carry_the_policy_flags():
    import argparse

    from skinn_jax.cli import _fit_mock_settings

    base = dict(mode="joint", chains=4, seed=0, no_progress=True, warmup=None, chunks=None,
                max_minutes=None, no_converge=False, max_samples=None)  # fmt: skip
    settings = _fit_mock_settings(argparse.Namespace(**base, samples=None))
    assert settings.num_chains == 4 and settings.converge and settings.max_rhat == 1.01
    assert settings.min_ess == 400 and settings.max_samples == 4000
    big = _fit_mock_settings(argparse.Namespace(**{**base, "max_minutes": 30.0}, samples=5000))
    assert big.max_samples == 5000 and big.max_wall_s == 1800.0
    off = _fit_mock_settings(argparse.Namespace(**{**base, "no_converge": True}, samples=None))
    assert not off.converge and off.policy().max_samples == off.num_samples
