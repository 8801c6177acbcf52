import jax.numpy as jnp
import numpy as np
import pytest

from skinn_jax.grid import map_coordinates, mirror_quadrant, quadrant_coordinates


def test_pixel_centres_follow_conventions():
    x, y = map_coordinates()
    assert x.shape == (551, 551)
    assert x[0, 0] == pytest.approx(-5.5) and y[0, 0] == pytest.approx(-5.5)
    assert x[10, 300] == pytest.approx((300 - 275) * 0.02)
    assert y[10, 300] == pytest.approx((10 - 275) * 0.02)
    qx, qy = quadrant_coordinates()
    np.testing.assert_array_equal(qx, x[:276, :276])
    assert qx.max() == 0 and qy.max() == 0


def test_mirror_keeps_centre_once_and_is_symmetric():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(551, 551))
    full = full + full[:, ::-1]
    full = full + full[::-1, :]
    np.testing.assert_array_equal(mirror_quadrant(full[:276, :276]), full)
    q = rng.normal(size=(2, 276, 276)).astype(np.float32)
    m = np.asarray(mirror_quadrant(jnp.asarray(q)))
    assert m.shape == (2, 551, 551)
    np.testing.assert_array_equal(m, m[:, ::-1, :])
    np.testing.assert_array_equal(m, m[:, :, ::-1])
    np.testing.assert_array_equal(m[:, :276, :276], q)
    with pytest.raises(ValueError, match="276"):
        mirror_quadrant(np.zeros((275, 276)))
