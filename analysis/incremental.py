"""Refits that follow a growing sweep: warm-started from the last fit, bootstrap members updated, not redrawn.

A closed loop refits L(N, D) after results arrive. From scratch, every refit screens Epoch's grid of
4,500 starts and refits every bootstrap member over all points: ~0.3 s at 100 runs and ~3 s at 1,000
(bench_fit.py --scale), so a refit per result makes a sweep's driver cost grow as runs^2.

Here the bootstrap is the online (Poisson) bootstrap: member r weighs point i by w_ri ~ Poisson(1), drawn once
when the point first appears and kept after, so a new result adds a column of weights instead of redrawing
every member. Each member then restarts from its own last solution, which is a few damped Gauss-Newton steps
from the new one, and the point fit from its last optimum. The full grid search runs again whenever the
number of points has doubled since the last one (and on the first fit), so a basin the warm starts cannot
reach is still found, at O(log points) full fits in all.

Between two refits of the curve law, `WarmCurves.update` takes new curves in by one recursive Gauss-Newton step of
the point fit and of every member from the new points alone (analysis.curve_law.recursive_update): each keeps its
normal matrix J^T W J, so a step costs O(new points x members), however many points the last refit saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proxyscale.analysis.curve_law import CurveLawFit, GaussNewtonState, gauss_newton_state, recursive_update
from proxyscale.analysis.fit import ChinchillaFit, fit_chinchilla, polish, refine_batch

FULL_REFIT_GROWTH = 2.0
"""Run the grid search again once the points have grown by this factor since the last grid search."""
GRID_SCREEN_POINTS = 256
"""The grid search screens at most this many points (a random subsample), then refines on all: its cost stays flat."""


@dataclass(frozen=True)
class IncrementalFit:
    """A fit of L(N, D) with what the next refit starts from."""

    fit: ChinchillaFit
    keys: tuple[str, ...]
    """One key per point (a run id), in the order of the weights' columns."""
    weights: np.ndarray
    """(R, points) online-bootstrap weights, Poisson(1) each, drawn when the point first appeared."""
    grid_points: int
    """Points at the last full grid search."""
    full: bool
    """Whether this fit ran the grid search (False: warm-started)."""


def online_weights(keys, resamples: int, rng: np.random.Generator, previous: IncrementalFit | None = None) -> np.ndarray:
    """(resamples, len(keys)) Poisson(1) weights: a key seen before keeps its column, a new key gets new draws."""
    out = rng.poisson(1.0, (resamples, len(keys))).astype(float)
    if previous is not None and len(previous.weights) == resamples:
        column = {key: i for i, key in enumerate(previous.keys)}
        seen = [(j, column[key]) for j, key in enumerate(keys) if key in column]
        if seen:
            new_index, old_index = (np.array(v) for v in zip(*seen, strict=True))
            out[:, new_index] = previous.weights[:, old_index]
    return out


def refit_chinchilla(keys, n, d, loss, *, previous: IncrementalFit | None = None, bootstrap: int = 100, seed: int = 0,
                     level: float = 0.95, full_growth: float = FULL_REFIT_GROWTH) -> IncrementalFit:
    """L(N, D) on the points (one per key) with an online bootstrap, warm-started from `previous` when there is one.

    keys: a stable key per point (run ids); points may come in any order and new ones anywhere.
    """
    keys = tuple(str(k) for k in keys)
    log_n, log_d, log_l = (np.log(np.asarray(v, float)) for v in (n, d, loss))
    rng = np.random.default_rng([seed, len(keys)])
    weights = online_weights(keys, bootstrap, rng, previous)
    full = previous is None or len(keys) >= full_growth * previous.grid_points
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if full:  # the grid screens a subsample (it only ranks basins); the best basins are refined on every point
            sample = (np.sort(rng.choice(len(keys), GRID_SCREEN_POINTS, replace=False)) if len(keys) > GRID_SCREEN_POINTS
                      else np.arange(len(keys)))
            screened = fit_chinchilla(np.exp(log_n[sample]), np.exp(log_d[sample]), np.exp(log_l[sample]), bootstrap=0)
            starts = [screened.theta] + ([previous.fit.theta] if previous is not None else [])
        else:
            starts = [previous.fit.theta]
        solutions, values = refine_batch(np.array(starts), log_n, log_d, log_l)
        theta, objective = polish(solutions[int(np.argmin(values))], log_n, log_d, log_l)
        boot = np.empty((0, 5))
        if bootstrap:
            starts = (previous.fit.bootstrap if previous is not None and len(previous.fit.bootstrap) == bootstrap
                      else np.repeat(theta[None], bootstrap, 0))
            boot, _ = refine_batch(starts, log_n, log_d, log_l, weights)
            if full and previous is not None:
                # On a grid search, also from the new optimum: a member keeps whichever basin fits its data better.
                fresh, values = refine_batch(np.repeat(theta[None], bootstrap, 0), log_n, log_d, log_l, weights)
                _, warm_values = refine_batch(boot, log_n, log_d, log_l, weights, max_iterations=0)
                boot = np.where((values < warm_values)[:, None], fresh, boot)
    fit = ChinchillaFit(theta=theta, objective=float(objective), n_points=len(keys), bootstrap=boot, level=level)
    return IncrementalFit(fit=fit, keys=keys, weights=weights, grid_points=len(keys) if full else previous.grid_points,
                          full=full)


@dataclass(frozen=True)
class CurveRefit:
    """One full refit of the curve law, its inputs fixed in the calling thread (`WarmCurves.prepare`), so that
    `run_curve_refit` may run in another thread: it reads nothing shared and changes nothing."""

    curves: tuple
    settings: object
    """proxyscale.analysis.curve_planner.CurvePlannerSettings"""
    warm: CurveLawFit | None
    """The fit it starts from (None: from the grid)."""
    label_weights: dict
    points: int


@dataclass(frozen=True)
class CurveRefitResult:
    refit: CurveRefit
    estimate: object
    """analysis.curve_planner.CurveEstimate, or None (not identifiable yet)."""
    state: GaussNewtonState | None
    """What the recursive update continues from (None: no Tissue estimate to continue)."""


def run_curve_refit(refit: CurveRefit) -> CurveRefitResult:
    """The refit itself, and the normal matrices of its point fit and members (the recursive update's start)."""
    from proxyscale.analysis.curve_planner import fit_curves

    estimate = fit_curves(list(refit.curves), refit.settings, warm=refit.warm, label_weights=refit.label_weights)
    state = None
    if estimate is not None and isinstance(estimate.fit, CurveLawFit):  # mpl always refits from scratch
        state = gauss_newton_state(estimate.fit, refit.curves, refit.label_weights)
    return CurveRefitResult(refit, estimate, state)


class WarmCurves:
    """The curve planner's refits as runs arrive (analysis.curve_planner.fit_curves), warm-started: each lineage
    group gets its online-bootstrap weights (Poisson(1) per member) once, when its first curve appears, and the
    curve law restarts from its last fit and members; from the grid again whenever the points have doubled.

    Between full refits, `update` moves the point fit and every member by one Gauss-Newton step from the new curves'
    points only (analysis.curve_law.recursive_update): O(new points x members), however many points came before.
    Only the Tissue form has it; the multi-power form (settings.law = "mpl") refits from scratch on every call.

    A full refit splits in three so that it can run in another thread (orchestrator/active.py): `prepare` (here:
    the weights of new lineages are drawn, the warm start chosen), `run_curve_refit` (anywhere: pure) and `adopt`
    (here: the result becomes the last fit). `fit` does the three in a row.
    """

    def __init__(self, resamples: int, seed: int = 0, full_growth: float = FULL_REFIT_GROWTH) -> None:
        self.resamples, self.full_growth = resamples, full_growth
        self.rng = np.random.default_rng([seed, 22])
        self.weights: dict[str, np.ndarray] = {}
        self.last = None
        """The last fit (a CurveLawFit), or None."""
        self.grid_points = 0
        self.full = True
        """Whether the last refit started from the grid."""
        self.state: GaussNewtonState | None = None
        """The last fit with its normal matrices (the recursive update's start), or None."""
        self.curves: list = []
        """The curves the last estimate (refit or update) has seen."""

    def label_weights(self, curves) -> dict[str, np.ndarray]:
        for curve in curves:
            if curve.label not in self.weights:
                self.weights[curve.label] = self.rng.poisson(1.0, self.resamples).astype(float)
        return {curve.label: self.weights[curve.label] for curve in curves}

    def prepare(self, curves, settings) -> CurveRefit:
        """A full refit of `curves`, warm from the last fit unless the points have doubled since the last grid."""
        points = sum(len(c.steps) for c in curves)
        warm = self.last if self.last is not None and points < self.full_growth * self.grid_points else None
        return CurveRefit(tuple(curves), settings, warm, self.label_weights(curves), points)

    def adopt(self, result: CurveRefitResult):
        """The refit's result becomes the last fit (its members what the next refit and update start from)."""
        self.full = result.refit.warm is None
        estimate = result.estimate
        if estimate is not None and isinstance(estimate.fit, CurveLawFit):
            self.last = estimate.fit
            if self.full:
                self.grid_points = result.refit.points
        self.state = result.state
        self.curves = list(result.refit.curves)
        return estimate

    def fit(self, curves, settings):
        """fit_curves(curves, settings) from the last fit (None when the law is not identifiable yet)."""
        return self.adopt(run_curve_refit(self.prepare(curves, settings)))

    @property
    def recursive(self) -> bool:
        """Whether `update` can step from the last estimate (a Tissue fit to continue), not refit."""
        return self.state is not None

    def update(self, new_curves, settings):
        """The estimate after `new_curves` (curves not seen yet) join: one recursive Gauss-Newton step of the point
        fit and of every member from their points only, each member weighing a new lineage by its online-bootstrap
        weight; N_opt, L(C*) as fit_curves computes them. Without a Tissue fit to continue (none yet, settings.law =
        "mpl", another clock, or the new curves free a parameter the fit held fixed) this is a full refit of every
        curve seen. n_ref stays the last full fit's (see recursive_update)."""
        from proxyscale.analysis.curve_planner import estimate_from_fit

        new_curves = list(new_curves)
        state = self.state
        if state is None or settings.law != "tissue" or state.fit.clock != settings.clock:
            return self.fit(self.curves + new_curves, settings)
        weights = self.label_weights(new_curves)
        try:
            state = recursive_update(state, new_curves, weights)
        except ValueError:  # a new curve anneals where none did: C and r must be fitted, not stepped
            return self.fit(self.curves + new_curves, settings)
        self.state = state
        self.curves += new_curves
        estimate = estimate_from_fit(state.fit, settings, "tissue")
        if estimate is not None:
            self.last = state.fit  # the next refit starts from the updated members: closer to its optimum
        return estimate


def geometric_due(count: int, last: int, growth: float = 0.05) -> bool:
    """Whether `count` (finished runs) warrants a refit when the last one saw `last`: every run while the growth
    fraction of `last` is under one run, then every `growth` more (O(log count) refits in all)."""
    return count - last >= max(1, int(growth * last))
