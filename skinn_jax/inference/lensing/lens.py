"""The model's lens: image-position coordinates, the lens solver, emulator <-> EPL conversions.

In lensing and joint modes the model samples the four quasar image positions and solves the
lens for them (:func:`solve_lens`: eight lens equations for ``SOLVED`` and image D's ``y``, with
the one Newton solver of :mod:`skinn_jax.inference.lensing.solver` and its implicit Jacobian).
Herculens's EPL ``theta_E_epl, e1, e2`` are converted to and from the emulator's ``theta_E,
q_mass, phi`` only through the tested conversions of :mod:`skinn_jax.profiles`. Angles in arcsec
(``phi`` in radians), fluxes in counts/s.

Imports: ``skinn_jax.profiles``, :mod:`.imaging`, :mod:`.solver`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from skinn_jax.profiles import (
    e1e2_from_q_phi,
    q_phi_from_e1e2,
    sersic_enclosed_fraction,
    sersic_total_flux,
    theta_E_epl_from_emulator,
    theta_E_from_epl,
)

from .imaging import ImagingModel, LensParams
from .profiles import flux_from_magnitude
from .solver import damped_newton, implicit_log_jacobian, newton

if TYPE_CHECKING:  # (annotations only: the model imports this module)
    from ..data import SystemData
    from ..model import ModelSetup

SOLVED: tuple[str, ...] = ("theta_E_epl", "e1", "e2", "gamma1", "gamma2", "src_x", "src_y")
"""Lens parameters solved from the image positions in lensing and joint modes (plus ``ps_y[3]``)."""


LENS_MAG_APERTURE_ARCSEC = 1.0
"""Major-axis radius (arcsec) of the isophote inside which the lens light's sampled magnitude
``lens_mag_aperture`` is measured. The imaging constrains the light inside ~1″ far better than
its extrapolated total: on the study's joint fits the total magnitude was correlated with
``r_sersic`` (-0.95) and ``n_sersic`` (-0.82), a curved ridge that mixed slowly (mock system 4:
ESS 20 in 2,800 draws); the magnitude inside 1″ has correlations below 0.25 with both and a
third to a quarter of the width."""


def total_magnitude(lens_mag_aperture, r_sersic, n_sersic) -> Array:
    """Total magnitude of the lens light from its magnitude inside
    :data:`LENS_MAG_APERTURE_ARCSEC`: ``m_ap + 2.5 log10 f`` with ``f`` the enclosed fraction
    (:func:`skinn_jax.profiles.sersic_enclosed_fraction`). ``r_sersic`` in arcsec."""
    fraction = sersic_enclosed_fraction(LENS_MAG_APERTURE_ARCSEC, r_sersic, n_sersic)
    return lens_mag_aperture + 2.5 * jnp.log10(fraction)


def aperture_magnitude(lens_mag, r_sersic, n_sersic) -> Array:
    """Inverse of :func:`total_magnitude`: the magnitude inside :data:`LENS_MAG_APERTURE_ARCSEC`
    of a light of total magnitude ``lens_mag``."""
    fraction = sersic_enclosed_fraction(LENS_MAG_APERTURE_ARCSEC, r_sersic, n_sersic)
    return lens_mag - 2.5 * jnp.log10(fraction)


def mass_from_epl(theta_E_epl, gamma, e1, e2) -> dict:
    """Emulator mass parameters from Herculens EPL ones, by the tested conversions.

    :func:`skinn_jax.profiles.q_phi_from_e1e2` and :func:`skinn_jax.profiles.theta_E_from_epl`.

    Returns:
        ``{"theta_E", "q_mass", "phi"}``.
    """
    q, phi = q_phi_from_e1e2(e1, e2)
    return {"theta_E": theta_E_from_epl(theta_E_epl, gamma, q), "q_mass": q, "phi": phi}


def epl_from_mass(theta_E, gamma, q_mass, phi) -> dict:
    """Herculens EPL parameters from emulator ones (tested conversions; inverse of the above).

    :func:`skinn_jax.profiles.theta_E_epl_from_emulator` and
    :func:`skinn_jax.profiles.e1e2_from_q_phi`.
    """
    e1, e2 = e1e2_from_q_phi(q_mass, phi)
    return {"theta_E_epl": theta_E_epl_from_emulator(theta_E, gamma, q_mass), "e1": e1, "e2": e2}


def log_epl_jacobian(theta_E, gamma, q_mass, phi) -> Array:
    """``log |det ∂(theta_E_epl, e1, e2) / ∂(theta_E, q_mass, phi)|`` at fixed ``gamma``.

    Subtracted in lensing and joint modes, where the EPL parameters are solved from the image
    positions, so that the prior is uniform in ``(theta_E, q_mass, phi)``.
    """

    def f(u):
        out = epl_from_mass(u[0], gamma, u[1], u[2])
        return jnp.stack([out["theta_E_epl"], out["e1"], out["e2"]])

    u = jnp.stack([jnp.asarray(theta_E), jnp.asarray(q_mass), jnp.asarray(phi)])
    return jnp.linalg.slogdet(jax.jacfwd(f)(u))[1]


def lens_params(values: dict, zero_point: float) -> LensParams:
    """Herculens imaging parameters from a dict with the EPL mass, shear, source and images.

    ``values`` holds ``theta_E_epl, e1, e2, gamma, center_x, center_y, gamma1, gamma2,
    src_x, src_y, ps_x (4,), ps_y (4,)``, the light parameters and magnitudes (the lens light's
    inside :data:`LENS_MAG_APERTURE_ARCSEC`, the source's total), and the emulator ``theta_E`` and
    ``phi`` (for ``r_sersic`` and the light's position angle). Amplitudes come from the
    magnitudes with the exact Sérsic total flux; the central image's flux is left at zero
    (:func:`with_central_image`).
    """
    r_sersic = values["r_sersic_ratio"] * values["theta_E"]
    lens_mag = total_magnitude(values["lens_mag_aperture"], r_sersic, values["n_sersic"])
    lens_flux = flux_from_magnitude(lens_mag, zero_point)
    src_flux = flux_from_magnitude(values["src_mag"], zero_point)
    return LensParams(
        theta_E_epl=values["theta_E_epl"],
        gamma=values["gamma"],
        e1=values["e1"],
        e2=values["e2"],
        center_x=values["center_x"],
        center_y=values["center_y"],
        gamma1=values["gamma1"],
        gamma2=values["gamma2"],
        lens_amp=lens_flux / sersic_total_flux(r_sersic, values["n_sersic"], values["q_light"]),
        r_sersic=r_sersic,
        n_sersic=values["n_sersic"],
        q_light=values["q_light"],
        phi=values["phi"],
        src_x=values["src_x"],
        src_y=values["src_y"],
        src_amp=src_flux / sersic_total_flux(values["src_r"], values["src_n"], 1.0),
        src_r=values["src_r"],
        src_n=values["src_n"],
        ps_x=values["ps_x"],
        ps_y=values["ps_y"],
        ps_amp=flux_from_magnitude(values["ps_mag"], zero_point),
        ps_central_amp=0.0,
    )


def with_central_image(imaging: ImagingModel, lens: LensParams) -> LensParams:
    """Set the central image's flux to ``mean_i(F_i / |μ_i|) |μ_c|`` (the implied quasar flux)."""
    xc, yc = imaging.central_image(lens)
    mu = imaging.magnification(
        lens, jnp.concatenate([jnp.atleast_1d(lens.ps_x), xc[None]]),
        jnp.concatenate([jnp.atleast_1d(lens.ps_y), yc[None]]),
    )  # fmt: skip
    quasar_flux = jnp.mean(lens.ps_amp / jnp.abs(mu[:-1]))
    return lens._replace(ps_central_amp=quasar_flux * jnp.abs(mu[-1]))


def lens_light_centre(data: SystemData, imaging: ImagingModel) -> np.ndarray:
    """The lens light's peak, measured on the image: (x, y) arcsec.

    The flux-weighted centroid of the 3 x 3 pixels around the brightest pixel that lies within
    1″ of the images' mean position and more than 0.3″ from every quasar image.
    """
    pos = np.asarray(data.image_positions, float)
    x, y = imaging.coordinates
    image = np.asarray(data.imaging.image, float)
    mean = pos.mean(axis=0)
    allowed = np.hypot(x - mean[0], y - mean[1]) < 1.0
    for px, py in pos:
        allowed &= np.hypot(x - px, y - py) > 0.3
    r, c = np.unravel_index(np.argmax(np.where(allowed, image, -np.inf)), image.shape)
    rs, cs = slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2)
    w = np.clip(image[rs, cs], 0.0, None)
    return np.array([np.sum(w * x[rs, cs]), np.sum(w * y[rs, cs])]) / np.sum(w)


def default_solver_start(
    data: SystemData, imaging: ImagingModel, gamma: float = 2.0, max_iter: int = 100
) -> dict:
    """A start for the lens solver from the measured image positions alone.

    Starting from a slightly elliptical, slightly sheared lens centred on the lens light's peak
    (:func:`lens_light_centre`), with ``theta_E_epl`` the images' mean distance from it, damped
    Newton iterations (eager,
    at most ``max_iter``) solve the lens equations for the measured positions at slope
    ``gamma``; the solution is the start of the in-model solver.

    Raises:
        ValueError: the iterations do not converge (pass ``solver_start`` to :func:`build_setup`).
    """
    pos = np.asarray(data.image_positions, float)
    centre = lens_light_centre(data, imaging)
    u = np.array(
        [
            np.mean(np.hypot(*(pos - centre).T)),
            0.01,
            0.01,
            0.01,
            0.01,
            centre[0],
            centre[1],
            pos[3, 1],
        ]
    )
    fixed = {"gamma": gamma, "center_x": centre[0], "center_y": centre[1]}

    def residual(uu):
        return _solver_residual(imaging, fixed, uu, jnp.asarray(pos[:, 0]), jnp.asarray(pos[:3, 1]))

    u, norm = damped_newton(residual, u, max_iter=max_iter, max_step=0.2, damped=slice(0, 5))
    if not (np.all(np.isfinite(u)) and float(norm) < 1e-8):
        raise ValueError(
            "could not solve the lens equations for the measured image positions from a round "
            "start; pass solver_start (e.g. a previous fit's lens) to build_setup"
        )
    names = SOLVED + ("ps_y_d",)
    start = {k: float(u[i]) for i, k in enumerate(names) if k != "ps_y_d"}
    start["ps_y"] = np.concatenate([pos[:3, 1], [u[7]]])
    return start


def solver_start_vector(
    data: SystemData, start: dict | None, imaging: ImagingModel | None
) -> np.ndarray | None:
    """The solver's start as the vector ``(SOLVED..., ps_y[3])``, (8,) (None without imaging)."""
    if imaging is None:
        return None
    start = default_solver_start(data, imaging) if start is None else start
    return np.array([float(np.asarray(start[k])) for k in SOLVED] + [float(start["ps_y"][3])])


def _solver_residual(imaging: ImagingModel, fixed: dict, u: Array, ps_x, ps_y_abc) -> Array:
    """Lens-equation residuals ``β(θ_i) - β_s`` of the four images (8,) for unknowns ``u``."""
    theta_E_epl, e1, e2, g1, g2, sx, sy, y_d = (u[i] for i in range(8))
    kw = [
        {
            "theta_E": theta_E_epl,
            "gamma": fixed["gamma"],
            "e1": e1,
            "e2": e2,
            "center_x": fixed["center_x"],
            "center_y": fixed["center_y"],
        },
        {"gamma1": g1, "gamma2": g2, "ra_0": 0.0, "dec_0": 0.0},
    ]
    ys = jnp.concatenate([ps_y_abc, y_d[None]])
    bx, by = imaging.mass_model.ray_shooting(ps_x, ys, kw)
    return jnp.concatenate([bx - sx, by - sy])


def solve_lens(setup: ModelSetup, values: dict) -> tuple[dict, Array, Array]:
    """Solve the lens for the sampled image positions (lensing and joint modes).

    The unknowns ``u = (theta_E_epl, e1, e2, gamma1, gamma2, src_x, src_y, ps_y[3])`` make the
    four images ``(ps_x[i], ps_y[i])`` exact images of one source, for the sampled ``gamma`` and
    centre: eight lens equations, eight unknowns, Newton's method from ``setup.solver_start``
    (fixed iteration count; differentiable).

    Returns:
        ``(solved, residual, log_jacobian)``: the solved values (dict, ``ps_y`` of all four
        images included), the largest remaining ``|β(θ_i) - β_s|`` (arcsec) and
        ``log |det ∂(theta_E_epl, e1, e2, gamma1, gamma2, src_x, src_y)/∂(ps_x, ps_y[:3])|``,
        the change-of-variables term to the solved (EPL) lens parameters.
    """
    imaging = setup.imaging
    fixed = {k: values[k] for k in ("gamma", "center_x", "center_y")}
    ps_x = jnp.asarray(values["ps_x"])
    ps_y_abc = jnp.asarray(values["ps_y_abc"])

    def res(u):
        return _solver_residual(imaging, fixed, u, ps_x, ps_y_abc)

    u = newton(res, jnp.asarray(setup.solver_start), setup.newton_iterations)
    residual = res(u)
    solved = {k: u[i] for i, k in enumerate(SOLVED)}
    solved["ps_y"] = jnp.concatenate([ps_y_abc, u[7:8]])

    # Jacobian of the map lens7 -> images7 (at fixed gamma, centre): the implicit function theorem
    # on F(u, images) = 0, with images7 = (ps_x[0..3], ps_y[0..2]); the first seven unknowns are
    # the lens parameters (image D's y is the eighth)
    def res_full(uu, img7):
        return _solver_residual(imaging, fixed, uu, img7[:4], img7[4:7])

    log_jac = implicit_log_jacobian(res_full, u, jnp.concatenate([ps_x, ps_y_abc]), 7)
    return solved, jnp.max(jnp.abs(residual)), log_jac


def solved_lens_params(setup: ModelSetup, values: dict) -> tuple[LensParams, dict, Array, Array]:
    """Solve the lens, derive the emulator mass, build the imaging parameters.

    Returns:
        ``(lens, derived, residual, log_jacobian)``: :class:`LensParams` (central image
        included), the derived values (solved EPL parameters, ``theta_E``, ``q_mass``, ``phi``,
        ``ps_y``), and the solver's residual and log-Jacobian (:func:`solve_lens`).
    """
    solved, residual, log_jac = solve_lens(setup, values)
    derived = dict(solved)
    derived.update(
        mass_from_epl(solved["theta_E_epl"], values["gamma"], solved["e1"], solved["e2"])
    )
    lens = lens_params({**values, **derived}, setup.zero_point)
    lens = with_central_image(setup.imaging, lens)
    return lens, derived, residual, log_jac
