"""The K-system study of issue 6 / paper Sec. 6: fits in three modes, Fig. 9, coverage, reweighting.

::

    python -m skinn_jax.inference.study --systems 0 1 2 3 4 5 6 7 8 9 \\
        [--modes joint lensing kinematics] [--out docs/benchmarks/study] [--checkpoint PATH] \\
        [--warmup N --samples N --chains N] [--reweight-systems 0 --reweight-draws 200] \\
        [--figures docs/figures]

For every system ``k`` (:func:`skinn_jax.inference.mocks.system.make_mock_system`) and mode, a fit
(:func:`skinn_jax.inference.fit.fit`, MAP + NUTS) into ``OUT/<k>/<mode>``; fits are restartable and
a complete fit is loaded rather than redone, so the study can be stopped and resumed. Then:

- **Fig. 9**: for each of the paper's 13 parameters and the ratio ``D_dt / D_d``, the draws minus
  the truth stacked over the systems, one histogram per mode (``FIGURES/inference_study_fig9.png``;
  kinematics mode samples only the ratio of the distances, joint mode's ratio is ``D_dt / D_d`` of
  its draws);
- **coverage**: per mode and parameter, the fraction of systems whose truth lies in the central
  68 % and 95 % credible intervals, with its binomial error ``sqrt(p (1 - p) / K)``, and the mean
  pull ``(mean - truth) / sd`` with its error ``1/sqrt(K)`` (target: coverage consistent with
  nominal, |mean pull| of D_d and D_Δt < 0.3);
- **what the kinematics add**: the posterior widths of D_d, D_Δt and γ, lensing-only vs joint;
  and what the lensing adds: the width of ``D_dt / D_d``, kinematics-only vs joint;
- **emulator error**: for the ``--reweight-systems``, joint- and kinematics-mode draws are
  importance-reweighted by ``L_kin(JAM truth) / L_kin(emulator)``, with JAM truth recomputed at
  each draw's parameters
  (:func:`skinn_jax.inference.mocks.kinematics.jam_truth_bins` at the draw's distances, through the
  same forward model); reported: the effective sample size ``(Σw)²/Σw²`` and every parameter's
  shift (weighted mean - mean) / sd;
- **timings**: per system and mode, wall time, likelihood evaluations and time per evaluation.

A fitting run only makes (or resumes) the fits. The report is made by ``--report-only``, over every
fit complete in ``OUT``, and written to ``OUT/study.json``, ``OUT/study.md`` and (with
``--figures``) Fig. 9; so a run over a few systems never overwrites the study's report with a
partial one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .model import PAPER_PARAMETERS, RATIO, uses_kinematics

MODES = ("joint", "lensing", "kinematics")

STUDY_PARAMETERS: tuple[str, ...] = PAPER_PARAMETERS + (RATIO,)
"""The paper's 13 parameters and ``D_dt / D_d`` (the one distance parameter of kinematics mode)."""


def _chain_draws(idata, name: str) -> np.ndarray | None:
    """Posterior draws ``(chains, draws)`` of ``name``; :data:`RATIO` from ``D_dt / D_d`` where it
    is not a site (joint mode); None where the mode has neither."""
    post = idata.posterior
    if name in post:
        return np.asarray(post[name])
    if name == RATIO and "D_dt" in post and "D_d" in post:
        return np.asarray(post["D_dt"]) / np.asarray(post["D_d"])
    return None


def _flat_draws(idata, name: str) -> np.ndarray | None:
    draws = _chain_draws(idata, name)
    return None if draws is None else draws.reshape(-1)


def stored_truth(per_mode: dict, name: str) -> float | None:
    """The truth of ``name`` the fit was made with: its summary table's ``truth`` (``D_dt / D_d``
    from the table's D_dt and D_d where it is not a row), else ``per_mode["truths"]``.

    The table wins: a report rebuilds the mock systems, and on a machine without the test set
    (``params_source="auto"``) they are other systems than the ones fitted."""
    table = getattr(per_mode["result"], "summary", None)
    if table is not None:
        truth = table["truth"]
        if name in truth.index and np.isfinite(truth[name]):
            return float(truth[name])
        if name == RATIO and {"D_dt", "D_d"} <= set(truth.index):
            ratio = truth["D_dt"] / truth["D_d"]
            if np.isfinite(ratio):
                return float(ratio)
    value = per_mode.get("truths", {}).get(name)
    return None if value is None else float(np.asarray(value))


def rebuilt_system_matches(per_mode: dict, rtol: float = 1e-6) -> bool:
    """Whether the rebuilt system's truths (``per_mode["truths"]``) are the fit's stored ones
    (``gamma``, ``q_light``, ``beta_z``... every scalar truth both have)."""
    table = per_mode["result"].summary
    for name, value in per_mode.get("truths", {}).items():
        value = np.asarray(value, float)
        if value.ndim == 0 and name in table.index and np.isfinite(table.loc[name, "truth"]):
            if not np.isclose(float(value), table.loc[name, "truth"], rtol=rtol, atol=1e-9):
                return False
    return True


def summary_row(per_mode: dict, name: str) -> dict | None:
    """``{truth, sd, pull, in68, in95}`` of ``name`` in one fit, or None if the fit has no finite
    truth for it.

    From the fit's summary table; the derived :data:`RATIO` of a fit whose table lacks it (joint
    mode) from its draws and :func:`stored_truth`.
    """
    table = per_mode["result"].summary
    if name not in table.index and name == RATIO:
        idata = getattr(per_mode["result"], "idata", None)
        draws = None if idata is None else _chain_draws(idata, name)
        truth = stored_truth(per_mode, name)
        if draws is None or truth is None:
            return None
        from .fit import summary_table

        table = summary_table({name: draws}, {name: truth}, [name])
    if name not in table.index or not np.isfinite(table.loc[name, "truth"]):
        return None
    row = table.loc[name]
    keys = ("truth", "sd", "pull", "in68", "in95")
    return {k: (bool(row[k]) if k.startswith("in") else float(row[k])) for k in keys}


@dataclass(frozen=True)
class StudyOptions:
    """What every fit of a study shares (picklable: sent to dask workers with each task).

    Attributes:
        out: the study directory; fit ``(k, mode)`` goes to ``out/k/mode``.
        checkpoint: emulator checkpoint (name or directory; None: the shipped default).
        params_source: where mock systems take their emulator parameters (``auto``, ``test``,
            ``box``).
        test_set: the test set for ``params_source`` ``test``/``auto``.
        settings_changes: ``(field, value)`` pairs replacing fields of the mode's
            :func:`~skinn_jax.inference.fit.default_settings` (chains, warm-up, draws, budget).
        progress: progress bars.
        quiet: no log messages from the fits.
        replace_changed: refit (deleting it) a fit made with other inputs instead of stopping.
        mock_settings: :class:`~skinn_jax.inference.mocks.system.MockSystemSettings` of the mock
            systems (None: the paper's, as in the study).
    """

    out: Path
    checkpoint: str | None = None
    params_source: str = "auto"
    test_set: Path = Path("data/test")
    settings_changes: tuple[tuple[str, object], ...] = ()
    progress: bool = False
    quiet: bool = False
    replace_changed: bool = False
    mock_settings: object = None


@dataclass(frozen=True)
class FitTask:
    """One fit of a study: system ``system`` in ``mode`` (one dask task)."""

    system: int
    mode: str
    options: StudyOptions

    @property
    def out_dir(self) -> Path:
        """``options.out / system / mode``."""
        return Path(self.options.out) / str(self.system) / self.mode


def fit_settings(mode: str, options: StudyOptions):
    """The :class:`~skinn_jax.inference.fit.FitSettings` of a study fit in ``mode``."""
    from .fit import default_settings

    changes = {"progress_bar": options.progress, **dict(options.settings_changes)}
    return dataclasses.replace(default_settings(mode), **changes)


@lru_cache(maxsize=4)
def _emulator(checkpoint: str | None):
    """The emulator of ``checkpoint``, loaded once per process (worker)."""
    from .kinematics import load_emulator

    return load_emulator(checkpoint)


def _mock_system(k: int, options: StudyOptions):
    from .mocks.system import make_mock_system

    kwargs = {"params_source": options.params_source, "test_set": options.test_set}
    if options.mock_settings is not None:
        kwargs["settings"] = options.mock_settings
    return make_mock_system(k, **kwargs)


def fit_one(task: FitTask, system=None) -> dict:
    """Make (or load, or resume) one study fit (:func:`~skinn_jax.inference.mocks.fit.fit_mock`);
    returns ``{result, setup, data, truths}``.

    Args:
        task: the system, mode and shared options.
        system: the mock system if already built (else built from ``task``).
    """
    from .kinematics import PAPER_BOX_EMULATOR
    from .mocks.fit import fit_mock

    system = system if system is not None else _mock_system(task.system, task.options)
    emulator = _emulator(task.options.checkpoint) if uses_kinematics(task.mode) else None
    return fit_mock(
        system,
        task.mode,
        task.out_dir,
        emulator=emulator,
        settings=fit_settings(task.mode, task.options),
        meta={
            "label": f"mock system {task.system}",
            "system": task.system,
            "checkpoint": str(task.options.checkpoint or PAPER_BOX_EMULATOR),
        },
        replace_changed=task.options.replace_changed,
        quiet=task.options.quiet,
    )


def fit_task(task: FitTask) -> dict:
    """The dask task: :func:`fit_one` in float64; returns a small record (the outputs stay in
    ``task.out_dir``): ``{system, mode, out_dir, convergence, converged, wall_s}``."""
    import jax

    from .fit import use_compilation_cache

    use_compilation_cache()  # on the worker: a resumed fit loads what it compiled
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        report = fit_one(task)["result"].report
    jax.clear_caches()
    return {
        "system": task.system,
        "mode": task.mode,
        "out_dir": str(task.out_dir),
        "convergence": report["diagnostics"].get("line", ""),
        "converged": bool(report["diagnostics"]["converged"]),
        "wall_s": time.perf_counter() - t0,
    }


def pending_tasks(tasks: list[FitTask]) -> list[FitTask]:
    """The tasks whose fit is not complete (all of them with ``replace_changed``: a complete fit
    with the same inputs is then only loaded, one with other inputs refitted)."""
    return [t for t in tasks if t.options.replace_changed or not fit_complete(t.out_dir)]


def run_dask(tasks: list[FitTask], scheduler) -> Iterator[dict]:
    """Run :func:`fit_task` for the pending ``tasks`` on a dask.distributed scheduler (address or
    ``Cluster``), one fit per task; yields each record as its fit finishes. Resumable: complete fits
    are skipped, interrupted ones resume from their checkpoints in the shared ``out``."""
    from distributed import Client, as_completed

    todo = pending_tasks(tasks)
    if not todo:
        return
    with Client(scheduler) as client:
        futures = client.map(fit_task, todo, pure=False)
        for future in as_completed(futures):
            yield future.result()


def run_fits(args) -> dict:
    """Fit every system in every mode (or load complete fits). Returns ``{k: {mode: result}}``."""
    import jax

    from .data import SystemData
    from .fit import load_result
    from .mocks.fit import mock_setup
    from .mocks.system import plot_mock_system
    from .mocks.truth import truth_values

    options = study_options(args)
    if args.scheduler and not args.report_only:
        tasks = [FitTask(k, mode, options) for k in args.systems for mode in args.modes]
        n_done = len(tasks) - len(pending_tasks(tasks))
        print(f"{len(tasks)} fits, {n_done} complete; the others go to {args.scheduler}")
        for record in run_dask(tasks, args.scheduler):
            print(f"  system {record['system']} {record['mode']}: {record['convergence']} "
                  f"({record['wall_s']:.0f} s)", flush=True)  # fmt: skip
        return {}
    results: dict = {}
    for k in args.systems:
        system = _mock_system(k, options)
        if args.figures:
            plot_mock_system(system, Path(args.figures) / f"inference_mock_{k}.png")
        results[k] = {"system": system}
        for mode in args.modes:
            task = FitTask(k, mode, options)
            if args.report_only and not fit_complete(task.out_dir):
                continue
            t0 = time.perf_counter()
            if args.report_only:
                # report on the fit as it was made (its own model version and settings)
                data = SystemData.from_mock(system)
                emulator = _emulator(options.checkpoint) if uses_kinematics(mode) else None
                per = {
                    "result": load_result(task.out_dir),
                    "setup": mock_setup(system, data, mode, emulator),
                    "data": data,
                    "truths": truth_values(system, mode),
                }
                per["rebuilt_matches"] = rebuilt_system_matches(per)
                if not per["rebuilt_matches"]:
                    print(
                        f"WARNING: system {k} ({mode}): the rebuilt mock system is not the one "
                        "fitted (other truths: --params-source/--test-set differ from the fit's); "
                        "its stored truths are used, and it is not reweighted",
                        flush=True,
                    )
            else:
                per = fit_one(task, system)
            results[k][mode] = {**per, "wall_s": time.perf_counter() - t0}
            jax.clear_caches()
    return results


def study_options(args) -> StudyOptions:
    """The :class:`StudyOptions` of the command-line arguments."""
    from skinn_jax.cli import convergence_changes

    changes = {"num_chains": args.chains, **convergence_changes(args, args.samples)}
    if args.warmup is not None:
        changes["num_warmup"] = args.warmup
    if args.samples is not None:
        changes["num_samples"] = args.samples
    return StudyOptions(
        out=Path(args.out),
        checkpoint=args.checkpoint,
        params_source=args.params_source,
        test_set=Path(args.test_set),
        settings_changes=tuple(sorted(changes.items())),
        progress=not args.no_progress,
        replace_changed=args.replace_changed,
    )


def fit_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a complete fit (its state says so and every final file exists)."""
    from .fit import FINAL_FILES, STATE_FILE

    state_path = out_dir / STATE_FILE
    if not state_path.exists():
        return False
    state = json.loads(state_path.read_text())
    return state.get("phase") == "complete" and all((out_dir / f).exists() for f in FINAL_FILES)


def _binomial_error(p: float, n: int) -> float:
    """Binomial error of a fraction ``p`` of ``n`` trials (floor: p = 1/2's, for p = 0 or 1)."""
    return math.sqrt(max(p * (1 - p), 0.25 / n) / n)


def coverage_table(results: dict, modes) -> dict:
    """Coverage (68 %, 95 %) with binomial errors and mean pulls, per mode and parameter.

    Over :data:`STUDY_PARAMETERS`; the pooled row leaves out ``D_dt / D_d`` in a mode that has
    ``D_dt`` and ``D_d`` (it is their function, not another parameter).
    """
    out = {}
    for mode in modes:
        rows = {}
        for name in STUDY_PARAMETERS:
            in68, in95, pulls = [], [], []
            for per in results.values():
                if mode not in per:
                    continue
                row = summary_row(per[mode], name)
                if row is None:
                    continue
                in68.append(row["in68"])
                in95.append(row["in95"])
                pulls.append(row["pull"])
            n = len(in68)
            if n == 0:
                continue
            p68, p95 = float(np.mean(in68)), float(np.mean(in95))
            rows[name] = {
                "n": n,
                "cov68": p68,
                "cov68_err": _binomial_error(p68, n),
                "cov95": p95,
                "cov95_err": _binomial_error(p95, n),
                "mean_pull": float(np.mean(pulls)),
                "mean_pull_err": 1.0 / math.sqrt(n),
            }
        pool = {k: r for k, r in rows.items() if k != RATIO or not {"D_dt", "D_d"} & set(rows)}
        if pool:
            # pooled over parameters (trials within one system are correlated: the error shown is
            # the binomial one for independent trials, a lower bound)
            n_all = sum(r["n"] for r in pool.values())
            pooled = {}
            for level in ("cov68", "cov95"):
                p = sum(r[level] * r["n"] for r in pool.values()) / n_all
                pooled[level] = p
                pooled[f"{level}_err"] = _binomial_error(p, n_all)
            pulls_all = sum(r["mean_pull"] * r["n"] for r in pool.values()) / n_all
            rows["all (pooled)"] = {
                "n": n_all, **pooled, "mean_pull": pulls_all,
                "mean_pull_err": 1.0 / math.sqrt(n_all),
            }  # fmt: skip
        out[mode] = rows
    return out


WIDTH_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("D_dt", "lensing"),
    ("gamma", "lensing"),
    (RATIO, "kinematics"),
)
"""``(parameter, mode)``: sd(mode) / sd(joint) is reported (lensing has no D_d, kinematics no
D_dt or D_d: what the kinematics add to the lensing, and the lensing to the kinematics)."""


def width_ratios(widths_by_system: dict) -> dict:
    """Median (and range) over systems of sd(mode) / sd(joint), for :data:`WIDTH_COMPARISONS`."""
    out = {}
    for name, mode in WIDTH_COMPARISONS:
        ratios = [
            row[f"{name}_{mode}"] / row[f"{name}_joint"]
            for row in widths_by_system.values()
            if f"{name}_{mode}" in row and f"{name}_joint" in row and row[f"{name}_joint"] > 0
        ]
        if ratios:
            out[name] = {
                "mode": mode,
                "n": len(ratios),
                "median": float(np.median(ratios)),
                "min": float(np.min(ratios)),
                "max": float(np.max(ratios)),
            }
    return out


def widths(results: dict) -> dict:
    """Posterior sd of D_d, D_dt, gamma and D_dt / D_d per system and mode."""
    out = {}
    for k, per in results.items():
        row = {}
        for mode in ("lensing", "joint", "kinematics"):
            if mode not in per:
                continue
            for name in ("D_d", "D_dt", "gamma", RATIO):
                r = summary_row(per[mode], name)
                if r is not None:
                    row[f"{name}_{mode}"] = r["sd"]
        out[k] = row
    return out


def reweight(per_mode: dict, n_draws: int, seed: int = 0) -> dict:
    """Importance weights ``L_kin(JAM) / L_kin(emulator)`` on thinned joint or kinematics draws.

    Kinematics fits sample the distance ratio only; the likelihood depends on nothing else of
    the distances, so their draws stand for :func:`~.model.kinematic_distances`.

    Returns ESS (absolute and as a fraction of the draws) and each paper parameter's shift
    (weighted mean - mean) / sd.
    """
    import jax
    import jax.numpy as jnp

    from skinn_jax.likelihood import gaussian_log_likelihood

    from .kinematics import emulator_params, kinematic_distances, sky_params
    from .mocks.kinematics import jam_distances, jam_truth_bins
    from .model import RATIO

    result, setup, data = per_mode["result"], per_mode["setup"], per_mode["data"]
    post = result.idata.posterior
    needed = (
        "theta_E", "gamma", "q_mass", "q_light", "r_sersic_ratio", "n_sersic", "beta_z",
        "inclination_deg", "phi", "center_x", "center_y",
    )  # fmt: skip
    flat = {name: np.asarray(post[name]).reshape(-1) for name in needed}
    if "D_dt" in post:
        flat["D_dt"], flat["D_d"] = (np.asarray(post[n]).reshape(-1) for n in ("D_dt", "D_d"))
    else:
        flat["D_dt"], flat["D_d"] = (
            np.asarray(d) for d in kinematic_distances(np.asarray(post[RATIO]).reshape(-1))
        )
    needed += ("D_dt", "D_d")
    total = flat["theta_E"].size
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(total, size=min(n_draws, total), replace=False))
    lik = setup.kinematics
    log_emu, log_jam = [], []
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        for i in idx:
            values = {name: jnp.asarray(flat[name][i]) for name in needed}
            params = np.asarray(emulator_params(values))
            sky = sky_params({k: float(v) for k, v in values.items()})
            log_emu.append(float(lik(jnp.asarray(params), sky)))
            vrms = jam_truth_bins(lik.forward, params, sky, jam_distances(sky, data.kinematics.z_d))
            residual = jnp.asarray(vrms) - jnp.asarray(data.kinematics.vrms)
            log_jam.append(float(gaussian_log_likelihood(residual, data.kinematics.cholesky)))
    delta = np.array(log_jam) - np.array(log_emu)
    w = np.exp(delta - delta.max())
    w /= w.sum()
    ess = 1.0 / np.sum(w**2)
    shifts = {}
    for name in PAPER_PARAMETERS:
        x = _flat_draws(result.idata, name)
        if x is None:
            continue
        x = x[idx]
        sd = x.std(ddof=1)
        shifts[name] = float((np.sum(w * x) - x.mean()) / sd) if sd > 0 else 0.0
    return {
        "n_draws": int(idx.size),
        "ess": float(ess),
        "ess_fraction": float(ess / idx.size),
        "delta_log_l_mean": float(delta.mean()),
        "delta_log_l_sd": float(delta.std()),
        "shift_in_sd": shifts,
        "seconds": time.perf_counter() - t0,
    }


def plot_fig9(results: dict, modes, path: Path) -> None:
    """Paper Fig. 9: draws minus truth for the 13 parameters and D_dt / D_d, stacked over systems,
    per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"lensing": "tab:blue", "kinematics": "tab:orange", "joint": "tab:green"}
    fig, axes = plt.subplots(3, 5, figsize=(17, 9.5))
    for ax, name in zip(np.ravel(axes), STUDY_PARAMETERS, strict=False):
        for mode in modes:
            deltas = [x - truth for x, truth in _draws_and_truths(results, mode, name)]
            deltas = [np.degrees(d) if name == "phi" else d for d in deltas]
            if deltas:
                ax.hist(
                    np.concatenate(deltas), bins=40, histtype="step", density=True,
                    color=colors.get(mode), label=mode,
                )  # fmt: skip
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_xlabel(f"Δ {name}" + (" [deg]" if name == "phi" else ""))
        ax.set_yticks([])
    for ax in np.ravel(axes)[len(STUDY_PARAMETERS) :]:
        ax.axis("off")
    np.ravel(axes)[0].legend(fontsize=8)
    fig.suptitle(f"posterior draws - truth, stacked over {len(results)} mock systems", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _draws_and_truths(results: dict, mode: str, name: str):
    """``(flat posterior draws, stored truth)`` of ``name`` in every fit of ``mode`` that has
    both."""
    for per in results.values():
        if mode not in per:
            continue
        x = _flat_draws(per[mode]["result"].idata, name)
        truth = stored_truth(per[mode], name)
        if x is not None and truth is not None:
            yield x, truth


def truth_quantiles(results: dict, mode: str) -> dict[str, np.ndarray]:
    """Per parameter of :data:`STUDY_PARAMETERS`, the posterior quantile of the truth in each fit
    of ``mode`` (fraction of draws below it), over the systems: uniform on [0, 1] if calibrated."""
    out = {}
    for name in STUDY_PARAMETERS:
        u = [
            float(np.mean(x < truth))
            for x, truth in _draws_and_truths(results, mode, name)
            if np.isfinite(truth)
        ]
        if u:
            out[name] = np.asarray(u)
    return out


def pp_curve(u: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Fraction of truths inside the central credible interval of each level (P-P coverage)."""
    u = np.asarray(u, float)
    return np.array([np.mean(np.abs(u - 0.5) <= level / 2) for level in levels])


def pooled_quantiles(per_name: dict[str, np.ndarray], mode: str) -> np.ndarray:
    """Quantiles pooled over parameters (without ``D_dt / D_d`` where D_dt and D_d are there,
    as in :func:`coverage_table`)."""
    names = [n for n in per_name if n != RATIO or not {"D_dt", "D_d"} & set(per_name)]
    return np.concatenate([per_name[n] for n in names]) if names else np.zeros(0)


def plot_pp(results: dict, modes, path: Path, converged: dict | None = None) -> None:
    """P-P (calibration) plot per mode: for credible levels 0-1, the fraction of truths inside
    the central interval, per parameter (thin) and pooled (thick, with the binomial 95 % band of
    a calibrated study of that size); dashed: pooled over the fits that ``converged``
    (``{(k, mode): bool}``) only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = np.linspace(0.0, 1.0, 101)
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 4.6), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        per_name = truth_quantiles(results, mode)
        for u in per_name.values():
            ax.plot(levels, pp_curve(u, levels), color="0.7", lw=0.8)
        pooled = pooled_quantiles(per_name, mode)
        if pooled.size:
            band = 1.96 * np.sqrt(levels * (1 - levels) / pooled.size)
            ax.fill_between(levels, levels - band, levels + band, color="tab:blue", alpha=0.2,
                            lw=0, label="95 % band (calibrated)")  # fmt: skip
            ax.plot(levels, pp_curve(pooled, levels), color="k", lw=2,
                    label=f"pooled ({pooled.size} truths)")  # fmt: skip
        if converged is not None:
            kept = {k: {mode: per[mode]} for k, per in results.items()
                    if mode in per and converged.get((k, mode))}  # fmt: skip
            sub = pooled_quantiles(truth_quantiles(kept, mode), mode)
            if sub.size:
                ax.plot(levels, pp_curve(sub, levels), "k--", lw=1.2,
                        label=f"converged fits ({len(kept)}, {sub.size} truths)")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="tab:red", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("credible level of the central interval")
        ax.set_ylabel("fraction of truths inside")
        ax.set_title(f"{mode} ({sum(mode in per for per in results.values())} fits)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reassess(per_mode: dict):
    """The convergence policy's :class:`~skinn_jax.inference.convergence.Verdict` of a stored fit
    (its posterior draws and NUTS statistics), whatever criteria it was made with."""
    from .fit import FitSettings, assess_draws, parameter_boxes, reported_names

    result, setup = per_mode["result"], per_mode["setup"]
    post, stats = result.idata.posterior, result.idata.sample_stats
    names = [n for n in reported_names(setup.mode) if n in post]
    samples = {n: np.asarray(post[n]) for n in names}
    extra = {"diverging": np.asarray(stats["diverging"]), "num_steps": np.asarray(stats["n_steps"])}
    depth = int(result.report.get("settings", {}).get("max_tree_depth", 8))
    return assess_draws(
        samples, extra, names, parameter_boxes(setup), FitSettings(max_tree_depth=depth)
    )


def markdown(summary: dict) -> str:
    """The study's tables as Markdown."""
    lines = [f"# Mock-system study: {summary['n_systems']} systems, modes {summary['modes']}", ""]
    sections = [("## Coverage", summary["coverage"])]
    if "coverage_converged" in summary:
        n_conv = ", ".join(f"{m} {n}" for m, n in summary.get("n_converged", {}).items())
        if "n_mixed" in summary:
            n_mixed = ", ".join(f"{m} {n}" for m, n in summary["n_mixed"].items())
            lines += [
                f"Converged by the policy (R-hat <= 1.01, bulk and tail ESS >= 400, no "
                f"divergences): {n_conv}. By R-hat and ESS alone (the issue's definition): "
                f"{n_mixed}. Fits per mode: "
                + ", ".join(
                    f"{m} {sum(1 for row in summary['timings'] if row['mode'] == m)}"
                    for m in summary["modes"]
                )
                + ".",
                "",
            ]
        sections.append(
            (
                "## Coverage, converged fits only (R-hat <= 1.01, bulk and tail ESS >= 400, no "
                f"divergences; converged fits: {n_conv})",
                summary["coverage_converged"],
            )
        )
    for title, coverage in sections:
        lines += [title, ""]
        for mode, rows in coverage.items():
            lines += [
                f"**{mode}**",
                "",
                "| parameter | K | 68 % | 95 % | mean pull |",
                "|---|---|---|---|---|",
            ]
            for name, r in rows.items():
                lines.append(
                    f"| {name} | {r['n']} | {r['cov68']:.2f} ± {r['cov68_err']:.2f} | "
                    f"{r['cov95']:.2f} ± {r['cov95_err']:.2f} | "
                    f"{r['mean_pull']:+.2f} ± {r['mean_pull_err']:.2f} |"
                )
            lines.append("")
    lines += ["## Posterior widths (sd)", "", "| system | " + " | ".join(
        sorted({c for row in summary["widths"].values() for c in row})) + " |"]  # fmt: skip
    cols = sorted({c for row in summary["widths"].values() for c in row})
    lines.append("|---" * (len(cols) + 1) + "|")
    for k, row in summary["widths"].items():
        lines.append(
            f"| {k} | " + " | ".join(f"{row.get(c, float('nan')):.4g}" for c in cols) + " |"
        )
    if summary.get("width_ratios"):
        lines += ["", "sd(mode) / sd(joint), over systems:", "", "| parameter | mode | K | median |"
                  " range |", "|---|---|---|---|---|"]  # fmt: skip
        for name, r in summary["width_ratios"].items():
            lines.append(
                f"| {name} | {r.get('mode', 'lensing')} | {r['n']} | {r['median']:.2f} | "
                f"{r['min']:.2f}-{r['max']:.2f} |"
            )
    lines += ["", "## Importance reweighting by JAM truth", ""]
    for mode, per_system in summary["reweighting"].items():
        for k, r in per_system.items():
            shifts = ", ".join(f"{n} {v:+.2f}" for n, v in r["shift_in_sd"].items())
            lines.append(
                f"- system {k} ({mode}): {r['n_draws']} draws, ESS {r['ess']:.1f} "
                f"({100 * r['ess_fraction']:.0f} %), Δlog L = {r['delta_log_l_mean']:.2f} ± "
                f"{r['delta_log_l_sd']:.2f}; shifts in σ: {shifts}"
            )
    lines += [
        "",
        "## Timings",
        "",
        "| system | mode | fit s | evaluations | sampling ms / evaluation of a chain | converged |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for row in summary["timings"]:
        lines.append(
            f"| {row['system']} | {row['mode']} | {row['fit_s']:.0f} | {row['evaluations']} | "
            f"{row['chain_ms_per_eval']:.1f} | {row['converged']} |"
        )
    if any("policy" in row for row in summary["timings"]):
        lines += ["", "## Convergence by the policy (docs/convergence.md), re-assessed from the "
                  "stored draws", ""]  # fmt: skip
        lines += [f"- system {row['system']} {row['mode']}: {row['policy']}"
                  for row in summary["timings"] if "policy" in row]  # fmt: skip
    return "\n".join(lines) + "\n"


def timing_row(k: int, mode: str, fit: dict, policy_line: str) -> dict:
    """The study's timing-table row of system ``k`` in ``mode`` (``fit``: ``{"result", "wall_s"}``
    as :func:`run_fits` gives it)."""
    from .fit import chain_ms_per_evaluation

    report = fit["result"].report
    timings, evaluations = report["timings_s"], report["evaluations"]
    return {
        "system": k,
        "mode": mode,
        "wall_s": fit["wall_s"],
        "fit_s": sum(
            timings.get(key, 0.0)
            for key in ("compile_potential_s", "map_s", "warmup_s", "sampling_s")
        ),
        "evaluations": evaluations["total"],
        "chain_ms_per_eval": chain_ms_per_evaluation(
            timings["sampling_s"], evaluations["sampling"], report["settings"]["num_chains"]
        ),
        "converged": report["diagnostics"]["converged"],
        "policy": policy_line,
    }


def main(argv: list[str] | None = None) -> int:
    import os

    import numpyro

    from skinn_jax.cli import add_convergence_flags

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/study"))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--params-source", default="auto", choices=["auto", "test", "box"])
    parser.add_argument("--test-set", type=Path, default=Path("data/test"))
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument(
        "--scheduler",
        default=None,
        help="dask.distributed scheduler address (tcp://HOST:8786): one fit per task there; "
        "complete fits are skipped (docs/convergence.md, 'A study on a cluster')",
    )
    parser.add_argument("--reweight-systems", type=int, nargs="*", default=None)
    parser.add_argument("--reweight-draws", type=int, default=200)
    parser.add_argument("--figures", type=Path, default=None, help="e.g. docs/figures")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--replace-changed",
        action="store_true",
        help="refit (deleting them) the fits in --out made with other inputs; without it such a "
        "fit stops the run and is kept",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="fit nothing: report on the fits already complete in --out",
    )
    add_convergence_flags(parser)
    args = parser.parse_args(argv)

    numpyro.set_host_device_count(max(args.chains, 1))
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    jax.config.update("jax_enable_x64", True)
    from .fit import use_compilation_cache

    use_compilation_cache()  # a fit resumed or run again loads what it compiled
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = run_fits(args)
    if not args.report_only:
        print(f"fits complete in {args.out}; report with --report-only")
        return 0
    coverage = coverage_table(results, args.modes)
    verdicts = {
        (k, mode): reassess(per[mode]) for k, per in results.items() for mode in args.modes
        if mode in per
    }  # fmt: skip
    converged = {key: v.converged for key, v in verdicts.items()}
    kept = {
        k: {m: per[m] for m in args.modes if m in per and converged[(k, m)]}
        for k, per in results.items()
    }
    reweight_systems = (
        args.reweight_systems if args.reweight_systems is not None else args.systems[:1]
    )
    reweighting = {}
    for mode in ("joint", "kinematics"):
        for k in reweight_systems:
            if mode in args.modes and results.get(k, {}).get(mode, {}).get("rebuilt_matches"):
                reweighting.setdefault(mode, {})[k] = reweight(
                    results[k][mode], args.reweight_draws
                )
    timings = [
        timing_row(k, mode, per[mode], verdicts[(k, mode)].line)
        for k, per in results.items()
        for mode in args.modes
        if mode in per
    ]
    summary = {
        "n_systems": len(results),
        "modes": list(args.modes),
        "coverage": coverage,
        "n_converged": {
            m: sum(c for (_, mm), c in converged.items() if mm == m) for m in args.modes
        },  # fmt: skip
        "n_mixed": {
            m: sum(v.mixed for (_, mm), v in verdicts.items() if mm == m) for m in args.modes
        },  # fmt: skip
        "coverage_converged": coverage_table(kept, args.modes),
        "widths": widths(results),
        "width_ratios": width_ratios(widths(results)),
        "reweighting": reweighting,
        "timings": timings,
        "wall_s": time.perf_counter() - t0,
    }
    if args.figures:
        plot_fig9(results, args.modes, Path(args.figures) / "inference_study_fig9.png")
        plot_pp(results, args.modes, Path(args.figures) / "inference_study_pp.png", converged)
    (args.out / "study.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "study.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
