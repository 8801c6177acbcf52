"""The study's fan-out over dask.distributed (``run_study --scheduler``), on a LocalCluster.

One real fit (a small mock system, kinematics mode with the shipped emulator, a few NUTS draws)
goes through :func:`study.run_dask` on an in-process LocalCluster; a second fan-out over the
same study skips it (resumable), and only unfinished fits are ever submitted.
"""

from __future__ import annotations

import json
import time

import pytest

from skinn_jax.inference import fit as fit_mod
from skinn_jax.inference import study
from skinn_jax.inference.lensing import ImagingSettings
from skinn_jax.inference.mocks.kinematics import MockSettings
from skinn_jax.inference.mocks.system import MockSystemSettings

TINY = (
    ("converge", False), ("map_max_steps", 2), ("map_newton_steps", 1), ("max_tree_depth", 2),
    ("num_chains", 1), ("num_samples", 4), ("num_warmup", 4),
)  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as local:
        yield local


@pytest.mark.slow
def test_study_fans_out_one_fit_per_task_and_skips_finished_fits(cluster, tmp_path):
    options = study.StudyOptions(
        out=tmp_path,
        params_source="box",
        settings_changes=TINY,
        quiet=True,
        mock_settings=MockSystemSettings(
            imaging=ImagingSettings(n_pix=50), kinematics=MockSettings(n_pix=31)
        ),
    )
    task = study.FitTask(0, "kinematics", options)
    assert study.pending_tasks([task]) == [task]
    records = list(study.run_dask([task], cluster))
    assert [(r["system"], r["mode"]) for r in records] == [(0, "kinematics")]
    assert records[0]["convergence"].startswith("converged: NO — ")
    out = tmp_path / "0" / "kinematics"
    assert study.fit_complete(out)
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["num_chains"] == 1 and report["settings"]["num_samples"] == 4
    assert report["convergence"] == records[0]["convergence"]
    assert fit_mod.load_result(out).idata.posterior["theta_E"].shape == (1, 4)
    # resumable: a finished fit is not submitted again
    assert study.pending_tasks([task]) == []
    t0 = time.perf_counter()
    assert list(study.run_dask([task], cluster)) == []
    assert time.perf_counter() - t0 < 5.0
    # with replace_changed every task is submitted (a fit with the same inputs is only loaded)
    again = study.FitTask(0, "kinematics", options.__class__(**{
        **options.__dict__, "replace_changed": True}))  # fmt: skip
    assert study.pending_tasks([again]) == [again]
