"""Approach 2 (Hoffmann et al. 2022): a parabola of loss in log N (or log D) per FLOP budget, then
power laws through the minima, with bootstrap intervals (runs resampled within each budget)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.fit import Interval, percentile_interval


@dataclass(frozen=True)
class PowerLawFit:
    coefficient: Interval
    exponent: Interval

    def predict(self, x: float) -> float:
        return self.coefficient.value * x**self.exponent.value


@dataclass(frozen=True)
class IsoflopFit:
    budgets: np.ndarray
    """The FLOP budgets that had a usable parabola (curving upwards, minimum inside the budget's range)."""
    optimal_n: np.ndarray
    optimal_d: np.ndarray
    optimal_loss: np.ndarray
    n_law: PowerLawFit
    """N*(C) = G C^a."""
    d_law: PowerLawFit
    """D*(C) = G' C^b."""
    loss_law: PowerLawFit
    """L*(C) = k C^-gamma (exponent reported with its sign)."""
    bootstrap: np.ndarray
    """(R, 6): log coefficient and exponent of N*, D*, L* per resample."""
    level: float = 0.95

    def at(self, flops: float) -> dict[str, Interval]:
        """N*, D* and L* at a compute budget with bootstrap intervals."""
        log_c = np.log(flops)
        point = {
            "n_opt": self.n_law.predict(flops),
            "d_opt": self.d_law.predict(flops),
            "loss": self.loss_law.predict(flops),
        }
        samples = {
            "n_opt": np.exp(self.bootstrap[:, 0] + self.bootstrap[:, 1] * log_c),
            "d_opt": np.exp(self.bootstrap[:, 2] + self.bootstrap[:, 3] * log_c),
            "loss": np.exp(self.bootstrap[:, 4] + self.bootstrap[:, 5] * log_c),
        }
        return {key: percentile_interval(point[key], samples[key], self.level) for key in point}


def parabola_minimum(log_x: np.ndarray, loss: np.ndarray) -> tuple[float, float] | None:
    """(log x*, L*) of a parabola fitted to loss(log x); None if it does not curve upwards or has < 3 points."""
    if len(np.unique(log_x)) < 3:
        return None
    curvature, slope, intercept = np.polyfit(log_x, loss, 2)
    if curvature <= 0:
        return None
    vertex = -slope / (2 * curvature)
    return float(vertex), float(intercept + slope * vertex + curvature * vertex**2)


def budget_levels(flops, significant_digits: int = 2) -> np.ndarray:
    """The FLOP budget each run was planned at: its FLOPs rounded to `significant_digits`. A run's FLOPs
    differ from its budget by the rounding to whole steps (3.0e11 trains 2.994e11), which would
    otherwise put every run in a group of its own."""
    return np.array([float(f"{c:.{significant_digits - 1}e}") for c in np.ravel(np.asarray(flops, float))])


def _minima(flops, log_x, loss, budgets):
    rows = []
    for budget in budgets:
        mask = flops == budget
        found = parabola_minimum(log_x[mask], loss[mask])
        if found is not None:
            rows.append((budget, *found))
    return np.array(rows).reshape(-1, 3)


def _line(log_c: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    exponent, log_coefficient = np.polyfit(log_c, log_y, 1)
    return float(log_coefficient), float(exponent)


def _laws_from_minima(minima: np.ndarray, x_is_tokens: bool) -> np.ndarray:
    log_c = np.log(minima[:, 0])
    log_x = minima[:, 1]
    log_other = np.log(minima[:, 0] / 6.0) - log_x  # C = 6 N D
    log_n, log_d = (log_other, log_x) if x_is_tokens else (log_x, log_other)
    # A resample's parabola can put a minimum loss below zero (few sizes per budget): its loss law is
    # nan and that member drops out of the L*(C) interval, without a warning per member.
    with np.errstate(invalid="ignore"):
        log_min_loss = np.log(minima[:, 2])
    return np.array([*_line(log_c, log_n), *_line(log_c, log_d), *_line(log_c, log_min_loss)])


def fit_isoflop(flops, x, loss, *, x_is_tokens: bool = False, bootstrap: int = 1000, seed: int = 0,
                level: float = 0.95) -> IsoflopFit:
    """Fit approach 2. `x` is N per run (or D, with x_is_tokens=True); the other follows from C = 6 N D."""
    flops, x, loss = (np.asarray(v, float) for v in (flops, x, loss))
    budgets = np.unique(flops)
    log_x = np.log(x)
    minima = _minima(flops, log_x, loss, budgets)
    if len(minima) < 2:
        raise ValueError(
            f"approach 2 needs at least 2 FLOP budgets with 3+ sizes whose loss curves upwards; found {len(minima)}"
        )
    laws = _laws_from_minima(minima, x_is_tokens)
    rng = np.random.default_rng(seed)
    samples = []
    groups = [np.flatnonzero(flops == budget) for budget in budgets]
    for _ in range(bootstrap):
        index = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        resampled = _minima(flops[index], log_x[index], loss[index], budgets)
        if len(resampled) >= 2:
            samples.append(_laws_from_minima(resampled, x_is_tokens))
    samples = np.array(samples).reshape(-1, 6)

    def law(k: int) -> PowerLawFit:
        return PowerLawFit(
            coefficient=percentile_interval(np.exp(laws[k]), np.exp(samples[:, k]), level),
            exponent=percentile_interval(laws[k + 1], samples[:, k + 1], level),
        )

    log_n_opt = minima[:, 1] if not x_is_tokens else np.log(minima[:, 0] / 6.0) - minima[:, 1]
    return IsoflopFit(
        budgets=minima[:, 0],
        optimal_n=np.exp(log_n_opt),
        optimal_d=minima[:, 0] / (6.0 * np.exp(log_n_opt)),
        optimal_loss=minima[:, 2],
        n_law=law(0),
        d_law=law(2),
        loss_law=law(4),
        bootstrap=samples,
        level=level,
    )
