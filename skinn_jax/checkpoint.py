"""Emulator checkpoints: orbax-saved weights plus a metadata file that guards against misuse.

A checkpoint is a directory::

    NAME/
        metadata.json   # format version, network config, parameter names and training box,
                        # data sets, metrics, skinn_jax version, SHA-256 of the weights
        weights/        # orbax StandardCheckpointer directory (the Flax variables)

Loading checks the format version, that the parameter names and training box are the ones this
library uses, and the SHA-256 of the restored weights: a mismatched or corrupt checkpoint fails
with :class:`CheckpointError`, never a silently wrong map.
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
from .params import PARAM_BOX, PARAM_NAMES

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


def training_box() -> dict[str, list[float]]:
    return {k: [float(v[0]), float(v[1])] for k, v in PARAM_BOX.items()}


def save_checkpoint(path: str | Path, config: NetworkConfig, variables, info: dict) -> Path:
    """Write ``variables`` and metadata to directory ``path`` (replaced atomically).

    Args:
        path: checkpoint directory.
        config: the network's architecture.
        variables: Flax variables (``{"params": ..., ["constants": ...]}``), float32 arrays.
        info: extra metadata (data sets, metrics, training time ...), JSON-serialisable.
    """
    import orbax.checkpoint as ocp

    from . import __version__

    path = Path(path).resolve()
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / WEIGHTS, variables)
    checkpointer.wait_until_finished()
    metadata = {
        "format_version": FORMAT_VERSION,
        "skinn_jax_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "network": config.to_dict(),
        "param_names": list(PARAM_NAMES),
        "training_box": training_box(),
        "weights_sha256": weights_sha256(variables),
        **info,
    }
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
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {metadata.get('format_version')}, this skinn_jax "
            f"reads format {FORMAT_VERSION}"
        )
    if metadata.get("param_names") != list(PARAM_NAMES):
        raise CheckpointError(
            f"{path} was trained on parameters {metadata.get('param_names')}, "
            f"expected {list(PARAM_NAMES)}"
        )
    if metadata.get("training_box") != training_box():
        raise CheckpointError(
            f"{path} was trained on the box {metadata.get('training_box')}, which is not this "
            f"library's {training_box()}"
        )
    return metadata


def load_checkpoint(path: str | Path) -> tuple[NetworkConfig, dict, dict]:
    """Read a checkpoint directory; returns ``(config, variables, metadata)``.

    Raises:
        CheckpointError: missing files, wrong format/conventions, or a checksum mismatch.
    """
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    metadata = read_metadata(path)
    config = NetworkConfig.from_dict(metadata["network"])
    net = make_network(config)
    abstract = jax.eval_shape(
        lambda: net.init(
            jax.random.PRNGKey(0),
            np.zeros((1, 8), np.float32),
            np.zeros(1, np.float32),
            np.zeros(1, np.float32),
        )
    )
    try:
        variables = ocp.StandardCheckpointer().restore(path / WEIGHTS, abstract)
    except Exception as err:  # orbax raises many types for damaged directories
        raise CheckpointError(f"could not restore the weights in {path / WEIGHTS}: {err}") from err
    variables = jax.tree_util.tree_map(np.asarray, variables)
    if weights_sha256(variables) != metadata["weights_sha256"]:
        raise CheckpointError(f"{path}: weights do not match their checksum (corrupt checkpoint)")
    return config, variables, metadata
