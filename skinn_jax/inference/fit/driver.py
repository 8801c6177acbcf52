"""Inference for :func:`skinn_jax.inference.model.model`: MAP start, Laplace metric, NUTS, outputs.

:func:`fit` runs, for one system and mode, in phases that each leave a checkpoint in ``out_dir``:

1. **MAP** (:func:`~skinn_jax.inference.fit.map.find_map`): optax's L-BFGS with its zoom line
   search on NumPyro's potential (minus the log posterior in the unconstrained space, transform
   Jacobians included), in coordinates whitened by the Laplace covariance at the start, then
   Newton refinements. The start is the truth, as in the paper (Sec. 5.3: "we use an MCMC to
   sample the posterior parameter space near the truth label"). Checkpoint ``map.npz``.
2. **Laplace metric**: the Hessian of the potential at the MAP (central differences of the
   compiled gradient in whitened coordinates; exact Hessian-vector products with
   ``exact_hessian``), regularised to be positive definite; its
   inverse is NUTS's dense inverse mass matrix, and the chains start at MAP + ``init_jitter`` x a
   draw from that Gaussian (so that R-hat can see chains that fail to mix). Also in ``map.npz``.
   With imaging (lensing, joint) and ``source_mask`` (default), the model used from here on
   computes the lensed source only on the pixels where it matters at the MAP
   (:func:`~skinn_jax.inference.lensing.imaging.source_mask`; ~1.3-2.7x faster per
   evaluation); the mask is kept in ``map.source_mask.npy``.
3. **Warm-up**: NUTS (``numpyro.infer.NUTS`` on the model's potential, ``Potential.site_potential``,
   dense mass matrix) adapting the step size (and the mass matrix only if ``adapt_mass_matrix``:
   with short warm-ups, windowed estimates of a dense ~35 x 35 matrix are worse than the Laplace
   one), run by :class:`~.chains.Chains` (one compiled loop for the warm-up and every sampling
   chunk; the chains start with potentials and gradients from the compiled potential, so nothing
   else is compiled for their start; they record the sampled sites and the reported derived
   ones, :func:`_recorded`). With the Laplace metric and
   ``refine_metric`` (default), the metric is then corrected from the second half of the
   warm-up draws where they clearly disagree with it (:func:`.metric.corrected_metric`) and the
   step size adapted again over the warm-up's final buffer (:meth:`.chains.Chains.with_metric`).
   Checkpoint ``warmup_state.pkl``.
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
import io
import json
import math
import os
import pickle
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..convergence import budget_left
from ..data import SystemData
from ..lensing.imaging import ImagingModel, source_mask
from ..model import MODEL_VERSION, ModelSetup, site_names, uses_light_shape
from ..predict import lens_at
from .chains import POSITION, Chains, final_buffer, loop_length
from .map import MapResult, Potential, find_map, make_potential, parameter_boxes
from .metric import corrected_metric
from .report import assess_draws, load_result, reported_names, write_outputs
from .settings import (
    FINAL_FILES,
    FitResult,
    FitSettings,
    _atomic_write_bytes,
    _chain_method,
    _clear,
    _json_default,
    _load_state,
    _log,
    _save_state,
    _to_numpy,
)


def _data_bytes(arr) -> bytes:
    """The bytes of ``arr`` at float32 precision, for the fingerprint: data rebuilt in another
    process (a mock's JAM truth and light weights, threaded sums) can differ in their last float64
    bits, which must not make the same inputs look like other ones."""
    return np.ascontiguousarray(np.asarray(arr, np.float32)).tobytes()


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
        h.update(_data_bytes(arr))
    h.update(f"{setup.mode} model v{MODEL_VERSION}".encode())
    # the sampled coordinates (a checkpoint's flat vector means nothing in others)
    h.update(repr(site_names(setup.mode)).encode())
    h.update(repr(dataclasses.astuple(setup.priors)).encode())
    h.update(repr(setup.newton_iterations).encode())
    h.update(_data_bytes(data.image_positions))
    if data.light_shape is not None and uses_light_shape(setup.mode):
        h.update(np.asarray(data.light_shape, float).tobytes())
    if setup.imaging is not None:
        h.update(repr(setup.imaging.settings).encode())
    if setup.kinematics is not None:
        forward = setup.kinematics.forward
        h.update(f"kinematic supersampling {forward.supersampling}".encode())
        if forward.sampling != "points":  # fingerprints of point-sampled fits stay as they were
            h.update(f"kinematic sampling {forward.sampling}".encode())
    fit_fields = dataclasses.asdict(settings)
    fit_fields.pop("progress_bar")
    if not refines_metric(settings):  # fingerprints of fits without it stay as they were
        fit_fields.pop("refine_metric")
    if not masks_source(settings, setup):  # (likewise)
        fit_fields.pop("source_mask")
        fit_fields.pop("source_mask_dilation")
    h.update(json.dumps(fit_fields, sort_keys=True).encode())
    h.update(json.dumps(extra, sort_keys=True, default=_json_default).encode())
    return h.hexdigest()[:16]


def refines_metric(settings: FitSettings) -> bool:
    """Whether the fit corrects its Laplace metric after the warm-up (``refine_metric`` with a
    fixed metric)."""
    return settings.refine_metric and not settings.adapt_mass_matrix


def masks_source(settings: FitSettings, setup: ModelSetup) -> bool:
    """Whether the fit computes the lensed source only inside a mask made at the MAP
    (``source_mask`` set, and a mode with imaging)."""
    return settings.source_mask is not None and setup.imaging is not None


def _mask_source(data, setup, pot: Potential, fit_map: MapResult, settings, out_dir, quiet):
    """The set-up with the source computed only where it matters at the MAP
    (:func:`~skinn_jax.inference.lensing.imaging.source_mask`), the mask kept in
    ``map.source_mask.npy`` for a resumed fit: ``(setup, stats)``."""
    from numpyro.infer.util import transform_fn

    path = out_dir / "map.source_mask.npy"
    if path.exists():
        mask = np.load(path)
    else:
        values = transform_fn(pot.transforms, pot.unravel(jnp.asarray(fit_map.z)))
        lens = lens_at(data, setup, values)
        mask = source_mask(setup.imaging, lens, data.imaging.noise_map, settings.source_mask,
                           settings.source_mask_dilation)  # fmt: skip
        buffer = io.BytesIO()
        np.save(buffer, mask)
        _atomic_write_bytes(path, buffer.getvalue())
    img = setup.imaging
    setup = dataclasses.replace(
        setup, imaging=ImagingModel(img.settings, img.windows, source_pixels=mask)
    )
    stats = {
        "threshold": settings.source_mask,
        "dilation_pix": settings.source_mask_dilation,
        "pixels": int(mask.sum()),
        "fraction": float(mask.mean()),
    }
    _log(
        f"  source computed on {stats['pixels']} pixels ({stats['fraction']:.0%}): its light at "
        f"the MAP > {settings.source_mask:g} σ, grown by {settings.source_mask_dilation} pixels",
        quiet,
    )
    return setup, stats


def _refine_metric(chains: Chains, pot: Potential, fit_map: MapResult, state, extra, show, quiet):
    """Correct the Laplace metric from the second half of the warm-up draws and adapt the step
    size again over the warm-up's final buffer: ``(state, extra, stats)``."""
    n = chains.num_warmup
    draws = extra[POSITION][:, n // 2 :].reshape(-1, fit_map.z.size)
    corr = corrected_metric(fit_map.covariance, draws)
    ratios = np.sort(corr.ratios[corr.corrected])[::-1]
    _log(
        f"  metric: {corr.corrected.sum()} of {corr.ratios.size} directions corrected from "
        f"{draws.shape[0]} warm-up draws (variance / Laplace: "
        f"{np.array2string(ratios, precision=2) if ratios.size else '-'}; noise band "
        f"{corr.band[0]:.2f}-{corr.band[1]:.2f})",
        quiet,
    )
    iterations = final_buffer(n)
    state = chains.with_metric(state, {pot.names: jnp.asarray(corr.covariance)}, iterations)
    state, _, extra2 = _advance(chains, state, iterations, "metric", show)
    stats = {
        "corrected": int(corr.corrected.sum()),
        "ratios": [float(r) for r in ratios],
        "band": [float(b) for b in corr.band],
        "iterations": iterations,
    }
    return state, extra2, stats


def _nuts_kernel(pot: Potential, cov: np.ndarray, settings: FitSettings):
    from numpyro.infer import NUTS

    # NumPyro's potential of the model, bound to the data and set-up (no model arguments, as
    # Chains wants; the chains start with its values and gradients, _initial_params)
    return NUTS(
        potential_fn=pot.site_potential,
        dense_mass=[pot.names],
        inverse_mass_matrix={pot.names: jnp.asarray(cov)},
        adapt_mass_matrix=settings.adapt_mass_matrix,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=settings.max_tree_depth,
    )


def _recorded(pot: Potential, mode: str):
    """What the chains record of a draw: the constrained sampled sites, the derived ones the
    summary reports and the lens solver's residual. Not the χ² terms, for which every draw would
    evaluate the whole forward model once more (and the loop compile it: ~6 s for the joint
    model on 2 cores); :func:`~skinn_jax.inference.predict.predict` (or NumPyro's
    ``Predictive``) gives them at any draw."""
    keep = set(reported_names(mode)) | {"lens_eq_residual"}

    def record(z: dict) -> dict:
        return {k: v for k, v in pot.constrain(z).items() if k in keep}

    return record


def _advance(chains: Chains, state, n: int, desc: str, progress: bool):
    """``n`` iterations of every chain (a multiple of ``chains.length``, :func:`loop_length`):
    ``(state, samples, extra)`` with the draws concatenated, NumPy arrays
    ``(num_chains, n, ...)`` (empty dicts for ``n = 0``)."""
    from tqdm import tqdm

    if n == 0:
        return state, {}, {}
    parts = []
    with tqdm(total=n, desc=f"  {desc}", disable=not progress, leave=False) as bar:
        for _ in range(n // chains.length):
            state, samples, extra = chains.run(state)
            parts.append(_to_numpy((samples, extra)))
            bar.update(chains.length)
    samples, extra = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)
    return state, samples, extra


def _initial_params(pot: Potential, fit_map: MapResult, settings: FitSettings):
    """The chains' starts (MAP + ``init_jitter`` x a Laplace draw), with their potentials and
    gradients from the compiled ``pot.value_and_grad``: a NumPyro ``ParamInfo``, batched over
    chains (the kernel's initialisation then evaluates nothing)."""
    from numpyro.infer.util import ParamInfo

    rng = np.random.default_rng(settings.seed)
    chol = np.linalg.cholesky(fit_map.covariance)
    starts = [
        jnp.asarray(fit_map.z + settings.init_jitter * chol @ rng.standard_normal(fit_map.z.size))
        for _ in range(settings.num_chains)
    ]
    evaluated = [pot.value_and_grad(s) for s in starts]
    values = jnp.stack([v for v, _ in evaluated])
    if not np.all(np.isfinite(np.asarray(values))):
        raise ValueError(
            f"the potential at the chains' starts is not finite ({np.asarray(values)}): "
            "the MAP or its Laplace covariance is outside the prior's support"
        )

    def stacked(flat):
        parts = [pot.unravel(x) for x in flat]
        return {k: jnp.stack([p[k] for p in parts]) for k in parts[0]}

    return ParamInfo(stacked(starts), values, stacked([g for _, g in evaluated]))


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


def fit(
    data: SystemData,
    setup: ModelSetup,
    out_dir: str | Path,
    *,
    init_values: dict,
    truths: dict | None = None,
    settings: FitSettings | None = None,
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
    settings = FitSettings() if settings is None else settings
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
    timings = state["timings"]
    t_start = time.perf_counter()
    map_path = out_dir / "map.npz"
    resuming = map_path.exists()
    pot = make_potential(data, setup, init_values)  # compiled lazily (at its first call)
    d = pot.z0.size
    if not resuming:
        _log(f"[{setup.mode}] compiling the potential and its gradient ...", quiet)
        t = time.perf_counter()
        value, grad = jax.block_until_ready(pot.value_and_grad(jnp.asarray(pot.z0)))
        timings["compile_potential_s"] = time.perf_counter() - t
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            raise ValueError(
                f"the potential at the start values is {float(value)} (gradient finite: "
                f"{bool(np.all(np.isfinite(grad)))}): start inside the priors' boxes, where the "
                f"model is defined; start values: { {k: init_values[k] for k in pot.names} }"
            )
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
    warm_path = out_dir / "warmup_state.pkl"
    # the chains' starts, evaluated by the potential compiled for the MAP (the masked one below
    # differs from it by the source's light outside the mask, < 1e-3 σ a pixel: the first warm-up
    # step sees that energy error, and nothing else is compiled for the starts)
    starts = None if warm_path.exists() else _initial_params(pot, fit_map, settings)
    if masks_source(settings, setup):  # sampling computes the source only where it matters
        setup, state["source_mask"] = _mask_source(
            data, setup, pot, fit_map, settings, out_dir, quiet
        )
        pot = make_potential(data, setup, init_values)

    # 3. warm-up
    chain_method = _chain_method(settings)
    kernel = _nuts_kernel(pot, fit_map.covariance, settings)
    chunk_size = math.ceil(settings.num_samples / settings.sample_chunks)
    refine = refines_metric(settings) and final_buffer(settings.num_warmup) > 0
    warm_cycle = math.gcd(settings.num_warmup, final_buffer(settings.num_warmup) if refine else 0)
    length = loop_length(warm_cycle, chunk_size)  # divides the warm-up, its buffer, the chunks
    chains = Chains(kernel, settings.num_warmup, length, settings.num_chains, chain_method,
                    postprocess=_recorded(pot, setup.mode))  # fmt: skip
    show = settings.progress_bar and not quiet
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
        warm_state = chains.init(jax.random.PRNGKey(settings.seed), starts)
        warm_state, _, extra = _advance(chains, warm_state, settings.num_warmup, "warm-up", show)
        num_steps, divergences = (int(np.sum(extra.get(k, 0))) for k in ("num_steps", "diverging"))
        warm_stats = {}
        if refine:
            warm_state, extra, warm_stats["metric"] = _refine_metric(
                chains, pot, fit_map, warm_state, extra, show, quiet
            )
            num_steps += int(np.sum(extra["num_steps"]))
            divergences += int(np.sum(extra["diverging"]))
        warm_state = jax.block_until_ready(warm_state)
        warm_stats.update(
            seconds=time.perf_counter() - t, num_steps=num_steps, divergences=divergences
        )
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
    names = reported_names(setup.mode)
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
        chain_state, samples, extra = _advance(
            chains, chain_state, chunk_size, f"sampling {label}", show
        )
        chunk = {f"sample/{k}": v for k, v in samples.items()}
        chunk.update({f"extra/{k}": v for k, v in extra.items() if k != POSITION})
        chunk["seconds"] = np.asarray(time.perf_counter() - t)
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
    n_evals = int(np.sum(extra["num_steps"]))  # the kept draws', as report.json counts them
    _log(
        f"  sampling: {n_evals} gradient evaluations in {timings['sampling_s']:.0f} s "
        f"({chain_ms_per_evaluation(timings['sampling_s'], n_evals, settings.num_chains):.1f} ms "
        f"per evaluation of a chain, {settings.num_chains} chains, {chain_method})",
        quiet,
    )
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


def chain_ms_per_evaluation(seconds: float, evaluations: int, num_chains: int) -> float:
    """Wall milliseconds a chain spends per potential + gradient evaluation: ``seconds`` of
    sampling by ``num_chains`` chains that made ``evaluations`` in all (with parallel chains
    sharing cores, the evaluation's cost on the machine as the fit runs it)."""
    return 1e3 * seconds * num_chains / max(evaluations, 1)


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
