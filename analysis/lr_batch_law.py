"""The optimal LR and batch size laws (Li et al. 2025, "Step Law"), and the LR against the batch size.

- Near-optimal runs: per (N, D) group, the runs within 0.25% of the group's best loss; each group's
  optimum (LR and batch size) from them.
- Power laws such as eta_opt = c N^a D^b and B_opt = k D^g by least squares in log space (exponents
  bounded), with bootstrap intervals; `lr_batch_evidence` fits them from a sweep, or says why not.
- Whether the optimal LR moves with the batch size (`lr_batch_trend`: rises, falls, flat, or the surge).

Every function is pure (arrays in, dataclasses out). A knob the runs do not support gets no law and a
reason; a law whose exponent ends at its bound says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval
from proxyscale.analysis.lr_grid import distinct_count, holds_zero, optimal_lr, optimal_lr_rows, relative_noise
from proxyscale.analysis.lr_transfer import drift_of_sweep

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


EXPONENT_BOUND = 3.0
"""|exponent| of the knob laws' power laws; a fit that ends there reports it (`PowerLaw.at_bound`)."""


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
        lr_values = distinct_count(g_lr[at_best_batch])
        batches = np.unique(g_batch)
        profile = np.array([g_loss[g_batch == b].min() for b in batches])
        lr_grid = np.unique(g_lr[at_best_batch])
        lr_bracketed = bool(lr_grid[0] < g_lr[best] < lr_grid[-1])
        batch_bracketed = bool(batches[0] < g_batch[best] < batches[-1])
        if distinct_count(g_lr[near]) >= 2:
            lr_opt = float(np.exp(np.mean(np.log(g_lr[near]))))
        else:
            lr_opt, _ = _parabola_optimum(g_lr[at_best_batch], g_loss[at_best_batch])
        if distinct_count(g_batch[near]) >= 2:
            batch_opt = float(np.exp(np.mean(np.log(g_batch[near]))))
        else:
            batch_opt, _ = _parabola_optimum(batches, profile)
        out.append(GroupOptimum(float(n), float(d), lr_opt, batch_opt, float(g_loss[best]), lr_values, len(batches),
                                lr_bracketed, batch_bracketed, int(near.sum())))
    return out


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
            if distinct_count(lr[index]) >= 3:
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

    def table() -> np.ndarray:
        """log LR_opt per batch size, the mean over the groups."""
        return np.array([np.mean([np.log(optimal_lr(lr[cells[g][b]], loss[cells[g][b]])) for g in groups])
                         for b in batches])

    def member_tables() -> np.ndarray:
        """table() of every bootstrap member, the losses perturbed by their relative noise: one member's cells
        after another's in the draws, each cell's optima over all members in one vectorised call."""
        order = [cells[g][b] for b in batches for g in groups]
        draws = rng.standard_normal((bootstrap, sum(len(index) for index in order)))
        ends = np.cumsum([0] + [len(index) for index in order])
        out = np.zeros((bootstrap, len(batches)))
        for k, index in enumerate(order):
            noisy = loss[index] * (1 + sigma * draws[:, ends[k]:ends[k + 1]])
            out[:, k // len(groups)] += np.log(optimal_lr_rows(lr[index], noisy)) / len(groups)
        return out

    point = table()
    members = member_tables()  # 1,000 members x 720 cells: 70 s as a loop of optimal_lr calls, ~1 s here
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
    if distinct_count(lr[np.isfinite(loss)]) < 2:
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
        if distinct_count([g.tokens for g in usable]) >= 2:
            features["D"] = [g.tokens for g in usable]
        if not lr_transfer and distinct_count([g.n_params for g in usable]) >= 2:
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
    batch_values = distinct_count(batch[np.isfinite(loss)])
    if batch_values < 2:
        batch_reason = "the batch size was not varied"
    elif not tried_b:
        batch_reason = (f"{batch_values} batch sizes, but no (N, D) group tried 3+ of them, so no optimum is located")
    elif not usable_b:
        batch_reason = (f"the best batch size is at the edge of the batch grid in all {len(tried_b)} groups with 3+ "
                        "batch sizes (only a bound): widen the batch grid")
    elif distinct_count([g.tokens for g in usable_b]) < 2 or len(usable_b) < 3:
        batch_reason = (f"batch optima located in {len(usable_b)} group(s) at {distinct_count([g.tokens for g in usable_b])} "
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
