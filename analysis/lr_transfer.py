"""Does the optimal LR transfer across width (or depth)? muP transfer drift and LR sensitivity.

- muP transfer drift: the slope of log LR_opt against log width (near 0 when the LR transfers), with a
  parametric-bootstrap interval, and its verdict ('transfers', 'drifts', 'inconclusive').
- LR sensitivity (Wortsman et al. 2023): E_eta[min(L(eta), L_init) - min_eta L(eta)] over the LR grid;
  diverged runs count as L_init.
"""

from __future__ import annotations

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval
from proxyscale.analysis.lr_grid import distinct_count, holds_zero, optimal_lr, relative_noise


def transfer_drift(widths, lrs, losses, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """(per-width optimal LR, slope of log LR_opt against log width with its interval); "width" may be any
    shape axis (depth for `transfer --axis depth`).

    The interval is a parametric bootstrap: every loss perturbed by the relative noise of the loss-vs-LR
    parabolas (`pooled_relative_noise` over the widths; `surface_relative_noise` over (LR, width) when each
    width has only 3 LRs), every width's optimum recomputed. Resampling the runs of a width instead drops
    grid points next to the optimum and moves the vertex by whole grid steps, which gives stepped
    intervals whose ends sit on exact grid ratios; that is the fallback only when the noise cannot be
    measured (3 LRs at 2 widths). Noise-free losses give a zero-width interval.
    """
    widths, lrs, losses = (np.asarray(v, float) for v in (widths, lrs, losses))
    finite = np.isfinite(losses)  # diverged runs carry no optimum
    widths, lrs, losses = widths[finite], lrs[finite], losses[finite]
    unique = np.unique(widths)
    if len(unique) < 2:
        raise ValueError("transfer drift needs runs at two or more widths")

    def slope(lr_by_width):
        return float(np.polyfit(np.log(unique), np.log(lr_by_width), 1)[0])

    cells = [np.flatnonzero(widths == w) for w in unique]
    optimum = np.array([optimal_lr(lrs[i], losses[i]) for i in cells])
    sigma, _ = relative_noise(lrs, widths, losses, cells, [np.arange(len(losses))], shape_name="width")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        if np.isfinite(sigma):
            noisy = losses * (1 + sigma * rng.standard_normal(len(losses)))
            resampled = [optimal_lr(lrs[i], noisy[i]) for i in cells]
        else:
            picks = [rng.choice(i, size=len(i), replace=True) for i in cells]
            resampled = [optimal_lr(lrs[p], losses[p]) for p in picks]
        samples.append(slope(np.array(resampled)))
    per_width = dict(zip(unique.tolist(), optimum.tolist(), strict=True))
    return per_width, percentile_interval(slope(optimum), samples, level)


TRANSFER_TOLERANCE = 0.25
"""A drift interval inside +-this is transfer: over a 16x range of width (or depth) the LR_opt moves by less
than 2x, within a grid step of the usual factor-2 LR grids. An interval that holds 0 but reaches past it
is inconclusive: the sweep neither shows a drift nor rules one out."""


def drift_verdict(drift: Interval) -> str:
    """'transfers' (the interval inside +-TRANSFER_TOLERANCE, even when it excludes 0: a drift that small is
    transfer in practice), 'drifts' (the interval excludes 0 and reaches past the tolerance) or
    'inconclusive' (it holds 0 but reaches past the tolerance)."""
    if -TRANSFER_TOLERANCE <= drift.low and drift.high <= TRANSFER_TOLERANCE:
        return "transfers"
    return "inconclusive" if holds_zero(drift) else "drifts"


def drift_of_sweep(width, tokens, batch, lr, loss, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """transfer_drift on the (D, B) setting where the most widths have 3+ LRs (None with fewer than 2): pooling
    budgets or batch sizes would average losses of different runs at one LR and count their gaps as noise."""
    width, tokens, batch, lr, loss = (np.asarray(v, float) for v in (width, tokens, batch, lr, loss))
    finite = np.isfinite(loss)
    best = None
    for d, b in sorted({(x, y) for x, y in zip(tokens[finite], batch[finite], strict=True)}):
        at = finite & (tokens == d) & (batch == b)
        widths = [w for w in np.unique(width[at]) if distinct_count(lr[at & (width == w)]) >= 3]
        if len(widths) >= 2 and (best is None or (len(widths), d) > (best[0], best[1])):
            best = (len(widths), d, b, widths)
    if best is None:
        return None
    _, d, b, widths = best
    at = finite & (tokens == d) & (batch == b) & np.isin(width, widths)
    return transfer_drift(width[at], lr[at], loss[at], bootstrap=bootstrap, seed=seed, level=level)


def lr_sensitivity(losses, initial_loss: float) -> float:
    """Wortsman et al.'s LR sensitivity over an LR grid: mean of min(L, L_init) - min L (NaN = diverged = L_init)."""
    losses = np.asarray(losses, float)
    capped = np.where(np.isfinite(losses), np.minimum(losses, initial_loss), initial_loss)
    return float(np.mean(capped - capped.min()))
