"""Multi-Gaussian expansions (MGE) of the cored power-law mass and the Sérsic light, checked.

CONVENTIONS §3. Every expansion is a 1-D fit of the major-axis profile; each Gaussian then takes the
profile's axis ratio. Two facts make this fast and exact:

* the *shape* of the cored power law depends only on ``gamma`` (the core ``r_c = 0.08"`` is fixed;
  ``theta_E`` and ``q_mass`` only scale its amplitude), and the shape of the Sérsic profile in
  units of ``r_sersic`` depends only on ``n_sersic``;
* for a fixed set of dispersions the amplitudes are a non-negative least-squares (NNLS) problem
  that takes well under a millisecond.

So the dispersions are optimised once (with :func:`mgefit.mge_fit_1d.mge_fit_1d`) on a fine grid
of ``gamma`` and ``n_sersic`` and stored in ``mge_table.npz``; per profile the nearest node's
dispersions are reused and only the amplitudes are re-fitted by NNLS on the exact profile. Every
fit is then *checked* against its profile over 0.01--8 arcsec (:data:`CHECK_RANGE_ARCSEC`) and must
be better than :data:`MAX_REL_ERROR` (0.5 %); a failing fit falls back to a direct
``mge_fit_1d`` with more Gaussians and raises :class:`MGEFitError` if that fails too.
``mge_fit_1d`` alone only prints a warning when it fails (CONVENTIONS §3), so nothing here trusts
it unchecked.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from skinn_jax.profiles import R_CORE_ARCSEC, sersic_b_np, sersic_total_flux_np

CHECK_RANGE_ARCSEC = (0.01, 8.0)
MAX_REL_ERROR = 5e-3
"""Largest relative error of an MGE over :data:`CHECK_RANGE_ARCSEC` that is accepted."""
TABLE_TARGET_REL_ERROR = 2e-4
"""Accuracy the tabulated dispersions are optimised for (margin below MAX_REL_ERROR)."""
MASS_FIT_RANGE_ARCSEC = (1e-3, 200.0)
LIGHT_FIT_INNER_ARCSEC = 1e-3
LIGHT_FIT_OUTER_MAX_ARCSEC = 200.0
LIGHT_FIT_DYNAMIC_RANGE = 1e-10
"""The light fit ends where the profile has fallen to this fraction of its value at r_sersic."""

TABLE_PATH = Path(__file__).with_name("mge_table.npz")
GAMMA_NODES = np.round(np.arange(1.45, 2.5501, 0.01), 4)
N_SERSIC_NODES = np.round(np.arange(1.9, 4.1001, 0.01), 4)
_N_FIT_RADII = 300
_N_CHECK_RADII = 400


class MGEFitError(RuntimeError):
    """Raised when no MGE reproduces its profile to :data:`MAX_REL_ERROR` over the check range."""


@dataclass(frozen=True)
class MGE:
    """A 1-D multi-Gaussian expansion of a major-axis profile.

    Attributes:
        peak: peak value of each Gaussian, in the profile's units (shape ``(K,)``); the profile is
            ``sum_k peak_k * exp(-r**2 / (2 sigma_k**2))``.
        sigma_arcsec: dispersion of each Gaussian along the major axis, arcsec (shape ``(K,)``).
        max_rel_error: largest relative error over :data:`CHECK_RANGE_ARCSEC`.
    """

    peak: np.ndarray
    sigma_arcsec: np.ndarray
    max_rel_error: float

    def __call__(self, r_arcsec: np.ndarray) -> np.ndarray:
        """Evaluate the expansion at major-axis radii ``r_arcsec`` (any shape)."""
        r = np.asarray(r_arcsec, dtype=float)
        return np.sum(self.peak * np.exp(-0.5 * (r[..., None] / self.sigma_arcsec) ** 2), axis=-1)


def cored_power_law_shape(r_arcsec: np.ndarray, gamma: float) -> np.ndarray:
    """Major-axis shape of the cored PEMD, ``(r**2 + r_c**2)**((1 - gamma)/2)`` (CONVENTIONS §2).

    The convergence on the major axis is
    ``theta_E**(gamma-1) * (3-gamma)/(1+q_mass) * cored_power_law_shape(r, gamma)``.
    """
    return (np.asarray(r_arcsec) ** 2 + R_CORE_ARCSEC**2) ** ((1.0 - gamma) / 2.0)


def sersic_shape(u: np.ndarray, n_sersic: float) -> np.ndarray:
    """Sérsic profile in units of its radius, ``exp(-b_n (u**(1/n) - 1))``, ``u = r / r_sersic``."""
    return np.exp(-float(sersic_b_np(n_sersic)) * (np.asarray(u) ** (1.0 / n_sersic) - 1.0))


def light_fit_outer_radius(r_sersic: float, n_sersic: float) -> float:
    """Radius (arcsec) where the Sérsic profile falls to 1e-10 of its value at r_sersic, <= 200"."""
    u_end = (1.0 - np.log(LIGHT_FIT_DYNAMIC_RANGE) / float(sersic_b_np(n_sersic))) ** n_sersic
    return float(min(r_sersic * u_end, LIGHT_FIT_OUTER_MAX_ARCSEC))


def _check_radii() -> np.ndarray:
    return np.geomspace(*CHECK_RANGE_ARCSEC, _N_CHECK_RADII)


def max_relative_error(mge: MGE | tuple, profile, radii: np.ndarray | None = None) -> float:
    """Largest ``|mge(r)/profile(r) - 1|`` over ``radii`` (default: the check range)."""
    r = _check_radii() if radii is None else radii
    peak, sigma = (mge.peak, mge.sigma_arcsec) if isinstance(mge, MGE) else mge
    model = np.sum(peak * np.exp(-0.5 * (r[:, None] / sigma) ** 2), axis=-1)
    return float(np.max(np.abs(model / profile(r) - 1.0)))


def nnls_amplitudes(radii: np.ndarray, profile_values: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Non-negative peaks of Gaussians with fixed ``sigma`` that fit a profile in relative error.

    Args:
        radii: fit radii, arcsec, shape ``(R,)``.
        profile_values: profile at ``radii``, shape ``(R,)``, positive.
        sigma: dispersions, arcsec, shape ``(K,)``.

    Returns:
        peaks, shape ``(K,)``, non-negative.
    """
    design = np.exp(-0.5 * (radii[:, None] / sigma[None, :]) ** 2) / profile_values[:, None]
    peak, _ = nnls(design, np.ones_like(radii), maxiter=50 * sigma.size)
    return peak


def mge_fit_1d_quiet(radii: np.ndarray, values: np.ndarray, ngauss: int) -> tuple[np.ndarray, ...]:
    """Run ``mgefit.mge_fit_1d`` silently; return ``(peak, sigma)`` of its Gaussians."""
    from mgefit.mge_fit_1d import mge_fit_1d

    with contextlib.redirect_stdout(io.StringIO()):
        fit = mge_fit_1d(radii, values, ngauss=ngauss, quiet=True, plot=False)
    total, sigma = fit.sol
    return total / (np.sqrt(2.0 * np.pi) * sigma), sigma


def _best_direct_fit(radii, profile, check_radii, ngauss_options) -> tuple[np.ndarray, ...]:
    """mge_fit_1d with several numbers of Gaussians; the one with the smallest checked error."""
    best = None
    for ngauss in ngauss_options:
        try:
            peak, sigma = mge_fit_1d_quiet(radii, profile(radii), ngauss)
        except (AssertionError, ValueError, np.linalg.LinAlgError):
            continue  # mge_fit_1d rejects some inputs with assertions: treat as a failed fit
        err = max_relative_error((peak, sigma), profile, check_radii)
        if best is None or err < best[0]:
            best = (err, peak, sigma)
        if err <= TABLE_TARGET_REL_ERROR:
            break
    return best


_TABLE_NGAUSS = (16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36)


def _table_node(job: tuple[str, float]) -> tuple[float, np.ndarray]:
    """Optimised dispersions for one table node: ("mass", gamma) or ("light", n_sersic)."""
    kind, value = job
    if kind == "mass":
        # mge_fit_1d stalls near 5e-4 for the cored power law; log-spaced dispersions with NNLS
        # amplitudes reach 1e-4 with ~20 Gaussians. Take the fewest that meet the target.
        radii = np.geomspace(*MASS_FIT_RANGE_ARCSEC, _N_FIT_RADII)
        profile = lambda r: cored_power_law_shape(r, value)  # noqa: E731
        best = None
        for per_decade in (4, 5, 6, 7, 8):
            sigma = np.geomspace(0.005, 300.0, int(per_decade * np.log10(300.0 / 0.005)) + 1)
            peak = nnls_amplitudes(radii, profile(radii), sigma)
            sigma = sigma[peak > 0]
            err = max_relative_error((peak[peak > 0], sigma), profile)
            if best is None or err < best[0]:
                best = (err, sigma)
            if err <= TABLE_TARGET_REL_ERROR:
                break
        return best
    else:
        radii = np.geomspace(1e-3, min(light_fit_outer_radius(1.0, value), 400.0), _N_FIT_RADII)
        profile = lambda u: sersic_shape(u, value)  # noqa: E731
        check = np.geomspace(0.005, 32.0, _N_CHECK_RADII)  # 0.01-8" for any r_sersic in the box
    err, _, sigma = _best_direct_fit(radii, profile, check, _TABLE_NGAUSS)
    return err, sigma


def build_table(progress: bool = True) -> dict[str, np.ndarray]:
    """Optimise the tabulated dispersions (about a minute on one core).

    Mass: one set per ``gamma`` node, in arcsec. Light: one set per ``n_sersic`` node, in units of
    ``r_sersic``, checked over ``u`` in [0.005, 32] (the check range for any r_sersic in the box).
    Sets are padded with NaN to a common length.
    """
    from tqdm import tqdm

    def pad(rows):
        width = max(len(r) for r in rows)
        out = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            out[i, : len(r)] = np.sort(r)
        return out

    import concurrent.futures as cf

    jobs = [("mass", g) for g in GAMMA_NODES] + [("light", n) for n in N_SERSIC_NODES]
    with cf.ProcessPoolExecutor() as pool:
        results = list(
            tqdm(
                pool.map(_table_node, jobs), total=len(jobs), desc="MGE table", disable=not progress
            )
        )
    mass = [r for (kind, _), r in zip(jobs, results, strict=True) if kind == "mass"]
    light = [r for (kind, _), r in zip(jobs, results, strict=True) if kind == "light"]
    mass_err, mass_sigma = zip(*mass, strict=True)
    light_err, light_sigma = zip(*light, strict=True)
    return {
        "gamma_nodes": GAMMA_NODES,
        "mass_sigma_arcsec": pad(mass_sigma),
        "mass_table_error": np.array(mass_err),
        "n_nodes": N_SERSIC_NODES,
        "light_sigma_over_r_sersic": pad(light_sigma),
        "light_table_error": np.array(light_err),
    }


@functools.cache
def _load_npz(path: Path, rebuild: str) -> dict[str, np.ndarray]:
    """A shipped table, read once per process."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rebuild it with `{rebuild}`")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_table() -> dict[str, np.ndarray]:
    """The shipped dispersion table (``training/mge_table.npz``), cached per process."""
    return _load_npz(TABLE_PATH, "skinn-jax mge-table")


def _node_sigmas(nodes: np.ndarray, sigma_rows: np.ndarray, value: float) -> list[np.ndarray]:
    """Dispersion sets of the nearest node first, then its two neighbours."""
    i = int(np.argmin(np.abs(nodes - value)))
    order = [i] + [j for j in (i - 1, i + 1) if 0 <= j < len(nodes)]
    return [sigma_rows[j][np.isfinite(sigma_rows[j])] for j in order]


def _checked_fit(
    radii, profile, candidate_sigmas, what: str, check=None, direct_fallback: bool = True
) -> MGE:
    check = _check_radii() if check is None else check
    values = profile(radii)
    best = None
    for sigma in candidate_sigmas:
        peak = nnls_amplitudes(radii, values, sigma)
        keep = peak > 0
        mge = MGE(peak[keep], sigma[keep], max_relative_error((peak, sigma), profile, check))
        if best is None or mge.max_rel_error < best.max_rel_error:
            best = mge
        if mge.max_rel_error <= MAX_REL_ERROR:
            return mge
    # Fallback: a direct fit with more Gaussians (slow but rare).
    direct = _best_direct_fit(radii, profile, check, (20, 24, 28, 32)) if direct_fallback else None
    if direct is not None and direct[0] <= MAX_REL_ERROR:
        return MGE(direct[2], direct[1], direct[0])
    err = best.max_rel_error if direct is None else min(direct[0], best.max_rel_error)
    raise MGEFitError(
        f"MGE of the {what} misses its profile by {err:.3%} over "
        f"{check[0]:.3g}-{check[-1]:.3g} arcsec (allowed {MAX_REL_ERROR:.1%})"
    )


def mass_mge(gamma: float) -> MGE:
    """Checked MGE of the major-axis shape of the cored power law with slope ``gamma``.

    Returns peaks of ``cored_power_law_shape`` (dimensionless); multiply by
    ``theta_E**(gamma-1) (3-gamma)/(1+q_mass) * Sigma_crit`` for a surface density.
    """
    table = load_table()
    radii = np.geomspace(*MASS_FIT_RANGE_ARCSEC, _N_FIT_RADII)
    candidates = _node_sigmas(table["gamma_nodes"], table["mass_sigma_arcsec"], gamma)
    return _checked_fit(
        radii,
        lambda r: cored_power_law_shape(r, gamma),
        candidates,
        f"cored power law (gamma={gamma:.4g})",
    )


def mge_total_flux(mge: MGE) -> float:
    """Total flux of a circular MGE, ``sum 2 pi peak sigma^2``."""
    return float(np.sum(2 * np.pi * mge.peak * mge.sigma_arcsec**2))


def light_mge(r_sersic: float, n_sersic: float) -> MGE:
    """Checked MGE of the major-axis Sérsic profile (unit value at ``r_sersic``).

    Besides the profile over 0.01-8", the total flux must match the Sérsic's to 0.5 %: a tiny
    Gaussian with a huge peak can hide between the fit radii and would wreck luminosity weights.
    """
    table = load_table()
    radii = np.geomspace(
        LIGHT_FIT_INNER_ARCSEC, light_fit_outer_radius(r_sersic, n_sersic), _N_FIT_RADII
    )
    candidates = [
        s * r_sersic
        for s in _node_sigmas(table["n_nodes"], table["light_sigma_over_r_sersic"], n_sersic)
    ]
    what = f"Sérsic light (r_sersic={r_sersic:.4g}, n_sersic={n_sersic:.4g})"
    fit = _checked_fit(radii, lambda r: sersic_shape(r / r_sersic, n_sersic), candidates, what)
    flux_error = mge_total_flux(fit) / sersic_total_flux_np(r_sersic, n_sersic) - 1.0
    if not abs(flux_error) <= MAX_REL_ERROR:
        raise MGEFitError(f"MGE of the {what} has a total flux off by {flux_error:.3%}")
    return fit


def plain_light_mge(r_sersic: float, n_sersic: float, ngauss: int = 20) -> MGE:
    """The plain approach (one ``mge_fit_1d`` per profile, 1e-10 range), checked: the baseline."""
    radii = np.geomspace(
        LIGHT_FIT_INNER_ARCSEC, light_fit_outer_radius(r_sersic, n_sersic), _N_FIT_RADII
    )
    profile = lambda r: sersic_shape(r / r_sersic, n_sersic)  # noqa: E731
    peak, sigma = mge_fit_1d_quiet(radii, profile(radii), ngauss)
    return MGE(peak, sigma, max_relative_error((peak, sigma), profile))


def plain_mass_mge(gamma: float, ngauss: int = 20) -> MGE:
    """The plain approach for the mass: one ``mge_fit_1d`` over 1e-3--200 arcsec, checked."""
    radii = np.geomspace(*MASS_FIT_RANGE_ARCSEC, _N_FIT_RADII)
    profile = lambda r: cored_power_law_shape(r, gamma)  # noqa: E731
    peak, sigma = mge_fit_1d_quiet(radii, profile(radii), ngauss)
    return MGE(peak, sigma, max_relative_error((peak, sigma), profile))


def save_table(path: Path = TABLE_PATH, progress: bool = True) -> Path:
    """Build and save the dispersion table."""
    np.savez(path, **build_table(progress=progress))
    return path


# ----------------------------------------------------------------------------------------------
# The real-lens space (CONVENTIONS §9): free core down to the singular law, Sérsic n in [1, 6]

REAL_CHECK_RANGE_ARCSEC = (0.01, 13.0)
"""Major-axis radii over which every real-lens MGE is checked (the map corner at q = 0.5 lies at
elliptical radius 12.3")."""
SINGULAR_SIGMA_MIN_ARCSEC = 1e-7
"""Smallest mass Gaussian of the singular power law: it holds all but ~(1e-7/r)^(3-gamma) of the
mass inside r (3e-4 of the mass inside 1" at gamma = 2.5)."""
MASS_SIGMA_MAX_ARCSEC = 300.0
MASS_GAUSSIANS_PER_DECADE = (4, 5, 6)
LIGHT_FIT_DROP = 1e-15
"""The real-lens light fit runs out to where the Sérsic profile has fallen to this fraction of its
value at r_sersic (at most :data:`LIGHT_FIT_OUTER_MAX_WIDE_ARCSEC`): its whole extent in practice,
so that v_rms in the faint outskirts is the model's, not the fit's."""
LIGHT_FIT_OUTER_MAX_WIDE_ARCSEC = 2000.0
WIDE_TABLE_PATH = Path(__file__).with_name("mge_table_wide.npz")
WIDE_N_SERSIC_NODES = np.round(np.arange(0.96, 6.0501, 0.02), 4)
_WIDE_TABLE_NGAUSS = (16, 20, 24, 28, 32, 36)
_WIDE_TABLE_TARGET = 2.5e-3
_WIDE_U_CHECK = (0.002, 175.0)
"""Check range in units of r_sersic: 0.01-13" for every r_sersic in the real-lens box."""


def power_law_shape(r_arcsec: np.ndarray, gamma: float, r_core: float) -> np.ndarray:
    """Major-axis shape ``(r**2 + r_core**2)**((1 - gamma)/2)`` of the power law of CONVENTIONS §2
    with core radius ``r_core`` (arcsec; 0 is the singular law)."""
    return (np.asarray(r_arcsec, dtype=float) ** 2 + r_core**2) ** ((1.0 - gamma) / 2.0)


def _real_check_radii(outer: float = REAL_CHECK_RANGE_ARCSEC[1]) -> np.ndarray:
    return np.geomspace(REAL_CHECK_RANGE_ARCSEC[0], outer, _N_CHECK_RADII)


def power_law_mge(gamma: float, r_core: float) -> MGE:
    """Checked MGE of the (cored or singular) power law, for the real-lens space.

    Log-spaced dispersions from ``max(1e-7, r_core / 20)`` to 300" with non-negative amplitudes
    fitted in relative error (1e-7" to 200"); the fewest per decade that reproduce the profile
    to :data:`MAX_REL_ERROR` over :data:`REAL_CHECK_RANGE_ARCSEC`. With ``r_core = 0`` this is
    the singular law itself, not a small core standing in for it.

    Args:
        gamma: 2D slope (CONVENTIONS §2), in [1.5, 2.5].
        r_core: core radius, arcsec, >= 0.

    Returns:
        Peaks of :func:`power_law_shape` (dimensionless); multiply by
        ``theta_E**(gamma-1) (3-gamma)/(1+q_mass) * Sigma_crit`` for a surface density.
    """
    if not (r_core >= 0 and np.isfinite(r_core)):
        raise ValueError(f"r_core = {r_core} arcsec must be finite and >= 0")
    low = max(SINGULAR_SIGMA_MIN_ARCSEC, r_core / 20.0)
    radii = np.geomspace(low, MASS_FIT_RANGE_ARCSEC[1], int(40 * np.log10(200.0 / low)) + 1)
    candidates = [
        np.geomspace(low, MASS_SIGMA_MAX_ARCSEC, int(per_decade * np.log10(300 / low)) + 1)
        for per_decade in MASS_GAUSSIANS_PER_DECADE
    ]
    return _checked_fit(
        radii,
        lambda r: power_law_shape(r, gamma, r_core),
        candidates,
        f"power law (gamma={gamma:.4g}, r_core={r_core:.4g})",
        _real_check_radii(),
        direct_fallback=False,
    )


def light_fit_outer_radius_wide(r_sersic: float, n_sersic: float) -> float:
    """Radius (arcsec) where the Sérsic profile falls to :data:`LIGHT_FIT_DROP` of its value at
    r_sersic, at most :data:`LIGHT_FIT_OUTER_MAX_WIDE_ARCSEC`."""
    u_end = (1.0 - np.log(LIGHT_FIT_DROP) / float(sersic_b_np(n_sersic))) ** n_sersic
    return float(min(r_sersic * u_end, LIGHT_FIT_OUTER_MAX_WIDE_ARCSEC))


def _wide_table_node(n_sersic: float) -> tuple[float, np.ndarray]:
    """Optimised dispersions (units of r_sersic) for one Sérsic index of the wide table."""
    u_end = light_fit_outer_radius_wide(1.0, n_sersic)
    u_end = min(u_end, 4000.0)
    radii = np.geomspace(2e-4, u_end, _N_FIT_RADII)
    profile = lambda u: sersic_shape(u, n_sersic)  # noqa: E731
    check = np.geomspace(_WIDE_U_CHECK[0], min(_WIDE_U_CHECK[1], u_end), _N_CHECK_RADII)
    best = None
    for ngauss in _WIDE_TABLE_NGAUSS:
        try:
            peak, sigma = mge_fit_1d_quiet(radii, profile(radii), ngauss)
        except (AssertionError, ValueError, np.linalg.LinAlgError):
            continue
        err = max_relative_error((peak, sigma), profile, check)
        if best is None or err < best[0]:
            best = (err, sigma)
        if err <= _WIDE_TABLE_TARGET:
            break
    return best


def build_wide_table(progress: bool = True, workers: int | None = None) -> dict[str, np.ndarray]:
    """Optimise the real-lens light dispersions, one set per Sérsic index node (minutes)."""
    import concurrent.futures as cf

    from tqdm import tqdm

    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(_wide_table_node, WIDE_N_SERSIC_NODES),
                total=len(WIDE_N_SERSIC_NODES),
                desc="wide MGE table",
                disable=not progress,
            )
        )
    errors, sigmas = zip(*results, strict=True)
    width = max(len(s) for s in sigmas)
    table = np.full((len(sigmas), width), np.nan)
    for i, s in enumerate(sigmas):
        table[i, : len(s)] = np.sort(s)
    return {
        "n_nodes": WIDE_N_SERSIC_NODES,
        "light_sigma_over_r_sersic": table,
        "light_table_error": np.array(errors),
    }


def load_wide_table() -> dict[str, np.ndarray]:
    """The shipped real-lens light table (``training/mge_table_wide.npz``), cached per process."""
    return _load_npz(WIDE_TABLE_PATH, "skinn-jax mge-table --space real-lens")


def sersic_mge(r_sersic: float, n_sersic: float) -> MGE:
    """Checked MGE of a Sérsic light for the real-lens space (unit value at ``r_sersic``).

    Dispersions from the nearest node of the wide table (scaled by ``r_sersic``), amplitudes by
    NNLS in relative error over 1e-3" to :func:`light_fit_outer_radius_wide` (the profile's whole
    extent); checked to :data:`MAX_REL_ERROR` over 0.01-13" (or to where the profile has fallen
    to 1e-15, if that is closer) and in total flux. Falls back to a direct ``mge_fit_1d``.
    """
    table = load_wide_table()
    outer = light_fit_outer_radius_wide(r_sersic, n_sersic)
    # from 2e-4 r_sersic (the table's inner fit radius) so that no small Gaussian is unconstrained
    radii = np.geomspace(min(LIGHT_FIT_INNER_ARCSEC, 2e-4 * r_sersic), outer, _N_FIT_RADII)
    check = _real_check_radii(min(REAL_CHECK_RANGE_ARCSEC[1], outer))
    profile = lambda r: sersic_shape(r / r_sersic, n_sersic)  # noqa: E731
    what = f"Sérsic light (r_sersic={r_sersic:.4g}, n_sersic={n_sersic:.4g})"
    candidates = [
        s * r_sersic
        for s in _node_sigmas(table["n_nodes"], table["light_sigma_over_r_sersic"], n_sersic)
    ]
    # fallbacks: log-spaced dispersions, ever denser (more Gaussians, but always a good fit)
    candidates += [
        np.geomspace(radii[0], outer, int(per_decade * np.log10(outer / radii[0])) + 1)
        for per_decade in (10, 14, 20)
    ]
    fit = _checked_fit(radii, profile, candidates, what, check, direct_fallback=False)
    flux_error = mge_total_flux(fit) / sersic_total_flux_np(r_sersic, n_sersic) - 1.0
    if not abs(flux_error) <= MAX_REL_ERROR:
        raise MGEFitError(f"MGE of the {what} has a total flux off by {flux_error:.3%}")
    return fit


def save_wide_table(path: Path = WIDE_TABLE_PATH, progress: bool = True) -> Path:
    """Build and save the real-lens light table (``skinn-jax mge-table --space real-lens``)."""
    np.savez(path, **build_wide_table(progress=progress))
    return path
