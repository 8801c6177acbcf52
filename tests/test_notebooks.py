"""Execute the notebooks top to bottom with small settings (SKINN_JAX_FAST=1) so they cannot rot.

The kernel is this interpreter (``sys.executable -m ipykernel_launcher``), whatever kernel specs
are installed, and the emulator is the shipped default checkpoint: the notebooks are exercised with
small settings, not their numbers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_kinematic_likelihood.ipynb",
        "03_joint_fit.ipynb",
        "fit_your_own_lens.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager

    monkeypatch.setenv("SKINN_JAX_FAST", "1")
    monkeypatch.delenv("SKINN_JAX_CHECKPOINT", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(
        kernel_cmd=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        env=dict(os.environ),
    )
    client = nbclient.NotebookClient(
        nb, km=km, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
