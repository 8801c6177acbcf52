"""MAP and Laplace metric on NumPyro's potential (the unconstrained space).

:func:`find_map` minimises the potential of :func:`skinn_jax.inference.model.model` (minus the log
posterior in NumPyro's unconstrained coordinates, transform Jacobians included) with optax's
L-BFGS and its zoom line search (``optax.lbfgs``), in coordinates whitened by the Laplace
covariance at the start, then refines it by Newton steps; the Laplace covariance at the MAP (the
inverse of the exact Hessian, ``jax.hessian``, made positive definite and capped at the prior's
width) is NUTS's dense inverse mass matrix.

Imports: :mod:`skinn_jax.inference.model`, :mod:`skinn_jax.inference.priors`,
:mod:`skinn_jax.inference.convergence`, :mod:`.settings`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..convergence import boxes_from_trace
from ..data import SystemData
from ..model import RATIO, ModelSetup, model, site_names
from .settings import FitSettings


class Potential(NamedTuple):
    """NumPyro's potential in flattened unconstrained coordinates.

    Attributes:
        value_and_grad: compiled ``z_flat -> (potential, gradient)``.
        unravel: flat vector -> dict of unconstrained site values.
        constrain: dict of unconstrained values -> dict of constrained values (+ deterministic).
        z0: flat start point.
        names: sampled site names (sorted, the flattening order).
        boxes: ``{site: (low, high)}`` of the sampled sites with a bounded support (constrained
            units; arrays for vector sites).
    """

    value_and_grad: object
    unravel: object
    constrain: object
    z0: np.ndarray
    names: tuple[str, ...]
    boxes: dict = {}


def make_potential(data: SystemData, setup: ModelSetup, init_values: dict) -> Potential:
    """NumPyro's potential of :func:`model`, compiled, starting at constrained ``init_values``."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_value
    from numpyro.infer.util import initialize_model

    names = site_names(setup.mode)
    values = {k: jnp.asarray(init_values[k]) for k in names}
    info = initialize_model(
        jax.random.PRNGKey(0),
        model,
        model_args=(data, setup),
        init_strategy=init_to_value(values=values),
        validate_grad=False,
    )
    z0, unravel = ravel_pytree(info.param_info.z)
    potential_fn = info.potential_fn
    value_and_grad = jax.jit(jax.value_and_grad(lambda z: potential_fn(unravel(z))))
    return Potential(
        value_and_grad=value_and_grad,
        unravel=unravel,
        constrain=info.postprocess_fn,
        z0=np.asarray(z0),
        names=tuple(sorted(info.param_info.z)),
        boxes=boxes_from_trace(info.model_trace),
    )


def parameter_boxes(setup: ModelSetup, sampled: dict | None = None) -> dict:
    """``{name: (low, high)}`` for the box-face check of the convergence policy.

    Every box of ``setup.priors`` (sampled sites and the solved quantities of lensing and joint
    modes that the model walls off at their faces: ``theta_E``, ``q_mass``, ``gamma1``,
    ``gamma2``, ``src_x``, ``src_y``), kinematics mode's :data:`RATIO` range, and ``sampled``
    (e.g. :attr:`Potential.boxes`, the supports of the sampled sites, which win).
    """
    from .priors import log_ratio_box

    pr = setup.priors
    boxes = {f.name: getattr(pr, f.name) for f in dataclasses.fields(pr) if f.name != "ps_offset"}
    if setup.mode == "kinematics":
        boxes[RATIO] = tuple(math.exp(x) for x in log_ratio_box(pr.D_dt, pr.D_d))
    boxes.update(sampled or {})
    return boxes


def fd_hessian(value_and_grad, z: np.ndarray, step: float) -> np.ndarray:
    """Symmetrised central finite-difference Hessian from a gradient function (2 d calls)."""
    d = z.size
    hess = np.empty((d, d))
    for j in range(d):
        dz = np.zeros(d)
        dz[j] = step
        g_plus = np.asarray(value_and_grad(jnp.asarray(z + dz))[1])
        g_minus = np.asarray(value_and_grad(jnp.asarray(z - dz))[1])
        hess[:, j] = (g_plus - g_minus) / (2.0 * step)
    return 0.5 * (hess + hess.T)


PRIOR_VARIANCE = math.pi**2 / 3.0
"""Variance of a uniform prior in NumPyro's unconstrained (logit) coordinates: a logistic
distribution. No posterior direction is broader than its prior, so this caps the Laplace metric."""


def cap_variance(cov: np.ndarray, max_variance: float = PRIOR_VARIANCE) -> np.ndarray:
    """``cov`` (d, d) with every eigenvalue above ``max_variance`` lowered to it."""
    eigval, eigvec = np.linalg.eigh(0.5 * (cov + cov.T))
    capped = (eigvec * np.clip(eigval, 0.0, max_variance)) @ eigvec.T
    return 0.5 * (capped + capped.T)


def whitened_covariance(
    value_and_grad,
    z: np.ndarray,
    chol: np.ndarray,
    step: float = 1e-3,
    max_variance: float = PRIOR_VARIANCE,
) -> tuple[np.ndarray, int]:
    """Inverse Hessian at ``z`` by finite differences in whitened coordinates ``z + chol w``.

    With ``chol`` from an approximate covariance, the Hessian ``W`` of ``w -> U(z + chol w)`` has
    eigenvalues of order one and central differences with ``step`` (in units of σ) are accurate;
    plain finite differences in ``z`` are not: the posterior's curvatures span ~8 decades in the
    unconstrained coordinates (the quasar images pin the lens centre to ~0.02 mas while D_d is
    known to ~20 %), and their round-off swamps the weak directions (measured: indefinite
    Hessians at the MAP). Returns ``(chol W⁻¹ chol^T, n_fixed)``: directions where ``W`` is not
    positive keep the variance of ``chol`` (so repeated refinements cannot inflate them
    geometrically), and no direction is broader than ``max_variance`` (unconstrained units,
    :func:`cap_variance`). ``step`` of ~0.5 σ averages the curvature over kinks of the prior.
    """
    d = z.size
    w_hess = np.empty((d, d))
    for j in range(d):
        dz = chol[:, j] * step
        g_plus = np.asarray(value_and_grad(jnp.asarray(z + dz))[1])
        g_minus = np.asarray(value_and_grad(jnp.asarray(z - dz))[1])
        w_hess[:, j] = chol.T @ (g_plus - g_minus) / (2.0 * step)
    w_hess = 0.5 * (w_hess + w_hess.T)
    w_inv, n_fixed = regularised_inverse(w_hess, non_positive_variance=1.0)
    return cap_variance(chol @ w_inv @ chol.T, max_variance), n_fixed


def regularised_inverse(
    hess: np.ndarray, max_variance: float = 25.0, non_positive_variance: float | None = None
) -> tuple[np.ndarray, int]:
    """Inverse of a symmetric matrix with its eigenvalues made positive.

    Returns:
        ``(inverse, n_fixed)``: the positive-definite inverse, with variances ``1/λ`` capped at
        ``max_variance``, and how many eigenvalues were not positive (their variance is set to
        ``non_positive_variance``, default ``max_variance``).
    """
    if non_positive_variance is None:
        non_positive_variance = max_variance
    eigval, eigvec = np.linalg.eigh(hess)
    bad = eigval <= 0
    variance = np.where(bad, non_positive_variance, 1.0 / np.maximum(eigval, 1e-300))
    variance = np.minimum(variance, max_variance)
    inverse = (eigvec * variance) @ eigvec.T
    return 0.5 * (inverse + inverse.T), int(bad.sum())


class MapResult(NamedTuple):
    """MAP (in the unconstrained space) and the Laplace inverse Hessian there.

    Attributes:
        z: flat unconstrained MAP.
        potential: potential at the MAP.
        potential_start: potential at the start.
        covariance: regularised inverse Hessian at the MAP (the NUTS inverse mass matrix).
        n_evals: potential + gradient evaluations used (MAP and the four Hessians).
        n_steps: L-BFGS iterations.
        converged: whether the tolerance was met.
        n_negative: non-positive Hessian eigenvalues that had to be fixed.
        seconds: wall time.
    """

    z: np.ndarray
    potential: float
    potential_start: float
    covariance: np.ndarray
    n_evals: int
    n_steps: int
    converged: bool
    n_negative: int
    seconds: float


def find_map(pot: Potential, settings: FitSettings, quiet: bool = False) -> MapResult:
    """L-BFGS (optax) from ``pot.z0``, preconditioned by the start Hessian; then the Laplace metric.

    Hessians: a plain finite-difference one at the start, refined once in its own whitened
    coordinates (:func:`whitened_covariance`); at the MAP, twice in whitened coordinates.
    """
    import optax
    from tqdm import tqdm

    t0 = time.perf_counter()
    vg = pot.value_and_grad
    z0 = pot.z0.copy()
    d = z0.size
    n_evals = 0
    hess0 = fd_hessian(vg, z0, settings.fd_step)
    cov0, _ = regularised_inverse(hess0)
    cov0, _ = whitened_covariance(vg, z0, np.linalg.cholesky(cov0), settings.laplace_step)
    n_evals += 4 * d
    chol = np.linalg.cholesky(cov0)  # z = z0 + chol w

    def vg_w(w):
        value, grad = vg(jnp.asarray(z0 + chol @ w))
        return float(value), chol.T @ np.asarray(grad)

    tx = optax.scale_by_lbfgs(memory_size=10)
    w = np.zeros(d)
    value, grad = vg_w(w)
    n_evals += 1
    start_value = value
    state = tx.init(jnp.asarray(w))
    converged = False
    steps = 0
    bar = tqdm(
        total=settings.map_max_steps,
        desc="MAP (L-BFGS)",
        disable=quiet or not settings.progress_bar,
    )
    for _ in range(settings.map_max_steps):
        steps += 1
        direction, state = tx.update(jnp.asarray(grad), state, jnp.asarray(w))
        direction = -np.asarray(direction)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction: fall back to steepest descent
            direction, slope = -grad, -float(grad @ grad)
        eta, accepted = 1.0, False
        for _ in range(30):
            trial = w + eta * direction
            t_value, t_grad = vg_w(trial)
            n_evals += 1
            if np.isfinite(t_value) and t_value <= value + 1e-4 * eta * slope:
                accepted = True
                break
            eta *= 0.5
        if not accepted:
            break
        decrease = value - t_value
        w, value, grad = trial, t_value, t_grad
        bar.update(1)
        bar.set_postfix(potential=f"{value:.3f}")
        if decrease < settings.map_tol:
            converged = True
            break
    bar.close()
    # Newton refinement with whitened finite-difference Hessians (L-BFGS stalls in the
    # weakly constrained, curved directions)
    z_map = z0 + chol @ w
    cov = cov0
    n_negative = 0
    for _ in range(settings.map_newton_steps):
        cov, n_negative = whitened_covariance(
            vg, z_map, np.linalg.cholesky(cov), settings.laplace_step
        )
        n_evals += 2 * d
        value, grad = (float(a) if np.ndim(a) == 0 else np.asarray(a) for a in vg(z_map))
        step = -cov @ grad
        decrement = float(-grad @ step)
        if decrement < 2 * settings.map_tol:
            converged = True
            break
        eta = 1.0
        while eta > 1e-3:
            t_value = float(vg(jnp.asarray(z_map + eta * step))[0])
            n_evals += 1
            if np.isfinite(t_value) and t_value <= value - 1e-4 * eta * decrement:
                break
            eta *= 0.5
        else:
            break
        z_map = z_map + eta * step
        value = t_value
        steps += 1
    cov, n_negative = whitened_covariance(vg, z_map, np.linalg.cholesky(cov), settings.laplace_step)
    n_evals += 2 * d
    return MapResult(
        z=z_map,
        potential=float(value),
        potential_start=float(start_value),
        covariance=cov,
        n_evals=n_evals,
        n_steps=steps,
        converged=converged,
        n_negative=n_negative,
        seconds=time.perf_counter() - t0,
    )


def time_evaluation(value_and_grad, z: np.ndarray, repeats: int = 10) -> float:
    """Median wall time (s) of one compiled potential + gradient evaluation."""
    zj = jnp.asarray(z)
    jax.block_until_ready(value_and_grad(zj))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(value_and_grad(zj))
        times.append(time.perf_counter() - t)
    return float(np.median(times))
