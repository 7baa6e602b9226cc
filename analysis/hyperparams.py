"""Optimal learning rate and batch size, muP transfer drift, and LR sensitivity.

- Near-optimal runs (Li et al. 2025, "Step Law"): per (N, D) group, the runs within 0.25% of the
  group's best loss; then log-linear laws such as eta_opt = c N^a D^b by least squares in log space,
  with bootstrap intervals.
- The optimal LR of one group: the vertex of a parabola of loss in log LR through the best point and
  its neighbours (the grid's argmin when the vertex is not bracketed).
- muP transfer drift: the slope of log LR_opt against log width (near 0 when the LR transfers).
- LR sensitivity (Wortsman et al. 2023): E_eta[min(L(eta), L_init) - min_eta L(eta)] over the LR grid;
  diverged runs count as L_init.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.fit import Interval, percentile_interval

NEAR_OPTIMAL_TOLERANCE = 0.0025


def near_optimal_mask(groups: np.ndarray, loss: np.ndarray, tolerance: float = NEAR_OPTIMAL_TOLERANCE) -> np.ndarray:
    """True for the runs within `tolerance` (relative) of the best loss of their group."""
    groups, loss = np.asarray(groups), np.asarray(loss, float)
    mask = np.zeros(len(loss), dtype=bool)
    for label in np.unique(groups):
        members = groups == label
        best = np.nanmin(loss[members])
        mask |= members & (loss <= best * (1 + tolerance))
    return mask


def optimal_lr(lrs, losses) -> float:
    """LR at the minimum of loss over log LR: a parabola through the best point and its grid neighbours."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    finite = np.isfinite(losses)
    # One point per distinct LR (the mean of repeats, e.g. seeds or a bootstrap's duplicates).
    unique, index = np.unique(lrs[finite], return_inverse=True)
    log_lr = np.log(unique)
    loss = np.bincount(index, weights=losses[finite]) / np.bincount(index)
    best = int(np.argmin(loss))
    if 0 < best < len(loss) - 1:
        window = slice(best - 1, best + 2)
        curvature, slope, _ = np.polyfit(log_lr[window], loss[window], 2)
        if curvature > 0:
            vertex = -slope / (2 * curvature)
            if log_lr[best - 1] <= vertex <= log_lr[best + 1]:
                return float(np.exp(vertex))
    return float(np.exp(log_lr[best]))


@dataclass(frozen=True)
class LogLinearFit:
    log_coefficient: Interval
    exponents: tuple[Interval, ...]

    @property
    def coefficient(self) -> Interval:
        c = self.log_coefficient
        return Interval(float(np.exp(c.value)), float(np.exp(c.low)), float(np.exp(c.high)))


def fit_log_linear(features, target, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> LogLinearFit:
    """log target = c + sum_k e_k log feature_k by least squares, with a bootstrap over rows."""
    x = np.log(np.atleast_2d(np.asarray(features, float).T).T)
    y = np.log(np.asarray(target, float))
    design = np.column_stack([np.ones(len(y)), x])
    point = np.linalg.lstsq(design, y, rcond=None)[0]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        rows = rng.integers(0, len(y), len(y))
        if np.linalg.matrix_rank(design[rows]) == design.shape[1]:
            samples.append(np.linalg.lstsq(design[rows], y[rows], rcond=None)[0])
    samples = np.array(samples).reshape(-1, design.shape[1])
    return LogLinearFit(
        log_coefficient=percentile_interval(point[0], samples[:, 0], level),
        exponents=tuple(percentile_interval(point[k], samples[:, k], level) for k in range(1, design.shape[1])),
    )


def transfer_drift(widths, lrs, losses, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """(per-width optimal LR, slope of log LR_opt against log width with its interval).

    The bootstrap resamples the runs within each width and recomputes every width's optimum.
    """
    widths, lrs, losses = (np.asarray(v, float) for v in (widths, lrs, losses))
    unique = np.unique(widths)
    if len(unique) < 2:
        raise ValueError("transfer drift needs runs at two or more widths")

    def slope(lr_by_width):
        return float(np.polyfit(np.log(unique), np.log(lr_by_width), 1)[0])

    optimum = np.array([optimal_lr(lrs[widths == w], losses[widths == w]) for w in unique])
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        resampled = []
        for w in unique:
            index = np.flatnonzero(widths == w)
            pick = rng.choice(index, size=len(index), replace=True)
            resampled.append(optimal_lr(lrs[pick], losses[pick]))
        samples.append(slope(np.array(resampled)))
    per_width = dict(zip(unique.tolist(), optimum.tolist(), strict=True))
    return per_width, percentile_interval(slope(optimum), samples, level)


def lr_sensitivity(losses, initial_loss: float) -> float:
    """Wortsman et al.'s LR sensitivity over an LR grid: mean of min(L, L_init) - min L (NaN = diverged = L_init)."""
    losses = np.asarray(losses, float)
    capped = np.where(np.isfinite(losses), np.minimum(losses, initial_loss), initial_loss)
    return float(np.mean(capped - capped.min()))


def divergence_threshold(lrs, diverged) -> float | None:
    """Geometric mean of the largest stable LR and the smallest diverged LR above it (None if none diverged)."""
    lrs, diverged = np.asarray(lrs, float), np.asarray(diverged, bool)
    if not diverged.any() or diverged.all():
        return None
    lowest_diverged = lrs[diverged].min()
    stable_below = lrs[~diverged & (lrs < lowest_diverged)]
    if len(stable_below) == 0:
        return None
    return float(np.sqrt(stable_below.max() * lowest_diverged))


def predict_divergence_lr(widths, lrs, diverged, target_width: float, *, bootstrap: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[dict[float, float], Interval] | None:
    """Per-width divergence thresholds, and the threshold extrapolated to `target_width` by a power law.

    The bootstrap resamples the runs within each width. None when fewer than two widths have a threshold.
    """
    widths, lrs, diverged = np.asarray(widths, float), np.asarray(lrs, float), np.asarray(diverged, bool)
    unique = np.unique(widths)

    def thresholds(pick):
        found = {}
        for w in unique:
            index = pick[widths[pick] == w]
            value = divergence_threshold(lrs[index], diverged[index])
            if value is not None:
                found[float(w)] = value
        return found

    def extrapolate(found):
        if len(found) < 2:
            return np.nan
        x, y = np.log(list(found)), np.log(list(found.values()))
        slope, intercept = np.polyfit(x, y, 1)
        return float(np.exp(intercept + slope * np.log(target_width)))

    point = thresholds(np.arange(len(lrs)))
    if len(point) < 2:
        return None
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        pick = np.concatenate([rng.choice(np.flatnonzero(widths == w), size=int((widths == w).sum()), replace=True)
                               for w in unique])
        samples.append(extrapolate(thresholds(pick)))
    samples = np.array(samples)
    return point, percentile_interval(extrapolate(point), samples, level)
