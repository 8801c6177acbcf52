"""Tests of skinn_jax.likelihood: chi², jit/vmap/grad, gradients vs finite differences, checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skinn_jax.forward import SkyParams
from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid
from skinn_jax.likelihood import (
    THETA_NAMES,
    KinematicLikelihood,
    gaussian_log_likelihood,
    split_theta,
)

PARAMS = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.2, 0.15, 70.0])
SKY = SkyParams(0.6, 0.07, -0.04, 2600.0, 1300.0)


@pytest.fixture(autouse=True)
def _float64():
    """Run every test of this module in float64 without touching the global JAX config."""
    with jax.enable_x64(True):
        yield


def analytic_field(p, x, y):
    """Smooth symmetric field depending on all eight parameters (km/s)."""
    theta_e, gamma, q_m, q_l, r_s, n_s, beta, inc = (p[i] for i in range(8))
    m2 = x**2 + (y / q_m) ** 2
    amplitude = 180.0 * theta_e**0.5 * (1.0 + 0.3 * (gamma - 2.0)) * (1.0 + 0.2 * beta)
    amplitude = amplitude * jnp.sin(inc * math.pi / 180.0) ** 0.3
    amplitude = amplitude * (1.0 + 0.05 * (n_s - 3.0)) * (1.0 + 0.1 * (q_l - 0.8))
    return amplitude * (0.4 + m2 / (0.3 * r_s**2 + m2)) ** 0.5


def make_data(rng, shape=(9, 9), n_bins=10, dense_cov=True):
    grid = SpaxelGrid.regular(shape, 0.05, flip_ra=True)
    x, y = grid.coordinates()
    angle = np.arctan2(y, x)
    radius = np.hypot(x, y)
    bins = (np.minimum(radius / 0.06, 4).astype(int) * 2 + (angle > 0)).astype(int)
    bins = np.unique(bins, return_inverse=True)[1].reshape(shape)
    n_bins = bins.max() + 1
    a = rng.normal(size=(n_bins, n_bins)) * 2.0
    cov = a @ a.T + np.eye(n_bins) * 25.0 if dense_cov else np.eye(n_bins) * 25.0
    vrms = rng.uniform(150, 250, n_bins)
    return KinematicData(grid, bins, vrms, cov, PSF.gaussian(0.1), z_d=0.5)


def test_gaussian_log_likelihood_matches_direct_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    r = rng.normal(size=6) * 3.0
    expected = -0.5 * r @ np.linalg.solve(cov, r)
    got = gaussian_log_likelihood(r, np.linalg.cholesky(cov))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    batch = rng.normal(size=(3, 6))
    got = gaussian_log_likelihood(batch, np.linalg.cholesky(cov))
    expected = [-0.5 * b @ np.linalg.solve(cov, b) for b in batch]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_likelihood_value_jit_and_vmap():
    rng = np.random.default_rng(1)
    data = make_data(rng)
    lik = KinematicLikelihood(data, analytic_field, supersampling=3)
    pred = np.asarray(lik.predict(PARAMS, SKY))
    assert pred.shape == (data.n_bins,)
    r = pred - data.vrms
    expected = -0.5 * r @ np.linalg.solve(data.covariance, r)
    value = lik(PARAMS, SKY)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(lik)(jnp.asarray(PARAMS), SKY), expected, rtol=1e-12)
    theta = np.concatenate([PARAMS, np.asarray(SKY)])
    np.testing.assert_allclose(lik.from_theta(theta), expected, rtol=1e-12)
    assert len(THETA_NAMES) == 13 and THETA_NAMES[8:] == SkyParams._fields
    # batched evaluation
    params = np.stack([PARAMS, PARAMS * [1.05, 1, 1, 1, 1, 1, 1, 1], PARAMS])
    sky = SkyParams(*(np.array([v, v, v + 0.2]) for v in SKY))
    batched = jax.jit(jax.vmap(lik))(jnp.asarray(params), sky)
    loop = [lik(params[k], SkyParams(*(s[k] for s in sky))) for k in range(3)]
    np.testing.assert_allclose(batched, loop, rtol=1e-12)
    p8, sk = split_theta(jnp.stack([jnp.asarray(theta)] * 2))
    assert p8.shape == (2, 8) and sk.D_d.shape == (2,)


def test_gradients_match_finite_differences_for_all_13_parameters():
    rng = np.random.default_rng(2)
    data = make_data(rng)
    lik = KinematicLikelihood(data, analytic_field, supersampling=3)
    theta0 = np.concatenate([PARAMS, np.asarray(SKY)])
    grad = np.asarray(jax.jit(jax.grad(lik.from_theta))(jnp.asarray(theta0)))
    assert grad.shape == (13,) and np.all(np.isfinite(grad))
    f = jax.jit(lik.from_theta)
    steps = np.abs(theta0) * 1e-5 + 1e-6
    basis = np.eye(13)
    thetas = np.concatenate([theta0 + steps[:, None] * basis, theta0 - steps[:, None] * basis])
    values = np.asarray(jax.vmap(f)(jnp.asarray(thetas)))
    fd = (values[:13] - values[13:]) / (2 * steps)
    for k, name in enumerate(THETA_NAMES):
        assert abs(grad[k]) > 0, name  # every parameter matters
        np.testing.assert_allclose(grad[k], fd[k], rtol=1e-5, atol=1e-9 / steps[k], err_msg=name)


def test_gradient_through_jam_truth_interpolator():
    from skinn_jax.inference.mocks.kinematics import field_for_forward_model

    rng = np.random.default_rng(3)
    data = make_data(rng, shape=(7, 7), dense_cov=False)
    lik = KinematicLikelihood(data, analytic_field, supersampling=2)
    field = field_for_forward_model(lik.forward, PARAMS, step=0.01)
    lik = KinematicLikelihood(data, field, supersampling=2)
    sky = np.asarray(SKY)

    def f(sky_and_light):
        p = jnp.asarray(PARAMS).at[3:6].set(sky_and_light[5:])
        return lik(p, SkyParams(*(sky_and_light[i] for i in range(5))))

    x0 = np.concatenate([sky, PARAMS[3:6]])
    grad = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x0)))
    steps = np.abs(x0) * 1e-6 + 1e-7
    g = jax.jit(f)
    for k in range(x0.size):
        e = np.zeros_like(x0)
        e[k] = steps[k]
        fd = (g(x0 + e) - g(x0 - e)) / (2 * steps[k])
        np.testing.assert_allclose(grad[k], fd, rtol=1e-4, atol=1e-8 / steps[k])


def test_eager_checks_and_no_silent_nan():
    rng = np.random.default_rng(4)
    data = make_data(rng, shape=(5, 5))
    lik = KinematicLikelihood(data, analytic_field, supersampling=1)
    bad = PARAMS.copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match="gamma"):
        lik(bad, SKY)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        lik(PARAMS[:7], SKY)
    with pytest.raises(ValueError, match="D_dt"):
        lik(PARAMS, SKY._replace(D_dt=0.0))
    with pytest.raises(ValueError, match="center_y"):
        lik(PARAMS, SKY._replace(center_y=0.9))
    with pytest.raises(ValueError, match="KinematicData"):
        KinematicLikelihood({"vrms": 1}, analytic_field)
    assert np.isfinite(jax.jit(lik)(jnp.asarray(PARAMS), SKY))  # traced values are not checked
