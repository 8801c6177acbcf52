"""Your own kinematic data: bin maps, binned values and covariances as surveys publish them.

Builds :class:`skinn_jax.ifu.KinematicData` (CONVENTIONS §6) from arrays or files:

* :func:`load_array` reads ``.npy``, ``.txt``/``.dat``/``.csv`` (``numpy.loadtxt``), ``.fits``
  (astropy, first HDU with data or a named one) and ``.h5``/``.hdf5`` (h5py, a named dataset);
* :func:`grid_from_wcs` turns a FITS CD matrix (degrees per pixel, RA increasing east) and
  reference pixel into the model's :class:`~skinn_jax.ifu.SpaxelGrid`;
* :func:`kinematic_data` validates and assembles bin map, values, covariance, PSF and the
  deflector redshift, which is required (no default);
* :func:`aperture_bin_map` and :func:`slit_bin_map` describe single-aperture and long-slit
  spectroscopy as a bin map on a fine spaxel grid (:func:`aperture_data`);
* :func:`phi_from_position_angle` converts the astronomers' position angle;
* :class:`SystemData` holds the observations of one lens system for the joint model: imaging
  (:class:`ImagingData`), time delays (:class:`TimeDelayData`), kinematics, the measured image
  positions and, for kinematics-only fits, the light's ellipticity measured on the imaging
  (:class:`LightShape`).

Imports: ``skinn_jax`` core only (``ifu``, ``profiles``).

Angular frame
-------------
The model's angular coordinates are Herculens's: ``x`` is the offset towards east (RA increasing)
and ``y`` towards north, in arcsec, so a cube displayed with east to the left has a negative
``pix2angle[0, 0]``. A FITS CD matrix is in exactly this frame (scaled by 3600).

Position angle
--------------
The astronomers' PA of the major axis is measured from north through east, in degrees. The
model's φ is measured counter-clockwise from ``+x`` (east) towards ``+y`` (north), in radians
(:func:`skinn_jax.profiles.to_galaxy_frame`). The major-axis direction is ``(sin PA, cos PA)`` in
``(x, y)``, hence ``φ = π/2 - PA``.

v_rms or sigma
--------------
The emulator predicts the second moment ``v_rms = sqrt(v² + σ²)`` of the line-of-sight velocity
(CONVENTIONS §3). Data given as a mean velocity ``v`` and a dispersion ``σ`` per bin are combined
with :func:`vrms_from_velocity_and_sigma` (errors propagated to first order). Data given as ``σ``
alone (as most single-aperture measurements are) need an explicit choice: ``kind="sigma"`` in
:func:`kinematic_data` uses ``σ`` as ``v_rms`` with ``σ``'s covariance, i.e. it assumes the mean
velocity in each bin is negligible (a slow rotator, or an aperture symmetric about the centre,
where the luminosity-weighted ``v`` cancels while ``v²`` does not: there the aperture's ``σ``
fitted from an integrated spectrum is already close to its ``v_rms``). There is no silent default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import jax
import numpy as np

from skinn_jax.ifu import PSF, KinematicData, SpaxelGrid
from skinn_jax.profiles import e1e2_from_q_phi

if TYPE_CHECKING:
    from .lensing.imaging import ImagingSettings

ARCSEC_PER_DEGREE = 3600.0


def load_array(path: str | Path, name: str | int | None = None) -> np.ndarray:
    """Read one array from a ``.npy``, text, FITS or HDF5 file.

    Args:
        path: the file. ``.npy``: ``numpy.load``; ``.txt``, ``.dat``, ``.csv``: ``numpy.loadtxt``
            (comma-separated for ``.csv``); ``.fits``, ``.fit``, ``.fits.gz``: astropy, the HDU
            ``name`` (name or index) or the first HDU with data; ``.h5``, ``.hdf5``: h5py,
            dataset ``name`` (required).
        name: HDU or dataset (see above).

    Returns:
        The array (float or integer as stored).

    Raises:
        ValueError: an unknown extension, an HDF5 file without ``name``, or a FITS file without
            data; ImportError: astropy or h5py missing for those formats.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    suffix = suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix in (".txt", ".dat", ".csv"):
        return np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=1)
    if suffix in (".fits", ".fit", ".fits.gz"):
        from astropy.io import fits

        with fits.open(path) as hdus:
            if name is not None:
                return np.array(hdus[name].data)
            for hdu in hdus:
                if hdu.data is not None:
                    return np.array(hdu.data)
        raise ValueError(f"{path} has no HDU with data")
    if suffix in (".h5", ".hdf5"):
        if name is None:
            raise ValueError(f"{path}: give the HDF5 dataset name (name=...)")
        import h5py

        with h5py.File(path, "r") as f:
            return np.array(f[name])
    raise ValueError(
        f"{path}: unknown extension {suffix!r}; expected .npy, .txt, .dat, .csv, .fits, "
        ".fit, .fits.gz, .h5 or .hdf5"
    )


def grid_from_wcs(
    cd_deg: np.ndarray,
    crpix: tuple[float, float],
    shape: tuple[int, int],
    reference_offset: tuple[float, float] = (0.0, 0.0),
) -> SpaxelGrid:
    """The spaxel grid of a FITS image from its CD matrix and reference pixel.

    Args:
        cd_deg: FITS ``CD`` matrix ``[[CD1_1, CD1_2], [CD2_1, CD2_2]]``, degrees per pixel (RA
            increasing east along the first world axis, Dec north along the second).
        crpix: ``(CRPIX1, CRPIX2)``, the 1-based (column, row) of the reference pixel.
        shape: ``(ny, nx)`` of the image (NumPy order: rows, columns).
        reference_offset: angular ``(x, y)`` (east, north; arcsec) of the reference point
            ``CRVAL`` in the model's frame, e.g. minus the lens's offset from ``CRVAL``.

    Returns:
        The grid; its angular frame has the reference point at ``reference_offset``.
    """
    cd = np.asarray(cd_deg, dtype=float)
    if cd.shape != (2, 2):
        raise ValueError(f"cd_deg must be a 2 x 2 matrix, got shape {cd.shape}")
    pix2angle = cd * ARCSEC_PER_DEGREE
    # NumPy pixel (i, j) is FITS pixel (j + 1, i + 1)
    x0, y0 = pix2angle @ (np.array([1.0, 1.0]) - np.asarray(crpix, dtype=float))
    return SpaxelGrid(pix2angle, x0 + reference_offset[0], y0 + reference_offset[1], tuple(shape))


def grid_from_fits_header(header, reference_offset: tuple[float, float] = (0.0, 0.0)):
    """:func:`grid_from_wcs` from a FITS header with ``CD`` or ``CDELT`` (+ ``PC``) keywords.

    Only the two celestial axes (1 and 2) are read; a cube's spectral axis is ignored.
    """
    if "CD1_1" in header:
        cd = [[header.get("CD1_1", 0.0), header.get("CD1_2", 0.0)],
              [header.get("CD2_1", 0.0), header.get("CD2_2", 0.0)]]  # fmt: skip
    elif "CDELT1" in header:
        pc = np.array([[header.get("PC1_1", 1.0), header.get("PC1_2", 0.0)],
                       [header.get("PC2_1", 0.0), header.get("PC2_2", 1.0)]])  # fmt: skip
        cd = np.diag([header["CDELT1"], header["CDELT2"]]) @ pc
    else:
        raise ValueError("the FITS header has neither CD1_1 nor CDELT1: no celestial WCS")
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    return grid_from_wcs(cd, (header["CRPIX1"], header["CRPIX2"]), shape, reference_offset)


def phi_from_position_angle(pa_deg: float) -> float:
    """The model's φ (radians) from the position angle of the major axis east of north (deg).

    ``φ = π/2 - PA``, wrapped to ``[-π/2, π/2)`` (an axis: φ and φ + π are the same).
    """
    if not np.isfinite(pa_deg):
        raise ValueError(f"position angle must be a finite number of degrees, got {pa_deg}")
    phi = math.pi / 2 - math.radians(pa_deg)
    return (phi + math.pi / 2) % math.pi - math.pi / 2


def position_angle_from_phi(phi: float) -> float:
    """The position angle east of north (degrees, in ``[0, 180)``) of the model's φ."""
    return math.degrees(math.pi / 2 - phi) % 180.0


def vrms_from_velocity_and_sigma(
    velocity: np.ndarray,
    sigma: np.ndarray,
    velocity_covariance: np.ndarray,
    sigma_covariance: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``v_rms = sqrt(v² + σ²)`` per bin and its covariance (first-order propagation).

    With ``J_v = diag(v / v_rms)`` and ``J_σ = diag(σ / v_rms)``:
    ``C_vrms = J_v C_v J_v + J_σ C_σ J_σ`` (velocity and dispersion errors independent).

    Args:
        velocity, sigma: per bin, km/s, shape (n,); the velocity relative to the systemic one.
        velocity_covariance, sigma_covariance: (km/s)², shape (n, n) (or (n,) variances).

    Returns:
        ``(vrms (n,), covariance (n, n))``.
    """
    v, s = np.asarray(velocity, dtype=float), np.asarray(sigma, dtype=float)
    if v.shape != s.shape or v.ndim != 1:
        raise ValueError(f"velocity {v.shape} and sigma {s.shape} must be 1-D of equal length")
    if np.any(s <= 0):
        raise ValueError(f"sigma must be > 0 km/s in every bin, got min {s.min():g}")
    vrms = np.hypot(v, s)
    cv = _as_covariance(velocity_covariance, v.size, "velocity_covariance")
    cs = _as_covariance(sigma_covariance, v.size, "sigma_covariance")
    jv, js = v / vrms, s / vrms
    return vrms, jv[:, None] * cv * jv[None, :] + js[:, None] * cs * js[None, :]


def _as_covariance(c: np.ndarray, n: int, name: str) -> np.ndarray:
    """A covariance (n, n) from a matrix or a vector of variances."""
    c = np.asarray(c, dtype=float)
    if c.shape == (n,):
        return np.diag(c)
    if c.shape != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}) or ({n},), got {c.shape}")
    return c


def kinematic_data(
    grid: SpaxelGrid,
    bin_map: np.ndarray,
    values: np.ndarray,
    covariance: np.ndarray,
    psf: PSF,
    *,
    z_d: float,
    kind: Literal["vrms", "sigma"],
) -> KinematicData:
    """Validated :class:`KinematicData` from arrays as surveys publish them.

    Args:
        grid: the spaxel grid (e.g. :func:`grid_from_wcs`).
        bin_map: bin index per spaxel, integer, shape ``grid.shape``; ``-1`` (any negative) =
            unused. Floats holding integers (e.g. from FITS) are accepted.
        values: one value per bin, km/s, shape (n_bins,).
        covariance: (km/s)², shape (n_bins, n_bins), or (n_bins,) variances.
        psf: the PSF.
        z_d: deflector redshift (required: it sets the distance rescaling).
        kind: ``"vrms"`` (values are v_rms) or ``"sigma"`` (values are σ, used as v_rms; see the
            module docstring). Required.

    Raises:
        ValueError: ``kind`` not one of the two; a missing or invalid ``z_d``; and everything
            :class:`KinematicData` checks (shapes, empty bins, covariance not SPD, ...).
    """
    if kind not in ("vrms", "sigma"):
        raise ValueError(f"kind must be 'vrms' or 'sigma' (sigma used as v_rms), got {kind!r}")
    if z_d is None or not (np.isfinite(z_d) and z_d > 0):
        raise ValueError(f"z_d (deflector redshift) must be a positive number, got {z_d}")
    values = np.asarray(values, dtype=float).ravel()
    covariance = _as_covariance(covariance, values.size, "covariance")
    bins = np.asarray(bin_map)
    if not np.issubdtype(bins.dtype, np.integer):
        if not np.all(np.isfinite(bins)) or np.any(bins != np.round(bins)):
            raise ValueError("bin_map must hold integers (bin index per spaxel, -1 = unused)")
        bins = bins.astype(np.int64)
    return KinematicData(grid, bins, values, covariance, psf, z_d=float(z_d))


def load_kinematic_data(
    grid: SpaxelGrid,
    bin_map: str | Path,
    values: str | Path,
    covariance: str | Path,
    psf: PSF,
    *,
    z_d: float,
    kind: Literal["vrms", "sigma"],
    names: dict[str, str | int] | None = None,
) -> KinematicData:
    """:func:`kinematic_data` from three files (:func:`load_array`).

    ``names`` maps ``"bin_map"``, ``"values"``, ``"covariance"`` to the HDU or dataset name of
    each file where needed (FITS, HDF5).
    """
    names = names or {}
    arrays = {
        key: load_array(path, names.get(key))
        for key, path in (("bin_map", bin_map), ("values", values), ("covariance", covariance))
    }
    return kinematic_data(
        grid, arrays["bin_map"], arrays["values"], arrays["covariance"], psf, z_d=z_d, kind=kind
    )


# ----------------------------------------------------------------------------------------------
# Single apertures and slits


def aperture_bin_map(grid: SpaxelGrid, center: tuple[float, float], radius: float) -> np.ndarray:
    """Bin 0 = the spaxels whose centre lies within ``radius`` arcsec of ``center``, else -1.

    The aperture is the union of those spaxels: pick spaxels much smaller than the radius (the
    area differs from ``π r²`` by about a perimeter times half a spaxel).
    """
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"aperture radius must be > 0 arcsec, got {radius}")
    x, y = grid.coordinates()
    inside = np.hypot(x - center[0], y - center[1]) <= radius
    if not inside.any():
        raise ValueError(f"no spaxel centre lies within {radius} arcsec of {center}")
    return np.where(inside, 0, -1)


def slit_bin_map(
    grid: SpaxelGrid,
    center: tuple[float, float],
    width: float,
    length: float,
    position_angle_deg: float,
) -> np.ndarray:
    """Bin 0 = the spaxels whose centre lies in a slit, else -1.

    Args:
        grid: a fine spaxel grid.
        center: slit centre, angular (x, y), arcsec.
        width, length: slit width and extracted length, arcsec.
        position_angle_deg: PA of the slit's long axis, degrees east of north.
    """
    for name, value in (("width", width), ("length", length)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"slit {name} must be > 0 arcsec, got {value}")
    x, y = grid.coordinates()
    pa = math.radians(position_angle_deg)
    along = (x - center[0]) * math.sin(pa) + (y - center[1]) * math.cos(pa)
    across = (x - center[0]) * math.cos(pa) - (y - center[1]) * math.sin(pa)
    inside = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
    if not inside.any():
        raise ValueError("no spaxel centre lies in the slit")
    return np.where(inside, 0, -1)


def aperture_grid(extent: float, pixel_scale: float) -> SpaxelGrid:
    """A square grid of ``pixel_scale`` spaxels centred on the origin, half-width >= ``extent``
    arcsec (an odd number of spaxels, so that one is centred on the origin)."""
    n = 2 * math.ceil(extent / pixel_scale) + 1
    return SpaxelGrid.regular((n, n), pixel_scale)


def aperture_data(
    sigma: float,
    error: float,
    psf: PSF,
    *,
    z_d: float,
    kind: Literal["vrms", "sigma"],
    radius: float | None = None,
    slit: tuple[float, float, float] | None = None,
    center: tuple[float, float] = (0.0, 0.0),
    pixel_scale: float = 0.05,
) -> KinematicData:
    """One velocity dispersion in a circular aperture or a slit, as a one-bin data set.

    The aperture is a bin map on a fine grid of ``pixel_scale`` spaxels centred on ``center``
    (:func:`aperture_bin_map`, :func:`slit_bin_map`), so the same forward model applies: seeing,
    luminosity weighting of v_rms², and the aperture integral.

    Args:
        sigma: the measured dispersion (or v_rms), km/s.
        error: its 1-sigma error, km/s.
        psf: the seeing.
        z_d: deflector redshift (required).
        kind: ``"sigma"`` or ``"vrms"`` (see the module docstring).
        radius: aperture radius, arcsec (exactly one of ``radius`` and ``slit``).
        slit: ``(width, length, position_angle_deg)`` of a slit.
        center: aperture centre, angular (x, y), arcsec (usually the lens centre).
        pixel_scale: spaxel size of the fine grid, arcsec.
    """
    if (radius is None) == (slit is None):
        raise ValueError("give exactly one of radius (circular aperture) or slit")
    extent = radius if radius is not None else 0.5 * math.hypot(slit[0], slit[1])
    grid = aperture_grid(extent, pixel_scale)
    grid = SpaxelGrid(grid.pix2angle, grid.ra_at_xy_0 + center[0],
                      grid.dec_at_xy_0 + center[1], grid.shape)  # fmt: skip
    if radius is not None:
        bins = aperture_bin_map(grid, center, radius)
    else:
        bins = slit_bin_map(grid, center, *slit)
    if not (np.isfinite(error) and error > 0):
        raise ValueError(f"error must be > 0 km/s, got {error}")
    return kinematic_data(
        grid, bins, np.array([sigma]), np.array([[error**2]]), psf, z_d=z_d, kind=kind
    )


# ----------------------------------------------------------------------------------------------
# An example layout


KCWI_SPAXEL_ARCSEC = 0.1457
"""KCWI's spaxel (small slicer with 2x binning), arcsec."""
KCWI_EXAMPLE_RINGS = ((0.0, 0.2, 1), (0.2, 0.45, 4), (0.45, 0.7, 8), (0.7, 1.0, 12), (1.0, 1.5, 16))
"""``(inner, outer radius in arcsec, sectors)`` of :func:`kcwi_example_layout`: 41 bins."""


def kcwi_example_layout(
    n_side: int = 43, center: tuple[float, float] = (0.0, 0.0)
) -> tuple[SpaxelGrid, np.ndarray]:
    """A KCWI-format cube layout for examples, tests and benchmarks.

    ``n_side x n_side`` spaxels of 0.1457" with RA increasing to the left, centred on the
    origin, and 41 bins in the central 3" (rings and sectors around ``center``, a stand-in for
    Voronoi bins at a target S/N; :data:`KCWI_EXAMPLE_RINGS`); the rest of the cube is unused
    (-1).

    Returns:
        ``(grid, bin_map)``.
    """
    grid = SpaxelGrid.regular((n_side, n_side), KCWI_SPAXEL_ARCSEC, flip_ra=True)
    x, y = grid.coordinates()
    radius = np.hypot(x - center[0], y - center[1])
    angle = np.arctan2(y - center[1], x - center[0]) % (2 * np.pi)
    bins = np.full(grid.shape, -1)
    first = 0
    for inner, outer, sectors in KCWI_EXAMPLE_RINGS:
        ring = (radius >= inner) & (radius < outer)
        sector = np.minimum((angle / (2 * np.pi) * sectors).astype(int), sectors - 1)
        bins[ring] = first + sector[ring]
        first += sectors
    return grid, bins


# ----------------------------------------------------------------------------------------------
# Lens-system data (imaging, time delays, kinematics)


class ImagingData(NamedTuple):
    """Imaging data.

    Attributes:
        image: observed image, counts/s per pixel, (n_pix, n_pix).
        noise_map: per-pixel noise standard deviation, counts/s, same shape.
    """

    image: np.ndarray
    noise_map: np.ndarray


class TimeDelayData(NamedTuple):
    """Time delays of images 1..3 relative to image 0 (the first to arrive).

    Attributes:
        delays: measured ``t_i - t_0``, days, (n_img - 1,).
        sigma: their uncertainties, days, (n_img - 1,).
    """

    delays: np.ndarray
    sigma: np.ndarray


class LightShape(NamedTuple):
    """The lens light's ellipticity measured on the imaging, for fits without the imaging.

    Kinematics-only fits take it as a Gaussian prior on ``(q_light, phi)``
    (:func:`skinn_jax.inference.priors.log_light_shape_prior`): it fixes the position angle,
    shared by mass and light, as well as an elongated light allows, which the kinematics alone
    do poorly for a near-round mass. Make one with :func:`light_shape_from_q_phi`.

    Attributes:
        e1: ``ε cos 2φ``, ``ε = (1 - q) / (1 + q)``, φ the model's position angle (radians).
        e2: ``ε sin 2φ``.
        sigma: the standard deviation of each component (dimensionless, > 0).
    """

    e1: float
    e2: float
    sigma: float


def light_shape_from_q_phi(q: float, phi: float, sigma: float) -> LightShape:
    """A :class:`LightShape` from a measured axis ratio and position angle.

    Args:
        q: the light's axis ratio (minor/major), in ``(0, 1]``.
        phi: the model's position angle of the major axis, radians, counter-clockwise from
            ``+x`` (east); from an astronomer's PA use :func:`phi_from_position_angle`.
        sigma: uncertainty of each ellipticity component, ``> 0`` (about ``2 ε σ_φ`` for a
            position-angle uncertainty ``σ_φ`` in radians).

    Example:
        >>> shape = light_shape_from_q_phi(0.8, phi_from_position_angle(30.0), 0.01)
    """
    if not (np.isfinite(q) and 0.0 < q <= 1.0):
        raise ValueError(f"light axis ratio q must be in (0, 1], got {q}")
    if not np.isfinite(phi):
        raise ValueError(f"position angle phi must be a finite number of radians, got {phi}")
    if not (np.isfinite(sigma) and sigma > 0.0):
        raise ValueError(f"ellipticity uncertainty sigma must be a finite number > 0, got {sigma}")
    with jax.enable_x64(True):  # (float64 whatever the caller's setting)
        e1, e2 = e1e2_from_q_phi(q, phi)
    return LightShape(float(e1), float(e2), float(sigma))


class SystemData(NamedTuple):
    """The observations of one lens system.

    Attributes:
        imaging: image and noise map (counts/s per pixel).
        time_delays: delays of images 1..3 relative to image 0 and their uncertainties (days).
        kinematics: binned IFU v_rms data.
        image_positions: positions of the four outer quasar images measured on the image
            (A first: the delays are relative to it), arcsec, (4, 2).
        imaging_settings: the imaging's pixel grid, PSF, noise and numerics (None: the defaults
            of :class:`~skinn_jax.inference.lensing.ImagingSettings`).
        light_shape: the light's ellipticity measured on the imaging, a prior of kinematics-only
            fits (None: none; the modes with the imaging ignore it).
    """

    imaging: ImagingData
    time_delays: TimeDelayData
    kinematics: KinematicData
    image_positions: np.ndarray
    imaging_settings: ImagingSettings | None = None
    light_shape: LightShape | None = None

    @classmethod
    def from_mock(cls, system) -> SystemData:
        """The data of a :class:`skinn_jax.inference.mocks.system.MockSystem` (read by attribute:
        this module does not import the mocks)."""
        return cls(
            system.imaging,
            system.time_delays,
            system.kinematics.data,
            np.asarray(system.measured_positions, float),
            system.settings.imaging,
            system.light_shape,
        )
