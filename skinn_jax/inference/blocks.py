"""NumPyro model blocks for kinematics with your own priors and data (kinematics-only models).

In the style of NumPyro's examples, a model is a short composition of plain functions, each of
which adds a few sites to the trace:

* :func:`named_vector` samples (or fixes) a set of named parameters from user priors and returns
  them as one vector in a given order; :func:`lens_block`, :func:`sky_block` and
  :func:`distance_block` are it for the emulator's parameters, the position angle and centre, and
  the two distances;
* :func:`kinematics_block` adds one observed site for one kinematic data set, through the
  forward model of :class:`skinn_jax.likelihood.KinematicLikelihood` (seeing, luminosity
  weighting, bins, full covariance; a light of several Sérsic components);
* :func:`kinematics_model` composes them: any number of kinematic data sets (IFU cubes, single
  apertures, slits) of one lens, lens parameters from a user prior, no imaging and no time
  delays.

Priors are a mapping from a parameter name, or several names joined by commas, to a NumPyro
distribution or a number (a fixed value)::

    lens_priors = {
        "theta_E,gamma,q_mass": dist.MultivariateNormal(mean, covariance),  # lens model
        "q_light": 0.72, "r_sersic": 0.9, "n_sersic": 3.9,                  # light fit
        "beta_z": dist.Uniform(-0.4, 0.4), "inclination_deg": dist.Uniform(60.0, 90.0),
    }

A key is the name of one site: a single name is a scalar site; ``"a,b,c"`` is one site whose
distribution has event shape ``(3,)``, its components in that order. Every name the block needs
must be covered exactly once. (String keys keep the mapping a JAX pytree, so it can be passed as
a model argument to ``MCMC.run`` and ``Predictive``.)

The observed site of data set ``name`` is ``MultivariateNormal(v_pred, scale_tril=L)`` with the
data's Cholesky factor: its log-probability is the :class:`KinematicLikelihood` value
``-1/2 r^T C^-1 r`` plus the constant ``-1/2 log det(2 pi C)``. The prediction is recorded as the
deterministic site ``name + "_pred"``; with ``observed=False`` the site is sampled instead (mock
data, posterior predictive), so :class:`numpyro.infer.Predictive` gives predictions from the
model itself.

The emulator returns NaN for parameters outside its training box inside ``jit`` (a sampler
rejects such a step); called eagerly (e.g. ``numpyro.infer.util.log_density`` on concrete
values) it raises ``ValueError`` naming the parameter. Keep priors inside the box
(``emu.box``), e.g. with ``dist.TruncatedNormal`` or narrow lens-model posteriors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import constrain_fn, log_density

from skinn_jax.forward import SkyParams, check_sky_params
from skinn_jax.likelihood import KinematicLikelihood
from skinn_jax.params import space_of
from skinn_jax.profiles import SersicLight

Prior = dist.Distribution | float
"""A NumPyro distribution, or a number for a fixed value."""
Priors = Mapping[str, Prior]
"""Name (or comma-joined names) -> prior; see the module docstring."""

SKY_NAMES: tuple[str, ...] = ("phi", "center_x", "center_y")
"""Position angle (radians, the model's φ, :func:`inference.data.phi_from_position_angle`) and
lens centre (arcsec, the data grids' angular frame)."""
DISTANCE_NAMES: tuple[str, ...] = ("D_dt", "D_d")
"""Time-delay and deflector distances, Mpc."""


def key_names(key: str) -> tuple[str, ...]:
    """The parameter names of a prior key: ``"theta_E,gamma"`` -> ``("theta_E", "gamma")``."""
    if not isinstance(key, str):
        raise ValueError(f"prior keys must be strings (names joined by commas), got {key!r}")
    return tuple(name.strip() for name in key.split(","))


def check_priors(priors: Priors, names: Sequence[str]) -> None:
    """Check that ``priors`` covers every one of ``names`` exactly once and nothing else.

    Raises:
        ValueError: a missing, repeated or unknown name; a key of k > 1 names whose
            distribution does not have event shape ``(k,)``; a single name with a multivariate
            distribution; a fixed value that is not a finite number (k numbers for k names).
    """
    seen: list[str] = []
    for key, prior in priors.items():
        keys = key_names(key)
        seen.extend(keys)
        joint = len(keys) > 1
        if isinstance(prior, dist.Distribution):
            want = (len(keys),) if joint else ()
            if tuple(prior.event_shape) != want or tuple(prior.batch_shape) != ():
                raise ValueError(
                    f"prior of {key!r} has batch shape {tuple(prior.batch_shape)} and "
                    f"event shape {tuple(prior.event_shape)}; expected batch shape () and event "
                    f"shape {want}"
                )
        else:
            value = np.asarray(prior, dtype=float)
            if value.shape != (len(keys),) * joint or not np.all(np.isfinite(value)):
                raise ValueError(
                    f"fixed value of {key!r} must be a finite number ({len(keys)} numbers for "
                    f"{len(keys)} names), got {prior!r}"
                )
    missing = [n for n in names if n not in seen]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    unknown = [n for n in seen if n not in names]
    if missing or repeated or unknown:
        raise ValueError(
            f"priors must cover each of {tuple(names)} exactly once: missing {missing}, "
            f"repeated {repeated}, unknown {unknown}"
        )


def named_vector(priors: Priors, names: Sequence[str]) -> Array:
    """Sample (or fix) the parameters ``names`` from ``priors``; return them as a vector.

    Args:
        priors: name (or comma-joined names) -> distribution or fixed value (module docstring).
        names: the order of the returned vector.

    Returns:
        Shape ``(len(names),)``.

    Raises:
        ValueError: see :func:`check_priors`.
    """
    check_priors(priors, names)
    values: dict[str, Array] = {}
    for key, prior in priors.items():
        names_k = key_names(key)
        if isinstance(prior, dist.Distribution):
            value = numpyro.sample(key, prior)
        else:
            value = jnp.asarray(prior, dtype=jnp.result_type(float))
        if len(names_k) == 1:
            values[names_k[0]] = value
        else:
            values.update({n: value[i] for i, n in enumerate(names_k)})
    return jnp.stack([jnp.asarray(values[n], dtype=jnp.result_type(float)) for n in names])


def lens_block(priors: Priors, param_names: Sequence[str]) -> Array:
    """The emulator's parameters, in the order of ``param_names`` (``emu.param_names``)."""
    return named_vector(priors, param_names)


def sky_block(priors: Priors) -> tuple[Array, Array, Array]:
    """``(phi, center_x, center_y)``: radians and arcsec (:data:`SKY_NAMES`)."""
    phi, center_x, center_y = named_vector(priors, SKY_NAMES)
    return phi, center_x, center_y


def distance_block(priors: Priors) -> tuple[Array, Array]:
    """``(D_dt, D_d)`` in Mpc (:data:`DISTANCE_NAMES`).

    Kinematics alone constrains ``D_dt / D_d`` (v_rms² ∝ D_s / D_ds, CONVENTIONS §4): give
    ``D_dt`` the prior of a time-delay measurement to infer ``D_d``, or fix one of them.
    """
    D_dt, D_d = named_vector(priors, DISTANCE_NAMES)
    return D_dt, D_d


_compiled_predict = jax.jit(KinematicLikelihood.predict, static_argnums=0)
"""``KinematicLikelihood.predict`` compiled per likelihood (hashed by identity)."""


def predict(
    likelihood: KinematicLikelihood,
    params: Array,
    sky: SkyParams,
    light: SersicLight | None = None,
) -> Array:
    """``likelihood.predict`` compiled once per likelihood (models run eagerly in
    ``log_density`` and ``initialize_model``, where op-by-op evaluation costs tens of seconds).

    Concrete inputs are checked first, as ``likelihood.predict`` and the emulator would:
    ``ValueError`` naming a parameter outside the emulator's box, a non-finite value or a centre
    outside the forward model's box.
    """
    leaves = jax.tree_util.tree_leaves((params, sky, light))
    if not any(isinstance(v, jax.core.Tracer) for v in leaves):
        space_of(np.asarray(params)).validate(np.asarray(params, dtype=float))
        check_sky_params(likelihood.forward, sky, physical=likelihood.physical_distances)
        if light is not None:
            SersicLight.checked(light)
    return _compiled_predict(likelihood, params, sky, light)


def kinematics_block(
    name: str,
    likelihood: KinematicLikelihood,
    params: Array,
    sky: SkyParams,
    light: SersicLight | None = None,
    *,
    observed: bool = True,
) -> Array:
    """One kinematic data set: the predicted bins and one observed site ``name``.

    Args:
        name: site name of the data set (unique within the model).
        likelihood: its :class:`KinematicLikelihood` (data, forward model, field).
        params: emulator parameters, shape (P,).
        sky: the five sky parameters.
        light: a light of several Sérsic components (CONVENTIONS §9), or None for the single
            Sérsic of ``params``.
        observed: condition on the data (True) or sample mock data (False).

    Returns:
        The predicted v_rms per bin, km/s, shape ``(n_bins,)`` (also the deterministic site
        ``name + "_pred"``).
    """
    pred = numpyro.deterministic(f"{name}_pred", predict(likelihood, params, sky, light))
    data = likelihood.data
    scale_tril = jnp.asarray(data.cholesky, dtype=pred.dtype)
    obs = jnp.asarray(data.vrms, dtype=pred.dtype) if observed else None
    numpyro.sample(name, dist.MultivariateNormal(pred, scale_tril=scale_tril), obs=obs)
    return pred


def common_z_d(likelihoods: Mapping[str, KinematicLikelihood]) -> float:
    """The deflector redshift shared by every data set.

    Raises:
        ValueError: no data set, or data sets with different ``z_d``.
    """
    if not likelihoods:
        raise ValueError("kinematics_model needs at least one kinematic data set")
    z = {name: lik.data.z_d for name, lik in likelihoods.items()}
    if len(set(z.values())) != 1:
        raise ValueError(f"the kinematic data sets must share one deflector redshift, got {z}")
    return next(iter(z.values()))


def kinematics_model(
    likelihoods: Mapping[str, KinematicLikelihood],
    lens_priors: Priors,
    sky_priors: Priors,
    distance_priors: Priors,
    param_names: Sequence[str],
    light: SersicLight | None = None,
    observed: bool = True,
) -> None:
    """Kinematics only: lens parameters from user priors, one likelihood per data set.

    No imaging and no time delays. The data sets (e.g. a JWST NIRSpec cube, a KCWI cube and a
    single-aperture dispersion) share the lens, its position angle and centre (their grids must
    be in one angular frame) and the distances, and must share ``z_d``.

    Args:
        likelihoods: site name -> :class:`KinematicLikelihood` of each data set.
        lens_priors: priors of ``param_names`` (e.g. a multivariate normal of a published lens
            model over some of them).
        sky_priors: priors of :data:`SKY_NAMES`.
        distance_priors: priors of :data:`DISTANCE_NAMES`.
        param_names: the emulator's ``param_names``.
        light: an optional light of several Sérsic components (fixed).
        observed: False samples mock data instead of conditioning on it.
    """
    common_z_d(likelihoods)
    params = numpyro.deterministic("params", lens_block(lens_priors, param_names))
    phi, center_x, center_y = sky_block(sky_priors)
    D_dt, D_d = distance_block(distance_priors)
    sky = SkyParams(phi, center_x, center_y, D_dt, D_d)
    for name, likelihood in likelihoods.items():
        kinematics_block(name, likelihood, params, sky, light, observed=observed)


def find_map(
    model,
    *args,
    init_values: Mapping[str, Array] | None = None,
    max_iterations: int = 500,
    tol: float = 1e-8,
    seed: int = 0,
    **kwargs,
) -> dict[str, Array]:
    """Maximum a posteriori of a NumPyro model (L-BFGS on the unconstrained sites).

    Minimises minus the log joint density of the constrained values (no Jacobian of the
    transforms: the mode of the posterior itself), parametrised by the unconstrained sites,
    with optax's L-BFGS and zoom line search (:func:`skinn_jax.inference.fit.map.lbfgs`).

    Args:
        model, args, kwargs: the model and its arguments.
        init_values: starting values of (some) sample sites; the others start at their prior
            median.
        max_iterations: L-BFGS iterations at most.
        tol: stop when the log density increases by less than this over an iteration.
        seed: PRNG seed of the initialisation.

    Returns:
        Constrained values of every sample site (and deterministic site) at the optimum.

    Raises:
        RuntimeError: the optimiser fails (e.g. a non-finite density at the start).
    """
    init_values = dict(init_values or {})

    def strategy(site=None):
        if site is not None and site["type"] == "sample" and site["name"] in init_values:
            return jnp.asarray(init_values[site["name"]])
        return numpyro.infer.init_to_median(site)

    @jax.jit
    def initial(key):
        # traced, not run eagerly: XLA drops the likelihoods, which the starting point ignores
        seeded = handlers.seed(model, rng_seed=key)
        trace = handlers.trace(handlers.substitute(seeded, substitute_fn=strategy)).get_trace(
            *args, **kwargs
        )
        return {
            name: biject_to(site["fn"].support).inv(site["value"])
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }

    flat0, unravel = ravel_pytree(initial(jax.random.PRNGKey(seed)))

    def objective(flat):
        values = constrain_fn(model, args, kwargs, unravel(flat))
        return -log_density(model, args, kwargs, values)[0]

    from .fit.map import lbfgs  # (the inference's one optimiser; imported when used)

    result = lbfgs(objective, flat0, max_steps=max_iterations, tol=tol)
    if not np.all(np.isfinite(result.x)) or not np.isfinite(result.value):
        raise RuntimeError(f"MAP failed: non-finite log density ({result.value})")
    z = unravel(jnp.asarray(result.x, flat0.dtype))
    return constrain_fn(model, args, kwargs, z, return_deterministic=True)
