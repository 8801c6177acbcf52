"""The ``skinn-jax`` command line.

Subcommands::

    skinn-jax jam-map   [--params P0 ... P7] [--out map.png]       one JAM v_rms map, plotted
    skinn-jax generate  --n N --seed S --out data/NAME [--workers W] [--scheduler ADDR]
    skinn-jax mge-table                                    rebuild the MGE dispersion table
    skinn-jax train     --config FILE [--max-steps N]                 train (resumable)
    skinn-jax train-baseline [--n-train N] [--components K]           PCA + MLP baseline
    skinn-jax factorise-basis SOURCE --rank R --export DIR     factorised (faster) PCA basis
    skinn-jax evaluate  [NAME_OR_DIR ...] [--test data/test]          accuracy report in docs/
    skinn-jax fit-mock  [--system K] [--mode joint|lensing|kinematics] [--out DIR]
                        [--checkpoint PATH]             joint lensing + kinematics fit of a mock

Every argument is checked before any work starts: a bad one is reported on one line naming the
flag, the value and the rule, with exit code 2 and no traceback (``skinn-jax --debug ...`` shows
the traceback of errors found later). A checkpoint is a shipped one by bare name (``cips``) or a
directory given as a path (``./cips``, ``runs/x``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from .checks import arg_float, arg_int
from .params import PAPER_SPACE, PARAM_NAMES, PARAM_UNITS, TYPICAL_PARAMS, space_named

MIN_RADII, MIN_ANGLES = 4, 3
"""Smallest JAM polar grid: the cubic spline needs 4 radii, the mirrored angles 3 angles."""


class UsageError(ValueError):
    """A bad argument found after parsing (reported like argparse's errors, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, reporting a bad argument on one line (flag, value, rule), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a JAM data set (resumable)")
    p.add_argument("--n", type=arg_int(1), required=True, help="number of maps (>= 1)")
    p.add_argument("--seed", type=arg_int(0), required=True, help="data-set seed (>= 0)")
    p.add_argument("--out", type=Path, required=True, help="output directory, e.g. data/train")
    p.add_argument(
        "--workers", type=arg_int(1), default=None, help="local processes (default: all cores)"
    )
    p.add_argument(
        "--shard-size",
        type=arg_int(1),
        default=None,
        help="maps per shard file (default: the existing data set's, else at least 4 shards per "
        "worker and at most 50 maps, so that a kill loses a minute or two per worker)",
    )
    p.add_argument("--scheduler", default=None, help="dask.distributed scheduler address")
    p.add_argument(
        "--n-radii", type=arg_int(MIN_RADII), default=None, help="JAM polar grid: radii (>= 4)"
    )
    p.add_argument(
        "--n-angles", type=arg_int(MIN_ANGLES), default=None, help="JAM polar grid: angles (>= 3)"
    )
    p.add_argument(
        "--space",
        choices=("paper", "real-lens"),
        default="paper",
        help="parameter space: the paper's box (8 parameters) or the real-lens box (9, r_core)",
    )


def _run_generate(args) -> int:
    from skinn_jax.training.generate import generate
    from skinn_jax.training.jam import DEFAULT_SETTINGS, JamSettings

    _check_out_dir(args.out)
    settings = JamSettings(
        n_radii=DEFAULT_SETTINGS.n_radii if args.n_radii is None else args.n_radii,
        n_angles=DEFAULT_SETTINGS.n_angles if args.n_angles is None else args.n_angles,
    )
    ds = generate(
        args.out,
        args.n,
        args.seed,
        workers=args.workers,
        shard_size=args.shard_size,
        settings=settings,
        scheduler=args.scheduler,
        space=space_named(args.space),
    )
    m = ds.manifest
    print(
        f"{ds.n_maps} maps in {args.out}; CPU {m['cpu_seconds']:.0f} s "
        f"({m['cpu_seconds'] / max(ds.n_maps, 1):.3f} s/map)"
    )
    return 0


def _add_jam_map(sub) -> None:
    p = sub.add_parser("jam-map", help="compute and plot one JAM v_rms map")
    p.add_argument(
        "--params",
        type=float,
        nargs=8,
        default=TYPICAL_PARAMS,
        metavar=tuple(n.upper() for n in PARAM_NAMES),
        help="the eight parameters in order "
        + ", ".join(
            f"{n} [{u}]" if u else n for n, u in zip(PARAM_NAMES, PARAM_UNITS, strict=True)
        ),
    )
    p.add_argument("--out", type=Path, default=Path("jam_map.png"), help="PNG to write")
    p.add_argument("--npy", type=Path, default=None, help="also save the 551x551 map (.npy)")


def _check_params_flag(params) -> np.ndarray:
    try:
        return PAPER_SPACE.validate(np.asarray(params))
    except ValueError as err:
        raise UsageError(f"argument --params: {err}") from None


def _check_file_target(path: Path | None, flag: str) -> None:
    """A file to write: its directory must exist and it must not be a directory."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"argument {flag}: {path} is a directory, not a file")
    if not path.parent.is_dir():
        raise UsageError(f"argument {flag}: directory {path.parent} does not exist")


def _check_out_dir(path: Path, flag: str = "--out") -> None:
    from .checks import writable_directory

    try:
        writable_directory(path, flag)
    except ValueError as err:
        raise UsageError(f"argument {err}") from None


def _run_jam_map(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from skinn_jax.grid import HALF_WIDTH_ARCSEC, mirror_quadrant
    from skinn_jax.training.jam import jam_quadrant

    _check_params_flag(args.params)
    _check_file_target(args.out, "--out")
    _check_file_target(args.npy, "--npy")
    with tqdm(total=2, desc="JAM map", unit="step") as bar:
        jam = jam_quadrant(np.asarray(args.params))
        bar.update()
        full = mirror_quadrant(jam.vrms)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ext = (-HALF_WIDTH_ARCSEC - 0.01, HALF_WIDTH_ARCSEC + 0.01) * 2
        im = ax.imshow(full, origin="lower", extent=ext, cmap="viridis")
        fig.colorbar(im, ax=ax, label=r"$v_{\rm rms}$ [km/s]")
        ax.set_xlabel("x (major axis) [arcsec]")
        ax.set_ylabel("y [arcsec]")
        ax.set_title(
            ", ".join(f"{n}={v:g}" for n, v in zip(PARAM_NAMES[:4], args.params, strict=False)),
            fontsize=8,
        )
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        bar.update()
    if args.npy:
        np.save(args.npy, full)
    print(
        f"wrote {args.out}: v_rms {full.min():.1f}-{full.max():.1f} km/s, "
        f"{jam.n_zero} zero pixels in the quadrant, MGE errors light {jam.light_rel_error:.2e} "
        f"mass {jam.mass_rel_error:.2e}"
    )
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an emulator network (resumable)")
    p.add_argument("--config", type=Path, required=True, help="JSON training config")
    p.add_argument(
        "--max-steps",
        type=arg_int(1),
        default=None,
        help="stop after this many steps in this invocation (resume later)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing checkpoint at the config's `export` path",
    )
    p.add_argument(
        "--export-unfinished",
        action="store_true",
        help="export even if the run stops before its last step (default: only a finished run "
        "is exported)",
    )


def _run_train(args) -> int:
    from skinn_jax.training.train import TrainConfig, check_export_target, train

    if not args.config.is_file():
        raise UsageError(f"argument --config: {args.config} is not a file")
    cfg = TrainConfig.from_file(args.config)
    if cfg.export and (args.max_steps is None or args.export_unfinished):
        check_export_target(cfg.export, args.overwrite)  # a run that will export: check now
    result = train(
        cfg,
        max_steps_this_run=args.max_steps,
        overwrite=args.overwrite,
        export_unfinished=args.export_unfinished,
    )
    print(json.dumps(result, indent=1))
    return 0


def _add_baseline(sub) -> None:
    p = sub.add_parser("train-baseline", help="train the PCA + MLP baseline emulator")
    p.add_argument("--train", default="data/train")
    p.add_argument("--val", default="data/val")
    p.add_argument("--n-train", type=arg_int(1), default=None)
    p.add_argument("--components", type=arg_int(1), default=40)
    p.add_argument("--steps", type=arg_int(1), default=20000)
    p.add_argument("--batch", type=arg_int(1), default=256, help="maps per step")
    p.add_argument("--width", type=arg_int(1), default=256, help="coefficient-MLP width")
    p.add_argument("--depth", type=arg_int(1), default=4, help="coefficient-MLP hidden layers")
    p.add_argument(
        "--members",
        type=arg_int(1),
        default=1,
        help="coefficient MLPs trained independently and averaged (an ensemble)",
    )
    p.add_argument(
        "--learning-rate",
        type=arg_float(0.0, open_min=True),
        default=2e-3,
        help="peak learning rate",
    )
    p.add_argument(
        "--pca-maps", type=arg_int(1), default=6000, help="maps used to fit the PCA basis"
    )
    p.add_argument(
        "--target",
        default="u",
        choices=["u", "v"],
        help="basis space: normalised second moment u or velocity v",
    )
    p.add_argument(
        "--clipped",
        action="store_true",
        help="fit the clipped truth (0 where JAM's second moment is < 0) instead of the signed "
        "second moment (needs data sets of format version 2)",
    )
    p.add_argument(
        "--negative-scale",
        type=arg_float(0.0),
        default=0.0,
        help="compress negative signed targets u to e tanh(u/e) (0: off)",
    )
    p.add_argument(
        "--basis-rank",
        type=arg_int(0, 276),
        default=0,
        help="factorise the exported basis to this rank (0: dense; see factorise-basis)",
    )
    p.add_argument(
        "--cusp-weight",
        action="store_true",
        help="emulate the cusp-weighted second moment (bounded at a singular centre); the "
        "real-lens emulators use it",
    )
    p.add_argument("--export", default="checkpoints/pca")


def _add_factorise(sub) -> None:
    p = sub.add_parser(
        "factorise-basis", help="re-export a dense PCA checkpoint with a factorised basis"
    )
    p.add_argument("source", help="dense pca checkpoint: shipped name or directory")
    p.add_argument(
        "--rank", type=arg_int(1, 276), default=80, help="rank of the row and column factors"
    )
    p.add_argument("--export", required=True, help="output checkpoint directory")
    p.add_argument("--val", default="data/val", help="validation set for the error report")
    p.add_argument("--n-val", type=arg_int(1), default=200)


def _run_factorise(args) -> int:
    from skinn_jax.emulator import resolve_checkpoint
    from skinn_jax.training.baseline import factorise_checkpoint

    source = resolve_checkpoint(args.source)
    _check_data_set(args.val, "--val")
    report = factorise_checkpoint(str(source), args.rank, args.export, args.val, args.n_val)
    print(json.dumps(report, indent=1))
    return 0


def _run_baseline(args) -> int:
    from skinn_jax.training.baseline import BaselineConfig, train_baseline

    cfg = BaselineConfig(
        train_data=args.train,
        val_data=args.val,
        n_train=args.n_train,
        n_components=args.components,
        steps=args.steps,
        batch=args.batch,
        mapping_width=args.width,
        mapping_depth=args.depth,
        learning_rate=args.learning_rate,
        n_pca_maps=args.pca_maps,
        target=args.target,
        signed=not args.clipped,
        negative_scale=args.negative_scale,
        basis_rank=args.basis_rank,
        cusp_weight=args.cusp_weight,
        n_members=args.members,
        export=args.export,
    )
    print(json.dumps(train_baseline(cfg), indent=1))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate emulators on the held-out test set")
    p.add_argument(
        "emulators",
        nargs="*",
        default=["pca64s", "pca64", "cips"],
        help="shipped checkpoint names or checkpoint directories",
    )
    p.add_argument("--test", default="data/test")
    p.add_argument("--n", type=arg_int(1), default=None, help="first N test maps (default all)")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument(
        "--record",
        action="store_true",
        help="write the test metrics into each checkpoint's metadata",
    )


def _check_data_set(path, flag: str) -> None:
    if not (Path(path) / "manifest.json").is_file():
        raise UsageError(
            f"argument {flag}: {path} is not a data set (no manifest.json); make it with "
            "`skinn-jax generate`"
        )


def _run_evaluate(args) -> int:
    from skinn_jax.emulator import resolve_checkpoint
    from skinn_jax.training.evaluate import evaluate

    for name in args.emulators:  # every checkpoint before the test set and any work
        try:
            resolve_checkpoint(name)
        except FileNotFoundError as err:
            raise UsageError(f"argument emulators: {err}") from None
    _check_data_set(args.test, "--test")
    results = evaluate(args.emulators, args.test, args.n, args.docs, record=args.record)
    print(json.dumps(results, indent=1))
    return 0


def _add_fit_mock(sub) -> None:
    p = sub.add_parser(
        "fit-mock",
        help="build a mock lens system and fit it (MAP + NUTS); writes summary, corner, figures",
    )
    p.add_argument(
        "--system",
        type=arg_int(0),
        default=None,
        help="study mock system K (default: the built-in system, a typical lens independent of "
        "any data set; see skinn_jax.inference.mocks.system.BUILTIN_PARAMS)",
    )
    p.add_argument("--mode", default="joint", choices=["joint", "lensing", "kinematics"])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default runs/fit-mock/builtin-MODE or runs/fit-mock/K-MODE); "
        "a finished fit with other inputs there is never replaced without --force",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="shipped emulator checkpoint by name (cips), or a directory given as a path "
        "(./cips, runs/x); default: the shipped default",
    )
    p.add_argument(
        "--params-source",
        default="auto",
        choices=["auto", "test", "box"],
        help="with --system K: emulator parameters from the test set (data/test) or a seeded "
        "draw in the box (auto: the test set if present)",
    )
    p.add_argument("--test-set", type=Path, default=Path("data/test"))
    p.add_argument(
        "--warmup", type=arg_int(1), default=None, help="NUTS warm-up iterations per chain"
    )
    p.add_argument("--samples", type=arg_int(1), default=None, help="posterior draws per chain")
    p.add_argument("--chains", type=arg_int(1), default=4, help="number of chains (default 4)")
    add_convergence_flags(p)
    p.add_argument(
        "--chunks",
        type=arg_int(1),
        default=None,
        help="checkpointed sampling chunks (1 to the number of draws)",
    )
    p.add_argument("--seed", type=arg_int(0), default=0)
    p.add_argument(
        "--force",
        action="store_true",
        help="delete what --out holds (a finished fit too) and start again",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_convergence_flags(p) -> None:
    """The convergence-policy flags of fit-mock and the study (docs/convergence.md)."""
    p.add_argument(
        "--max-samples",
        type=arg_int(1),
        default=None,
        help="budget of the convergence policy: draws per chain at most (default 4000)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="budget of the convergence policy: minutes of MAP + warm-up + sampling at most "
        "(default 240)",
    )
    p.add_argument(
        "--no-converge",
        action="store_true",
        help="draw --samples per chain and only report R-hat/ESS (default: extend the sampling "
        "until R-hat <= 1.01 and bulk and tail ESS >= 400, or the budget is spent)",
    )


def convergence_changes(args, num_samples: int | None = None) -> dict:
    """:class:`FitSettings` fields of the convergence flags (those given); without
    ``--max-samples``, a ``num_samples`` above the default budget raises the budget to it."""
    from skinn_jax.inference.fit import FitSettings

    changes = {}
    if args.max_samples is not None:
        if num_samples is not None and args.max_samples < num_samples:
            raise UsageError(
                f"argument --max-samples: {args.max_samples}: must be >= --samples ({num_samples})"
            )
        changes["max_samples"] = args.max_samples
    elif num_samples is not None and num_samples > FitSettings.max_samples:
        changes["max_samples"] = num_samples
    if args.max_minutes is not None:
        if not (args.max_minutes > 0 and math.isfinite(args.max_minutes)):
            raise UsageError(
                f"argument --max-minutes: {args.max_minutes}: must be a finite number > 0"
            )
        changes["max_wall_s"] = 60.0 * args.max_minutes
    if args.no_converge:
        changes["converge"] = False
    return changes


def _fit_mock_settings(args):
    """The :class:`FitSettings` of the flags, checked (before any work)."""
    import dataclasses

    from skinn_jax.inference.fit import default_settings

    settings = default_settings(args.mode)
    changes = {"num_chains": args.chains, "seed": args.seed, "progress_bar": not args.no_progress}
    changes.update(convergence_changes(args, args.samples))
    for name, value in (
        ("num_warmup", args.warmup),
        ("num_samples", args.samples),
        ("sample_chunks", args.chunks),
    ):
        if value is not None:
            changes[name] = value
    if args.samples is not None and args.chunks is None:  # fewer draws than default chunks
        changes["sample_chunks"] = min(settings.sample_chunks, args.samples)
    if changes.get("sample_chunks", 1) > changes.get("num_samples", settings.num_samples):
        raise UsageError(
            f"argument --chunks: {changes['sample_chunks']} chunks of "
            f"{changes.get('num_samples', settings.num_samples)} draws: must be <= the number of "
            "draws (--samples)"
        )
    try:
        return dataclasses.replace(settings, **changes)
    except ValueError as err:  # e.g. --max-samples below --samples
        raise UsageError(str(err)) from None


def _run_fit_mock(args) -> int:
    import os
    import time

    from skinn_jax.emulator import resolve_checkpoint

    t0 = time.perf_counter()
    builtin = args.system is None
    k, params_source = (0, "builtin") if builtin else (args.system, args.params_source)
    label = "builtin" if builtin else str(k)
    out = args.out or Path("runs") / "fit-mock" / f"{label}-{args.mode}"
    # every check before JAX is configured (and before any work)
    _check_out_dir(out)
    settings = _fit_mock_settings(args)
    if args.mode != "lensing":
        try:
            resolve_checkpoint(args.checkpoint)
        except FileNotFoundError as err:
            raise UsageError(f"argument --checkpoint: {err}") from None

    # one host device per chain, before JAX starts its backend (parallel chains on CPU)
    import numpyro

    numpyro.set_host_device_count(max(args.chains, 1))
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    jax.config.update("jax_enable_x64", True)
    from skinn_jax.inference.fit import use_compilation_cache
    from skinn_jax.inference.fit.settings import CACHE_ENV

    cache = use_compilation_cache()  # a fit run again loads what it compiled

    from skinn_jax.inference.kinematics import PAPER_BOX_EMULATOR, load_emulator
    from skinn_jax.inference.mocks.fit import fit_mock
    from skinn_jax.inference.mocks.system import describe, make_mock_system, plot_mock_system
    from skinn_jax.inference.model import uses_kinematics

    out.mkdir(parents=True, exist_ok=True)
    print(
        f"skinn-jax fit-mock: system {label}, mode {args.mode}, out {out}; "
        f"{settings.num_chains} chains x ({settings.num_warmup} warm-up + {settings.num_samples} "
        f"draws), dense mass matrix "
        f"({'adapted' if settings.adapt_mass_matrix else 'Laplace'}), "
        f"{jax.local_device_count()} host devices, float64; compiled programs "
        + (f"kept in {cache} (${CACHE_ENV}=off: not kept)" if cache else "not kept"),
        flush=True,
    )
    system = make_mock_system(k, params_source=params_source, test_set=args.test_set)
    print(describe(system), flush=True)
    plot_mock_system(system, out / "mock.png")
    kinematic = uses_kinematics(args.mode)
    emulator = load_emulator(args.checkpoint) if kinematic else None
    meta = {
        "label": "built-in mock system" if builtin else f"mock system {k}",
        "system": label,
        "test_index": system.test_index,
        "params_source": system.params_source,
        # (the weights actually used: the paper-box emulator when none is named)
        "checkpoint": str(args.checkpoint or PAPER_BOX_EMULATOR) if kinematic else "none",
    }
    result = fit_mock(
        system, args.mode, out, emulator=emulator, settings=settings, meta=meta, force=args.force
    )["result"]
    print((out / "summary.md").read_text())
    diag = result.report["diagnostics"]
    wall = time.perf_counter() - t0
    print(
        f"wall time {wall:.0f} s; outputs in {out}: "
        + ", ".join(["mock.png", "posterior.nc", "summary.md", "summary.csv", "corner.png"])
        + ", fit.png, report.json"
    )
    print(diag["line"])
    if not diag["converged"]:
        print("WARNING: the fit did not converge by the policy (docs/convergence.md)")
    return 0


def _run_mge_table(args) -> int:
    from skinn_jax.training.mge import save_table, save_wide_table

    if args.space == "real-lens":
        print(f"wrote {save_wide_table()}")
        return 0
    print(f"wrote {save_table()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="skinn-jax", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (before the command)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_jam_map(sub)
    _add_generate(sub)
    p = sub.add_parser(
        "mge-table",
        help="rebuild training/mge_table.npz, or mge_table_wide.npz with --space real-lens",
    )
    p.add_argument("--space", choices=("paper", "real-lens"), default="paper")
    _add_train(sub)
    _add_baseline(sub)
    _add_factorise(sub)
    _add_evaluate(sub)
    _add_fit_mock(sub)
    args = parser.parse_args(argv)
    commands = {
        "jam-map": _run_jam_map,
        "generate": _run_generate,
        "mge-table": _run_mge_table,
        "train": _run_train,
        "train-baseline": _run_baseline,
        "factorise-basis": _run_factorise,
        "evaluate": _run_evaluate,
        "fit-mock": _run_fit_mock,
    }
    from .checkpoint import CheckpointError

    try:
        return commands[args.command](args)
    except (ValueError, OSError, CheckpointError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())  # one line
        print(f"skinn-jax {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
