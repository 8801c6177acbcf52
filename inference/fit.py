"""Inference for :func:`skinn_jax.inference.model.model`: MAP start, Laplace metric, NUTS, outputs.

:func:`fit` runs, for one system and mode, in phases that each leave a checkpoint in ``out_dir``:

1. **MAP** (optax): L-BFGS (``optax.scale_by_lbfgs`` with a backtracking Armijo line search)
   on NumPyro's potential (minus the log posterior in the unconstrained space, transform Jacobians
   included), preconditioned with the finite-difference Hessian at the start point. The start is
   the truth, as in the paper (Sec. 5.3: "we use an MCMC to sample the posterior parameter space
   near the truth label"). Checkpoint ``map.npz``.
2. **Laplace metric**: the Hessian of the potential at the MAP by central finite differences of
   the compiled gradient (2 d evaluations), regularised to be positive definite; its inverse is
   NUTS's dense inverse mass matrix, and the chains start at MAP + ``init_jitter`` x a draw from
   that Gaussian (so that R-hat can see chains that fail to mix). Also in ``map.npz``.
3. **Warm-up**: NUTS (``numpyro.infer.NUTS``, dense mass matrix) adapting the step size (and the
   mass matrix only if ``adapt_mass_matrix``: with short warm-ups, windowed estimates of a dense
   ~35 x 35 matrix are worse than the Laplace one). Checkpoint ``warmup_state.pkl``.
4. **Sampling** in ``sample_chunks`` chunks, each continuing from the previous chunk's NUTS state;
   checkpoint ``chunk_<i>.npz`` + ``chunk_<i>_state.pkl`` after each. Then the **convergence
   policy** (:mod:`skinn_jax.inference.convergence`, on by default): while some sampled or
   reported parameter has split R-hat > ``max_rhat`` (1.01) or bulk or tail ESS < ``min_ess``
   (400), one more chunk of the same size is drawn (and checkpointed), until they pass or the
   budget (``max_samples`` draws per chain, ``max_wall_s`` seconds) is spent.
5. **Outputs** (written to temporary names and renamed only once everything is done):
   ``posterior.nc`` (ArviZ InferenceData, netCDF), ``summary.csv`` and ``summary.md`` (posterior
   table with truths, R-hat, ESS), ``corner.png`` (the paper's 13 parameters with truths),
   ``fit.png`` (imaging and kinematics: data, model, normalised residuals), ``report.json``
   (diagnostics, timings, likelihood evaluations), and ``fit_state.json`` marked ``complete``.

A fit that is killed restarts from its last checkpoint when run again with the same inputs (the
fingerprint of system, mode, settings, priors and emulator weights is stored in
``fit_state.json``). A directory holding a fit with different inputs, finished or not, is never
cleared without ``force``: :func:`fit` raises :class:`OutputExistsError` saying how to proceed
(another output directory, or ``force``). Results are
written only when the sampling has finished: nothing partial is ever reported as final.
Diagnostics (split R-hat, bulk/tail ESS from ArviZ, divergent transitions, trees at the maximum
depth) are always reported; the summary and ``report.json`` state in one line whether the fit
converged by the policy (``converged: yes (R-hat max 1.004, ESS bulk min 612, tail min 540 ...)``)
or not, naming the failing parameters and the likely cause (a prior box face, separated modes
between chains, divergences, deep trees, slow mixing): see ``docs/convergence.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .convergence import (
    ConvergencePolicy,
    Verdict,
    assess,
    boxes_from_trace,
    budget_left,
    ess,
    rhat,
)
from .model import (
    MODEL_VERSION,
    PAPER_PARAMETERS,
    RATIO,
    ModelSetup,
    SystemData,
    model,
    predict,
    site_names,
)

STATE_FILE = "fit_state.json"
FINAL_FILES = ("posterior.nc", "summary.csv", "summary.md", "corner.png", "fit.png", "report.json")


@dataclass(frozen=True)
class FitSettings:
    """Settings of :func:`fit`.

    Attributes:
        num_warmup: NUTS warm-up iterations per chain.
        num_samples: posterior draws per chain.
        num_chains: number of chains (4: R-hat compares them; chains stuck in separate modes
            show up as a multimodality between chains).
        chain_method: ``"parallel"`` (one host device per chain), ``"sequential"``,
            ``"vectorized"`` or ``"auto"`` (parallel if there are enough devices).
        sample_chunks: sampling is split into this many checkpointed chunks (NumPyro compiles
            its sampler again for every chunk: ~10-40 s each on 2 CPU cores).
        map_max_steps: L-BFGS iterations at most.
        map_tol: stop when the potential decreases by less than this over an iteration.
        map_newton_steps: Newton steps (whitened finite-difference Hessian) after L-BFGS.
        fd_step: finite-difference step of the first, unwhitened Hessian (unconstrained units).
        laplace_step: step of the whitened finite-difference Hessians, in units of the current
            σ (~0.5 averages the curvature across kinks of the prior, e.g. the tent-shaped
            prior of the kinematics mode's distance ratio).
        adapt_mass_matrix: also adapt the (dense) mass matrix during warm-up.
        init_jitter: chains start at MAP + init_jitter x (draw from the Laplace Gaussian).
        target_accept_prob: NUTS target acceptance probability.
        max_tree_depth: NUTS maximum tree depth.
        seed: random seed (chain starts, NUTS).
        max_rhat: convergence threshold on split R-hat (every sampled and reported parameter).
        min_ess: convergence threshold on bulk and tail ESS (every parameter, all chains).
        max_divergences: divergent transitions allowed in a converged fit.
        converge: extend the sampling chunk by chunk (each ``ceil(num_samples /
            sample_chunks)`` draws per chain) until the thresholds are met or the budget is
            spent; False: draw ``num_samples`` and only report.
        max_samples: budget: draws per chain at most (>= ``num_samples``).
        max_wall_s: budget: seconds of MAP + warm-up + sampling at most (summed over restarts;
            a chunk started within the budget is finished).
        progress_bar: show progress bars.
    """

    num_warmup: int = 150
    num_samples: int = 300
    num_chains: int = 4
    chain_method: str = "auto"
    sample_chunks: int = 1
    map_max_steps: int = 100
    map_tol: float = 1e-4
    map_newton_steps: int = 6
    fd_step: float = 1e-5
    laplace_step: float = 1e-3
    adapt_mass_matrix: bool = False
    init_jitter: float = 0.3
    target_accept_prob: float = 0.9
    max_tree_depth: int = 8
    seed: int = 0
    max_rhat: float = 1.01
    min_ess: float = 400.0
    max_divergences: int = 0
    converge: bool = True
    max_samples: int = 4000
    max_wall_s: float = 4 * 3600.0
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for name, lo in (
            ("num_warmup", 0),
            ("num_samples", 1),
            ("num_chains", 1),
            ("sample_chunks", 1),
            ("max_tree_depth", 1),
            ("max_divergences", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"FitSettings.{name} = {value!r}: allowed range [{lo}, inf)")
        if self.sample_chunks > self.num_samples:
            raise ValueError(
                f"FitSettings.sample_chunks = {self.sample_chunks}: allowed range "
                f"[1, num_samples = {self.num_samples}]"
            )
        if self.converge and self.max_samples < self.num_samples:
            raise ValueError(
                f"FitSettings.max_samples = {self.max_samples}: allowed range "
                f"[num_samples = {self.num_samples}, inf)"
            )
        self.policy().check()  # max_rhat >= 1, min_ess >= 0, max_wall_s >= 0

    def policy(self) -> ConvergencePolicy:
        """The :class:`~skinn_jax.inference.convergence.ConvergencePolicy` of these settings."""
        return ConvergencePolicy(
            max_rhat=self.max_rhat,
            min_ess_bulk=self.min_ess,
            min_ess_tail=self.min_ess,
            max_divergences=self.max_divergences,
            max_samples=self.max_samples if self.converge else self.num_samples,
            max_wall_s=self.max_wall_s,
        )


def default_settings(mode: str = "joint") -> FitSettings:
    """The fitting settings of ``mode`` (first ``num_samples`` draws, warm-up, metric).

    With the convergence policy (:class:`FitSettings`, on by default: 4 chains, R-hat <= 1.01,
    bulk and tail ESS >= 400) the run extends itself from these first draws in chunks of the same
    size; before the policy (2 chains, no extension) ``skinn-jax fit-mock`` took ~10 minutes on 2
    CPU cores.

    Lensing and joint fits (near-Gaussian posteriors after the lens-solver reparametrisation)
    keep the Laplace metric (a windowed dense adaptation over 250 warm-up iterations was slower:
    > 10 min of warm-up on mock system 1, from its noisy early estimates); kinematics-only
    posteriors are broad and bounded by the training box, so their dense metric is adapted over a
    longer warm-up.
    """
    if mode == "kinematics":
        return FitSettings(
            num_warmup=300, num_samples=300, adapt_mass_matrix=True, laplace_step=0.5
        )
    return FitSettings()


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        out_dir: the output directory.
        idata: the ArviZ InferenceData.
        summary: the posterior table (pandas DataFrame).
        report: diagnostics and timings (the content of ``report.json``).
    """

    out_dir: Path
    idata: object
    summary: object
    report: dict


# ----------------------------------------------------------------------------------------------
# Small utilities


def _log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def fingerprint(data: SystemData, setup: ModelSetup, settings: FitSettings, extra: dict) -> str:
    """Hash of everything a fit depends on (data, mode, model version and sampled sites, priors,
    settings, emulator weights)."""
    h = hashlib.sha256()
    for arr in (
        data.imaging.image,
        data.imaging.noise_map,
        data.time_delays.delays,
        data.time_delays.sigma,
        data.kinematics.vrms,
        data.kinematics.covariance,
        data.kinematics.bin_map,
    ):
        h.update(np.ascontiguousarray(np.asarray(arr, float)).tobytes())
    h.update(f"{setup.mode} model v{MODEL_VERSION}".encode())
    # the sampled coordinates (a checkpoint's flat vector means nothing in others)
    h.update(repr(site_names(setup.mode)).encode())
    h.update(repr(dataclasses.astuple(setup.priors)).encode())
    h.update(repr(setup.newton_iterations).encode())
    h.update(np.asarray(data.image_positions, float).tobytes())
    if setup.imaging is not None:
        h.update(repr(setup.imaging.settings).encode())
    if setup.kinematics is not None:
        forward = setup.kinematics.forward
        h.update(f"kinematic supersampling {forward.supersampling}".encode())
        if forward.sampling != "points":  # fingerprints of point-sampled fits stay as they were
            h.update(f"kinematic sampling {forward.sampling}".encode())
    fit_fields = dataclasses.asdict(settings)
    fit_fields.pop("progress_bar")
    h.update(json.dumps(fit_fields, sort_keys=True).encode())
    h.update(json.dumps(extra, sort_keys=True, default=_json_default).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Potential, MAP, Laplace


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
    from .model import log_ratio_box

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


# ----------------------------------------------------------------------------------------------
# NUTS


def _chain_method(settings: FitSettings) -> str:
    if settings.chain_method != "auto":
        return settings.chain_method
    if settings.num_chains > 1 and jax.local_device_count() >= settings.num_chains:
        return "parallel"
    return "sequential"


def _nuts_kernel(
    data: SystemData, setup: ModelSetup, pot: Potential, cov: np.ndarray, settings: FitSettings
):
    from numpyro.infer import NUTS

    # the data and set-up are bound into the model (no model arguments): MCMC then caches its
    # compiled sampler across warm-up and sampling chunks instead of recompiling each run
    return NUTS(
        partial(model, data, setup),
        dense_mass=True,
        inverse_mass_matrix={pot.names: jnp.asarray(cov)},
        adapt_mass_matrix=settings.adapt_mass_matrix,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=settings.max_tree_depth,
    )


DERIVED_SUMMARY = (
    "theta_E",
    "q_mass",
    "phi",
    "r_sersic",
    "theta_E_epl",
    "e1",
    "e2",
    "gamma1",
    "gamma2",
    "src_x",
    "src_y",
    "ps_y",
    "D_dt",
    "D_d",
    RATIO,
)
"""Deterministic sites reported in the summary (when the mode has them: ``D_dt / D_d`` is a
site of kinematics mode only, where ``theta_E`` is derived from the sampled ``log_theta_E``)."""

EXTRA_FIELDS = ("diverging", "num_steps", "accept_prob", "energy", "potential_energy")


def _initial_params(pot: Potential, fit_map: MapResult, settings: FitSettings) -> dict:
    rng = np.random.default_rng(settings.seed)
    chol = np.linalg.cholesky(fit_map.covariance)
    starts = [
        fit_map.z + settings.init_jitter * chol @ rng.standard_normal(fit_map.z.size)
        for _ in range(settings.num_chains)
    ]
    unravelled = [pot.unravel(jnp.asarray(s)) for s in starts]
    if settings.num_chains == 1:  # NumPyro wants no chain dimension for a single chain
        return unravelled[0]
    return {k: jnp.stack([u[k] for u in unravelled]) for k in unravelled[0]}


# ----------------------------------------------------------------------------------------------
# The driver


def _load_state(out_dir: Path) -> dict:
    path = out_dir / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _save_state(out_dir: Path, state: dict) -> None:
    _atomic_write_text(out_dir / STATE_FILE, json.dumps(state, indent=1, default=_json_default))


class OutputExistsError(ValueError):
    """The output directory holds a fit with other inputs (kept unless ``force``)."""


def prepare_out_dir(out_dir: Path, fp: str, force: bool, quiet: bool = False) -> dict:
    """The saved state to continue from in ``out_dir`` (empty: start afresh).

    Same fingerprint: the state (a finished fit is then loaded, an interrupted one resumed).
    ``force``: everything the fit wrote is deleted. Another fingerprint without ``force``:
    :class:`OutputExistsError`, and nothing is touched.
    """
    state = _load_state(out_dir)
    if state and force:
        _log(f"{out_dir}: --force: deleting the fit it holds and starting again", quiet)
        _clear(out_dir)
        return {}
    if state and state.get("fingerprint") != fp:
        what = "a finished fit" if state.get("phase") == "complete" else "an interrupted fit"
        raise OutputExistsError(
            f"{out_dir} holds {what} with other inputs (fingerprint {state.get('fingerprint')}, "
            f"this one {fp}); it is kept: choose another output directory (--out DIR), or pass "
            "--force to delete it and start again"
        )
    return state


def _clear(out_dir: Path) -> None:
    for path in out_dir.iterdir():
        if path.is_file() and (
            path.name in FINAL_FILES
            or path.name == STATE_FILE
            or path.name.startswith(("chunk_", "map.", "warmup_"))
            or path.name.endswith(".tmp")
        ):
            path.unlink()


def fit(
    data: SystemData,
    setup: ModelSetup,
    out_dir: str | Path,
    *,
    init_values: dict,
    truths: dict | None = None,
    settings: FitSettings = FitSettings(),
    meta: dict | None = None,
    force: bool = False,
    quiet: bool = False,
) -> FitResult:
    """MAP + NUTS fit of one system in ``setup.mode``, with checkpoints and final outputs.

    Args:
        data: the observations.
        setup: the model set-up (:func:`skinn_jax.inference.model.build_setup`).
        out_dir: output directory (created).
        init_values: constrained start values of every sampled site (e.g. the truth).
        truths: true values (sites and deterministic sites) for the summary and corner plot.
        settings: the :class:`FitSettings`.
        meta: extra information stored in the report (system number, checkpoint, ...) and the
            fingerprint.
        force: delete what ``out_dir`` holds (a finished fit too) and start again.
        quiet: no messages or progress bars.

    Returns:
        The :class:`FitResult`.

    Raises:
        OutputExistsError: ``out_dir`` holds a fit with other inputs and ``force`` is False.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    with jax.enable_x64(True):
        fp = fingerprint(data, setup, settings, meta)
        state = prepare_out_dir(out_dir, fp, force, quiet)
        if state.get("phase") == "complete" and all((out_dir / f).exists() for f in FINAL_FILES):
            _log(f"{out_dir}: this fit is already complete; loading its results", quiet)
            return load_result(out_dir)
        if state:
            _log(f"{out_dir}: resuming an interrupted fit from phase '{state['phase']}'", quiet)
        state.update(
            fingerprint=fp, mode=setup.mode, meta=meta, settings=dataclasses.asdict(settings)
        )
        state.setdefault("timings", {})
        return _run(data, setup, out_dir, init_values, truths, settings, state, quiet)


def _run(data, setup, out_dir, init_values, truths, settings, state, quiet) -> FitResult:
    from numpyro.infer import MCMC

    timings = state["timings"]
    t_start = time.perf_counter()
    map_path = out_dir / "map.npz"
    resuming = map_path.exists()
    pot = make_potential(data, setup, init_values)  # compiled lazily (at its first call)
    d = pot.z0.size
    if not resuming:
        _log(f"[{setup.mode}] compiling the potential and its gradient ...", quiet)
        t = time.perf_counter()
        jax.block_until_ready(pot.value_and_grad(jnp.asarray(pot.z0)))
        timings["compile_potential_s"] = time.perf_counter() - t
        _log(
            f"  {d} unconstrained parameters, compiled in {timings['compile_potential_s']:.1f} s",
            quiet,
        )

    # 1-2. MAP and Laplace metric
    if resuming:
        with np.load(map_path) as f:
            fit_map = MapResult(
                z=f["z"],
                potential=float(f["potential"]),
                potential_start=float(f["potential_start"]),
                covariance=f["covariance"],
                n_evals=int(f["n_evals"]),
                n_steps=int(f["n_steps"]),
                converged=bool(f["converged"]),
                n_negative=int(f["n_negative"]),
                seconds=float(f["seconds"]),
            )
        _log(f"  MAP loaded from {map_path}", quiet)
    else:
        fit_map = find_map(pot, settings, quiet)
        tmp = map_path.with_name("map.tmp.npz")
        np.savez(tmp, **fit_map._asdict())
        os.replace(tmp, map_path)
        state["phase"] = "map"
        _save_state(out_dir, state)
    _log(
        f"  MAP: potential {fit_map.potential_start:.2f} -> {fit_map.potential:.2f} in "
        f"{fit_map.n_steps} L-BFGS steps ({fit_map.n_evals} evaluations incl. 4 Hessians, "
        f"{fit_map.seconds:.1f} s); {fit_map.n_negative} non-positive Hessian eigenvalues fixed",
        quiet,
    )
    timings["map_s"] = fit_map.seconds
    if "eval_s" not in timings:  # (measured once; a resumed fit does not recompile for it)
        timings["eval_s"] = time_evaluation(pot.value_and_grad, fit_map.z)
        _save_state(out_dir, state)
    _log(f"  one potential + gradient evaluation: {timings['eval_s'] * 1e3:.1f} ms", quiet)

    # 3. warm-up
    chain_method = _chain_method(settings)
    kernel = _nuts_kernel(data, setup, pot, fit_map.covariance, settings)
    warm_path = out_dir / "warmup_state.pkl"
    chunk_size = math.ceil(settings.num_samples / settings.sample_chunks)
    mcmc = MCMC(
        kernel,
        num_warmup=settings.num_warmup,
        num_samples=chunk_size,
        num_chains=settings.num_chains,
        chain_method=chain_method,
        progress_bar=settings.progress_bar and not quiet,
    )
    rng_key = jax.random.PRNGKey(settings.seed)
    if warm_path.exists():
        with warm_path.open("rb") as f:
            saved = pickle.load(f)
        warm_state = jax.tree_util.tree_map(jnp.asarray, saved["state"])
        warm_stats = saved["stats"]
        _log(f"  warm-up state loaded from {warm_path}", quiet)
    else:
        _log(
            f"  NUTS warm-up: {settings.num_chains} chains ({chain_method}) x "
            f"{settings.num_warmup} iterations, dense mass matrix "
            f"({'adapted' if settings.adapt_mass_matrix else 'Laplace, fixed'})",
            quiet,
        )
        t = time.perf_counter()
        mcmc.warmup(
            rng_key,
            extra_fields=("num_steps", "diverging"),
            collect_warmup=True,
            init_params=_initial_params(pot, fit_map, settings),
        )
        warm_state = jax.block_until_ready(mcmc.post_warmup_state)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        warm_stats = {
            "seconds": time.perf_counter() - t,
            "num_steps": int(np.sum(extra["num_steps"])),
            "divergences": int(np.sum(extra["diverging"])),
        }
        with (out_dir / "warmup_state.tmp").open("wb") as f:
            pickle.dump({"state": _to_numpy(warm_state), "stats": warm_stats}, f)
        os.replace(out_dir / "warmup_state.tmp", warm_path)
        state["phase"] = "warmup"
        _save_state(out_dir, state)
    timings["warmup_s"] = warm_stats["seconds"]
    step_size = np.asarray(warm_state.adapt_state.step_size)
    _log(
        f"  warm-up: {warm_stats['seconds']:.1f} s, {warm_stats['num_steps']} gradient "
        f"evaluations, {warm_stats['divergences']} divergences, step size "
        f"{np.array2string(np.atleast_1d(step_size), precision=3)}",
        quiet,
    )

    # 4. sampling in chunks; then, by the convergence policy, more chunks until it is met
    policy = settings.policy()
    names = _reported_names(setup.mode)
    boxes = parameter_boxes(setup, pot.boxes)
    chain_state = warm_state
    chunks, verdict, stop = [], None, None
    i = 0
    while True:
        have_next = (out_dir / f"chunk_{i}.npz").exists()
        if i >= settings.sample_chunks and not have_next:  # judge the draws so far
            samples, extra = _gather(chunks, _kept_draws(i, chunk_size, settings))
            verdict = assess_draws(samples, extra, names, boxes, settings)
            spent = sum(timings.get(k, 0.0) for k in ("map_s", "warmup_s")) + sum(
                float(c["seconds"]) for c in chunks
            )
            if verdict.mixed or not settings.converge:
                break
            stop = budget_left(samples[names[0]].shape[1], spent, chunk_size, policy)
            if stop:
                break
            _log(f"  {verdict.line}\n  -> extending by {chunk_size} draws per chain", quiet)
        label = f"{i + 1}/{settings.sample_chunks}" if i < settings.sample_chunks else f"{i + 1}"
        chunk_path = out_dir / f"chunk_{i}.npz"
        state_path = out_dir / f"chunk_{i}_state.pkl"
        if chunk_path.exists() and state_path.exists():
            with np.load(chunk_path, allow_pickle=False) as f:
                chunks.append({k: f[k] for k in f.files})
            with state_path.open("rb") as f:
                chain_state = jax.tree_util.tree_map(jnp.asarray, pickle.load(f))
            _log(f"  sampling chunk {label} loaded", quiet)
            i += 1
            continue
        _log(f"  sampling chunk {label}: {chunk_size} draws per chain", quiet)
        t = time.perf_counter()
        mcmc.post_warmup_state = chain_state
        mcmc.run(chain_state.rng_key, extra_fields=EXTRA_FIELDS)
        samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
        extra = mcmc.get_extra_fields(group_by_chain=True)
        chunk = {f"sample/{k}": np.asarray(v) for k, v in samples.items()}
        chunk.update({f"extra/{k}": np.asarray(v) for k, v in extra.items()})
        chunk["seconds"] = np.asarray(time.perf_counter() - t)
        chain_state = mcmc.last_state
        tmp = out_dir / f"chunk_{i}.tmp.npz"
        np.savez(tmp, **chunk)
        with (out_dir / f"chunk_{i}_state.tmp").open("wb") as f:
            pickle.dump(_to_numpy(chain_state), f)
        os.replace(out_dir / f"chunk_{i}_state.tmp", state_path)
        os.replace(tmp, chunk_path)
        state["phase"] = f"sampling ({label} chunks)"
        _save_state(out_dir, state)
        chunks.append(chunk)
        i += 1

    # 5. outputs
    timings["sampling_s"] = float(sum(float(c["seconds"]) for c in chunks))
    timings["total_this_run_s"] = time.perf_counter() - t_start
    if stop is None and not verdict.mixed:
        stop = "policy off (converge=False): no extension"
    state["stop"] = stop
    result = write_outputs(out_dir, data, setup, samples, extra, truths, settings, fit_map,
                           warm_stats, state, quiet, verdict)  # fmt: skip
    state["phase"] = "complete"
    _save_state(out_dir, state)
    for path in out_dir.glob("chunk_*"):
        path.unlink()
    if warm_path.exists():
        warm_path.unlink()
    return result


def _kept_draws(n_chunks: int, chunk_size: int, settings: FitSettings) -> int:
    """Draws per chain kept from ``n_chunks`` chunks: ``num_samples`` from the first
    ``sample_chunks`` (the last may be longer), every draw once the run was extended (a chain's
    draws stay contiguous)."""
    return settings.num_samples if n_chunks <= settings.sample_chunks else n_chunks * chunk_size


def _gather(chunks: list[dict], n_keep: int) -> tuple[dict, dict]:
    """``(samples, extra)`` of the chunks, concatenated along the draws, first ``n_keep``."""
    out = {"sample": {}, "extra": {}}
    for key in chunks[0]:
        if "/" in key:
            group, name = key.split("/", 1)
            out[group][name] = np.concatenate([c[key] for c in chunks], axis=1)[:, :n_keep]
    return out["sample"], out["extra"]


def _reported_names(mode: str) -> list[str]:
    """The sampled sites and the derived ones reported in the summary (:data:`DERIVED_SUMMARY`)."""
    names = list(site_names(mode))
    return names + [n for n in DERIVED_SUMMARY if n not in names]


def assess_draws(samples: dict, extra: dict, names, boxes: dict, settings: FitSettings) -> Verdict:
    """:func:`~skinn_jax.inference.convergence.assess` of the parameters ``names`` present in
    ``samples``, with NUTS's divergences and tree sizes from ``extra``."""
    return assess(
        {n: samples[n] for n in names if n in samples},
        settings.policy(),
        boxes=boxes,
        diverging=extra["diverging"],
        num_steps=extra["num_steps"],
        max_tree_depth=settings.max_tree_depth,
    )


# ----------------------------------------------------------------------------------------------
# Outputs


def _flat_columns(samples: dict, names) -> dict[str, np.ndarray]:
    """``{label: (chains, draws)}`` for scalar sites and each element of vector sites."""
    out = {}
    for name in names:
        if name not in samples:
            continue
        arr = np.asarray(samples[name])
        if arr.ndim == 2:
            out[name] = arr
        else:
            for i in range(arr.shape[2]):
                out[f"{name}[{i}]"] = arr[:, :, i]
    return out


def _flat_truths(truths: dict | None) -> dict[str, float]:
    out = {}
    for name, value in (truths or {}).items():
        value = np.asarray(value, float)
        if value.ndim == 0:
            out[name] = float(value)
        else:
            for i, v in enumerate(value.ravel()):
                out[f"{name}[{i}]"] = float(v)
    return out


def summary_table(samples: dict, truths: dict | None, names):
    """Posterior table: mean, sd, quantiles, split R-hat, bulk/tail ESS, truth and pull."""
    import pandas as pd

    cols = _flat_columns(samples, names)
    flat_truth = _flat_truths(truths)
    rows = []
    for label, arr in cols.items():
        q = np.percentile(arr, [2.5, 16, 50, 84, 97.5])
        mean, sd = float(arr.mean()), float(arr.std(ddof=1))
        truth = flat_truth.get(label, np.nan)
        rows.append(
            {
                "parameter": label,
                "truth": truth,
                "mean": mean,
                "sd": sd,
                "q2.5": q[0],
                "q16": q[1],
                "median": q[2],
                "q84": q[3],
                "q97.5": q[4],
                "pull": (mean - truth) / sd if sd > 0 and np.isfinite(truth) else np.nan,
                "in68": bool(q[1] <= truth <= q[3]) if np.isfinite(truth) else None,
                "in95": bool(q[0] <= truth <= q[4]) if np.isfinite(truth) else None,
                "r_hat": rhat(arr),
                "ess_bulk": ess(arr, "bulk"),
                "ess_tail": ess(arr, "tail"),
            }
        )
    return pd.DataFrame(rows).set_index("parameter")


def diagnostics(extra: dict, verdict: Verdict, stop: str | None = None) -> dict:
    """The report's convergence section: the policy's :class:`Verdict` and NUTS's statistics.

    ``line`` is the one-line statement (with why the sampling stopped, when the budget ended it);
    ``reasons`` the failing parameters and likely causes (empty when converged)."""
    worst = max(
        (p for p in verdict.parameters if np.isfinite(p.r_hat)),
        key=lambda p: p.r_hat,
        default=None,
    )
    line = verdict.line + (f" [{stop}]" if stop and not verdict.converged else "")
    reasons = []
    if not verdict.converged:
        if verdict.failing:
            reasons.append("R-hat or ESS outside the thresholds: " + ", ".join(verdict.failing))
        reasons += list(verdict.causes)
        if stop:
            reasons.append(stop)
    return {
        "converged": verdict.converged,
        "line": line,
        "reasons": reasons,
        "stop": stop,
        "max_r_hat": verdict.max_rhat,
        "worst_r_hat_parameter": worst.name if worst else None,
        "min_ess_bulk": verdict.min_ess_bulk,
        "min_ess_tail": verdict.min_ess_tail,
        "divergences": verdict.divergences,
        "tree_depth_hits": verdict.tree_depth_hits,
        "mean_accept_prob": float(np.mean(extra["accept_prob"])),
        "mean_tree_size": float(np.mean(extra["num_steps"])),
        "max_tree_size": int(np.max(extra["num_steps"])),
        "policy": verdict_policy_dict(verdict),
    }


def verdict_policy_dict(verdict: Verdict) -> dict:
    """Per-parameter diagnostics, failing parameters, causes and box faces of ``verdict``."""
    out = verdict.as_dict()
    for key in ("converged", "line", "max_rhat", "min_ess_bulk", "min_ess_tail", "divergences"):
        out.pop(key)
    return out


def to_inference_data(samples: dict, extra: dict, data: SystemData, attrs: dict):
    """ArviZ InferenceData (posterior, sample_stats, observed_data) from chain-grouped arrays."""
    import arviz as az

    posterior = {k: np.asarray(v) for k, v in samples.items()}
    dims = {k: [f"{k}_dim"] for k, v in posterior.items() if v.ndim == 3}
    stats = {
        "diverging": np.asarray(extra["diverging"], bool),
        "n_steps": np.asarray(extra["num_steps"]),
        "tree_depth": np.floor(np.log2(np.asarray(extra["num_steps"]) + 1)).astype(int),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "energy": np.asarray(extra["energy"]),
        "lp": -np.asarray(extra["potential_energy"]),
    }
    observed = {
        "image": np.asarray(data.imaging.image),
        "noise_map": np.asarray(data.imaging.noise_map),
        "time_delays": np.asarray(data.time_delays.delays),
        "time_delay_sigma": np.asarray(data.time_delays.sigma),
        "vrms": np.asarray(data.kinematics.vrms),
        "vrms_covariance": np.asarray(data.kinematics.covariance),
        "bin_map": np.asarray(data.kinematics.bin_map),
    }
    obs_dims = {
        "image": ["row", "col"],
        "noise_map": ["row", "col"],
        "time_delays": ["delay"],
        "time_delay_sigma": ["delay"],
        "vrms": ["bin"],
        "vrms_covariance": ["bin", "bin2"],
        "bin_map": ["spaxel_row", "spaxel_col"],
    }
    clean_attrs = {
        k: (json.dumps(v, default=_json_default) if not isinstance(v, (str, int, float)) else v)
        for k, v in attrs.items()
    }
    return az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        observed_data=observed,
        dims={**dims, **obs_dims},
        attrs=clean_attrs,
    )


def _best_sample(samples: dict, extra: dict, names) -> dict:
    lp = -np.asarray(extra["potential_energy"])
    c, i = np.unravel_index(np.argmax(lp), lp.shape)
    return {k: np.asarray(samples[k][c, i]) for k in names}


def plot_corner(samples: dict, truths: dict | None, mode: str, path: Path, title: str = ""):
    """Corner plot of the paper's 13 parameters available in ``mode`` (φ in degrees).

    Kinematics mode has ``D_dt / D_d`` (:data:`~skinn_jax.inference.model.RATIO`) instead of
    ``D_dt`` and ``D_d``."""
    import corner
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PAPER_PARAMETERS + (RATIO,) if n in samples]
    cols, labels, truth_vals = [], [], []
    for n in names:
        arr = np.asarray(samples[n]).reshape(-1)
        t = None if truths is None or n not in truths else float(np.asarray(truths[n]))
        if n == "phi":
            arr = np.degrees(arr)
            t = None if t is None else math.degrees(t)
            n = "phi [deg]"
        cols.append(arr)
        labels.append(n)
        truth_vals.append(t)
    data = np.stack(cols, axis=1)
    if data.shape[0] <= data.shape[1]:  # too few draws for corner's 2-D histograms
        n = len(labels)
        ncol = min(n, 5)
        fig, axes = plt.subplots(-(-n // ncol), ncol, figsize=(3 * ncol, 2.4 * -(-n // ncol)))
        for ax, col, label, t in zip(np.ravel(axes), cols, labels, truth_vals, strict=False):
            ax.hist(col, bins=10, color="0.5")
            if t is not None:
                ax.axvline(t, color="tab:red")
            ax.set_xlabel(label, fontsize=8)
        for ax in np.ravel(axes)[n:]:
            ax.axis("off")
        fig.suptitle((title + " " if title else "") + f"({data.shape[0]} draws: 1-D only)")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return
    fig = corner.corner(
        data,
        labels=labels,
        truths=truth_vals if truths is not None else None,
        truth_color="tab:red",
        quantiles=[0.16, 0.5, 0.84],
        show_titles=True,
        title_fmt=".3g",
        title_kwargs={"fontsize": 8},
        label_kwargs={"fontsize": 9},
    )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    _quantize_png(path)


def _quantize_png(path: Path, colors: int = 64) -> None:
    """Rewrite a PNG with a ``colors``-entry palette: a corner plot of ~30 parameters drops from
    ~1.5 MB to ~0.5 MB (the study keeps every fit's plot in git), with no visible change."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=colors)
    small.save(path, format="PNG", optimize=True)


def plot_fit(data: SystemData, setup: ModelSetup, values: dict, path: Path, title: str = ""):
    """Data, model and normalised residuals (imaging and kinematics) at ``values``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = predict(data, setup, values)
    rows = []
    if pred.image is not None:
        rows.append("imaging")
    if pred.vrms is not None:
        rows.append("kinematics")
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 4.0 * len(rows)), squeeze=False)
    for r, kind in enumerate(rows):
        ax = axes[r]
        if kind == "imaging":
            img, noise = data.imaging.image, data.imaging.noise_map
            ext = setup.imaging.extent
            scale = 3 * np.median(noise)
            vmax = np.arcsinh(img.max() / scale)
            ax[0].imshow(
                np.arcsinh(img / scale), origin="lower", extent=ext, vmax=vmax, cmap="magma"
            )
            ax[1].imshow(
                np.arcsinh(pred.image / scale), origin="lower", extent=ext, vmax=vmax, cmap="magma"
            )
            res = ax[2].imshow(
                (img - pred.image) / noise,
                origin="lower",
                extent=ext,
                vmin=-4,
                vmax=4,
                cmap="RdBu_r",
            )
            ax[0].set_title("imaging data (asinh)")
            ax[1].set_title(f"model (χ² = {pred.chi2['imaging']:.0f} / {img.size} pixels)")
            ax[2].set_title("(data - model) / σ")
            fig.colorbar(res, ax=ax[2], fraction=0.046)
            td = ", ".join(
                f"{m:.1f} ({o:.1f}±{s:.1f})"
                for m, o, s in zip(
                    pred.time_delays, data.time_delays.delays, data.time_delays.sigma, strict=True
                )
            )
            ax[1].set_xlabel(f"time delays, model (data): {td} days", fontsize=8)
        else:
            kin = data.kinematics
            grid = kin.grid
            x0, y0 = grid.pixel_to_angle(np.array([-0.5]), np.array([-0.5]))
            x1, y1 = grid.pixel_to_angle(
                np.array([grid.shape[1] - 0.5]), np.array([grid.shape[0] - 0.5])
            )
            ext = [float(x0[0]), float(x1[0]), float(y0[0]), float(y1[0])]
            sigma = np.sqrt(np.diag(kin.covariance))
            lo, hi = np.nanmin(kin.vrms), np.nanmax(kin.vrms)
            ax[0].imshow(kin.bins_to_image(kin.vrms), origin="lower", extent=ext, vmin=lo, vmax=hi)
            im = ax[1].imshow(
                kin.bins_to_image(pred.vrms), origin="lower", extent=ext, vmin=lo, vmax=hi
            )
            res = ax[2].imshow(
                kin.bins_to_image((kin.vrms - pred.vrms) / sigma),
                origin="lower",
                extent=ext,
                vmin=-3,
                vmax=3,
                cmap="RdBu_r",
            )
            ax[0].set_title("binned v_rms data [km/s]")
            ax[1].set_title(f"model (χ² = {pred.chi2['kinematics']:.1f} / {kin.n_bins} bins)")
            ax[2].set_title("(data - model) / σ")
            fig.colorbar(im, ax=ax[1], fraction=0.046)
            fig.colorbar(res, ax=ax[2], fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return pred


def _markdown_table(table, report: dict) -> str:
    d = report["diagnostics"]
    depth = d.get("tree_depth_hits", float("nan"))
    lines = [
        f"# Posterior summary ({report['mode']})",
        "",
        d["line"],
        "",
        f"Diagnostics: max R-hat {d['max_r_hat']:.3f}, min ESS bulk "
        f"{d['min_ess_bulk']:.0f} / tail {d['min_ess_tail']:.0f}, {d['divergences']} divergences, "
        f"mean acceptance {d['mean_accept_prob']:.2f}, mean tree size {d['mean_tree_size']:.1f}"
        + (f", {100 * depth:.0f} % of trees at the maximum depth" if np.isfinite(depth) else "")
        + ".",
        "",
        "| parameter | truth | mean | sd | 16% | 50% | 84% | pull | R-hat | ESS bulk | ESS tail |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.iterrows():
        lines.append(
            f"| {name} | {row['truth']:.5g} | {row['mean']:.5g} | {row['sd']:.3g} | "
            f"{row['q16']:.5g} | {row['median']:.5g} | {row['q84']:.5g} | {row['pull']:.2f} | "
            f"{row['r_hat']:.3f} | {row['ess_bulk']:.0f} | {row['ess_tail']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir,
    data,
    setup,
    samples,
    extra,
    truths,
    settings,
    fit_map,
    warm_stats,
    state,
    quiet,
    verdict: Verdict,
) -> FitResult:
    """Write every final output (temporary names, then renamed) and return the result."""
    names = [n for n in _reported_names(setup.mode) if n in samples]
    table = summary_table(samples, truths, names)
    diag = diagnostics(extra, verdict, state.get("stop"))
    n_sampling_steps = int(np.sum(extra["num_steps"]))
    timings = state["timings"]
    report = {
        "mode": setup.mode,
        "meta": state.get("meta", {}),
        "fingerprint": state["fingerprint"],
        "settings": dataclasses.asdict(settings),
        "chain_method": _chain_method(settings),
        "n_parameters": int(fit_map.z.size),
        "convergence": diag["line"],
        "diagnostics": diag,
        "map": {
            "potential_start": fit_map.potential_start,
            "potential": fit_map.potential,
            "steps": fit_map.n_steps,
            "evaluations": fit_map.n_evals,
            "converged": fit_map.converged,
            "non_positive_hessian_eigenvalues": fit_map.n_negative,
        },
        "evaluations": {
            "map_and_hessians": fit_map.n_evals,
            "warmup": warm_stats["num_steps"],
            "sampling": n_sampling_steps,
            "total": fit_map.n_evals + warm_stats["num_steps"] + n_sampling_steps,
            "warmup_divergences": warm_stats["divergences"],
        },
        "timings_s": timings,
        "coverage": {
            "in68": {k: bool(v) for k, v in table["in68"].items() if v is not None},
            "in95": {k: bool(v) for k, v in table["in95"].items() if v is not None},
        },
    }
    attrs = {"mode": setup.mode, "fingerprint": state["fingerprint"], "report": report}
    idata = to_inference_data(samples, extra, data, attrs)
    title = (
        f"{state.get('meta', {}).get('label', '')} [{setup.mode}] "
        + ("converged" if diag["converged"] else "NOT CONVERGED")
    ).strip()

    tmp_nc = out_dir / "posterior.tmp.nc"
    idata.to_netcdf(str(tmp_nc))
    tmp_csv = out_dir / "summary.tmp.csv"
    table.to_csv(tmp_csv)
    tmp_corner = out_dir / "corner.tmp.png"
    plot_corner(samples, truths, setup.mode, tmp_corner, title)
    tmp_fit = out_dir / "fit.tmp.png"
    best = _best_sample(samples, extra, site_names(setup.mode))
    pred = plot_fit(data, setup, best, tmp_fit, title + " (highest-posterior draw)")
    report["best_draw_chi2"] = pred.chi2
    _atomic_write_text(out_dir / "summary.md", _markdown_table(table, report))
    _atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, default=_json_default))
    for tmp, final in (
        (tmp_nc, "posterior.nc"),
        (tmp_csv, "summary.csv"),
        (tmp_corner, "corner.png"),
        (tmp_fit, "fit.png"),
    ):
        os.replace(tmp, out_dir / final)
    _log(f"  done: {diag['line']}; {report['evaluations']['total']} evaluations", quiet)
    return FitResult(out_dir, idata, table, report)


def load_result(out_dir: str | Path) -> FitResult:
    """Read a complete fit's outputs (raises if the fit is not complete)."""
    import arviz as az
    import pandas as pd

    out_dir = Path(out_dir)
    state = _load_state(out_dir)
    if state.get("phase") != "complete":
        raise FileNotFoundError(f"{out_dir} holds no complete fit (phase {state.get('phase')})")
    idata = az.from_netcdf(str(out_dir / "posterior.nc"))
    table = pd.read_csv(out_dir / "summary.csv", index_col=0)
    report = json.loads((out_dir / "report.json").read_text())
    return FitResult(out_dir, idata, table, report)


def remove_outputs(out_dir: str | Path) -> None:
    """Delete a fit directory's files written by :func:`fit` (not the directory's other files)."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        _clear(out_dir)


__all__ = [
    "FINAL_FILES",
    "FitResult",
    "FitSettings",
    "MapResult",
    "default_settings",
    "find_map",
    "fit",
    "load_result",
    "make_potential",
    "plot_corner",
    "plot_fit",
    "remove_outputs",
    "summary_table",
]
