"""NUTS chains advanced chunk by chunk by one compiled loop.

NumPyro's ``MCMC`` compiles its sampling loop again at every ``run``: the warm-up, every sampling
chunk, every extension the convergence policy asks for (its collection transform is a new
function each time). For the joint model one such compilation costs minutes on two CPU cores.
:class:`Chains` keeps NumPyro's pieces (the NUTS kernel, its ``init`` and ``sample``, its
``postprocess_fn``) and runs them in a loop of fixed length (``lax.scan``) compiled once: the
warm-up (adaptation while the iteration counter is below ``num_warmup``, as inside ``MCMC``) and
every sampling chunk call the same compiled function.

Chains are initialised under ``jax.jit(jax.vmap)``, as ``MCMC`` does under ``pmap``, so the
kernel keeps its one-chain ``sample``; ``chain_method`` then maps the loop over chains with
``jax.pmap`` (``"parallel"``: one host device per chain), ``jax.vmap`` (``"vectorized"``) or a
Python loop (``"sequential"``). The chain dimension is always present, also for one chain.

Example::

    chains = Chains(NUTS(model), num_warmup=100, length=25, num_chains=4)
    state = chains.init(jax.random.PRNGKey(0), init_params)  # {site: (4, ...)} unconstrained
    for _ in range(8):  # 4 chunks of warm-up, then 4 x 25 draws per chain
        state, samples, extra = chains.run(state)  # samples[site]: (4, 25, ...)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

EXTRA_FIELDS = ("diverging", "num_steps", "accept_prob", "energy", "potential_energy")
"""Per-iteration NUTS diagnostics collected with the draws."""

POSITION = "z"
"""Key of ``extra`` holding the unconstrained positions, flattened as ``ravel_pytree`` does
(sites sorted by name): ``(num_chains, length, d)``."""

MAX_LENGTH = 25
"""Longest loop of :func:`loop_length` (the progress bar moves every this many iterations)."""


def final_buffer(num_warmup: int) -> int:
    """Iterations of the warm-up's final (step-size only) buffer in NumPyro's schedule."""
    from numpyro.infer.hmc_util import build_adaptation_schedule

    return num_warmup - build_adaptation_schedule(num_warmup)[-1].start if num_warmup else 0


def loop_length(num_warmup: int, chunk: int, longest: int = MAX_LENGTH) -> int:
    """The largest divisor of ``gcd(num_warmup, chunk)`` that is at most ``longest``: a loop of
    that many iterations fits the warm-up and every sampling chunk exactly."""
    g = math.gcd(num_warmup, chunk)
    return max(k for k in range(1, min(g, longest) + 1) if g % k == 0)


class Chains:
    """``num_chains`` NUTS chains of a NumPyro kernel, advanced ``length`` iterations per call.

    Args:
        kernel: a NumPyro MCMC kernel of a model without arguments (e.g. ``NUTS(partial(model,
            data, setup))``).
        num_warmup: adaptation iterations (the first ``num_warmup`` of the chains' iterations).
        length: iterations per :meth:`run` call.
        num_chains: number of chains.
        chain_method: ``"parallel"`` (``jax.pmap``, needs ``num_chains`` devices),
            ``"vectorized"`` (``jax.vmap``) or ``"sequential"``.
        postprocess: unconstrained values -> the draws recorded (default: the kernel's
            ``postprocess_fn``; give it for a kernel built from a potential, ``NUTS(potential_fn=
            ...)``, whose own is the identity).
    """

    def __init__(
        self,
        kernel,
        num_warmup: int,
        length: int,
        num_chains: int = 1,
        chain_method: str = "sequential",
        postprocess=None,
    ):
        if chain_method not in ("parallel", "vectorized", "sequential"):
            raise ValueError(
                "chain_method must be 'parallel', 'vectorized' or 'sequential', "
                f"got {chain_method!r}"
            )
        if chain_method == "parallel" and jax.local_device_count() < num_chains:
            raise ValueError(
                f"chain_method='parallel' needs num_chains = {num_chains} devices, "
                f"{jax.local_device_count()} available"
            )
        if length < 1 or num_chains < 1 or num_warmup < 0:
            raise ValueError(
                f"length = {length}, num_chains = {num_chains}: allowed range [1, inf); "
                f"num_warmup = {num_warmup}: [0, inf)"
            )
        self.kernel = kernel
        self.num_warmup = num_warmup
        self.length = length
        self.num_chains = num_chains
        self.chain_method = chain_method
        self.postprocess = postprocess
        self._run = None

    def init(self, rng_key: jax.Array, init_params: dict):
        """The kernel's initial states, one per chain.

        Args:
            rng_key: a PRNG key (split into one per chain).
            init_params: unconstrained start values, ``{site: (num_chains, ...)}``; or a
                NumPyro ``ParamInfo`` of them with their potentials ``(num_chains,)`` and
                gradients (then nothing of the potential is evaluated, or compiled, here).

        Returns:
            The kernel state (e.g. ``HMCState``), batched over chains.
        """
        keys = jax.random.split(rng_key, self.num_chains)

        def one(key, params):
            return self.kernel.init(key, self.num_warmup, params, (), {})

        return jax.jit(jax.vmap(one))(keys, init_params)  # one program, not op by op

    def prepare(self, state) -> None:
        """Make a state that was saved (not produced by :meth:`init` in this process) runnable:
        the kernel is initialised (its compiled pieces are built) from the state's positions,
        potentials and gradients."""
        from numpyro.infer.util import ParamInfo

        if getattr(self.kernel, "_sample_fn", None) is None:
            self.init(
                jax.random.PRNGKey(0), ParamInfo(state.z, state.potential_energy, state.z_grad)
            )

    def run(self, state):
        """Advance every chain ``length`` iterations.

        Returns:
            ``(state, samples, extra)``: the new state; ``{site: (num_chains, length, ...)}``
            constrained values of the sampled and deterministic sites (the kernel's
            ``postprocess_fn``); ``{field: (num_chains, length)}`` of :data:`EXTRA_FIELDS`, and
            the flat unconstrained positions ``extra[POSITION]``, ``(num_chains, length, d)``.
        """
        self.prepare(state)
        if self._run is None:
            self._run = self._compile()
        if self.chain_method == "parallel":
            # one placement for every call: pmap compiles its loop again (minutes for the joint
            # model) for a state it has sharded itself, and for a state mixing both placements
            state = jax.device_get(state)
        if self.chain_method != "sequential":
            return self._run(state)
        outs = [self._run(jax.tree.map(lambda x, i=i: x[i], state)) for i in range(self.num_chains)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    def with_metric(self, state, inverse_mass_matrix, iterations: int):
        """The chains' state with a new dense metric, the step-size adaptation restarted for the
        next ``iterations`` iterations (the end of the warm-up again).

        The warm-up's final buffer of NumPyro's schedule
        (``numpyro.infer.hmc_util.build_adaptation_schedule``) adapts only the step size (dual
        averaging from ``log(10 ε)`` with the chain's current ε, as NumPyro restarts it at a
        window's end); the counter goes back to ``num_warmup - iterations``, so the same compiled
        loop runs them and sampling follows. The metric's factors are built as
        ``numpyro.infer.hmc_util``'s ``_initialize_mass_matrix`` builds a dense one.

        Args:
            state: the chains' state at the end of the warm-up (a dense-metric NUTS/HMC kernel).
            inverse_mass_matrix: ``{sites: (d, d)}``, the kernel's site tuple as key (shared by
                every chain).
            iterations: step-size iterations, in ``[1, final buffer]``.
        """
        from jax.scipy.linalg import solve_triangular
        from numpyro.infer.hmc_util import build_adaptation_schedule, dual_averaging

        schedule = build_adaptation_schedule(self.num_warmup)
        buffer = final_buffer(self.num_warmup)
        if not 1 <= iterations <= buffer:
            raise ValueError(
                f"iterations = {iterations}: allowed range [1, {buffer}] (the final "
                f"buffer of the {self.num_warmup}-iteration warm-up)"
            )
        adapt = state.adapt_state
        batch = jnp.shape(state.i)
        inverse, sqrt, sqrt_inv = {}, {}, {}
        for sites, matrix in inverse_mass_matrix.items():
            matrix = jnp.asarray(matrix)
            lower = jnp.swapaxes(jnp.linalg.cholesky(matrix[::-1, ::-1])[::-1, ::-1], -2, -1)
            root = solve_triangular(lower, jnp.identity(matrix.shape[-1]), lower=True)
            inverse[sites], sqrt[sites], sqrt_inv[sites] = (
                jnp.broadcast_to(m, batch + m.shape) for m in (matrix, root, lower)
            )
        ss_init, _ = dual_averaging()
        ss_state = jax.vmap(ss_init)(jnp.log(10.0) + jnp.log(adapt.step_size))
        ss_state = jax.tree.map(lambda new, old: new.astype(old.dtype), ss_state, adapt.ss_state)
        adapt = adapt._replace(
            inverse_mass_matrix=inverse,
            mass_matrix_sqrt=sqrt,
            mass_matrix_sqrt_inv=sqrt_inv,
            ss_state=ss_state,
            window_idx=jnp.full_like(adapt.window_idx, len(schedule) - 1),
        )
        return state._replace(i=jnp.full_like(state.i, self.num_warmup - iterations),
                              adapt_state=adapt)  # fmt: skip

    def _compile(self):
        kernel = self.kernel
        postprocess = self.postprocess or kernel.postprocess_fn((), {})

        def one_chain(state):
            def body(s, _):
                s = kernel.sample(s, (), {})
                extra = {f: getattr(s, f) for f in EXTRA_FIELDS}
                extra[POSITION] = ravel_pytree(s.z)[0]
                return s, (postprocess(s.z), extra)

            state, (samples, extra) = lax.scan(body, state, None, length=self.length)
            return state, samples, extra

        if self.chain_method == "parallel":
            return jax.pmap(one_chain)
        if self.chain_method == "vectorized":
            return jax.jit(jax.vmap(one_chain))
        return jax.jit(one_chain)
