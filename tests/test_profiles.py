"""Tests of skinn_jax.profiles: emulator profiles and every conversion from Herculens's parameters.

Herculens's own profile classes and utility functions are the reference throughout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from herculens.LightModel.Profiles.sersic import Sersic
from herculens.MassModel.Profiles.epl import EPL
from herculens.Util import param_util
from herculens.Util import util as herculens_util

from skinn_jax import profiles as prof


@pytest.fixture(autouse=True)
def _float64():
    """Run every test of this module in float64 without touching the global JAX config."""
    with jax.enable_x64(True):
        yield


class _ExactBnSersic(Sersic):
    """Herculens's Sérsic with its approximate ``b_n = 1.9992 n - 0.3271`` made exact."""

    b_n = staticmethod(prof.sersic_b_np)


def _random_points(rng: np.random.Generator, center: tuple[float, float], n: int = 300):
    """Points in [-3, 3]² arcsec at least 0.05 arcsec from ``center``."""
    x, y = rng.uniform(-3.0, 3.0, (2, n))
    keep = np.hypot(x - center[0], y - center[1]) > 0.05
    return x[keep], y[keep]


def _random_e1e2(rng: np.random.Generator) -> tuple[float, float]:
    """Ellipticity with q in [0.5, 0.98] and phi anywhere."""
    q, phi = rng.uniform(0.5, 0.98), rng.uniform(-np.pi, np.pi)
    e1, e2 = param_util.phi_q2_ellipticity(phi, q)
    return float(e1), float(e2)


# ----------------------------------------------------------------------------------------------
# Angle convention and frame


def test_e1e2_from_q_phi_matches_herculens():
    rng = np.random.default_rng(1)
    q, phi = rng.uniform(0.2, 1.0, 50), rng.uniform(-np.pi, np.pi, 50)
    ours = prof.e1e2_from_q_phi(q, phi)
    ref = param_util.phi_q2_ellipticity(phi, q)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-15)


def test_q_phi_from_e1e2_matches_herculens():
    rng = np.random.default_rng(2)
    e1, e2 = rng.uniform(-0.5, 0.5, (2, 50))
    q, phi = prof.q_phi_from_e1e2(e1, e2)
    phi_ref, q_ref = param_util.ellipticity2phi_q(e1, e2)
    np.testing.assert_allclose(q, q_ref, rtol=1e-15)
    np.testing.assert_allclose(phi, phi_ref, rtol=0, atol=1e-15)
    # Herculens's clip of |e| at 0.9999 and its phi = 0 for a round profile
    np.testing.assert_allclose(
        prof.q_phi_from_e1e2(1.5, 0.0), param_util.ellipticity2phi_q(1.5, 0.0)[::-1]
    )
    np.testing.assert_allclose(prof.q_phi_from_e1e2(0.0, 0.0), (1.0, 0.0))


def test_ellipticity_round_trips():
    rng = np.random.default_rng(3)
    q, phi = rng.uniform(0.2, 1.0, 100), rng.uniform(-np.pi / 2, np.pi / 2, 100)
    q2, phi2 = prof.q_phi_from_e1e2(*prof.e1e2_from_q_phi(q, phi))
    np.testing.assert_allclose(q2, q, rtol=1e-13)
    np.testing.assert_allclose(phi2, phi, rtol=0, atol=1e-12)
    e1, e2 = rng.uniform(-0.5, 0.5, (2, 100))
    np.testing.assert_allclose(
        prof.e1e2_from_q_phi(*prof.q_phi_from_e1e2(e1, e2)), (e1, e2), atol=1e-14
    )
    # phi is defined modulo pi: phi + pi gives the same ellipticity
    np.testing.assert_allclose(
        prof.e1e2_from_q_phi(q, phi + np.pi), prof.e1e2_from_q_phi(q, phi), atol=1e-14
    )


def test_to_galaxy_frame_matches_herculens_rotate():
    rng = np.random.default_rng(4)
    x, y = rng.uniform(-3, 3, (2, 100))
    cx, cy, phi = 0.3, -0.2, 0.7
    ours = prof.to_galaxy_frame(x, y, cx, cy, phi)
    ref = herculens_util.rotate(x - cx, y - cy, phi)
    np.testing.assert_allclose(ours, ref, atol=1e-15)


def test_herculens_major_axis_points_along_phi():
    # Herculens's Sérsic is brightest along (cos phi, sin phi) from the centre (phi counter-
    # clockwise from +x), and to_galaxy_frame maps that direction to the galaxy frame's +x axis.
    q, phi, cx, cy, d = 0.5, 0.6, 0.2, -0.1, 0.8
    e1, e2 = prof.e1e2_from_q_phi(q, phi)
    sersic = Sersic()
    along = (cx + d * np.cos(phi), cy + d * np.sin(phi))
    across = (cx - d * np.sin(phi), cy + d * np.cos(phi))
    f_along = sersic.function(*along, 1.0, 1.0, 2.0, e1, e2, cx, cy)
    f_across = sersic.function(*across, 1.0, 1.0, 2.0, e1, e2, cx, cy)
    assert f_along > 2 * f_across
    np.testing.assert_allclose(prof.to_galaxy_frame(*along, cx, cy, phi), (d, 0.0), atol=1e-15)
    np.testing.assert_allclose(prof.to_galaxy_frame(*across, cx, cy, phi), (0.0, d), atol=1e-15)


# ----------------------------------------------------------------------------------------------
# Mass


def test_kappa_cored_pemd_formula():
    x, y, theta_E, gamma, q = 0.7, -0.4, 1.2, 2.2, 0.75
    expected = theta_E ** (gamma - 1) * (3 - gamma) / (1 + q)
    expected *= (x**2 + y**2 / q**2 + 0.08**2) ** ((1 - gamma) / 2)
    assert prof.R_CORE_ARCSEC == 0.08
    np.testing.assert_allclose(prof.kappa_cored_pemd(x, y, theta_E, gamma, q), expected, rtol=1e-15)
    # isothermal, round, no core: kappa = theta_E / (2 r)
    np.testing.assert_allclose(prof.kappa_cored_pemd(0.5, 0.0, 1.0, 2.0, 1.0, 0.0), 1.0, rtol=1e-15)
    # finite at the centre with the core
    assert np.isfinite(prof.kappa_cored_pemd(0.0, 0.0, 1.0, 2.4, 0.7))


@pytest.mark.parametrize("seed", range(8))
def test_epl_convergence_of_herculens_equals_ours(seed):
    rng = np.random.default_rng(100 + seed)
    theta_E_epl, gamma = rng.uniform(0.5, 2.0), rng.uniform(1.5, 2.5)
    e1, e2 = _random_e1e2(rng)
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    x, y = _random_points(rng, (cx, cy))
    f_xx, f_yy, _ = EPL().hessian(x, y, theta_E_epl, e1, e2, gamma, cx, cy)
    kappa_ref = 0.5 * (np.asarray(f_xx) + np.asarray(f_yy))

    q, phi = prof.q_phi_from_e1e2(e1, e2)
    xg, yg = prof.to_galaxy_frame(x, y, cx, cy, phi)
    theta_E = prof.theta_E_from_epl(theta_E_epl, gamma, q)
    kappa = prof.kappa_cored_pemd(xg, yg, theta_E, gamma, q, r_core=0.0)
    np.testing.assert_allclose(kappa, kappa_ref, rtol=1e-10)


def test_theta_E_conversion_values_and_round_trip():
    rng = np.random.default_rng(5)
    theta, gamma, q = rng.uniform(0.5, 2, 50), rng.uniform(1.5, 2.5, 50), rng.uniform(0.3, 1, 50)
    back = prof.theta_E_epl_from_emulator(prof.theta_E_from_epl(theta, gamma, q), gamma, q)
    np.testing.assert_allclose(back, theta, rtol=1e-13)
    np.testing.assert_allclose(prof.theta_E_from_epl(theta, gamma, 1.0), theta, rtol=1e-15)
    np.testing.assert_allclose(
        prof.theta_E_from_epl(1.3, 2.0, 0.64), 1.3 * 0.82 / 0.8, rtol=1e-15
    )  # isothermal: theta_E_EPL (1+q) / (2 sqrt(q))


# ----------------------------------------------------------------------------------------------
# Light


def test_sersic_b_matches_scipy():
    n = np.linspace(0.5, 8.0, 151)
    np.testing.assert_allclose(prof.sersic_b(n), prof.sersic_b_np(n), rtol=0, atol=1e-10)
    np.testing.assert_allclose(jax.jit(prof.sersic_b)(n), prof.sersic_b_np(n), atol=1e-10)
    np.testing.assert_allclose(prof.sersic_b(0.5), np.log(2.0), rtol=1e-13)  # exponential
    assert prof.sersic_b(jnp.ones((2, 3)) * 4.0).shape == (2, 3)


def test_sersic_b_derivatives():
    n = np.linspace(0.5, 8.0, 31)
    h = 1e-5
    fd = (prof.sersic_b_np(n + h) - prof.sersic_b_np(n - h)) / (2 * h)
    np.testing.assert_allclose(jax.vmap(jax.grad(prof.sersic_b))(n), fd, rtol=1e-7)
    h2 = 1e-3
    fd2 = (prof.sersic_b_np(n + h2) - 2 * prof.sersic_b_np(n) + prof.sersic_b_np(n - h2)) / h2**2
    d2 = jax.vmap(jax.grad(jax.grad(prof.sersic_b)))(n)
    np.testing.assert_allclose(d2, fd2, rtol=1e-4, atol=1e-6)


def test_sersic_light_formula():
    x, y, r, n, q, amp = 0.9, 0.3, 1.1, 3.0, 0.7, 2.5
    b = prof.sersic_b_np(n)
    m = np.hypot(x, y / q)
    expected = amp * np.exp(-b * ((m / r) ** (1 / n) - 1))
    np.testing.assert_allclose(prof.sersic_light(x, y, r, n, q, amp), expected, rtol=1e-13)
    np.testing.assert_allclose(prof.sersic_light(0.0, r * q, r, n, q, amp), amp, rtol=1e-14)
    np.testing.assert_allclose(prof.sersic_light(0.0, 0.0, r, n, q), np.exp(b), rtol=1e-13)


@pytest.mark.parametrize("seed", range(5))
def test_herculens_sersic_major_axis_equals_ours(seed):
    # Herculens default: radius_major_axis=True, R_sersic is the major-axis radius, no conversion.
    rng = np.random.default_rng(200 + seed)
    amp, R, n = rng.uniform(0.5, 5.0), rng.uniform(0.3, 2.0), rng.uniform(1.0, 6.0)
    e1, e2 = _random_e1e2(rng)
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    x, y = _random_points(rng, (cx, cy))
    ref = np.asarray(_ExactBnSersic().function(x, y, amp, R, n, e1, e2, cx, cy))

    q, phi = prof.q_phi_from_e1e2(e1, e2)
    ours = prof.sersic_light(*prof.to_galaxy_frame(x, y, cx, cy, phi), R, n, q)
    ratio = ref / np.asarray(ours)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    np.testing.assert_allclose(ratio, amp, rtol=1e-10)  # amp is I at R = R_sersic, like ours


@pytest.mark.parametrize("seed", range(3))
def test_herculens_sersic_circularised_radius_needs_conversion(seed):
    # radius_major_axis=False: R_sersic is on sqrt(q x² + y²/q), r_sersic = R / sqrt(q).
    rng = np.random.default_rng(300 + seed)
    amp, R, n = rng.uniform(0.5, 5.0), rng.uniform(0.3, 2.0), rng.uniform(1.0, 6.0)
    e1, e2 = _random_e1e2(rng)
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    x, y = _random_points(rng, (cx, cy))
    ref = np.asarray(
        _ExactBnSersic(radius_major_axis=False).function(x, y, amp, R, n, e1, e2, cx, cy)
    )

    q, phi = prof.q_phi_from_e1e2(e1, e2)
    r_major = prof.r_sersic_major_from_circularised(R, q)
    ours = np.asarray(prof.sersic_light(*prof.to_galaxy_frame(x, y, cx, cy, phi), r_major, n, q))
    ratio = ref / ours
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    np.testing.assert_allclose(ratio, amp, rtol=1e-10)
    # without the conversion the profiles differ
    wrong = np.asarray(prof.sersic_light(*prof.to_galaxy_frame(x, y, cx, cy, phi), R, n, q))
    assert np.ptp(ref / wrong) / amp > 1e-2


def test_stock_herculens_sersic_differs_only_by_its_approximate_b_n():
    rng = np.random.default_rng(6)
    amp, R, n, cx, cy = 1.7, 0.9, 3.2, 0.1, -0.05
    e1, e2 = _random_e1e2(rng)
    x, y = _random_points(rng, (cx, cy))
    ref = np.asarray(Sersic().function(x, y, amp, R, n, e1, e2, cx, cy))
    q, phi = prof.q_phi_from_e1e2(e1, e2)
    xg, yg = prof.to_galaxy_frame(x, y, cx, cy, phi)
    ours = np.asarray(prof.sersic_light(xg, yg, R, n, q, amp))
    b_herculens = 1.9992 * n - 0.3271
    u = (np.hypot(xg, yg / q) / R) ** (1 / n)
    correction = np.exp(-(b_herculens - prof.sersic_b_np(n)) * (u - 1))
    np.testing.assert_allclose(ref, ours * correction, rtol=1e-10)


def test_r_sersic_conversions():
    rng = np.random.default_rng(7)
    R, q = rng.uniform(0.3, 2, 20), rng.uniform(0.3, 1, 20)
    major = prof.r_sersic_major_from_circularised(R, q)
    np.testing.assert_allclose(major, R / np.sqrt(q), rtol=1e-15)
    np.testing.assert_allclose(prof.r_sersic_circularised_from_major(major, q), R, rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# JAX transformations


def test_gradients_are_finite():
    args_kappa = (0.3, -0.2, 1.1, 2.1, 0.8)
    for point in ((0.3, -0.2), (0.0, 0.0)):
        g = jax.grad(prof.kappa_cored_pemd, argnums=range(5))(*point, *args_kappa[2:])
        assert all(np.isfinite(v) for v in g)
        g = jax.grad(prof.sersic_light, argnums=range(6))(*point, 1.0, 2.5, 0.8, 1.3)
        assert all(np.isfinite(v) for v in g)
    for fn in (prof.theta_E_from_epl, prof.theta_E_epl_from_emulator):
        assert all(np.isfinite(v) for v in jax.grad(fn, argnums=range(3))(1.2, 2.1, 0.7))
    for fn in (prof.r_sersic_major_from_circularised, prof.r_sersic_circularised_from_major):
        assert all(np.isfinite(v) for v in jax.grad(fn, argnums=range(2))(1.2, 0.7))
    for e in ((0.1, -0.05), (0.0, 0.0)):
        jac = jax.jacobian(lambda v: jnp.stack(prof.q_phi_from_e1e2(v[0], v[1])))(jnp.array(e))
        assert np.all(np.isfinite(jac))
    jac = jax.jacobian(lambda v: jnp.stack(prof.e1e2_from_q_phi(v[0], v[1])))(jnp.array([0.7, 0.3]))
    assert np.all(np.isfinite(jac))
    jac = jax.jacobian(lambda v: jnp.stack(prof.to_galaxy_frame(*v)))(
        jnp.array([0.5, 0.2, 0.1, 0.0, 0.4])
    )
    assert np.all(np.isfinite(jac))


def test_sersic_light_gradient_matches_finite_differences():
    params = np.array([0.4, -0.3, 1.1, 2.5, 0.8, 1.3])  # x, y, r, n, q, amp

    def f(p):
        return prof.sersic_light(*p)

    grad = jax.grad(f)(jnp.asarray(params))
    h = 1e-6
    fd = [(f(params + h * e) - f(params - h * e)) / (2 * h) for e in np.eye(6)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_jit_and_vmap_agree_with_eager():
    x = jnp.linspace(-1.0, 1.0, 7)
    eager = prof.kappa_cored_pemd(x, 0.3 * x, 1.1, 2.1, 0.8)
    np.testing.assert_allclose(
        jax.jit(prof.kappa_cored_pemd)(x, 0.3 * x, 1.1, 2.1, 0.8), eager, rtol=1e-14
    )
    n = jnp.array([2.0, 3.0, 4.0])
    batched = jax.vmap(prof.sersic_light, in_axes=(None, None, None, 0, None))(x, 0.2, 1.0, n, 0.7)
    assert batched.shape == (3, 7)
    np.testing.assert_allclose(batched[1], prof.sersic_light(x, 0.2, 1.0, 3.0, 0.7), rtol=1e-14)


@pytest.mark.parametrize(
    "radius, r_sersic, n_sersic, q",
    [(1.0, 0.4, 2.0, 0.7), (1.0, 1.5, 4.0, 0.9), (0.5, 2.0, 0.8, 0.5)],
)
def test_sersic_enclosed_fraction_against_direct_integration(radius, r_sersic, n_sersic, q):
    """The flux inside the isophote ``m < radius``, summed on a fine polar grid of the elliptical
    light (:func:`sersic_light`), over the exact total flux (:func:`sersic_total_flux`)."""
    # x = m cos t, y = q m sin t covers the isophote m; area element q m dm dt
    m = np.linspace(0.0, radius, 20001)[1:]
    t = np.linspace(0.0, 2 * np.pi, 73)[:-1]
    light = prof.sersic_light(
        m[:, None] * np.cos(t), q * m[:, None] * np.sin(t), r_sersic, n_sersic, q
    )
    integrand = np.asarray(light).mean(axis=1) * 2 * np.pi * q * m
    inside = np.sum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(m))
    inside += 0.5 * integrand[0] * m[0]  # (the first sliver, 0 < m < m[0])
    expected = inside / float(prof.sersic_total_flux(r_sersic, n_sersic, q))
    got = float(prof.sersic_enclosed_fraction(radius, r_sersic, n_sersic))
    assert got == pytest.approx(expected, rel=2e-4)
    assert float(prof.sersic_enclosed_fraction(r_sersic, r_sersic, n_sersic)) == pytest.approx(
        0.5, abs=1e-12
    )


def test_sersic_enclosed_fraction_derivatives():
    """First derivatives against central differences; second derivatives exist and agree with
    differences of the first (the exact-Hessian MAP step needs them)."""
    f = prof.sersic_enclosed_fraction
    args = np.array([0.6, 3.0])  # r_sersic, n_sersic
    g = jax.grad(lambda a: f(1.0, a[0], a[1]))
    h = 1e-6
    for k in range(2):
        e = np.eye(2)[k] * h
        fd = (float(f(1.0, *(args + e))) - float(f(1.0, *(args - e)))) / (2 * h)
        assert float(g(args)[k]) == pytest.approx(fd, rel=1e-6)
    hess = jax.hessian(lambda a: f(1.0, a[0], a[1]))(args)
    fd2 = np.stack([(g(args + np.eye(2)[k] * 1e-5) - g(args - np.eye(2)[k] * 1e-5)) / 2e-5
                    for k in range(2)])  # fmt: skip
    np.testing.assert_allclose(hess, fd2, rtol=1e-5, atol=1e-8)
