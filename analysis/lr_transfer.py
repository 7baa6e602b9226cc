"""Does the optimal LR transfer across width (or depth)? muP transfer drift and LR sensitivity.

- muP transfer drift: the slope of log LR_opt against log width (the change of log2 LR_opt per doubling of
  width: 0 when the LR transfers, -1 for standard parametrisation's 1/width), with an interval from the
  measured loss noise, its verdict ('transfers', 'drifts', 'inconclusive') and what to add to the grid when
  the interval or the grid cannot say more (`fit_transfer`).
- LR sensitivity (Wortsman et al. 2023): E_eta[min(L(eta), L_init) - min_eta L(eta)] over the LR grid;
  diverged runs count as L_init.

How each width's optimum is read (`fit_transfer`): a quadratic in log LR fitted by least squares to the runs
near the lowest mean loss (the best LR and up to two grid neighbours on each side, within a factor
`WINDOW_RATIO` of it; repeated seeds all count), its vertex kept inside the window. A bowl in log LR is a
parabola only near its bottom: the high-LR side steepens towards divergence, so a parabola through LRs 100x
apart puts the vertex where the two sides balance, not at the minimum, and counts the misfit as noise.

The interval is a parametric bootstrap of the bowls: every width's loss at every LR redrawn around the fitted
quadratic (the measured mean away from the window) with the seed-to-seed noise, every optimum refitted
(window included), the slope refitted. The noise is the pooled spread of repeated seeds at one (width, LR)
when the sweep has them, else the residuals of the local fits (which also count the bowl's departure from a
parabola, so the interval errs wide), else (3 LRs per width, no seeds) a quadratic surface over (log LR,
log width). Each bootstrap member redraws the noise level from its chi-square law with the measured degrees
of freedom, so a noise read from few runs widens the interval as a t quantile would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval
from proxyscale.analysis.lr_grid import distinct_count, holds_zero, surface_relative_noise

WINDOW_RATIO = 4.0
"""The local fit keeps grid neighbours of the best LR within this factor of it (at least one on each side
when the grid has one): on a factor-1.41 grid that is the best point and two neighbours each side (16x of
LR in all would reach far up the steep side of the bowl)."""
WINDOW_STEPS = 2
"""Grid neighbours on each side of the best LR in the local fit (5 points when interior)."""
GRID_STEP = 1.5
"""Neighbours of the best LR more than this factor apart leave the optimum to the parabola's shape, not to
the runs: `fit_transfer` names the LRs that fill the gap (and those beyond an optimum at the grid's edge)."""
TARGET_HALF_WIDTH = 0.15
"""A drift interval narrower than +-this per doubling is one a person can act on (issue: muP within
+-0.1, 95% interval +-0.15); wider, `fit_transfer` says how many more seeds would bring it there."""


@dataclass(frozen=True)
class TransferFit:
    """The LR transfer of one setting: LR_opt per width (or depth), the drift of log LR_opt in log width
    with its interval, the loss noise it came from, and what to add to the sweep (empty when nothing)."""

    lr_opt: dict[float, float]
    drift: Interval
    noise: float
    """Standard deviation of one run's loss at a fixed (width, LR), in loss units (NaN: not measured)."""
    noise_source: str
    noise_dof: int
    seeds: int
    """Most runs at one (width, LR) near an optimum (1: no repeated seeds)."""
    advice: tuple[str, ...]

    def as_dict(self) -> dict:
        """JSON-ready: lr_opt, drift {value, low, high}, noise {sigma, source, dof}, seeds, advice."""
        return {"lr_opt": dict(self.lr_opt), "drift": self.drift.as_dict(),
                "noise": {"sigma": self.noise, "source": self.noise_source, "dof": self.noise_dof},
                "seeds": self.seeds, "advice": list(self.advice)}


@dataclass(frozen=True)
class _Bowl:
    """One width's LR grid: distinct log LRs, runs and mean loss per LR, and the runs' losses per LR."""

    x: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    index: np.ndarray  # each run's position in x
    losses: np.ndarray

    @classmethod
    def of(cls, lrs: np.ndarray, losses: np.ndarray) -> _Bowl:
        unique, index = np.unique(lrs, return_inverse=True)
        counts = np.bincount(index).astype(float)
        return cls(np.log(unique), counts, np.bincount(index, weights=losses) / counts, index, losses)


def window_of(x: np.ndarray, best: int) -> np.ndarray:
    """Indices of the local fit around grid point `best`: up to WINDOW_STEPS neighbours on each side within a
    factor WINDOW_RATIO of its LR, and always the nearest neighbour on each side (a coarse grid's parabola)."""
    near = np.abs(x - x[best]) <= math.log(WINDOW_RATIO) + 1e-9
    steps = np.abs(np.arange(len(x)) - best)
    keep = (steps <= WINDOW_STEPS) & near | (steps <= 1)
    return np.flatnonzero(keep)


def _projectors(bowl: _Bowl) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """For each possible best grid point: (window, the (3, L) map from mean losses to the centred quadratic's
    coefficients, weighted by runs per LR, the window's centre). A fit is then one matrix product."""
    out = []
    for best in range(len(bowl.x)):
        window = window_of(bowl.x, best)
        centre = float(np.average(bowl.x[window], weights=bowl.counts[window]))
        projector = np.zeros((3, len(bowl.x)))
        if len(window) >= 3:
            design = np.vander(bowl.x[window] - centre, 3)  # columns: x^2, x, 1
            root = np.sqrt(bowl.counts[window])
            projector[:, window] = np.linalg.pinv(design * root[:, None]) * root[None, :]
        out.append((window, projector, centre))
    return out


def _vertices(bowl: _Bowl, projectors, means: np.ndarray) -> np.ndarray:
    """log LR_opt for each row of mean losses (R, L): the vertex of the local quadratic around the row's lowest
    mean, kept inside its window; the lowest point itself when the window holds no upward parabola."""
    means = np.atleast_2d(means)
    best = np.argmin(means, axis=1)
    out = bowl.x[best].copy()
    for k in np.unique(best):
        rows = np.flatnonzero(best == k)
        window, projector, centre = projectors[k]
        if len(window) < 3:
            continue
        a, b, _ = projector @ means[rows].T
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = centre - b / (2 * a)
        vertex = np.clip(vertex, bowl.x[window[0]], bowl.x[window[-1]])
        out[rows] = np.where(a > 0, vertex, bowl.x[k])
    return out


def _fitted_means(bowl: _Bowl, projectors) -> np.ndarray:
    """The smooth bowl the bootstrap draws around: the local quadratic inside the window, the means outside."""
    best = int(np.argmin(bowl.means))
    window, projector, centre = projectors[best]
    smooth = bowl.means.copy()
    if len(window) >= 3:
        smooth[window] = np.polyval(projector @ bowl.means, bowl.x[window] - centre)
    return smooth


def _noise(bowls: list[_Bowl], projectors, widths: np.ndarray, lrs, losses) -> tuple[float, str, int]:
    """(sigma of one run's loss, where it came from, degrees of freedom). Only runs in the local fits' windows
    count: far from the optimum the loss spread grows (runs near divergence), which is not the noise of an
    optimum."""
    pure, pure_dof, resid, resid_dof = 0.0, 0, 0.0, 0
    for bowl, fits in zip(bowls, projectors, strict=True):
        window, projector, centre = fits[int(np.argmin(bowl.means))]
        in_window = np.isin(bowl.index, window)
        spread = bowl.losses[in_window] - bowl.means[bowl.index[in_window]]
        pure += float((spread**2).sum())
        pure_dof += int(bowl.counts[window].sum() - len(window))
        if len(window) >= 3:
            fitted = np.polyval(projector @ bowl.means, bowl.x - centre)
            resid += float(((bowl.losses[in_window] - fitted[bowl.index[in_window]]) ** 2).sum())
            resid_dof += int(bowl.counts[window].sum() - 3)
    if pure_dof >= 2:
        return math.sqrt(pure / pure_dof), "repeated seeds", pure_dof
    if resid_dof >= 1:
        return math.sqrt(resid / resid_dof), "residuals of the local fits (no repeated seeds)", resid_dof
    relative = surface_relative_noise([lrs], [widths], [losses])
    if np.isfinite(relative):
        dof = len(losses) - 6
        return float(relative * np.mean(losses)), "a quadratic surface over (log LR, log width) (3 LRs per width)", dof
    return float("nan"), "not measurable (too few runs)", 0


def _fmt(values) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def grid_advice(width: float, bowl: _Bowl, *, axis: str = "width") -> list[str]:
    """What to add to one width's LR grid: LRs beyond an optimum at the grid's edge, and LRs that split
    gaps wider than GRID_STEP next to the best LR (geometrically, into steps of at most GRID_STEP)."""
    lr = np.exp(bowl.x)
    best = int(np.argmin(bowl.means))
    messages = []
    if len(lr) >= 2 and best in (0, len(lr) - 1):
        step = min(GRID_STEP, float(lr[1] / lr[0]) if best == 0 else float(lr[-1] / lr[-2]))
        sign = -1 if best == 0 else 1
        beyond = [float(lr[best] * step ** (sign * k)) for k in (1, 2)]
        side = "lowest" if best == 0 else "highest"
        messages.append(f"{axis} {width:g}: the lowest loss is at the grid's {side} LR {lr[best]:.3g}, so LR_opt may lie "
                        f"beyond it: add LRs {_fmt(sorted(beyond))}")
    gaps = []
    for neighbour in (best - 1, best + 1):
        if 0 <= neighbour < len(lr):
            low, high = sorted((float(lr[best]), float(lr[neighbour])))
            ratio = high / low
            if ratio > GRID_STEP * (1 + 1e-6):
                parts = math.ceil(math.log(ratio) / math.log(GRID_STEP) - 1e-9)
                gaps.extend(low * ratio ** (k / parts) for k in range(1, parts))
    if gaps:
        messages.append(f"{axis} {width:g}: the grid is too coarse near LR_opt {np.exp(bowl.x[best]):.3g} (neighbours more "
                        f"than {GRID_STEP:g}x apart): add LRs {_fmt(sorted(gaps))}")
    return messages


def fit_transfer(widths, lrs, losses, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                 axis: str = "width") -> TransferFit:
    """LR_opt per width (or depth: any shape axis), the drift of log LR_opt against log width with its
    parametric-bootstrap interval (module docstring), the noise it used, and advice on the grid and seeds.
    Runs at the same (width, LR) are repeated seeds; NaN losses (diverged runs) carry no optimum."""
    widths, lrs, losses = (np.asarray(v, float) for v in (widths, lrs, losses))
    finite = np.isfinite(losses)
    widths, lrs, losses = widths[finite], lrs[finite], losses[finite]
    unique = np.unique(widths)
    if len(unique) < 2:
        raise ValueError("transfer drift needs runs at two or more widths")
    bowls = [_Bowl.of(lrs[widths == w], losses[widths == w]) for w in unique]
    projectors = [_projectors(b) for b in bowls]
    log_width = np.log(unique)
    centred = (log_width - log_width.mean()) / ((log_width - log_width.mean()) ** 2).sum()

    optimum = np.array([_vertices(b, p, b.means)[0] for b, p in zip(bowls, projectors, strict=True)])
    value = float(centred @ optimum)
    sigma, source, dof = _noise(bowls, projectors, widths, lrs, losses)
    if not np.isfinite(sigma):
        drift = Interval(value, float("nan"), float("nan"))
    else:
        rng = np.random.default_rng(seed)
        # The noise level itself, redrawn per member from sigma^2 * dof / chi2(dof): its uncertainty widens the
        # interval as a t quantile would (a noise read from 8 residuals is not known to 1%).
        scale = sigma * np.sqrt(dof / rng.chisquare(dof, size=bootstrap)) if dof > 0 else np.full(bootstrap, sigma)
        members = np.empty((bootstrap, len(unique)))
        for j, (bowl, fits) in enumerate(zip(bowls, projectors, strict=True)):
            draws = rng.standard_normal((bootstrap, len(bowl.x))) / np.sqrt(bowl.counts)
            members[:, j] = _vertices(bowl, fits, _fitted_means(bowl, fits) + scale[:, None] * draws)
        drift = percentile_interval(value, members @ centred, level)
    seeds = max(int(b.counts[window_of(b.x, int(np.argmin(b.means)))].max()) for b in bowls)
    advice = [m for w, b in zip(unique, bowls, strict=True) for m in grid_advice(float(w), b, axis=axis)]
    half = (drift.high - drift.low) / 2
    if np.isfinite(half) and half > TARGET_HALF_WIDTH:
        more = math.ceil(seeds * (half / TARGET_HALF_WIDTH) ** 2)
        advice.append(f"the drift's interval is +-{half:.2f} per doubling: about {more} seeds per LR near each optimum "
                      f"(now {seeds}) would bring it to +-{TARGET_HALF_WIDTH:g} (it narrows as 1/sqrt(seeds))")
    if seeds == 1:
        advice.append("no repeated seeds: the noise is read from the residuals of the local fits, which also count the "
                      "bowl's departure from a parabola; 2+ seeds per LR near the optimum measure it")
    lr_opt = dict(zip(unique.tolist(), np.exp(optimum).tolist(), strict=True))
    return TransferFit(lr_opt, drift, float(sigma), source, int(dof), seeds, tuple(advice))


def transfer_drift(widths, lrs, losses, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """(per-width optimal LR, slope of log LR_opt against log width with its interval): `fit_transfer`'s
    two main numbers. Noise-free losses give a zero-width interval."""
    fit = fit_transfer(widths, lrs, losses, bootstrap=bootstrap, seed=seed, level=level)
    return fit.lr_opt, fit.drift


TRANSFER_TOLERANCE = 0.25
"""A drift interval inside +-this is transfer: over a 16x range of width (or depth) the LR_opt moves by less
than 2x, within a grid step of the usual factor-2 LR grids. An interval that holds 0 but reaches past it
is inconclusive: the sweep neither shows a drift nor rules one out."""


def drift_verdict(drift: Interval) -> str:
    """'transfers' (the interval inside +-TRANSFER_TOLERANCE, even when it excludes 0: a drift that small is
    transfer in practice), 'drifts' (the interval excludes 0 and reaches past the tolerance) or
    'inconclusive' (it holds 0 but reaches past the tolerance, or could not be measured)."""
    if -TRANSFER_TOLERANCE <= drift.low and drift.high <= TRANSFER_TOLERANCE:
        return "transfers"
    if math.isnan(drift.low) or holds_zero(drift):
        return "inconclusive"
    return "drifts"


def transfer_of_sweep(width, tokens, batch, lr, loss, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                      axis: str = "width") -> TransferFit | None:
    """`fit_transfer` on the (D, B) setting where the most widths have 3+ LRs (None with fewer than 2): pooling
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
    return fit_transfer(width[at], lr[at], loss[at], bootstrap=bootstrap, seed=seed, level=level, axis=axis)


def drift_of_sweep(width, tokens, batch, lr, loss, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """(per-width LR_opt, drift interval) of `transfer_of_sweep`, or None when fewer than 2 widths have 3+ LRs."""
    fit = transfer_of_sweep(width, tokens, batch, lr, loss, bootstrap=bootstrap, seed=seed, level=level)
    return None if fit is None else (fit.lr_opt, fit.drift)


def lr_sensitivity_of_runs(lrs, losses, initial_loss: float) -> float:
    """`lr_sensitivity` over a grid whose LRs may repeat (seeds): each LR's capped losses (a diverged run counts
    as L_init) averaged first, so the minimum is not the luckiest seed's."""
    lrs = np.asarray(lrs, float)
    losses = np.asarray(losses, float)
    capped = np.where(np.isfinite(losses), np.minimum(losses, initial_loss), initial_loss)
    unique, index = np.unique(lrs, return_inverse=True)
    return lr_sensitivity(np.bincount(index, weights=capped) / np.bincount(index), initial_loss)


def lr_sensitivity(losses, initial_loss: float) -> float:
    """Wortsman et al.'s LR sensitivity over an LR grid: mean of min(L, L_init) - min L (NaN = diverged = L_init)."""
    losses = np.asarray(losses, float)
    capped = np.where(np.isfinite(losses), np.minimum(losses, initial_loss), initial_loss)
    return float(np.mean(capped - capped.min()))
