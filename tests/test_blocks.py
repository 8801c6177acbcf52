"""Kinematics-only NumPyro models built from blocks (inference.blocks) with user priors.

Cases of issue 19: (1) kinematics only with a lens-model prior, (2) two data sets of one lens,
(3) a single aperture / slit through the same forward model (checked against a brute-force
integral of the emulator's map).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.signal
from numpyro.infer import Predictive
from numpyro.infer.util import log_density

import skinn_jax
from skinn_jax.cosmology import FIDUCIAL
from skinn_jax.forward import SkyParams
from skinn_jax.ifu import PSF, SpaxelGrid, gaussian_kernel
from skinn_jax.inference import blocks
from skinn_jax.inference import data as kd
from skinn_jax.inference.data import aperture_data, kinematic_data
from skinn_jax.likelihood import KinematicLikelihood, gaussian_log_likelihood
from skinn_jax.profiles import sersic_light

Z_D = 0.5
LENS_MEAN = {"theta_E": 1.2, "gamma": 2.05, "q_mass": 0.8}
LENS_COV = np.array([[0.01**2, 0, 0], [0, 0.04**2, 0.0005], [0, 0.0005, 0.03**2]])
TRUTH = {"theta_E": 1.2, "gamma": 2.05, "q_mass": 0.8, "q_light": 0.75, "r_sersic": 0.9,
         "n_sersic": 3.2, "beta_z": 0.1, "inclination_deg": 75.0, "r_core": 0.03}  # fmt: skip


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module", params=["pca64s", "real-lens"])
def emu(request):
    with jax.enable_x64(True):
        return skinn_jax.Emulator.load(request.param)


def lens_priors(names):
    """A published lens model (MVN over three), a fixed light, kinematic nuisance priors."""
    priors = {
        "theta_E,gamma,q_mass": dist.MultivariateNormal(
            jnp.array(list(LENS_MEAN.values())), jnp.asarray(LENS_COV)
        ),
        "q_light": TRUTH["q_light"],
        "r_sersic": dist.TruncatedNormal(0.9, 0.05, low=0.7, high=1.1),
        "n_sersic": TRUTH["n_sersic"],
        "beta_z": dist.Uniform(-0.3, 0.3),
        "inclination_deg": dist.Uniform(65.0, 90.0),
    }
    if "r_core" in names:
        priors["r_core"] = dist.Uniform(0.0, 0.08)
    return priors


SKY_PRIORS = {"phi": dist.Normal(0.3, 0.02), "center_x": 0.01, "center_y": -0.02}
DISTANCE_PRIORS = {"D_dt": dist.Normal(FIDUCIAL.D_dt, 100.0), "D_d": dist.Uniform(500.0, 3000.0)}


def ring_bins(grid, width, n_max):
    x, y = grid.coordinates()
    ring = np.minimum(np.hypot(x, y) / width, n_max).astype(int)
    return np.where(np.hypot(x, y) < n_max * width, ring * 2 + (y > 0), -1)


def kcwi_like(rng):
    grid = SpaxelGrid.regular((15, 15), 0.1457, flip_ra=True)
    bins = np.unique(ring_bins(grid, 0.3, 4), return_inverse=True)[1].reshape(grid.shape) - 1
    n = bins.max() + 1
    sig = rng.uniform(6, 9, n)
    cov = np.diag(sig**2) + 0.02**2 * 250.0**2 * np.ones((n, n))  # correlated 2 % systematic
    return kinematic_data(grid, bins, np.full(n, 250.0), cov, PSF.gaussian(0.96), z_d=Z_D,
                          kind="vrms")  # fmt: skip


def nirspec_like(rng):
    grid = SpaxelGrid(np.array([[-0.07, 0.0], [0.0, 0.07]]), 0.35, -0.35, (11, 11))
    bins = ring_bins(grid, 0.12, 3)
    bins = np.unique(bins, return_inverse=True)[1].reshape(grid.shape) - 1
    n = bins.max() + 1
    a = rng.normal(size=(n, n))
    cov = a @ a.T + np.diag(rng.uniform(4, 6, n) ** 2)
    return kinematic_data(grid, bins, np.full(n, 260.0), cov, PSF.gaussian(0.1), z_d=Z_D,
                          kind="vrms")  # fmt: skip


def point(names, **extra):
    """Values of every sample site at the truth (the model's site names)."""
    values = {
        "theta_E,gamma,q_mass": jnp.array([TRUTH[n] for n in LENS_MEAN]),
        "r_sersic": TRUTH["r_sersic"],
        "beta_z": TRUTH["beta_z"],
        "inclination_deg": TRUTH["inclination_deg"],
        "phi": 0.31,
        "D_dt": FIDUCIAL.D_dt * 1.02,
        "D_d": FIDUCIAL.D_d,
    }
    if "r_core" in names:
        values["r_core"] = TRUTH["r_core"]
    return {k: jnp.asarray(v) for k, v in {**values, **extra}.items()}


def prior_log_prob(names, values):
    priors = lens_priors(names) | SKY_PRIORS | DISTANCE_PRIORS
    total = 0.0
    for key, prior in priors.items():
        if isinstance(prior, dist.Distribution):
            total += float(prior.log_prob(values[key]))
    return total


def mvn_constant(data):
    """``-1/2 log det(2 pi C)``: the MultivariateNormal's normalisation."""
    return -0.5 * (data.n_bins * np.log(2 * np.pi) + np.linalg.slogdet(data.covariance)[1])


def lik_value(lik, params, sky):
    """``lik(params, sky)`` (KinematicLikelihood.__call__: the Gaussian log-likelihood of its
    residual), with the prediction compiled once per likelihood (blocks.predict's cache)."""
    residual = blocks.predict(lik, params, sky) - lik.data.vrms
    return gaussian_log_likelihood(residual, lik.data.cholesky)


def test_two_data_sets_log_density_is_prior_plus_both_likelihoods(emu):
    """Cases 1 and 2: kinematics only, lens parameters from a user prior, two IFU data sets with
    different grids, PSFs, bins and covariances, each with its own likelihood."""
    rng = np.random.default_rng(3)
    liks = {"kcwi": KinematicLikelihood(kcwi_like(rng), emu.vrms_at),
            "nirspec": KinematicLikelihood(nirspec_like(rng), emu.vrms_at)}  # fmt: skip
    names = emu.param_names
    args = (liks, lens_priors(names), SKY_PRIORS, DISTANCE_PRIORS, names)
    values = point(names)
    logp, trace = log_density(blocks.kinematics_model, args, {}, values)

    params = jnp.array([TRUTH[n] for n in names])
    sky = SkyParams(0.31, 0.01, -0.02, FIDUCIAL.D_dt * 1.02, FIDUCIAL.D_d)
    expected = prior_log_prob(names, values)
    for lik in liks.values():
        expected += float(lik_value(lik, params, sky)) + mvn_constant(lik.data)
    assert float(logp) == pytest.approx(expected, rel=1e-10, abs=1e-8)
    np.testing.assert_allclose(trace["params"]["value"], params)
    # each data set has its own observed site with its own bins
    assert trace["kcwi"]["value"].shape == (liks["kcwi"].data.n_bins,)
    assert trace["nirspec"]["value"].shape == (liks["nirspec"].data.n_bins,)
    # the likelihoods differ: dropping one changes the density by its own value
    one = {"kcwi": liks["kcwi"]}
    logp_one, _ = log_density(blocks.kinematics_model, (one,) + args[1:], {}, values)
    nirspec = float(lik_value(liks["nirspec"], params, sky)) + mvn_constant(liks["nirspec"].data)
    assert float(logp - logp_one) == pytest.approx(nirspec, rel=1e-10)


def test_priors_must_cover_every_parameter_once(emu):
    names = emu.param_names
    priors = dict(lens_priors(names))
    priors.pop("beta_z")
    with pytest.raises(ValueError, match=r"missing \['beta_z'\]"):
        blocks.check_priors(priors, names)
    priors["gamma"] = 2.0
    priors["beta_z"] = 0.0
    with pytest.raises(ValueError, match=r"repeated \['gamma'\]"):
        blocks.check_priors(priors, names)
    with pytest.raises(ValueError, match="event shape"):
        blocks.check_priors({"phi,center_x,center_y": dist.Normal(0, 1)}, blocks.SKY_NAMES)


def test_kinematics_only_recovers_D_d_within_its_posterior_width():
    """Case 1 end to end: mock data sampled by the model itself (Predictive), MAP, and the truth
    within 3 sigma of the Laplace width at the MAP."""
    emu = skinn_jax.Emulator.load("pca64s")
    names = emu.param_names
    rng = np.random.default_rng(5)
    lik_truth = KinematicLikelihood(kcwi_like(rng), emu.vrms_at)
    lens = {n: TRUTH[n] for n in names}
    lens["beta_z"] = dist.Uniform(-0.4, 0.4)
    sky = {"phi": 0.3, "center_x": 0.0, "center_y": 0.0}
    distances = {"D_dt": FIDUCIAL.D_dt, "D_d": dist.Uniform(800.0, 2500.0)}
    args = (lens, sky, distances, names)
    truth = {"beta_z": jnp.array([0.05]), "D_d": jnp.array([1400.0])}
    # mock data sampled by the model itself (observed sites sampled, not conditioned)
    mock = Predictive(blocks.kinematics_model, truth, return_sites=["kcwi", "kcwi_pred"])(
        jax.random.PRNGKey(1), {"kcwi": lik_truth}, *args, observed=False
    )
    noise = np.asarray(mock["kcwi"][0] - mock["kcwi_pred"][0])
    whitened = np.linalg.solve(lik_truth.data.cholesky, noise)
    assert 0.2 < np.std(whitened) < 2.0  # drawn from the data covariance
    mock = np.asarray(mock["kcwi"][0])
    data = lik_truth.data
    data = kd.kinematic_data(data.grid, data.bin_map, mock, data.covariance, data.psf, z_d=Z_D,
                             kind="vrms")  # fmt: skip
    liks = {"kcwi": KinematicLikelihood(data, emu.vrms_at)}
    init = {"beta_z": 0.0, "D_d": 1200.0}
    fit = blocks.find_map(blocks.kinematics_model, liks, *args, init_values=init)

    def log_post(theta):
        values = {"beta_z": theta[0], "D_d": theta[1]}
        return log_density(blocks.kinematics_model, (liks,) + args, {}, values)[0]

    @jax.jit
    def grad_and_hessian(theta):
        return jax.grad(log_post)(theta), jax.hessian(log_post)(theta)

    theta = jnp.array([fit["beta_z"], fit["D_d"]])
    grad, hessian = (np.asarray(a) for a in grad_and_hessian(theta))
    cov = np.linalg.inv(-hessian)
    width = np.sqrt(np.diag(cov))
    assert np.all(np.abs(cov @ grad) < 0.05 * width)  # Newton step to the optimum << width
    assert 10.0 < width[1] < 400.0  # D_d is measured, not prior-dominated
    assert abs(float(fit["D_d"]) - 1400.0) < 3 * width[1]
    assert abs(float(fit["beta_z"]) - 0.05) < 3 * width[0]


def brute_force_aperture(emu, params, fwhm, region_fn, step=0.005, half_width=2.8):
    """v_rms of a sky region: ``sum[(I v²) ⊛ PSF] / sum[I ⊛ PSF]`` by the midpoint rule on a
    fine grid (``step`` arcsec, no point on the cusp at the centre) with the emulator's field,
    the Sérsic light and a Gaussian PSF (lens at the origin, φ = 0)."""
    n = round(half_width / step)
    c = (np.arange(-n, n) + 0.5) * step
    x, y = np.meshgrid(c, c)
    v = np.asarray(jax.jit(emu.vrms_at)(params, x, y))
    light = np.asarray(sersic_light(jnp.asarray(x), jnp.asarray(y), params[4], params[5],
                                    params[3]))  # fmt: skip
    kernel = gaussian_kernel(fwhm, np.eye(2) * step, 1)
    num = scipy.signal.fftconvolve(light * v**2, kernel, mode="same")
    den = scipy.signal.fftconvolve(light, kernel, mode="same")
    region = region_fn(x, y)
    return np.sqrt(num[region].sum() / den[region].sum())


@pytest.mark.parametrize("shape", ["circle", "slit"])
def test_aperture_prediction_matches_brute_force_integral(shape):
    """Case 3: one dispersion in a circular aperture or a slit, with seeing, through the same
    forward model, equals a brute-force integral of the emulator's field (measured: 201.383 vs
    201.389 km/s for the circle; a 0.02" grid with a point on the centre gives 199.7)."""
    emu = skinn_jax.Emulator.load("pca64s")
    params = np.array([1.2, 2.1, 0.8, 0.75, 0.9, 3.2, 0.15, 70.0])
    fwhm = 0.8
    if shape == "circle":
        data = aperture_data(250.0, 10.0, PSF.gaussian(fwhm), z_d=Z_D, kind="sigma", radius=1.0,
                             pixel_scale=0.04)  # fmt: skip

        def region(x, y):
            return np.hypot(x, y) <= 1.0

    else:  # 0.5" x 2" slit along PA = 0 (north-south, i.e. along y)
        data = aperture_data(250.0, 10.0, PSF.gaussian(fwhm), z_d=Z_D, kind="sigma",
                             slit=(0.52, 2.04, 0.0), pixel_scale=0.04)  # fmt: skip

        def region(x, y):  # the union of the slit's 0.04" spaxels
            return (np.abs(x) <= 0.26) & (np.abs(y) <= 1.02)

    lik = KinematicLikelihood(data, emu.vrms_at)
    sky = SkyParams(0.0, 0.0, 0.0, FIDUCIAL.D_dt, FIDUCIAL.D_d)
    model = float(lik.predict(params, sky)[0])
    brute = brute_force_aperture(emu, params, fwhm, region)
    assert abs(model - brute) < 0.05, (model, brute)
    # and it depends on the aperture: a 0.3" aperture is a different number
    small = aperture_data(250.0, 10.0, PSF.gaussian(0.1), z_d=Z_D, kind="sigma", radius=0.3)
    small_v = float(KinematicLikelihood(small, emu.vrms_at).predict(params, sky)[0])
    assert abs(small_v - model) > 1.0
