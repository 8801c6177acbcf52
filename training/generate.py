"""Resumable, reproducible JAM training-set generation (``skinn-jax generate``).

A data set is a directory::

    data/NAME/
        manifest.json        # parameters of the run, versions, and one entry per finished shard
        shard_00000.npz      # maps [0, S), written to a temporary file and renamed
        shard_00001.npz      # maps [S, 2S) ...

Map ``i`` of a data set with seed ``s`` draws its eight parameters from
``numpy.random.default_rng(SeedSequence(s, spawn_key=(i,)))``, so a map depends on ``(s, i)``
only: not on the number of maps, the number of workers, the scheduler, or interruptions. Each
shard is computed in a single-threaded worker and written with fixed zip timestamps, so a resumed
run is bit-identical to an uninterrupted one. Every finished shard is recorded in the manifest
with its SHA-256; on start, shards whose checksum does not match (truncated, corrupt, or written
by other settings) are regenerated.

Shard contents (all arrays, first axis = map):

* ``index`` (int64): global map index; ``params`` (float64, (S, P)): the order of the data
  set's parameter space (manifest ``param_space``: ``paper``, P = 8, CONVENTIONS §1, or
  ``real-lens``, P = 9, §9);
* ``vrms`` (float32, (S, 276, 276)): v_rms (km/s) on the quadrant ``[:276, :276]`` of §5;
* ``vrms_negative`` (float32, (S, 276, 276)): ``-sqrt(-v2)`` (km/s) where JAM's signed second
  moment ``v2`` is negative, else 0; ``vrms + vrms_negative`` is the signed velocity
  ``sign(v2) sqrt(|v2|)``, smooth across the zero boundary (stored deflate-compressed: it is
  zero almost everywhere);
* ``n_zero`` (int32): pixels whose JAM second moment is <= 0 (stored as 0 km/s);
* ``light_rel_error``, ``mass_rel_error`` (float64): checked MGE accuracy over 0.01-8 arcsec.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import platform
import re
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from skinn_jax.checks import check_int
from skinn_jax.grid import QUADRANT_SIZE
from skinn_jax.params import PAPER_SPACE, ParamSpace, space_named

from .jam import DEFAULT_SETTINGS, JamSettings, jam_quadrant

MANIFEST = "manifest.json"
LOCK = "generate.lock"
"""Held (``flock``) by the run writing the directory; the kernel releases it on any exit."""
MAX_SHARD_SIZE = 50
"""Largest default shard (~0.5 min of one worker in the paper box, a few in the real-lens box)."""
_OWN_TEMPORARY = re.compile(r"(shard_\d{5}\.npz|manifest\.json)\.tmp")
FORMAT_VERSION = 2
"""2: shards hold ``vrms_negative`` (the signed second moment where it is < 0)."""
COMPRESSED_ARRAYS = frozenset({"vrms_negative"})
_SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def map_params(seed: int, index: int, space: ParamSpace = PAPER_SPACE) -> np.ndarray:
    """The parameters of map ``index`` of the data set with ``seed``: ``(space.n_params,)``."""
    return space.sample(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,))))


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: maps ``[start, stop)`` of the data set with ``seed``."""

    shard: int
    start: int
    stop: int
    seed: int
    n_radii: int
    n_angles: int
    space: str = PAPER_SPACE.name


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.npz"


def _write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``np.load``-able .npz whose bytes depend only on the arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            if name in COMPRESSED_ARRAYS:
                info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compute_shard(task: ShardTask) -> dict[str, np.ndarray | float]:
    """Compute the maps of one shard (in whatever process runs it)."""
    for key, value in _SINGLE_THREAD_ENV.items():
        os.environ.setdefault(key, value)
    settings = JamSettings(n_radii=task.n_radii, n_angles=task.n_angles)
    space = space_named(task.space)
    n = task.stop - task.start
    out = {
        "index": np.arange(task.start, task.stop, dtype=np.int64),
        "params": np.empty((n, space.n_params)),
        "vrms": np.empty((n, QUADRANT_SIZE, QUADRANT_SIZE), dtype=np.float32),
        "vrms_negative": np.empty((n, QUADRANT_SIZE, QUADRANT_SIZE), dtype=np.float32),
        "n_zero": np.empty(n, dtype=np.int32),
        "light_rel_error": np.empty(n),
        "mass_rel_error": np.empty(n),
    }
    t0 = time.process_time()
    for k, index in enumerate(range(task.start, task.stop)):
        p = map_params(task.seed, index, space)
        try:
            jam = jam_quadrant(p, settings=settings)
        except Exception as err:  # name the map: a shard is 20-50 maps
            raise RuntimeError(
                f"map {index} of seed {task.seed} ({space.name}, parameters {p.tolist()}): {err}"
            ) from err
        out["params"][k] = p
        out["vrms"][k] = jam.vrms
        out["vrms_negative"][k] = jam.vrms_negative
        out["n_zero"][k] = jam.n_zero
        out["light_rel_error"][k] = jam.light_rel_error
        out["mass_rel_error"][k] = jam.mass_rel_error
    out["cpu_seconds"] = time.process_time() - t0
    return out


def _versions() -> dict[str, str]:
    import jampy
    import mgefit

    import skinn_jax

    return {
        "skinn_jax": skinn_jax.__version__,
        "jampy": jampy.__version__,
        "mgefit": getattr(mgefit, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


class DataSet:
    """A generated (or partly generated) data set directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"no {MANIFEST} in {self.path}: not a skinn-jax data set")
        self.manifest = read_manifest(manifest_path)

    @property
    def space(self) -> ParamSpace:
        """The parameter space of the maps (the paper space for manifests that name none)."""
        return space_named(self.manifest.get("param_space"))

    @property
    def complete_shards(self) -> list[int]:
        return sorted(int(k) for k in self.manifest["shards"])

    @property
    def n_maps(self) -> int:
        return sum(v["n_maps"] for v in self.manifest["shards"].values())

    def iter_shards(self, verify: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Yield the finished shards in order as dicts of arrays."""
        for shard in self.complete_shards:
            entry = self.manifest["shards"][str(shard)]
            path = self.path / entry["file"]
            if verify and sha256_file(path) != entry["sha256"]:
                raise OSError(f"{path} does not match its checksum in the manifest")
            with np.load(path) as data:
                yield {k: data[k] for k in data.files}

    def load(self, keys: Iterable[str] = ("params", "vrms", "n_zero")) -> dict[str, np.ndarray]:
        """Concatenate ``keys`` over all finished shards."""
        keys = tuple(keys)
        parts = {k: [] for k in keys}
        for shard in self.iter_shards():
            for k in keys:
                parts[k].append(shard[k])
        if not parts[keys[0]]:
            raise ValueError(f"data set {self.path} has no finished shards yet")
        return {k: np.concatenate(v) for k, v in parts.items()}


_MANIFEST_KEYS = ("seed", "shard_size", "settings", "shards")


def read_manifest(path: Path) -> dict:
    """A data set's manifest, checked to be one.

    Raises:
        ValueError: not JSON, or a JSON file without the keys of a skinn-jax manifest (naming
            the file and the missing keys).
    """
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is corrupt (not JSON: {err}); move it away to start again"
        ) from None
    missing = [k for k in _MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise ValueError(
            f"{path} is not a skinn-jax data-set manifest (no {missing}); use another --out"
        )
    return manifest


def default_shard_size(n: int, workers: int) -> int:
    """Maps per shard: at least four shards per worker, at most :data:`MAX_SHARD_SIZE` maps,
    so that a killed run loses at most one shard (a minute or two) per worker."""
    return max(1, min(MAX_SHARD_SIZE, math.ceil(n / (4 * max(workers, 1)))))


@contextlib.contextmanager
def directory_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out/generate.lock`` (released on any exit, SIGKILL too).

    Raises:
        ValueError: another process holds it.
    """
    import fcntl

    with open(out / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise ValueError(
                f"{out} is being written by another skinn-jax generate (pid {owner}); wait for "
                "it or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_own_temporaries(out: Path) -> list[str]:
    """Delete the half-written files a killed run left (``shard_NNNNN.npz.tmp``,
    ``manifest.json.tmp``) and nothing else; returns their names."""
    removed = []
    for path in out.iterdir():
        if _OWN_TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path / MANIFEST)


def _init_manifest(
    out: Path, n: int, seed: int, shard_size: int, settings: JamSettings, space: ParamSpace
) -> dict:
    manifest_path = out / MANIFEST
    run = {
        "seed": seed,
        "shard_size": shard_size,
        "settings": asdict(settings),
        "format_version": FORMAT_VERSION,
        "param_space": space.name,
    }
    if manifest_path.exists():
        manifest = read_manifest(manifest_path)
        manifest.setdefault("param_space", PAPER_SPACE.name)  # manifests before spaces existed
        old = {k: manifest.get(k) for k in run}
        if old != run:
            raise ValueError(
                f"{out} was generated with {old}, not {run}: use another --out or the same settings"
            )
        manifest["n_requested"] = max(n, manifest.get("n_requested", 0))
        return manifest
    return {
        **run,
        "n_requested": n,
        "param_names": list(space.names),
        "grid": {
            "quadrant": [QUADRANT_SIZE, QUADRANT_SIZE],
            "pixel_arcsec": 0.02,
            "x_le_0_y_le_0": True,
        },
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "shards": {},
        "cpu_seconds": 0.0,
        "wall_seconds": 0.0,
    }


def pending_tasks(
    out: Path,
    manifest: dict,
    n: int,
    seed: int,
    shard_size: int,
    settings: JamSettings,
    space: ParamSpace = PAPER_SPACE,
) -> list[ShardTask]:
    """Shards not yet finished or whose file fails its checksum (dropped from the manifest)."""
    tasks = []
    for shard, start in enumerate(range(0, n, shard_size)):
        stop = min(start + shard_size, n)
        entry = manifest["shards"].get(str(shard))
        path = out / shard_name(shard)
        if entry is not None and entry["n_maps"] == stop - start and path.exists():
            if sha256_file(path) == entry["sha256"]:
                continue
        manifest["shards"].pop(str(shard), None)
        tasks.append(
            ShardTask(shard, start, stop, seed, settings.n_radii, settings.n_angles, space.name)
        )
    return tasks


def _die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: exit when the generating process is gone (even after its SIGKILL).

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); everywhere a
    daemon thread also checks every half second that the parent is still the parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _run_local(tasks: list[ShardTask], workers: int) -> Iterator[tuple[ShardTask, dict]]:
    import concurrent.futures as cf
    import multiprocessing as mp

    for key, value in _SINGLE_THREAD_ENV.items():  # inherited by the spawned workers
        os.environ.setdefault(key, value)
    pool = cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    finished = False
    try:
        futures = {pool.submit(compute_shard, t): t for t in tasks}
        for future in cf.as_completed(futures):
            # drop the finished future: it holds its shard's arrays (~30 MB) until released
            yield futures.pop(future), future.result()
        finished = True
    finally:
        if not finished:  # an error, a signal, or a closed generator: stop the shards in flight
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
        pool.shutdown(wait=finished, cancel_futures=True)


def _run_dask(tasks: list[ShardTask], scheduler: str) -> Iterator[tuple[ShardTask, dict]]:
    from distributed import Client, as_completed

    with Client(scheduler) as client:
        futures = client.map(compute_shard, tasks, pure=False)
        index = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        finished = as_completed(futures)
        del futures  # as above: let each finished future (and its arrays) go once used
        for future in finished:
            yield index[future.key], future.result()


def generate(
    out: str | Path,
    n: int,
    seed: int,
    workers: int | None = None,
    shard_size: int | None = None,
    settings: JamSettings = DEFAULT_SETTINGS,
    scheduler: str | None = None,
    progress: bool = True,
    space: ParamSpace = PAPER_SPACE,
) -> DataSet:
    """Generate (or resume) ``n`` JAM quadrant maps from ``seed`` into directory ``out``.

    The run holds a lock on ``out`` (:func:`directory_lock`): a second run into the same
    directory is refused. It deletes only its own half-written temporaries, and its worker
    processes exit with it (also when it is killed). SIGTERM stops it like Ctrl-C: finished
    shards are kept, the shards in flight are lost.

    Args:
        out: data set directory (created).
        n: number of maps; a larger ``n`` than before extends the set, same maps first.
        seed: data-set seed (use non-overlapping seeds for training/validation/test sets).
        workers: local worker processes (default: every core).
        shard_size: maps per shard file (default: the existing manifest's, else
            :func:`default_shard_size` of ``n`` and ``workers``).
        settings: JAM accuracy settings (part of the data set's identity).
        scheduler: address of a dask.distributed scheduler; runs the shards there instead.
        progress: show a tqdm progress bar.
        space: the parameter space to draw from (part of the data set's identity).

    Raises:
        ValueError: bad arguments, a directory locked by another run, a foreign or corrupt
            manifest, or a data set made with other settings.
    """
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    workers = check_int("workers", workers if workers is not None else os.cpu_count() or 1, 1)
    if shard_size is not None:
        check_int("shard_size", shard_size, 1)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with directory_lock(out), _sigterm_as_exit():
        return _generate_locked(out, n, seed, workers, shard_size, settings, scheduler, progress,
                                space)  # fmt: skip


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` (so that clean-up runs) while generating."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _generate_locked(out, n, seed, workers, shard_size, settings, scheduler, progress, space):
    from tqdm import tqdm

    remove_own_temporaries(out)
    if shard_size is None:
        existing = out / MANIFEST
        shard_size = (
            read_manifest(existing)["shard_size"]
            if existing.exists()
            else default_shard_size(n, workers)
        )
    manifest = _init_manifest(out, n, seed, shard_size, settings, space)
    tasks = pending_tasks(out, manifest, n, seed, shard_size, settings, space)
    _write_manifest(out, manifest)
    done = n - sum(t.stop - t.start for t in tasks)
    bar = tqdm(total=n, initial=done, unit="map", desc=f"generate {out.name}", disable=not progress)
    t_start = time.time()
    runner = _run_dask(tasks, scheduler) if scheduler else _run_local(tasks, workers)
    try:
        for task, result in runner:
            _record_shard(out, manifest, task, result, time.time() - t_start)
            t_start = time.time()
            bar.update(task.stop - task.start)
    finally:
        runner.close()  # on an error or a signal: stop the workers now
        bar.close()
    return DataSet(out)


def _record_shard(out: Path, manifest: dict, task: ShardTask, result: dict, wall: float) -> None:
    """Write one finished shard (temporary file, then rename) and record it in the manifest."""
    path = out / shard_name(task.shard)
    tmp = out / (shard_name(task.shard) + ".tmp")
    cpu = float(result.pop("cpu_seconds"))
    _write_npz_deterministic(tmp, result)
    os.replace(tmp, path)
    manifest["shards"][str(task.shard)] = {
        "file": path.name,
        "sha256": sha256_file(path),
        "n_maps": task.stop - task.start,
        "start": task.start,
        "cpu_seconds": cpu,
        "n_maps_with_zeros": int(np.sum(result["n_zero"] > 0)),
    }
    manifest["cpu_seconds"] += cpu
    manifest["wall_seconds"] += wall
    _write_manifest(out, manifest)
