"""Cropping the forward model to the used spaxels leaves the prediction unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import skinn_jax
from skinn_jax.cosmology import FIDUCIAL
from skinn_jax.forward import SkyParams, build_forward_model, crop_to_used
from skinn_jax.ifu import PSF
from skinn_jax.inference.data import kcwi_example_layout, kinematic_data
from skinn_jax.likelihood import KinematicLikelihood


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def test_crop_to_used_keeps_positions():
    grid, bins = kcwi_example_layout()
    cropped, cropped_bins, (r0, r1, c0, c1) = crop_to_used(grid, bins)
    assert cropped.shape == (r1 - r0, c1 - c0) == (21, 21)
    np.testing.assert_array_equal(cropped_bins, bins[r0:r1, c0:c1])
    x, y = grid.coordinates()
    xc, yc = cropped.coordinates()
    np.testing.assert_allclose(xc, x[r0:r1, c0:c1], atol=1e-12)
    np.testing.assert_allclose(yc, y[r0:r1, c0:c1], atol=1e-12)
    assert bins.max() + 1 == 41 and (bins >= 0).sum() == (cropped_bins >= 0).sum()


def test_cropped_kcwi_prediction_equals_uncropped():
    """43 x 43 KCWI-format cube, RA to the left, 0.96" seeing, 41 bins in the central 3":
    cropping changes no bin by more than 1e-6 km/s and evaluates far fewer points."""
    emu = skinn_jax.Emulator.load("pca64s")
    grid, bins = kcwi_example_layout(center=(0.05, -0.03))
    data = kinematic_data(grid, bins, np.full(41, 250.0), np.eye(41) * 100.0, PSF.gaussian(0.96),
                          z_d=0.5, kind="vrms")  # fmt: skip
    params = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.2, 0.15, 70.0])
    sky = SkyParams(0.4, 0.05, -0.03, FIDUCIAL.D_dt, FIDUCIAL.D_d)
    preds = {}
    for crop in (True, False):
        lik = KinematicLikelihood(data, emu.vrms_at, sampling="points", supersampling=3,
                                  crop=crop)  # fmt: skip
        preds[crop] = np.asarray(jax.jit(lik.predict)(params, sky))
        r0, r1, c0, c1 = lik.forward.window
        if crop:
            assert r1 - r0 <= 21 and c1 - c0 <= 21
        else:
            assert (r1 - r0, c1 - c0) == (43, 43)
        if crop:
            n_cropped = lik.forward.n_points
    assert n_cropped < 0.5 * lik.forward.n_points
    assert np.max(np.abs(preds[True] - preds[False])) < 1e-6
    assert np.all(np.isfinite(preds[True])) and np.all(preds[True] > 100.0)


def test_crop_with_a_pixelated_psf():
    """A non-Gaussian kernel: same bins either way (analytic field, no emulator)."""
    grid, bins = kcwi_example_layout(n_side=31)
    kernel = np.outer([1, 3, 5, 3, 1], [1, 2, 4, 2, 1]).astype(float)
    psf = PSF.pixelated(kernel / kernel.sum(), supersampling=1)

    def field(p, x, y):
        return 200.0 + 30.0 * np.cos(0.0) * (x**2 + 0.5 * y**2) ** 0.3 * p[1]

    params = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.2, 0.15, 70.0])
    sky = SkyParams(0.4, 0.05, -0.03, FIDUCIAL.D_dt, FIDUCIAL.D_d)
    from skinn_jax.forward import predict_binned_vrms

    out = [
        predict_binned_vrms(
            build_forward_model(grid, bins, psf, supersampling=1, crop=crop),
            field,
            params,
            sky,
            0.5,
        )  # fmt: skip
        for crop in (True, False)
    ]
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-9)
