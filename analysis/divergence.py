"""The LR at which training diverges: per width, and extrapolated to a target width by a power law."""

from __future__ import annotations

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval


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
