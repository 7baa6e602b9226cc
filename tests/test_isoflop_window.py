"""Approach 2 with a window of sizes around each budget's lowest point (analysis/isoflop.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis.isoflop import fit_isoflop, parabola_minimum, window_points
from proxyscale.analysis.laws import chinchilla_loss, compute_optimal_allocation
from tests.conftest import SHARED_DATA

TRUTH = {"E": 1.7, "A": 400.0, "B": 1200.0, "alpha": 0.34, "beta": 0.28}
TRUE_EXPONENT = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])  # N*(C) ~ C^(beta / (alpha + beta))
LLAMA3 = SHARED_DATA / "llama3_isoflops" / "isoflops_points.csv"


def asymmetric_ladder(noise: float = 0.001, seed: int = 0):
    """One fixed ladder of 15 sizes (1e7 to 3e10 parameters) for 7 budgets from 1e18 to 1e21 FLOPs, keeping
    the sizes above N*(C) / 2.5: every minimum is near the small-N edge, and the curve runs on to ~1000 N*
    at small C but only ~100 N* at large C, so the asymmetry of L in log N differs from budget to budget."""
    ladder = np.logspace(7, 10.5, 15)
    flops, n = [], []
    for budget in np.logspace(18, 21, 7):
        n_opt, _ = compute_optimal_allocation(budget, A=TRUTH["A"], B=TRUTH["B"], alpha=TRUTH["alpha"], beta=TRUTH["beta"])
        sizes = ladder[ladder >= n_opt / 2.5]
        flops += [budget] * len(sizes)
        n += list(sizes)
    flops, n = np.array(flops), np.array(n)
    loss = chinchilla_loss(n, flops / (6 * n), **TRUTH) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))
    return flops, n, loss


def test_the_window_recovers_the_exponent_that_all_points_miss():
    flops, n, loss = asymmetric_ladder()
    windowed = fit_isoflop(flops, n, loss, bootstrap=100)
    everything = fit_isoflop(flops, n, loss, bootstrap=0, window=None)
    window_error = abs(windowed.n_law.exponent.value - TRUE_EXPONENT)
    all_error = abs(everything.n_law.exponent.value - TRUE_EXPONENT)
    print(f"true {TRUE_EXPONENT:.4f}; window 5: {windowed.n_law.exponent.value:.4f} "
          f"[{windowed.n_law.exponent.low:.4f}, {windowed.n_law.exponent.high:.4f}]; all points: "
          f"{everything.n_law.exponent.value:.4f}")
    assert window_error < 0.03
    assert all_error > 0.05 and all_error > 3 * window_error
    assert windowed.n_law.exponent.low < TRUE_EXPONENT < windowed.n_law.exponent.high
    assert windowed.window == 5 and everything.window is None


def test_the_result_says_which_points_each_budget_used():
    flops, n, loss = asymmetric_ladder(noise=0.0)
    fit = fit_isoflop(flops, n, loss, bootstrap=0)
    assert len(fit.used) == len(fit.budgets) == 7
    for budget, used in zip(fit.budgets, fit.used, strict=True):
        members = np.flatnonzero(flops == budget)
        assert set(used) <= set(members) and len(np.unique(n[used])) == 5
        assert members[np.argmin(loss[members])] in used  # the window holds the lowest point
        # ... and is contiguous in size: the 5 sizes are neighbours on the ladder.
        ranks = np.searchsorted(np.sort(n[members]), n[used])
        assert ranks.max() - ranks.min() == 4
    everything = fit_isoflop(flops, n, loss, bootstrap=0, window=None)
    assert [len(u) for u in everything.used] == [int((flops == b).sum()) for b in everything.budgets]
    # window=None is the old fit: one parabola through every point of a budget.
    first = flops == everything.budgets[0]
    assert np.log(everything.optimal_n[0]) == pytest.approx(parabola_minimum(np.log(n[first]), loss[first])[0])


def test_a_minimum_at_the_edge_of_the_sampled_sizes_is_flagged():
    flops, n, loss = asymmetric_ladder(noise=0.0)
    assert not fit_isoflop(flops, n, loss, bootstrap=0).at_edge.any()
    # Drop, at the largest budget, every size below its optimum: its lowest point is now its smallest size.
    budget = flops.max()
    n_opt, _ = compute_optimal_allocation(budget, A=TRUTH["A"], B=TRUTH["B"], alpha=TRUTH["alpha"], beta=TRUTH["beta"])
    keep = ~((flops == budget) & (n < n_opt))
    fit = fit_isoflop(flops[keep], n[keep], loss[keep], bootstrap=0)
    assert fit.at_edge.tolist() == [False] * 6 + [True]


def test_window_points_stays_inside_the_sizes_and_keeps_repeated_points():
    log_x = np.log([1.0, 2, 4, 8, 16, 32, 64, 64])
    loss = np.array([3.0, 2.0, 2.5, 2.8, 3.0, 3.2, 3.4, 3.5])
    positions, at_edge = window_points(log_x, loss, 5)
    assert positions.tolist() == [0, 1, 2, 3, 4] and not at_edge  # shifted right at the small edge
    positions, at_edge = window_points(log_x, loss[::-1].copy(), 3)
    assert positions.tolist() == [4, 5, 6, 7] and at_edge  # lowest at the largest size: both of its copies
    with pytest.raises(ValueError, match="at least 3"):
        fit_isoflop([1.0, 1, 1], [1.0, 2, 3], [1.0, 0.5, 1], window=2)


def test_llama3_isoflop_exponent_with_the_window():
    if not LLAMA3.exists():
        pytest.skip(f"reference data {LLAMA3} is absent (it lives in ../shared/data beside the checkout)")
    table = pd.read_csv(LLAMA3)
    fit = fit_isoflop(table["compute_budget"], table["training_tokens"], table["validation_loss"], x_is_tokens=True,
                      bootstrap=200)
    everything = fit_isoflop(table["compute_budget"], table["training_tokens"], table["validation_loss"],
                             x_is_tokens=True, bootstrap=0, window=None)
    print(f"llama3 D*(C) exponent: window 5 {fit.d_law.exponent}, all points {everything.d_law.exponent.value:.4f}")
    assert len(fit.budgets) == 10 and not fit.at_edge.any()
    assert fit.d_law.exponent.value == pytest.approx(0.53, abs=0.02)  # the paper: 0.53
    assert fit.d_law.exponent.low < 0.53 < fit.d_law.exponent.high
