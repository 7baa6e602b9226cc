"""Intervals calibrated by the backtest (analysis/predictive.py): one conformal-style factor from held-out
residuals scales the bootstrap band, about 1 when the law is right and above 1 when its form is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from proxyscale.analysis.fit import Interval
from proxyscale.analysis.laws import chinchilla_loss
from proxyscale.analysis.planner import COARSE_STARTS
from proxyscale.analysis.predictive import (
    MIN_MEMBERS,
    Calibration,
    backtest_calibration,
    backtest_curve_forms,
    conformal_factor,
    fit_law,
    largest_size_split,
    log_residuals,
    predict_loss,
)
from proxyscale.models.spec import SimulatedSpec
from tests.test_curve_law import simulated_curves

TRUTH = {"E": 1.8, "A": 400.0, "B": 1200.0, "alpha": 0.34, "beta": 0.28}
WIDTHS = (64, 96, 128, 192, 256)


def runs(noise: float = 0.005, seed: int = 0, bias: float = 0.0):
    """6 sizes x 5 budgets of L(N, D), `noise` relative; `bias`: the largest size's losses that much higher than the
    law (what a form that is wrong where it extrapolates looks like one step up the ladder)."""
    n = np.repeat(np.logspace(7, 9, 6), 5)
    d = n * np.tile(np.logspace(0.5, 2.5, 5), 6)
    loss = chinchilla_loss(n, d, **TRUTH) * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return n, d, loss * np.where(n == n.max(), 1 + bias, 1.0)


def test_the_factor_is_the_conformal_quantile_of_the_scaled_errors():
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 0.01, 4000)  # log errors of 1%
    half = 0.0196  # a right band for them
    assert conformal_factor(errors, 0 * errors, -half + 0 * errors, half + 0 * errors) == pytest.approx(1.0, abs=0.06)
    assert conformal_factor(errors, 0 * errors, -half / 2 + 0 * errors, half / 2 + 0 * errors) == pytest.approx(2.0, abs=0.12)
    # Each side is judged by its own half-width: errors all above are read against the upper side alone.
    assert conformal_factor(np.abs(errors), 0 * errors, -100 + 0 * errors, half + 0 * errors) == pytest.approx(1.0, abs=0.06)
    calibration = Calibration.measure(errors, 0 * errors, -half / 2 + 0 * errors, half / 2 + 0 * errors, split="test")
    assert calibration.coverage_before < 0.75 and calibration.coverage_after == pytest.approx(0.95, abs=0.01)
    assert calibration.width_after == pytest.approx(calibration.factor * calibration.width_before, rel=0.02)


def test_a_calibration_scales_bands_and_intervals_about_their_point():
    calibration = Calibration(2.0, 10, 0.5, 0.95, 0.01, 0.02, "test")
    low, high = calibration.scale(np.log([2.0]), np.log([1.9]), np.log([2.2]))
    assert np.exp(low[0]) == pytest.approx(2.0 * (1.9 / 2.0) ** 2) and np.exp(high[0]) == pytest.approx(2.0 * 1.1**2)
    scaled = calibration.interval(Interval(100.0, 50.0, 400.0))
    assert (scaled.value, scaled.low, scaled.high) == pytest.approx((100.0, 25.0, 1600.0))
    assert calibration.interval(Interval(100.0, 0.0, np.inf)) == Interval(100.0, 0.0, np.inf)
    assert Calibration.none("why").factor == 1.0 and "why" in Calibration.none("why").line()


def test_the_largest_sizes_are_held_out_until_a_tenth_of_the_runs():
    n = np.array([1, 1, 1, 2, 2, 3, 3, 4, 5, 5.0])
    assert largest_size_split(n).tolist() == [False] * 8 + [True, True]
    assert largest_size_split(np.array([1, 2, 3, 3.0])) is None  # the rest would have two sizes


def test_the_l_n_d_factor_is_near_1_when_the_law_is_right_and_above_1_when_it_is_not():
    right = backtest_calibration("chinchilla", *runs(), grid=COARSE_STARTS)
    bent = backtest_calibration("chinchilla", *runs(bias=0.04), grid=COARSE_STARTS)
    assert right.n_points == 5 and "largest sizes" in right.split
    assert 0.4 < right.factor < 2.0, right
    assert bent.factor > 2.0 and bent.factor > 2 * right.factor, (right, bent)
    assert bent.coverage_before < 1.0


def test_predict_loss_applies_the_factor_to_both_bands():
    n, d, loss = runs()
    fit = fit_law("chinchilla", n, d, loss, bootstrap=MIN_MEMBERS, grid=COARSE_STARTS)
    residuals = log_residuals("chinchilla", fit, n, d, loss)
    plain = predict_loss("chinchilla", fit, [3e9], [6e10], residuals)
    wide = predict_loss("chinchilla", fit, [3e9], [6e10], residuals,
                        calibration=Calibration(3.0, 5, 0.2, 0.95, 0.01, 0.03, "test"))
    assert wide.value[0] == plain.value[0]
    for low, high, wide_low, wide_high in ((plain.low, plain.high, wide.low, wide.high),
                                           (plain.mean_low, plain.mean_high, wide.mean_low, wide.mean_high)):
        assert np.log(wide_high[0] / wide.value[0]) == pytest.approx(3 * np.log(high[0] / plain.value[0]))
        assert np.log(wide.value[0] / wide_low[0]) == pytest.approx(3 * np.log(plain.value[0] / low[0]))


@pytest.mark.parametrize("form, truth_form, expect", [
    ("tissue", "tissue", "near 1"),
    ("tissue", "multipower", "above 1"),
])
def test_the_curve_factor_is_near_1_when_well_specified_and_above_1_when_not(form, truth_form, expect):
    curves = simulated_curves(SimulatedSpec(noise=0.003, curve_form=truth_form), widths=WIDTHS)
    backtest = backtest_curve_forms(curves, forms=[(form, "relative")], bootstrap=MIN_MEMBERS)
    factor = backtest.calibration.factor
    assert backtest.calibration.n_points > 100
    if expect == "near 1":
        assert 0.6 < factor < 1.5, backtest.lines()
    else:
        assert factor > 1.8 and backtest.calibration.coverage_before < 0.8, backtest.lines()


def test_a_few_held_out_points_can_widen_a_band_but_not_narrow_it():
    band = np.full(3, 0.05)
    near = Calibration.measure(np.array([0.001, -0.002, 0.0]), 0 * band, -band, band, split="3 runs")
    far = Calibration.measure(np.array([0.1, -0.02, 0.0]), 0 * band, -band, band, split="3 runs")
    assert near.factor == 1.0 and "not narrow it" in near.split
    assert far.factor == pytest.approx(2.0)
    many = 40
    assert Calibration.measure(np.full(many, 0.001), np.zeros(many), np.full(many, -0.05), np.full(many, 0.05),
                               split="40 points").factor == pytest.approx(0.02)
