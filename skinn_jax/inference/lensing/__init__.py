"""Lensing for the inference: Herculens profiles and imaging, one lens-equation solver.

- :mod:`.profiles`: the emulator's cored power law as a Herculens mass profile, the exact-b_n
  Sérsic light, the Moffat PSF, magnitudes.
- :mod:`.solver`: the one differentiable Newton solver and its implicit Jacobian.
- :mod:`.imaging`: the imaging forward model (image, point sources, time delays, image finder).
- :mod:`.lens`: the model's lens parametrisation (image positions -> solved lens) and the
  emulator <-> EPL conversions.
"""

from .imaging import (
    TIME_DELAY_DAYS_PER_MPC_ARCSEC2,
    Images,
    ImagingModel,
    ImagingSettings,
    LensParams,
    solve_lens_equation,
)
from .profiles import CoredPowerLaw, SersicExact, flux_from_magnitude, magnitude_from_flux
from .solver import implicit_log_jacobian, newton

__all__ = [
    "TIME_DELAY_DAYS_PER_MPC_ARCSEC2",
    "CoredPowerLaw",
    "Images",
    "ImagingModel",
    "ImagingSettings",
    "LensParams",
    "SersicExact",
    "flux_from_magnitude",
    "implicit_log_jacobian",
    "magnitude_from_flux",
    "newton",
    "solve_lens_equation",
]
