"""Tests of skinn_jax.inference: mock systems, the NumPyro model, the fit driver.

Small settings throughout (a 50 x 50 image, 31 x 31 spaxels, the shipped default emulator, a
kinematics-only end-to-end fit of a few draws) so the module runs in about a minute on 2 cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from herculens.MassModel.Profiles.epl import EPL

from skinn_jax.forward import SkyParams, field_from_quadrant
from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid
from skinn_jax.inference import fit as fit_mod
from skinn_jax.inference.data import SystemData
from skinn_jax.inference.fit.chains import Chains
from skinn_jax.inference.kinematics import EmulatorField, emulator_params, load_emulator
from skinn_jax.inference.lensing import CoredPowerLaw, ImagingSettings
from skinn_jax.inference.lensing.lens import (
    aperture_magnitude,
    epl_from_mass,
    mass_from_epl,
    solve_lens,
    solved_lens_params,
    total_magnitude,
)
from skinn_jax.inference.mocks.kinematics import MockSettings, field_for_forward_model
from skinn_jax.inference.mocks.system import (
    BUILTIN_PARAMS,
    MockSystemSettings,
    make_mock_system,
    plot_mock_system,
    system_params,
)
from skinn_jax.inference.mocks.truth import solver_start_from_truth, truth_values
from skinn_jax.inference.model import (
    LOG_THETA_E_SITE,
    MODEL_QUAD_NODES,
    MODEL_SUPERSAMPLING,
    RATIO,
    RATIO_SITE,
    RATIO_THETA_E_SITE,
    THETA_E_FRACTION_SITE,
    build_setup,
    log_density,
    model,
    site_names,
)
from skinn_jax.inference.priors import (
    Priors,
    fraction_from_log_theta_E,
    kinematic_scale_coordinates,
    log_kinematic_scale_prior,
    log_light_shape_prior,
    log_ratio_box,
    log_ratio_prior,
    log_theta_E_box,
    log_theta_E_from_fraction,
    ratio_theta_E_box,
)
from skinn_jax.likelihood import KinematicLikelihood
from skinn_jax.profiles import kappa_cored_pemd, to_galaxy_frame

PARAMS = np.array([1.2, 2.0, 0.8, 0.8, 0.9, 3.0, 0.1, 70.0])
SETTINGS = MockSystemSettings(imaging=ImagingSettings(n_pix=50), kinematics=MockSettings(n_pix=31))


def _setup(data, mode, **kwargs):
    return build_setup(data, mode, **kwargs)


@pytest.fixture(autouse=True)
def _float64():
    """Run every test of this module in float64 without touching the global JAX config."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def system():
    with jax.enable_x64(True):
        return make_mock_system(3, PARAMS, settings=SETTINGS)


@pytest.fixture(scope="module")
def data(system):
    return SystemData.from_mock(system)


@pytest.fixture(scope="module")
def emulator():
    """The shipped default checkpoint (real trained weights)."""
    return load_emulator()


# ----------------------------------------------------------------------------------------------
# Mock systems


def test_mock_system_is_a_seeded_quad_with_paper_noise(system, tmp_path):
    again = make_mock_system(3, PARAMS, settings=SETTINGS)
    np.testing.assert_array_equal(again.imaging.image, system.imaging.image)
    images = system.images
    assert list(images.kind[:4]).count("min") == 2 and list(images.kind[:4]).count("saddle") == 2
    assert images.kind[4] == "max" and abs(images.magnification[4]) < 0.2
    assert np.all(np.diff(images.fermat[:4]) > 0)  # labelled by arrival time
    td = system.time_delays
    assert np.all(td.sigma >= 1.0 - 1e-12)
    assert np.all(td.sigma >= 0.02 * np.abs(system.truth.time_delays) - 1e-12)
    assert np.all(system.imaging.noise_map > 0)
    pulls = (system.imaging.image - system.image_true) / system.imaging.noise_map
    assert abs(pulls.std() - 1.0) < 0.05
    measured = system.measured_positions
    true = np.stack([images.x[:4], images.y[:4]], axis=-1)
    assert np.max(np.hypot(*(measured - true).T)) < 0.06
    # kinematics come from JAM truth through mock_kinematics
    np.testing.assert_array_equal(system.kinematics.params, PARAMS)
    plot_mock_system(system, tmp_path / "mock.png")
    assert (tmp_path / "mock.png").stat().st_size > 10_000


def test_builtin_system_ignores_the_test_set_and_the_box_draw(tmp_path):
    """``fit-mock``'s built-in lens is the same whatever the data set or the system number."""
    for k in (0, 4):
        params, test_index, source, _ = system_params(k, "builtin", test_set=tmp_path)
        np.testing.assert_array_equal(params, BUILTIN_PARAMS)
        assert test_index is None and source == "builtin"
    box, *_ = system_params(0, "box")
    assert not np.allclose(box, BUILTIN_PARAMS)
    with pytest.raises(ValueError, match="'builtin'"):
        system_params(0, "typical")


# ----------------------------------------------------------------------------------------------
# Conversions and the mass profile


def test_conversions_from_lens_parameters_to_the_emulator_go_through_profiles(system):
    truth = truth_values(system, "joint")
    lens = system.truth.lens
    epl = epl_from_mass(PARAMS[0], PARAMS[1], PARAMS[2], system.truth.sky.phi)
    np.testing.assert_allclose(float(epl["theta_E_epl"]), float(lens.theta_E_epl), rtol=1e-12)
    np.testing.assert_allclose([float(epl["e1"]), float(epl["e2"])], [lens.e1, lens.e2], atol=1e-14)
    back = mass_from_epl(lens.theta_E_epl, PARAMS[1], lens.e1, lens.e2)
    np.testing.assert_allclose(float(back["theta_E"]), PARAMS[0], rtol=1e-12)
    np.testing.assert_allclose(float(back["q_mass"]), PARAMS[2], rtol=1e-12)
    np.testing.assert_allclose(float(back["phi"]), system.truth.sky.phi, atol=1e-12)
    values = {**truth, **back, "beta_z": PARAMS[6], "inclination_deg": PARAMS[7]}
    np.testing.assert_allclose(np.asarray(emulator_params(values)), PARAMS, rtol=1e-12)


@pytest.mark.parametrize("quad_nodes, atol", [(None, 1e-9), (MODEL_QUAD_NODES, 2e-5)])
def test_lens_solver_recovers_the_true_lens_from_the_true_images(system, data, quad_nodes, atol):
    """With the mock's own quadrature the solver is exact; with the model's coarser default the
    lens parameters move by no more than its deflection error allows."""
    setup = _setup(
        data, "lensing", solver_start=solver_start_from_truth(system), quad_nodes=quad_nodes
    )
    expected_nodes = quad_nodes or ImagingSettings().quad_nodes
    assert setup.imaging.settings.quad_nodes == expected_nodes
    truth = {k: jnp.asarray(v) for k, v in truth_values(system, "lensing").items()}
    solved, residual, log_jac = solve_lens(setup, truth)
    lens = system.truth.lens
    for name in ("theta_E_epl", "e1", "e2", "gamma1", "gamma2", "src_x", "src_y"):
        np.testing.assert_allclose(float(solved[name]), float(getattr(lens, name)), atol=atol)
    np.testing.assert_allclose(np.asarray(solved["ps_y"]), lens.ps_y, atol=atol)
    assert float(residual) < 1e-10 and np.isfinite(float(log_jac))


def test_model_image_at_the_truth_is_the_mocks_noiseless_image(system, data):
    """The fit's imaging model (its coarser quadrature included) at the true parameters gives the
    mock's noiseless image to far below the noise, so a lensing-only offset from the truth comes
    from the noise, not from a mismatch; the data's χ² at the truth is then that of pure noise."""
    from skinn_jax.inference.predict import predict

    setup = _setup(data, "lensing", solver_start=solver_start_from_truth(system))
    truth = truth_values(system, "lensing")
    pred = predict(data, setup, {k: truth[k] for k in site_names("lensing")})
    noise = data.imaging.noise_map
    chi2_noiseless = float(np.sum(((system.image_true - pred.image) / noise) ** 2))
    n_pix = noise.size
    assert chi2_noiseless < 1e-2, chi2_noiseless
    assert abs(pred.chi2["imaging"] - n_pix) < 5 * np.sqrt(2 * n_pix), pred.chi2["imaging"]
    # the lens light sampled by its magnitude inside 1": the total is the mock's
    from skinn_jax.inference.predict import trace_at

    trace = trace_at(data, setup, {k: truth[k] for k in site_names("lensing")}, False)
    assert float(trace["lens_mag"]) == pytest.approx(float(truth["lens_mag"]), abs=1e-6)
    assert float(truth["lens_mag_aperture"]) > float(truth["lens_mag"])
    # (model v6) ... with the quasar's five images drawn in windows smaller than the image
    windows = setup.imaging.windows
    assert windows.index.shape[0] == 5 and windows.index.shape[1] < noise.shape[0]


def test_lensing_prior_is_uniform_in_the_emulator_mass_shear_and_source(system, data):
    """The lens-prior factor (a density over the sampled image positions) equals
    log |det ∂(theta_E, q_mass, phi, gamma1, gamma2, src_x, src_y) / ∂(ps_x, ps_y_abc)|, computed
    here by forward-mode autodiff through the Newton iterations and the tested conversions (the
    model uses the implicit-function Jacobian and log_epl_jacobian): so the prior is uniform in
    those parameters. Checked at the truth and at two other slopes, where it differs by O(1)."""
    from numpyro import handlers

    setup = _setup(data, "lensing", solver_start=solver_start_from_truth(system))
    truth = {k: jnp.asarray(v) for k, v in truth_values(system, "lensing").items()}
    names = site_names("lensing")

    def lens7(img7, gamma):
        v = {**truth, "gamma": gamma, "ps_x": img7[:4], "ps_y_abc": img7[4:]}
        solved, _, _ = solve_lens(setup, v)
        mass = mass_from_epl(solved["theta_E_epl"], gamma, solved["e1"], solved["e2"])
        out = [mass["theta_E"], mass["q_mass"], mass["phi"]]
        return jnp.stack(out + [solved[k] for k in ("gamma1", "gamma2", "src_x", "src_y")])

    img7 = jnp.concatenate([truth["ps_x"], truth["ps_y_abc"]])
    values = []
    gamma0 = float(truth["gamma"])
    for gamma in (gamma0, gamma0 - 0.05, gamma0 + 0.05):
        point = {k: truth[k] for k in names}
        point["gamma"] = jnp.asarray(gamma)
        sub = handlers.substitute(model, data=point)
        factor = handlers.trace(sub).get_trace(data, setup)["lens_prior"]["fn"].log_factor
        direct = jnp.linalg.slogdet(jax.jacfwd(lens7)(img7, jnp.asarray(gamma)))[1]
        assert float(factor) == pytest.approx(float(direct), abs=1e-6), gamma
        values.append(float(direct))
    assert max(values) - min(values) > 0.1  # the factor matters: it is not a constant


def test_cored_power_law_is_the_emulators_mass_and_herculens_epl_without_core(system):
    lens = system.truth.lens
    kw = {
        "theta_E": lens.theta_E_epl,
        "gamma": lens.gamma,
        "e1": lens.e1,
        "e2": lens.e2,
        "center_x": lens.center_x,
        "center_y": lens.center_y,
    }
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-2.5, 2.5, (2, 200))
    fxx, fyy, _ = CoredPowerLaw().hessian(x, y, **kw)
    xg, yg = to_galaxy_frame(x, y, lens.center_x, lens.center_y, system.truth.sky.phi)
    kappa = kappa_cored_pemd(xg, yg, PARAMS[0], PARAMS[1], PARAMS[2])
    np.testing.assert_allclose(0.5 * (np.asarray(fxx) + np.asarray(fyy)), kappa, rtol=1e-6)
    singular, epl = CoredPowerLaw(r_core=0.0, n_nodes=64), EPL()
    np.testing.assert_allclose(
        np.asarray(singular.derivatives(x, y, **kw)), np.asarray(epl.derivatives(x, y, **kw)),
        atol=1e-8,
    )  # fmt: skip
    np.testing.assert_allclose(
        np.asarray(singular.hessian(x, y, **kw)), np.asarray(epl.hessian(x, y, **kw)), atol=1e-7
    )
    dpsi = np.asarray(singular.function(x, y, **kw)) - np.asarray(epl.function(x, y, **kw))
    assert np.ptp(dpsi) < 1e-8  # equal up to a constant


@pytest.mark.parametrize("gamma, e1", [(1.5, 0.0), (2.0, 0.3), (2.5, 0.3)])
def test_model_quadrature_of_the_cored_power_law_is_accurate_enough(gamma, e1):
    """The model's MODEL_QUAD_NODES against 64 nodes: deflections to 1e-5″ (image positions are
    measured to ~1e-3″) and the Fermat potential to 1e-5 arcsec² (~1e-3 day at D_Δt ~ 3 Gpc)."""
    kw = dict(theta_E=1.2, gamma=gamma, e1=e1, e2=0.05, center_x=0.03, center_y=-0.02)
    x, y = np.random.default_rng(1).uniform(-3.5, 3.5, (2, 2000))
    fine, model_nodes = CoredPowerLaw(n_nodes=64), CoredPowerLaw(n_nodes=MODEL_QUAD_NODES)
    deflection_error = np.asarray(model_nodes.derivatives(x, y, **kw)) - np.asarray(
        fine.derivatives(x, y, **kw)
    )
    assert np.abs(deflection_error).max() < 1e-5
    dpsi = np.asarray(model_nodes.function(x, y, **kw)) - np.asarray(fine.function(x, y, **kw))
    assert np.ptp(dpsi) < 2e-5
    # and the model really uses them (the mocks keep ImagingSettings' 24)
    assert ImagingSettings().quad_nodes > MODEL_QUAD_NODES


@pytest.mark.parametrize("beta", [3.0, 2.5])  # the integer-power branch and the general one
def test_moffat_is_the_unit_flux_moffat_with_its_fwhm_and_gradient(beta):
    from scipy.integrate import quad

    from skinn_jax.inference.lensing.profiles import moffat, moffat_alpha

    fwhm = 0.15
    alpha = moffat_alpha(fwhm, beta)
    r = np.linspace(0.0, 5.0, 11)
    form = (beta - 1.0) / (np.pi * alpha**2) * (1.0 + (r / alpha) ** 2) ** (-beta)
    np.testing.assert_allclose(np.asarray(moffat(r, 0.0 * r, fwhm, beta)), form, rtol=1e-13)
    half = moffat(0.5 * fwhm, 0.0, fwhm, beta) / moffat(0.0, 0.0, fwhm, beta)
    assert float(half) == pytest.approx(0.5, rel=1e-12)
    flux = quad(lambda t: 2 * np.pi * t * float(moffat(t, 0.0, fwhm, beta)), 0, np.inf)[0]
    assert flux == pytest.approx(1.0, rel=1e-8)
    dx, dy = 0.07, -0.04  # d/dx of the Moffat: -2 beta x / (alpha² + r²) times itself
    g = jax.grad(lambda x: moffat(x, dy, fwhm, beta))(dx)
    expected = -2 * beta * dx / (alpha**2 + dx**2 + dy**2) * float(moffat(dx, dy, fwhm, beta))
    assert float(g) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# The model


def test_joint_log_density_at_truth_is_finite_with_finite_gradient_and_beats_wrong_values(
    system, data
):
    """Joint model with the JAM-truth field (a perfect emulator): truth vs clearly wrong values.

    The tabulated JAM field is fixed at the true eight parameters (it ignores them), so only
    parameters that act through the imaging, the time delays and the sky mapping are varied.
    """
    probe = KinematicLikelihood(data.kinematics, lambda p, x, y: x, supersampling=5)
    jam_field = field_for_forward_model(probe.forward, PARAMS, step=0.01)
    setup = _setup(data, "joint", field=jam_field, solver_start=solver_start_from_truth(system))
    truth = {k: jnp.asarray(v) for k, v in truth_values(system, "joint").items()}
    truth = {k: truth[k] for k in site_names("joint")}
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: log_density(data, setup, v)))
    value, grad = value_and_grad(truth)
    assert np.isfinite(float(value))
    for name, g in grad.items():
        assert np.all(np.isfinite(np.asarray(g))), name
    log07, log13 = math.log(0.7), math.log(1.3)
    wrong = {
        "gamma": {"gamma": truth["gamma"] + 0.3},
        "D_d x 1.3": {"log_D_d": truth["log_D_d"] + log13},
        "D_dt x 0.7": {"log_D_dt": truth["log_D_dt"] + log07},
        "ps_x": {"ps_x": truth["ps_x"] + jnp.array([0.02, 0.0, 0.0, 0.0])},
        "center_x": {"center_x": truth["center_x"] + 0.02},
    }
    for name, bad in wrong.items():
        worse = float(value_and_grad({**truth, **bad})[0])
        assert worse < float(value) - 10.0, (name, worse, float(value))


REFERENCE = Path(__file__).parent / "data" / "joint_log_density_reference.npz"


def _base_support(site: dict):
    """A sample site's support with ``.to_event`` unwrapped."""
    from numpyro.distributions import constraints

    support = site["fn"].support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _log_jacobians(data, setup, values: dict, logit: bool) -> float:
    """Sum over the sampled sites of ``log |dx/dz|`` of their box bijection at ``values``: NumPyro's
    logit (``logit``, the reference's coordinates) or the site's own (the probit of
    :class:`~skinn_jax.inference.priors.BoxUniform`)."""
    from numpyro import handlers
    from numpyro.distributions import constraints
    from numpyro.distributions.transforms import biject_to

    point = {k: jnp.asarray(v) for k, v in values.items()}
    trace = handlers.trace(handlers.substitute(model, data=point)).get_trace(data, setup)
    total = 0.0
    for name in site_names(setup.mode):
        support = _base_support(trace[name])
        if logit:
            support = constraints.interval(support.lower_bound, support.upper_bound)
        t, x = biject_to(support), point[name]
        total += float(jnp.sum(t.log_abs_det_jacobian(t.inv(x), x)))
    return total


def test_source_mask_computes_the_same_image_where_the_source_matters(system):
    """The lensed source ray-shot only on the masked pixels' sub-pixels: every pixel computed
    gives Herculens's full image to round-off; a mask at 1e-3 σ of the source (dilated 3 pixels)
    changes no pixel by more than 1e-3 σ and skips most of the image; bad masks are refused."""
    from skinn_jax.inference.lensing.imaging import ImagingModel, source_mask

    settings, p = system.settings.imaging, system.truth.lens
    noise = np.asarray(system.imaging.noise_map)
    full = ImagingModel(settings)
    reference = np.asarray(full.extended_image(p))
    everywhere = ImagingModel(settings, source_pixels=np.ones((settings.n_pix,) * 2, bool))
    np.testing.assert_allclose(everywhere.extended_image(p), reference, rtol=1e-12, atol=1e-12)
    mask = source_mask(full, p, noise, threshold=1e-3, dilation_pix=3)
    assert 0.05 < mask.mean() < 0.8, mask.mean()
    masked = ImagingModel(settings, source_pixels=mask)
    image = np.asarray(masked.extended_image(p))
    assert np.max(np.abs(image - reference) / noise) < 1e-3
    # only the source is masked: the lens light alone is the full model's
    np.testing.assert_allclose(masked.extended_image(p, source=False),
                               full.extended_image(p, source=False), rtol=1e-12)  # fmt: skip
    # no source beyond the PSF's reach of the masked pixels
    corner = np.zeros_like(mask)
    corner[:4, :4] = True
    source_only = np.asarray(
        ImagingModel(settings, source_pixels=corner).extended_image(p, lens_light=False)
    )
    outside = ~binary_dilation_disc(corner, settings.psf_half_size)
    far, near = np.abs(source_only[outside]).max(), np.abs(source_only[corner]).max()
    assert outside.sum() > 1000 and far < 1e-25 < 1e6 * far < near  # (FFT round-off far away)
    with pytest.raises(ValueError, match="source_pixels must be a bool array of shape"):
        ImagingModel(settings, source_pixels=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="threshold"):
        source_mask(full, p, noise, threshold=0.0)


def binary_dilation_disc(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by a square of half-side ``radius`` (the PSF kernel's reach)."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((2 * radius + 1,) * 2, bool))


@pytest.mark.parametrize("mode", ["joint", "lensing", "kinematics"])
def test_log_density_is_unchanged_from_the_reference(system, data, emulator, mode):
    """Issue 19, case 4: the model's log density (constrained sites) and the sampler's potential
    energy (unconstrained space, bijection Jacobians included) at three fixed float64 points agree
    to 1e-8 relative or 1e-5 absolute with the values the pre-refactoring model gave
    (``tests/data/make_joint_log_density_reference.py``, commit stored in the file). The same code
    gives 1e-10 relative at XLA's default optimisation level; the suite's level 0
    (``conftest.py``) rounds differently, by ~1e-6 (a change of the model moves them far more).
    Since model v6 the quasar's images are drawn inside windows (their far PSF wings dropped):
    the reference is compared with the whole-image drawing, and the windowed model is within
    0.02 of it (2e-6 relative at the far points, where the quasar's residuals are large)."""
    from dataclasses import replace

    from numpyro.infer.util import potential_energy, unconstrain_fn

    from skinn_jax.inference.lensing.imaging import ImagingModel

    ref = np.load(REFERENCE)
    assert str(ref["commit"]).startswith("15f8996")  # the last commit before issue 19's layout
    windowed = _setup(data, mode, emulator=emulator, solver_start=solver_start_from_truth(system))
    setup = windowed
    if windowed.imaging is not None:  # model v6 draws the quasar in windows: compare without
        setup = replace(windowed, imaging=ImagingModel(windowed.imaging.settings))
    prefix = f"{mode}/point/"
    names = [k[len(prefix) :] for k in ref.files if k.startswith(prefix)]
    renamed = {THETA_E_FRACTION_SITE: LOG_THETA_E_SITE, "lens_mag_aperture": "lens_mag"}
    old_sites = [renamed.get(n, n) for n in site_names(mode)]
    assert sorted(names) == sorted(old_sites)
    pr = setup.priors
    for i in range(3):
        values = {name: jnp.asarray(ref[prefix + name][i]) for name in names}
        expected_ld = float(ref[f"{mode}/log_density"][i])
        expected_pe = float(ref[f"{mode}/potential_energy"][i])
        if "lens_mag" in values:  # the stored point in the sampled coordinates of today
            lens_mag = values.pop("lens_mag")
            values["lens_mag_aperture"] = lens_mag  # (a placeholder: theta_E does not need it)
            theta_E = solved_lens_params(setup, values)[1]["theta_E"]
            r_sersic, n_sersic = values["r_sersic_ratio"] * theta_E, values["n_sersic"]
            m_ap = aperture_magnitude(lens_mag, r_sersic, n_sersic)
            assert float(total_magnitude(m_ap, r_sersic, n_sersic)) == pytest.approx(
                float(lens_mag), abs=1e-12
            )
            values["lens_mag_aperture"] = m_ap
            # (the density in (m_ap, r, n) is that in (lens_mag, r, n): Jacobian 1, same box)
            old_values = {**values, "lens_mag_aperture": lens_mag}
            # the potential differs by the bijections' Jacobians: the reference's logit of each
            # box at the old values, today's probit (BoxUniform) at the new ones
            expected_pe += _log_jacobians(data, setup, old_values, logit=True)
            expected_pe -= _log_jacobians(data, setup, values, logit=False)
        if mode == "kinematics":  # the stored point in the sampled coordinates of today
            u, w = values.pop(LOG_THETA_E_SITE), values[RATIO_THETA_E_SITE]
            f = fraction_from_log_theta_E(u, w, pr.theta_E, pr.D_dt, pr.D_d)
            values[THETA_E_FRACTION_SITE] = f
            u_back, log_jacobian = log_theta_E_from_fraction(w, f, pr.theta_E, pr.D_dt, pr.D_d)
            assert float(u_back) == pytest.approx(float(u), abs=1e-13)
            # density of (w, f) = that of (u, w) x |du/df|, and the light-shape prior (new)
            expected_ld += float(log_jacobian) + float(
                log_light_shape_prior(values["q_light"], values["phi"], data.light_shape)
            )
        ld = float(log_density(data, setup, values))
        z = unconstrain_fn(model, (data, setup), {}, values)
        pe = float(potential_energy(model, (data, setup), {}, z))
        assert np.isfinite(ld) and np.isfinite(pe)
        assert ld == pytest.approx(expected_ld, rel=1e-8, abs=1e-5), (i, ld, expected_ld)
        if mode != "kinematics":  # (other sampled coordinates: other bijection Jacobians)
            assert pe == pytest.approx(expected_pe, rel=1e-8, abs=1e-5), (i, pe, expected_pe)
        # the windows change the log density by the quasar's far PSF wings alone
        assert float(log_density(data, windowed, values)) == pytest.approx(ld, rel=2e-6, abs=0.02)


def test_checks_raise_before_sampling(system, data, emulator):
    with pytest.raises(ValueError, match="training box"):
        Priors(theta_E=(0.4, 2.0)).check()
    with pytest.raises(ValueError, match="training box"):
        Priors(inclination_deg=(50.0, 90.0)).check()
    with pytest.raises(ValueError, match="training box"):
        _setup(data, "lensing", priors=Priors(gamma=(1.5, 2.7)))
    image = data.imaging.image.copy()
    image[3, 4] = np.nan
    bad = data._replace(imaging=data.imaging._replace(image=image))
    with pytest.raises(ValueError, match="non-finite pixels"):
        _setup(bad, "lensing")
    bad = data._replace(time_delays=data.time_delays._replace(delays=np.array([1.0, np.nan, 2.0])))
    with pytest.raises(ValueError, match="time delays"):
        _setup(bad, "lensing")
    with pytest.raises(ValueError, match="NaN"):
        KinematicData.diagonal(
            data.kinematics.grid, data.kinematics.bin_map,
            np.where(np.arange(data.kinematics.n_bins) == 0, np.nan, data.kinematics.vrms),
            np.ones(data.kinematics.n_bins), data.kinematics.psf,
        )  # fmt: skip
    big = SpaxelGrid.regular((230, 230), 0.05)
    kin = KinematicData.diagonal(
        big, np.zeros(big.shape, int), np.array([200.0]), np.array([10.0]), PSF.gaussian(0.1)
    )
    with pytest.raises(ValueError, match="emulator's field"):
        _setup(data._replace(kinematics=kin), "kinematics", emulator=emulator)


def test_emulator_field_equals_field_from_quadrant(system, data, emulator):
    params = jnp.asarray(PARAMS)
    sky = system.truth.sky
    s = MODEL_SUPERSAMPLING  # the model's default
    reference = KinematicLikelihood(
        data.kinematics,
        field_from_quadrant(emulator.vrms_quadrant, emulator.vrms_at),
        supersampling=s,
    )
    setup = _setup(data, "kinematics", emulator=emulator)
    assert setup.kinematics.forward.supersampling == s
    generic = KinematicLikelihood(data.kinematics, EmulatorField(emulator), supersampling=s)
    expected = np.asarray(reference.predict(params, sky))
    np.testing.assert_allclose(np.asarray(generic.predict(params, sky)), expected, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(setup.kinematics.predict(params, sky)), expected, rtol=1e-5
    )


# ----------------------------------------------------------------------------------------------
# The fit driver


def test_potential_is_numpyros_initialize_model_without_running_the_model(system, data, emulator):
    """make_potential builds NumPyro's potential from an abstract trace: the same start point,
    potential, gradient, transforms and constrained values as ``initialize_model``, which runs
    the model op by op."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_value
    from numpyro.infer.util import initialize_model, transform_fn

    setup = _setup(data, "kinematics", emulator=emulator)
    truth = truth_values(system, "kinematics")
    pot = fit_mod.make_potential(data, setup, truth)
    names = site_names("kinematics")
    values = {k: jnp.asarray(truth[k]) for k in names}
    info = initialize_model(jax.random.PRNGKey(0), model, model_args=(data, setup),
                            init_strategy=init_to_value(values=values))  # fmt: skip
    z_ref = info.param_info.z
    assert pot.names == tuple(sorted(z_ref)) == tuple(sorted(names))
    for k in names:
        np.testing.assert_array_equal(np.asarray(pot.unravel(jnp.asarray(pot.z0))[k]), z_ref[k])
    # (compiled here, op by op there: the float32 emulator rounds differently)
    value, grad = pot.value_and_grad(jnp.asarray(pot.z0))
    np.testing.assert_allclose(float(value), float(info.param_info.potential_energy), rtol=1e-6)
    grad_ref = ravel_pytree(info.param_info.z_grad)[0]
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), rtol=1e-4, atol=1e-6)
    assert float(pot.site_potential(z_ref)) == float(info.potential_fn(z_ref))
    # a moved point: the transforms (constrained sites) and the deterministic sites agree
    z1 = {k: v + 0.1 for k, v in z_ref.items()}
    constrained = transform_fn(pot.transforms, z1)
    full, full_ref = pot.constrain(z1), info.postprocess_fn(z1)
    assert set(full) == set(full_ref) and set(constrained) == set(names)
    for k in full_ref:
        np.testing.assert_allclose(np.asarray(full[k]), np.asarray(full_ref[k]), rtol=1e-12)
    for k in names:
        np.testing.assert_allclose(np.asarray(constrained[k]), np.asarray(full_ref[k]), rtol=1e-12)
    assert set(pot.boxes) == set(names)
    lo, hi = setup.priors.inclination_deg
    assert (float(pot.boxes["inclination_deg"][0]), float(pot.boxes["inclination_deg"][1])) == (
        lo,
        hi,
    )


def test_short_fit_writes_outputs_and_restarts_from_its_checkpoints(
    system, data, emulator, tmp_path, monkeypatch
):
    setup = _setup(data, "kinematics", emulator=emulator)
    truth = truth_values(system, "kinematics")
    settings = fit_mod.FitSettings(
        num_warmup=8, num_samples=6, num_chains=1, sample_chunks=1, map_max_steps=3,
        map_newton_steps=1, max_tree_depth=3, progress_bar=False, max_samples=12,
    )  # fmt: skip
    # (the convergence policy extends the 6 draws by one chunk of 6; then the budget is spent)
    out = tmp_path / "fit"
    # a fit killed while sampling (after its warm-up) leaves no final output ...
    from skinn_jax.inference.fit import driver

    real_advance = driver._advance

    def killed_when_sampling(chains, state, n, desc, progress):
        if desc.startswith("sampling"):
            raise KeyboardInterrupt("killed")
        return real_advance(chains, state, n, desc, progress)

    monkeypatch.setattr(driver, "_advance", killed_when_sampling)
    with pytest.raises(KeyboardInterrupt):
        fit_mod.fit(
            data, setup, out, init_values=truth, truths=truth, settings=settings, quiet=True
        )
    assert not any((out / f).exists() for f in fit_mod.FINAL_FILES)
    state = json.loads((out / fit_mod.STATE_FILE).read_text())
    assert state["phase"] == "warmup"
    # ... and restarts from its last checkpoint (the warm-up state), compiling the loop of its
    # chains once for every chunk (NumPyro's MCMC compiled it again for each)
    monkeypatch.setattr(driver, "_advance", real_advance)
    compiled = []
    real_compile = Chains._compile
    monkeypatch.setattr(Chains, "_compile", lambda self: compiled.append(1) or real_compile(self))
    result = fit_mod.fit(
        data, setup, out, init_values=truth, truths=truth, settings=settings, quiet=True
    )
    assert len(compiled) == 1
    for name in fit_mod.FINAL_FILES:
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / fit_mod.STATE_FILE).read_text())["phase"] == "complete"
    assert result.idata.posterior["theta_E"].shape == (1, 12)
    report = result.report
    assert report["convergence"].startswith("converged: NO — ")
    assert report["convergence"].endswith("[budget spent: 12 draws per chain, max 12]")
    assert report["evaluations"]["total"] > report["evaluations"]["sampling"] > 0
    assert report["timings_s"]["sampling_s"] > 0
    assert set(report["diagnostics"]) >= {"converged", "max_r_hat", "min_ess_bulk", "divergences"}
    assert "theta_E" in result.summary.index and math.isfinite(
        result.summary.loc["theta_E", "truth"]
    )
    # kinematics mode reports the distance ratio, not the distances it cannot separate
    assert math.isfinite(result.summary.loc[RATIO, "truth"])
    assert not {"D_dt", "D_d", "log_D_dt", "log_D_d"} & set(result.summary.index)
    # the chains record the sampled and reported sites, not the χ² terms (predict gives them)
    recorded = set(result.idata.posterior.data_vars)
    assert {"theta_E", RATIO, "inclination_deg"} <= recorded
    assert not {n for n in recorded if n.startswith("chi2_")}
    # a complete fit is loaded, not recomputed; other settings start again
    again = fit_mod.fit(data, setup, out, init_values=truth, settings=settings, quiet=True)
    assert again.report["fingerprint"] == report["fingerprint"]


def test_fingerprint_depends_on_the_sampled_coordinates(system, data, monkeypatch):
    """A checkpoint written in other coordinates (same model version) is never resumed."""
    setup = _setup(data, "lensing", solver_start=solver_start_from_truth(system))
    settings = fit_mod.FitSettings()
    before = fit_mod.fingerprint(data, setup, settings, {})
    assert fit_mod.fingerprint(data, setup, settings, {}) == before
    from skinn_jax.inference.fit import driver

    monkeypatch.setattr(driver, "site_names", lambda mode: ("other",) + site_names(mode)[1:])
    assert fit_mod.fingerprint(data, setup, settings, {}) != before


def test_fingerprint_has_the_metric_refinement_only_where_it_acts(system, data):
    """Fits with the Laplace metric corrected after the warm-up are other fits; where it does not
    act (an adapted metric, or switched off) the fingerprint is what it was before it existed."""
    from dataclasses import replace

    from skinn_jax.inference.fit.driver import final_buffer, refines_metric

    setup = _setup(data, "lensing", solver_start=solver_start_from_truth(system))
    on, off = fit_mod.FitSettings(), fit_mod.FitSettings(refine_metric=False)
    assert refines_metric(on) and not refines_metric(off) and final_buffer(150) == 50
    assert fit_mod.fingerprint(data, setup, on, {}) != fit_mod.fingerprint(data, setup, off, {})
    adapted = replace(on, adapt_mass_matrix=True)
    assert not refines_metric(adapted)
    assert fit_mod.fingerprint(data, setup, adapted, {}) == fit_mod.fingerprint(
        data, setup, replace(adapted, refine_metric=False), {}
    )


def test_lens_at_the_truth_is_the_mocks_lens(system, data):
    """Round trip: the imaging parameters solved by the model at the true sampled values are the
    mock's own (which drew the data)."""
    from skinn_jax.inference.predict import lens_at

    setup = _setup(data, "lensing", solver_start=solver_start_from_truth(system))
    lens = lens_at(data, setup, truth_values(system, "lensing"))
    for name in lens._fields:
        expected = np.asarray(getattr(system.truth.lens, name))
        np.testing.assert_allclose(
            getattr(lens, name), expected, rtol=1e-6, atol=1e-9, err_msg=name
        )
    with pytest.raises(ValueError, match="has no imaging"):
        lens_at(data, _setup(data, "kinematics"), truth_values(system, "kinematics"))


def test_fingerprint_has_the_source_mask_only_where_it_acts(system, data):
    """Lensing fits with the source computed inside a mask are other fits; kinematics fits (no
    imaging) keep their fingerprint whatever the setting; bad settings are refused."""
    from dataclasses import replace

    from skinn_jax.inference.fit.driver import masks_source

    lensing = _setup(data, "lensing", solver_start=solver_start_from_truth(system))
    kinematics = _setup(data, "kinematics")
    on, off = fit_mod.FitSettings(), fit_mod.FitSettings(source_mask=None)
    assert masks_source(on, lensing) and not masks_source(off, lensing)
    assert not masks_source(on, kinematics)
    assert fit_mod.fingerprint(data, lensing, on, {}) != fit_mod.fingerprint(data, lensing, off, {})
    assert fit_mod.fingerprint(data, lensing, on, {}) != fit_mod.fingerprint(
        data, lensing, replace(on, source_mask_dilation=2), {}
    )
    assert fit_mod.fingerprint(data, kinematics, on, {}) == fit_mod.fingerprint(
        data, kinematics, replace(off, source_mask_dilation=5), {}
    )
    with pytest.raises(ValueError, match="source_mask = 0.0: allowed range"):
        fit_mod.FitSettings(source_mask=0.0)
    with pytest.raises(ValueError, match="source_mask_dilation = -1: allowed range"):
        fit_mod.FitSettings(source_mask_dilation=-1)


def test_fingerprint_ignores_the_last_bits_of_the_data(system, data):
    """Mock data rebuilt in another process differ in their last float64 bits (threaded sums):
    the same fit; a real change of the data is another fit."""
    from dataclasses import replace

    setup = _setup(data, "lensing", solver_start=solver_start_from_truth(system))
    settings = fit_mod.FitSettings()
    before = fit_mod.fingerprint(data, setup, settings, {})
    kin = data.kinematics
    for factor, same in ((1 + 4e-16, True), (1 + 1e-5, False)):
        changed = data._replace(kinematics=replace(kin, vrms=np.asarray(kin.vrms) * factor))
        assert (fit_mod.fingerprint(changed, setup, settings, {}) == before) is same, factor


# ----------------------------------------------------------------------------------------------
# Study statistics


@pytest.mark.parametrize("width_factor, calibrated", [(1.0, True), (0.4, False)])
def test_coverage_is_nominal_for_exact_posteriors_and_detects_overconfidence(
    width_factor, calibrated
):
    """Gaussian 'posteriors' around noisy observations of known truths: exact ones cover the
    truth 68 % / 95 % of the time; ones 2.5x too narrow fail the same check."""
    from types import SimpleNamespace

    from skinn_jax.inference import study as run_study

    rng = np.random.default_rng(1)
    results = {}
    for k in range(200):
        truth = rng.uniform(1.5, 2.5)
        observed = truth + 0.1 * rng.standard_normal()
        draws = observed + 0.1 * width_factor * rng.standard_normal((2, 400))
        table = fit_mod.summary_table({"gamma": draws}, {"gamma": truth}, ["gamma"])
        results[k] = {"joint": {"result": SimpleNamespace(summary=table)}}
    row = run_study.coverage_table(results, ["joint"])["joint"]["gamma"]
    assert row["n"] == 200
    ok68 = abs(row["cov68"] - 0.683) < 3 * row["cov68_err"]
    ok95 = abs(row["cov95"] - 0.954) < 3 * row["cov95_err"] + 0.01
    assert (ok68 and ok95) == calibrated, row


def test_log_distance_coordinates_keep_the_prior_uniform_in_the_distances():
    """Uniform draws of (log D_dt, log D_d) in their boxes, weighted by the model's Jacobian
    factor, are uniform draws of (D_dt, D_d) in theirs (without the factor they are not)."""
    from skinn_jax.inference.priors import distance_log_jacobian

    pr = Priors()
    rng = np.random.default_rng(3)
    n = 400_000
    log_dt = rng.uniform(math.log(pr.D_dt[0]), math.log(pr.D_dt[1]), n)
    log_dd = rng.uniform(math.log(pr.D_d[0]), math.log(pr.D_d[1]), n)
    log_w = np.asarray(distance_log_jacobian(log_dt, log_dd))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    for log_x, (lo, hi) in ((log_dt, pr.D_dt), (log_dd, pr.D_d)):
        u = (np.exp(log_x) - lo) / (hi - lo)
        # weighted mean and variance of a uniform variable: 1/2 and 1/12
        mean = np.sum(w * u)
        var = np.sum(w * (u - mean) ** 2)
        assert abs(mean - 0.5) < 0.01 and abs(var - 1 / 12) < 0.003, (mean, var)
        # unweighted (log-uniform) draws are not uniform: the factor matters
        assert abs(np.mean(u) - 0.5) > 0.03, np.mean(u)


# ----------------------------------------------------------------------------------------------
# Kinematics mode: the distance ratio


@pytest.mark.parametrize(
    "D_dt_box, D_d_box",
    [(Priors().D_dt, Priors().D_d), ((500.0, 4000.0), (800.0, 1500.0))],
    ids=["default boxes", "unequal boxes"],
)
def test_log_ratio_prior_is_the_marginal_of_uniform_distances(D_dt_box, D_d_box):
    """The analytic density of log(D_dt / D_d) integrates to 1 over its range and matches the
    histogram of D_dt / D_d drawn uniformly in the box rectangle."""
    lo, hi = log_ratio_box(D_dt_box, D_d_box)
    s = np.linspace(lo, hi, 200_001)
    density = np.exp(np.asarray(log_ratio_prior(s, D_dt_box, D_d_box)))
    assert abs(np.trapezoid(density, s) - 1.0) < 1e-6
    outside = np.asarray(log_ratio_prior(np.array([lo - 0.01, hi + 0.01]), D_dt_box, D_d_box))
    assert np.all(np.isneginf(outside))
    rng = np.random.default_rng(5)
    n = 1_000_000
    log_r = np.log(rng.uniform(*D_dt_box, n) / rng.uniform(*D_d_box, n))
    edges = np.linspace(lo, hi, 41)
    counts, _ = np.histogram(log_r, edges)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(s))])
    expected = n * np.diff(np.interp(edges, s, cdf))
    # Poisson errors; bins far in the tails are nearly empty and skipped
    big = expected > 100
    pulls = (counts[big] - expected[big]) / np.sqrt(expected[big])
    assert big.sum() >= 25 and np.max(np.abs(pulls)) < 5.0, pulls
    assert abs(np.mean(pulls**2) - 1.0) < 0.5, np.mean(pulls**2)


def _kinematics_trace(data, setup, values):
    """The model's trace in kinematics mode at constrained ``values`` of its sites."""
    from numpyro import handlers

    substituted = handlers.substitute(model, data={k: jnp.asarray(v) for k, v in values.items()})
    return handlers.trace(substituted).get_trace(data, setup)


def test_kinematics_mode_samples_the_ratio_theta_E_combination_and_theta_E_fraction(
    system, data, emulator
):
    """The sampled sites are log(D_dt / D_d x theta_E) and theta_E's fraction, with log theta_E,
    theta_E, log ratio and ratio deterministic and no distance; the log density ignores D_dt and
    D_d at fixed ratio, its kinematic term is the likelihood at any pair with that ratio, and the
    true ratio beats wrong ones."""
    names = site_names("kinematics")
    assert names[-2:] == (RATIO_THETA_E_SITE, THETA_E_FRACTION_SITE)
    assert not {"theta_E", LOG_THETA_E_SITE, RATIO_SITE, "D_dt", "D_d", "log_D_dt"} & set(names)
    assert len(names) == 12
    setup = _setup(data, "kinematics", emulator=emulator)
    truth = truth_values(system, "kinematics")
    assert not {"D_dt", "D_d"} & set(truth)
    sky = system.truth.sky
    np.testing.assert_allclose(float(truth[RATIO]), sky.D_dt / sky.D_d, rtol=1e-12)
    np.testing.assert_allclose(float(truth[LOG_THETA_E_SITE]), math.log(PARAMS[0]), rtol=1e-12)
    np.testing.assert_allclose(
        float(truth[RATIO_THETA_E_SITE]), math.log(sky.D_dt / sky.D_d * PARAMS[0]), rtol=1e-12
    )
    values = {k: truth[k] for k in names}
    trace = _kinematics_trace(data, setup, values)
    sampled = {
        k for k, site in trace.items() if site["type"] == "sample" and not site["is_observed"]
    }
    assert sampled == set(names)
    for name in ("theta_E", LOG_THETA_E_SITE, RATIO_SITE, RATIO):
        assert trace[name]["type"] == "deterministic"
        np.testing.assert_allclose(float(trace[name]["value"]), float(truth[name]), rtol=1e-12)
    light_shape = log_light_shape_prior(truth["q_light"], truth["phi"], data.light_shape)
    assert float(trace["light_shape"]["fn"].log_factor) == pytest.approx(float(light_shape))

    # the same log density with distances twice as large at the same ratio passed along (they
    # are not read)
    density = jax.jit(lambda v: log_density(data, setup, v))
    base = float(density(values))
    doubled = {**values, "D_dt": 2 * sky.D_dt, "D_d": 2 * sky.D_d}
    assert float(density(doubled)) == pytest.approx(base, abs=1e-9)
    # ... and its kinematic term is the likelihood at the true distances, or any with that ratio
    log_l_kin = float(trace["kinematics"]["fn"].log_factor)
    params = jnp.asarray(emulator_params({k: jnp.asarray(v) for k, v in truth.items()}))
    for scale in (1.0, 2.0):
        pair = SkyParams(sky.phi, sky.center_x, sky.center_y, scale * sky.D_dt, scale * sky.D_d)
        assert float(setup.kinematics(params, pair)) == pytest.approx(log_l_kin, abs=1e-6)
    # the true ratio beats a 20 % wrong one at the true theta_E (v_rms off by ~10 %)
    pr = setup.priors
    for factor in (0.8, 1.2):
        w = values[RATIO_THETA_E_SITE] + math.log(factor)
        f = fraction_from_log_theta_E(truth[LOG_THETA_E_SITE], w, pr.theta_E, pr.D_dt, pr.D_d)
        wrong = {**values, RATIO_THETA_E_SITE: w, THETA_E_FRACTION_SITE: f}
        worse_trace = _kinematics_trace(data, setup, wrong)
        np.testing.assert_allclose(
            float(worse_trace[RATIO]["value"]), factor * sky.D_dt / sky.D_d, rtol=1e-12
        )
        worse = float(worse_trace["kinematics"]["fn"].log_factor)
        assert worse < log_l_kin - 10.0, (factor, worse, log_l_kin)


_OLD_BOXED = ("theta_E", "gamma", "q_mass", "phi", "center_x", "center_y", "q_light",
              "r_sersic_ratio", "n_sersic", "beta_z", "inclination_deg")  # fmt: skip
"""Sites of the first version-4 kinematics mode sampled uniformly in their boxes (with
``log_ratio``)."""


def _old_kinematics_log_prior(value: dict, priors) -> float:
    """The kinematics prior in the coordinates (theta_E, ..., log_ratio): uniform boxes (the
    paper's parameters, version 5: no EPL factor) and the ratio prior, at the values ``value``."""
    total = 0.0
    for name in _OLD_BOXED:
        lo, hi = getattr(priors, name)
        assert lo <= value[name] <= hi, name
        total -= math.log(hi - lo)
    return total + float(log_ratio_prior(value[RATIO_SITE], priors.D_dt, priors.D_d))


def test_kinematics_log_density_is_the_old_prior_times_the_jacobians(system, data, emulator):
    """At matched points the model's log density minus its kinematic likelihood and light-shape
    prior equals the prior of the (theta_E, log_ratio) coordinates plus log |∂(theta_E,
    log_ratio)/∂(log_theta_E, log_ratio_theta_E)| = log theta_E plus log |∂ log_theta_E / ∂
    fraction|; and the whole sampled rectangle of (log_ratio_theta_E, fraction), corners too,
    maps inside the boxes of theta_E and the ratio (no -inf wall inside the sampled coordinates)."""
    from numpyro.infer.util import log_density as numpyro_log_density

    pr = Priors()
    setup = _setup(data, "kinematics", emulator=emulator)
    truth = truth_values(system, "kinematics")
    names = site_names("kinematics")
    base = {k: float(np.asarray(truth[k])) for k in names}
    rng = np.random.default_rng(7)
    points = [base]
    for theta_E, ratio in ((0.55, 0.5), (1.9, 8.0), (1.0, 2.37)):  # near the boxes' corners too
        log_u, log_w = kinematic_scale_coordinates(theta_E, math.log(ratio))
        f = fraction_from_log_theta_E(log_u, log_w, pr.theta_E, pr.D_dt, pr.D_d)
        point = {**base, RATIO_THETA_E_SITE: float(log_w), THETA_E_FRACTION_SITE: float(f)}
        point["gamma"] = float(rng.uniform(*pr.gamma))
        point["q_mass"] = float(rng.uniform(*pr.q_mass))
        points.append(point)

    @jax.jit
    def prior_part(v):
        """Log density minus the kinematic and light-shape terms, and the old coordinates."""
        total, trace = numpyro_log_density(model, (data, setup), {}, v)
        old = {k: trace[k]["value"] for k in _OLD_BOXED + (RATIO_SITE, LOG_THETA_E_SITE)}
        rest = trace["kinematics"]["fn"].log_factor + trace["light_shape"]["fn"].log_factor
        return total - rest, old

    for point in points:
        new_prior, old = prior_part({k: jnp.asarray(x) for k, x in point.items()})
        old = {k: float(x) for k, x in old.items()}
        u, w = old[LOG_THETA_E_SITE], point[RATIO_THETA_E_SITE]
        np.testing.assert_allclose(old["theta_E"], math.exp(u), rtol=1e-14)
        _, log_jacobian = log_theta_E_from_fraction(
            w, point[THETA_E_FRACTION_SITE], pr.theta_E, pr.D_dt, pr.D_d
        )
        expected = _old_kinematics_log_prior(old, pr) + u + float(log_jacobian)
        assert float(new_prior) == pytest.approx(expected, abs=1e-9), point
    density = jax.jit(lambda v: log_density(data, setup, v))
    box_w = ratio_theta_E_box(pr.theta_E, pr.D_dt, pr.D_d)
    s_lo, s_hi = log_ratio_box(pr.D_dt, pr.D_d)
    for w in (box_w[0] + 1e-3, box_w[1] - 1e-3, 0.5 * (box_w[0] + box_w[1])):
        for f in (1e-6, 0.5, 1 - 1e-6):
            corner = {**base, RATIO_THETA_E_SITE: w, THETA_E_FRACTION_SITE: f}
            assert np.isfinite(float(density(corner))), (w, f)
            u, _ = log_theta_E_from_fraction(w, f, pr.theta_E, pr.D_dt, pr.D_d)
            assert pr.theta_E[0] <= math.exp(float(u)) <= pr.theta_E[1]
            assert s_lo <= w - float(u) <= s_hi


def test_theta_E_fraction_round_trip_and_jacobian():
    """fraction -> log_theta_E -> fraction is the identity, and log(hi - lo) is the log of
    ∂ log_theta_E / ∂ fraction (central differences)."""
    pr = Priors()
    box_w = ratio_theta_E_box(pr.theta_E, pr.D_dt, pr.D_d)
    rng = np.random.default_rng(3)
    w = rng.uniform(*box_w, 200)
    f = rng.uniform(0.0, 1.0, 200)
    u, log_jacobian = log_theta_E_from_fraction(w, f, pr.theta_E, pr.D_dt, pr.D_d)
    back = fraction_from_log_theta_E(u, w, pr.theta_E, pr.D_dt, pr.D_d)
    np.testing.assert_allclose(np.asarray(back), f, atol=1e-12)
    h = 1e-6
    up, _ = log_theta_E_from_fraction(w, f + h, pr.theta_E, pr.D_dt, pr.D_d)
    down, _ = log_theta_E_from_fraction(w, f - h, pr.theta_E, pr.D_dt, pr.D_d)
    np.testing.assert_allclose(
        np.log((np.asarray(up) - np.asarray(down)) / (2 * h)), np.asarray(log_jacobian), atol=1e-8
    )


def test_light_shape_prior_is_a_gaussian_in_the_ellipticity_components(system, data):
    """The light-shape prior is the normalised Gaussian of (e1, e2): it integrates to 1 over the
    e-plane, peaks at the measurement, has period π in phi and is flat in phi for a round light;
    only kinematics mode adds it (the model's factor is tested with its sites); the mock
    measures it near the truth, reproducibly; bad input raises naming the value."""
    from skinn_jax.inference.data import light_shape_from_q_phi
    from skinn_jax.inference.model import uses_light_shape
    from skinn_jax.profiles import q_phi_from_e1e2

    shape = light_shape_from_q_phi(0.8, 0.3, 0.02)
    e = np.linspace(-0.2, 0.2, 801)
    e1, e2 = np.meshgrid(e, e)
    q, phi = q_phi_from_e1e2(jnp.asarray(e1), jnp.asarray(e2))
    density = np.exp(np.asarray(log_light_shape_prior(q, phi, shape)))
    assert density.sum() * (e[1] - e[0]) ** 2 == pytest.approx(1.0, abs=1e-4)
    peak = float(log_light_shape_prior(0.8, 0.3, shape))
    assert peak == pytest.approx(-math.log(2 * math.pi * 0.02**2), abs=1e-10)
    assert float(log_light_shape_prior(0.8, 0.3 + math.pi, shape)) == pytest.approx(peak, abs=1e-9)
    assert float(log_light_shape_prior(0.8, 0.5, shape)) < peak - 1.0
    round_light = [float(log_light_shape_prior(1.0, a, shape)) for a in (-1.0, 0.2, 1.4)]
    assert max(round_light) - min(round_light) < 1e-12
    for bad, match in (((1.2, 0.0, 0.01), "axis ratio"), ((0.8, 0.0, 0.0), "sigma")):
        with pytest.raises(ValueError, match=match):
            light_shape_from_q_phi(*bad)

    assert uses_light_shape("kinematics") and not uses_light_shape("joint")
    assert not uses_light_shape("lensing")
    from numpyro import handlers

    from skinn_jax.inference.model import light_shape_block

    v = {"q_light": jnp.asarray(0.9), "phi": jnp.asarray(0.2)}

    def block_trace(d):
        return handlers.trace(lambda: light_shape_block.fn(v, d, None, False)).get_trace()

    expected = float(log_light_shape_prior(0.9, 0.2, data.light_shape))
    assert float(block_trace(data)["light_shape"]["fn"].log_factor) == pytest.approx(expected)
    assert block_trace(data._replace(light_shape=None)) == {}
    # the mock's measurement: near the truth (0.01 per component), the same on every build
    true_shape = light_shape_from_q_phi(PARAMS[3], system.truth.sky.phi, 0.01)
    offsets = np.array(data.light_shape[:2]) - np.array(true_shape[:2])
    assert np.all(np.abs(offsets) < 0.05) and np.any(offsets != 0.0)
    assert make_mock_system(3, PARAMS, settings=SETTINGS).light_shape == system.light_shape


def test_kinematic_scale_prior_is_the_push_forward_of_uniform_theta_E_and_distances():
    """Draws of theta_E, D_dt, D_d uniform in their boxes, mapped to (log theta_E,
    log(D_dt / D_d x theta_E)), follow log_kinematic_scale_prior (2-D histogram vs the density's
    integral over each bin); the density integrates to 1 over its sampled box."""
    pr = Priors()
    box_u, box_w = log_theta_E_box(pr.theta_E), ratio_theta_E_box(pr.theta_E, pr.D_dt, pr.D_d)
    nu, nw = 12, 24
    # bin integrals by a fine midpoint rule inside every bin
    fine = 40
    edges_u, edges_w = np.linspace(*box_u, nu + 1), np.linspace(*box_w, nw + 1)
    fu = np.linspace(*box_u, nu * fine + 1)
    fw = np.linspace(*box_w, nw * fine + 1)
    mu, mw = 0.5 * (fu[1:] + fu[:-1]), 0.5 * (fw[1:] + fw[:-1])
    log_p = np.asarray(
        log_kinematic_scale_prior(mu[:, None], mw[None, :], pr.theta_E, pr.D_dt, pr.D_d)
    )
    cell = np.exp(log_p) * (fu[1] - fu[0]) * (fw[1] - fw[0])
    assert abs(cell.sum() - 1.0) < 2e-3, cell.sum()
    probs = cell.reshape(nu, fine, nw, fine).sum(axis=(1, 3))
    rng = np.random.default_rng(11)
    n = 1_000_000
    theta_E = rng.uniform(*pr.theta_E, n)
    ratio = rng.uniform(*pr.D_dt, n) / rng.uniform(*pr.D_d, n)
    u, w = (np.asarray(a) for a in kinematic_scale_coordinates(theta_E, np.log(ratio)))
    counts, _, _ = np.histogram2d(u, w, [edges_u, edges_w])
    expected = n * probs
    big = expected > 200
    pulls = (counts[big] - expected[big]) / np.sqrt(expected[big])
    assert big.sum() > 100 and np.max(np.abs(pulls)) < 5.0, np.max(np.abs(pulls))
    assert abs(np.mean(pulls**2) - 1.0) < 0.5, np.mean(pulls**2)
    # where the density is zero there are no draws
    assert counts[probs == 0].sum() == 0


def test_study_reports_the_distance_ratio_of_kinematics_and_joint_fits(tmp_path):
    """run_study's coverage, widths and Fig. 9 take D_dt / D_d from kinematics fits (a site) and
    joint fits (from their D_dt and D_d draws), without counting it twice in joint's pooled row."""
    from types import SimpleNamespace

    import arviz as az

    from skinn_jax.inference import study as run_study

    rng = np.random.default_rng(2)
    results = {}
    for k in range(3):
        d_dt, d_d = 3000.0 + 100 * k, 1200.0 - 50 * k
        joint = {"D_dt": d_dt * (1 + 0.1 * rng.standard_normal((2, 200)))}
        joint["D_d"] = joint["D_dt"] / (d_dt / d_d * (1 + 0.03 * rng.standard_normal((2, 200))))
        kin = {RATIO: d_dt / d_d * (1 + 0.06 * rng.standard_normal((2, 200)))}
        truths = {"D_dt": d_dt, "D_d": d_d, RATIO: d_dt / d_d}
        per = {}
        for mode, draws in (("joint", joint), ("kinematics", kin)):
            table = fit_mod.summary_table(draws, truths, list(draws))
            result = SimpleNamespace(summary=table, idata=az.from_dict(posterior=draws))
            per[mode] = {"result": result, "truths": truths}
        results[k] = per
    coverage = run_study.coverage_table(results, ["joint", "kinematics"])
    assert coverage["joint"][RATIO]["n"] == 3 and coverage["kinematics"][RATIO]["n"] == 3
    assert coverage["joint"]["all (pooled)"]["n"] == 6  # D_dt and D_d, not their ratio
    assert coverage["kinematics"]["all (pooled)"]["n"] == 3
    widths = run_study.widths(results)
    assert widths[0][f"{RATIO}_kinematics"] > 1.5 * widths[0][f"{RATIO}_joint"]
    ratios = run_study.width_ratios(widths)
    assert ratios[RATIO]["mode"] == "kinematics" and ratios[RATIO]["median"] > 1.5
    run_study.plot_fig9(results, ["joint", "kinematics"], tmp_path / "fig9.png")
    assert (tmp_path / "fig9.png").stat().st_size > 10_000
    assert RATIO in run_study.markdown(
        {
            "n_systems": 3, "modes": ["joint", "kinematics"], "coverage": coverage,
            "widths": widths, "width_ratios": ratios, "reweighting": {}, "timings": [],
        }
    )  # fmt: skip
    # both counts of converged fits: the policy's and R-hat/ESS alone
    rows = [{"system": k, "mode": m, "fit_s": 1.0, "evaluations": 1, "chain_ms_per_eval": 1.0,
             "converged": False} for k in range(3) for m in ("joint", "kinematics")]  # fmt: skip
    text = run_study.markdown(
        {
            "n_systems": 3, "modes": ["joint", "kinematics"], "coverage": coverage,
            "coverage_converged": coverage, "n_converged": {"joint": 1, "kinematics": 2},
            "n_mixed": {"joint": 3, "kinematics": 2}, "widths": widths, "width_ratios": ratios,
            "reweighting": {}, "timings": rows,
        }
    )  # fmt: skip
    assert "no divergences): joint 1, kinematics 2. By R-hat and ESS alone" in text
    assert "(the issue's definition): joint 3, kinematics 2. Fits per mode: joint 3" in text


def _quadratic(hess: np.ndarray):
    def value_and_grad(z):
        z = np.asarray(z)
        return 0.5 * z @ hess @ z, hess @ z

    return value_and_grad


def test_whitened_covariance_is_the_inverse_hessian_of_a_gaussian():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    hess = a @ a.T + 0.5 * np.eye(5)  # well inside the prior cap
    start = np.linalg.cholesky(np.eye(5) * 0.7)
    for step in (1e-3, 0.5):  # exact for any step on a quadratic
        cov, n_fixed = fit_mod.whitened_covariance(_quadratic(hess), np.zeros(5), start, step)
        assert n_fixed == 0
        np.testing.assert_allclose(cov, np.linalg.inv(hess), rtol=1e-8, atol=1e-10)


def test_laplace_variance_of_a_flat_or_concave_direction_does_not_compound():
    # one concave and one nearly flat direction: the old refinement multiplied their variance
    # by 25 at every pass; now they keep the start's variance and never exceed the prior's
    hess = np.diag([4.0, -1.0, 1e-6])
    cov = np.diag([0.25, 0.5, 1.0])
    for _ in range(6):
        cov, n_fixed = fit_mod.whitened_covariance(
            _quadratic(hess), np.zeros(3), np.linalg.cholesky(cov)
        )
    assert n_fixed == 1
    eig = np.linalg.eigvalsh(cov)
    assert eig.max() <= fit_mod.PRIOR_VARIANCE * (1 + 1e-9)
    np.testing.assert_allclose(np.diag(cov), [0.25, 0.5, fit_mod.PRIOR_VARIANCE], rtol=1e-6)


def test_cap_variance_lowers_only_the_broad_eigenvalues():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    cov = (q * np.array([0.1, 1.0, 10.0, 1000.0])) @ q.T
    capped = fit_mod.cap_variance(cov, 2.0)
    np.testing.assert_allclose(np.linalg.eigvalsh(capped), [0.1, 1.0, 2.0, 2.0], rtol=1e-10)
    np.testing.assert_allclose(capped @ q[:, 0], 0.1 * q[:, 0], atol=1e-12)


def test_box_prior_is_a_standard_normal_in_the_probit_coordinate():
    """:class:`BoxUniform`: the sampler's coordinate z of a box is its probit, so the potential of
    a uniform site is exactly ``z²/2 + log √(2π)``; the bijection round-trips and its log
    Jacobian is autodiff's; standard-normal z map to uniform draws in the box."""
    import numpyro
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer.util import potential_energy
    from scipy import stats

    from skinn_jax.inference.priors import BoxUniform

    low, high = 0.5, 1.0

    def one_box():
        numpyro.sample("x", BoxUniform(low, high))

    z = jnp.linspace(-6.0, 6.0, 25)
    pe = jax.vmap(lambda zz: potential_energy(one_box, (), {}, {"x": zz}))(z)
    np.testing.assert_allclose(pe, 0.5 * z**2 + 0.5 * math.log(2 * math.pi), rtol=1e-12)
    t = biject_to(BoxUniform(low, high).support)
    x = t(z)
    assert np.all((x > low) & (x < high))
    np.testing.assert_allclose(t.inv(x), z, atol=1e-8)
    np.testing.assert_allclose(
        t.log_abs_det_jacobian(z, x), jnp.log(jax.vmap(jax.grad(t))(z)), rtol=1e-10
    )
    draws = t(jax.random.normal(jax.random.PRNGKey(0), (20_000,)))
    assert stats.kstest(np.asarray(draws), stats.uniform(low, high - low).cdf).pvalue > 1e-3
    # (standard normal z through the logit's sigmoid are not uniform: the test can tell)
    sigmoid = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(0), (20_000,)))
    logit_draws = np.asarray(low + (high - low) * sigmoid)
    assert stats.kstest(logit_draws, stats.uniform(low, high - low).cdf).pvalue < 1e-3


@pytest.mark.parametrize("mode", ["joint", "lensing", "kinematics"])
def test_every_box_of_the_model_is_sampled_through_the_probit(system, data, mode):
    """Every sampled site of every mode has a probit box (no logit coordinate is left)."""
    from numpyro import handlers

    from skinn_jax.inference.priors import BoxUniform

    setup = _setup(data, mode, solver_start=solver_start_from_truth(system))
    truth = truth_values(system, mode)
    point = {k: jnp.asarray(truth[k]) for k in site_names(mode)}
    trace = handlers.trace(handlers.substitute(model, data=point)).get_trace(data, setup)
    for name in site_names(mode):
        assert type(_base_support(trace[name])) is type(BoxUniform(0.0, 1.0).support), name
