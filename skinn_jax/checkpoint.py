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
        "param_space": space.name,
        "param_names": list(space.names),
        "training_box": training_box(space),
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
    return metadata


def checkpoint_space(metadata: dict) -> ParamSpace:
    """The parameter space a checkpoint's metadata names (the paper space if none)."""
    return space_named(metadata.get("param_space"))


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
            np.zeros((1, checkpoint_space(metadata).n_params), np.float32),
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
