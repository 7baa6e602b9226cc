"""Bootstrap percentile intervals (analysis/fit.py)."""

from __future__ import annotations

import math

import numpy as np

from proxyscale.analysis.fit import percentile_interval


def test_infinite_members_widen_the_interval_instead_of_being_dropped():
    # 10% of the ensemble says "unbounded" (D_opt of a member with alpha ~ 0): the 97.5% end is infinite.
    samples = np.r_[np.linspace(1.0, 2.0, 90), np.full(10, np.inf)]
    interval = percentile_interval(1.5, samples, 0.95)
    assert math.isinf(interval.high) and 1.0 <= interval.low < 1.1


def test_nan_members_are_dropped_and_finite_samples_interpolate():
    samples = np.r_[np.linspace(0.0, 1.0, 101), [np.nan] * 5]
    interval = percentile_interval(0.5, samples, 0.9)
    assert abs(interval.low - 0.05) < 1e-12 and abs(interval.high - 0.95) < 1e-12
