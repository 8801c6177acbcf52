"""The inference library's shared pieces (issue 19): the one Newton solver and its implicit
Jacobian, the one optimiser (optax L-BFGS + zoom line search), exact Hessians, the per-mode block
table and the layering of the subpackage. Small analytic problems: a few seconds."""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skinn_jax.inference.fit.map import (
    difference_hessian,
    hessian_columns,
    lbfgs,
    whitened_covariance,
)
from skinn_jax.inference.lensing.solver import damped_newton, implicit_log_jacobian, newton
from skinn_jax.inference.model import (
    MODE_BLOCKS,
    kinematics_block,
    lens_block,
    site_names,
    uses_imaging,
    uses_kinematics,
)

PACKAGE = Path(__file__).resolve().parents[1] / "skinn_jax" / "inference"


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _residual(u, x):
    """A non-linear system with the root ``u = (x0^(1/3), log x1)`` for ``x > 0``."""
    return jnp.stack([u[0] ** 3 - x[0], jnp.exp(u[1]) - x[1]])


def test_newton_solves_and_its_derivatives_are_the_implicit_ones():
    x = jnp.array([8.0, 3.0])

    def root(x):
        return newton(lambda u: _residual(u, x), jnp.array([1.5, 0.5]), 12)

    np.testing.assert_allclose(np.asarray(root(x)), [2.0, np.log(3.0)], rtol=1e-12)
    # u = (x0^(1/3), log x1): first derivatives in both modes, and second derivatives
    first = np.diag([1 / (3 * 2.0**2), 1 / 3.0])
    np.testing.assert_allclose(np.asarray(jax.jacfwd(root)(x)), first, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(jax.jacrev(root)(x)), first, rtol=1e-10)
    hess = np.asarray(jax.hessian(root)(x))
    assert hess[0, 0, 0] == pytest.approx(-2 / 9 * 8.0 ** (-5 / 3), rel=1e-10)
    assert hess[1, 1, 1] == pytest.approx(-1 / 9, rel=1e-10)
    assert np.abs(hess[0, 1]).max() == 0 and np.abs(hess[1, 0]).max() == 0


def test_damped_newton_reaches_a_far_root_and_reports_failure():
    u, norm = damped_newton(lambda u: _residual(u, jnp.array([27.0, 20.0])), np.array([0.5, 0.0]))
    np.testing.assert_allclose(u, [3.0, np.log(20.0)], rtol=1e-10)
    assert norm < 1e-10
    _, norm = damped_newton(lambda u: u**2 + 1.0, np.array([0.3]), max_iter=20)  # no real root
    assert norm == np.inf


def test_implicit_log_jacobian_is_the_log_det_of_the_explicit_inverse():
    x = jnp.array([8.0, 3.0])
    u = jnp.array([2.0, jnp.log(3.0)])
    got = implicit_log_jacobian(lambda u, x: _residual(u, x), u, x, 2)
    explicit = jax.jacfwd(lambda x: jnp.stack([jnp.cbrt(x[0]), jnp.log(x[1])]))(x)
    assert float(got) == pytest.approx(float(jnp.linalg.slogdet(explicit)[1]), rel=1e-12)


def test_lbfgs_minimises_rosenbrock_and_rejects_infinite_values():
    def rosenbrock(x):
        value = (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2
        return jnp.where(x[0] > -1.5, value, jnp.inf)  # a wall the line search must not cross

    run = lbfgs(rosenbrock, np.array([-1.2, 1.0]), max_steps=200, tol=1e-14)
    np.testing.assert_allclose(run.x, [1.0, 1.0], atol=1e-5)
    assert run.value < 1e-9 < run.value_start and run.n_evals > run.n_steps > 5
    scaled = lbfgs(lambda x, *, s: s * rosenbrock(x), np.array([-1.2, 1.0]), fn_kwargs={"s": 2.0},
                   max_steps=200, tol=1e-14)  # fmt: skip
    np.testing.assert_allclose(scaled.x, [1.0, 1.0], atol=1e-5)


def test_exact_whitened_hessian_inverts_a_non_quadratic_potential():
    def potential(z):
        return 0.5 * z @ jnp.diag(jnp.array([4.0, 1.0, 0.25])) @ z + 0.1 * z[0] ** 4

    z = jnp.array([0.5, -0.3, 1.0])
    hess = np.asarray(jax.hessian(potential)(z))
    np.testing.assert_allclose(hessian_columns(potential, z, np.eye(3)), hess, rtol=1e-12)
    value_and_grad = jax.jit(jax.value_and_grad(potential))
    chol = np.linalg.cholesky(np.diag([0.2, 1.0, 3.0]))
    cov, n_fixed = whitened_covariance(value_and_grad, np.asarray(z), chol, 1e-3,
                                       max_variance=100.0, potential=potential)  # fmt: skip
    np.testing.assert_allclose(cov, np.linalg.inv(hess), rtol=1e-10)
    assert n_fixed == 0
    # the fits' default: central differences of the compiled gradient (no Hessian compiled)
    diff = difference_hessian(value_and_grad, np.asarray(z), np.eye(3) * 1e-4) / 1e-4
    np.testing.assert_allclose(diff, hess, rtol=1e-6)
    cov_diff, _ = whitened_covariance(value_and_grad, np.asarray(z), chol, 1e-3, max_variance=100.0)
    np.testing.assert_allclose(cov_diff, np.linalg.inv(hess), rtol=1e-6)


def test_modes_are_compositions_of_blocks_from_one_table():
    assert set(MODE_BLOCKS) == {"joint", "lensing", "kinematics"}
    for mode, blocks in MODE_BLOCKS.items():
        sites = site_names(mode)
        assert sites == tuple(s for b in blocks for s in b.sites)
        assert len(set(sites)) == len(sites)  # every site sampled by one block
        assert uses_imaging(mode) == (lens_block in blocks)
        assert uses_kinematics(mode) == (kinematics_block in blocks)
    joint, lensing, kinematics = (set(site_names(m)) for m in ("joint", "lensing", "kinematics"))
    assert joint - lensing == {"beta_z", "inclination_deg", "log_D_dt", "log_D_d"}
    assert "ps_x" not in kinematics and "log_ratio_theta_E" in kinematics
    with pytest.raises(ValueError, match="mode must be one of"):
        site_names("imaging")


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a module of the package (relative ones resolved)."""
    parts = list(path.relative_to(PACKAGE.parents[1]).with_suffix("").parts)
    package = parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_library_never_imports_the_mocks_or_the_jam_truth():
    """Only ``mocks/`` imports ``training``; only mock users (``study``) import ``mocks``."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        imported = _imports(path)
        if not rel.startswith("mocks/"):
            assert not any("training" in m.split(".") for m in imported), rel
        if not rel.startswith("mocks/") and rel != "study.py":
            assert not any(m.startswith("skinn_jax.inference.mocks") for m in imported), rel
