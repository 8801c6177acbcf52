"""Tests of skinn_jax.inference.mocks.kinematics, and the forward model end to end against jampy."""

from __future__ import annotations

import contextlib
import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skinn_jax.training.jam import jam_model, jam_vrms

from skinn_jax.cosmology import FIDUCIAL
from skinn_jax.forward import SkyParams, cubic_interpolate
from skinn_jax.inference.mocks import kinematics as mk
from skinn_jax.likelihood import KinematicLikelihood
from skinn_jax.profiles import sersic_b_np, sersic_total_flux_np

SEED = 3


@pytest.fixture(autouse=True)
def _float64():
    """Run every test of this module in float64 without touching the global JAX config."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def mock():
    return mk.make_mock_kinematics(SEED)


def test_mock_is_seeded_and_follows_the_paper_settings(mock):
    again = mk.make_mock_kinematics(SEED)
    np.testing.assert_array_equal(again.data.vrms, mock.data.vrms)
    np.testing.assert_array_equal(again.data.bin_map, mock.data.bin_map)
    other = mk.make_mock_kinematics(SEED + 1)
    assert not np.array_equal(other.params, mock.params)
    data = mock.data
    assert data.grid.shape == (55, 55) and math.isclose(data.grid.pixel_scale, 0.05)
    assert data.psf.fwhm == 0.1 and data.z_d == 0.5
    assert 20 <= data.n_bins <= 100 and np.all(data.bin_map >= 0)
    sky = mock.sky
    assert 0.0 <= sky.phi <= math.pi / 2
    assert abs(sky.center_x) <= 0.15 and abs(sky.center_y) <= 0.15
    assert abs(sky.D_dt / FIDUCIAL.D_dt - 1) <= 0.2 and abs(sky.D_d / FIDUCIAL.D_d - 1) <= 0.2
    frac = mock.sigma / mock.vrms_true
    np.testing.assert_allclose(frac, mk.noise_fraction(mock.bin_sn), rtol=1e-12)
    assert np.all((frac >= 0.05 - 1e-12) & (frac <= 0.10 + 1e-12))
    np.testing.assert_allclose(np.diag(data.covariance), mock.sigma**2)
    pulls = (data.vrms - mock.vrms_true) / mock.sigma
    assert np.all(np.abs(pulls) < 5)
    # distances used for JAM reproduce D_d and D_dt
    d = mock.distances
    assert math.isclose(d.D_d, sky.D_d)
    assert math.isclose((1 + 0.5) * d.D_d * d.D_s / d.D_ds, sky.D_dt, rel_tol=1e-12)


def test_noise_fraction_and_light_normalisation(mock):
    np.testing.assert_allclose(mk.noise_fraction(np.array([5, 10, 25, 40, 80])),
                               [0.10, 0.10, 0.075, 0.05, 0.05])  # fmt: skip
    s = mk.MockSettings()
    total_e = 10 ** (-0.4 * (s.magnitude - s.zero_point)) * s.exposure_s
    in_field = mock.light_expected.sum() / total_e
    assert 0.3 < in_field < 1.0  # the 2.75" field holds most, not all, of the light
    sky_e = 10 ** (-0.4 * (s.sky_magnitude - s.zero_point)) * 0.05**2 * s.exposure_s
    np.testing.assert_allclose(
        mock.light_noise**2, mock.light_expected + sky_e + s.read_noise**2, rtol=1e-12
    )
    # Sérsic total flux formula against a direct numerical integral
    r = np.linspace(0, 60, 600001)
    b = float(sersic_b_np(3.0))
    profile = np.exp(-b * ((r / 0.8) ** (1 / 3.0) - 1))
    numeric = np.trapezoid(2 * np.pi * r * profile, r) * 0.7
    assert math.isclose(sersic_total_flux_np(0.8, 3.0, 0.7), numeric, rel_tol=1e-4)


def test_cubic_interpolation_and_tabulated_jam_accuracy(mock):
    rng = np.random.default_rng(0)
    step, origin = 0.1, -2.0
    grid = origin + step * np.arange(41)
    gx, gy = np.meshgrid(grid, grid)
    table = 1.0 + 0.3 * gx - 0.2 * gy + 0.05 * gx**2 + 0.1 * gx * gy - 0.07 * gy**2
    x, y = rng.uniform(-1.8, 1.8, (2, 200))
    exact = 1.0 + 0.3 * x - 0.2 * y + 0.05 * x**2 + 0.1 * x * y - 0.07 * y**2
    got = cubic_interpolate(jnp.asarray(table), origin, step, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(got, exact, rtol=1e-12)  # Keys reproduces quadratics exactly
    field = mk.tabulated_jam_field(mock.params, 1.0, step=0.005)
    x, y = rng.uniform(-1.0, 1.0, (2, 400))
    err = np.asarray(field(None, jnp.asarray(x), jnp.asarray(y))) - jam_vrms(mock.params, x, y)
    assert np.max(np.abs(err)) < 0.05 and np.median(np.abs(err)) < 0.005


def test_end_to_end_against_jampy_with_its_own_psf(mock):
    """jampy's PSF + pixel convolution at spaxel centres, flux-weighted bins, vs this model.

    jampy: ``jam_axi_proj`` at the lens's own distances with ``sigmapsf``, ``pixsize`` and
    ``pixang`` (spaxels rotated by φ in the galaxy frame), ``v_bin² = Σ flux v² / Σ flux``.
    This model: the likelihood's prediction with the JAM truth tabulated at fiducial distances
    (a JAX field) and the distance rescaling.
    """
    from jampy.axi.jam_axi_proj import jam_axi_proj
    from skinn_jax.training.mge import light_mge

    data, params, sky = mock.data, mock.params, mock.sky
    # jampy's flux is the analytic PSF-convolved MGE: its light must be the Sérsic's
    light = light_mge(params[4], params[5])
    mge_total = np.sum(2 * np.pi * light.peak * light.sigma_arcsec**2) * params[3]
    assert math.isclose(mge_total, sersic_total_flux_np(params[4], params[5], params[3]),
                        rel_tol=1e-3)  # fmt: skip

    lik = KinematicLikelihood(data, lambda p, x, y: 0.0 * x)
    field = mk.field_for_forward_model(lik.forward, params)
    lik = KinematicLikelihood(data, field)
    ours = np.asarray(jax.jit(lik.predict)(jnp.asarray(params), SkyParams(*sky)))

    model = jam_model(params, mock.distances)
    x, y = data.grid.coordinates()
    dx, dy = x - sky.center_x, y - sky.center_y
    xg = math.cos(sky.phi) * dx + math.sin(sky.phi) * dy
    yg = -math.sin(sky.phi) * dx + math.cos(sky.phi) * dy
    kl, km = model.surf_light.size, model.surf_mass.size
    with contextlib.redirect_stdout(io.StringIO()):
        jam = jam_axi_proj(
            model.surf_light, model.sigma_light, np.full(kl, model.q_light),
            model.surf_mass, model.sigma_mass, np.full(km, model.q_mass),
            model.inclination_deg, 0.0, model.distance_mpc, xg.ravel(), yg.ravel(),
            align="cyl", moment="zz", beta=np.full(kl, model.beta_z),
            sigmapsf=data.psf.fwhm / (2 * math.sqrt(2 * math.log(2))),
            pixsize=data.grid.pixel_scale, pixang=math.degrees(sky.phi),
            nrad=60, nang=20, step=0.005, plot=False, quiet=True,
        )  # fmt: skip
    bins = data.bin_map.ravel()
    jampy_bins = np.sqrt(np.bincount(bins, jam.flux * jam.model**2) / np.bincount(bins, jam.flux))
    diff = ours - jampy_bins
    print(f"jampy end to end: max |diff| {np.abs(diff).max():.3f} km/s, "
          f"median {np.median(np.abs(diff)):.4f} km/s over {data.n_bins} bins")  # fmt: skip
    assert np.max(np.abs(diff)) < 0.5
    # and the mock's own truth (JAM at every sub-pixel) agrees with the tabulated-field model
    assert np.max(np.abs(ours - mock.vrms_true)) < 0.2
