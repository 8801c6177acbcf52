"""The Laplace metric corrected from warm-up draws.

Joint and lensing fits run NUTS with the Laplace covariance at the MAP as the dense inverse mass
matrix (:mod:`.map`). Where the posterior is not Gaussian, a few directions are much broader (or
narrower) than the Laplace curvature says: on mock system 5 (joint mode) the posterior variance
along ``(gamma, inclination, r_sersic_ratio)`` is 5.7 times the Laplace one, so NUTS random-walks
that direction (ESS per draw 0.1 instead of ~0.6) and its step size, tuned in the bulk, diverges in
the tails. :func:`corrected_metric` measures the draws' covariance in the Laplace-whitened frame and
corrects only the eigen-directions that lie outside the band sampling noise alone would produce
(Marchenko-Pastur for ``d`` dimensions and the draws' effective number); every other direction
keeps the Laplace metric, so a few hundred autocorrelated warm-up draws are enough.

Example::

    corr = corrected_metric(laplace_cov, draws)  # draws: (n, d) unconstrained positions
    corr.covariance  # (d, d): the new inverse mass matrix
    corr.ratios[corr.corrected]  # variance ratios (draws / Laplace) of the corrected directions
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAX_RATIO = 25.0
"""Largest correction of a direction's variance, either way (a direction the warm-up never
explored, or a chain stuck elsewhere, must not collapse or explode the metric)."""

DRAWS_PER_EFFECTIVE = 3.0
"""Warm-up draws per effective draw assumed for the noise band (NUTS warm-up draws of the
study's joint fits are autocorrelated over a few iterations)."""


class MetricCorrection(NamedTuple):
    """A Laplace metric corrected from draws (:func:`corrected_metric`).

    Attributes:
        covariance: the corrected inverse mass matrix, (d, d), unconstrained units.
        ratios: eigenvalues of the draws' covariance in the Laplace-whitened frame (d,):
            variance of the draws over the Laplace variance along each eigen-direction.
        corrected: (d,) bool, the directions outside ``band`` (their variance is the draws').
        band: ``(low, high)``: the range of ``ratios`` that sampling noise alone gives.
    """

    covariance: np.ndarray
    ratios: np.ndarray
    corrected: np.ndarray
    band: tuple[float, float]


def noise_band(d: int, n_effective: float) -> tuple[float, float]:
    """Marchenko-Pastur range ``((1 - c)², (1 + c)²)``, ``c = sqrt(d / n_effective)``, of the
    eigenvalues of a sample covariance of ``n_effective`` independent draws of a ``d``-dimensional
    unit Gaussian; ``(0, inf)`` when ``c >= 1`` (too few draws to tell any direction)."""
    if d < 1 or n_effective <= 0:
        raise ValueError(f"d = {d}: allowed range [1, inf); n_effective = {n_effective}: (0, inf)")
    c = float(np.sqrt(d / n_effective))
    if c >= 1.0:
        return 0.0, float("inf")
    return (1.0 - c) ** 2, (1.0 + c) ** 2


def corrected_metric(
    laplace_cov: np.ndarray,
    draws: np.ndarray,
    draws_per_effective: float = DRAWS_PER_EFFECTIVE,
) -> MetricCorrection:
    """The Laplace covariance with the directions the draws clearly disagree with replaced.

    Args:
        laplace_cov: the Laplace covariance (inverse mass matrix), (d, d), unconstrained units.
        draws: unconstrained positions, (n, d) (e.g. the second half of the warm-up, all chains
            pooled: the spread between chains counts).
        draws_per_effective: draws per effective draw for the noise band (:func:`noise_band`).

    Returns:
        The :class:`MetricCorrection`: with ``L`` the Cholesky factor of ``laplace_cov`` and
        ``V diag(r) Vᵀ`` the draws' covariance in the frame ``L⁻¹ z``, the covariance
        ``L V diag(r') Vᵀ Lᵀ`` with ``r' = r`` outside the band (clipped to
        ``[1/MAX_RATIO, MAX_RATIO]``) and 1 inside it.
    """
    laplace_cov = np.asarray(laplace_cov, float)
    draws = np.asarray(draws, float)
    d = laplace_cov.shape[0]
    if laplace_cov.shape != (d, d) or draws.ndim != 2 or draws.shape[1] != d:
        raise ValueError(
            f"laplace_cov must be (d, d) and draws (n, d); got {laplace_cov.shape} and "
            f"{draws.shape}"
        )
    if draws.shape[0] < 2 or not np.all(np.isfinite(draws)):
        raise ValueError(f"draws must be finite, at least 2 rows; got shape {draws.shape}")
    chol = np.linalg.cholesky(laplace_cov)
    white = np.linalg.solve(chol, (draws - draws.mean(axis=0)).T)  # (d, n)
    ratios, vectors = np.linalg.eigh(white @ white.T / (draws.shape[0] - 1))
    band = noise_band(d, draws.shape[0] / draws_per_effective)
    # (with too few draws the band is (0, inf): the sample covariance's null directions,
    # round-off below zero, are not a measurement)
    corrected = ((ratios < band[0]) & (band[0] > 0)) | (ratios > band[1])
    kept = np.where(corrected, np.clip(ratios, 1.0 / MAX_RATIO, MAX_RATIO), 1.0)
    factor = chol @ vectors
    covariance = (factor * kept) @ factor.T
    return MetricCorrection(0.5 * (covariance + covariance.T), ratios, corrected, band)
