"""NUTS chains advanced by one compiled loop (``skinn_jax.inference.fit.chains``) and the
L-BFGS step compiled once (``skinn_jax.inference.fit.map.lbfgs``)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import NUTS

from skinn_jax.inference.fit.chains import EXTRA_FIELDS, Chains, loop_length
from skinn_jax.inference.fit.map import _lbfgs_step, compiled_objective, lbfgs
from skinn_jax.inference.fit.settings import FitSettings, _chain_method

MEAN, SCALE = np.array([1.0, -2.0]), np.array([0.5, 2.0])


def gaussian():
    x = numpyro.sample("x", dist.Normal(jnp.asarray(MEAN), jnp.asarray(SCALE)).to_event(1))
    numpyro.deterministic("x_sum", x.sum())


def _chains(method: str, num_chains: int = 2) -> Chains:
    return Chains(NUTS(gaussian), num_warmup=40, length=20, num_chains=num_chains,
                  chain_method=method)  # fmt: skip


def _draws(chains: Chains, n_runs: int):
    init = {"x": jnp.zeros((chains.num_chains, 2))}
    state = chains.init(jax.random.PRNGKey(3), init)
    runs = [chains.run(state)]
    for _ in range(n_runs - 1):
        runs.append(chains.run(runs[-1][0]))
    return runs


def test_warm_up_and_sampling_share_one_compiled_loop_and_draw_the_target():
    chains = _chains("vectorized", num_chains=2)
    runs = _draws(chains, 2 + 30)  # 2 x 20 warm-up iterations, then 600 draws per chain
    assert chains._run._cache_size() == 1  # one compilation for warm-up and every chunk
    state = runs[-1][0]
    np.testing.assert_array_equal(np.asarray(state.i), [40 + 600] * 2)
    samples = {k: np.concatenate([r[1][k] for r in runs[2:]], axis=1) for k in runs[0][1]}
    extra = {k: np.concatenate([r[2][k] for r in runs[2:]], axis=1) for k in EXTRA_FIELDS}
    assert samples["x"].shape == (2, 600, 2) and extra["num_steps"].shape == (2, 600)
    np.testing.assert_allclose(samples["x_sum"], samples["x"].sum(-1), rtol=1e-6)
    x = samples["x"].reshape(-1, 2)
    assert np.all(np.abs(x.mean(0) - MEAN) < 4 * SCALE / np.sqrt(300)), x.mean(0)
    np.testing.assert_allclose(x.std(0), SCALE, rtol=0.15)
    # the step size was adapted during the first 40 iterations only
    step = [np.asarray(r[0].adapt_state.step_size) for r in runs]
    assert not np.allclose(step[0], step[1]) and np.allclose(step[2], step[-1])


def test_sequential_and_vectorized_chains_draw_the_same_numbers():
    with jax.enable_x64(True):  # (float32 round-off grows along a chain to ~1e-3)
        seq, vec = (_draws(_chains(m), 3) for m in ("sequential", "vectorized"))
    # the same random streams: other streams would differ by O(1); XLA may round the vectorised
    # program differently by ~1e-16, which trajectories amplify to ~1e-7 after 60 iterations
    np.testing.assert_allclose(seq[-1][1]["x"], vec[-1][1]["x"], rtol=1e-5, atol=1e-6)


def test_chains_refuse_bad_options():
    with pytest.raises(ValueError, match="chain_method"):
        Chains(NUTS(gaussian), 10, 5, chain_method="pmap")
    with pytest.raises(ValueError, match="devices"):
        Chains(NUTS(gaussian), 10, 5, num_chains=jax.local_device_count() + 1,
               chain_method="parallel")  # fmt: skip
    with pytest.raises(ValueError, match="length = 0"):
        Chains(NUTS(gaussian), 10, 0)


@pytest.mark.parametrize(
    "backend, devices, chains, expected",
    [("cpu", 4, 4, "parallel"), ("cpu", 1, 4, "sequential"), ("gpu", 1, 8, "vectorized"),
     ("gpu", 8, 8, "parallel"), ("gpu", 1, 1, "sequential")],
)  # fmt: skip
def test_auto_chain_method_vectorises_on_one_accelerator(
    monkeypatch, backend, devices, chains, expected
):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "local_device_count", lambda: devices)
    assert _chain_method(FitSettings(num_chains=chains)) == expected
    assert _chain_method(FitSettings(num_chains=chains, chain_method="sequential")) == "sequential"


@pytest.mark.parametrize("warmup, chunk, expected", [(150, 300, 25), (8, 6, 2), (7, 300, 1)])
def test_loop_length_divides_the_warm_up_and_the_chunks(warmup, chunk, expected):
    assert loop_length(warmup, chunk) == expected


def test_lbfgs_compiles_its_step_once():
    """optax's initial L-BFGS state is weakly typed where its update is not; without the cast the
    first two iterations compiled the step twice."""

    def fun(w, *, ref, scale):
        return jnp.sum(((ref + w) - 1.0) ** 2 * scale)

    kwargs = {"ref": jnp.zeros(3), "scale": jnp.arange(1.0, 4.0)}
    run = lbfgs(fun, np.zeros(3), fn_kwargs=kwargs, max_steps=20, tol=1e-12)
    np.testing.assert_allclose(run.x, 1.0, atol=1e-5)
    assert run.n_steps > 2 and _lbfgs_step(fun, 10)[1]._cache_size() == 1


def test_compiled_objective_is_the_compiled_potential_bit_for_bit(caplog):
    """The callback objective gives the compiled value and gradient exactly (float64 bits, also
    under jit and from a thread without x64), and L-BFGS through it takes the same iterates as
    through the inlined function; its step does not trace the potential."""
    traced = []

    def rosenbrock(z):
        traced.append(1)
        return jnp.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2)

    with jax.enable_x64(True):
        vg = jax.jit(jax.value_and_grad(rosenbrock))
        z = jnp.asarray([-1.2, 1.0, 0.3, 0.7])
        expected = vg(z)
        n_traced = len(traced)
        f = compiled_objective(vg, 4)
        z0 = np.asarray(z)
        with caplog.at_level(logging.DEBUG), jax.log_compiles(True):
            value, grad = jax.jit(jax.value_and_grad(f))(z)
            via = lbfgs(f, z0, start=vg(z), max_steps=30, tol=1e-14)
        assert float(value) == float(expected[0]) and value.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(expected[1]))
        assert len(traced) == n_traced  # the step never traced the potential ...
        assert (
            "jit(step)" in caplog.text and "jit(rosenbrock)" not in caplog.text
        )  # nor compiled it
        inlined = lbfgs(rosenbrock, z0, start=vg(z), max_steps=30, tol=1e-14)
        assert via.n_steps == inlined.n_steps and via.n_evals == inlined.n_evals
        np.testing.assert_allclose(via.x, inlined.x, rtol=1e-12, atol=1e-12)
        assert via.converged and via.value < 0.1 * float(expected[0])  # (a local minimum: 3.70)


PARALLEL_SCRIPT = """
import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
from jax import monitoring
from numpyro.infer import NUTS
from skinn_jax.inference.fit.chains import Chains
compiles = []
monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: compiles.append(name) if "backend_compile" in name else None)
def model():
    numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0))
chains = Chains(NUTS(model, dense_mass=True), 60, 5, num_chains=2, chain_method="parallel")
state = chains.run(chains.init(jax.random.PRNGKey(0), {"x": jnp.zeros((2, 2))}))[0]
n = len(compiles)
state = chains.run(state)[0]
again = len(compiles) - n
state = chains.with_metric(state, {("x",): jnp.eye(2)}, 5)
n = len(compiles)
for _ in range(2):
    state, samples, _ = chains.run(state)
print(again, len(compiles) - n, bool(jnp.all(jnp.isfinite(samples["x"]))))
"""


def test_parallel_chains_compile_their_loop_once():
    """``pmap`` compiles again for a state it has sharded itself and for one mixing placements
    (after ``with_metric``): minutes each for the joint model. Two host devices, in a subprocess
    (the device count is fixed when JAX starts)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    again, after_metric, finite = done.stdout.split()
    assert (again, after_metric, finite) == ("0", "0", "True")


def test_compilation_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    from skinn_jax.inference.fit.settings import CACHE_ENV, CACHE_MAX_BYTES, use_compilation_cache

    before = jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size
    try:
        monkeypatch.setenv(CACHE_ENV, "off")
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
        assert use_compilation_cache() is None  # off wins over a directory JAX was given
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
        assert use_compilation_cache() == tmp_path / "mine" and (tmp_path / "mine").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        assert jax.config.jax_compilation_cache_max_size == CACHE_MAX_BYTES
        monkeypatch.delenv(CACHE_ENV)
        assert use_compilation_cache() == tmp_path / "mine"  # the one JAX has now
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert use_compilation_cache() == tmp_path / "xdg" / "skinn-jax" / "xla"
        (tmp_path / "file").write_text("")
        with pytest.warns(UserWarning, match="no compiled-program cache"):
            assert use_compilation_cache(tmp_path / "file" / "xla") is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_compilation_cache_max_size", before[1])
