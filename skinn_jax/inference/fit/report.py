"""Outputs of a fit: posterior table, convergence verdict, ArviZ data, figures, Markdown.

Imports: :mod:`skinn_jax.inference.model`, :mod:`skinn_jax.inference.predict`,
:mod:`skinn_jax.inference.convergence`, :mod:`.settings`, :mod:`.map`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..convergence import Verdict, assess, ess, rhat
from ..data import SystemData
from ..model import PAPER_PARAMETERS, RATIO, ModelSetup, site_names
from ..predict import Prediction, predict
from .settings import (
    FitResult,
    FitSettings,
    _atomic_write_text,
    _chain_method,
    _clear,
    _json_default,
    _load_state,
    _log,
)

DERIVED_SUMMARY = (
    "theta_E",
    "q_mass",
    "phi",
    "r_sersic",
    "lens_mag",
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
site of kinematics mode only, where ``theta_E`` is derived from the sampled
``log_ratio_theta_E`` and ``theta_E_fraction``)."""


def reported_names(mode: str) -> list[str]:
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


def _panels(fig, ax, ext, data_img, model_img, residual, limit, stretch, titles):
    """Data, model (same ``stretch``) and normalised residual (±``limit``) panels; returns the
    model panel's image."""
    ax[0].imshow(data_img, origin="lower", extent=ext, **stretch)
    im = ax[1].imshow(model_img, origin="lower", extent=ext, **stretch)
    res = ax[2].imshow(residual, origin="lower", extent=ext, vmin=-limit, vmax=limit,
                       cmap="RdBu_r")  # fmt: skip
    ax[0].set_title(titles[0])
    ax[1].set_title(f"model ({titles[1]})")
    ax[2].set_title("(data - model) / σ")
    fig.colorbar(res, ax=ax[2], fraction=0.046)
    return im


def plot_fit(
    data: SystemData,
    setup: ModelSetup,
    values: dict,
    path: Path,
    title: str = "",
    pred: Prediction | None = None,
) -> Prediction:
    """Data, model and normalised residuals (imaging and kinematics) at ``values``; returns the
    model's :class:`~skinn_jax.inference.predict.Prediction` there (``pred``: already made)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = predict(data, setup, values) if pred is None else pred
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
            scale = 3 * np.median(noise)
            stretch = dict(vmax=np.arcsinh(img.max() / scale), cmap="magma")
            chi2 = f"χ² = {pred.chi2['imaging']:.0f} / {img.size} pixels"
            _panels(fig, ax, setup.imaging.extent, np.arcsinh(img / scale),
                    np.arcsinh(pred.image / scale), (img - pred.image) / noise, 4, stretch,
                    ("imaging data (asinh)", chi2))  # fmt: skip
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
            stretch = dict(vmin=np.nanmin(kin.vrms), vmax=np.nanmax(kin.vrms))
            chi2 = f"χ² = {pred.chi2['kinematics']:.1f} / {kin.n_bins} bins"
            im = _panels(fig, ax, ext, kin.bins_to_image(kin.vrms), kin.bins_to_image(pred.vrms),
                         kin.bins_to_image((kin.vrms - pred.vrms) / sigma), 3, stretch,
                         ("binned v_rms data [km/s]", chi2))  # fmt: skip
            fig.colorbar(im, ax=ax[1], fraction=0.046)
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
    names = [n for n in reported_names(setup.mode) if n in samples]
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
        "metric_correction": warm_stats.get("metric"),
        "source_mask": state.get("source_mask"),
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

    # the prediction at the best draw (a compiled trace of the model, seconds) in a thread while
    # the posterior is written and the corner plot drawn (XLA compiles without the GIL); the
    # thread gets this one's float64 setting (`jax.enable_x64` is a thread-local context)
    import jax

    best = _best_sample(samples, extra, site_names(setup.mode))
    x64 = bool(jax.config.jax_enable_x64)

    def predict_here():
        with jax.enable_x64(x64):
            return predict(data, setup, best)

    with ThreadPoolExecutor(1) as pool:
        prediction = pool.submit(predict_here)
        tmp_nc = out_dir / "posterior.tmp.nc"
        idata.to_netcdf(str(tmp_nc))
        tmp_csv = out_dir / "summary.tmp.csv"
        table.to_csv(tmp_csv)
        tmp_corner = out_dir / "corner.tmp.png"
        plot_corner(samples, truths, setup.mode, tmp_corner, title)
        pred = prediction.result()
    tmp_fit = out_dir / "fit.tmp.png"
    plot_fit(data, setup, best, tmp_fit, title + " (highest-posterior draw)", pred)
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
