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

The interval is a parametric bootstrap of the bowls: every run's loss redrawn around the local fit (the measured
loss away from the window) with the seed-to-seed noise, every optimum refitted (window included), the slope
refitted. Each seed with runs at 2+ LRs of the window has its own level in the local fit: a seed that trains on
other data or from a luckier init shifts its whole bowl, which moves no vertex. A seed with runs at one LR only
shares the common level (its own would fit its run exactly: with a seed per run, as seeds that are not crossed
with the LRs give, the quadratic would not be identified), so its level counts as noise. The noise is the spread
of repeated seeds at one (width, LR) once each seed's level is removed (loss = level(LR) + level(seed) + noise)
when the sweep has them, else the residuals of the local fits (which also count the bowl's departure from a
parabola, so the interval errs wide), else (3 LRs per width, no seeds) a quadratic surface over (log LR, log
width). Each bootstrap member redraws the noise level from its chi-square law with the measured degrees of
freedom, so a noise read from few runs widens the interval as a t quantile would.
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
    """One width's runs: the distinct log LRs, each run's LR (index into x), seed block and loss."""

    x: np.ndarray
    counts: np.ndarray
    index: np.ndarray
    block: np.ndarray
    losses: np.ndarray

    @classmethod
    def of(cls, lrs: np.ndarray, losses: np.ndarray, seeds: np.ndarray) -> _Bowl:
        unique, index = np.unique(lrs, return_inverse=True)
        _, block = np.unique(seeds, return_inverse=True)
        return cls(np.log(unique), np.bincount(index).astype(float), index, block, losses)

    @property
    def averaging(self) -> np.ndarray:
        """(runs, LRs) map from the runs' losses to each LR's level for an average seed: the least-squares fit of
        loss = level(LR) + level(seed), the seed levels of the seeds at 2+ LRs (`_seed_levels`' rule) averaged
        back in. With every seed at every LR this is each LR's plain mean; with seeds added at some LRs only (the
        seeds `transfer` asks for near an optimum) the plain mean would rank an LR by which seeds it holds: the
        seeds share their data order at every LR, so a worse-than-average added seed made the LRs without it
        look best (the runs/transfer_depth grid, whose lowest mean moved to its edge when 4 seeds were added)."""
        runs, lrs = len(self.losses), len(self.x)
        indicators = np.zeros((runs, lrs))
        indicators[np.arange(runs), self.index] = 1.0
        own = [b for b in np.unique(self.block) if distinct_count(self.index[self.block == b]) >= 2]
        if len(own) < 2:  # no seed level to remove (at most one seed's level is set by the LR levels' own)
            return indicators / self.counts
        # seeds at one LR (and the first own seed) are the reference level; each other own seed gets its own
        columns = [(self.block == b).astype(float) for b in own[1:]]
        design = np.column_stack([indicators, *columns])
        inverse = np.linalg.pinv(design)  # (LRs + seeds - 1, runs)
        seed_mean = inverse[lrs:].sum(axis=0) / len(own)  # the average own seed's offset from the reference
        return (inverse[:lrs] + seed_mean[None, :]).T

    @property
    def means(self) -> np.ndarray:
        """Loss per LR for an average seed (`averaging`; the plain mean over its seeds when they are balanced)."""
        return self.losses @ self.averaging


def seed_adjusted_means(lrs, losses, seeds) -> dict[float, float]:
    """Each LR's loss for an average seed (NaN losses left out): the plain mean over its seeds when every seed ran
    every LR, else the two-way fit `_Bowl.averaging` uses, so an LR that lacks the worse seeds does not look best."""
    lrs, losses, seeds = (np.asarray(v, float) for v in (lrs, losses, seeds))
    finite = np.isfinite(losses)
    if not finite.any():
        return {}
    bowl = _Bowl.of(lrs[finite], losses[finite], seeds[finite])
    return {float(lr): float(level) for lr, level in zip(np.exp(bowl.x), bowl.means, strict=True)}


@dataclass(frozen=True)
class _LocalFit:
    """The local quadratic around one grid point: its window (LR indices), the runs in it, the design
    [(x - centre)^2, x - centre, one column per seed block] and its pseudo-inverse."""

    window: np.ndarray
    runs: np.ndarray
    centre: float
    design: np.ndarray
    inverse: np.ndarray


def window_of(x: np.ndarray, best: int) -> np.ndarray:
    """Indices of the local fit around grid point `best`: up to WINDOW_STEPS neighbours on each side within a
    factor WINDOW_RATIO of its LR, and always the nearest neighbour on each side (a coarse grid's parabola)."""
    near = np.abs(x - x[best]) <= math.log(WINDOW_RATIO) + 1e-9
    steps = np.abs(np.arange(len(x)) - best)
    keep = (steps <= WINDOW_STEPS) & near | (steps <= 1)
    return np.flatnonzero(keep)


def _seed_levels(lr_of: np.ndarray, block: np.ndarray) -> list[np.ndarray]:
    """Level columns of one window's runs (their LR indices and seed blocks): one per seed with runs at 2+ LRs
    (its level is identified by its own bowl), and one common column for the runs of the other seeds (a seed at
    one LR only would take its run's loss as its level and leave the quadratic nothing to fit)."""
    own = [b for b in np.unique(block) if distinct_count(lr_of[block == b]) >= 2]
    columns = [(block == b).astype(float) for b in own]
    shared = ~np.isin(block, own)
    if shared.any():
        columns.append(shared.astype(float))
    return columns


def _local_fits(bowl: _Bowl) -> list[_LocalFit | None]:
    """For each possible best grid point, its local fit (None when the window has fewer than 3 LRs). A seed's
    runs share one level (its own intercept) when it has runs at 2+ LRs of the window (`_seed_levels`): a seed
    that trains on other data or starts from a luckier init shifts its whole bowl, which moves no vertex and is
    not noise of the optimum."""
    out: list[_LocalFit | None] = []
    for best in range(len(bowl.x)):
        window = window_of(bowl.x, best)
        if len(window) < 3:
            out.append(None)
            continue
        runs = np.flatnonzero(np.isin(bowl.index, window))
        u = bowl.x[bowl.index[runs]]
        centre = float(u.mean())
        design = np.column_stack([(u - centre) ** 2, u - centre]
                                 + _seed_levels(bowl.index[runs], bowl.block[runs]))
        out.append(_LocalFit(window, runs, centre, design, np.linalg.pinv(design)))
    return out


def _vertices(bowl: _Bowl, fits: list[_LocalFit | None], losses: np.ndarray) -> np.ndarray:
    """log LR_opt for each row of run losses (R, runs): the vertex of the local quadratic around the row's lowest
    mean loss, kept inside its window; the lowest point itself when the window holds no upward parabola."""
    losses = np.atleast_2d(losses)
    best = np.argmin(losses @ bowl.averaging, axis=1)
    out = bowl.x[best].copy()
    for k in np.unique(best):
        fit = fits[k]
        if fit is None:
            continue
        rows = np.flatnonzero(best == k)
        a, b = fit.inverse[:2] @ losses[np.ix_(rows, fit.runs)].T
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = fit.centre - b / (2 * a)
        vertex = np.clip(vertex, bowl.x[fit.window[0]], bowl.x[fit.window[-1]])
        out[rows] = np.where(a > 0, vertex, bowl.x[k])
    return out


def _smooth(bowl: _Bowl, fits: list[_LocalFit | None]) -> np.ndarray:
    """The bowl the bootstrap draws around: the local fit (quadratic plus each seed's level) for the runs in
    the window, the measured loss for the runs outside it."""
    fit = fits[int(np.argmin(bowl.means))]
    smooth = bowl.losses.copy()
    if fit is not None:
        smooth[fit.runs] = fit.design @ (fit.inverse @ bowl.losses[fit.runs])
    return smooth


def _noise(bowls: list[_Bowl], fits: list[list[_LocalFit | None]], widths, lrs, losses) -> tuple[float, str, int]:
    """(sigma of one run's loss, where it came from, degrees of freedom), from the runs in the local fits'
    windows only (far from the optimum the spread grows towards divergence, which is not the noise of an
    optimum). With repeated seeds: the residual of loss = level(LR) + level(seed), the seed-to-seed noise with
    each seed's own level removed; else the residuals of the local quadratics."""
    seeded, seeded_dof, local, local_dof = 0.0, 0, 0.0, 0
    for bowl, width_fits in zip(bowls, fits, strict=True):
        fit = width_fits[int(np.argmin(bowl.means))]
        if fit is None:
            continue
        y = bowl.losses[fit.runs]
        lr_of = bowl.index[fit.runs]
        # The same seed levels as the local fit: a seed at one LR only has no level of its own to remove.
        two_way = np.column_stack([(lr_of == j).astype(float) for j in fit.window]
                                  + _seed_levels(lr_of, bowl.block[fit.runs]))
        rank = np.linalg.matrix_rank(two_way)
        if len(y) > rank:
            seeded += float(((y - two_way @ np.linalg.lstsq(two_way, y, rcond=None)[0]) ** 2).sum())
            seeded_dof += len(y) - rank
        rank = np.linalg.matrix_rank(fit.design)
        if len(y) > rank:
            local += float(((y - fit.design @ (fit.inverse @ y)) ** 2).sum())
            local_dof += len(y) - rank
    if seeded_dof >= 2:
        return math.sqrt(seeded / seeded_dof), "repeated seeds (each seed's own level removed)", seeded_dof
    if local_dof >= 1:
        return math.sqrt(local / local_dof), "residuals of the local fits (no repeated seeds)", local_dof
    relative = surface_relative_noise([lrs], [widths], [losses])
    if np.isfinite(relative):
        dof = len(losses) - 6
        return float(relative * np.mean(losses)), "a quadratic surface over (log LR, log width) (3 LRs per width)", dof
    return float("nan"), "not measurable (too few runs)", 0


def _fmt(values) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def grid_advice(width: float, bowl: _Bowl, lr_opt: float | None = None, *, axis: str = "width") -> list[str]:
    """What to add to one width's LR grid: LRs beyond an optimum at the grid's edge (the lowest mean loss at
    the edge, or the fitted `lr_opt` inside the outermost gap, so one run holds that side of the bowl), and
    LRs that split gaps wider than GRID_STEP next to the best LR (geometrically, into steps of at most
    GRID_STEP)."""
    lr = np.exp(bowl.x)
    best = int(np.argmin(bowl.means))
    messages = []
    low_edge = best == 0 or (lr_opt is not None and len(lr) >= 3 and lr_opt < lr[1] * (1 - 1e-9))
    high_edge = best == len(lr) - 1 or (lr_opt is not None and len(lr) >= 3 and lr_opt > lr[-2] * (1 + 1e-9))
    if len(lr) >= 2 and (low_edge or high_edge):
        edge = 0 if low_edge else len(lr) - 1
        step = min(GRID_STEP, float(lr[1] / lr[0]) if low_edge else float(lr[-1] / lr[-2]))
        sign = -1 if low_edge else 1
        beyond = [float(lr[edge] * step ** (sign * k)) for k in (1, 2)]
        side = "lowest" if low_edge else "highest"
        where = (f"the lowest loss is at the grid's {side} LR {lr[edge]:.3g}" if best == edge else
                 f"LR_opt {lr_opt:.3g} is within one step of the grid's {side} LR {lr[edge]:.3g}")
        messages.append(f"{axis} {width:g}: {where}, so that side of the bowl rests on one LR: add LRs "
                        f"{_fmt(sorted(beyond))}")
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


def fit_transfer(widths, lrs, losses, *, seeds=None, bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                 axis: str = "width") -> TransferFit:
    """LR_opt per width (or depth: any shape axis), the drift of log LR_opt against log width with its
    parametric-bootstrap interval (module docstring), the noise it used, and advice on the grid and seeds.
    `seeds` labels each run's seed (None: one seed); NaN losses (diverged runs) carry no optimum."""
    widths, lrs, losses = (np.asarray(v, float) for v in (widths, lrs, losses))
    seeds = np.zeros(len(losses)) if seeds is None else np.asarray(seeds, float)
    finite = np.isfinite(losses)
    widths, lrs, losses, seeds = widths[finite], lrs[finite], losses[finite], seeds[finite]
    unique = np.unique(widths)
    if len(unique) < 2:
        raise ValueError("transfer drift needs runs at two or more widths")
    bowls = [_Bowl.of(lrs[widths == w], losses[widths == w], seeds[widths == w]) for w in unique]
    fits = [_local_fits(b) for b in bowls]
    log_width = np.log(unique)
    centred = (log_width - log_width.mean()) / ((log_width - log_width.mean()) ** 2).sum()

    optimum = np.array([_vertices(b, f, b.losses)[0] for b, f in zip(bowls, fits, strict=True)])
    value = float(centred @ optimum)
    sigma, source, dof = _noise(bowls, fits, widths, lrs, losses)
    if not np.isfinite(sigma):
        drift = Interval(value, float("nan"), float("nan"))
    else:
        rng = np.random.default_rng(seed)
        # The noise level itself, redrawn per member from sigma^2 * dof / chi2(dof): its uncertainty widens the
        # interval as a t quantile would (a noise read from 8 residuals is not known to 1%).
        scale = sigma * np.sqrt(dof / rng.chisquare(dof, size=bootstrap)) if dof > 0 else np.full(bootstrap, sigma)
        members = np.empty((bootstrap, len(unique)))
        for j, (bowl, width_fits) in enumerate(zip(bowls, fits, strict=True)):
            draws = rng.standard_normal((bootstrap, len(bowl.losses)))
            members[:, j] = _vertices(bowl, width_fits, _smooth(bowl, width_fits) + scale[:, None] * draws)
        drift = percentile_interval(value, members @ centred, level)
    repeats = max(int(b.counts[window_of(b.x, int(np.argmin(b.means)))].max()) for b in bowls)
    advice = [m for w, b, opt in zip(unique, bowls, np.exp(optimum), strict=True)
              for m in grid_advice(float(w), b, float(opt), axis=axis)]
    half = (drift.high - drift.low) / 2
    if np.isfinite(half) and half > TARGET_HALF_WIDTH:
        more = math.ceil(repeats * (half / TARGET_HALF_WIDTH) ** 2)
        advice.append(f"the drift's interval is +-{half:.2f} per doubling: about {more} seeds per LR near each optimum "
                      f"(now {repeats}) would bring it to +-{TARGET_HALF_WIDTH:g} (it narrows as 1/sqrt(seeds))")
    if repeats == 1:
        advice.append("no repeated seeds: the noise is read from the residuals of the local fits, which also count the "
                      "bowl's departure from a parabola; 2+ seeds per LR near the optimum measure it")
    lr_opt = dict(zip(unique.tolist(), np.exp(optimum).tolist(), strict=True))
    return TransferFit(lr_opt, drift, float(sigma), source, int(dof), repeats, tuple(advice))


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


def reading_setting(width, tokens, batch, lr, loss) -> tuple[float, float] | None:
    """The (D, B) setting a sweep's transfer is read at: the one where the most shapes have 3+ LRs (ties: the
    larger D), else the one with the most finished runs (None: no finished run). Pooling budgets or batch sizes
    would average losses of different runs at one LR and count their gaps as noise (the drift) or as a wider
    bowl (the LR sensitivity)."""
    width, tokens, batch, lr, loss = (np.asarray(v, float) for v in (width, tokens, batch, lr, loss))
    finite = np.isfinite(loss)
    best, most = None, None
    for d, b in sorted({(x, y) for x, y in zip(tokens[finite], batch[finite], strict=True)}):
        at = finite & (tokens == d) & (batch == b)
        shapes = sum(distinct_count(lr[at & (width == w)]) >= 3 for w in np.unique(width[at]))
        if shapes >= 2 and (best is None or (shapes, d) > best[:2]):
            best = (shapes, d, b)
        if most is None or (int(at.sum()), d) > most[:2]:
            most = (int(at.sum()), d, b)
    chosen = best or most
    return None if chosen is None else (float(chosen[1]), float(chosen[2]))


def transfer_of_sweep(width, tokens, batch, lr, loss, *, seeds=None, bootstrap: int = 1000, seed: int = 0,
                      level: float = 0.95, axis: str = "width") -> TransferFit | None:
    """`fit_transfer` at `reading_setting`'s (D, B) on the shapes with 3+ LRs there (None with fewer than 2)."""
    width, tokens, batch, lr, loss = (np.asarray(v, float) for v in (width, tokens, batch, lr, loss))
    finite = np.isfinite(loss)
    setting = reading_setting(width, tokens, batch, lr, loss)
    if setting is None:
        return None
    d, b = setting
    at = finite & (tokens == d) & (batch == b)
    widths = [w for w in np.unique(width[at]) if distinct_count(lr[at & (width == w)]) >= 3]
    if len(widths) < 2:
        return None
    at &= np.isin(width, widths)
    seeds = np.zeros(len(loss)) if seeds is None else np.asarray(seeds, float)
    return fit_transfer(width[at], lr[at], loss[at], seeds=seeds[at], bootstrap=bootstrap, seed=seed, level=level,
                        axis=axis)


def drift_of_sweep(width, tokens, batch, lr, loss, *, seeds=None, bootstrap: int = 1000, seed: int = 0,
                   level: float = 0.95):
    """(per-width LR_opt, drift interval) of `transfer_of_sweep`, or None when fewer than 2 widths have 3+ LRs.
    Pass the runs' `seeds` when the sweep repeats them: without, each seed's level counts as noise."""
    fit = transfer_of_sweep(width, tokens, batch, lr, loss, seeds=seeds, bootstrap=bootstrap, seed=seed, level=level)
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


# LR sensitivity against width (Wortsman et al. 2023, fig. 1: the baseline's sensitivity grows with scale,
# qk-layernorm's and z-loss's grow less). One sensitivity per (width, seed), over that seed's LR grid; the
# slope of sensitivity per doubling of width by least squares; its noise the spread of the seeds at one width.


@dataclass(frozen=True)
class SensitivitySlope:
    """How one setting's LR sensitivity moves with width: the sensitivity per (width, seed), the least-squares
    slope per doubling of width with its t interval, and the noise that interval came from."""

    sensitivity: dict[float, dict[int, float]]
    """{width: {seed: LR sensitivity over that seed's LR grid at that width}}."""
    slope: Interval
    """Change of the LR sensitivity per doubling of width (loss units), with its interval."""
    noise: float
    """Standard deviation of one seed's sensitivity at a fixed width (NaN: not measured)."""
    noise_source: str
    """'seeds' (the pooled spread of the seeds at each width) or 'residuals' (one seed per width: the line's
    residuals, which also count the departure from a line, so the interval errs wide)."""
    noise_dof: int
    slope_se: float
    """The slope's standard error (sigma / sqrt(sum (log2 width - mean)^2)); NaN when not measured."""

    def as_dict(self) -> dict:
        """JSON-ready: sensitivity {width: {seed: value}}, slope {value, low, high}, noise {sigma, source, dof}."""
        return {"sensitivity": {w: dict(s) for w, s in self.sensitivity.items()}, "slope": self.slope.as_dict(),
                "noise": {"sigma": self.noise, "source": self.noise_source, "dof": self.noise_dof}}


def sensitivity_by_seed(widths, seeds, lrs, losses, initial_losses, *,
                        side: str = "all") -> dict[float, dict[int, float]]:
    """Wortsman's LR sensitivity (`lr_sensitivity_of_runs`) per (width, seed) over that seed's runs.

    L_init is the largest initial loss at the width (the seeds' initial losses differ by their init only). A seed
    that lacks some of its width's LRs is left out: a sensitivity over fewer LRs is a mean over another grid, not
    a noisier draw of the same one. A diverged run (loss NaN) counts as L_init, as in `lr_sensitivity`.
    side="high" keeps each width's LRs from its optimum up (the LR of the lowest loss averaged over seeds, the
    same LRs for every seed): the side where the attention logits grow and runs diverge. In a short run the
    low-LR side is undertraining, and in sp it shrinks with width as the optimum moves down, which can hide
    the high side's growth in the full grid's mean.
    """
    if side not in ("all", "high"):
        raise ValueError(f"side: 'all' or 'high', got {side!r}")
    widths, seeds, lrs, losses, initial_losses = (np.asarray(v, float) for v in
                                                  (widths, seeds, lrs, losses, initial_losses))
    out: dict[float, dict[int, float]] = {}
    for width in np.unique(widths):
        at = widths == width
        initial = float(np.nanmax(initial_losses[at]))
        if side == "high":
            capped = np.where(np.isfinite(losses), np.minimum(losses, initial), initial)
            unique, index = np.unique(lrs[at], return_inverse=True)
            means = np.bincount(index, weights=capped[at]) / np.bincount(index)
            at = at & (lrs >= unique[int(np.argmin(means))])
        grid = set(lrs[at].tolist())
        for seed in np.unique(seeds[at]):
            mine = at & (seeds == seed)
            if set(lrs[mine].tolist()) == grid and len(grid) >= 2:
                out.setdefault(float(width), {})[int(seed)] = lr_sensitivity_of_runs(lrs[mine], losses[mine], initial)
    return out


def sensitivity_slope(sensitivity: dict[float, dict[int, float]], *, level: float = 0.95) -> SensitivitySlope:
    """The slope of the LR sensitivity per doubling of width, with a t interval from the seed-level noise.

    Least squares of S(width, seed) on log2 width over every (width, seed) (a width with more seeds weighs more).
    Its variance is sigma^2 / sum (x - mean x)^2 with sigma the pooled spread of the seeds around their width's
    mean (dof: sum over widths of seeds - 1) and a t quantile with those dof: 2 seeds at 4 widths give 4 dof,
    so a sigma read from 8 runs widens the interval as it should (t 2.78 instead of 1.96). The points are taken
    as independent; they are not quite: one seed's data order is the same at every width (models/data.py draws
    its windows from (seed, step, micro)). A seed effect shared across widths cancels in the slope when every
    width has the same seeds, so the interval errs wide, not narrow. The width means' departure from a line is
    not counted as noise.
    With one seed per width the line's residuals stand in (dof: widths - 2). Needs 2+ widths (else NaN).
    """
    from scipy import stats

    x = np.array([math.log2(w) for w, by in sensitivity.items() for _ in by], float)
    y = np.array([s for by in sensitivity.values() for s in by.values()], float)
    if len(sensitivity) < 2:
        nan = float("nan")
        return SensitivitySlope(sensitivity, Interval(nan, nan, nan), nan, "none", 0, nan)
    centred = x - x.mean()
    sxx = float(centred @ centred)
    slope = float(centred @ (y - y.mean()) / sxx)
    within = sum(float(np.sum((np.array(list(by.values())) - np.mean(list(by.values()))) ** 2))
                 for by in sensitivity.values())
    dof = sum(len(by) - 1 for by in sensitivity.values())
    source = "seeds"
    if dof == 0:
        residual = y - y.mean() - slope * centred
        within, dof, source = float(residual @ residual), len(y) - 2, "residuals"
    if dof <= 0:
        nan = float("nan")
        return SensitivitySlope(sensitivity, Interval(slope, nan, nan), nan, "none", 0, nan)
    sigma = math.sqrt(within / dof)
    se = sigma / math.sqrt(sxx)
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return SensitivitySlope(sensitivity, Interval(slope, slope - half, slope + half), sigma, source, dof, se)


def slope_difference(a: SensitivitySlope, b: SensitivitySlope, *, level: float = 0.95) -> Interval:
    """a's slope minus b's with a Welch t interval: the two settings' runs are taken as independent, so the
    variances add (not quite: a seed's data order is the same in both settings; where it moves both slopes alike
    the difference's true spread is smaller, so this errs wide), and the dof are Welch-Satterthwaite's from each
    slope's own noise dof (NaN when either has none)."""
    from scipy import stats

    parts = [a.slope_se ** 2, b.slope_se ** 2]
    value = a.slope.value - b.slope.value
    if not all(math.isfinite(p) for p in parts):
        return Interval(value, float("nan"), float("nan"))
    total = parts[0] + parts[1]
    if total == 0:
        return Interval(value, value, value)
    dof = total ** 2 / (parts[0] ** 2 / a.noise_dof + parts[1] ** 2 / b.noise_dof)
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * math.sqrt(total)
    return Interval(value, value - half, value + half)


def sensitivity_verdict(baseline: Interval, difference: Interval) -> str:
    """Wortsman's claim against the intervals: 'reproduced' (the baseline's slope and baseline minus
    qk-layernorm's are both above 0), 'refuted' (either interval is below 0: the sensitivity falls with width,
    or qk-layernorm's grows more) or 'not resolved' (an interval holds 0 or is not measured)."""
    if baseline.low > 0 and difference.low > 0:
        return "reproduced"
    if baseline.high < 0 or difference.high < 0:
        return "refuted"
    return "not resolved"
