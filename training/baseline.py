"""The PCA + MLP baseline emulator (``skinn-jax train-baseline``).

A plain linear basis: the principal components of the normalised second-moment maps
``u = v2 / v_scale**2`` on the training quadrants (by default the *signed* second moment, which
crosses zero smoothly where JAM's solution turns unphysical and the truth is clipped to 0 km/s;
the emulator clips its own output, ``v_rms = v_scale sqrt(max(u, 0))``), and a mapping network
(the same :class:`skinn_jax.networks.MappingNetwork` as CIPS) that predicts ``[1, c_1 .. c_K]``
from the eight parameters. Because the components are orthonormal, the MSE on the coefficients
is the pixel MSE of ``u`` within the basis. Exported behind the same :class:`skinn_jax.Emulator`
interface (network kind ``"pca"``); between grid pixels its basis is interpolated bilinearly.
With ``basis_rank`` the exported basis is factorised (:func:`factorise_checkpoint`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from skinn_jax.checkpoint import checkpoint_space, load_checkpoint, save_checkpoint
from skinn_jax.emulator import Emulator
from skinn_jax.grid import QUADRANT_SIZE, quadrant_coordinates
from skinn_jax.networks import (
    NetworkConfig,
    compress_negative,
    count_parameters,
    cusp_weight,
    factorise_basis,
    make_network,
    normalised_target,
    velocity_scale,
)

from .evaluate import predict
from .generate import DataSet
from .train import check_signed_target, data_space, full_map_errors, load_maps


@dataclass
class BaselineConfig:
    train_data: str = "data/train"
    val_data: str = "data/val"
    n_train: int | None = None
    n_val: int = 200
    n_components: int = 40
    n_pca_maps: int = 6000
    steps: int = 20000
    batch: int = 256
    learning_rate: float = 2e-3
    mapping_width: int = 256
    mapping_depth: int = 4
    seed: int = 0
    target: str = "u"
    signed: bool = True
    negative_scale: float = 0.0
    basis_rank: int = 0
    cusp_weight: bool = False
    n_members: int = 1
    export: str = "checkpoints/pca"


def normalised_output(
    params: np.ndarray,
    vrms: np.ndarray,
    target: str = "u",
    negative_scale: float = 0.0,
    cusp: bool = False,
) -> np.ndarray:
    """Training target (N, Q) in the network's output space for v_rms quadrants (N, Q) in km/s.

    With ``negative_scale > 0``, negative values (signed maps) are compressed by
    :func:`skinn_jax.networks.compress_negative`; with ``cusp``, the target is multiplied by
    :func:`skinn_jax.networks.cusp_weight` on the quadrant grid (bounded at a singular centre).
    """
    p64 = params.astype(np.float64)
    scale = np.asarray(velocity_scale(p64))[:, None]
    out = normalised_target(vrms / scale, target)
    if cusp:
        out = out * np.asarray(cusp_weight(p64, _QUADRANT_RADIUS))
    out = compress_negative(out, negative_scale)
    return np.asarray(out, np.float32)


_QUADRANT_RADIUS = np.hypot(*quadrant_coordinates()).ravel()


def pca_basis(u: np.ndarray, k: int, seed: int = 0, power_iterations: int = 3):
    """Mean (D,) and top-k orthonormal components (D, k) of rows of ``u`` (randomized SVD)."""
    rng = np.random.default_rng(seed)
    mean = u.mean(axis=0)
    a = u - mean
    y = a.T @ (a @ rng.standard_normal((a.shape[1], k + 20)).astype(np.float32))
    for _ in range(power_iterations):
        y, _ = np.linalg.qr(y)
        y = a.T @ (a @ y)
    q, _ = np.linalg.qr(y)
    b = a @ q  # (N, k+20)
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    return mean, (q @ vt.T)[:, :k]


def train_baseline(cfg: BaselineConfig, progress: bool = True) -> dict:
    from tqdm import tqdm

    check_signed_target(cfg.signed, cfg.target, "use signed=False (train-baseline --clipped)")
    t_cpu = time.process_time()
    # the fit sees the signed maps; validation compares with the clipped truth
    space = data_space(cfg.train_data, cfg.val_data)
    params_train, vrms_train, _ = load_maps(cfg.train_data, cfg.n_train, signed=cfg.signed)
    params_val, vrms_val, _ = load_maps(cfg.val_data)
    params_val, vrms_val = params_val[: cfg.n_val], vrms_val[: cfg.n_val]
    n_pca = min(cfg.n_pca_maps, len(params_train))
    u_pca = normalised_output(
        params_train[:n_pca], vrms_train[:n_pca], cfg.target, cfg.negative_scale, cfg.cusp_weight
    )
    mean, comps = pca_basis(u_pca, cfg.n_components, cfg.seed)
    del u_pca
    coeffs = np.empty((len(params_train), cfg.n_components), np.float32)
    for i in range(0, len(params_train), 2000):
        u = normalised_output(
            params_train[i : i + 2000],
            vrms_train[i : i + 2000],
            cfg.target,
            cfg.negative_scale,
            cfg.cusp_weight,
        )
        coeffs[i : i + 2000] = (u - mean) @ comps

    config = NetworkConfig(
        kind="pca",
        n_basis=cfg.n_components,
        mapping_width=cfg.mapping_width,
        mapping_depth=cfg.mapping_depth,
        target=cfg.target,
        cusp_weight=cfg.cusp_weight,
        n_members=cfg.n_members,
    )
    net = make_network(config)
    basis = (
        np.concatenate([mean[:, None], comps], axis=1)
        .reshape(QUADRANT_SIZE, QUADRANT_SIZE, cfg.n_components + 1)
        .astype(np.float32)
    )
    variables = net.init(
        jax.random.PRNGKey(cfg.seed), jnp.zeros((1, space.n_params)), jnp.zeros(2), jnp.zeros(2)
    )
    constants = {"constants": {"basis": jnp.asarray(basis)}}
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(300, cfg.steps // 10), cfg.steps, cfg.learning_rate * 0.01
    )
    opt = optax.adam(schedule)
    params = variables["params"]
    opt_state = opt.init(params)
    p_norm = np.asarray(space.normalise(params_train.astype(np.float32)))

    @jax.jit
    def step(params, opt_state, x, t):
        # x (m, batch, P), t (m, batch, K): each member its own batch; the loss is the sum of
        # the members' own losses, so they train independently (an ensemble, not one model)
        def loss(q):
            pred = net.apply({"params": q, **constants}, x, method="member_coefficients")
            return jnp.mean((pred - t) ** 2) * cfg.n_members

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(cfg.seed)
    for _ in tqdm(range(cfg.steps), desc="train baseline", disable=not progress):
        idx = rng.integers(0, len(p_norm), (cfg.n_members, cfg.batch))
        params, opt_state, _ = step(params, opt_state, p_norm[idx], coeffs[idx])
    variables = {"params": params, **constants}
    pred = predict(Emulator(config, variables, {"param_space": space.name}), params_val)
    e, abs_e = full_map_errors(pred, vrms_val)
    metrics = {
        "val_median_abs_E": float(np.median(abs_e)),
        "val_p95_abs_E": float(np.percentile(abs_e, 95)),
        "val_median_E": float(np.median(e)),
    }
    cpu = time.process_time() - t_cpu
    info = {
        "training": {
            "config": cfg.__dict__,
            "cpu_seconds": cpu,
            "n_parameters": count_parameters(params),
        },
        "data": {
            "train": {
                "path": cfg.train_data,
                "n_maps": len(params_train),
                "seed": DataSet(cfg.train_data).manifest["seed"],
            },
            "validation": {
                "path": cfg.val_data,
                "n_maps": len(params_val),
                "seed": DataSet(cfg.val_data).manifest["seed"],
            },
        },
        "validation_metrics": metrics,
    }
    save_checkpoint(
        cfg.export, config, jax.tree_util.tree_map(np.asarray, variables), info, space=space
    )
    result = {**metrics, "cpu_seconds": cpu, "exported": cfg.export}
    if cfg.basis_rank:
        result["factorisation"] = factorise_checkpoint(
            cfg.export, cfg.basis_rank, cfg.export, cfg.val_data, cfg.n_val
        )
    return result


def factorise_checkpoint(
    source: str, rank: int, export: str, val_data: str = "data/val", n_val: int = 200
) -> dict:
    """Re-export a dense PCA checkpoint with its basis factorised to ``rank`` (Tucker, HOSVD).

    The coefficient network is unchanged; the factorisation's own error is measured on the
    validation maps (km/s, per map over the full 551 x 551 pixels, against the dense basis and
    against the truth) and stored in the metadata under ``factorisation``.

    Args:
        source: dense ``pca`` checkpoint directory (``basis_rank = 0``).
        rank: rank of the row and column factors (<= 276).
        export: output directory (may be ``source``: it is replaced atomically).
        val_data: validation data set for the error measurement.
        n_val: number of validation maps.
    """
    config, variables, metadata = load_checkpoint(source)
    if config.kind != "pca" or config.basis_rank:
        raise ValueError(
            f"{source} is not a dense pca checkpoint (kind {config.kind!r}, "
            f"basis_rank {config.basis_rank})"
        )
    basis = variables["constants"]["basis"]
    rows, core, cols = factorise_basis(basis, rank)
    new_config = NetworkConfig(**{**config.to_dict(), "basis_rank": rank})
    new_variables = {
        "params": variables["params"],
        "constants": {"rows": rows, "core": core, "cols": cols},
    }
    params_val, vrms_val, _ = load_maps(val_data, n_val)
    dense = predict(Emulator(config, variables, metadata), params_val)
    factorised = predict(Emulator(new_config, new_variables, metadata), params_val)
    _, to_dense = full_map_errors(factorised, dense)
    _, dense_err = full_map_errors(dense, vrms_val)
    _, factorised_err = full_map_errors(factorised, vrms_val)
    report = {
        "rank": rank,
        "source": str(source),
        "val_maps": len(params_val),
        "median_abs_E_vs_dense": float(np.median(to_dense)),
        "p95_abs_E_vs_dense": float(np.percentile(to_dense, 95)),
        "val_median_abs_E_dense": float(np.median(dense_err)),
        "val_p95_abs_E_dense": float(np.percentile(dense_err, 95)),
        "val_median_abs_E": float(np.median(factorised_err)),
        "val_p95_abs_E": float(np.percentile(factorised_err, 95)),
    }
    keep = {k: v for k, v in metadata.items() if k not in _CHECKPOINT_OWN_KEYS}
    save_checkpoint(
        export,
        new_config,
        new_variables,
        {**keep, "factorisation": report},
        space=checkpoint_space(metadata),
    )
    return report


_CHECKPOINT_OWN_KEYS = frozenset(
    {
        "format_version",
        "skinn_jax_version",
        "created",
        "network",
        "param_space",
        "param_names",
        "training_box",
        "weights_sha256",
    }
)
"""Metadata that :func:`skinn_jax.checkpoint.save_checkpoint` writes itself."""
