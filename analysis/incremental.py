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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.curve_law import CurveLawFit
from analysis.fit import ChinchillaFit, fit_chinchilla, polish, refine_batch

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


class WarmCurves:
    """The curve planner's refits as runs arrive (analysis.curve_planner.fit_curves), warm-started: each lineage
    group gets its online-bootstrap weights (Poisson(1) per member) once, when its first curve appears, and the
    curve law restarts from its last fit and members; from the grid again whenever the points have doubled."""

    def __init__(self, resamples: int, seed: int = 0, full_growth: float = FULL_REFIT_GROWTH) -> None:
        self.resamples, self.full_growth = resamples, full_growth
        self.rng = np.random.default_rng([seed, 22])
        self.weights: dict[str, np.ndarray] = {}
        self.last = None
        """The last fit (a CurveLawFit), or None."""
        self.grid_points = 0
        self.full = True
        """Whether the last refit started from the grid."""

    def label_weights(self, curves) -> dict[str, np.ndarray]:
        for curve in curves:
            if curve.label not in self.weights:
                self.weights[curve.label] = self.rng.poisson(1.0, self.resamples).astype(float)
        return {curve.label: self.weights[curve.label] for curve in curves}

    def fit(self, curves, settings):
        """fit_curves(curves, settings) from the last fit (None when the law is not identifiable yet)."""
        from analysis.curve_planner import fit_curves

        points = sum(len(c.steps) for c in curves)
        warm = self.last if self.last is not None and points < self.full_growth * self.grid_points else None
        estimate = fit_curves(list(curves), settings, warm=warm, label_weights=self.label_weights(curves))
        self.full = warm is None
        if estimate is not None and isinstance(estimate.fit, CurveLawFit):  # mpl always refits from scratch
            self.last = estimate.fit
            if self.full:
                self.grid_points = points
        return estimate


def geometric_due(count: int, last: int, growth: float = 0.05) -> bool:
    """Whether `count` (finished runs) warrants a refit when the last one saw `last`: every run while the growth
    fraction of `last` is under one run, then every `growth` more (O(log count) refits in all)."""
    return count - last >= max(1, int(growth * last))
