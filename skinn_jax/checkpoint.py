"""Emulator checkpoints: orbax-saved weights plus a metadata file that guards against misuse.

A checkpoint is a directory::

    NAME/
        metadata.json   # format version, network config, parameter names and training box,
                        # data sets, metrics, skinn_jax version, SHA-256 of the weights
        weights/        # orbax StandardCheckpointer directory (the Flax variables)

Loading checks the format version, that the parameter names and training box are the ones this
library uses, the SHA-256 of the restored weights (``weights_sha256``), that every weight is
finite, and ``config_sha256``: the SHA-256 of everything else in the metadata that changes the
output (``network``, ``param_space``, ``param_names``, ``training_box``) together with the
weights' checksum. A mismatched or corrupt checkpoint fails with :class:`CheckpointError`, never
a silently wrong map. A checkpoint without ``config_sha256`` (written before it existed) is
refused too; after checking its metadata by hand, :func:`seal_checkpoint` adds the field.
Non-finite weights are refused on saving as well as on loading.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from .networks import NetworkConfig, make_network
from .params import PAPER_SPACE, ParamSpace, space_named

FORMAT_VERSION = 1
METADATA = "metadata.json"
WEIGHTS = "weights"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or made for other conventions."""


def weights_sha256(variables) -> str:
    """SHA-256 over every leaf (path, dtype, shape, bytes) of a pytree of arrays."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def config_sha256(metadata: dict) -> str:
    """SHA-256 of the metadata fields that change the emulator's output (canonical JSON).

    Covers ``network``, the parameter space (``param_space``, the paper space if absent),
    ``param_names``, ``training_box`` and ``weights_sha256``.
    """
    covered = {
        "network": metadata.get("network"),
        "param_space": checkpoint_space(metadata).name,
        "param_names": metadata.get("param_names"),
        "training_box": metadata.get("training_box"),
        "weights_sha256": metadata.get("weights_sha256"),
    }
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def non_finite_weights(variables) -> dict[str, int]:
    """``{leaf path: number of NaN or infinite entries}`` over a pytree of arrays (empty: all
    finite)."""
    bad = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        count = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
        if count:
            bad[jax.tree_util.keystr(path)] = count
    return bad


def _describe_non_finite(bad: dict[str, int]) -> str:
    leaves = ", ".join(f"{k} ({n})" for k, n in sorted(bad.items())[:5])
    more = f" and {len(bad) - 5} more arrays" if len(bad) > 5 else ""
    return f"{sum(bad.values())} non-finite weights (NaN or inf) in {leaves}{more}"


def training_box(space: ParamSpace = PAPER_SPACE) -> dict[str, list[float]]:
    """The box of ``space`` as checkpoints record it (``name -> [low, high]``)."""
    box = {k: [float(v[0]), float(v[1])] for k, v in space.box.items()}
    if space is not PAPER_SPACE:  # the paper's metadata predates these two entries
        box["r_sersic_over_theta_E"] = [float(v) for v in space.r_sersic_ratio]
        box["inclination_margin_deg"] = [float(space.inclination_margin_deg)]
    return box


def save_checkpoint(
    path: str | Path,
    config: NetworkConfig,
    variables,
    info: dict,
    space: ParamSpace = PAPER_SPACE,
) -> Path:
    """Write ``variables`` and metadata to directory ``path`` (replaced atomically).

    Args:
        path: checkpoint directory.
        config: the network's architecture.
        variables: Flax variables (``{"params": ..., ["constants": ...]}``), float32 arrays.
        info: extra metadata (data sets, metrics, training time ...), JSON-serialisable.
        space: the parameter space the network was trained on.

    Raises:
        ValueError: a non-finite weight (nothing is written).
    """
    import orbax.checkpoint as ocp

    from . import __version__

    variables = jax.tree_util.tree_map(np.asarray, variables)
    bad = non_finite_weights(variables)
    if bad:
        raise ValueError(f"refusing to export {path}: {_describe_non_finite(bad)}")
    path = Path(path).resolve()
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / WEIGHTS, variables)
    checkpointer.wait_until_finished()
    metadata = {
        **info,  # first: the fields below are the checkpoint's own and always win
        "format_version": FORMAT_VERSION,
        "skinn_jax_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "network": config.to_dict(),
        "param_space": space.name,
        "param_names": list(space.names),
        "training_box": training_box(space),
        "weights_sha256": weights_sha256(variables),
    }
    metadata["config_sha256"] = config_sha256(metadata)
    (tmp / METADATA).write_text(json.dumps(metadata, indent=1, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    meta_path = path / METADATA
    if not meta_path.exists():
        raise CheckpointError(f"{path} is not a skinn-jax checkpoint: no {METADATA}")
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is corrupt: {err}") from err
    version = metadata.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version {version!r} ({type(version).__name__}), this "
            f"skinn_jax reads format_version {FORMAT_VERSION!r} (an integer)"
        )
    try:
        space = space_named(metadata.get("param_space"))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    if metadata.get("param_names") != list(space.names):
        raise CheckpointError(
            f"{path} was trained on parameters {metadata.get('param_names')}, "
            f"expected {list(space.names)} (parameter space {space.name!r})"
        )
    if metadata.get("training_box") != training_box(space):
        raise CheckpointError(
            f"{path} was trained on the box {metadata.get('training_box')}, which is not this "
            f"library's {training_box(space)} (parameter space {space.name!r})"
        )
    _check_config_sha256(path, metadata)
    return metadata


def _check_config_sha256(path: Path, metadata: dict) -> None:
    recorded = metadata.get("config_sha256")
    if recorded is None:
        raise CheckpointError(
            f"{path} has no config_sha256 (the checksum of its network configuration, parameter "
            "space, names and box): written by an older skinn_jax or edited. If you trust its "
            "metadata.json, add it with skinn_jax.checkpoint.seal_checkpoint(path)"
        )
    if recorded != config_sha256(metadata):
        raise CheckpointError(
            f"{path}: metadata.json (network, param_space, param_names, training_box or "
            "weights_sha256) does not match its config_sha256 checksum (edited or corrupt)"
        )


def seal_checkpoint(path: str | Path) -> str:
    """Write ``config_sha256`` into a checkpoint's metadata from its current content.

    For checkpoints written before the field existed: check the metadata first, since whatever
    it says becomes covered. The weights are not touched (they keep their ``weights_sha256``).
    Returns the checksum.
    """
    meta_path = Path(path) / METADATA
    metadata = json.loads(meta_path.read_text())
    metadata["config_sha256"] = config_sha256(metadata)
    tmp = meta_path.with_name(METADATA + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=1, sort_keys=True))
    tmp.replace(meta_path)
    read_metadata(path)
    return metadata["config_sha256"]


def checkpoint_space(metadata: dict) -> ParamSpace:
    """The parameter space a checkpoint's metadata names (the paper space if none)."""
    return space_named(metadata.get("param_space"))


def _float32_struct(leaf) -> jax.ShapeDtypeStruct:
    """The abstract array ``leaf`` with float32 for any floating dtype (others unchanged)."""
    dtype = np.float32 if np.issubdtype(leaf.dtype, np.floating) else leaf.dtype
    return jax.ShapeDtypeStruct(leaf.shape, dtype)


def load_checkpoint(path: str | Path) -> tuple[NetworkConfig, dict, dict]:
    """Read a checkpoint directory; returns ``(config, variables, metadata)``.

    Raises:
        CheckpointError: missing files, wrong format/conventions, a checksum mismatch, or
            non-finite weights.
    """
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    metadata = read_metadata(path)
    config = NetworkConfig.from_dict(metadata["network"])
    net = make_network(config)
    abstract = jax.eval_shape(
        lambda: net.init(
            jax.random.PRNGKey(0),
            np.zeros((1, checkpoint_space(metadata).n_params), np.float32),
            np.zeros(1, np.float32),
            np.zeros(1, np.float32),
        )
    )
    # checkpoints hold float32 weights: restore them as such whatever the default float dtype
    abstract = jax.tree_util.tree_map(_float32_struct, abstract)
    try:
        variables = ocp.StandardCheckpointer().restore(path / WEIGHTS, abstract)
    except Exception as err:  # orbax raises many types for damaged directories
        raise CheckpointError(f"could not restore the weights in {path / WEIGHTS}: {err}") from err
    variables = jax.tree_util.tree_map(np.asarray, variables)
    if weights_sha256(variables) != metadata["weights_sha256"]:
        raise CheckpointError(f"{path}: weights do not match their checksum (corrupt checkpoint)")
    bad = non_finite_weights(variables)
    if bad:
        raise CheckpointError(f"{path} has {_describe_non_finite(bad)}")
    return config, variables, metadata
