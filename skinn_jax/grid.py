"""The emulator's map grid (CONVENTIONS §5) and its quadrant symmetry.

551 x 551 pixels of 0.02 arcsec; pixel ``[i, j]`` (row, column) is centred at
``(x, y) = ((j - 275) * 0.02, (i - 275) * 0.02)`` arcsec in the galaxy frame, x along the projected
major axis. The map is symmetric under x -> -x and y -> -y, so the quadrant ``[:276, :276]``
(x <= 0, y <= 0) determines it.
"""

from __future__ import annotations

import numpy as np

MAP_SIZE = 551
QUADRANT_SIZE = 276
PIXEL_ARCSEC = 0.02
CENTRE_INDEX = 275
HALF_WIDTH_ARCSEC = CENTRE_INDEX * PIXEL_ARCSEC
"""Largest |x| or |y| of a pixel centre, 5.5 arcsec."""


def pixel_coordinates(index):
    """Galaxy-frame coordinate (arcsec) of pixel row or column ``index`` (array or int)."""
    return (np.asarray(index) - CENTRE_INDEX) * PIXEL_ARCSEC


def map_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of every pixel centre of the full map, each of shape (551, 551), arcsec."""
    c = pixel_coordinates(np.arange(MAP_SIZE))
    x, y = np.meshgrid(c, c)
    return x, y


def quadrant_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the quadrant ``[:276, :276]`` (x <= 0, y <= 0), each (276, 276), arcsec."""
    c = pixel_coordinates(np.arange(QUADRANT_SIZE))
    x, y = np.meshgrid(c, c)
    return x, y


def mirror_quadrant(quadrant):
    """Full (..., 551, 551) map from its (..., 276, 276) quadrant; centre row/column kept once.

    Works on NumPy and JAX arrays (only indexing and concatenation).
    """
    if quadrant.shape[-2:] != (QUADRANT_SIZE, QUADRANT_SIZE):
        raise ValueError(
            f"quadrant must end in shape ({QUADRANT_SIZE}, {QUADRANT_SIZE}), got {quadrant.shape}"
        )
    xp = np if isinstance(quadrant, np.ndarray) else __import__("jax.numpy").numpy
    top = xp.concatenate([quadrant, quadrant[..., :, -2::-1]], axis=-1)
    return xp.concatenate([top, top[..., -2::-1, :]], axis=-2)


def mirror_index() -> np.ndarray:
    """Flat quadrant index of every full-map pixel, shape (551, 551): ``full = q.ravel()[idx]``."""
    i = np.arange(MAP_SIZE)
    fold = np.where(i <= CENTRE_INDEX, i, 2 * CENTRE_INDEX - i)
    return fold[:, None] * QUADRANT_SIZE + fold[None, :]


def full_map_weights() -> np.ndarray:
    """Weight of each quadrant pixel in a mean over the full map, shape (276, 276), sum 1.

    Every quadrant pixel appears four times in the 551 x 551 map except the centre row and
    column (twice) and the centre pixel (once).
    """
    w = np.full((QUADRANT_SIZE, QUADRANT_SIZE), 4.0)
    w[-1, :] = 2.0
    w[:, -1] = 2.0
    w[-1, -1] = 1.0
    return w / w.sum()
