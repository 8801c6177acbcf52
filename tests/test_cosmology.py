"""Tests of skinn_jax.cosmology: distances vs astropy, fiducial numbers, gradients, validation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy import constants as const
from astropy import units as u
from astropy.cosmology import FlatLambdaCDM

from skinn_jax import cosmology as cosmo


@pytest.fixture(autouse=True)
def _float64():
    """Run every test of this module in float64 without touching the global JAX config."""
    with jax.enable_x64(True):
        yield


_RNG = np.random.default_rng(20240611)
_RANDOM_Z = [
    (float(zd), float(zd + dz))
    for zd, dz in zip(_RNG.uniform(0.05, 1.5, 5), _RNG.uniform(0.1, 4.0, 5), strict=True)
]
REDSHIFT_PAIRS = [(0.5, 2.0), (0.1, 0.3), (0.3, 3.5), (1.0, 1.05), (0.05, 9.5), *_RANDOM_Z]
COSMOLOGIES = [(72.0, 0.32), (67.4, 0.315), (55.0, 0.05), (90.0, 0.9)]


def _astropy(H0: float, Om: float) -> FlatLambdaCDM:
    return FlatLambdaCDM(H0=H0, Om0=Om, Tcmb0=0)


def _astropy_dds(ref: FlatLambdaCDM, z1, z2) -> np.ndarray:
    """Angular-diameter distance between z1 and z2 (astropy >= 7 API, older fallback), Mpc."""
    try:
        return ref.angular_diameter_distance(z1, z2).value
    except TypeError:
        return ref.angular_diameter_distance_z1z2(z1, z2).value


@pytest.mark.parametrize("H0, Om", COSMOLOGIES)
@pytest.mark.parametrize("z_d, z_s", REDSHIFT_PAIRS)
def test_lens_distances_match_astropy(z_d, z_s, H0, Om):
    ref = _astropy(H0, Om)
    d = cosmo.lens_distances(z_d, z_s, H0, Om)
    D_d = ref.angular_diameter_distance(z_d).value
    D_s = ref.angular_diameter_distance(z_s).value
    D_ds = _astropy_dds(ref, z_d, z_s)
    D_dt = (1 + z_d) * D_d * D_s / D_ds
    np.testing.assert_allclose(
        [d.D_d, d.D_s, d.D_ds, d.D_dt], [D_d, D_s, D_ds, D_dt], rtol=1e-7, atol=0
    )


def test_single_distance_functions_match_astropy():
    ref = _astropy(72.0, 0.32)
    z = np.array([0.0, 1e-3, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0])
    np.testing.assert_allclose(
        cosmo.comoving_distance_mpc(z, 72.0, 0.32), ref.comoving_distance(z).value, rtol=1e-7
    )
    np.testing.assert_allclose(
        cosmo.angular_diameter_distance_mpc(z, 72.0, 0.32),
        ref.angular_diameter_distance(z).value,
        rtol=1e-7,
    )
    z1, z2 = np.array([0.1, 0.5, 2.0]), np.array([0.4, 2.0, 9.0])
    np.testing.assert_allclose(
        cosmo.angular_diameter_distance_between_mpc(z1, z2, 72.0, 0.32),
        _astropy_dds(ref, z1, z2),
        rtol=1e-7,
    )


def test_einstein_de_sitter_closed_form_to_z_10():
    # Om = 1: D_C = 2 c/H0 (1 - 1/sqrt(1+z)); checks the quadrature to 1e-7 up to z = 10.
    z = np.linspace(0.01, 10.0, 40)
    exact = 2 * cosmo.SPEED_OF_LIGHT_KM_S / 70.0 * (1 - 1 / np.sqrt(1 + z))
    np.testing.assert_allclose(cosmo.comoving_distance_mpc(z, 70.0, 1.0), exact, rtol=1e-12)


def test_fiducial_numbers_of_conventions():
    fid = cosmo.FIDUCIAL
    assert all(type(v) is float for v in fid)
    assert round(fid.D_d, 3) == 1215.739
    assert round(fid.D_s, 3) == 1650.753
    assert round(fid.D_ds, 3) == 1042.883
    assert round(fid.D_dt, 2) == 2886.54
    assert (cosmo.FIDUCIAL_H0, cosmo.FIDUCIAL_OM) == (72.0, 0.32)
    assert (cosmo.FIDUCIAL_Z_D, cosmo.FIDUCIAL_Z_S) == (0.5, 2.0)
    jax_fid = cosmo.lens_distances(cosmo.FIDUCIAL_Z_D, cosmo.FIDUCIAL_Z_S)
    np.testing.assert_allclose(jax_fid, fid, rtol=1e-13)
    assert math.isclose(fid.D_dt, 1.5 * fid.D_d * fid.D_s / fid.D_ds, rel_tol=1e-15)


def test_distances_scale_exactly_as_inverse_H0():
    base = cosmo.lens_distances(0.4, 1.7, 72.0, 0.3)
    for factor in (0.5, 1.3, 2.0):
        scaled = cosmo.lens_distances(0.4, 1.7, 72.0 * factor, 0.3)
        np.testing.assert_allclose(np.array(scaled) * factor, base, rtol=1e-14)


def _field(index: int, z_d, z_s, H0, Om):
    return cosmo.lens_distances(z_d, z_s, H0, Om)[index]


@pytest.mark.parametrize("field", range(4), ids=["D_d", "D_s", "D_ds", "D_dt"])
def test_gradients_match_finite_differences(field):
    point = (0.5, 2.0, 72.0, 0.32)  # z_d, z_s, H0, Om
    grads = jax.grad(_field, argnums=(1, 2, 3, 4))(field, *point)
    for i, g in enumerate(grads):
        assert np.isfinite(g)
        h = 1e-5 * max(1.0, abs(point[i]))
        up, down = list(point), list(point)
        up[i] += h
        down[i] -= h
        fd = (_field(field, *up) - _field(field, *down)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_comoving_distance_derivative_is_hubble_distance_over_E():
    z, H0, Om = 1.3, 70.0, 0.3
    dDc_dz = jax.grad(cosmo.comoving_distance_mpc)(z, H0, Om)
    expected = cosmo.SPEED_OF_LIGHT_KM_S / H0 / math.sqrt(Om * (1 + z) ** 3 + 1 - Om)
    np.testing.assert_allclose(dDc_dz, expected, rtol=1e-12)


def test_jit_vmap_and_broadcasting():
    z_d = jnp.array([0.3, 0.5, 0.8])
    z_s = jnp.array([1.0, 2.0, 3.0])
    eager = cosmo.lens_distances(z_d, z_s, 70.0, 0.3)
    jitted = jax.jit(cosmo.lens_distances)(z_d, z_s, 70.0, 0.3)
    mapped = jax.vmap(cosmo.lens_distances, in_axes=(0, 0, None, None))(z_d, z_s, 70.0, 0.3)
    for a, b, c in zip(eager, jitted, mapped, strict=True):
        assert a.shape == (3,)
        np.testing.assert_allclose(a, b, rtol=1e-13)
        np.testing.assert_allclose(a, c, rtol=1e-13)
    grid = cosmo.comoving_distance_mpc(jnp.ones((4, 1)), jnp.array([60.0, 70.0, 80.0]), 0.3)
    assert grid.shape == (4, 3)


def test_sigma_crit_matches_astropy_units():
    fid = cosmo.FIDUCIAL
    expected = (
        const.c**2 / (4 * np.pi * const.G) * (fid.D_s / (fid.D_d * fid.D_ds)) / u.Mpc
    ).to_value(u.Msun / u.pc**2)
    got = cosmo.sigma_crit_msun_pc2(fid.D_d, fid.D_s, fid.D_ds)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert 2100 < float(got) < 2200


def test_vrms_distance_factor_is_one_at_fiducial():
    fid = cosmo.FIDUCIAL
    np.testing.assert_allclose(
        cosmo.vrms_distance_factor(fid.D_dt, fid.D_d, cosmo.FIDUCIAL_Z_D), 1.0, rtol=1e-14
    )


def test_vrms_distance_factor_scaling():
    fid = cosmo.FIDUCIAL
    z_d = cosmo.FIDUCIAL_Z_D
    f = cosmo.vrms_distance_factor
    # sqrt(D_dt) and 1/sqrt((1+z_d) D_d)
    np.testing.assert_allclose(f(4 * fid.D_dt, fid.D_d, z_d), 2.0, rtol=1e-14)
    np.testing.assert_allclose(f(fid.D_dt, 4 * fid.D_d, z_d), 0.5, rtol=1e-14)
    np.testing.assert_allclose(
        f(fid.D_dt, fid.D_d, 2 * (1 + z_d) - 1), 1 / math.sqrt(2), rtol=1e-14
    )
    # for any lens it is sqrt((D_s/D_ds) / (D_s/D_ds)_fid), hence independent of H0
    values = []
    for H0 in (60.0, 72.0, 85.0):
        d = cosmo.lens_distances(0.7, 1.6, H0, 0.3)
        value = f(d.D_dt, d.D_d, 0.7)
        np.testing.assert_allclose(
            value, np.sqrt(d.D_s / d.D_ds / (fid.D_s / fid.D_ds)), rtol=1e-13
        )
        values.append(value)
    np.testing.assert_allclose(values, values[0], rtol=1e-13)
    grads = jax.grad(f, argnums=(0, 1, 2))(fid.D_dt, fid.D_d, z_d)
    assert all(np.isfinite(g) for g in grads)
    np.testing.assert_allclose(grads[0], 0.5 / fid.D_dt, rtol=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda: cosmo.lens_distances(2.0, 0.5),
        lambda: cosmo.lens_distances(0.5, 0.5),
        lambda: cosmo.lens_distances(np.array([0.3, 0.8]), np.array([1.0, 0.7])),
        lambda: cosmo.lens_distances(-0.1, 1.0),
        lambda: cosmo.lens_distances(0.5, 2.0, H0=0.0),
        lambda: cosmo.lens_distances(0.5, 2.0, H0=-70.0),
        lambda: cosmo.lens_distances(0.5, 2.0, Om=0.0),
        lambda: cosmo.lens_distances(0.5, 2.0, Om=1.2),
        lambda: cosmo.lens_distances(0.5, 2.0, Om=np.float64(-0.3)),
        lambda: cosmo.comoving_distance_mpc(np.array([0.5, -1.0]), 70.0, 0.3),
        lambda: cosmo.angular_diameter_distance_mpc(-0.5, 70.0, 0.3),
        lambda: cosmo.angular_diameter_distance_between_mpc(1.0, 0.5, 70.0, 0.3),
        lambda: cosmo.vrms_distance_factor(-1.0, 1000.0, 0.5),
        lambda: cosmo.sigma_crit_msun_pc2(1000.0, 0.0, 500.0),
    ],
)
def test_bad_concrete_input_raises(call):
    with pytest.raises(ValueError):
        call()


def test_om_equal_one_is_allowed():
    assert np.isfinite(cosmo.lens_distances(0.5, 2.0, 70.0, 1.0).D_dt)


def test_no_validation_inside_jit():
    # Traced values are never checked (and never force a host sync): no exception here.
    out = jax.jit(cosmo.lens_distances)(2.0, 0.5, 72.0, 0.32)
    assert out.D_ds < 0
