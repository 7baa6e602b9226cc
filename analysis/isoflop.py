"""Approach 2 (Hoffmann et al. 2022): a parabola of loss in log N (or log D) per FLOP budget, then
power laws through the minima, with bootstrap intervals (runs resampled within each budget).

The window. An isoFLOP curve is a parabola in log N only near its minimum: L(N, C/(6N)) =
E + A N^-alpha + B (6N/C)^beta rises like a power of N on one side and of 1/N on the other, so over a
wide range of N it is asymmetric, and a parabola through every point puts its vertex off the true
minimum. When the sampled range sits differently around N*(C) at different budgets (a fixed ladder
of sizes, say, whose small end is near N* at small C and far below it at large C), that offset changes
with C and biases the exponent of N*(C). So by default each budget's parabola is fitted to the
`window` sizes (5) around its lowest point only; `window=None` keeps the old fit through every
point. A budget whose lowest point is its smallest or largest size has its minimum at (or beyond)
the edge of what was sampled: it is kept, and flagged in `IsoflopFit.at_edge`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval


@dataclass(frozen=True)
class PowerLawFit:
    coefficient: Interval
    exponent: Interval

    def predict(self, x: float) -> float:
        return self.coefficient.value * x**self.exponent.value


@dataclass(frozen=True)
class IsoflopFit:
    budgets: np.ndarray
    """The FLOP budgets that had a usable parabola (curving upwards); see `at_edge` for minima at the edge."""
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
    window: int | None = None
    """Sizes per budget the parabola was fitted to (None: every size)."""
    used: tuple[np.ndarray, ...] = ()
    """Per usable budget (aligned with `budgets`): the indices, into the input rows, of the points fitted."""
    at_edge: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    """Per usable budget: True where its lowest point is its smallest or largest size (a minimum at the edge
    of the sampled range, so the parabola's vertex is an extrapolation)."""

    def at(self, flops: float) -> dict[str, Interval]:
        """N*, D* and L* at a compute budget with bootstrap intervals."""
        log_c = np.log(flops)
        point = {
            "n_opt": self.n_law.predict(flops),
            "d_opt": self.d_law.predict(flops),
            "loss": self.loss_law.predict(flops),
        }
        with np.errstate(over="ignore"):  # a wild resample's law may overflow: an infinite member, kept
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


def window_points(log_x: np.ndarray, loss: np.ndarray, window: int | None) -> tuple[np.ndarray, bool]:
    """(positions of the points to fit, whether the lowest point is at an edge) for one budget's points.

    The `window` distinct sizes nearest in rank to the size of the lowest point (shifted inwards at an
    edge, so there are still `window` of them), and every point at those sizes (a bootstrap resample
    repeats points); window=None or fewer distinct sizes than the window: every point.
    """
    sizes = np.unique(log_x)
    lowest = log_x[int(np.argmin(loss))]
    at_edge = len(sizes) > 1 and (lowest == sizes[0] or lowest == sizes[-1])
    if window is None or len(sizes) <= window:
        return np.arange(len(log_x)), bool(at_edge)
    rank = int(np.searchsorted(sizes, lowest))
    start = min(max(rank - window // 2, 0), len(sizes) - window)
    chosen = sizes[start:start + window]
    return np.flatnonzero(np.isin(log_x, chosen)), bool(at_edge)


def _minima(flops, log_x, loss, budgets, window=None, details=False):
    rows, used, edges = [], [], []
    for budget in budgets:
        members = np.flatnonzero(flops == budget)
        positions, at_edge = window_points(log_x[members], loss[members], window)
        found = parabola_minimum(log_x[members[positions]], loss[members[positions]])
        if found is not None:
            rows.append((budget, *found))
            used.append(members[positions])
            edges.append(at_edge)
    minima = np.array(rows).reshape(-1, 3)
    return (minima, tuple(used), np.array(edges, bool)) if details else minima


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


DEFAULT_WINDOW = 5


def fit_isoflop(flops, x, loss, *, x_is_tokens: bool = False, bootstrap: int = 1000, seed: int = 0,
                level: float = 0.95, window: int | None = DEFAULT_WINDOW) -> IsoflopFit:
    """Fit approach 2. `x` is N per run (or D, with x_is_tokens=True); the other follows from C = 6 N D.

    window: the number of sizes around each budget's lowest point that its parabola is fitted to
    (None: all of them; see the module docstring). The bootstrap resamples each budget's points and
    chooses the window again on the resample, so the intervals include where the window falls.
    """
    if window is not None and window < 3:
        raise ValueError(f"window: a parabola needs at least 3 sizes, got {window}")
    flops, x, loss = (np.asarray(v, float) for v in (flops, x, loss))
    budgets = np.unique(flops)
    log_x = np.log(x)
    minima, used, at_edge = _minima(flops, log_x, loss, budgets, window, details=True)
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
        resampled = _minima(flops[index], log_x[index], loss[index], budgets, window)
        if len(resampled) >= 2:
            samples.append(_laws_from_minima(resampled, x_is_tokens))
    samples = np.array(samples).reshape(-1, 6)

    def law(k: int) -> PowerLawFit:
        with np.errstate(over="ignore"):
            coefficients = np.exp(samples[:, k])
        return PowerLawFit(
            coefficient=percentile_interval(np.exp(laws[k]), coefficients, level),
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
        window=window,
        used=used,
        at_edge=at_edge,
    )
