"""Settings and results of a fit, and the small I/O helpers the fit modules share.

Imports: :mod:`skinn_jax.inference.convergence`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from ..convergence import ConvergencePolicy

STATE_FILE = "fit_state.json"

CACHE_ENV = "SKINN_JAX_CACHE_DIR"
"""Environment variable naming the directory of the compiled-program cache (``off``: none)."""

CACHE_MAX_BYTES = 2 * 1024**3
"""Size bound of the compiled-program cache: beyond it the least recently used programs go."""


def use_compilation_cache(path: str | Path | None = None) -> Path | None:
    """Keep the programs XLA compiles on disk, so that a fit run again (resumed after a kill,
    or with the same inputs) loads them instead of compiling them (the joint model's potential
    and NUTS loop: ~60 s on 2 CPU cores, ~5 s loaded; ~14 MB).

    JAX's persistent compilation cache (``jax_compilation_cache_dir``; entries are keyed by the
    program, the compiler options and the JAX version, so a changed model or data set compiles
    afresh), bounded at :data:`CACHE_MAX_BYTES`. Call it before the first compilation; the
    command-line fits (``skinn-jax fit-mock``, the study) do.

    Args:
        path: the cache directory. Default: ``$SKINN_JAX_CACHE_DIR``; else a directory JAX was
            already given (``JAX_COMPILATION_CACHE_DIR``); else ``$XDG_CACHE_HOME/skinn-jax/xla``
            (``~/.cache/skinn-jax/xla``). ``SKINN_JAX_CACHE_DIR=off`` turns the cache off.

    Returns:
        The directory used, or None when the cache is off (or its directory cannot be made:
        a warning says so).

    Example:
        >>> use_compilation_cache("/tmp/skinn-jax-xla")  # doctest: +SKIP
        PosixPath('/tmp/skinn-jax-xla')
    """
    if path is None:
        path = os.environ.get(CACHE_ENV) or jax.config.jax_compilation_cache_dir
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "skinn-jax" / "xla"
    if str(path).lower() == "off":
        return None
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # (an unwritable home): compile as without a cache
        warnings.warn(f"no compiled-program cache: {err}", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path


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
            ``"vectorized"`` or ``"auto"``: parallel if there are enough devices, vectorized on
            a single accelerator (a GPU runs the chains as one batch), else sequential.
        sample_chunks: sampling is split into this many checkpointed chunks (one compiled
            loop serves them all, :class:`~skinn_jax.inference.fit.chains.Chains`).
        map_max_steps: L-BFGS iterations at most.
        map_tol: stop when the potential decreases by less than this over an iteration.
        map_newton_steps: Newton steps (whitened Laplace Hessian, zoom line search) after
            L-BFGS.
        laplace_step: step of the whitened Hessians' central differences, in units of the
            current σ (~0.5 averages the curvature across kinks of the prior, e.g. the
            tent-shaped prior of the kinematics mode's distance ratio).
        exact_hessian: Hessians by autodiff (Hessian-vector products) where ``laplace_step``
            is at most ``EXACT_HESSIAN_MAX_STEP`` (0.01), instead of differences of the
            compiled gradient (compiling them costs ~100 s for the joint model on 2 cores).
        adapt_mass_matrix: also adapt the (dense) mass matrix during warm-up.
        refine_metric: with the Laplace metric (``adapt_mass_matrix`` False), correct it after
            the warm-up from the second half of the warm-up draws (all chains; only directions
            outside the sampling-noise band, :func:`.metric.corrected_metric`) and adapt the
            step size again over the warm-up's final buffer (50 iterations for 150 of warm-up).
        source_mask: with imaging (lensing and joint modes), the warm-up and sampling compute
            the lensed extended source only on the pixels where, at the MAP, its PSF-convolved
            light exceeds ``source_mask`` x the noise σ, grown by ``source_mask_dilation``
            pixels (:func:`~skinn_jax.inference.lensing.imaging.source_mask`; the lens light
            everywhere); None: on every pixel.
        source_mask_dilation: pixels by which the source mask is grown (the arcs' movement
            within the posterior, the PSF's spread of the source's edge).
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
    num_samples: int = 200
    num_chains: int = 4
    chain_method: str = "auto"
    sample_chunks: int = 2
    map_max_steps: int = 100
    map_tol: float = 1e-4
    map_newton_steps: int = 6
    laplace_step: float = 1e-3
    exact_hessian: bool = False
    adapt_mass_matrix: bool = False
    refine_metric: bool = True
    source_mask: float | None = 1e-3
    source_mask_dilation: int = 3
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
            ("source_mask_dilation", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"FitSettings.{name} = {value!r}: allowed range [{lo}, inf)")
        if self.source_mask is not None and not self.source_mask > 0:
            raise ValueError(
                f"FitSettings.source_mask = {self.source_mask!r}: allowed range (0, inf) or None"
            )
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
    size (100 draws per chain: chunks cost no compilation, so a converged fit stops early).

    Lensing and joint fits (near-Gaussian posteriors after the lens-solver reparametrisation)
    keep the Laplace metric (a windowed dense adaptation over 250 warm-up iterations was slower:
    > 10 min of warm-up on mock system 1, from its noisy early estimates); kinematics-only
    posteriors are broad and bounded by the training box, so their dense metric is adapted over a
    longer warm-up.
    """
    if mode == "kinematics":
        return FitSettings(
            num_warmup=300,
            num_samples=300,
            sample_chunks=3,
            adapt_mass_matrix=True,
            laplace_step=0.5,
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


def _chain_method(settings: FitSettings) -> str:
    """The chain method ``settings.chain_method`` stands for on this machine (``"auto"``
    resolved: see :class:`FitSettings`)."""
    if settings.chain_method != "auto":
        return settings.chain_method
    if settings.num_chains == 1:
        return "sequential"
    if jax.local_device_count() >= settings.num_chains:
        return "parallel"
    return "vectorized" if jax.default_backend() != "cpu" else "sequential"


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


def _clear(out_dir: Path) -> None:
    for path in out_dir.iterdir():
        if path.is_file() and (
            path.name in FINAL_FILES
            or path.name == STATE_FILE
            or path.name.startswith(("chunk_", "map.", "warmup_"))
            or path.name.endswith(".tmp")
        ):
            path.unlink()
