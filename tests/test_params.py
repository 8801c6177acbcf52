import numpy as np
import pytest

from skinn_jax.params import (
    INCLINATION_MIN_DEG,
    PARAM_BOX,
    PARAM_NAMES,
    R_SERSIC_RATIO_BOX,
    TYPICAL_PARAMS,
    EmulatorParams,
    normalise_params,
    sample_params,
    validate_params,
)


def test_names_and_order():
    assert PARAM_NAMES == (
        "theta_E",
        "gamma",
        "q_mass",
        "q_light",
        "r_sersic",
        "n_sersic",
        "beta_z",
        "inclination_deg",
    )
    assert INCLINATION_MIN_DEG == pytest.approx(np.degrees(np.arccos(0.6)) + 2)


def test_sampling_fills_the_box_uniformly():
    p = sample_params(np.random.default_rng(0), 20000)
    validate_params(p)
    ratio = p[:, 4] / p[:, 0]
    assert ratio.min() >= 0.5 and ratio.max() <= 1.0
    assert abs(np.mean(ratio) - 0.75) < 0.005
    assert abs(np.mean(p[:, 6])) < 0.01
    assert p[:, 7].min() >= INCLINATION_MIN_DEG and p[:, 7].max() <= 90
    # uniform: a KS-like check on gamma
    hist, _ = np.histogram(p[:, 1], bins=10, range=(1.5, 2.5))
    assert np.all(np.abs(hist / 2000 - 1) < 0.1)


@pytest.mark.parametrize(
    "index, value, message",
    [
        (0, 2.5, r"theta_E = 2.5 is outside the allowed range \[0.5, 2\]"),
        (1, np.inf, r"gamma = inf is not finite"),
        (2, 0.5, r"q_mass = 0.5 is outside the allowed range \[0.6, 1\]"),
        (5, 1.0, r"n_sersic = 1 is outside"),
        (6, np.nan, r"beta_z = nan is not finite"),
        (7, 50.0, r"inclination_deg = 50 is outside the allowed range \[55.13"),
        (4, 1.3, r"r_sersic = 1.3 arcsec gives r_sersic/theta_E = 1.08333"),
    ],
)
def test_validation_names_parameter_value_and_range(index, value, message):
    p = np.array([1.2, 2.0, 0.8, 0.75, 0.9, 3.5, 0.1, 70.0])
    p[index] = value
    with pytest.raises(ValueError, match=message):
        validate_params(p)


def test_validation_shapes_and_rows():
    with pytest.raises(ValueError, match="shape"):
        validate_params(np.zeros(7))
    p = sample_params(np.random.default_rng(1), 3)
    p[2, 1] = 3.0
    with pytest.raises(ValueError, match=r"gamma \(row 2\)"):
        validate_params(p)


def test_named_container_round_trip_and_normalisation():
    p = sample_params(np.random.default_rng(2), 5)
    named = EmulatorParams.from_array(p)
    np.testing.assert_array_equal(named.to_array(), p)
    n = normalise_params(p)
    assert n.shape == (5, 8)
    assert np.all(np.abs(n) <= 1 + 1e-12)
    corners = np.array(
        [
            [0.5, 1.5, 0.6, 0.6, 0.25, 2, -0.4, INCLINATION_MIN_DEG],
            [2.0, 2.5, 1.0, 1.0, 2.0, 4, 0.4, 90.0],
        ]
    )
    np.testing.assert_allclose(normalise_params(corners), [[-1] * 8, [1] * 8], atol=1e-12)


def test_typical_params_keep_a_fifth_of_every_box_width_from_the_faces():
    p = validate_params(np.array(TYPICAL_PARAMS))
    values = dict(zip(PARAM_NAMES, p, strict=True))
    values["r_sersic"] = values["r_sersic"] / values["theta_E"]  # the binding constraint
    boxes = dict(PARAM_BOX, r_sersic=R_SERSIC_RATIO_BOX)
    for name, value in values.items():
        low, high = boxes[name]
        margin = min(value - low, high - value) / (high - low)
        assert margin >= 0.2, (name, value, boxes[name])
