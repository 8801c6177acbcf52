"""MAP and Laplace metric on NumPyro's potential (the unconstrained space).

:func:`find_map` minimises the potential of :func:`skinn_jax.inference.model.model` (minus the log
posterior in NumPyro's unconstrained coordinates, transform Jacobians included) with optax's
L-BFGS and its zoom line search (``optax.lbfgs``; the line search calls the compiled potential
through :func:`compiled_objective`), in coordinates whitened by the Laplace covariance at the
start, then refines it by Newton steps; the Laplace covariance at the MAP (the
inverse of the exact Hessian, ``jax.hessian``, made positive definite and capped at the prior's
width) is NUTS's dense inverse mass matrix.

Imports: :mod:`skinn_jax.inference.model`, :mod:`skinn_jax.inference.priors`,
:mod:`skinn_jax.inference.convergence`, :mod:`.settings`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..convergence import boxes_from_trace
from ..data import SystemData
from ..model import RATIO, ModelSetup, model, site_names
from ..priors import log_ratio_box
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
        potential: ``z_flat -> potential`` (a JAX function: for optax's line search and the
            exact Hessian).
        site_potential: ``{site: unconstrained value} -> potential``, NumPyro's
            ``potential_fn`` (a JAX function: for a kernel built from a potential,
            ``NUTS(potential_fn=...)``).
        transforms: ``{site: transform}`` from unconstrained to constrained values of the
            sampled sites (no deterministic site: nothing of the model is run).
    """

    value_and_grad: object
    unravel: object
    constrain: object
    z0: np.ndarray
    names: tuple[str, ...]
    boxes: dict = {}
    potential: object = None
    site_potential: object = None
    transforms: dict = {}


def _sample_sites(data: SystemData, setup: ModelSetup, values: dict) -> dict:
    """The latent sample sites of :func:`model`'s trace at constrained ``values``, traced
    abstractly: nothing of the model is computed (run op by op, the joint model costs ~20 s).
    Their values and distributions depend on the priors only; every other site is dropped (its
    value, or its distribution's parameters, were tracers)."""
    from numpyro import handlers

    captured = {}

    def run():
        seeded = handlers.seed(handlers.substitute(model, data=values), jax.random.PRNGKey(0))
        captured.update(handlers.trace(seeded).get_trace(data, setup))
        return jnp.zeros(())

    jax.eval_shape(run)
    sites = {}
    for name, site in captured.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        leaves = jax.tree_util.tree_leaves((site["value"], vars(site["fn"])))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            raise ValueError(
                f"sample site {name!r}: its distribution depends on other sites; "
                "make_potential needs priors fixed by the set-up"
            )
        sites[name] = site
    return sites


def make_potential(data: SystemData, setup: ModelSetup, init_values: dict) -> Potential:
    """NumPyro's potential of :func:`model`, compiled lazily, starting at constrained
    ``init_values``.

    The pieces are NumPyro's own (``potential_energy``, ``constrain_fn``, the transforms
    ``biject_to`` gives each site's support, the model as ``initialize_model`` prepares it), built
    from an abstract trace of the model (:func:`_sample_sites`): unlike ``initialize_model``, which
    runs the model and its gradient op by op, nothing is evaluated until the first call of
    ``value_and_grad``.
    """
    from jax.flatten_util import ravel_pytree
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer.util import (
        _prepare_model_for_potential,
        constrain_fn,
        potential_energy,
        transform_fn,
    )

    names = site_names(setup.mode)
    values = {k: jnp.asarray(init_values[k]) for k in names}
    latent = _sample_sites(data, setup, values)
    transforms = {k: biject_to(s["fn"].support) for k, s in latent.items()}
    z_init = transform_fn(transforms, {k: s["value"] for k, s in latent.items()}, invert=True)
    z0, unravel = ravel_pytree(z_init)
    prepared = _prepare_model_for_potential(model, latent, enum=False)
    site_potential = partial(potential_energy, prepared, (data, setup), {})

    def potential(z):
        return site_potential(unravel(z))

    return Potential(
        potential=potential,
        value_and_grad=jax.jit(jax.value_and_grad(potential)),
        unravel=unravel,
        constrain=partial(constrain_fn, prepared, (data, setup), {}, return_deterministic=True),
        z0=np.asarray(z0),
        names=tuple(sorted(z_init)),
        boxes=boxes_from_trace(latent),
        site_potential=site_potential,
        transforms=transforms,
    )


def parameter_boxes(setup: ModelSetup, sampled: dict | None = None) -> dict:
    """``{name: (low, high)}`` for the box-face check of the convergence policy.

    Every box of ``setup.priors`` (sampled sites and the solved quantities of lensing and joint
    modes that the model walls off at their faces: ``theta_E``, ``q_mass``, ``gamma1``,
    ``gamma2``, ``src_x``, ``src_y``), kinematics mode's :data:`RATIO` range, and ``sampled``
    (e.g. :attr:`Potential.boxes`, the supports of the sampled sites, which win).
    """

    pr = setup.priors
    boxes = {f.name: getattr(pr, f.name) for f in dataclasses.fields(pr) if f.name != "ps_offset"}
    if setup.mode == "kinematics":
        boxes[RATIO] = tuple(math.exp(x) for x in log_ratio_box(pr.D_dt, pr.D_d))
    boxes.update(sampled or {})
    return boxes


def hessian_columns(potential, z: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``H @ directions`` of the exact Hessian ``H`` of ``potential`` at ``z`` (d, k).

    Forward-over-reverse Hessian-vector products (the columns of ``jax.hessian``), one compiled
    product per column, so memory stays that of one gradient.
    """
    hvp = _hvp(potential)
    zj = jnp.asarray(z)
    return np.stack([np.asarray(hvp(zj, jnp.asarray(v))) for v in directions.T], axis=1)


@lru_cache(maxsize=4)
def _hvp(potential):
    """The compiled Hessian-vector product ``(z, v) -> H(z) v`` of ``potential``."""
    grad = jax.grad(potential)
    return jax.jit(lambda z, v: jax.jvp(grad, (z,), (v,))[1])


def difference_hessian(value_and_grad, z: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Central differences of the compiled gradient along the columns of ``steps`` (d, k):
    ``(∇U(z + s_j) - ∇U(z - s_j)) / 2``, shape (d, k), ≈ ``H @ steps`` (2 k gradient calls, no
    compilation beyond ``value_and_grad``'s own)."""
    cols = []
    for s in np.asarray(steps).T:
        g_plus = np.asarray(value_and_grad(jnp.asarray(z + s))[1])
        g_minus = np.asarray(value_and_grad(jnp.asarray(z - s))[1])
        cols.append(0.5 * (g_plus - g_minus))
    return np.stack(cols, axis=1)


RAW_HESSIAN_STEP = 1e-4
"""Step (unconstrained units) of the first, unwhitened Hessian of :func:`find_map` by
differences. On mock system 1's joint start it agrees with the exact Hessian to ~8 % in the
whitened directions (1e-5 and smaller: round-off grows); the whitened refinements that follow
make it exact to ~1e-6."""

EXACT_HESSIAN_MAX_STEP = 0.01
"""Whitened Hessian steps (in σ) up to this are exact Hessians (:func:`hessian_columns`); larger
ones are finite differences on purpose, averaging the curvature over kinks of the prior."""


PRIOR_VARIANCE = math.pi**2 / 3.0
"""Variance of a uniform prior in NumPyro's logit coordinate (a logistic distribution), the
broader of the two coordinates of a box (the model's probit coordinate,
:class:`~skinn_jax.inference.priors.BoxUniform`, has variance 1). No posterior direction is
broader than its prior, so this caps the Laplace metric."""


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
    potential=None,
) -> tuple[np.ndarray, int]:
    """Inverse Hessian at ``z`` by finite differences in whitened coordinates ``z + chol w``.

    With ``chol`` from an approximate covariance, the Hessian ``W`` of ``w -> U(z + chol w)`` has
    eigenvalues of order one and central differences with ``step`` (in units of σ) are accurate;
    plain finite differences in ``z`` are not: the posterior's curvatures span ~8 decades in the
    unconstrained coordinates (the quasar images pin the lens centre to ~0.02 mas while D_d is
    known to ~20 %), and their round-off swamps the weak directions (measured: indefinite
    Hessians at the MAP). With ``potential`` and a ``step`` of at most
    :data:`EXACT_HESSIAN_MAX_STEP`, ``W = cholᵀ H chol`` is exact (:func:`hessian_columns`).
    Returns ``(chol W⁻¹ chol^T, n_fixed)``: directions where ``W`` is not
    positive keep the variance of ``chol`` (so repeated refinements cannot inflate them
    geometrically), and no direction is broader than ``max_variance`` (unconstrained units,
    :func:`cap_variance`). ``step`` of ~0.5 σ averages the curvature over kinks of the prior.
    """
    if potential is not None and step <= EXACT_HESSIAN_MAX_STEP:
        w_hess = chol.T @ hessian_columns(potential, z, chol)
    else:
        w_hess = chol.T @ difference_hessian(value_and_grad, z, chol * step) / step
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


class LbfgsResult(NamedTuple):
    """Result of :func:`lbfgs`: the point, its value and the value at the start, iterations,
    function + gradient evaluations (line search included) and whether ``tol`` was met."""

    x: np.ndarray
    value: float
    value_start: float
    n_steps: int
    n_evals: int
    converged: bool


@lru_cache(maxsize=4)
def compiled_objective(value_and_grad, size: int):
    """``z -> value`` of an already compiled float64 ``value_and_grad``, as a JAX function that
    optax's line search can call and differentiate without compiling the potential again.

    Inside a compiled program (the L-BFGS step) each call is one ``jax.pure_callback`` to
    ``value_and_grad``, which returns the value and gradient together; a custom VJP hands the
    gradient to reverse mode. The step then compiles in seconds instead of inlining the potential
    (for the joint model, optax's zoom line search holds it twice: ~70 s on 2 cores). The results
    cross the callback as the float64 values' bits (``uint32`` pairs), exact whatever the callback
    thread's ``jax_enable_x64`` state.

    Args:
        value_and_grad: compiled ``z -> (value, gradient)``, float64, ``z`` of shape (size,).
        size: the length of ``z``.

    Returns:
        ``objective(z)``: a scalar float64 JAX function with a gradient.

    Example:
        >>> vg = jax.jit(jax.value_and_grad(lambda z: jnp.sum(z**2)))
        >>> f = compiled_objective(vg, 3)  # then lbfgs(f, x0, start=vg(x0))
    """
    out = jax.ShapeDtypeStruct((2 * (size + 1),), np.uint32)

    def host(z):
        # a callback runs with the default device set and its argument committed to it: called
        # so, ``value_and_grad`` would be traced and compiled once more; a NumPy copy is not
        z = np.array(z, np.float64)
        with jax.enable_x64(True), jax.default_device(None):
            value, grad = value_and_grad(z)
            both = np.concatenate(
                [np.asarray(value, np.float64)[None], np.asarray(grad, np.float64)]
            )
        return both.view(np.uint32)

    def value_and_grad_via_callback(z):
        bits = jax.pure_callback(host, out, z)
        both = jax.lax.bitcast_convert_type(bits.reshape(size + 1, 2), jnp.float64)
        return both[0], both[1:]

    @jax.custom_vjp
    def objective(z):
        return value_and_grad_via_callback(z)[0]

    def backward(grad, cotangent):
        return (cotangent * grad,)

    objective.defvjp(value_and_grad_via_callback, backward)
    return objective


@lru_cache(maxsize=4)
def _lbfgs_step(fun, memory_size: int):
    """The compiled L-BFGS iteration (optax's L-BFGS and zoom line search) of ``fun``, cached so
    that repeated runs on one function (MAP, then Newton refinements) compile it once.

    The value and gradient at ``x`` are the state's (from the previous line search, or set at the
    start by :func:`lbfgs`): the potential and its gradient appear once in the compiled step, in
    the line search."""
    import optax

    opt = optax.lbfgs(memory_size=memory_size)

    @jax.jit
    def step(x, state, fn_kwargs):
        value, grad = optax.tree.get(state, "value"), optax.tree.get(state, "grad")
        updates, state = opt.update(
            grad, state, x, value=value, grad=grad, value_fn=fun, **fn_kwargs
        )
        return optax.apply_updates(x, updates), state

    return opt, step


def _strongly_typed(state):
    """``state`` with every weakly typed leaf made strongly typed, as ``optax.lbfgs``'s update
    returns them (its initial state holds weak scalars, the line search's info): without this the
    first and second iterations compile the whole step twice."""
    return jax.tree.map(
        lambda leaf: (
            jax.lax.convert_element_type(leaf, leaf.dtype)
            if getattr(leaf, "weak_type", False)
            else leaf
        ),
        state,
    )


def lbfgs(
    fun,
    x0: np.ndarray,
    *,
    fn_kwargs: dict | None = None,
    start: tuple[float, np.ndarray] | None = None,
    max_steps: int = 100,
    tol: float = 1e-4,
    memory_size: int = 10,
    progress: bool = False,
    desc: str = "MAP (L-BFGS)",
) -> LbfgsResult:
    """Minimise ``fun(x, **fn_kwargs)`` (a JAX scalar function of a flat vector) with optax's
    L-BFGS and its zoom line search (``optax.lbfgs``): the one optimiser of the inference.

    Stops when the value decreases by less than ``tol`` over an iteration, when an iteration does
    not decrease it (the line search found no acceptable step), or after ``max_steps``
    iterations; a non-finite trial value is rejected by the line search.

    Args:
        fun: the objective.
        x0: start, shape (d,).
        fn_kwargs: keyword arguments of ``fun`` (arrays).
        start: ``(value, gradient)`` of ``fun`` at ``x0`` if the caller has them (e.g. from a
            compiled potential); None: computed here (one more compilation).
        max_steps, tol, memory_size: see above; ``memory_size`` pairs of L-BFGS history.
        progress, desc: a tqdm bar and its label.
    """
    import optax
    from tqdm import tqdm

    fn_kwargs = {k: jnp.asarray(v) for k, v in (fn_kwargs or {}).items()}
    opt, step = _lbfgs_step(fun, memory_size)
    x = jnp.asarray(x0)
    if start is None:
        start = jax.jit(jax.value_and_grad(fun))(x, **fn_kwargs)
    value = value_start = float(start[0])
    state = optax.tree.set(
        opt.init(x), value=jnp.asarray(value, x.dtype), grad=jnp.asarray(start[1], x.dtype)
    )
    state = _strongly_typed(state)
    n_evals, n_steps, converged = 1, 0, False
    bar = tqdm(total=max_steps, desc=desc, disable=not progress)
    for _ in range(max_steps):
        x_new, state = step(x, state, fn_kwargs)
        n_steps += 1
        n_evals += 1 + int(optax.tree.get(state, "num_linesearch_steps"))
        new_value = float(optax.tree.get(state, "value"))
        if not (np.isfinite(new_value) and new_value < value):
            break
        x, decrease, value = x_new, value - new_value, new_value
        bar.update(1)
        bar.set_postfix(value=f"{value:.3f}")
        if decrease < tol:
            converged = True
            break
    bar.close()
    return LbfgsResult(np.asarray(x), value, value_start, n_steps, n_evals, converged)


def find_map(pot: Potential, settings: FitSettings, quiet: bool = False) -> MapResult:
    """L-BFGS (:func:`lbfgs`) from ``pot.z0`` in coordinates whitened by the Laplace covariance at
    the start; Newton refinement (one L-BFGS iteration, i.e. a Newton step with the zoom line
    search, in coordinates whitened by the current Laplace covariance); then the Laplace metric
    at the MAP.

    Hessians (:func:`whitened_covariance`): at the start by differences of the compiled gradient
    (step :data:`RAW_HESSIAN_STEP`), refined once in its own whitened coordinates; at the MAP, in
    whitened coordinates (differences with ``settings.laplace_step`` σ; smoothed over kinks for
    large steps). ``settings.exact_hessian`` uses autodiff Hessian-vector products instead (for
    steps up to :data:`EXACT_HESSIAN_MAX_STEP`): exact, but compiling them costs ~100 s for the
    joint model on 2 CPU cores, the differences ~1 s.
    """
    t0 = time.perf_counter()
    vg = pot.value_and_grad
    z0 = pot.z0.copy()
    d = z0.size
    exact = pot.potential if settings.exact_hessian else None
    laplace = partial(whitened_covariance, vg, potential=exact)
    # on CPU the line search calls the compiled potential back; on an accelerator a host callback
    # into a device program is not safe, and the step inlines the potential
    on_cpu = jax.default_backend() == "cpu"
    whitened = _whitened(compiled_objective(vg, d) if on_cpu else pot.potential)
    if exact is None:
        hess0 = difference_hessian(vg, z0, np.eye(d) * RAW_HESSIAN_STEP) / RAW_HESSIAN_STEP
    else:
        hess0 = hessian_columns(pot.potential, z0, np.eye(d))
    cov, _ = regularised_inverse(0.5 * (hess0 + hess0.T))
    cov, _ = laplace(z0, np.linalg.cholesky(cov), settings.laplace_step)
    n_evals = 3 * d
    chol = np.linalg.cholesky(cov)  # z = z0 + chol w
    run = lbfgs(
        whitened,
        np.zeros(d),
        fn_kwargs={"ref": z0, "chol": chol},
        start=_whitened_start(vg, z0, chol),
        max_steps=settings.map_max_steps,
        tol=settings.map_tol,
        progress=settings.progress_bar and not quiet,
    )
    n_evals += run.n_evals
    steps, converged, value = run.n_steps, run.converged, run.value
    z_map = z0 + chol @ run.x
    # Newton refinement (L-BFGS stalls in the weakly constrained, curved directions)
    for _ in range(settings.map_newton_steps):
        cov, _ = laplace(z_map, np.linalg.cholesky(cov), settings.laplace_step)
        n_evals += 2 * d
        grad = np.asarray(vg(jnp.asarray(z_map))[1])
        if float(grad @ cov @ grad) < 2 * settings.map_tol:  # the Newton decrement
            converged = True
            break
        chol = np.linalg.cholesky(cov)
        newton = lbfgs(whitened, np.zeros(d), fn_kwargs={"ref": z_map, "chol": chol},
                       start=_whitened_start(vg, z_map, chol), max_steps=1, tol=0.0)  # fmt: skip
        n_evals += newton.n_evals
        if newton.value >= newton.value_start:
            break
        z_map, value = z_map + chol @ newton.x, newton.value
        steps += 1
    cov, n_negative = laplace(z_map, np.linalg.cholesky(cov), settings.laplace_step)
    n_evals += 2 * d
    return MapResult(
        z=z_map,
        potential=float(value),
        potential_start=float(run.value_start),
        covariance=cov,
        n_evals=n_evals,
        n_steps=steps,
        converged=converged,
        n_negative=n_negative,
        seconds=time.perf_counter() - t0,
    )


def _whitened_start(value_and_grad, ref: np.ndarray, chol: np.ndarray) -> tuple[float, np.ndarray]:
    """Value and gradient of ``w -> potential(ref + chol w)`` at ``w = 0``, by the compiled
    ``value_and_grad`` of the potential."""
    value, grad = value_and_grad(jnp.asarray(ref))
    return float(value), chol.T @ np.asarray(grad)


@lru_cache(maxsize=4)
def _whitened(potential):
    """``w -> potential(ref + chol w)`` (one function per potential: compiled once)."""

    def fun(w, *, ref, chol):
        return potential(ref + chol @ w)

    return fun


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
