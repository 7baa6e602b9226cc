"""Replay a published sweep: buy some of its runs, fit, and predict the largest runs it holds.

A table of finished runs (N, D, C, loss) is split at a compute threshold: the runs above it are the
test set (their measured losses are the truth), the runs below it are the pool. A method buys pool
runs, paying each run's FLOPs, up to a fraction of the pool's total compute; L(N, D) is fitted to
what it bought (with a bootstrap) and predicts every test run with a 95% interval for its measured
loss (analysis/predictive.py: law uncertainty plus run-to-run noise). Methods:

- `cheapest_first`: the cheapest runs first (what a sweep that climbs from small runs would have);
- `random`: the runs in a random order (seeded);
- `planner`: the criterion of analysis/planner.py. A cheap space-filling design first
  (`initial_design`), then rounds: refit with a bootstrap ensemble; across members, the test runs'
  predicted log losses are the targets and every pool run's predicted log loss a candidate
  observation; treated as jointly Gaussian, buying run j (noise s^2) shrinks Var(target i) by
  Cov(i, j)^2 / (Var j + s^2). A run's score is the mean relative reduction over the targets per
  PFLOP; each round buys greedily, conditioning on each pick (`planner._condition`), until it has
  added half the compute bought so far; then it refits. While L(N, D) is not identifiable (or an
  exponent sits at its bound) it spreads runs over N and D (`planner._design_completion`).
  The order it buys in is computed once per seed up to the largest fraction below 1; a smaller
  fraction buys that order's runs while they fit in its budget. The planner never sees a pool run's
  loss before buying it, nor any test run's loss.

Every method buys a run only if it fits in what is left of the budget (it then goes on down its
order), so no fraction is ever exceeded. Results: per (method, fraction), the median over seeds of
the mean |predicted - measured| / measured over the test runs, and the share of (seed, test run)
pairs whose interval holds the measured loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from proxyscale.analysis.planner import (
    COARSE_STARTS,
    EXPONENT_FLOOR,
    PFLOP,
    Candidate,
    Observation,
    _condition,
    _design_completion,
    identifiable,
    initial_design,
)
from proxyscale.analysis.predictive import (
    LAWS,
    PARAMETER_COUNT,
    backtest_calibration,
    fit_law,
    log_loss,
    log_residuals,
    predict_loss,
)

METHODS = ("planner", "random", "cheapest_first")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)
MIN_NOISE = 1e-3
"""Floor of the observation noise (standard deviation of log loss) in the planner's criterion."""
ROUND_GROWTH = 0.5
"""A planner round buys runs until it has added this share of the compute bought so far."""


@dataclass(frozen=True)
class Runs:
    """A table of finished runs: parameters, tokens, training FLOPs (what a run costs) and final loss."""

    n: np.ndarray
    d: np.ndarray
    flops: np.ndarray
    loss: np.ndarray

    @classmethod
    def of(cls, n, d, loss, flops=None) -> Runs:
        n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
        flops = 6 * n * d if flops is None else np.asarray(flops, float)
        return cls(n=n, d=d, flops=flops, loss=loss)

    def take(self, index) -> Runs:
        return Runs(n=self.n[index], d=self.d[index], flops=self.flops[index], loss=self.loss[index])


@dataclass(frozen=True)
class Case:
    """One (method, fraction, seed): what was bought and how its fit predicted the test runs."""

    method: str
    fraction: float
    seed: int
    bought: np.ndarray
    """Indices into the pool."""
    flops: float
    error: float
    """Mean over test runs of |predicted - measured| / measured (inf: too few runs to fit)."""
    covered: np.ndarray
    """Per test run: the prediction interval holds the measured loss."""
    mean_covered: np.ndarray
    """Per test run: the interval of the law's mean alone (no noise) holds it."""
    prediction: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ReplayResult:
    law: str
    pool_size: int
    test_size: int
    pool_flops: float
    test_above_flops: float
    cases: list[Case]
    interval: str = "residual"

    def summary(self, method: str, fraction: float) -> dict:
        cases = [c for c in self.cases if c.method == method and c.fraction == fraction]
        return _summarise(cases) | {"method": method, "fraction": fraction}

    def full_pool(self) -> dict:
        return _summarise([c for c in self.cases if c.method == "full_pool"])

    def results(self) -> list[dict]:
        keys = sorted({(c.method, c.fraction) for c in self.cases if c.method != "full_pool"},
                      key=lambda k: (METHODS.index(k[0]), k[1]))
        return [self.summary(method, fraction) for method, fraction in keys]

    def as_dict(self) -> dict:
        return {"law": self.law, "interval": self.interval, "pool_rows": self.pool_size, "test_rows": self.test_size,
                "pool_flops": self.pool_flops, "test_above_flops": self.test_above_flops,
                "seeds": len({c.seed for c in self.cases}), "full_pool": self.full_pool(), "results": self.results()}


def _summarise(cases: list[Case]) -> dict:
    covered = np.concatenate([c.covered for c in cases])
    mean_covered = np.concatenate([c.mean_covered for c in cases])
    return {"median_abs_rel_error": float(np.median([c.error for c in cases])),
            "coverage": float(covered.mean()), "mean_interval_coverage": float(mean_covered.mean()),
            "flops": float(np.median([c.flops for c in cases])),
            "n_rows": float(np.median([len(c.bought) for c in cases])),
            "not_fitted": int(sum(not np.isfinite(c.error) for c in cases))}


def split_at(runs: Runs, test_above_flops: float) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, test indices): the test set is every run of more than `test_above_flops` FLOPs."""
    test = runs.flops > test_above_flops
    return np.flatnonzero(~test), np.flatnonzero(test)


def buy_in_order(order, cost: np.ndarray, budget: float) -> np.ndarray:
    """The runs of `order` bought one after another, each only if it fits in what is left of the budget."""
    bought, spent = [], 0.0
    for i in order:
        if spent + cost[i] <= budget * (1 + 1e-12):
            bought.append(int(i))
            spent += cost[i]
    return np.array(bought, int)


def random_order(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(size)


def cheapest_order(cost: np.ndarray) -> np.ndarray:
    return np.argsort(cost, kind="stable")


def _candidates(pool: Runs, index) -> list[Candidate]:
    return [Candidate(key=str(i), width=0, n_params=float(pool.n[i]), tokens=float(pool.d[i]),
                      flops=float(pool.flops[i]), lr=1.0) for i in index]


def _observations(pool: Runs, index) -> list[Observation]:
    return [Observation(key=str(i), width=0, n_params=float(pool.n[i]), tokens=float(pool.d[i]),
                        flops=float(pool.flops[i]), lr=1.0, status="finished", loss=float(pool.loss[i])) for i in index]


def information_picks(target_samples: np.ndarray, candidate_samples: np.ndarray, cost: np.ndarray, noise: float,
                      budget: float, round_flops: float) -> list[int]:
    """Greedy picks among candidates by expected relative variance reduction of the targets per PFLOP.

    target_samples (R, T) and candidate_samples (R, M): log losses across the ensemble's members.
    Picks (positions among the candidates) until the picks cost at least `round_flops` or nothing left
    fits in `budget`. Returns [] when fewer than 8 members are finite.
    """
    members = np.isfinite(target_samples).all(axis=1) & np.isfinite(candidate_samples).all(axis=1)
    if members.sum() < 8:
        return []
    n_targets = target_samples.shape[1]
    covariance = np.cov(np.column_stack([target_samples[members], candidate_samples[members]]), rowvar=False)
    prior = np.maximum(np.diag(covariance)[:n_targets].copy(), 1e-300)
    available = list(range(candidate_samples.shape[1]))
    picks: list[int] = []
    spent = 0.0
    while available and spent < round_flops:
        columns = n_targets + np.array(available)
        gains = covariance[:n_targets][:, columns] ** 2 / (np.diag(covariance)[columns] + noise**2)
        score = (gains / prior[:, None]).mean(axis=0) / (cost[available] / PFLOP)
        affordable = cost[available] <= budget - spent
        if not affordable.any():
            break
        position = int(np.argmax(np.where(affordable, score, -np.inf)))
        index = available.pop(position)
        covariance = _condition(covariance, n_targets + index, noise**2)
        picks.append(index)
        spent += cost[index]
    return picks


def _usable(fit) -> bool:
    """Both exponents strictly inside their bounds (planner.estimate_target's test)."""
    p = fit.params
    return all(EXPONENT_FLOOR < p[name] < 3.0 - EXPONENT_FLOOR for name in ("alpha", "beta"))


def planner_order(pool: Runs, test: Runs, *, law: str, seed: int, spend_limit: float, ensemble: int = 64) -> list[int]:
    """The pool runs in the order the planner buys them, up to `spend_limit` FLOPs (see the module docstring)."""
    cost = pool.flops
    design = initial_design(_candidates(pool, range(len(cost))), count=6)
    order = list(buy_in_order([int(c.key) for c in design], cost, spend_limit))
    spent = float(cost[order].sum())
    previous = None
    for round_index in range(10_000):
        bought = np.array(order, int)
        taken = set(order)
        left = np.array([i for i in range(len(cost)) if i not in taken and cost[i] <= spend_limit - spent], int)
        if len(left) == 0:
            break
        picks: list[int] = []
        fit = None
        if identifiable(pool.n[bought], pool.d[bought]):
            starts = None
            if law == "chinchilla":  # the closed loop's fast refit: a coarse grid plus the previous optimum
                starts = COARSE_STARTS if previous is None else np.vstack([previous[None], COARSE_STARTS])
            fit = fit_law(law, pool.n[bought], pool.d[bought], pool.loss[bought], bootstrap=ensemble,
                          seed=seed * 100_003 + round_index, grid=starts)
        if fit is not None and _usable(fit):
            previous = fit.theta if law == "chinchilla" else None
            residual = log_residuals(law, fit, pool.n[bought], pool.d[bought], pool.loss[bought])
            noise = max(MIN_NOISE, float(1.4826 * np.median(np.abs(residual - np.median(residual)))))
            positions = information_picks(log_loss(law, test.n, test.d, fit.bootstrap),
                                          log_loss(law, pool.n[left], pool.d[left], fit.bootstrap), cost[left],
                                          noise, spend_limit - spent, max(ROUND_GROWTH * spent, 1.0))
            picks = [int(left[p]) for p in positions]
        if not picks:  # not identifiable yet, or the ensemble says nothing: spread over N and D, cheapest first
            spread = _design_completion(_candidates(pool, left), _observations(pool, bought), 1, spend_limit - spent)
            picks = [int(p.candidate.key) for p in spread] or [int(left[np.argmin(cost[left])])]
        order += picks
        spent += float(cost[picks].sum())
    return order


def evaluate(law: str, pool: Runs, test: Runs, bought, *, method: str = "full_pool", fraction: float = 1.0,
             seed: int = 0, bootstrap: int = 200, level: float = 0.95, grid=None,
             backtest_share: float | None = None) -> Case:
    """Fit `law` to the pool runs `bought` and predict every test run with its prediction interval.

    backtest_share: None for the residual interval; else the backtest interval (analysis/predictive.py),
    holding out that share of the bought runs (the residual interval where the rest cannot be fitted).
    """
    bought = np.asarray(bought, int)
    chosen = pool.take(bought)
    flops = float(chosen.flops.sum())
    if len(bought) <= PARAMETER_COUNT[law] + 1 or not identifiable(chosen.n, chosen.d):
        miss = np.zeros(len(test.loss), bool)
        return Case(method, fraction, seed, bought, flops, float("inf"), miss, miss, np.full(len(test.loss), np.nan))
    fit = fit_law(law, chosen.n, chosen.d, chosen.loss, bootstrap=bootstrap, seed=seed, grid=grid, level=level)
    residual = log_residuals(law, fit, chosen.n, chosen.d, chosen.loss)
    calibration = None
    if backtest_share is not None:
        calibration = backtest_calibration(law, chosen.n, chosen.d, chosen.loss, flops=chosen.flops,
                                           share=backtest_share, seed=seed, grid=grid, level=level)
    prediction = predict_loss(law, fit, test.n, test.d, residual, level=level, seed=seed, calibration=calibration)
    error = float(np.mean(np.abs(prediction.value - test.loss) / test.loss))
    covered = (prediction.low <= test.loss) & (test.loss <= prediction.high)
    mean_covered = (prediction.mean_low <= test.loss) & (test.loss <= prediction.mean_high)
    return Case(method, fraction, seed, bought, flops, error, covered, mean_covered, prediction.value)


INTERVALS = ("residual", "backtest")


def replay(runs: Runs, *, test_above_flops: float, fractions=DEFAULT_FRACTIONS, seeds: int = 5,
           law: str = "chinchilla", methods=METHODS, bootstrap: int = 200, level: float = 0.95, grid=None,
           ensemble: int = 64, interval: str = "residual", progress=None) -> ReplayResult:
    """Replay `runs` (see the module docstring). seeds: 0 .. seeds-1. grid: fit starts (default: the law's own).

    interval: "residual" (bootstrap members plus drawn residuals) or "backtest" (analysis/predictive.py),
    whose held-out share of the bought runs is the test set's share of the whole table: the backtest
    splits what was bought as the replay splits the table.
    progress: optional callable(str), told about each (method, seed) as it finishes.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval: {interval!r} is not one of {list(INTERVALS)}")
    if law not in LAWS:
        raise ValueError(f"law: {law!r} is not one of {list(LAWS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: {unknown} are not among {list(METHODS)}")
    fractions = sorted({float(f) for f in fractions})
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"fractions: each must be in (0, 1], got {fractions}")
    if seeds < 1:
        raise ValueError(f"seeds: at least 1, got {seeds}")
    pool_index, test_index = split_at(runs, test_above_flops)
    if len(test_index) == 0:
        raise ValueError(f"no run has more than {test_above_flops:g} FLOPs (the largest has {runs.flops.max():g}): "
                         "nothing to predict; lower the threshold")
    pool, test = runs.take(pool_index), runs.take(test_index)
    if len(pool_index) < 6 or not identifiable(pool.n, pool.d):
        raise ValueError(f"{len(pool_index)} runs have at most {test_above_flops:g} FLOPs; fitting L(N, D) needs at "
                         "least 6 below the threshold, over 3 or more values of N and of D; raise the threshold")
    total = float(pool.flops.sum())
    cases: list[Case] = []
    share = len(test_index) / len(runs.flops) if interval == "backtest" else None
    kwargs = {"bootstrap": bootstrap, "level": level, "grid": grid, "backtest_share": share}
    everything = np.arange(len(pool_index))
    below_one = [f for f in fractions if f < 1]
    for seed in range(seeds):
        full = evaluate(law, pool, test, everything, method="full_pool", fraction=1.0, seed=seed, **kwargs)
        cases.append(full)
        for method in methods:
            if 1.0 in fractions:
                cases.append(Case(method, 1.0, seed, full.bought, full.flops, full.error, full.covered,
                                  full.mean_covered, full.prediction))
            if not below_one:
                continue
            if method == "planner":
                order = planner_order(pool, test, law=law, seed=seed, spend_limit=max(below_one) * total,
                                      ensemble=ensemble)
            elif method == "random":
                order = random_order(len(pool_index), seed)
            else:
                order = cheapest_order(pool.flops)
            for fraction in below_one:
                bought = buy_in_order(order, pool.flops, fraction * total)
                cases.append(evaluate(law, pool, test, bought, method=method, fraction=fraction, seed=seed, **kwargs))
            if progress is not None:
                progress(f"seed {seed}: {method} done")
    return ReplayResult(law=law, pool_size=len(pool_index), test_size=len(test_index), pool_flops=total,
                        test_above_flops=float(test_above_flops), cases=cases, interval=interval)
