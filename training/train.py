"""Training of the emulator networks (``skinn-jax train --config FILE``), optax + orbax.

One step draws ``batch_maps`` random training maps and ``batch_pixels`` random quadrant pixels
(the same pixels for every map of the step, so the per-pixel features are computed once; CIPS's
pixel independence makes this exact). A fraction of the pixels is drawn inside 2" (where IFU
data constrain the model most) and inside 0.3" (the sharp core). The loss is the squared
v_rms error in units of the map's velocity scale plus a small term on the second moment that
keeps zero-valued regions (truth 0) at u <= 0.

Everything a resumed run needs is in the orbax checkpoint (weights, optimiser state, EMA weights,
step): the batch of step ``s`` is drawn from ``numpy.random.default_rng([seed, s])``, so the data
order after a resume is the one an uninterrupted run would have seen. The batch is sharded over
all local devices along the map axis (``jax.sharding``), so a multi-GPU node trains unchanged.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from skinn_jax.checkpoint import non_finite_weights, save_checkpoint
from skinn_jax.checks import check_float, check_int
from skinn_jax.grid import QUADRANT_SIZE, full_map_weights, quadrant_coordinates
from skinn_jax.networks import (
    NetworkConfig,
    compress_negative,
    count_parameters,
    cusp_weight,
    make_network,
    normalised_target,
    relative_velocity,
    velocity_scale,
)
from skinn_jax.params import PAPER_SPACE, ParamSpace

from .generate import DataSet


@dataclass
class TrainConfig:
    """Settings of a training run (a JSON file; every field optional)."""

    train_data: str = "data/train"
    val_data: str = "data/val"
    n_train: int | None = None
    """Use the first ``n_train`` maps. None: all maps finished when each invocation starts, so a
    run can follow a data set that is still being generated (each segment is logged in
    run_info.json; exact resumption then needs the same number of maps)."""
    n_val: int = 200
    network: NetworkConfig = field(default_factory=NetworkConfig)
    steps: int = 20000
    batch_maps: int = 32
    batch_pixels: int = 2048
    inner_fraction: float = 0.35
    core_fraction: float = 0.1
    learning_rate: float = 2e-3
    warmup_steps: int = 300
    final_lr_fraction: float = 0.01
    weight_decay: float = 1e-6
    ema_decay: float = 0.999
    second_moment_weight: float = 0.1
    signed: bool = True
    """Fit JAM's signed second moment (data format >= 2), smooth across the zero boundary, and
    clip only the output; False: the clipped truth with a hinge on zero pixels (format 1)."""
    negative_scale: float = 0.0
    """With ``signed``: compress negative targets to ``e tanh(u / e)`` (see
    :func:`skinn_jax.networks.compress_negative`)."""
    seed: int = 0
    checkpoint_every: int = 500
    eval_every: int = 1000
    out: str = "runs/cips"
    export: str | None = "checkpoints/cips"

    def __post_init__(self) -> None:
        """Check every setting (``ValueError`` naming it, its value and the rule)."""
        for name in ("steps", "batch_maps", "batch_pixels", "n_val", "checkpoint_every"):
            check_int(name, getattr(self, name), 1)
        check_int("eval_every", self.eval_every, 1)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("seed", self.seed, 0)
        if self.n_train is not None:
            check_int("n_train", self.n_train, 1)
        check_float("learning_rate", self.learning_rate, 0.0, open_min=True)
        for name in ("final_lr_fraction", "weight_decay", "second_moment_weight"):
            check_float(name, getattr(self, name), 0.0)
        check_float("negative_scale", self.negative_scale, 0.0)
        check_float("ema_decay", self.ema_decay, 0.0, 1.0, open_max=True)
        check_float("inner_fraction", self.inner_fraction, 0.0, 1.0)
        check_float("core_fraction", self.core_fraction, 0.0, 1.0 - self.inner_fraction)
        if not isinstance(self.network, NetworkConfig):
            raise ValueError(f"network = {self.network!r}: must be a NetworkConfig")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read and check a JSON config (``ValueError`` naming the file and the bad setting)."""
        try:
            raw = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"training config {path} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"training config {path} must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(
                f"unknown training-config keys {sorted(unknown)}; known: {sorted(known)}"
            )
        try:
            if "network" in raw:
                raw["network"] = NetworkConfig.from_dict(raw["network"])
            return cls(**raw)
        except (TypeError, ValueError) as err:
            raise ValueError(f"training config {path}: {err}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        return d


# -- data ------------------------------------------------------------------------------------------


def load_maps(
    path: str | Path, n: int | None = None, signed: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(params (N, P) float64, vrms (N, 276*276) float32, n_zero (N,))`` of the first n maps.

    With ``signed=True`` the maps are the signed velocity ``sign(v2) sqrt(|v2|)`` (km/s,
    ``vrms + vrms_negative`` of the shards, format version >= 2) instead of the clipped truth:
    smooth across the zero boundary, negative where JAM's second moment is.
    """
    ds = DataSet(path)
    total = ds.n_maps if n is None else n
    if total > ds.n_maps:
        raise ValueError(f"{path} has {ds.n_maps} finished maps, {total} requested")
    params = np.empty((total, ds.space.n_params))
    vrms = np.empty((total, QUADRANT_SIZE * QUADRANT_SIZE), np.float32)
    n_zero = np.empty(total, np.int64)
    if signed and ds.manifest.get("format_version", 1) < 2:
        raise ValueError(
            f"{path} has format version {ds.manifest.get('format_version', 1)}: signed maps "
            "need version 2 (regenerate it with `skinn-jax generate`)"
        )
    filled = 0
    for shard in ds.iter_shards():
        take = min(len(shard["params"]), total - filled)
        if take <= 0:
            break
        params[filled : filled + take] = shard["params"][:take]
        maps = shard["vrms"][:take]
        if signed:
            maps = maps + shard["vrms_negative"][:take]
        vrms[filled : filled + take] = maps.reshape(take, -1)
        n_zero[filled : filled + take] = shard["n_zero"][:take]
        filled += take
    if filled < total:
        raise ValueError(f"{path}: only {filled} contiguous maps available, {total} requested")
    return params, vrms, n_zero


def data_space(train_data: str | Path, val_data: str | Path) -> ParamSpace:
    """The parameter space of a training and a validation set (``ValueError`` if they differ)."""
    space, val_space = DataSet(train_data).space, DataSet(val_data).space
    if val_space is not space:
        raise ValueError(
            f"{train_data} ({space.name}) and {val_data} ({val_space.name}) are from different "
            "parameter spaces"
        )
    return space


class PixelSampler:
    """Pixel indices of the flattened quadrant: uniform, inside 2", inside 0.3"."""

    def __init__(self, inner_fraction: float, core_fraction: float):
        x, y = quadrant_coordinates()
        r = np.hypot(x, y).ravel()
        self.x = x.ravel().astype(np.float32)
        self.y = y.ravel().astype(np.float32)
        self.inner = np.flatnonzero(r < 2.0)
        self.core = np.flatnonzero(r < 0.3)
        self.inner_fraction = inner_fraction
        self.core_fraction = core_fraction

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        n_core = int(round(self.core_fraction * n))
        n_inner = int(round(self.inner_fraction * n))
        n_all = n - n_core - n_inner
        return np.concatenate(
            [
                rng.integers(0, self.x.size, n_all),
                rng.choice(self.inner, n_inner),
                rng.choice(self.core, n_core),
            ]
        )


# -- model, loss, step -----------------------------------------------------------------------------


def check_signed_target(signed: bool, target: str, fix: str) -> None:
    """Signed maps need the ``u`` output space: raise ``ValueError`` (ending in ``fix``) if not."""
    if signed and target != "u":
        raise ValueError(
            f"signed maps need target 'u' (the signed second moment is smooth across the zero "
            f"boundary; the signed velocity has a square-root cusp there): got target "
            f"{target!r}; {fix}"
        )


def predict_u(net, variables, p, x, y, space: ParamSpace = PAPER_SPACE):
    """Network output (B, n) for physical parameters p (B, P) of ``space`` at points (n,):
    the normalised second moment, times :func:`~skinn_jax.networks.cusp_weight` when
    ``net.config.cusp_weight``."""
    return net.apply(variables, space.normalise(p), x, y)


def _cusp(net, p, x, y):
    """The cusp weight (B, n) at points (n,) if the network emulates ``w u``, else 1."""
    if not net.config.cusp_weight:
        return jnp.ones((), p.dtype)
    return cusp_weight(p, jnp.hypot(x, y)[None, :])


def loss_fn(
    params,
    constants,
    net,
    p,
    x,
    y,
    v_true,
    second_moment_weight,
    signed=False,
    negative_scale=0.0,
    space: ParamSpace = PAPER_SPACE,
):
    """Relative velocity error plus ``second_moment_weight`` x the error in target space.

    ``v_true`` (B, P) km/s is the clipped truth, or with ``signed`` the signed velocity
    ``sign(v2) sqrt(|v2|)``, whose (compressed) signed second moment is then the target; else
    zero pixels only penalise positive output (a hinge). With ``net.config.cusp_weight`` the
    network's output and target are ``w u`` (bounded at a singular centre).
    """
    variables = {"params": params, **constants}
    w = _cusp(net, p, x, y)
    u = predict_u(net, variables, p, x, y, space)
    scale = velocity_scale(p)[:, None]
    v_pred = scale * relative_velocity(u / w, net.config.target)
    rel = (v_pred - jnp.maximum(v_true, 0.0)) / scale
    u_true = w * normalised_target(v_true / scale, net.config.target)
    if signed:
        u_err = u - compress_negative(u_true, negative_scale)
    else:
        u_err = jnp.where(v_true <= 0, jax.nn.relu(u), u - u_true)
    return jnp.mean(rel**2) + second_moment_weight * jnp.mean(u_err**2)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.final_lr_fraction,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=cfg.weight_decay),
    )


def ema_weights(state, decay: float):
    """Bias-corrected exponential moving average of the weights (zero-initialised EMA)."""
    correction = 1.0 - decay ** state["step"].astype(jnp.float32)
    return jax.tree_util.tree_map(lambda e: e / correction, state["ema"])


def make_train_step(net, optimizer, cfg: TrainConfig, space: ParamSpace = PAPER_SPACE):
    def step(state, constants, p, x, y, v_true):
        loss, grads = jax.value_and_grad(loss_fn)(
            state["params"],
            constants,
            net,
            p,
            x,
            y,
            v_true,
            cfg.second_moment_weight,
            cfg.signed,
            cfg.negative_scale,
            space,
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = jax.tree_util.tree_map(
            lambda e, q: cfg.ema_decay * e + (1 - cfg.ema_decay) * q, state["ema"], params
        )
        return {
            "params": params,
            "opt_state": opt_state,
            "ema": ema,
            "step": state["step"] + 1,
        }, loss

    return jax.jit(step, donate_argnums=(0,))


# -- evaluation ------------------------------------------------------------------------------------


def full_map_errors(
    pred_quadrant: np.ndarray, true_quadrant: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Paper Sec. 4.1 metrics over the 551 x 551 pixels of the full maps, from quadrants.

    Args:
        pred_quadrant, true_quadrant: (..., 276*276) km/s.
        mask: optional (276*276,) bool, pixels to include (e.g. inside 2").

    Returns:
        ``(E, |E|)`` per map, km/s.
    """
    w = full_map_weights().ravel()
    if mask is not None:
        w = w * mask
        w = w / w.sum()
    diff = pred_quadrant.astype(np.float64) - true_quadrant.astype(np.float64)
    return diff @ w, np.abs(diff) @ w


def predict_quadrants(
    net, variables, params: np.ndarray, batch: int = 64, space: ParamSpace = PAPER_SPACE
) -> np.ndarray:
    """Predicted v_rms quadrants (N, 276*276) for parameters (N, P) of ``space``."""
    sampler_x, sampler_y = (c.ravel().astype(np.float32) for c in quadrant_coordinates())
    feats = jax.jit(lambda v: net.apply(v, sampler_x, sampler_y, method="features"))(variables)
    style_fn = jax.jit(lambda v, p: net.apply(v, space.normalise(p), method="style"))
    out = np.empty((len(params), sampler_x.size), np.float32)
    for i in range(0, len(params), batch):
        p = jnp.asarray(params[i : i + batch], jnp.float32)
        u = (style_fn(variables, p) @ feats.T) / _cusp(net, p, sampler_x, sampler_y)
        out[i : i + batch] = np.asarray(
            velocity_scale(p)[:, None] * relative_velocity(u, net.config.target)
        )
    return out


# -- the run ---------------------------------------------------------------------------------------


def _mesh_shardings(batch_maps: int):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices())
    if batch_maps % devices.size:
        raise ValueError(
            f"batch_maps={batch_maps} must be divisible by the number of devices ({devices.size})"
        )
    mesh = Mesh(devices, ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def init_state(net, optimizer, cfg: TrainConfig, constants=None, n_params: int = 8):
    key = jax.random.PRNGKey(cfg.seed)
    variables = net.init(key, jnp.zeros((1, n_params)), jnp.zeros(4), jnp.zeros(4))
    params = variables["params"]
    consts = {k: v for k, v in variables.items() if k != "params"}
    if constants is not None:
        consts = constants
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "ema": jax.tree_util.tree_map(jnp.zeros_like, params),
        "step": jnp.asarray(0, jnp.int32),
    }
    return state, consts


def train(
    cfg: TrainConfig,
    progress: bool = True,
    max_steps_this_run: int | None = None,
    constants=None,
    extra_info: dict | None = None,
    overwrite: bool = False,
    export_unfinished: bool = False,
) -> dict:
    """Run (or resume) training; returns a summary dict.

    The EMA weights are exported to ``cfg.export`` when the run has finished (or, with
    ``export_unfinished``, at the end of this invocation), never over an existing directory
    unless ``overwrite``: that is checked before any training starts.

    Args:
        cfg: the run's settings; ``cfg.out`` holds orbax checkpoints, a CSV log and a PNG curve.
        progress: tqdm progress bar.
        max_steps_this_run: stop (after checkpointing) after this many steps, e.g. to share a
            CPU budget across sessions; the run resumes from there.
        constants: fixed, non-trained variables (the PCA basis of the baseline).
        extra_info: added to the exported checkpoint's metadata.
        overwrite: replace an existing ``cfg.export``.
        export_unfinished: export even if the run has not reached ``cfg.steps``.

    Raises:
        ValueError: ``cfg.export`` exists and ``overwrite`` is False; a run directory holding
            another configuration; a non-finite loss (the run stops there, before checkpointing
            it); non-finite weights at export.
    """
    import orbax.checkpoint as ocp
    from tqdm import tqdm

    check_signed_target(cfg.signed, cfg.network.target, "set signed=false in the config")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if saved != json.loads(json.dumps(cfg.to_dict())):
            raise ValueError(
                f"{out} holds a run with another configuration; "
                "use another `out` or the same config"
            )
    else:
        config_path.write_text(json.dumps(cfg.to_dict(), indent=1))

    space = data_space(cfg.train_data, cfg.val_data)
    net = make_network(cfg.network)
    optimizer = make_optimizer(cfg)
    state, consts = init_state(net, optimizer, cfg, constants, space.n_params)
    manager = ocp.CheckpointManager(
        out / "orbax", options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )
    run_info_path = out / "run_info.json"
    run_info = (
        json.loads(run_info_path.read_text())
        if run_info_path.exists()
        else {"cpu_seconds": 0.0, "wall_seconds": 0.0}
    )
    if manager.latest_step() is not None:
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
        if "n_train" not in run_info:
            raise ValueError(f"{out}: checkpoint without run_info.json; cannot resume safely")
    start = int(state["step"])
    stop = cfg.steps if max_steps_this_run is None else min(cfg.steps, start + max_steps_this_run)
    will_export = bool(cfg.export) and (stop >= cfg.steps or export_unfinished)
    if will_export:
        check_export_target(cfg.export, overwrite)
    # the fit sees the signed maps; validation compares with the clipped truth
    params_train, vrms_train, _ = load_maps(cfg.train_data, cfg.n_train, signed=cfg.signed)
    run_info["n_train"] = len(params_train)
    run_info.setdefault("segments", []).append(
        {"start_step": int(state["step"]), "n_train": len(params_train)}
    )
    params_val, vrms_val, nzero_val = load_maps(cfg.val_data, None)
    params_val, vrms_val = params_val[: cfg.n_val], vrms_val[: cfg.n_val]

    sampler = PixelSampler(cfg.inner_fraction, cfg.core_fraction)
    batch_sharding, replicated = _mesh_shardings(cfg.batch_maps)
    train_step = make_train_step(net, optimizer, cfg, space)
    state = jax.device_put(state, replicated)
    consts = jax.device_put(consts, replicated)

    log_path = out / "log.csv"
    header = ["step", "loss", "val_median_abs_E", "val_p95_abs_E", "val_median_E"]
    # keep the log consistent with the checkpoint: drop rows a killed run wrote after it
    kept = [r for r in _read_log(log_path) if int(r["step"]) <= start]
    log_file = open(log_path, "w", newline="")  # noqa: SIM115
    writer = csv.writer(log_file)
    writer.writerow(header)
    writer.writerows([[r[k] for k in header] for r in kept])
    log_file.flush()

    bar = tqdm(
        total=cfg.steps, initial=start, desc=f"train {out.name}", disable=not progress, unit="step"
    )
    t_wall, t_cpu = time.time(), time.process_time()
    losses = []
    summary = {}
    for step in range(start, stop):
        rng = np.random.default_rng([cfg.seed, step])
        maps = rng.integers(0, len(params_train), cfg.batch_maps)
        pix = sampler.draw(rng, cfg.batch_pixels)
        v_true = vrms_train[maps[:, None], pix[None, :]]
        p = jax.device_put(params_train[maps].astype(np.float32), batch_sharding)
        v_true = jax.device_put(v_true, batch_sharding)
        state, loss = train_step(state, consts, p, sampler.x[pix], sampler.y[pix], v_true)
        losses.append(float(loss))
        done = step + 1
        if not np.isfinite(losses[-1]):  # stop before a non-finite state is checkpointed
            _stop_diverged(done, f"loss {losses[-1]}", cfg, out, bar, log_file, manager)
        bar.update()
        if done % cfg.eval_every == 0 or done == cfg.steps:
            summary = validation_summary(net, state, consts, cfg, params_val, vrms_val, space)
            writer.writerow(
                [
                    done,
                    np.mean(losses[-cfg.eval_every :]),
                    summary["val_median_abs_E"],
                    summary["val_p95_abs_E"],
                    summary["val_median_E"],
                ]
            )
            log_file.flush()
            bar.set_postfix(
                loss=f"{np.mean(losses[-100:]):.2e}", val_absE=f"{summary['val_median_abs_E']:.3f}"
            )
            plot_curve(log_path, out / "curve.png")
        elif done % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.2e}")
            writer.writerow([done, np.mean(losses[-100:]), "", "", ""])
        if done % cfg.checkpoint_every == 0 or done == stop:
            log_file.flush()
            bad = non_finite_weights(state["params"])
            if bad:
                _stop_diverged(done, f"{sum(bad.values())} non-finite weights", cfg, out, bar,
                               log_file, manager)  # fmt: skip
            manager.save(done, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
            run_info["cpu_seconds"] += time.process_time() - t_cpu
            run_info["wall_seconds"] += time.time() - t_wall
            t_wall, t_cpu = time.time(), time.process_time()
            run_info["step"] = done
            run_info_path.write_text(json.dumps(run_info, indent=1))
    bar.close()
    log_file.close()
    manager.close()
    finished = int(state["step"]) >= cfg.steps
    result = {"step": int(state["step"]), "finished": finished, **run_info, **summary}
    if will_export:
        if not summary:  # no evaluation in this invocation (e.g. an already finished run)
            summary = validation_summary(net, state, consts, cfg, params_val, vrms_val, space)
        check_export_target(cfg.export, overwrite)  # again: it may have appeared meanwhile
        info = {
            "training": {
                "config": cfg.to_dict(),
                "steps": int(state["step"]),
                "finished": finished,
                "cpu_seconds": run_info["cpu_seconds"],
                "wall_seconds": run_info["wall_seconds"],
                "n_parameters": count_parameters(state["params"]),
                "devices": [str(d) for d in jax.devices()],
            },
            "data": {
                "train": {
                    "path": cfg.train_data,
                    "n_maps": run_info["n_train"],
                    "seed": DataSet(cfg.train_data).manifest["seed"],
                },
                "validation": {
                    "path": cfg.val_data,
                    "n_maps": len(params_val),
                    "seed": DataSet(cfg.val_data).manifest["seed"],
                },
            },
            "validation_metrics": summary,
            **(extra_info or {}),
        }
        variables = jax.tree_util.tree_map(
            np.asarray, {"params": ema_weights(state, cfg.ema_decay), **consts}
        )
        save_checkpoint(cfg.export, cfg.network, variables, info, space=space)
        result["exported"] = cfg.export
    elif cfg.export:
        result["exported"] = None
        result["not_exported"] = (
            f"the run stopped at step {result['step']} of {cfg.steps}: {cfg.export} is written "
            "when it finishes (or now with --export-unfinished)"
        )
    return result


def _stop_diverged(step: int, what: str, cfg: TrainConfig, out: Path, *open_things) -> None:
    """Close the bar, the log and the checkpoint manager, then raise ``ValueError``."""
    for thing in open_things:
        thing.close()
    raise ValueError(
        f"training diverged at step {step}: {what} (learning_rate = {cfg.learning_rate:g}); "
        f"nothing was exported, and {out} resumes from its last finite checkpoint"
    )


def check_export_target(export: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing checkpoint directory unless ``overwrite``."""
    if Path(export).exists() and not overwrite:
        raise ValueError(
            f"export {export} already exists: refusing to overwrite it (pass --overwrite to "
            "replace it, or set another `export` in the config)"
        )


def validation_summary(
    net, state, consts, cfg: TrainConfig, params_val, vrms_val, space: ParamSpace = PAPER_SPACE
) -> dict:
    """Validation metrics (km/s, paper Sec. 4.1) of the EMA weights at the current step."""
    variables = {"params": ema_weights(state, cfg.ema_decay), **consts}
    pred = predict_quadrants(net, variables, params_val, space=space)
    e, abs_e = full_map_errors(pred, vrms_val)
    return {
        "val_step": int(state["step"]),
        "val_median_abs_E": float(np.median(abs_e)),
        "val_p95_abs_E": float(np.percentile(abs_e, 95)),
        "val_median_E": float(np.median(e)),
    }


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("step", "").isdigit()]


def plot_curve(log_path: Path, png_path: Path) -> None:
    """Training loss and validation median/95th |E| against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_log(log_path)
    if not rows:
        return
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    val = [
        (int(r["step"]), float(r["val_median_abs_E"]), float(r["val_p95_abs_E"]))
        for r in rows
        if r["val_median_abs_E"]
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].semilogy(step, loss)
    axes[0].set(xlabel="step", ylabel="training loss")
    if val:
        v = np.array(val)
        axes[1].semilogy(v[:, 0], v[:, 1], "o-", label="median |E|")
        axes[1].semilogy(v[:, 0], v[:, 2], "s-", label="95th pct |E|")
        axes[1].legend()
    axes[1].set(xlabel="step", ylabel="validation |E| [km/s]")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
