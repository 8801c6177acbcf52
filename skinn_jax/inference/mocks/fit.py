"""Fit one mock system: the one path of ``skinn-jax fit-mock`` and of the study's fits.

Imports: :mod:`skinn_jax.inference.data`, :mod:`skinn_jax.inference.model`,
:mod:`skinn_jax.inference.fit`, :mod:`.truth`.
"""

from __future__ import annotations

from pathlib import Path

from ..data import SystemData
from ..fit import FitSettings, OutputExistsError, fit
from ..model import ModelSetup, build_setup, uses_kinematics
from .truth import solver_start_from_truth, truth_values


def mock_setup(system, data: SystemData, mode: str, emulator) -> ModelSetup:
    """The model set-up of a mock fit: ``system``'s data in ``mode``, the lens solver started from
    the mock's truth (the fit starts there too, paper Sec. 5.3), the emulator where the mode has
    kinematics."""
    return build_setup(
        data,
        mode,
        emulator=emulator if uses_kinematics(mode) else None,
        solver_start=solver_start_from_truth(system),
    )


def fit_mock(
    system,
    mode: str,
    out_dir: str | Path,
    *,
    emulator=None,
    settings: FitSettings | None = None,
    meta: dict | None = None,
    force: bool = False,
    replace_changed: bool = False,
    quiet: bool = False,
) -> dict:
    """Make (or load, or resume) the fit of a mock system in ``mode``, started at its truth.

    Args:
        system: a :class:`~skinn_jax.inference.mocks.system.MockSystem`.
        mode: ``"joint"``, ``"lensing"`` or ``"kinematics"``.
        out_dir: the fit's output directory.
        emulator: the loaded emulator (not used in lensing mode).
        settings: the :class:`~skinn_jax.inference.fit.FitSettings`.
        meta: information stored in the report and the fingerprint; the emulator weights' hash
            (``weights_sha256``) is added, so that a retrained emulator never reuses an old fit.
        force: delete what ``out_dir`` holds and start again.
        replace_changed: refit (deleting it) a fit made with other inputs instead of raising
            :class:`~skinn_jax.inference.fit.OutputExistsError`.
        quiet: no log messages.

    Returns:
        ``{"result": FitResult, "setup": ModelSetup, "data": SystemData, "truths": dict}``.
    """
    data = SystemData.from_mock(system)
    emulator = emulator if uses_kinematics(mode) else None
    setup = mock_setup(system, data, mode, emulator)
    truths = truth_values(system, mode, setup.priors)
    meta = dict(meta or {})
    meta["weights_sha256"] = emulator.metadata.get("weights_sha256") if emulator else None

    def run(force: bool):
        return fit(data, setup, out_dir, init_values=truths, truths=truths, settings=settings,
                   meta=meta, force=force, quiet=quiet)  # fmt: skip

    try:
        result = run(force)
    except OutputExistsError:
        if not replace_changed:
            raise
        result = run(True)  # only fits whose inputs changed get here
    return {"result": result, "setup": setup, "data": data, "truths": truths}
