"""The convergence policy of every fit: thresholds, a budget, and a verdict that says why.

A pure, model-free piece (NumPy + ArviZ): :func:`assess` takes posterior draws grouped by chain
and NUTS's per-transition statistics and returns a :class:`Verdict`; :func:`budget_left` says
whether a run that has not converged may draw more. :func:`skinn_jax.inference.fit.fit` calls
both after every sampling chunk, so a fit extends itself until every reported parameter passes or
the budget is spent, and then states in one line (:attr:`Verdict.line`) whether it converged and,
if not, which parameters fail and the likely cause it can see.

Criteria (:class:`ConvergencePolicy`, defaults from Vehtari et al. 2021, "Rank-normalization,
folding, and localization: an improved R-hat"):

- rank-normalised split R-hat ``<= max_rhat`` (1.01) for every parameter (ArviZ ``rhat``; a single
  chain is split in two halves, so R-hat still sees a drift within it);
- bulk and tail ESS ``>= min_ess_bulk`` / ``min_ess_tail`` (400 each; ArviZ ``ess``);
- at most ``max_divergences`` divergent transitions (0: a divergence means the sampler missed
  part of the posterior, and more draws do not fix it).

Likely causes it detects (:attr:`Verdict.causes`):

- **box face**: a parameter with a prior box (a uniform site, or a solved quantity the model walls
  off with ``-inf``) whose draws pile up at a face: at least ``face_fraction`` of them within
  ``face_band`` x (box width) of it (a posterior well inside the box puts none there; a flat one
  ``face_band`` of them);
- **multimodality between chains**: two chains whose means differ by more than
  ``mode_separation`` within-chain standard deviations (chains that mix but slowly differ by
  ~ sd / sqrt(ESS per chain); chains stuck in separate modes by the modes' distance over their
  widths);
- **divergences** and **trees at the maximum depth** (more than ``tree_depth_fraction`` of the
  transitions): curvature or scales the mass matrix misses;
- otherwise, for R-hat/ESS failures: slow mixing that the budget did not cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

Box = tuple[float, float] | tuple[np.ndarray, np.ndarray]


class ConvergencePolicy(NamedTuple):
    """Thresholds and budget of the convergence policy.

    Attributes:
        max_rhat: largest split R-hat allowed (every parameter).
        min_ess_bulk: smallest bulk ESS allowed (draws, all chains together).
        min_ess_tail: smallest tail ESS allowed (5 % and 95 % quantiles).
        max_divergences: divergent transitions allowed over the kept draws.
        max_samples: budget, draws per chain at most (warm-up excluded).
        max_wall_s: budget, seconds of MAP + warm-up + sampling at most (summed over restarts).
        face_band: width of the band at a box face, as a fraction of the box width.
        face_fraction: fraction of draws in that band from which a parameter piles up at a face.
        mode_separation: chain means further apart than this many within-chain sd: separate modes.
        tree_depth_fraction: fraction of transitions at the maximum tree depth that is reported
            as a cause.
    """

    max_rhat: float = 1.01
    min_ess_bulk: float = 400.0
    min_ess_tail: float = 400.0
    max_divergences: int = 0
    max_samples: int = 4000
    max_wall_s: float = 4 * 3600.0
    face_band: float = 0.02
    face_fraction: float = 0.05
    mode_separation: float = 4.0
    tree_depth_fraction: float = 0.1

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting outside its allowed range."""
        ranges = {
            "max_rhat": (1.0, np.inf),
            "min_ess_bulk": (0.0, np.inf),
            "min_ess_tail": (0.0, np.inf),
            "max_divergences": (0, np.inf),
            "max_samples": (1, np.inf),
            "max_wall_s": (0.0, np.inf),
            "face_band": (0.0, 0.5),
            "face_fraction": (0.0, 1.0),
            "mode_separation": (0.0, np.inf),
            "tree_depth_fraction": (0.0, 1.0),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if not (np.isfinite(value) or value == np.inf) or not lo <= value <= hi:
                raise ValueError(
                    f"ConvergencePolicy.{name} = {value!r}: allowed range [{lo}, {hi}]"
                )


DEFAULT_POLICY = ConvergencePolicy()
"""R-hat <= 1.01, bulk and tail ESS >= 400, no divergences; 4000 draws per chain or 4 h at most."""


class ParameterCheck(NamedTuple):
    """Diagnostics of one scalar parameter (a vector site gives one per element, ``name[i]``).

    Attributes:
        name: the label.
        r_hat: rank-normalised split R-hat.
        ess_bulk: bulk effective sample size.
        ess_tail: tail effective sample size.
        passed: all three within the policy.
        face: ``"lower"``/``"upper"`` if the draws pile up at that box face, else None.
        separation: largest distance between two chain means, in within-chain sd (0 with one
            chain).
    """

    name: str
    r_hat: float
    ess_bulk: float
    ess_tail: float
    passed: bool
    face: str | None
    separation: float


class Verdict(NamedTuple):
    """What :func:`assess` concludes.

    Attributes:
        converged: every parameter passes and the divergences are within the policy.
        mixed: every parameter passes R-hat and ESS (more draws cannot do more).
        parameters: one :class:`ParameterCheck` per scalar parameter, in input order.
        failing: labels of the parameters that fail R-hat or ESS, worst R-hat first.
        max_rhat: largest R-hat.
        min_ess_bulk: smallest bulk ESS.
        min_ess_tail: smallest tail ESS.
        divergences: divergent transitions (kept draws).
        tree_depth_hits: fraction of transitions that reached the maximum tree depth (nan when
            not given).
        n_chains: chains.
        n_draws: draws per chain.
        causes: likely causes, one sentence each (empty when converged).
        line: the one-line statement (``converged: yes (...)`` / ``converged: NO — ...``).
    """

    converged: bool
    mixed: bool
    parameters: tuple[ParameterCheck, ...]
    failing: tuple[str, ...]
    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    divergences: int
    tree_depth_hits: float
    n_chains: int
    n_draws: int
    causes: tuple[str, ...]
    line: str

    def as_dict(self) -> dict:
        """JSON-ready form (``report.json``'s ``convergence``)."""
        return {
            "converged": self.converged,
            "line": self.line,
            "failing": list(self.failing),
            "causes": list(self.causes),
            "max_rhat": self.max_rhat,
            "min_ess_bulk": self.min_ess_bulk,
            "min_ess_tail": self.min_ess_tail,
            "divergences": self.divergences,
            "tree_depth_hits": self.tree_depth_hits,
            "n_chains": self.n_chains,
            "n_draws": self.n_draws,
            "at_box_face": {p.name: p.face for p in self.parameters if p.face},
            "parameters": {
                p.name: {
                    "r_hat": p.r_hat,
                    "ess_bulk": p.ess_bulk,
                    "ess_tail": p.ess_tail,
                    "passed": p.passed,
                    "chain_separation_sd": p.separation,
                }
                for p in self.parameters
            },
        }


def flat_columns(samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{label: (chains, draws)}``: scalar sites as they are, vector sites per element
    (``name[i]``, C order over the trailing dimensions)."""
    out = {}
    for name, value in samples.items():
        arr = np.asarray(value, float)
        if arr.ndim < 2:
            raise ValueError(
                f"samples[{name!r}] has shape {arr.shape}: expected (chains, draws, ...)"
            )
        if arr.ndim == 2:
            out[name] = arr
        else:
            flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
            for i in range(flat.shape[2]):
                out[f"{name}[{i}]"] = flat[:, :, i]
    return out


def _flat_boxes(boxes: Mapping[str, Box] | None, columns: Mapping[str, np.ndarray]) -> dict:
    out = {}
    for name, (lo, hi) in (boxes or {}).items():
        lo, hi = np.ravel(np.asarray(lo, float)), np.ravel(np.asarray(hi, float))
        if lo.size == 1 and hi.size == 1 and name in columns:
            out[name] = (float(lo[0]), float(hi[0]))
            continue
        n = max(lo.size, hi.size)
        lo, hi = np.broadcast_to(lo, (n,)), np.broadcast_to(hi, (n,))
        for i in range(n):
            if f"{name}[{i}]" in columns:
                out[f"{name}[{i}]"] = (float(lo[i]), float(hi[i]))
    return out


def rhat(draws: np.ndarray) -> float:
    """Rank-normalised split R-hat of ``draws`` (chains, draws); one chain is split in two."""
    import arviz as az

    draws = np.asarray(draws, float)
    if draws.shape[0] == 1:
        half = draws.shape[1] // 2
        draws = np.stack([draws[0, :half], draws[0, half : 2 * half]])
    if draws.shape[1] < 4 or np.ptp(draws) == 0:
        return float("nan")
    return float(az.rhat(draws))


def ess(draws: np.ndarray, method: str) -> float:
    """ArviZ's ``ess(draws, method)`` of ``draws`` (chains, draws); ``method`` bulk or tail."""
    import arviz as az

    if np.asarray(draws).shape[1] < 4:
        return float("nan")
    return float(az.ess(np.asarray(draws, float), method=method))


def at_face(draws: np.ndarray, box: tuple[float, float], policy: ConvergencePolicy) -> str | None:
    """``"lower"`` / ``"upper"`` if ``draws`` pile up at that face of ``box``, else None."""
    lo, hi = box
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return None
    band = policy.face_band * (hi - lo)
    x = np.ravel(draws)
    near = {"lower": np.mean(x <= lo + band), "upper": np.mean(x >= hi - band)}
    face = max(near, key=near.get)
    return face if near[face] >= policy.face_fraction else None


def chain_separation(draws: np.ndarray) -> float:
    """Largest distance between two chain means in pooled within-chain sd (0 for one chain)."""
    draws = np.asarray(draws, float)
    if draws.shape[0] < 2:
        return 0.0
    means = draws.mean(axis=1)
    sd = float(np.sqrt(np.mean(draws.var(axis=1, ddof=1))))
    spread = float(means.max() - means.min())
    if sd == 0:
        return 0.0 if spread == 0 else float("inf")
    return spread / sd


def _mode_groups(draws: np.ndarray, separation: float) -> str:
    """Chains grouped by their mean (gaps larger than ``separation`` within-chain sd)."""
    means = draws.mean(axis=1)
    sd = float(np.sqrt(np.mean(draws.var(axis=1, ddof=1)))) or 1.0
    order = np.argsort(means)
    groups, current = [], [int(order[0])]
    for a, b in zip(order[:-1], order[1:], strict=True):
        if (means[b] - means[a]) / sd > separation:
            groups.append(current)
            current = []
        current.append(int(b))
    groups.append(current)
    return " | ".join(
        "chains " + ",".join(str(c) for c in sorted(g)) + f" at {np.mean(means[g]):.4g}"
        for g in groups
    )


def assess(
    samples: Mapping[str, np.ndarray],
    policy: ConvergencePolicy = DEFAULT_POLICY,
    *,
    boxes: Mapping[str, Box] | None = None,
    diverging: np.ndarray | None = None,
    num_steps: np.ndarray | None = None,
    max_tree_depth: int | None = None,
) -> Verdict:
    """Judge the draws of a run against ``policy``.

    Args:
        samples: ``{name: array (chains, draws, ...)}`` for every sampled and reported parameter
            (vector sites are judged per element).
        policy: the thresholds.
        boxes: ``{name: (low, high)}`` prior boxes (scalars, or arrays for vector sites) of the
            parameters that have one, in the parameter's units; used to detect piling up at a face.
        diverging: NUTS divergence flags, (chains, draws).
        num_steps: NUTS leapfrog steps per transition, (chains, draws).
        max_tree_depth: NUTS's maximum tree depth (a transition at it takes ``2**d - 1`` steps).

    Returns:
        The :class:`Verdict`.

    Raises:
        ValueError: no parameters, inconsistent shapes, or a policy setting out of range.
    """
    policy.check()
    columns = flat_columns(samples)
    if not columns:
        raise ValueError("samples is empty: expected at least one parameter")
    shapes = {arr.shape for arr in columns.values()}
    if len(shapes) != 1:
        raise ValueError(f"samples have different (chains, draws) shapes: {sorted(shapes)}")
    n_chains, n_draws = next(iter(shapes))
    flat_boxes = _flat_boxes(boxes, columns)
    checks = []
    for name, draws in columns.items():
        r, eb, et = rhat(draws), ess(draws, "bulk"), ess(draws, "tail")
        constant = np.ptp(draws) == 0  # fixed by the model: nothing to judge
        passed = constant or (
            r <= policy.max_rhat and eb >= policy.min_ess_bulk and et >= policy.min_ess_tail
        )
        face = at_face(draws, flat_boxes[name], policy) if name in flat_boxes else None
        checks.append(ParameterCheck(name, r, eb, et, bool(passed), face, chain_separation(draws)))
    max_rhat = _extreme(max, [c.r_hat for c in checks])
    min_bulk = _extreme(min, [c.ess_bulk for c in checks])
    min_tail = _extreme(min, [c.ess_tail for c in checks])
    failing = tuple(
        c.name
        for c in sorted(
            (c for c in checks if not c.passed),
            key=lambda c: -(c.r_hat if np.isfinite(c.r_hat) else np.inf),
        )
    )
    n_div = int(np.sum(diverging)) if diverging is not None else 0
    depth_hits = float("nan")
    if num_steps is not None and max_tree_depth is not None:
        depth_hits = float(np.mean(np.asarray(num_steps) >= 2**max_tree_depth - 1))
    mixed = not failing
    converged = mixed and n_div <= policy.max_divergences
    causes = () if converged else _causes(checks, columns, policy, n_div, depth_hits,
                                          max_tree_depth, failing)  # fmt: skip
    verdict = Verdict(
        converged=converged, mixed=mixed, parameters=tuple(checks), failing=failing,
        max_rhat=max_rhat, min_ess_bulk=min_bulk, min_ess_tail=min_tail, divergences=n_div,
        tree_depth_hits=depth_hits, n_chains=n_chains, n_draws=n_draws, causes=causes, line="",
    )  # fmt: skip
    return verdict._replace(line=verdict_line(verdict, policy))


def _extreme(fn, values: list[float]) -> float:
    """``fn`` (min or max) of the finite ``values``; nan if there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(fn(finite)) if finite else float("nan")


def _causes(checks, columns, policy, n_div, depth_hits, max_tree_depth, failing) -> tuple:
    causes = []
    by_name = {c.name: c for c in checks}
    faces = [c for c in checks if c.face]
    if faces:
        causes.append(
            "piling up at a prior box face: "
            + ", ".join(f"{c.name} ({c.face})" for c in faces)
            + " (truncated by the prior box: see docs/convergence.md)"
        )
    modal = [by_name[n] for n in failing if by_name[n].separation > policy.mode_separation]
    if modal:
        worst = max(modal, key=lambda c: c.separation)
        causes.append(
            "multimodality between chains: "
            + ", ".join(f"{c.name} ({c.separation:.0f} sd)" for c in modal[:4])
            + f"; {worst.name}: "
            + _mode_groups(columns[worst.name], policy.mode_separation)
        )
    if n_div > policy.max_divergences:
        causes.append(
            f"{n_div} divergent transitions (curvature the mass matrix misses, or a wall)"
        )
    if np.isfinite(depth_hits) and depth_hits > policy.tree_depth_fraction:
        causes.append(
            f"{100 * depth_hits:.0f} % of transitions at the maximum tree depth {max_tree_depth} "
            "(scales or correlations the mass matrix misses)"
        )
    if failing and not modal:
        causes.append("slow mixing: the chains agree but have too few effective draws")
    return tuple(causes)


def _fmt(x: float, digits: str) -> str:
    return "n/a" if not np.isfinite(x) else format(x, digits)


def verdict_line(verdict: Verdict, policy: ConvergencePolicy = DEFAULT_POLICY) -> str:
    """The one-line statement of ``verdict``.

    ``converged: yes (R-hat max 1.004, ESS bulk min 612, tail min 540)``, or
    ``converged: NO — gamma R-hat 1.08 ESS 45/60, ... ; likely cause: ...``.
    """
    stats = (
        f"R-hat max {_fmt(verdict.max_rhat, '.3f')}, ESS bulk min "
        f"{_fmt(verdict.min_ess_bulk, '.0f')}, tail min {_fmt(verdict.min_ess_tail, '.0f')}"
    )
    extra = f"; {verdict.n_chains} chains x {verdict.n_draws} draws"
    if verdict.converged:
        return f"converged: yes ({stats}{extra}, {verdict.divergences} divergences)"
    by_name = {p.name: p for p in verdict.parameters}
    shown = [
        f"{n} R-hat {_fmt(by_name[n].r_hat, '.3f')} ESS {_fmt(by_name[n].ess_bulk, '.0f')}/"
        f"{_fmt(by_name[n].ess_tail, '.0f')}"
        for n in verdict.failing[:5]
    ]
    more = len(verdict.failing) - len(shown)
    fails = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    if not fails:
        fails = f"{verdict.divergences} divergent transitions (> {policy.max_divergences})"
    cause = "; ".join(verdict.causes) if verdict.causes else "unknown"
    return f"converged: NO — {fails} ({stats}{extra}); likely cause: {cause}"


def budget_left(
    n_draws: int, wall_s: float, chunk_draws: int, policy: ConvergencePolicy
) -> str | None:
    """None if one more chunk of ``chunk_draws`` per chain fits the budget; else why not.

    Args:
        n_draws: draws per chain so far.
        wall_s: seconds spent so far (MAP + warm-up + sampling).
        chunk_draws: draws per chain of the next chunk.
        policy: the budget.
    """
    if n_draws + chunk_draws > policy.max_samples:
        return f"budget spent: {n_draws} draws per chain, max {policy.max_samples}"
    if wall_s >= policy.max_wall_s:
        return f"budget spent: {wall_s:.0f} s, max {policy.max_wall_s:.0f} s"
    return None


def boxes_from_trace(trace: Mapping) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{site: (low, high)}`` of every latent sample site of a NumPyro trace whose support is
    an interval (``dist.Uniform`` and friends, ``.to_event`` included)."""
    from numpyro.distributions import constraints

    boxes = {}
    for name, site in trace.items():
        if site["type"] != "sample" or site.get("is_observed"):
            continue
        support = site["fn"].support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if isinstance(support, constraints.interval):
            boxes[name] = (np.asarray(support.lower_bound), np.asarray(support.upper_bound))
    return boxes


def uniform_boxes(model, *args, **kwargs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`boxes_from_trace` of one seeded trace of the NumPyro ``model(*args, **kwargs)``."""
    import jax
    from numpyro import handlers

    trace = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(*args, **kwargs)
    return boxes_from_trace(trace)


__all__ = [
    "ConvergencePolicy",
    "ParameterCheck",
    "Verdict",
    "assess",
    "boxes_from_trace",
    "budget_left",
    "flat_columns",
    "uniform_boxes",
    "verdict_line",
]
