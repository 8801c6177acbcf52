"""skinn-jax: a JAX-native, differentiable emulator of axisymmetric Jeans (JAM) stellar kinematics.

The public interface (CONVENTIONS §7)::

    import skinn_jax
    emu = skinn_jax.Emulator.load()   # the real-lens emulator; "pca64s" is the paper's box
    emu.param_names          # nine names, the last r_core (arcsec; 0 = singular)
    emu.vrms_map(p)          # (9,) or (B, 9) -> (551, 551) or (B, 551, 551), km/s
    emu.vrms_at(p, x, y)     # galaxy-frame arcsec -> km/s
"""

from .params import (
    PARAM_BOX,
    PARAM_NAMES,
    PARAM_UNITS,
    EmulatorParams,
    sample_params,
    validate_params,
)

__version__ = "0.1.0"

from .emulator import Emulator  # noqa: E402  (after __version__: checkpoints record it)
from .forward import SkyParams  # noqa: E402
from .ifu import PSF, KinematicData, SpaxelGrid  # noqa: E402
from .likelihood import KinematicLikelihood  # noqa: E402

__all__ = [
    "Emulator",
    "KinematicData",
    "KinematicLikelihood",
    "PSF",
    "SkyParams",
    "SpaxelGrid",
    "PARAM_BOX",
    "PARAM_NAMES",
    "PARAM_UNITS",
    "EmulatorParams",
    "sample_params",
    "validate_params",
    "__version__",
]
