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

from dataclasses import dataclass, field

import numpy as np

from analysis.fit import Interval, percentile_interval

NEAR_OPTIMAL_TOLERANCE = 0.0025
ZERO_SLOPE = 1e-9
"""A fitted slope this close to 0 is 0 (a least-squares slope through equal values is not exactly 0.0)."""


def holds_zero(interval: Interval) -> bool:
    """Whether a slope's interval holds 0, up to rounding (an end at 3.6e-16, from a resample that gives
    every width the same LR_opt, holds it: a percentile of slopes that are exactly zero is not a drift)."""
    return interval.low <= ZERO_SLOPE and interval.high >= -ZERO_SLOPE


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


# ------------------------------------------------------------------------------------------------
# A law for every knob (issue 14): the LR and batch size (Step Law), whether the optimal LR moves with
# the batch size, the depth (aspect ratio at equal N) and the schedule (the curve law at the target).
# Every function is pure (arrays in, dataclasses out). A knob the runs do not support gets no law and
# a reason; a law whose exponent ends at its bound says so.

EXPONENT_BOUND = 3.0
"""|exponent| of the knob laws' power laws; a fit that ends there reports it (`PowerLaw.at_bound`)."""


def _distinct(values) -> int:
    return len(np.unique(np.asarray(values, float)))


def _parabola_optimum(values, losses) -> tuple[float, bool]:
    """(x at the minimum of loss over log x, bracketed): the vertex of a parabola through the best point
    and its grid neighbours when the best is inside the grid, else the grid's argmin (not bracketed).
    Repeats of a value are averaged."""
    values, losses = np.asarray(values, float), np.asarray(losses, float)
    finite = np.isfinite(losses)
    unique, index = np.unique(values[finite], return_inverse=True)
    loss = np.bincount(index, weights=losses[finite]) / np.bincount(index)
    best = int(np.argmin(loss))
    if not 0 < best < len(loss) - 1:
        return float(unique[best]), False
    return optimal_lr(unique, loss), True


@dataclass(frozen=True)
class PowerLaw:
    """y = c * prod_k x_k^e_k fitted by least squares in log space (exponents bounded by +-bound), with
    bootstrap members (rows of `members`: log c, then the exponents in the order of `features`)."""

    target: str
    features: tuple[str, ...]
    theta: np.ndarray
    members: np.ndarray
    n_rows: int
    bound: float = EXPONENT_BOUND
    level: float = 0.95

    @property
    def coefficient(self) -> Interval:
        c = percentile_interval(self.theta[0], self.members[:, 0], self.level)
        return Interval(float(np.exp(c.value)), float(np.exp(c.low)), float(np.exp(c.high)))

    @property
    def exponents(self) -> dict[str, Interval]:
        return {name: percentile_interval(self.theta[k + 1], self.members[:, k + 1], self.level)
                for k, name in enumerate(self.features)}

    @property
    def at_bound(self) -> tuple[str, ...]:
        """Features whose fitted exponent ended at +-bound: the data ask for more than the law allows."""
        return tuple(name for k, name in enumerate(self.features)
                     if abs(abs(self.theta[k + 1]) - self.bound) < 1e-6 * self.bound)

    def predict(self, **features: float) -> Interval:
        """The law at these feature values, with the bootstrap members' percentile interval."""
        x = np.array([1.0] + [np.log(float(features[name])) for name in self.features])
        return percentile_interval(float(np.exp(self.theta @ x)), np.exp(self.members @ x), self.level)

    def formula(self, fmt: str = ".3g") -> str:
        c = self.coefficient
        text = f"{self.target} = {c.value:{fmt}} [{c.low:{fmt}}, {c.high:{fmt}}]"
        for name, e in self.exponents.items():
            text += f" {name}^{e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"
        if self.at_bound:
            text += f" (exponent of {', '.join(self.at_bound)} AT ITS BOUND +-{self.bound:g}: not a measured value)"
        return text

    def as_dict(self) -> dict:
        return {"target": self.target, "coefficient": self.coefficient.as_dict(),
                "exponents": {k: v.as_dict() for k, v in self.exponents.items()}, "rows": self.n_rows,
                "at_bound": list(self.at_bound), "formula": self.formula()}


def fit_power_law(features: dict[str, np.ndarray], target, *, name: str = "y", bootstrap: int = 1000, seed: int = 0,
                  level: float = 0.95, bound: float = EXPONENT_BOUND) -> PowerLaw:
    """log y = log c + sum_k e_k log x_k by least squares with |e_k| <= bound (scipy's lsq_linear), and a
    bootstrap over rows (resamples that cannot identify every exponent are skipped)."""
    from scipy.optimize import lsq_linear

    names = tuple(features)
    y = np.log(np.asarray(target, float))
    design = np.column_stack([np.ones(len(y))] + [np.log(np.asarray(features[k], float)) for k in names])
    lower = np.array([-np.inf] + [-bound] * len(names))
    upper = np.array([np.inf] + [bound] * len(names))

    def solve(rows) -> np.ndarray:
        return lsq_linear(design[rows], y[rows], bounds=(lower, upper)).x

    point = solve(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    members = []
    for _ in range(bootstrap):
        rows = rng.integers(0, len(y), len(y))
        if np.linalg.matrix_rank(design[rows]) == design.shape[1]:
            members.append(solve(rows))
    members = np.array(members).reshape(-1, design.shape[1])
    return PowerLaw(target=name, features=names, theta=point, members=members, n_rows=len(y), bound=bound, level=level)


@dataclass(frozen=True)
class GroupOptimum:
    """The optimum of one (N, D) group of runs (Step Law: the runs within 0.25% of the group's best loss)."""

    n_params: float
    tokens: float
    lr: float
    """Geometric mean LR of the near-optimal runs; with one near-optimal run, the vertex of a parabola in
    log LR through it and its LR neighbours at its batch size (the grid point when not bracketed)."""
    batch: float
    """Likewise for the batch size, over the loss at each batch size's best LR."""
    loss: float
    lr_values: int
    """Distinct LRs tried at the best run's batch size."""
    batch_values: int
    lr_bracketed: bool
    batch_bracketed: bool
    near_optimal: int


def group_optima(n_params, tokens, lr, batch, loss, *, tolerance: float = NEAR_OPTIMAL_TOLERANCE) -> list[GroupOptimum]:
    """One GroupOptimum per (N, D) with a finite loss, in the order of N then D."""
    n_params, tokens, lr, batch, loss = (np.asarray(v, float) for v in (n_params, tokens, lr, batch, loss))
    finite = np.isfinite(loss)
    out = []
    for n, d in sorted({(a, b) for a, b in zip(n_params[finite], tokens[finite], strict=True)}):
        members = finite & (n_params == n) & (tokens == d)
        g_lr, g_batch, g_loss = lr[members], batch[members], loss[members]
        best = int(np.argmin(g_loss))
        near = g_loss <= g_loss[best] * (1 + tolerance)
        at_best_batch = g_batch == g_batch[best]
        lr_values = _distinct(g_lr[at_best_batch])
        batches = np.unique(g_batch)
        profile = np.array([g_loss[g_batch == b].min() for b in batches])
        lr_grid = np.unique(g_lr[at_best_batch])
        lr_bracketed = bool(lr_grid[0] < g_lr[best] < lr_grid[-1])
        batch_bracketed = bool(batches[0] < g_batch[best] < batches[-1])
        if _distinct(g_lr[near]) >= 2:
            lr_opt = float(np.exp(np.mean(np.log(g_lr[near]))))
        else:
            lr_opt, _ = _parabola_optimum(g_lr[at_best_batch], g_loss[at_best_batch])
        if _distinct(g_batch[near]) >= 2:
            batch_opt = float(np.exp(np.mean(np.log(g_batch[near]))))
        else:
            batch_opt, _ = _parabola_optimum(batches, profile)
        out.append(GroupOptimum(float(n), float(d), lr_opt, batch_opt, float(g_loss[best]), lr_values, len(batches),
                                lr_bracketed, batch_bracketed, int(near.sum())))
    return out


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


@dataclass(frozen=True)
class LrBatchTrend:
    """The optimal LR per batch size (geometric mean over the (N, D) groups that tried every batch size
    with 3+ LRs each), with bootstrap intervals, and what it does as the batch grows."""

    batches: tuple[float, ...]
    lr_opt: tuple[Interval, ...]
    slope: Interval
    """d log LR_opt / d log B over the batch sizes."""
    verdict: str
    """'rises', 'falls', 'flat' or 'rises then falls (surge near B=...)'."""
    surge: float | None
    groups: int
    noise: float = float("nan")
    """The relative loss noise of the parametric bootstrap..."""
    noise_source: str = ""
    """...and where it came from: 'parabolas per B' or 'quadratic surface over (LR, B)'."""

    def as_dict(self) -> dict:
        return {"batches": list(self.batches), "lr_opt": [i.as_dict() for i in self.lr_opt],
                "slope": self.slope.as_dict(), "verdict": self.verdict, "surge": self.surge, "groups": self.groups,
                "noise": self.noise, "noise_source": self.noise_source}


def lr_batch_trend(group, batch, lr, loss, *, bootstrap: int = 1000, seed: int = 0,
                   level: float = 0.95) -> LrBatchTrend | None:
    """Whether the optimal LR moves with the batch size; None unless 2+ batch sizes each have 3+ LRs in a
    group (the groups used are those that have every such batch size). Intervals: a parametric bootstrap
    of the losses with their pooled relative noise (`pooled_relative_noise`, or `surface_relative_noise`
    when every cell has exactly 3 LRs; None when neither leaves a residual to measure the noise by).

    rises then falls: the largest LR_opt is at an inner batch size and, in 'level' of the bootstrap, above
    both ends (the surge of Adam's LR, papers §5); else the sign of the slope's interval (flat if it holds 0).
    """
    group = np.asarray(group, object).astype(str)
    batch, lr, loss = (np.asarray(v, float) for v in (batch, lr, loss))
    finite = np.isfinite(loss)
    cells: dict[str, dict[float, np.ndarray]] = {}
    for g in np.unique(group):
        for b in np.unique(batch[group == g]):
            index = np.flatnonzero(finite & (group == g) & (batch == b))
            if _distinct(lr[index]) >= 3:
                cells.setdefault(g, {})[float(b)] = index
    if not cells:
        return None
    # The largest set of batch sizes some group tried (3+ LRs each), the one most groups share; then every
    # group that has all of them.
    sets = [frozenset(per_batch) for per_batch in cells.values()]
    chosen = max(sets, key=lambda batch_set: (len(batch_set), sum(batch_set <= other for other in sets)))
    batches = sorted(chosen)
    groups = [g for g, per_batch in cells.items() if chosen <= frozenset(per_batch)]
    if len(batches) < 2:
        return None

    sigma, noise_source = relative_noise(lr, batch, loss, [cells[g][b] for g in groups for b in batches],
                                         [np.concatenate([cells[g][b] for b in batches]) for g in groups],
                                         shape_name="B")
    if not np.isfinite(sigma):
        return None
    rng = np.random.default_rng(seed)

    def table(perturb: bool) -> np.ndarray:
        out = []
        for b in batches:
            logs = []
            for g in groups:
                index = cells[g][b]
                losses = loss[index] * (1 + sigma * rng.standard_normal(len(index))) if perturb else loss[index]
                logs.append(np.log(optimal_lr(lr[index], losses)))
            out.append(np.mean(logs))
        return np.array(out)

    point = table(False)
    members = np.array([table(True) for _ in range(bootstrap)])
    log_b = np.log(batches)
    slope_point = float(np.polyfit(log_b, point, 1)[0])
    slopes = np.array([np.polyfit(log_b, m, 1)[0] for m in members])
    slope = percentile_interval(slope_point, slopes, level)
    tail = (1 - level) / 2 * 100
    peak = int(np.argmax(point))
    surge = None
    if 0 < peak < len(batches) - 1:
        rise = np.percentile(members[:, peak] - members[:, 0], tail)
        fall = np.percentile(members[:, peak] - members[:, -1], tail)
        if rise > 0 and fall > 0:
            curvature, linear, _ = np.polyfit(log_b[peak - 1: peak + 2], point[peak - 1: peak + 2], 2)
            vertex = -linear / (2 * curvature) if curvature < 0 else log_b[peak]
            surge = float(np.exp(np.clip(vertex, log_b[peak - 1], log_b[peak + 1])))
    if surge is not None:
        verdict = f"rises then falls (surge near B={surge:.4g})"
    elif slope.low > 0:
        verdict = "rises"
    elif slope.high < 0:
        verdict = "falls"
    else:
        verdict = "flat"
    lr_opt = tuple(Interval(float(np.exp(point[k])), *np.exp(np.percentile(members[:, k], [tail, 100 - tail])))
                   for k in range(len(batches)))
    return LrBatchTrend(tuple(batches), tuple(Interval(*map(float, (i.value, i.low, i.high))) for i in lr_opt),
                        slope, verdict, surge, len(groups), float(sigma), noise_source)


@dataclass(frozen=True)
class LrBatchEvidence:
    """What a sweep says about the LR and the batch size: Step Law's eta_opt(N, D) and B_opt(D) where the
    runs support them, the LR-vs-batch trend, and the muP drift; each missing law with its reason."""

    optima: tuple[GroupOptimum, ...]
    lr_law: PowerLaw | None
    lr_reason: str
    lr_transfer: bool
    """True when the LR law leaves N out because the LR transfers in width (muP) and the drift allows it."""
    drift: tuple[dict, Interval] | None
    batch_law: PowerLaw | None
    batch_reason: str
    trend: LrBatchTrend | None

    def as_dict(self) -> dict:
        return {
            "groups": [vars(g) for g in self.optima],
            "lr_law": self.lr_law.as_dict() if self.lr_law else None, "lr_reason": self.lr_reason,
            "lr_transfer": self.lr_transfer,
            "drift": None if self.drift is None else {"per_width": {str(k): v for k, v in self.drift[0].items()},
                                                      "slope": self.drift[1].as_dict()},
            "batch_law": self.batch_law.as_dict() if self.batch_law else None, "batch_reason": self.batch_reason,
            "lr_vs_batch": self.trend.as_dict() if self.trend else None,
        }


def drift_of_sweep(width, tokens, batch, lr, loss, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """transfer_drift on the (D, B) setting where the most widths have 3+ LRs (None with fewer than 2): pooling
    budgets or batch sizes would average losses of different runs at one LR and count their gaps as noise."""
    width, tokens, batch, lr, loss = (np.asarray(v, float) for v in (width, tokens, batch, lr, loss))
    finite = np.isfinite(loss)
    best = None
    for d, b in sorted({(x, y) for x, y in zip(tokens[finite], batch[finite], strict=True)}):
        at = finite & (tokens == d) & (batch == b)
        widths = [w for w in np.unique(width[at]) if _distinct(lr[at & (width == w)]) >= 3]
        if len(widths) >= 2 and (best is None or (len(widths), d) > (best[0], best[1])):
            best = (len(widths), d, b, widths)
    if best is None:
        return None
    _, d, b, widths = best
    at = finite & (tokens == d) & (batch == b) & np.isin(width, widths)
    return transfer_drift(width[at], lr[at], loss[at], bootstrap=bootstrap, seed=seed, level=level)


def lr_batch_evidence(n_params, tokens, width, lr, batch, loss, *, transfer: bool, bootstrap: int = 1000,
                      seed: int = 0, level: float = 0.95, tolerance: float = NEAR_OPTIMAL_TOLERANCE) -> LrBatchEvidence:
    """Step Law's laws from a sweep (one row per (N, D) group whose optimum is bracketed):
    eta_opt = c N^a D^b (N left out under muP transfer, `transfer=True`, unless the sweep's drift of
    LR_opt in width excludes 0) and B_opt = k D^g. A law needs 2+ values of each of its variables and
    one group more than it has parameters; groups whose optimum lies at the grid's edge are left out
    (their optimum is only a bound)."""
    n_params, tokens, width, lr, batch, loss = (np.asarray(v, float) for v in (n_params, tokens, width, lr, batch, loss))
    optima = group_optima(n_params, tokens, lr, batch, loss, tolerance=tolerance)
    drift = (drift_of_sweep(width, tokens, batch, lr, loss, bootstrap=bootstrap, seed=seed, level=level)
             if transfer else None)
    # ---- the LR law
    tried = [g for g in optima if g.lr_values >= 3]
    usable = [g for g in tried if g.lr_bracketed]
    lr_law, lr_transfer = None, False
    if _distinct(lr[np.isfinite(loss)]) < 2:
        lr_reason = "the LR was not varied"
    elif not tried:
        lr_reason = "no (N, D) group tried 3+ LRs at one batch size, so no optimum is located"
    elif not usable:
        lr_reason = (f"the optimal LR is at the edge of the LR grid in all {len(tried)} groups with 3+ LRs "
                     "(only a bound): widen the LR grid")
    else:
        drift_allows = drift is None or holds_zero(drift[1])
        lr_transfer = transfer and drift_allows
        features = {}
        if _distinct([g.tokens for g in usable]) >= 2:
            features["D"] = [g.tokens for g in usable]
        if not lr_transfer and _distinct([g.n_params for g in usable]) >= 2:
            features["N"] = [g.n_params for g in usable]
        features = {k: features[k] for k in ("N", "D") if k in features}
        edge = len(tried) - len(usable)
        edge_note = f"; {edge} group(s) with the optimum at the grid's edge left out" if edge else ""
        if not features:
            lr_reason = (f"LR optima located in {len(usable)} group(s) at one D" + (" and one N" if not lr_transfer else "")
                         + f": no law in D{edge_note}")
        elif len(usable) < len(features) + 2:
            lr_reason = (f"{len(usable)} group(s) with a located LR optimum: too few for a law in "
                         f"{' and '.join(features)} ({len(features) + 2} needed){edge_note}")
        else:
            lr_law = fit_power_law({k: np.array(v) for k, v in features.items()}, [g.lr for g in usable], name="eta_opt",
                                   bootstrap=bootstrap, seed=seed, level=level)
            lr_reason = f"Step Law fit on {len(usable)} (N, D) groups{edge_note}"
    # ---- the batch law
    tried_b = [g for g in optima if g.batch_values >= 3]
    usable_b = [g for g in tried_b if g.batch_bracketed]
    batch_law = None
    batch_values = _distinct(batch[np.isfinite(loss)])
    if batch_values < 2:
        batch_reason = "the batch size was not varied"
    elif not tried_b:
        batch_reason = (f"{batch_values} batch sizes, but no (N, D) group tried 3+ of them, so no optimum is located")
    elif not usable_b:
        batch_reason = (f"the best batch size is at the edge of the batch grid in all {len(tried_b)} groups with 3+ "
                        "batch sizes (only a bound): widen the batch grid")
    elif _distinct([g.tokens for g in usable_b]) < 2 or len(usable_b) < 3:
        batch_reason = (f"batch optima located in {len(usable_b)} group(s) at {_distinct([g.tokens for g in usable_b])} "
                        "token budget(s): a law in D needs 3+ groups over 2+ budgets")
    else:
        batch_law = fit_power_law({"D": np.array([g.tokens for g in usable_b])}, [g.batch for g in usable_b],
                                  name="B_opt", bootstrap=bootstrap, seed=seed, level=level)
        edge = len(tried_b) - len(usable_b)
        batch_reason = (f"Step Law fit on {len(usable_b)} (N, D) groups"
                        + (f"; {edge} group(s) with the optimum at the grid's edge left out" if edge else ""))
    labels = [f"{a:g}/{b:g}" for a, b in zip(n_params, tokens, strict=True)]
    trend = lr_batch_trend(labels, batch, lr, loss, bootstrap=bootstrap, seed=seed, level=level)
    return LrBatchEvidence(tuple(optima), lr_law, lr_reason, lr_transfer, drift, batch_law, batch_reason, trend)


@dataclass(frozen=True)
class DepthLaw:
    """log L = c_group + k (u - u*)^2 with u = ln(width / depth), over groups of runs at (about) equal N and
    equal D; u* = ln of the optimal aspect ratio, with bootstrap intervals."""

    aspect: Interval
    """exp(u*): the optimal width / depth."""
    curvature: Interval
    """k: the log-loss cost of a factor e away from the optimal aspect ratio, squared."""
    bracketed: bool
    """u* lies inside the aspect ratios tried (else the optimum is only a bound: the edge of the grid)."""
    depths: tuple[int, ...]
    groups: int
    aspect_range: tuple[float, float]
    points: tuple[dict, ...]
    """One per (group, depth): n_params, tokens, width, depth, aspect, loss (the best of that shape), group,
    log_loss (moved to the group's N) and relative (log_loss minus the fitted group term: the law's k (u - u*)^2
    plus the residual)."""
    members: np.ndarray = field(default_factory=lambda: np.empty((0, 2)), repr=False)
    """Bootstrap members' (u*, k)."""

    def loss_factor(self, aspect: float) -> float:
        """The law's loss at this aspect ratio relative to the optimum's."""
        k = self.curvature.value
        return float(np.exp(k * np.log(aspect / self.aspect.value) ** 2))

    def as_dict(self) -> dict:
        return {"aspect": self.aspect.as_dict(), "curvature": self.curvature.as_dict(), "bracketed": self.bracketed,
                "depths": list(self.depths), "groups": self.groups, "aspect_range": list(self.aspect_range),
                "points": list(self.points)}


def _equal_n_groups(n_params: np.ndarray, tokens: np.ndarray, tolerance: float) -> np.ndarray:
    """Group label per run: same D, and N within a factor (1 + tolerance) of the group's smallest N."""
    labels = np.empty(len(n_params), dtype=object)
    for d in np.unique(tokens):
        at = np.flatnonzero(tokens == d)
        start, label = None, 0
        for i in at[np.argsort(n_params[at], kind="stable")]:
            if start is None or n_params[i] > start * (1 + tolerance):
                start, label = n_params[i], label + 1
            labels[i] = f"{d:g}/{label}"
    return labels


def fit_depth_law(n_params, tokens, width, depth, loss, *, size_law=None, n_tolerance: float = 0.25,
                  bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[DepthLaw | None, str]:
    """The optimal aspect ratio width / depth from the loss at equal N (within n_tolerance) and equal D.

    size_law(n, d) -> log loss (e.g. a fitted L(N, D)): equal-N shapes differ by a few % in N, so each
    run's log loss is moved to its group's geometric-mean N by the law's difference (none when None).
    Each (group, depth) keeps its best loss (over LR etc.). Returns (law, why) or (None, why not): a law
    needs 3+ depths, groups with 2+ depths each, and one point more than its parameters.
    """
    n_params, tokens, width, depth, loss = (np.asarray(v, float) for v in (n_params, tokens, width, depth, loss))
    finite = np.isfinite(loss)
    depths_all = np.unique(depth[finite])
    if len(depths_all) < 2:
        return None, f"every run has depth {int(depths_all[0]) if len(depths_all) else '-'}"
    labels = _equal_n_groups(n_params, tokens, n_tolerance)
    correction = np.zeros(len(loss))
    if size_law is not None:
        for g in np.unique(labels[finite]):
            at = np.flatnonzero(finite & (labels == g))
            reference = float(np.exp(np.mean(np.log(n_params[at]))))
            correction[at] = [size_law(reference, tokens[i]) - size_law(n_params[i], tokens[i]) for i in at]
    points = []
    for g in np.unique(labels[finite]):
        at = finite & (labels == g)
        if _distinct(depth[at]) < 2:
            continue
        for dep in np.unique(depth[at]):
            index = np.flatnonzero(at & (depth == dep))
            best = index[np.argmin(loss[index] * np.exp(correction[index]))]
            points.append({"group": str(g), "n_params": float(n_params[best]), "tokens": float(tokens[best]),
                           "width": int(width[best]), "depth": int(dep), "aspect": float(width[best] / dep),
                           "loss": float(loss[best]), "log_loss": float(np.log(loss[best]) + correction[best])})
    depths = sorted({p["depth"] for p in points})
    if len(depths) < 3:
        return None, (f"{len(depths_all)} depths in all, {len(depths)} at equal N and D: a law in the aspect ratio "
                      "needs 3+ depths at equal N (sweeps/depth.yaml)")
    groups = sorted({p["group"] for p in points})
    g_index = np.array([groups.index(p["group"]) for p in points])
    u = np.log([p["aspect"] for p in points])
    y = np.array([p["log_loss"] for p in points])
    design = np.column_stack([(g_index == k).astype(float) for k in range(len(groups))] + [u, u * u])
    if len(y) < design.shape[1] + 1:
        return None, f"{len(y)} (group, depth) points for {design.shape[1]} parameters: add a depth or an N group"

    if np.linalg.matrix_rank(design) < design.shape[1]:
        return None, "the (group, depth) points do not identify a parabola in the aspect ratio"

    def solve(target):
        coef = np.linalg.lstsq(design, target, rcond=None)[0]
        m, k = coef[-2], coef[-1]
        if k > 0:
            return -m / (2 * k), k
        # No interior minimum: the better edge (an infinite aspect ratio one way or the other).
        return (np.inf if m + k * (u.max() + u.min()) < 0 else -np.inf), k

    point = solve(y)
    # Parametric bootstrap: a run per (group, depth) leaves too few points to resample, so the members
    # refit the law's own values plus noise of the residuals' size, that size itself drawn from its
    # chi-square posterior (heavy tails when there are few degrees of freedom).
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    fitted = design @ coef
    for i, p in enumerate(points):
        p["relative"] = float(y[i] - coef[g_index[i]] + (coef[-2] ** 2 / (4 * coef[-1]) if coef[-1] > 0 else 0.0))
    dof = len(y) - design.shape[1]
    rss = float(((y - fitted) ** 2).sum())
    rng = np.random.default_rng(seed)
    members = []
    for _ in range(bootstrap):
        sigma = np.sqrt(rss / rng.chisquare(dof))
        members.append(solve(fitted + sigma * rng.standard_normal(len(y))))
    members = np.array(members).reshape(-1, 2)
    with np.errstate(over="ignore"):
        aspect = percentile_interval(float(np.exp(point[0])), np.exp(members[:, 0]), level)
    curvature = percentile_interval(float(point[1]), members[:, 1], level)
    bracketed = bool(point[1] > 0 and u.min() <= point[0] <= u.max())
    law = DepthLaw(aspect, curvature, bracketed, tuple(depths), len(groups),
                   (float(np.exp(u.min())), float(np.exp(u.max()))), tuple(points), members)
    return law, f"{len(points)} (N, D, depth) points in {len(groups)} equal-N group(s), depths {depths}"


# ------------------------------------------------------------------------------------- schedules


def schedule_shapes() -> dict:
    """The schedules ranked at the target: name -> schedule(T) giving the LR multipliers of T steps."""
    from analysis.curve_law import constant_shape, cosine_shape, wsd_shape

    shapes = {"cosine": cosine_shape(min_lr_ratio=0.1)}
    for fraction in (0.1, 0.2, 0.3):
        shapes[f"wsd (1-sqrt cooldown {fraction:g})"] = wsd_shape(decay_fraction=fraction, sqrt=True)
    shapes["constant then linear cooldown 0.2"] = wsd_shape(decay_fraction=0.2, sqrt=False)
    shapes["constant"] = constant_shape()
    return shapes


@dataclass(frozen=True)
class ScheduleRanking:
    """Final loss of each schedule at (N, D) by the curve law, and its difference to cosine, with intervals."""

    n_params: float
    tokens: float
    losses: dict[str, Interval]
    vs_cosine: dict[str, Interval]
    """loss(schedule) - loss(cosine); negative = better than cosine."""
    best: str

    def as_dict(self) -> dict:
        return {"n_params": self.n_params, "tokens": self.tokens, "best": self.best,
                "losses": {k: v.as_dict() for k, v in self.losses.items()},
                "vs_cosine": {k: v.as_dict() for k, v in self.vs_cosine.items()}}


def rank_schedules(fit, n_params: float, tokens: float, *, batch_tokens: float, shapes: dict | None = None,
                   level: float = 0.95) -> ScheduleRanking:
    """Rank schedules at (N, D) with a fitted curve law (analysis.curve_law.CurveLawFit, several sizes,
    with a bootstrap): each shape's final loss E' + A / N^alpha + B' / D^beta from `fit.reduced` at this N
    (its annealing gain at N when it scales with N), for the point fit and every bootstrap member."""
    shapes = shapes or schedule_shapes()
    steps = max(2, int(round(tokens / batch_tokens)))

    def final(shape, members: bool) -> np.ndarray:
        law = fit.reduced(shape(steps), batch_tokens=batch_tokens, members=members, n_params=n_params)
        return law["E"] + law["A"] * n_params ** -law["alpha"] + law["B"] * tokens ** -law["beta"]

    points = {name: float(final(shape, False)[0]) for name, shape in shapes.items()}
    members = {name: final(shape, True) for name, shape in shapes.items()} if len(fit.bootstrap) else {}
    losses = {name: percentile_interval(points[name], members.get(name, []), level) for name in shapes}
    base = "cosine" if "cosine" in shapes else next(iter(shapes))
    vs = {name: percentile_interval(points[name] - points[base],
                                    (members[name] - members[base]) if members else [], level) for name in shapes}
    best = min(points, key=points.get)
    return ScheduleRanking(float(n_params), float(tokens), losses, vs, best)
