"""The real-lens model space (CONVENTIONS §9): parameter space, MGEs, JAM truth, several-component
light in JAM and in the forward model, and the emulator's box interface."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skinn_jax.training import mge
from skinn_jax.training.jam import jam_model, jam_vrms, jampy_signed_v2

from skinn_jax.checkpoint import save_checkpoint
from skinn_jax.emulator import Emulator
from skinn_jax.forward import (
    SkyParams,
    build_forward_model,
    predict_binned_vrms,
    predict_binned_vrms_components,
)
from skinn_jax.ifu import PSF, SpaxelGrid
from skinn_jax.networks import NetworkConfig, make_network
from skinn_jax.params import (
    PAPER_SPACE,
    REAL_LENS_SPACE,
    normalise_params,
    sample_params,
    space_named,
    space_of,
)
from skinn_jax.profiles import SersicLight, sersic_total_flux_np

SPACE = REAL_LENS_SPACE
TYPICAL = np.array(SPACE.typical)


# --- the parameter space ---------------------------------------------------------------------


def test_paper_space_is_the_old_box_exactly():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    p = PAPER_SPACE.sample(rng_a, 1000)
    np.testing.assert_array_equal(p, sample_params(rng_b, 1000))
    np.testing.assert_allclose(PAPER_SPACE.normalise(p), normalise_params(p), atol=1e-12)
    assert space_of(p) is PAPER_SPACE and space_named(None) is PAPER_SPACE


def test_real_lens_box_holds_the_issue_ranges():
    box = SPACE.public_box()
    assert SPACE.names[-1] == "r_core" and SPACE.names[:8] == PAPER_SPACE.names
    assert box["r_core"][0] == 0.0 and box["r_core"][1] >= 0.1
    assert box["q_mass"] == (0.5, 1.0) and box["q_light"] == (0.5, 1.0)
    assert box["n_sersic"] == (1.0, 6.0)
    assert box["r_sersic_over_theta_E"] == (0.15, 2.5)
    assert box["inclination_margin_deg"] == 2.0


def test_sampling_fills_the_rectangular_internal_box():
    p = SPACE.sample(np.random.default_rng(0), 20000)
    assert SPACE.in_box(p).all()
    u = SPACE.normalise(p)
    assert u.min() >= -1 - 1e-12 and u.max() <= 1 + 1e-12
    # uniform in the internal coordinates (r_core has its atom at 0)
    for i, name in enumerate(SPACE.names):
        if name == "r_core":
            continue
        hist, _ = np.histogram(u[:, i], bins=10, range=(-1, 1))
        assert np.all(np.abs(hist / 2000 - 1) < 0.1), name
    assert abs(np.mean(p[:, 8] == 0) - SPACE.r_core_zero_fraction) < 0.01
    floor = np.degrees(np.arccos(np.minimum(p[:, 2], p[:, 3]))) + 2
    assert np.all(p[:, 7] >= floor - 1e-9)
    # the lowest inclinations are reached for round systems
    assert p[:, 7].min() < 15


def test_normalise_is_smooth_at_the_singular_law_and_traceable():
    p = jnp.asarray(TYPICAL)
    u = jax.jit(SPACE.normalise)(p)
    assert float(u[8]) == -1.0
    grad = jax.grad(lambda q: jnp.sum(SPACE.normalise(q)))(p)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize(
    "index, value, message",
    [
        (7, 30.0, r"inclination_deg = 30 is outside the allowed range \[43.4096, 90\] for q_m"),
        (8, -0.01, r"r_core = -0.01 is outside the allowed range \[0, 0.1\]"),
        (8, np.nan, r"r_core = nan is not finite"),
        (5, 0.9, r"n_sersic = 0.9 is outside the allowed range \[1, 6\]"),
        (4, 3.1, r"r_sersic/theta_E = 2.58333, outside the allowed range \[0.15, 2.5\]"),
        (3, 0.45, r"q_light = 0.45 is outside the allowed range \[0.5, 1\]"),
    ],
)
def test_validation_names_value_and_rule(index, value, message):
    p = TYPICAL.copy()
    p[index] = value
    with pytest.raises(ValueError, match=message):
        SPACE.validate(p)
    assert not SPACE.in_box(p)


def test_bad_shapes_and_types_are_refused():
    with pytest.raises(ValueError, match=r"shape \(9,\) or \(B, 9\)"):
        SPACE.validate(TYPICAL[:8])
    with pytest.raises(ValueError, match="dict"):
        SPACE.validate(dict(zip(SPACE.names, TYPICAL, strict=True)))
    with pytest.raises(ValueError, match="complex"):
        SPACE.validate(TYPICAL + 0j)
    with pytest.raises(ValueError, match="8 \\(paper space\\) or 9"):
        space_of(np.zeros(7))


# --- MGEs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.5, 2.0, 2.5])
@pytest.mark.parametrize("r_core", [0.0, 1e-5, 0.005, 0.1])
def test_power_law_mge_is_checked_over_the_map(gamma, r_core):
    fit = mge.power_law_mge(gamma, r_core)
    r = np.geomspace(0.01, 13.0, 3000)
    rel = fit(r) / mge.power_law_shape(r, gamma, r_core) - 1
    assert np.max(np.abs(rel)) <= mge.MAX_REL_ERROR
    if r_core == 0:
        assert fit.sigma_arcsec.min() <= 2e-7  # the singular law, down to ~1e-7"


@pytest.mark.parametrize("gamma", [1.6, 2.5])
def test_singular_mge_holds_the_enclosed_mass(gamma):
    """The mass inside 0.01" (which sets v_rms near the centre) is that of the singular law."""
    fit = mge.power_law_mge(gamma, 0.0)
    radius = 0.01
    mge_mass = np.sum(
        2
        * np.pi
        * fit.peak
        * fit.sigma_arcsec**2
        * (1 - np.exp(-(radius**2) / (2 * fit.sigma_arcsec**2)))
    )
    exact = 2 * np.pi * radius ** (3 - gamma) / (3 - gamma)
    assert mge_mass / exact - 1 == pytest.approx(0, abs=5e-3)


@pytest.mark.parametrize(
    "r_sersic, n_sersic",
    [(0.075, 1.0), (0.2, 1.0), (0.3, 1.6), (5.0, 1.0), (0.075, 6.0), (5.0, 6.0), (1.0, 3.5)],
)
def test_wide_light_mge_over_its_whole_extent(r_sersic, n_sersic):
    fit = mge.sersic_mge(r_sersic, n_sersic)
    outer = min(13.0, mge.light_fit_outer_radius_wide(r_sersic, n_sersic))
    r = np.geomspace(0.01, outer, 3000)
    rel = fit(r) / mge.sersic_shape(r / r_sersic, n_sersic) - 1
    assert np.max(np.abs(rel)) <= mge.MAX_REL_ERROR
    flux = mge.mge_total_flux(fit) / sersic_total_flux_np(r_sersic, n_sersic)
    assert flux == pytest.approx(1.0, abs=mge.MAX_REL_ERROR)
    # the fit reaches far beyond the 1e-10 cut of the paper box
    assert mge.light_fit_outer_radius_wide(r_sersic, n_sersic) > mge.light_fit_outer_radius(
        r_sersic, n_sersic
    )


# --- JAM truth -------------------------------------------------------------------------------


def test_jam_truth_with_r_core_zero_is_the_singular_law_and_a_core_lowers_it():
    """r_core = 0 is the singular law; a tiny core lowers v_rms a little, a larger one more, by
    an amount that grows with r_core (never a log-like jump)."""
    x, y = np.array([0.5, 1.0]), np.array([0.0, 0.3])
    p = TYPICAL.copy()
    p[1] = 2.4
    v = {}
    for rc in (0.0, 1e-6, 1e-3, 0.01, 0.1):
        p[8] = rc
        v[rc] = jam_vrms(p, x, y)
    assert np.all(np.abs(v[1e-6] / v[0.0] - 1) < 2e-3)
    shifts = [np.mean(v[rc] / v[0.0] - 1) for rc in (1e-3, 0.01, 0.1)]
    assert shifts[0] < 0 and shifts[1] < shifts[0] and shifts[2] < shifts[1]


def test_several_component_light_is_the_luminosity_weighted_sum():
    """JAM with the combined MGE of two components equals sum_k A_k S_k v_k^2 / sum_k A_k S_k
    (linearity of the Jeans equations in the tracer), S_k each component's MGE surface
    brightness."""
    p = TYPICAL.copy()
    light = SersicLight(
        amplitude=[4.0, 1.0], q_light=[0.8, 0.7], r_sersic=[0.25, 1.6], n_sersic=[1.6, 1.1]
    )
    x = np.array([0.1, 0.4, 1.0, 1.5, 0.0])
    y = np.array([0.0, 0.3, 0.2, 1.0, 0.8])
    both = jampy_signed_v2(jam_model(p, light=light), x, y)
    num = np.zeros_like(x)
    den = np.zeros_like(x)
    for k in range(2):
        pk = p.copy()
        pk[3], pk[4], pk[5] = light.q_light[k], light.r_sersic[k], light.n_sersic[k]
        model = jam_model(pk)
        s = np.sum(
            light.amplitude[k]
            * model.surf_light
            * np.exp(
                -(x[:, None] ** 2 + (y[:, None] / model.q_light) ** 2) / (2 * model.sigma_light**2)
            ),
            axis=1,
        )
        num += s * jampy_signed_v2(model, x, y)
        den += s
    np.testing.assert_allclose(both, num / den, rtol=1e-6)


def test_light_components_are_validated():
    p = TYPICAL.copy()
    with pytest.raises(ValueError, match="no component"):
        jam_model(p, light=SersicLight([], [], [], []))
    with pytest.raises(ValueError, match=r"light.amplitude\[1\] = -1 must be finite and > 0"):
        jam_model(p, light=SersicLight([1.0, -1.0], [0.8, 0.8], [0.5, 1.0], [2.0, 1.0]))
    with pytest.raises(ValueError, match="light component 0"):
        jam_model(p, light=SersicLight([1.0], [0.3], [0.5], [2.0]))
    with pytest.raises(ValueError, match="real-lens space"):
        jam_model(p[:8], light=SersicLight([1.0], [0.8], [0.5], [2.0]))


# --- forward model with several components ---------------------------------------------------


def _analytic_field(params, x, y):
    """A smooth stand-in field whose value depends on the light parameters, so that the
    component mixing is visible (the test checks the mixing formula, not the physics)."""
    return 150.0 + 30.0 * params[5] * jnp.exp(-(x**2 + y**2) / (1.0 + params[4] ** 2)) * params[3]


def test_forward_model_mixes_components_by_luminosity():
    grid = SpaxelGrid.regular((11, 11), 0.15)
    bins = np.arange(121).reshape(11, 11) % 7
    model = build_forward_model(grid, bins, PSF.gaussian(0.6), supersampling=3)
    sky = SkyParams(0.3, 0.02, -0.01, 2886.54, 1215.739)
    light = SersicLight(
        amplitude=[3.0, 1.0], q_light=[0.8, 0.7], r_sersic=[0.25, 1.6], n_sersic=[1.6, 1.1]
    )
    p = jnp.asarray(TYPICAL)
    pred = predict_binned_vrms_components(model, _analytic_field, p, light, sky, 0.5)
    # one component reduces to the single-Sérsic prediction exactly
    one = SersicLight([2.0], [0.75], [0.9], [3.5])
    np.testing.assert_allclose(
        predict_binned_vrms_components(model, _analytic_field, p, one, sky, 0.5),
        predict_binned_vrms(model, _analytic_field, p, sky, 0.5),
        rtol=1e-6,
    )
    # brute force: the same sums written out with NumPy per component
    from skinn_jax.forward import bin_moment_sums, galaxy_frame_points

    xg, yg = galaxy_frame_points(model, sky)
    num = 0.0
    den = 0.0
    for k in range(2):
        pk = np.array(TYPICAL)
        pk[3], pk[4], pk[5] = light.q_light[k], light.r_sersic[k], light.n_sersic[k]
        ik = SersicLight(
            [light.amplitude[k]], [light.q_light[k]], [light.r_sersic[k]], [light.n_sersic[k]]
        ).surface_brightness(xg, yg)
        vk = _analytic_field(jnp.asarray(pk), xg, yg)
        num = num + ik * vk**2
        den = den + ik
    n, d = bin_moment_sums(model, jnp.stack([num, den]), sky)
    np.testing.assert_allclose(pred, np.sqrt(n / d), rtol=1e-6)
    grad = jax.grad(
        lambda a: jnp.sum(
            predict_binned_vrms_components(
                model, _analytic_field, p, light._replace(amplitude=a), sky, 0.5
            )
        )
    )(jnp.asarray([3.0, 1.0]))
    assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)


# --- the emulator's box interface ------------------------------------------------------------


def _real_lens_emulator(tmp_path):
    config = NetworkConfig(kind="pca", n_basis=4, mapping_width=16, mapping_depth=2)
    net = make_network(config)
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 9)), jnp.zeros(2), jnp.zeros(2))
    variables = jax.tree_util.tree_map(np.asarray, variables)
    variables["constants"]["basis"] = np.full(
        variables["constants"]["basis"].shape, 0.7, np.float32
    )
    path = save_checkpoint(tmp_path / "rl", config, variables, {}, space=SPACE)
    return Emulator.load(path)


def test_real_lens_emulator_interface(tmp_path):
    emu = _real_lens_emulator(tmp_path)
    assert emu.param_names == SPACE.names
    box = emu.box
    assert set(box) == set(SPACE.names) | {"r_sersic_over_theta_E", "inclination_margin_deg"}
    assert emu.in_box(TYPICAL) and not emu.in_box(np.r_[TYPICAL[:7], 20.0, 0.0])
    assert emu.vrms_map(TYPICAL).shape == (551, 551)
    assert emu.vrms_at(TYPICAL, np.zeros(3), np.ones(3)).shape == (3,)
    bad = TYPICAL.copy()
    bad[7] = 20.0
    with pytest.raises(ValueError, match="inclination_deg = 20 is outside"):
        emu.vrms_map(bad)
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        emu.vrms_map(TYPICAL[:8])
