"""The real-data path (inference.data): files, WCS grids, position angles, sigma vs v_rms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skinn_jax.forward import SkyParams, build_forward_model, convolved_light_image
from skinn_jax.ifu import PSF, SpaxelGrid
from skinn_jax.inference import data as kd


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def kcwi_arrays(rng):
    grid = SpaxelGrid.regular((12, 14), 0.1457, flip_ra=True)
    x, y = grid.coordinates()
    bins = np.where(np.hypot(x, y) < 0.7, (np.hypot(x, y) / 0.25).astype(int) * 2 + (x > 0), -1)
    bins = np.unique(bins, return_inverse=True)[1].reshape(grid.shape) - 1
    n = bins.max() + 1
    a = rng.normal(size=(n, n))
    return grid, bins, rng.uniform(200, 260, n), a @ a.T + 25.0 * np.eye(n)


@pytest.mark.parametrize("fmt", ["npy", "txt", "fits", "h5"])
def test_load_kinematic_data_from_files(tmp_path, fmt):
    grid, bins, values, cov = kcwi_arrays(np.random.default_rng(0))
    paths = {}
    for key, array in (("bin_map", bins), ("values", values), ("covariance", cov)):
        path = tmp_path / f"{key}.{fmt}"
        if fmt == "npy":
            np.save(path, array)
        elif fmt == "txt":
            np.savetxt(path, array, fmt="%d" if key == "bin_map" else "%.17g")
        elif fmt == "fits":
            from astropy.io import fits

            fits.PrimaryHDU(np.asarray(array, float if key != "bin_map" else np.int32)).writeto(
                path
            )
        else:
            import h5py

            with h5py.File(path, "w") as f:
                f[key] = array
        paths[key] = path
    data = kd.load_kinematic_data(
        grid, paths["bin_map"], paths["values"], paths["covariance"], PSF.gaussian(0.96),
        z_d=0.35, kind="vrms", names={k: k for k in paths} if fmt == "h5" else None,
    )  # fmt: skip
    np.testing.assert_array_equal(data.bin_map, bins)
    np.testing.assert_array_equal(data.vrms, values)
    np.testing.assert_array_equal(data.covariance, cov)
    assert data.z_d == 0.35


def test_z_d_and_kind_are_required():
    grid, bins, values, cov = kcwi_arrays(np.random.default_rng(1))
    psf = PSF.gaussian(0.96)
    with pytest.raises(TypeError, match="z_d"):
        kd.kinematic_data(grid, bins, values, cov, psf, kind="vrms")
    with pytest.raises(ValueError, match="z_d"):
        kd.kinematic_data(grid, bins, values, cov, psf, z_d=None, kind="vrms")
    with pytest.raises(ValueError, match="kind must be 'vrms' or 'sigma'"):
        kd.kinematic_data(grid, bins, values, cov, psf, z_d=0.5, kind="v")
    with pytest.raises(ValueError, match="bin_map must hold integers"):
        kd.kinematic_data(grid, bins + 0.5, values, cov, psf, z_d=0.5, kind="vrms")
    # diagonal errors as a vector of variances; a float bin map from FITS
    data = kd.kinematic_data(grid, bins.astype(float), values, np.diag(cov), psf, z_d=0.5,
                             kind="sigma")  # fmt: skip
    np.testing.assert_array_equal(data.covariance, np.diag(np.diag(cov)))


def test_vrms_from_velocity_and_sigma_propagates_errors():
    v, s = np.array([0.0, 30.0, -80.0]), np.array([250.0, 240.0, 200.0])
    cv, cs = np.diag([25.0, 36.0, 49.0]), np.diag([64.0, 81.0, 100.0])
    vrms, cov = kd.vrms_from_velocity_and_sigma(v, s, cv, cs)
    np.testing.assert_allclose(vrms, np.hypot(v, s))
    assert cov[0, 0] == pytest.approx(64.0)  # no rotation: sigma's own error
    jac = jax.jacfwd(lambda a: jnp.hypot(a[:3], a[3:]))(jnp.concatenate([v, s]))
    full = np.block([[cv, np.zeros((3, 3))], [np.zeros((3, 3)), cs]])
    np.testing.assert_allclose(cov, jac @ full @ jac.T, rtol=1e-12)


def test_position_angle_round_trip():
    for pa in (0.0, 30.0, 90.0, 135.0, 179.0):
        phi = kd.phi_from_position_angle(pa)
        assert -math.pi / 2 <= phi < math.pi / 2
        assert kd.position_angle_from_phi(phi) == pytest.approx(pa, abs=1e-12)
    assert kd.phi_from_position_angle(90.0) == pytest.approx(0.0)  # major axis east-west: +x


@pytest.mark.parametrize("rotation_deg", [0.0, 37.0])
def test_position_angle_on_a_rotated_flipped_grid(rotation_deg):
    """Draw the lens light at PA = 62° (east of north) on an east-left grid rotated on the sky;
    the image's major axis, read through the grid's own pixel-to-angle matrix, is at PA = 62°."""
    pa = 62.0
    t = math.radians(rotation_deg)
    rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    pix2angle = rotation @ np.diag([-0.05, 0.05])  # east to the left, then rotated
    grid = SpaxelGrid(pix2angle, *(-pix2angle @ np.array([40.0, 40.0])), (81, 81))
    model = build_forward_model(grid, np.zeros(grid.shape, int), PSF.none(), sampling="points",
                                supersampling=3, center_box=(-0.1, 0.1, -0.1, 0.1),
                                field_half_width=5.5)  # fmt: skip
    params = np.array([1.2, 2.0, 0.8, 0.5, 0.8, 2.0, 0.0, 80.0])
    sky = SkyParams(kd.phi_from_position_angle(pa), 0.0, 0.0, 2000.0, 1000.0)
    image = np.asarray(convolved_light_image(model, params, sky))
    i, j = np.meshgrid(np.arange(81) - 40.0, np.arange(81) - 40.0, indexing="ij")
    x, y = grid.coordinates()
    w = image * np.exp(-(x**2 + y**2) / (2 * 0.5**2))  # a round window: the square field would bias
    w = w / w.sum()
    moments = np.array([[np.sum(w * j * j), np.sum(w * j * i)], [np.sum(w * j * i),
                        np.sum(w * i * i)]])  # fmt: skip
    # second moments in the angular frame: P M P^T
    angular = pix2angle @ moments @ pix2angle.T
    evals, evecs = np.linalg.eigh(angular)
    east, north = evecs[:, np.argmax(evals)]
    measured = math.degrees(math.atan2(east, north)) % 180.0
    assert measured == pytest.approx(pa, abs=0.2)


def test_grid_from_fits_header_matches_astropy_wcs():
    from astropy.wcs import WCS

    t = math.radians(25.0)
    scale = 0.1457 / 3600.0
    cd = scale * np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]])
    header = {"NAXIS1": 43, "NAXIS2": 43, "CRPIX1": 22.0, "CRPIX2": 21.0, "CRVAL1": 150.0,
              "CRVAL2": 2.0, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CD1_1": cd[0, 0],
              "CD1_2": cd[0, 1], "CD2_1": cd[1, 0], "CD2_2": cd[1, 1]}  # fmt: skip
    grid = kd.grid_from_fits_header(header)
    wcs = WCS(header)
    j, i = np.array([0, 42, 10, 21]), np.array([0, 42, 30, 20])
    ra, dec = wcs.pixel_to_world_values(j, i)  # 0-based pixel (x = column, y = row)
    x_ref = (ra - 150.0) * math.cos(math.radians(dec.mean())) * 3600.0
    y_ref = (dec - 2.0) * 3600.0
    x, y = grid.pixel_to_angle(j, i)
    np.testing.assert_allclose(x, x_ref, atol=2e-3)  # arcsec; tangent-plane curvature
    np.testing.assert_allclose(y, y_ref, atol=2e-3)
    assert grid.pix2angle[0, 0] < 0  # RA to the left
