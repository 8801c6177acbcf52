"""Data side of the kinematic likelihood: spaxel grid, PSF and binned kinematic data.

CONVENTIONS §6. Three validated, immutable containers (frozen dataclasses holding read-only NumPy
arrays). They are static data: the forward model and the likelihood are built from them once and
close over them, so they never need to be JAX pytrees.

Spaxel grid (Herculens's pixel-grid convention)
-----------------------------------------------
A grid of ``ny x nx`` spaxels is an image ``a[i, j]`` (row ``i``, column ``j``). As in
``herculens.Coordinates.pixel_grid.PixelGrid``, the angular position of the centre of spaxel
``(i, j)`` is::

    (x, y) = pix2angle @ (j, i) + (ra_at_xy_0, dec_at_xy_0)      # arcsec

``pix2angle`` is the 2 x 2 pixel-to-angle matrix (arcsec per pixel; column 0 is the step of one
column, column 1 the step of one row) and ``(ra_at_xy_0, dec_at_xy_0)`` the position of spaxel
``(0, 0)``. A real cube with RA increasing to the left has a negative ``pix2angle[0, 0]``. ``x`` and
``y`` are the angular coordinates the lens model uses (Herculens's ``x, y``); the kinematics is
computed in exactly the same coordinates, so ``phi`` and ``(center_x, center_y)`` mean the same for
both. A Herculens ``PixelGrid`` converts with :meth:`SpaxelGrid.from_herculens`.

Supersampling
-------------
With supersampling factor ``s`` every spaxel is split into ``s x s`` sub-pixels on the grid with
matrix ``pix2angle / s``; sub-pixel ``(a, b)`` of spaxel ``(i, j)`` (``a, b = 0 .. s-1``) is centred
at ``pix2angle @ (j - 1/2 + (b + 1/2)/s, i - 1/2 + (a + 1/2)/s) + (ra_at_xy_0, dec_at_xy_0)``
(Herculens's ``subgrid_from_coordinate_transform`` places sub-pixels the same way).

PSF
---
Either a circular Gaussian of given FWHM (arcsec), or a pixelated kernel. A pixelated kernel is an
odd-sized image that sums to one, sampled **on the supersampled grid** (its pixel is a
sub-pixel, ``pix2angle / s``) and in **the data's pixel orientation** (``kernel[u, v]`` is the
weight at a displacement of ``u - (ku - 1)/2`` sub-pixel rows and ``v - (kv - 1)/2`` sub-pixel
columns, like a PSF image cut from the same detector), with its centre at the central element. It
records the supersampling factor it was made for, and the forward model refuses any other: to use
a kernel measured at spaxel resolution, resample it explicitly (e.g. interpolate the PSF model
onto the sub-pixel grid) before building it. The Gaussian is turned into such a kernel by
:func:`gaussian_kernel` (point-sampled at sub-pixel centres out to ``truncation`` sigma,
normalised to sum to one; zero FWHM gives the 1 x 1 identity kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM of a Gaussian in units of its standard deviation."""

_KERNEL_SUM_TOL = 1e-6
MAX_FWHM_ARCSEC = 11.0
"""Largest Gaussian PSF FWHM accepted: the width of the emulator's field (|x|, |y| <= 5.5")."""
MAX_KERNEL_SIZE = 2001
"""Largest side (sub-pixels) of a Gaussian PSF kernel (2001² float64 = 32 MB)."""
_COVARIANCE_SYMMETRY_RTOL = 1e-10


def _readonly(array: np.ndarray) -> np.ndarray:
    """A read-only copy of ``array``."""
    out = np.array(array, copy=True)
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------------------------
# Spaxel grid


@dataclass(frozen=True, eq=False)
class SpaxelGrid:
    """A regular (possibly flipped or rotated) grid of spaxels, defined as Herculens defines grids.

    Attributes:
        pix2angle: pixel-to-angle matrix, arcsec per pixel, shape (2, 2); column 0 is the angular
            step of one column (``j -> j + 1``), column 1 the step of one row (``i -> i + 1``).
        ra_at_xy_0: angular x (arcsec) of the centre of spaxel ``(0, 0)``.
        dec_at_xy_0: angular y (arcsec) of the centre of spaxel ``(0, 0)``.
        shape: ``(ny, nx)``, the number of rows and columns.

    Raises:
        ValueError: a matrix that is not a finite, invertible 2 x 2 matrix, a non-finite origin, or
            a shape that is not two positive integers.
    """

    pix2angle: np.ndarray
    ra_at_xy_0: float
    dec_at_xy_0: float
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        matrix = np.asarray(self.pix2angle, dtype=float)
        if matrix.shape != (2, 2):
            raise ValueError(f"SpaxelGrid.pix2angle must have shape (2, 2), got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError(f"SpaxelGrid.pix2angle must be finite, got {matrix.tolist()}")
        if abs(np.linalg.det(matrix)) < 1e-12 * max(1.0, np.max(np.abs(matrix))) ** 2:
            raise ValueError(f"SpaxelGrid.pix2angle is singular: {matrix.tolist()}")
        for name in ("ra_at_xy_0", "dec_at_xy_0"):
            value = getattr(self, name)
            if not np.isfinite(value):
                raise ValueError(f"SpaxelGrid.{name} must be finite, got {value}")
            object.__setattr__(self, name, float(value))
        shape = tuple(self.shape)
        if len(shape) != 2 or any(int(n) != n or n < 1 for n in shape):
            raise ValueError(
                f"SpaxelGrid.shape must be two positive integers (ny, nx), got {shape}"
            )
        object.__setattr__(self, "pix2angle", _readonly(matrix))
        object.__setattr__(self, "shape", (int(shape[0]), int(shape[1])))

    @classmethod
    def regular(
        cls,
        shape: tuple[int, int],
        pixel_scale: float,
        *,
        center: tuple[float, float] = (0.0, 0.0),
        flip_ra: bool = False,
    ) -> SpaxelGrid:
        """A square-pixel grid aligned with the angular axes and centred on ``center``.

        Args:
            shape: ``(ny, nx)``.
            pixel_scale: spaxel side, arcsec (> 0).
            center: angular position (arcsec) of the grid's centre (the middle spaxel for odd
                sizes, the shared corner of the middle four for even sizes).
            flip_ra: if True, x decreases with the column index (``pix2angle[0, 0] < 0``), as for
                RA increasing to the left on a real cube.

        Returns:
            The grid.
        """
        if not (np.isfinite(pixel_scale) and pixel_scale > 0):
            raise ValueError(f"pixel_scale must be a positive number of arcsec, got {pixel_scale}")
        ny, nx = shape
        sign = -1.0 if flip_ra else 1.0
        matrix = np.diag([sign * pixel_scale, pixel_scale])
        ra0 = center[0] - sign * pixel_scale * (nx - 1) / 2.0
        dec0 = center[1] - pixel_scale * (ny - 1) / 2.0
        return cls(matrix, ra0, dec0, (ny, nx))

    @classmethod
    def from_herculens(cls, pixel_grid) -> SpaxelGrid:
        """Convert a ``herculens.Coordinates.pixel_grid.PixelGrid``."""
        nx, ny = pixel_grid.num_pixel_axes
        ra0, dec0 = pixel_grid.radec_at_xy_0
        return cls(np.asarray(pixel_grid.transform_pix2angle), ra0, dec0, (ny, nx))

    @property
    def pixel_area(self) -> float:
        """Area of one spaxel, arcsec²."""
        return float(abs(np.linalg.det(self.pix2angle)))

    @property
    def pixel_scale(self) -> float:
        """Side of a square spaxel of the same area, arcsec."""
        return math.sqrt(self.pixel_area)

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Angular ``(x, y)`` of every spaxel centre, each of shape ``(ny, nx)``, arcsec."""
        ny, nx = self.shape
        i, j = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        return self.pixel_to_angle(j, i)

    def pixel_to_angle(self, j, i) -> tuple[np.ndarray, np.ndarray]:
        """Angular ``(x, y)`` (arcsec) of (fractional) column ``j`` and row ``i``; any shape."""
        m = self.pix2angle
        j, i = np.asarray(j, dtype=float), np.asarray(i, dtype=float)
        return (
            m[0, 0] * j + m[0, 1] * i + self.ra_at_xy_0,
            m[1, 0] * j + m[1, 1] * i + self.dec_at_xy_0,
        )

    def supersampled_coordinates(
        self, supersampling: int, pad: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sub-pixel centres of the supersampled grid, extended by ``pad`` sub-pixels on each side.

        Args:
            supersampling: sub-pixels per spaxel side, ``s >= 1``.
            pad: number of extra sub-pixel rows/columns on every side (the PSF margin).

        Returns:
            ``(x, y)`` in arcsec, each of shape ``(ny * s + 2 pad, nx * s + 2 pad)``. Element
            ``[pad + I, pad + J]`` is sub-pixel ``(I % s, J % s)`` of spaxel ``(I // s, J // s)``.
        """
        s = int(supersampling)
        ny, nx = self.shape
        rows = (np.arange(-pad, ny * s + pad) + 0.5) / s - 0.5
        cols = (np.arange(-pad, nx * s + pad) + 0.5) / s - 0.5
        i, j = np.meshgrid(rows, cols, indexing="ij")
        return self.pixel_to_angle(j, i)


# ----------------------------------------------------------------------------------------------
# PSF


@dataclass(frozen=True, eq=False)
class PSF:
    """Point-spread function of the kinematic data: a Gaussian FWHM or a pixelated kernel.

    Build with :meth:`gaussian` or :meth:`pixelated` (exactly one of ``fwhm`` and ``kernel``).

    Attributes:
        fwhm: FWHM of a circular Gaussian, arcsec (``>= 0``; 0 = no seeing), or None.
        kernel: pixelated kernel on the supersampled grid, odd sizes, sums to one, or None.
        supersampling: the supersampling factor the pixelated kernel is sampled at (None for a
            Gaussian, which is sampled at whatever factor the forward model uses).
        truncation: Gaussian kernel half-width in units of sigma.

    Raises:
        ValueError: both or neither of ``fwhm`` and ``kernel``; a FWHM that is negative,
            non-finite or above :data:`MAX_FWHM_ARCSEC`; a kernel that is not 2-D, has an even
            size, is not finite, has negative entries, or does not sum to one; a missing or
            invalid supersampling factor.
    """

    fwhm: float | None = None
    kernel: np.ndarray | None = None
    supersampling: int | None = None
    truncation: float = 5.0

    def __post_init__(self) -> None:
        if (self.fwhm is None) == (self.kernel is None):
            raise ValueError("PSF needs exactly one of fwhm (Gaussian) or kernel (pixelated)")
        if not (np.isfinite(self.truncation) and self.truncation > 0):
            raise ValueError(f"PSF.truncation must be a positive number, got {self.truncation}")
        if self.fwhm is not None:
            if not (np.isfinite(self.fwhm) and 0 <= self.fwhm <= MAX_FWHM_ARCSEC):
                raise ValueError(
                    f"PSF FWHM = {self.fwhm} arcsec: must be a finite number in "
                    f"[0, {MAX_FWHM_ARCSEC}] arcsec (the width of the emulator's field)"
                )
            object.__setattr__(self, "fwhm", float(self.fwhm))
            return
        kernel = np.asarray(self.kernel, dtype=float)
        if kernel.ndim != 2:
            raise ValueError(f"PSF kernel must be 2-D, got shape {kernel.shape}")
        if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(
                f"PSF kernel must have odd sizes (its centre is the central element), "
                f"got shape {kernel.shape}"
            )
        if not np.all(np.isfinite(kernel)):
            raise ValueError("PSF kernel contains non-finite values")
        if np.any(kernel < 0):
            where = np.argwhere(kernel < 0)[:5].tolist()
            raise ValueError(
                f"PSF kernel has {int(np.sum(kernel < 0))} negative entries (e.g. at {where}, "
                f"minimum {kernel.min():.3g}): a PSF is a non-negative weight"
            )
        total = float(kernel.sum())
        if abs(total - 1.0) > _KERNEL_SUM_TOL:
            raise ValueError(
                f"PSF kernel must sum to 1 (within {_KERNEL_SUM_TOL}), sums to {total}"
            )
        s = self.supersampling
        if s is None or int(s) != s or s < 1:
            raise ValueError(
                "a pixelated PSF must state the supersampling factor it is sampled at "
                f"(a positive integer), got {s}"
            )
        object.__setattr__(self, "kernel", _readonly(kernel))
        object.__setattr__(self, "supersampling", int(s))

    @classmethod
    def gaussian(cls, fwhm: float, truncation: float = 5.0) -> PSF:
        """Circular Gaussian of FWHM ``fwhm`` arcsec, truncated at ``truncation`` sigma."""
        return cls(fwhm=fwhm, truncation=truncation)

    @classmethod
    def pixelated(cls, kernel: np.ndarray, supersampling: int) -> PSF:
        """Pixelated kernel sampled on the grid supersampled ``supersampling`` times."""
        return cls(kernel=kernel, supersampling=supersampling)

    @classmethod
    def none(cls) -> PSF:
        """No seeing (identity kernel)."""
        return cls(fwhm=0.0)


def gaussian_kernel(
    fwhm: float, pix2angle: np.ndarray, supersampling: int, truncation: float = 5.0
) -> np.ndarray:
    """Circular Gaussian PSF as a kernel on the supersampled grid of a spaxel grid.

    The kernel element at sub-pixel offset ``(du, dv)`` (rows, columns) sits at the angular
    displacement ``pix2angle / s @ (dv, du)`` and is ``exp(-|d|² / (2 sigma²))``, point-sampled,
    within a square half-width ``ceil(truncation * sigma / step)`` sub-pixels (``step`` the
    shortest sub-pixel step), then normalised to sum to one. Works with flipped and rotated
    matrices. ``fwhm = 0`` gives ``[[1.0]]``.

    Args:
        fwhm: Gaussian FWHM, arcsec.
        pix2angle: the spaxel grid's pixel-to-angle matrix, (2, 2).
        supersampling: sub-pixels per spaxel side.
        truncation: half-width in units of sigma.

    Returns:
        Kernel of shape ``(2h + 1, 2h + 1)``, float64, summing to one.

    Raises:
        ValueError: a kernel side above :data:`MAX_KERNEL_SIZE` sub-pixels.
    """
    if fwhm == 0:
        return np.ones((1, 1))
    sigma = fwhm / FWHM_PER_SIGMA
    sub = np.asarray(pix2angle, dtype=float) / supersampling
    step = min(np.linalg.norm(sub[:, 0]), np.linalg.norm(sub[:, 1]))
    half = math.ceil(truncation * sigma / step)
    if 2 * half + 1 > MAX_KERNEL_SIZE:
        raise ValueError(
            f"a Gaussian PSF of FWHM {fwhm} arcsec truncated at {truncation} sigma needs a "
            f"{2 * half + 1} x {2 * half + 1} kernel of {step:.3g}-arcsec sub-pixels, above the "
            f"limit {MAX_KERNEL_SIZE} x {MAX_KERNEL_SIZE}: use a smaller FWHM or supersampling"
        )
    offsets = np.arange(-half, half + 1)
    du, dv = np.meshgrid(offsets, offsets, indexing="ij")
    dx = sub[0, 0] * dv + sub[0, 1] * du
    dy = sub[1, 0] * dv + sub[1, 1] * du
    kernel = np.exp(-(dx**2 + dy**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def psf_kernel(psf: PSF, grid: SpaxelGrid, supersampling: int) -> np.ndarray:
    """The PSF as an odd-sized kernel on ``grid`` supersampled ``supersampling`` times.

    Raises:
        ValueError: a pixelated PSF sampled at a different supersampling factor.
    """
    if psf.kernel is not None:
        if psf.supersampling != supersampling:
            raise ValueError(
                f"the pixelated PSF is sampled at supersampling {psf.supersampling} but the "
                f"forward model uses {supersampling}: resample the kernel explicitly"
            )
        return np.asarray(psf.kernel)
    return gaussian_kernel(psf.fwhm, grid.pix2angle, supersampling, psf.truncation)


# ----------------------------------------------------------------------------------------------
# Binned kinematic data


@dataclass(frozen=True, eq=False)
class KinematicData:
    """Binned v_rms measurements on a spaxel grid, with their covariance (CONVENTIONS §6).

    Attributes:
        grid: the spaxel grid.
        bin_map: bin index of every spaxel, int, shape ``grid.shape``; negative = unused.
            Every bin ``0 .. n_bins - 1`` must own at least one spaxel and no index may be
            ``>= n_bins``.
        vrms: measured v_rms per bin, km/s, shape ``(n_bins,)``.
        covariance: bin covariance, (km/s)², shape ``(n_bins, n_bins)``, symmetric positive
            definite.
        psf: the PSF of the observation.
        z_d: deflector redshift (fixed; enters the distance rescaling).
        cholesky: lower Cholesky factor of ``covariance`` (computed at construction).

    Raises:
        ValueError: a bin map that does not match the grid or is not integer (boolean included);
            a bin index with no data or a bin with no spaxel; data or covariance of the wrong
            shape or non-finite; negative v_rms; a covariance that is not symmetric positive
            definite; an invalid ``z_d``.
    """

    grid: SpaxelGrid
    bin_map: np.ndarray
    vrms: np.ndarray
    covariance: np.ndarray
    psf: PSF
    z_d: float = 0.5
    cholesky: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        bin_map = np.asarray(self.bin_map)
        if bin_map.dtype == bool:
            raise ValueError(
                "bin_map is boolean: it must hold integer bin indices (one per spaxel, negative = "
                "unused); for a mask of used spaxels write e.g. np.where(mask, 0, -1)"
            )
        if bin_map.shape != self.grid.shape:
            raise ValueError(
                f"bin_map has shape {bin_map.shape} but the spaxel grid has shape {self.grid.shape}"
            )
        if not np.issubdtype(bin_map.dtype, np.integer):
            if not np.all(np.isfinite(bin_map)) or np.any(bin_map != np.round(bin_map)):
                raise ValueError(
                    "bin_map must hold integers (bin index per spaxel, negative = unused)"
                )
            bin_map = bin_map.astype(np.int64)
        vrms = np.asarray(self.vrms, dtype=float)
        if vrms.ndim != 1 or vrms.size == 0:
            raise ValueError(
                f"vrms must be a non-empty 1-D array (one value per bin), got {vrms.shape}"
            )
        n_bins = vrms.size
        if np.any(~np.isfinite(vrms)):
            bad = np.flatnonzero(~np.isfinite(vrms)).tolist()
            raise ValueError(f"vrms has non-finite values (NaN or inf) in bins {bad}")
        if np.any(vrms < 0):
            bad = np.flatnonzero(vrms < 0).tolist()
            raise ValueError(
                f"vrms has negative values in bins {bad[:10]} (e.g. {vrms[bad[0]]:g} km/s): "
                "v_rms = sqrt(v^2 + sigma^2) is >= 0"
            )
        used = bin_map[bin_map >= 0]
        if used.size and used.max() >= n_bins:
            extra = sorted(set(used[used >= n_bins].tolist()))
            raise ValueError(
                f"bin_map uses bin indices {extra[:10]} but vrms has only {n_bins} bins "
                "(data vs bins mismatch)"
            )
        counts = np.bincount(used, minlength=n_bins)
        if np.any(counts == 0):
            empty = np.flatnonzero(counts == 0).tolist()
            raise ValueError(f"bins {empty[:10]} have data but no spaxel in bin_map (empty bins)")
        cov = np.asarray(self.covariance, dtype=float)
        if cov.shape != (n_bins, n_bins):
            raise ValueError(
                f"covariance has shape {cov.shape} but there are {n_bins} bins "
                f"(expected ({n_bins}, {n_bins}))"
            )
        if not np.all(np.isfinite(cov)):
            raise ValueError("covariance has non-finite values (NaN or inf)")
        scale = max(float(np.max(np.abs(cov))), np.finfo(float).tiny)
        if np.max(np.abs(cov - cov.T)) > _COVARIANCE_SYMMETRY_RTOL * scale:
            raise ValueError("covariance is not symmetric")
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            chol = None
        if chol is None or not np.all(np.isfinite(chol)) or np.any(np.diag(chol) <= 0):
            eig = np.linalg.eigvalsh(cov)
            raise ValueError(
                f"covariance is not positive definite (smallest eigenvalue {eig.min():.3g})"
            )
        if not (np.isfinite(self.z_d) and self.z_d > 0):
            raise ValueError(f"z_d must be a positive finite redshift, got {self.z_d}")
        if not isinstance(self.psf, PSF):
            raise ValueError(f"psf must be a skinn_jax.ifu.PSF, got {type(self.psf).__name__}")
        object.__setattr__(self, "bin_map", _readonly(bin_map))
        object.__setattr__(self, "vrms", _readonly(vrms))
        object.__setattr__(self, "covariance", _readonly(cov))
        object.__setattr__(self, "cholesky", _readonly(chol))
        object.__setattr__(self, "z_d", float(self.z_d))

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.vrms.size)

    @classmethod
    def diagonal(
        cls,
        grid: SpaxelGrid,
        bin_map: np.ndarray,
        vrms: np.ndarray,
        sigma: np.ndarray,
        psf: PSF,
        z_d: float = 0.5,
    ) -> KinematicData:
        """Data with independent Gaussian errors ``sigma`` (km/s, finite, > 0) per bin."""
        sigma = np.asarray(sigma, dtype=float)
        if sigma.ndim != 1:
            raise ValueError(f"sigma must be 1-D (one value per bin), got shape {sigma.shape}")
        bad = np.flatnonzero(~(np.isfinite(sigma) & (sigma > 0))).tolist()
        if bad:
            raise ValueError(
                f"sigma must be finite and > 0 km/s in every bin; bins {bad[:10]} have "
                f"{sigma[bad[:10]].tolist()}"
            )
        return cls(grid, bin_map, vrms, np.diag(sigma**2), psf, z_d)

    def bins_to_image(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Paint per-bin ``values`` (n_bins,) onto the spaxel grid; unused spaxels get ``fill``."""
        values = np.asarray(values)
        if values.shape != (self.n_bins,):
            raise ValueError(f"values must have shape ({self.n_bins},), got {values.shape}")
        image = np.full(self.grid.shape, fill, dtype=float)
        used = self.bin_map >= 0
        image[used] = values[self.bin_map[used]]
        return image
