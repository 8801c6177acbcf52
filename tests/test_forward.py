"""Tests of skinn_jax.ifu and skinn_jax.forward: the sky-plane forward model.

The reference is a brute-force NumPy implementation written independently of the module: explicit
loops over spaxels, sub-pixels and PSF kernel elements, each point placed on the sky with the
grid's matrix, rotated to the galaxy frame by hand, and weighted with a SciPy Sérsic.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from skinn_jax import forward as fw
from skinn_jax.cosmology import FIDUCIAL, lens_distances
from skinn_jax.forward import CenterBox, SkyParams
from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid, gaussian_kernel

PARAMS = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.2, 0.15, 70.0])
SKY = SkyParams(0.6, 0.07, -0.04, 2600.0, 1300.0)
Z_D = 0.5


@pytest.fixture(autouse=True)
def _float64():
    """Run every test of this module in float64 without touching the global JAX config."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------------
# Independent reference pieces (NumPy only)


def analytic_field(p, x, y, xp=jnp):
    """Smooth, x -> -x and y -> -y symmetric v_rms field (km/s) depending on all eight params."""
    theta_e, gamma, q_m, q_l, r_s, n_s, beta, inc = (p[i] for i in range(8))
    m2 = x**2 + (y / q_m) ** 2
    amplitude = 180.0 * theta_e**0.5 * (1.0 + 0.3 * (gamma - 2.0)) * (1.0 + 0.2 * beta)
    amplitude = amplitude * xp.sin(inc * math.pi / 180.0) ** 0.3
    amplitude = amplitude * (1.0 + 0.05 * (n_s - 3.0)) * (1.0 + 0.1 * (q_l - 0.8))
    return amplitude * (0.4 + m2 / (0.3 * r_s**2 + m2)) ** 0.5


def np_field(p, x, y):
    return analytic_field(p, x, y, xp=np)


def np_sersic(x, y, r_s, n_s, q, b_n=None):
    """Major-axis Sérsic with exact b_n (or a given one)."""
    b = scipy.special.gammaincinv(2 * n_s, 0.5) if b_n is None else b_n
    m = math.sqrt(x**2 + (y / q) ** 2)
    return math.exp(-b * ((m / r_s) ** (1.0 / n_s) - 1.0))


def np_distance_factor(d_dt, d_d, z_d):
    return math.sqrt(d_dt / ((1 + z_d) * d_d) / (FIDUCIAL.D_s / FIDUCIAL.D_ds))


def brute_force_moments(
    matrix, ra0, dec0, shape, s, kernel, bin_map, params, sky, field=np_field, b_n=None
):
    """Per-bin luminosity-weighted <v> and <v²> (fiducial distances) by explicit loops."""
    matrix = np.asarray(matrix, dtype=float)
    ny, nx = shape
    ku, kv = kernel.shape
    hu, hv = (ku - 1) // 2, (kv - 1) // 2
    n_bins = int(bin_map.max()) + 1
    w_sum, wv_sum, wv2_sum = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    cos, sin = math.cos(sky.phi), math.sin(sky.phi)
    for i in range(ny):
        for j in range(nx):
            b = bin_map[i, j]
            if b < 0:
                continue
            for a in range(s):
                for c in range(s):
                    # sub-pixel centre in (fractional) pixel units, then on the sky
                    pj, pi = j - 0.5 + (c + 0.5) / s, i - 0.5 + (a + 0.5) / s
                    for u in range(ku):
                        for v in range(kv):
                            qj, qi = pj - (v - hv) / s, pi - (u - hu) / s
                            x = matrix[0, 0] * qj + matrix[0, 1] * qi + ra0
                            y = matrix[1, 0] * qj + matrix[1, 1] * qi + dec0
                            dx, dy = x - sky.center_x, y - sky.center_y
                            xg, yg = cos * dx + sin * dy, -sin * dx + cos * dy
                            light = np_sersic(xg, yg, params[4], params[5], params[3], b_n)
                            vel = float(field(params, xg, yg))
                            w = kernel[u, v] * light
                            w_sum[b] += w
                            wv_sum[b] += w * vel
                            wv2_sum[b] += w * vel**2
    return wv_sum / w_sum, wv2_sum / w_sum


def predict(grid, bin_map, psf, params=PARAMS, sky=SKY, field=analytic_field, **options):
    """Binned prediction; point sampling unless ``sampling`` is given (the brute force's scheme)."""
    options.setdefault("sampling", "points")
    model = fw.build_forward_model(grid, bin_map, psf, **options)
    return np.asarray(fw.predict_binned_vrms(model, field, jnp.asarray(params), sky, Z_D))


def random_bins(rng, shape, n_bins, n_unused=2):
    """Bin map with every bin used and a few unused spaxels."""
    size = shape[0] * shape[1]
    bins = np.concatenate([np.arange(n_bins), rng.integers(0, n_bins, size - n_bins)])
    rng.shuffle(bins)
    bins[rng.choice(size, n_unused, replace=False)] = -1
    bins = bins.reshape(shape)
    # keep every bin non-empty after marking spaxels unused
    for k in range(n_bins):
        if not np.any(bins == k):
            bins[np.argwhere(bins < 0)[0][0], np.argwhere(bins < 0)[0][1]] = k
    return bins


def asymmetric_kernel(rng, shape=(5, 7)):
    kernel = rng.uniform(0.1, 1.0, shape)
    kernel[0, 0] = 3.0  # make orientation errors visible
    return kernel / kernel.sum()


# ----------------------------------------------------------------------------------------------
# Brute-force agreement


@pytest.mark.parametrize("convolution", ["fft", "direct"])
def test_matches_brute_force_reference(convolution):
    rng = np.random.default_rng(0)
    grid = SpaxelGrid.regular((4, 5), 0.06)
    bins = random_bins(rng, grid.shape, 6)
    kernel = asymmetric_kernel(rng)
    psf = PSF.pixelated(kernel, supersampling=3)
    got = predict(grid, bins, psf, supersampling=3, convolution=convolution)
    _, v2 = brute_force_moments(
        grid.pix2angle, grid.ra_at_xy_0, grid.dec_at_xy_0, grid.shape, 3, kernel, bins, PARAMS, SKY
    )
    expected = np_distance_factor(SKY.D_dt, SKY.D_d, Z_D) * np.sqrt(v2)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_matches_brute_force_on_rotated_flipped_offcentre_grid():
    rng = np.random.default_rng(1)
    angle = 0.3
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rot @ np.diag([-0.05, 0.05])  # RA to the left, rotated by 0.3 rad
    grid = SpaxelGrid(matrix, 0.4, -0.2, (5, 4))
    bins = random_bins(rng, grid.shape, 5)
    kernel = asymmetric_kernel(rng, (3, 5))
    psf = PSF.pixelated(kernel, supersampling=2)
    got = predict(grid, bins, psf, supersampling=2)
    _, v2 = brute_force_moments(matrix, 0.4, -0.2, grid.shape, 2, kernel, bins, PARAMS, SKY)
    expected = np_distance_factor(SKY.D_dt, SKY.D_d, Z_D) * np.sqrt(v2)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_herculens_light_option_matches_brute_force_with_its_bn():
    rng = np.random.default_rng(2)
    grid = SpaxelGrid.regular((3, 4), 0.07, flip_ra=True)
    bins = random_bins(rng, grid.shape, 4, n_unused=1)
    kernel = asymmetric_kernel(rng, (3, 3))
    psf = PSF.pixelated(kernel, supersampling=2)
    got = predict(grid, bins, psf, supersampling=2, light="herculens")
    b_n = 1.9992 * PARAMS[5] - 0.3271
    _, v2 = brute_force_moments(
        grid.pix2angle, grid.ra_at_xy_0, grid.dec_at_xy_0, grid.shape, 2, kernel, bins,
        PARAMS, SKY, b_n=b_n,
    )  # fmt: skip
    expected = np_distance_factor(SKY.D_dt, SKY.D_d, Z_D) * np.sqrt(v2)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    exact = predict(grid, bins, psf, supersampling=2)
    assert np.max(np.abs(exact - got)) > 0  # the two light options do differ


def test_spaxel_grid_matches_herculens_pixel_grid():
    from herculens.Coordinates.pixel_grid import PixelGrid
    from herculens.Util.util import (
        grid_from_coordinate_transform,
        subgrid_from_coordinate_transform,
    )

    matrix = np.array([[-0.05, 0.01], [0.02, 0.05]])
    hgrid = PixelGrid(6, 4, matrix, 0.3, -0.1)  # nx = 6, ny = 4
    grid = SpaxelGrid.from_herculens(hgrid)
    assert grid.shape == (4, 6)
    x, y = grid.coordinates()
    # Herculens's flat, row-major (x fastest) coordinates; its PixelGrid.pixel_coordinates
    # reshapes them to (nx, ny), which is only right for square grids.
    hx, hy = grid_from_coordinate_transform(6, 4, matrix, 0.3, -0.1)
    np.testing.assert_allclose(x.ravel(), hx, atol=1e-14)
    np.testing.assert_allclose(y.ravel(), hy, atol=1e-14)
    square = PixelGrid(5, 5, matrix, 0.3, -0.1)
    sx, sy = SpaxelGrid.from_herculens(square).coordinates()
    np.testing.assert_allclose(sx, square.pixel_coordinates[0], atol=1e-14)
    np.testing.assert_allclose(sy, square.pixel_coordinates[1], atol=1e-14)
    sx, sy = grid.supersampled_coordinates(3)
    hsx, hsy = subgrid_from_coordinate_transform(6, 4, matrix, 0.3, -0.1, subgrid_res=3)
    np.testing.assert_allclose(sx.ravel(), hsx, atol=1e-12)
    np.testing.assert_allclose(sy.ravel(), hsy, atol=1e-12)


def test_gaussian_kernel_matches_independent_formula():
    fwhm, s = 0.1, 4
    for matrix in (np.diag([0.05, 0.05]), np.diag([-0.05, 0.05])):
        kernel = gaussian_kernel(fwhm, matrix, s, truncation=4.0)
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
        half = math.ceil(4.0 * sigma / (0.05 / s))
        assert kernel.shape == (2 * half + 1, 2 * half + 1)
        d = np.arange(-half, half + 1) * 0.05 / s
        ref = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))
        np.testing.assert_allclose(kernel, ref / ref.sum(), rtol=1e-12)
        var = np.sum(kernel * d[None, :] ** 2)
        assert abs(var / sigma**2 - 1) < 1e-3
    assert gaussian_kernel(0.0, np.diag([0.05, 0.05]), 5).tolist() == [[1.0]]


# ----------------------------------------------------------------------------------------------
# Symmetries and limits


@pytest.mark.parametrize("sampling", ["points", "centred"])
def test_flipped_ra_grid_equals_standard_grid(sampling):
    rng = np.random.default_rng(3)
    standard = SpaxelGrid.regular((7, 8), 0.05)
    flipped = SpaxelGrid.regular((7, 8), 0.05, flip_ra=True)
    bins = random_bins(rng, standard.shape, 9)
    x_std, y_std = standard.coordinates()
    x_flp, y_flp = flipped.coordinates()
    np.testing.assert_allclose(x_flp[:, ::-1], x_std, atol=1e-14)  # same sky, columns reversed
    np.testing.assert_allclose(y_flp[:, ::-1], y_std, atol=1e-14)
    psf = PSF.gaussian(0.1)
    v_std = predict(standard, bins, psf, supersampling=3, sampling=sampling)
    v_flp = predict(flipped, bins[:, ::-1], psf, supersampling=3, sampling=sampling)
    np.testing.assert_allclose(v_flp, v_std, rtol=1e-11)
    if sampling == "centred":
        return
    # an asymmetric pixelated kernel must be mirrored with the pixel axis
    kernel = asymmetric_kernel(rng, (5, 5))
    v_std = predict(standard, bins, PSF.pixelated(kernel, 3), supersampling=3)
    v_flp = predict(flipped, bins[:, ::-1], PSF.pixelated(kernel[:, ::-1], 3), supersampling=3)
    np.testing.assert_allclose(v_flp, v_std, rtol=1e-11)


@pytest.mark.parametrize("sampling", ["points", "centred"])
def test_off_centre_grid_equals_centred_grid(sampling):
    rng = np.random.default_rng(4)
    shift = (0.7, -0.45)
    centred = SpaxelGrid.regular((6, 6), 0.05)
    moved = SpaxelGrid.regular((6, 6), 0.05, center=shift, flip_ra=True)
    bins = random_bins(rng, centred.shape, 7)
    psf = PSF.gaussian(0.1)
    v_ref = predict(centred, bins, psf, supersampling=3, sampling=sampling)
    sky = SKY._replace(center_x=SKY.center_x + shift[0], center_y=SKY.center_y + shift[1])
    box = CenterBox(0.0, 1.0, -1.0, 0.0)
    v_moved = predict(moved, bins[:, ::-1], psf, sky=sky, supersampling=3, center_box=box,
                      sampling=sampling)  # fmt: skip
    np.testing.assert_allclose(v_moved, v_ref, rtol=1e-11)


@pytest.mark.parametrize("sampling", ["points", "centred"])
def test_phi_plus_pi_invariance(sampling):
    rng = np.random.default_rng(5)
    grid = SpaxelGrid.regular((6, 7), 0.05)
    bins = random_bins(rng, grid.shape, 8)
    psf = PSF.gaussian(0.1)
    for light in ("sersic", "herculens"):
        v0 = predict(grid, bins, psf, supersampling=3, light=light, sampling=sampling)
        v1 = predict(grid, bins, psf, sky=SKY._replace(phi=SKY.phi + np.pi), supersampling=3,
                     light=light, sampling=sampling)  # fmt: skip
        np.testing.assert_allclose(v1, v0, rtol=1e-10)
    v2 = predict(grid, bins, psf, sky=SKY._replace(phi=SKY.phi + 0.5), supersampling=3,
                 sampling=sampling)  # fmt: skip
    assert np.max(np.abs(v2 - v0)) > 0.1  # while other rotations do change the prediction


def test_one_bin_per_spaxel_without_psf_returns_supersampled_field():
    grid = SpaxelGrid.regular((5, 6), 0.05, flip_ra=True)
    per_spaxel = np.arange(30).reshape(grid.shape)
    factor = np_distance_factor(SKY.D_dt, SKY.D_d, Z_D)
    cos, sin = math.cos(SKY.phi), math.sin(SKY.phi)
    # s = 1: exactly the field at the spaxel centres
    got = predict(grid, per_spaxel, PSF.none(), supersampling=1)
    x, y = grid.coordinates()
    dx, dy = x - SKY.center_x, y - SKY.center_y
    expected = factor * np_field(PARAMS, cos * dx + sin * dy, -sin * dx + cos * dy)
    np.testing.assert_allclose(got, expected.ravel(), rtol=1e-12)
    # s = 4: the luminosity-weighted rms of the field over each spaxel's 16 sub-pixels
    got = predict(grid, per_spaxel, PSF.none(), supersampling=4)
    expected = np.empty(grid.shape)
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    for i in range(5):
        for j in range(6):
            num = den = 0.0
            for oy in offsets:
                for ox in offsets:
                    xs = x[i, j] - 0.05 * ox  # flipped RA: x decreases with the column
                    ys = y[i, j] + 0.05 * oy
                    dx, dy = xs - SKY.center_x, ys - SKY.center_y
                    xg, yg = cos * dx + sin * dy, -sin * dx + cos * dy
                    light = np_sersic(xg, yg, PARAMS[4], PARAMS[5], PARAMS[3])
                    num += light * np_field(PARAMS, xg, yg) ** 2
                    den += light
            expected[i, j] = factor * math.sqrt(num / den)
    np.testing.assert_allclose(got, expected.ravel(), rtol=1e-12)


def test_zero_width_psf_is_identity():
    rng = np.random.default_rng(6)
    grid = SpaxelGrid.regular((6, 5), 0.05)
    bins = random_bins(rng, grid.shape, 6)
    none = predict(grid, bins, PSF.gaussian(0.0), supersampling=3)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    with_delta = predict(grid, bins, PSF.pixelated(delta, 3), supersampling=3)
    np.testing.assert_allclose(with_delta, none, rtol=1e-12)
    tiny = predict(grid, bins, PSF.gaussian(1e-4), supersampling=3)  # << sub-pixel
    np.testing.assert_allclose(tiny, none, rtol=1e-12)
    _, v2 = brute_force_moments(
        grid.pix2angle, grid.ra_at_xy_0, grid.dec_at_xy_0, grid.shape, 3, np.ones((1, 1)), bins,
        PARAMS, SKY,
    )  # fmt: skip
    np.testing.assert_allclose(none, np_distance_factor(SKY.D_dt, SKY.D_d, Z_D) * np.sqrt(v2),
                               rtol=1e-12)  # fmt: skip
    seeing = predict(grid, bins, PSF.gaussian(0.1), supersampling=3)
    assert np.max(np.abs(seeing - none)) > 0.05


def test_distance_rescaling_is_exact():
    rng = np.random.default_rng(7)
    grid = SpaxelGrid.regular((5, 5), 0.05)
    bins = random_bins(rng, grid.shape, 5)
    psf = PSF.gaussian(0.1)
    fiducial = predict(grid, bins, psf, sky=SKY._replace(D_dt=FIDUCIAL.D_dt, D_d=FIDUCIAL.D_d),
                       supersampling=2)  # fmt: skip
    _, v2 = brute_force_moments(
        grid.pix2angle, grid.ra_at_xy_0, grid.dec_at_xy_0, grid.shape, 2,
        gaussian_kernel(0.1, grid.pix2angle, 2), bins, PARAMS, SKY,
    )  # fmt: skip
    np.testing.assert_allclose(fiducial, np.sqrt(v2), rtol=1e-10)  # factor 1 at fiducial
    for d_dt, d_d in [(2300.0, 1400.0), (3400.0, 1000.0)]:
        got = predict(grid, bins, psf, sky=SKY._replace(D_dt=d_dt, D_d=d_d), supersampling=2)
        np.testing.assert_allclose(got / fiducial, np_distance_factor(d_dt, d_d, Z_D), rtol=1e-12)


def test_distance_rescaling_matches_jampy_at_other_distances():
    """JAM run at a lens's own distances equals JAM at fiducial times the factor (paper eq. 10)."""
    from skinn_jax.training.jam import jam_model, jampy_direct

    from skinn_jax.cosmology import vrms_distance_factor

    x = np.array([0.3, -0.8, 1.5, 0.05])
    y = np.array([0.2, 0.4, -0.9, 0.6])
    v_fid = jampy_direct(jam_model(PARAMS), x, y)
    for z_d, z_s, h0, om in [(0.5, 2.0, 65.0, 0.3), (0.3, 1.2, 75.0, 0.28)]:
        d = lens_distances(z_d, z_s, h0, om)
        dist = type(d)(*(float(v) for v in d))
        v_lens = jampy_direct(jam_model(PARAMS, dist), x, y)
        factor = float(vrms_distance_factor(dist.D_dt, dist.D_d, z_d))
        np.testing.assert_allclose(v_lens, factor * v_fid, rtol=1e-6)


def test_luminosity_weighting_differs_from_v_weighting_by_expected_amount():
    """Steep gradient within one large bin: sqrt<v²> - <v> = Var(v) / (sqrt<v²> + <v>)."""

    def steep(p, x, y, xp=jnp):
        return 40.0 + 300.0 * (x**2 + y**2) ** 0.5 + 0.0 * p[0]

    grid = SpaxelGrid.regular((6, 6), 0.1)
    bins = np.zeros(grid.shape, dtype=int)
    bins[:3] = 1
    bins[0, 0] = -1
    kernel = gaussian_kernel(0.15, grid.pix2angle, 2)
    psf = PSF.gaussian(0.15)
    second = predict(grid, bins, psf, field=steep, supersampling=2)
    first = predict(grid, bins, psf, field=steep, supersampling=2, moment="first")
    mean_v, mean_v2 = brute_force_moments(
        grid.pix2angle, grid.ra_at_xy_0, grid.dec_at_xy_0, grid.shape, 2, kernel, bins, PARAMS,
        SKY, field=lambda p, x, y: steep(p, x, y, np),
    )  # fmt: skip
    factor = np_distance_factor(SKY.D_dt, SKY.D_d, Z_D)
    np.testing.assert_allclose(first, factor * mean_v, rtol=1e-10)
    np.testing.assert_allclose(second, factor * np.sqrt(mean_v2), rtol=1e-10)
    expected_gap = factor * (mean_v2 - mean_v**2) / (np.sqrt(mean_v2) + mean_v)
    np.testing.assert_allclose(second - first, expected_gap, rtol=1e-8)
    assert np.all(second - first > 3.0)  # a large (~5 %), positive (Jensen) difference


# ----------------------------------------------------------------------------------------------
# Field of view and bad input


def test_field_of_view_is_checked_eagerly():
    psf = PSF.gaussian(0.1)
    big = SpaxelGrid.regular((160, 160), 0.05)  # corners at 5.6 arcsec from the centre
    with pytest.raises(ValueError, match="beyond the emulator's field"):
        fw.build_forward_model(big, np.zeros(big.shape, dtype=int), psf, supersampling=1)
    x, y = big.coordinates()
    inner = np.where(np.hypot(x, y) < 4.0, 0, -1)  # far spaxels unused: fine
    model = fw.build_forward_model(big, inner, psf, supersampling=1, sampling="points")
    assert model.max_radius < 5.5 and not model.needed.all()
    core = np.where(np.hypot(x, y) < 3.0, 0, -1)
    lattice = fw.build_forward_model(big, core, psf, supersampling=1)
    assert lattice.sampling == "centred" and lattice.max_radius < 5.5
    assert lattice.lattice.rows.size == 120 < big.shape[0]  # cropped to the used spaxels
    small = SpaxelGrid.regular((55, 55), 0.05)
    with pytest.raises(ValueError, match="center_box"):
        fw.build_forward_model(small, np.zeros(small.shape, dtype=int), psf,
                               center_box=CenterBox(-4.0, 4.0, -4.0, 4.0))  # fmt: skip
    lik_model = fw.build_forward_model(small, np.zeros(small.shape, dtype=int), psf)
    with pytest.raises(ValueError, match="center_x"):
        fw.check_sky_params(lik_model, SKY._replace(center_x=0.8))
    with pytest.raises(ValueError, match="D_d"):
        fw.check_sky_params(lik_model, SKY._replace(D_d=-1.0))
    with pytest.raises(ValueError, match="phi"):
        fw.check_sky_params(lik_model, SKY._replace(phi=float("nan")))


def _data(**overrides):
    grid = SpaxelGrid.regular((4, 4), 0.05)
    bins = np.arange(16).reshape(4, 4) // 4
    kwargs = dict(grid=grid, bin_map=bins, vrms=np.full(4, 200.0),
                  covariance=np.eye(4) * 100.0, psf=PSF.gaussian(0.1))  # fmt: skip
    kwargs.update(overrides)
    return KinematicData(**kwargs)


def test_bad_inputs_raise_clear_errors():
    assert _data().n_bins == 4
    np.testing.assert_allclose(_data().cholesky, np.eye(4) * 10.0)
    grid = SpaxelGrid.regular((4, 4), 0.05)
    bins = np.arange(16).reshape(4, 4) // 4
    with pytest.raises(ValueError, match=r"bin_map has shape \(4, 5\)"):
        _data(bin_map=np.zeros((4, 5), dtype=int))
    with pytest.raises(ValueError, match="data vs bins"):
        _data(vrms=np.full(3, 200.0), covariance=np.eye(3))
    with pytest.raises(ValueError, match=r"bins \[2\] have data but no spaxel"):
        _data(bin_map=np.where(bins == 2, -1, bins))
    with pytest.raises(ValueError, match="covariance has shape"):
        _data(covariance=np.eye(5))
    with pytest.raises(ValueError, match="not positive definite"):
        _data(covariance=np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="not positive definite"):
        _data(covariance=np.array([[1, 2, 0, 0], [2, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match="not symmetric"):
        _data(covariance=np.eye(4) + np.triu(np.ones((4, 4)), 1) * 0.1)
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in bins \[1\]"):
        _data(vrms=np.array([200.0, np.nan, 200.0, 200.0]))
    with pytest.raises(ValueError, match="covariance has non-finite"):
        _data(covariance=np.diag([1.0, np.nan, 1.0, 1.0]))
    with pytest.raises(ValueError, match="must hold integers"):
        _data(bin_map=bins + 0.5)
    with pytest.raises(ValueError, match="z_d"):
        _data(z_d=-0.1)
    with pytest.raises(ValueError, match="must sum to 1"):
        PSF.pixelated(np.ones((3, 3)), 1)
    with pytest.raises(ValueError, match="odd sizes"):
        PSF.pixelated(np.ones((4, 4)) / 16.0, 1)
    with pytest.raises(ValueError, match="FWHM"):
        PSF.gaussian(-0.1)
    with pytest.raises(ValueError, match="supersampling"):
        PSF.pixelated(np.ones((1, 1)), 0)
    with pytest.raises(ValueError, match="resample the kernel"):
        fw.build_forward_model(grid, bins, PSF.pixelated(np.ones((1, 1)), 3), supersampling=5)
    with pytest.raises(ValueError, match="singular"):
        SpaxelGrid(np.zeros((2, 2)), 0.0, 0.0, (3, 3))
    with pytest.raises(ValueError, match="shape"):
        SpaxelGrid(np.eye(2), 0.0, 0.0, (3, 0))
    with pytest.raises(ValueError, match="empty bins"):
        fw.build_forward_model(grid, np.where(bins == 1, 3, bins), PSF.none())
    with pytest.raises(ValueError, match="no used spaxel"):
        fw.build_forward_model(grid, -np.ones((4, 4), dtype=int), PSF.none())
    with pytest.raises(ValueError, match="supersampling must be"):
        fw.build_forward_model(grid, bins, PSF.none(), supersampling=0)


def test_field_from_quadrant_interpolates_the_emulator_map():
    from skinn_jax.grid import quadrant_coordinates

    qx, qy = quadrant_coordinates()

    def quadrant(p):  # an even quadratic: cubic convolution reproduces it exactly
        return p[0] * (100.0 + 3.0 * jnp.asarray(qx) ** 2 - 2.0 * jnp.asarray(qy) ** 2)

    field = jax.jit(fw.field_from_quadrant(quadrant))
    rng = np.random.default_rng(8)
    x, y = rng.uniform(-5.45, 5.45, (2, 300))
    got = np.asarray(field(jnp.asarray(PARAMS), jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(got, PARAMS[0] * (100.0 + 3.0 * x**2 - 2.0 * y**2), rtol=1e-12)
    edge = np.asarray(field(jnp.asarray(PARAMS), jnp.asarray([5.5, -5.5]), jnp.asarray([0.0, 5.5])))
    assert np.all(np.isfinite(edge))
    # central refinement: points with |x|, |y| <= 0.1 come from vrms_at's fine table
    refined = jax.jit(
        fw.field_from_quadrant(
            quadrant, lambda p, x, y: p[0] * (101.0 + 3.0 * x**2 - 2.0 * y**2 + x**4)
        )
    )
    got = np.asarray(refined(jnp.asarray(PARAMS), jnp.asarray(x), jnp.asarray(y)))
    inner = (np.abs(x) <= 0.1) & (np.abs(y) <= 0.1)
    expected = PARAMS[0] * (100.0 + 3.0 * x**2 - 2.0 * y**2 + inner * (1.0 + x**4))
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    xi, yi = rng.uniform(-0.1, 0.1, (2, 50))
    got = np.asarray(refined(jnp.asarray(PARAMS), jnp.asarray(xi), jnp.asarray(yi)))
    np.testing.assert_allclose(got, PARAMS[0] * (101.0 + 3 * xi**2 - 2 * yi**2 + xi**4), rtol=1e-9)
    grid = SpaxelGrid.regular((5, 5), 0.05)
    bins = np.arange(25).reshape(5, 5) // 5
    model = fw.build_forward_model(grid, bins, PSF.gaussian(0.1), supersampling=2)
    grad = jax.jit(jax.grad(lambda p: fw.predict_binned_vrms(model, field, p, SKY, Z_D).sum()))(
        jnp.asarray(PARAMS)
    )
    assert np.isfinite(grad).all() and grad[0] > 0


# ----------------------------------------------------------------------------------------------
# Centre-aligned quadrature: exact at the centre, smooth in the centre


def power_law_field(p, x, y):
    """Power-law-like v_rms (km/s) of the real-lens space (9 parameters, ``r_core`` last):
    ``v² ∝ (m² + r_core²)^((2-γ)/2)``, which diverges at the centre for γ > 2 and r_core = 0."""
    theta_e, gamma, q_m, r_core = p[0], p[1], p[2], p[8]
    m2 = x**2 + (y / q_m) ** 2 + r_core**2
    v2 = 180.0**2 * theta_e ** (gamma - 1.0) * m2 ** ((2.0 - gamma) / 2.0) * (1.0 + 0.2 * p[6])
    return jnp.sqrt(v2 * (1.0 + 0.05 * (p[5] - 3.0)) / (1.0 + 0.3 * m2) ** 0.1)


def real_lens_params(n_sersic, gamma, r_core):
    return jnp.asarray([1.2, gamma, 0.8, 0.7, 0.9, n_sersic, 0.15, 70.0, r_core])


def central_bin(model, field, params):
    """Jitted ``(params, center_x, center_y) -> v_rms`` of the bin of the central spaxel."""
    centre = model.grid.shape[0] // 2 * model.grid.shape[1] + model.grid.shape[1] // 2

    def value(p, cx, cy):
        sky = SkyParams(0.6, cx, cy, FIDUCIAL.D_dt, FIDUCIAL.D_d)
        return fw.predict_binned_vrms(model, field, p, sky, Z_D)[centre]

    return jax.jit(value)


@pytest.mark.parametrize(
    "n_sersic, gamma, r_core", [(3.5, 2.1, 0.08), (1.0, 2.5, 0.0), (6.0, 2.5, 0.0)]
)
def test_centred_central_bin_matches_converged_reference(n_sersic, gamma, r_core):
    """The central spaxel's v_rms within 1e-4 of the converged value for centres from on a
    sub-pixel centre to half a sub-pixel off, at the default lattice (one cell per spaxel)."""
    grid = SpaxelGrid.regular((7, 7), 0.05)
    bins = np.arange(49).reshape(7, 7)
    psf = PSF.gaussian(0.1)
    params = real_lens_params(n_sersic, gamma, r_core)
    model = fw.build_forward_model(grid, bins, psf)
    assert model.sampling == "centred" and model.supersampling == 1
    fine = [fw.build_forward_model(grid, bins, psf, supersampling=s) for s in (8, 10)]
    get, get_8, get_10 = (central_bin(m, power_law_field, params) for m in [model, *fine])
    cell = 0.05 / model.supersampling
    for t in (0.0, 0.25, 0.5):
        cx, cy = t * cell, 0.6 * t * cell
        reference = float(get_10(params, cx, cy))
        assert abs(float(get_8(params, cx, cy)) / reference - 1.0) < 2e-5  # converged
        assert abs(float(get(params, cx, cy)) / reference - 1.0) < 1e-4
    if r_core > 0:  # point sampling converges too (slowly): an independent reference
        points = fw.build_forward_model(grid, bins, psf, supersampling=40, sampling="points")
        got = float(get(params, 0.25 * cell, 0.15 * cell))
        independent = float(
            central_bin(points, power_law_field, params)(params, 0.25 * cell, 0.15 * cell)
        )
        assert abs(got / independent - 1.0) < 1e-4
    # the flaw this replaces: a sub-pixel centre on the lens
    points = fw.build_forward_model(grid, bins, psf, supersampling=5, sampling="points")
    on_sample = float(central_bin(points, power_law_field, params)(params, 0.0, 0.0))
    assert not abs(on_sample / float(get_10(params, 0.0, 0.0)) - 1.0) < 5e-4


def _centre_scan(model, field, params, n=61):
    """v_rms of the central bin and its derivative along center_x over two lattice cells."""
    value = central_bin(model, field, params)
    both = jax.jit(jax.vmap(jax.value_and_grad(value, argnums=1), in_axes=(None, 0, None)))
    cx = np.linspace(-0.025, 0.025, n)
    v, g = both(params, jnp.asarray(cx), 0.0041)
    return cx, np.asarray(v), np.asarray(g)


def _spikes(cx, v, g):
    """(value jumps: gradient vs finite differences, gradient spikes: second differences), both
    relative to the gradient's range over the scan."""
    scale = np.ptp(g) + 1e-300
    fd = (v[2:] - v[:-2]) / (cx[2:] - cx[:-2])
    return np.max(np.abs(g[1:-1] - fd)) / scale, np.max(np.abs(np.diff(g, 2))) / scale


@pytest.mark.parametrize("field_name", ["power_law", "emulator"])
def test_centred_prediction_is_smooth_in_the_centre(field_name):
    """No jumps in the central bin and no spikes in its derivative along a scan of the centre
    (the point-sampled model has both)."""
    grid = SpaxelGrid.regular((9, 9), 0.05)
    bins = np.arange(81).reshape(9, 9)
    psf = PSF.gaussian(0.1)
    if field_name == "power_law":
        field, params = power_law_field, real_lens_params(4.0, 2.4, 0.0)
    else:
        from skinn_jax.inference.kinematics import emulator_field, load_emulator

        field, params = emulator_field(load_emulator()), jnp.asarray(PARAMS)
    centred = fw.build_forward_model(grid, bins, psf)
    jumps, spikes = _spikes(*_centre_scan(centred, field, params))
    assert jumps < 1e-3 and spikes < 1e-3  # measured: 1e-5 - 2e-5 and 6e-5 - 1.3e-4
    points = fw.build_forward_model(grid, bins, psf, sampling="points")
    p_jumps, p_spikes = _spikes(*_centre_scan(points, field, params))
    assert p_jumps > 1e-2 and p_spikes > 5e-2  # measured: 0.016 - 0.018 and 0.07 - 0.10
