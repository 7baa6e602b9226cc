"""Reading a grid of learning rates: the shared pieces of the LR laws.

- The optimal LR of one grid: the vertex of a parabola of loss in log LR through the best point and its
  neighbours (the grid's argmin when the vertex is not bracketed).
- The relative noise of a loss around that optimum (parabolas per cell, or a quadratic surface over
  (log LR, log shape) when each cell has only 3 LRs): the noise of the parametric bootstraps in
  analysis/lr_transfer.py and analysis/lr_batch_law.py.
- Whether a fitted slope's interval holds 0.
"""

from __future__ import annotations

import numpy as np

from proxyscale.analysis.fit import Interval

ZERO_SLOPE = 1e-9
"""A fitted slope this close to 0 is 0 (a least-squares slope through equal values is not exactly 0.0)."""


def holds_zero(interval: Interval) -> bool:
    """Whether a slope's interval holds 0, up to rounding (an end at 3.6e-16, from a resample that gives
    every width the same LR_opt, holds it: a percentile of slopes that are exactly zero is not a drift)."""
    return interval.low <= ZERO_SLOPE and interval.high >= -ZERO_SLOPE


def distinct_count(values) -> int:
    """How many distinct values (a knob varied over 3+ values can locate an optimum)."""
    return len(np.unique(np.asarray(values, float)))


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


def optimal_lr_rows(lrs, losses) -> np.ndarray:
    """`optimal_lr` of one LR grid for each row of finite losses (R, len(lrs)) at once (a bootstrap's members):
    the same parabola through each row's best point and its neighbours, without a Python loop over rows."""
    lrs, losses = np.asarray(lrs, float), np.atleast_2d(np.asarray(losses, float))
    unique, index = np.unique(lrs, return_inverse=True)
    x = np.log(unique)
    average = np.zeros((len(lrs), len(unique)))
    average[np.arange(len(lrs)), index] = 1.0
    loss = losses @ (average / average.sum(axis=0))  # the mean of repeats of an LR
    best = np.argmin(loss, axis=1)
    out = x[best]
    inner = (best > 0) & (best < len(unique) - 1)
    if inner.any():
        rows = np.flatnonzero(inner)
        at = best[rows]
        x0, x1, x2 = x[at - 1], x[at], x[at + 1]
        y0, y1, y2 = loss[rows, at - 1], loss[rows, at], loss[rows, at + 1]
        denominator = (x0 - x1) * (x0 - x2) * (x1 - x2)
        curvature = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denominator
        slope = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denominator
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = -slope / (2 * curvature)
        inside = (curvature > 0) & (x0 <= vertex) & (vertex <= x2)
        out[rows[inside]] = vertex[inside]
    return np.exp(out)


def pooled_relative_noise(lrs_per_cell, losses_per_cell, window: int = 5) -> float:
    """The relative noise of a loss, pooled over cells (e.g. one batch size of one (N, D) group): the RMS
    relative residual of a parabola in log LR through each cell's `window` points nearest its best, over
    the pooled degrees of freedom (cells with 3 points add none). 0 when no cell has a spare point.

    The LR-vs-batch intervals come from a parametric bootstrap with this noise: resampling the runs of a
    cell would drop grid points next to the optimum and move the vertex by whole grid steps."""
    squares, dof = 0.0, 0
    for lrs, losses in zip(lrs_per_cell, losses_per_cell, strict=True):
        lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
        finite = np.isfinite(losses)
        order = np.argsort(lrs[finite])
        x, y = np.log(lrs[finite][order]), losses[finite][order]
        if len(np.unique(x)) < 4:
            continue
        best = int(np.argmin(y))
        start = int(np.clip(best - window // 2, 0, max(0, len(x) - window)))
        x, y = x[start:start + window], y[start:start + window]
        if len(np.unique(x)) < 3 or len(x) < 4:  # repeats of one LR can leave the window without a parabola
            continue
        x = x - x.mean()  # centred: polyfit is well conditioned
        fitted = np.polyval(np.polyfit(x, y, 2), x)
        squares += float((((y - fitted) / y) ** 2).sum())
        dof += len(x) - 3
    return float(np.sqrt(squares / dof)) if dof else 0.0


def relative_noise(lr: np.ndarray, shape: np.ndarray, loss: np.ndarray, cells: list[np.ndarray],
                   groups: list[np.ndarray], *, shape_name: str) -> tuple[float, str]:
    """(relative loss noise, where it came from) for a parametric bootstrap over LR grids: from parabolas in log
    LR per cell (index arrays of runs sharing everything but the LR), else, when no cell has a spare point (3
    LRs each), from a quadratic surface over (log LR, log shape) per group of cells; NaN when neither has."""
    sigma = pooled_relative_noise([lr[i] for i in cells], [loss[i] for i in cells])
    if sigma > 0.0:
        return sigma, f"parabolas per {shape_name}"
    return (surface_relative_noise([lr[i] for i in groups], [shape[i] for i in groups], [loss[i] for i in groups]),
            f"quadratic surface over (LR, {shape_name})")


def surface_relative_noise(lrs_per_group, batches_per_group, losses_per_group) -> float:
    """The relative noise of a loss from a quadratic surface in (log LR, log B) per (N, D) group (Step Law's
    convex landscape), pooled over the groups with spare points; NaN when none has any.

    The fallback of `pooled_relative_noise` for grids of 3 LRs per batch size, where a parabola per cell
    passes through every point and leaves no residual. A surface that is not quite quadratic adds its
    misfit to the noise, so the intervals err wide."""
    squares, dof = 0.0, 0
    for lrs, batches, losses in zip(lrs_per_group, batches_per_group, losses_per_group, strict=True):
        lrs, batches, losses = (np.asarray(v, float) for v in (lrs, batches, losses))
        finite = np.isfinite(losses)
        x, y, z = np.log(lrs[finite]), np.log(batches[finite]), losses[finite]
        design = np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])
        if len(z) <= design.shape[1] or np.linalg.matrix_rank(design) < design.shape[1]:
            continue
        fitted = design @ np.linalg.lstsq(design, z, rcond=None)[0]
        squares += float((((z - fitted) / z) ** 2).sum())
        dof += len(z) - design.shape[1]
    return float(np.sqrt(squares / dof)) if dof else float("nan")
