"""Refits that follow a growing sweep (issue 22, analysis/incremental.py): a warm refit lands where a fit from
scratch does, the online bootstrap keeps each point's weights, and the refit schedule is geometric."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.fit import fit_chinchilla
from analysis.incremental import WarmCurves, geometric_due, online_weights, refit_chinchilla


def chinchilla_points(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(1e5), np.log(1e8), count))
    d = np.exp(rng.uniform(np.log(1e7), np.log(1e10), count))
    loss = (1.8 + 482 / n**0.35 + 2085 / d**0.37) * (1 + 0.003 * rng.standard_normal(count))
    return [f"run{i}" for i in range(count)], n, d, loss


def test_online_weights_keep_each_keys_column_and_draw_only_for_new_keys():
    rng = np.random.default_rng(0)
    keys, n, d, loss = chinchilla_points(40)
    first = refit_chinchilla(keys[:30], n[:30], d[:30], loss[:30], bootstrap=50)
    shuffled = keys[35:] + keys[:30][::-1]  # new keys anywhere, old ones in another order
    weights = online_weights(shuffled, 50, rng, first)
    for j, key in enumerate(shuffled):
        if key in first.keys:
            assert np.array_equal(weights[:, j], first.weights[:, first.keys.index(key)])
    assert weights.shape == (50, len(shuffled)) and (weights >= 0).all() and weights.dtype == float


def test_a_warm_refit_lands_where_a_fit_from_scratch_does():
    keys, n, d, loss = chinchilla_points(80)
    last = refit_chinchilla(keys[:60], n[:60], d[:60], loss[:60], bootstrap=64)
    assert last.full
    warm = refit_chinchilla(keys, n, d, loss, previous=last, bootstrap=64)
    assert not warm.full and warm.grid_points == 60  # the grid again only once the points double
    scratch = fit_chinchilla(n, d, loss)
    for name, value in scratch.params.items():
        assert warm.fit.params[name] == pytest.approx(value, rel=1e-3), name
    # Each member restarted from its own last solution ends where it would from the new optimum (same weights).
    from analysis.fit import refine_batch

    logs = [np.log(v) for v in (n, d, loss)]
    fresh, _ = refine_batch(np.repeat(warm.fit.theta[None], 64, 0), *logs, warm.weights)
    assert np.abs(np.median(fresh[:, 3:], axis=0) - np.median(warm.fit.bootstrap[:, 3:], axis=0)).max() < 2e-3
    intervals = warm.fit.intervals()
    assert intervals["alpha"].low < 0.35 < intervals["alpha"].high and intervals["beta"].low < 0.37 < intervals["beta"].high
    again = refit_chinchilla(keys, n, d, loss, previous=warm, bootstrap=64)  # nothing new: the same fit
    assert again.fit.params["alpha"] == pytest.approx(warm.fit.params["alpha"], rel=1e-6)


def test_the_refit_schedule_is_geometric():
    refits, last = 0, 0
    for finished in range(1, 10_001):
        if geometric_due(finished, last):
            refits, last = refits + 1, finished
    assert all(geometric_due(k, k - 1) for k in range(1, 41))  # every run up to 40
    assert 100 < refits < 200  # ~40 + log(10,000 / 40) / log(1.05): not 10,000


def test_warm_curve_refits_match_a_fit_from_scratch():
    from analysis.curve_law import cosine_shape, fit_curve_law
    from analysis.curve_planner import CurvePlannerSettings
    from tests.benchmarks.bench_fit_scale import simulated_runs

    curves = [c for _, c, _ in simulated_runs(14)]
    settings = CurvePlannerSettings(target_flops=1e17, target_schedule=cosine_shape(), target_batch_tokens=2**20,
                                    budget_flops=1e30, ensemble=16)
    refits = WarmCurves(16)
    refits.fit(curves[:12], settings)
    assert refits.full and refits.last is not None
    weights = dict(refits.weights)
    estimate = refits.fit(curves, settings)
    assert not refits.full and estimate is not None
    assert all(np.array_equal(refits.weights[k], v) for k, v in weights.items())  # members updated, not redrawn
    scratch = fit_curve_law(curves, clock="relative")
    for name in ("alpha", "beta", "E"):
        assert estimate.fit.params[name] == pytest.approx(scratch.params[name], rel=0.02), name
