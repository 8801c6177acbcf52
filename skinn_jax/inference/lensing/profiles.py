"""Lens profiles and PSF of the imaging model (Herculens profiles), with units.

Angles in arcsec, surface brightness in counts/s/arcsec².

Mass: :class:`CoredPowerLaw`
----------------------------
The emulator's cored power law (CONVENTIONS §2,
``kappa = theta_E**(γ-1) (3-γ)/(1+q) (x'² + y'²/q² + r_c²)**((1-γ)/2)``, r_c = 0.08″) written as a
Herculens mass profile **with the parameters of Herculens's EPL** (``theta_E`` = the EPL Einstein
radius, ``gamma``, ``e1``, ``e2``, ``center_x``, ``center_y``). The EPL parameters are turned into
the emulator's with the tested :func:`skinn_jax.profiles.q_phi_from_e1e2` and
:func:`skinn_jax.profiles.theta_E_from_epl`, and the galaxy frame is
:func:`skinn_jax.profiles.to_galaxy_frame`. With ``r_core = 0`` it is Herculens's ``EPL``.

Why not Herculens's ``EPL`` itself: it is singular, and the core is not negligible for lensing.
The core removes a mass ``~ π theta_E r_c`` (γ = 2) from the centre, so at radius ``r`` the
deflection is smaller by ``~ theta_E r_c / r``: 0.08″ at the Einstein radius, nearly a pixel, and
hundreds of times the astrometric precision of the quasar images. A singular EPL fitted to a cored
lens absorbs this by lowering its Einstein radius by ~0.08″ (~5-15 %), which the emulator would
then read as a lighter galaxy (v_rms ∝ sqrt(mass): a ~3-7 % bias). With the core in the lens model,
the imaging, the time delays and the kinematics all see the same mass.

The deflection and the potential follow Keeton (2001, "A catalog of mass models", §2) for any
elliptical ``kappa(ξ)``, ``ξ² = x'² + y'²/q²``::

    α_x' = q x' J_0,  α_y' = q y' J_1,  J_n = ∫_0^1 κ(ξ(u)) / (1 - (1-q²) u)**(n + 1/2) du,
    ψ = (q/2) ∫_0^1 m(ξ(u)) / (u (1 - (1-q²) u)**(1/2)) du,   ξ(u)² = u (x'² + y'²/(1 - (1-q²) u)),

with the enclosed "mass" ``m(ξ) = ∫_0^ξ 2 r κ(r) dr = A ((ξ² + r_c²)**(1-t/2) - r_c**(2-t)) /
(1 - t/2)``, ``t = γ - 1``, ``A = theta_E**t (3-γ)/(1+q)``. The integrals are done with a fixed
24-node Gauss-Legendre rule after the substitution ``u = s**4`` (which removes the ``u**(-t/2)``
end-point behaviour): measured against adaptive quadrature at 1e-12, the deflection is exact to
< 2e-8″ and the potential to < 1e-8″² over |x|, |y| <= 3.5″ for γ in [1.5, 2.5], q in [0.6, 1].
The Hessian is the forward-mode derivative of the deflection.

Light: :class:`SersicExact`
---------------------------
The elliptical Sérsic of CONVENTIONS §2 (:func:`skinn_jax.profiles.sersic_light`: major-axis radius,
exact ``b_n``) as a Herculens light profile with parameters ``amp`` (surface brightness at
``R_sersic``), ``R_sersic`` (major axis), ``n_sersic``, ``q``, ``phi`` (radians, Herculens's angle),
``center_x``, ``center_y``. Using ``(q, phi)`` rather than ``(e1, e2)`` lets the lens light share
the
mass's position angle exactly and avoids the NaN gradient of ``e1, e2 -> phi`` at ``q = 1``; the
exact ``b_n`` makes the imaged lens light the very tracer the JAM truth and the emulator use
(Herculens's own ``Sersic`` has ``b_n = 1.9992 n - 0.3271``).

PSF: a circular Moffat normalised to unit total flux (:func:`moffat`, :func:`moffat_pixel_kernel`).

Imports: ``skinn_jax.profiles``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from skinn_jax.profiles import (
    R_CORE_ARCSEC,
    q_phi_from_e1e2,
    sersic_light,
    theta_E_from_epl,
    to_galaxy_frame,
)

# ----------------------------------------------------------------------------------------------
# Mass


class CoredPowerLaw:
    """The emulator's cored power law as a Herculens mass profile with EPL parameters.

    Args:
        r_core: core radius, arcsec (CONVENTIONS §2: 0.08); 0 gives Herculens's singular EPL.
        n_nodes: Gauss-Legendre nodes of the radial integrals.
        power: exponent of the substitution ``u = s**power``.

    Methods take Herculens's EPL keywords ``theta_E`` (EPL Einstein radius, arcsec), ``gamma``,
    ``e1``, ``e2``, ``center_x``, ``center_y`` (arcsec) and broadcast over ``x, y`` (arcsec).
    """

    param_names = ["theta_E", "gamma", "e1", "e2", "center_x", "center_y"]
    lower_limit_default = {
        "theta_E": 0.0,
        "gamma": 1.0,
        "e1": -0.5,
        "e2": -0.5,
        "center_x": -100,
        "center_y": -100,
    }
    upper_limit_default = {
        "theta_E": 10.0,
        "gamma": 3.0,
        "e1": 0.5,
        "e2": 0.5,
        "center_x": 100,
        "center_y": 100,
    }
    fixed_default = {key: False for key in param_names}

    def __init__(self, r_core: float = R_CORE_ARCSEC, n_nodes: int = 24, power: int = 4):
        if r_core < 0:
            raise ValueError(f"r_core must be >= 0 arcsec, got {r_core}")
        self.r_core = float(r_core)
        s, w = np.polynomial.legendre.leggauss(n_nodes)
        s = 0.5 * (s + 1.0)
        self._u = s**power
        self._w = 0.5 * w * power * s ** (power - 1)

    # -- emulator parameters and frame --------------------------------------------------------

    @staticmethod
    def emulator_mass(theta_E, gamma, e1, e2):
        """``(theta_E_emulator, q, phi)`` from EPL parameters, by the tested conversions."""
        q, phi = q_phi_from_e1e2(e1, e2)
        return theta_E_from_epl(theta_E, gamma, q), q, phi

    def _galaxy_integrals(self, xg, yg, theta_E_emu, gamma, q, potential: bool):
        xg, yg = jnp.asarray(xg), jnp.asarray(yg)
        dtype = jnp.result_type(xg, float)
        u = jnp.asarray(self._u, dtype)
        w = jnp.asarray(self._w, dtype)
        t = gamma - 1.0
        amp = theta_E_emu**t * (3.0 - gamma) / (1.0 + q)
        d = 1.0 - (1.0 - q**2) * u  # (n,)
        xi2_core = u * (xg[..., None] ** 2 + yg[..., None] ** 2 / d) + self.r_core**2
        # one log per sample and node, shared by the power and its gradients (``x ** p`` would
        # evaluate a second power for its derivative)
        kappa_shape = jnp.exp(-0.5 * t * jnp.log(xi2_core))
        kappa = amp * kappa_shape
        j0 = jnp.sum(w * kappa / jnp.sqrt(d), axis=-1)
        j1 = jnp.sum(w * kappa / d**1.5, axis=-1)
        ax, ay = q * xg * j0, q * yg * j1
        if not potential:
            return ax, ay, None
        core_term = self.r_core ** (2.0 - t) if self.r_core > 0 else 0.0
        mass = amp * (xi2_core * kappa_shape - core_term) / (1.0 - 0.5 * t)
        psi = 0.5 * q * jnp.sum(w * mass / (u * jnp.sqrt(d)), axis=-1)
        return ax, ay, psi

    def _evaluate(self, x, y, theta_E, gamma, e1, e2, center_x, center_y, potential):
        theta_E_emu, q, phi = self.emulator_mass(theta_E, gamma, e1, e2)
        xg, yg = to_galaxy_frame(x, y, center_x, center_y, phi)
        ax, ay, psi = self._galaxy_integrals(xg, yg, theta_E_emu, gamma, q, potential)
        cos, sin = jnp.cos(phi), jnp.sin(phi)
        return cos * ax - sin * ay, sin * ax + cos * ay, psi

    # -- Herculens interface ------------------------------------------------------------------

    def function(self, x, y, theta_E, gamma, e1, e2, center_x=0.0, center_y=0.0):
        """Lensing potential ψ, arcsec² (zero at the centre)."""
        return self._evaluate(x, y, theta_E, gamma, e1, e2, center_x, center_y, True)[2]

    def derivatives(self, x, y, theta_E, gamma, e1, e2, center_x=0.0, center_y=0.0):
        """Deflection ``(α_x, α_y)``, arcsec."""
        ax, ay, _ = self._evaluate(x, y, theta_E, gamma, e1, e2, center_x, center_y, False)
        return ax, ay

    def hessian(self, x, y, theta_E, gamma, e1, e2, center_x=0.0, center_y=0.0):
        """``(f_xx, f_yy, f_xy)`` (dimensionless), by forward-mode differentiation."""
        x, y = jnp.broadcast_arrays(jnp.asarray(x, float), jnp.asarray(y, float))

        def alpha(xx, yy):
            return self.derivatives(xx, yy, theta_E, gamma, e1, e2, center_x, center_y)

        ones = jnp.ones_like(x)
        _, (fxx, fyx) = jax.jvp(alpha, (x, y), (ones, jnp.zeros_like(y)))
        _, (fxy, fyy) = jax.jvp(alpha, (x, y), (jnp.zeros_like(x), ones))
        return fxx, fyy, 0.5 * (fxy + fyx)

    def convergence(self, x, y, theta_E, gamma, e1, e2, center_x=0.0, center_y=0.0):
        """Convergence κ (dimensionless), CONVENTIONS §2."""
        from skinn_jax.profiles import kappa_cored_pemd

        theta_E_emu, q, phi = self.emulator_mass(theta_E, gamma, e1, e2)
        xg, yg = to_galaxy_frame(x, y, center_x, center_y, phi)
        return kappa_cored_pemd(xg, yg, theta_E_emu, gamma, q, self.r_core)


# ----------------------------------------------------------------------------------------------
# Light


class SersicExact:
    """Elliptical Sérsic with the exact ``b_n`` (CONVENTIONS §2) as a Herculens light profile.

    ``function(x, y, amp, R_sersic, n_sersic, q, phi, center_x, center_y)``: surface brightness
    (unit of ``amp``, the value at major-axis radius ``R_sersic``); ``phi`` in radians,
    Herculens's angle; ``q = 1`` is circular.

    Args:
        core: softening radius ``s`` (arcsec): the profile is evaluated at the major-axis radius
            ``sqrt(m² + s²)``. A Sérsic has a cusp (``I ∝ -m**(1/n)`` at the centre) and an image
            sampled at fixed sub-pixels is then a non-smooth function of the centre: measured on
            mock system 0, the Hessian of the posterior changed by orders of magnitude and turned
            indefinite within 1σ of the centre, which NUTS cannot handle. A core of the order of
            the sub-pixel spacing makes the sampled image smooth; the profile is unchanged beyond
            a few ``s`` and, PSF-convolved, changes the central pixel by well under its noise.
    """

    param_names = ["amp", "R_sersic", "n_sersic", "q", "phi", "center_x", "center_y"]

    def __init__(self, core: float = 0.0):
        self.core = float(core)

    def function(self, x, y, amp, R_sersic, n_sersic, q, phi, center_x=0.0, center_y=0.0):
        xg, yg = to_galaxy_frame(x, y, center_x, center_y, phi)
        if self.core > 0:
            xg = jnp.sqrt(xg**2 + self.core**2)
        return sersic_light(xg, yg, R_sersic, n_sersic, q, amp)


def flux_from_magnitude(mag: ArrayLike, zero_point: float) -> Array:
    """Flux in counts/s of an AB-like magnitude with the given zero point (1 count/s)."""
    return 10.0 ** (-0.4 * (jnp.asarray(mag) - zero_point))


def magnitude_from_flux(flux: ArrayLike, zero_point: float) -> Array:
    """Inverse of :func:`flux_from_magnitude`."""
    return zero_point - 2.5 * jnp.log10(jnp.asarray(flux))


# ----------------------------------------------------------------------------------------------
# PSF


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width α (arcsec) for a FWHM (arcsec) and power index β."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat(dx: ArrayLike, dy: ArrayLike, fwhm: float, beta: float):
    """Unit-flux circular Moffat surface density, 1/arcsec², at offsets ``dx, dy`` (arcsec)."""
    alpha = moffat_alpha(fwhm, beta)
    base = 1.0 + (dx**2 + dy**2) / alpha**2
    if isinstance(beta, (int, float)) and float(beta).is_integer() and beta > 0:
        decay = (1.0 / base) ** int(beta)  # an integer power: products, and so is its gradient
    else:
        decay = base ** (-beta)
    return (beta - 1.0) / (math.pi * alpha**2) * decay


def _sub_offsets(n_sub: int) -> np.ndarray:
    """Sub-pixel centre offsets in units of a pixel, in (-1/2, 1/2)."""
    return (np.arange(n_sub) + 0.5) / n_sub - 0.5


def moffat_pixel_kernel(
    pixel_scale: float, fwhm: float, beta: float, half_size: int = 10, n_sub: int = 5
) -> np.ndarray:
    """The Moffat integrated over pixels (``n_sub²`` samples), ``(2 h + 1)²``, summing to one."""
    offsets = np.arange(-half_size, half_size + 1)
    sub = _sub_offsets(n_sub)
    dx = (offsets[None, :, None, None] + sub[None, None, None, :]) * pixel_scale
    dy = (offsets[:, None, None, None] + sub[None, None, :, None]) * pixel_scale
    kernel = np.asarray(moffat(dx, dy, fwhm, beta)).mean(axis=(2, 3)) * pixel_scale**2
    return kernel / kernel.sum()
