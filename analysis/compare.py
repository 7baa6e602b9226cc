"""Comparing recipes by their fitted laws: which one is lower at the target, how sure, and where two cross.

A recipe is a set of runs (N, D, loss) made one way: a data set, a tokenizer, an architecture. Ranking recipes
at the largest proxy is wrong when their laws cross (Nezhurina et al. 2025; Goyal et al. 2024,
../shared/papers.md §9), so here each recipe gets its own law, fitted as `proxyscale fit` fits one
(analysis/predictive.fit_law: chinchilla L(N, D) or Gadre et al.'s overtraining L(C, M), Huber on log loss,
bootstrap members), and the recipes are compared where the decision is made: at the target.

Sharing. With E free per recipe, a short ladder often cannot place each recipe's floor (E runs to its bound 0
and the extrapolation rests on the power terms). On one evaluation set E is the part of the loss no model
removes, so recipes evaluated on the same text may share it. `share="auto"` decides by the data: the recipes'
laws are fitted jointly with one E (the rest per recipe) and kept shared when the small-sample AIC of the log
residuals, AICc = n log(RSS / n) + 2k + 2k(k + 1) / (n - k - 1), is no worse than with an E per recipe (the
shared fit has R - 1 fewer parameters; a floor the data do tell apart costs more residual than the parameters
it saves). The choice, both AICc values and each recipe's own E with its bootstrap interval are reported.
Recipes on different evaluation texts never share (`same_eval=False`).

Members and pairing. Every recipe has B bootstrap members (refits on resampled runs, stratified by recipe:
each recipe's own runs are resampled, with the seed `seed + index`). In a shared fit member b of every recipe
comes from one joint refit, so member b of two recipes is a pair (they share that member's E); without sharing
the members are independent and pairing by index is pairing at random. A pair's difference, P(a lower) and the
probability each recipe is best are shares of the paired members.

Calibration. As in `fit`: the backtest (analysis/predictive.backtest_calibration: hold out each recipe's
largest sizes, fit the rest, score the band on what was held out) gives a factor that scales the band in log
about the point prediction; here it scales each member's log deviation from the point, so intervals,
differences and probabilities all come from the calibrated members. Without sharing each recipe has its own
backtest, exactly `fit`'s; with a shared E the backtest refits the shared model and pools every recipe's
held-out runs into one factor. A factor of 1 (no backtest possible) leaves the bootstrap as it is. As `fit` does
at a target, each side of the band is then floored at the held-out error's spread at that N's extrapolation
distance (analysis/predictive.py's distance model, measured on the recipe's own ladder or its prior; the growth
alone, for a law's mean), point by point along the path (`calibrate_members`). Members keep their order and
their pairing, so an error of the law form that moves two recipes alike widens each recipe's interval more
than their difference. Where the bootstrap collapsed onto the point on a side (E pinned at its bound 0 in every
member, noise-free runs: no spread there), scaling cannot widen that side; the members are then spread to the floor
(in their own order, that side mirroring the other's deviations), so no interval, difference or P() is narrower
than the distance model allows, and the comparison flags the recipe (`Comparison.collapsed`).

Targets. `Target(flops=C)`: each recipe at its own compute-optimal N and D (its frontier); `Target(n=, d=)`:
every recipe at that N and D, and the path to it runs at the same tokens per parameter D / N. The crossover of
a pair is where the difference of their point predictions changes sign along the path between the smallest
run's compute and the target (of several, the one nearest the target in log compute; which recipe is lower below
and above it is read on either side of that crossing); its interval comes from the members (each member's
crossing nearest the point's; a member that never crosses counts below the window's start when it is already on
the far side, above its end otherwise), or "no crossover in [C1, C2]". Members: `fit_recipes` and `compare_at`
refuse fewer than two per recipe (the point alone would read P = 1.00 with zero-width intervals), and
`proxyscale compare` fewer than MIN_MEMBERS.

A task metric (`Recipe.metric`, an error in [0, 1], lower is better; `higher_is_better` for an accuracy stored
as 1 - it) goes through the task law of analysis/downstream.py fitted per recipe to (loss, error) with the same
bootstrap resamples as its loss law (the same seed and rows: member b of both is one resample), and calibrated
by the task law's own backtest (in error units).

Decisive. A pair is called when P(a lower) >= `decide_at` (default DECIDE_AT = 0.9) or <= 1 - it; a best
recipe when P(best) >= it; otherwise "no clear winner". 0.9 leaves one wrong call in ten at the edge, and the
issue's deciding planner stops at 0.95: a user wanting more sets `decide_at`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from proxyscale.analysis.fit import HUBER_DELTA, Interval, bootstrap_weights, damped_gauss_newton, huber, percentile_interval
from proxyscale.analysis.laws import compute_optimal_allocation, log_sum_exp3, lse_terms
from proxyscale.analysis.predictive import (
    MIN_MEMBERS,
    PARAMETER_COUNT,
    Calibration,
    backtest_calibration,
    fit_law,
    largest_size_split,
    log_loss,
    noise_draws,
    predictive_band,
)
from proxyscale.analysis.table_fit import TableFit

COMPARE_LAWS = ("chinchilla", "overtraining")
SHARE_CHOICES = ("auto", "E", "none")
DECIDE_AT = 0.9
"""A probability at or beyond this (or at or below 1 - it) is a decision; between: no clear winner."""
E_INDEX = 2
"""Both laws keep log E at theta[2]: chinchilla (a, b, e, alpha, beta), overtraining (log a, log b, log E, eta)."""
MIN_SIZES = 3
MIN_TOKEN_COUNTS = 3
PATH_POINTS = 96
"""Points of the log-spaced compute grid on which crossings are looked for."""


class CompareInputError(ValueError):
    """Recipes that cannot be compared; the message is one line naming the recipe and what is missing."""


@dataclass(frozen=True)
class Recipe:
    """One recipe's runs: parameters, tokens and final loss (nats or bpb), and optionally a task error per run."""

    name: str
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    metric: np.ndarray | None = None
    """The task metric as an error in [0, 1] (lower is better); None: loss only."""

    @classmethod
    def of(cls, name: str, n, d, loss, metric=None) -> Recipe:
        """A recipe from any array-likes (converted to float arrays)."""
        return cls(str(name), np.asarray(n, float), np.asarray(d, float), np.asarray(loss, float),
                   None if metric is None else np.asarray(metric, float))


def min_runs(law: str) -> int:
    """Runs a recipe needs for its law: two more than its parameters (a residual noise with some spread)."""
    return PARAMETER_COUNT[law] + 2


def check_recipes(recipes, law: str = "chinchilla") -> None:
    """Refuse, with one line, what cannot be compared: fewer than two recipes, a repeated name, a recipe with too few
    runs, sizes or token counts for its law, or non-positive values."""
    if law not in COMPARE_LAWS:
        raise CompareInputError(f"law: {law!r} is not one of {list(COMPARE_LAWS)}")
    recipes = list(recipes)
    if len(recipes) < 2:
        names = ", ".join(r.name for r in recipes) or "none"
        raise CompareInputError(f"compare needs two or more recipes, got {len(recipes)} ({names}): give several sweep "
                                "directories, or --by a column or config key with two or more values")
    seen = set()
    for r in recipes:
        if r.name in seen:
            raise CompareInputError(f"recipe {r.name!r} appears twice; give each recipe a distinct name")
        seen.add(r.name)
        if not (len(r.n) == len(r.d) == len(r.loss)) or (r.metric is not None and len(r.metric) != len(r.loss)):
            raise CompareInputError(f"recipe {r.name!r}: N, D, loss (and metric) must have one length")
        values = np.concatenate([r.n, r.d, r.loss])
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise CompareInputError(f"recipe {r.name!r}: N, D and loss must be finite and > 0")
        sizes, tokens = len(np.unique(r.n)), len(np.unique(r.d))
        need = min_runs(law)
        if len(r.loss) < need or sizes < MIN_SIZES or tokens < MIN_TOKEN_COUNTS:
            raise CompareInputError(
                f"recipe {r.name!r}: {len(r.loss)} runs over {sizes} sizes and {tokens} token counts; the {law} law "
                f"needs at least {need} runs over {MIN_SIZES} sizes and {MIN_TOKEN_COUNTS} token counts: run more of "
                "this recipe")
        if r.metric is not None and not (np.isfinite(r.metric).all() and ((r.metric >= 0) & (r.metric <= 1)).all()):
            raise CompareInputError(f"recipe {r.name!r}: the task metric must be a fraction in [0, 1] at every run")


# ---------------------------------------------------------------------------------------- the laws, vectorised

def _features(law: str, n, d) -> tuple[np.ndarray, np.ndarray]:
    log_n, log_d = np.log(np.asarray(n, float)), np.log(np.asarray(d, float))
    if law == "chinchilla":
        return log_n, log_d
    return np.log(6.0) + log_n + log_d, log_d - log_n  # overtraining: (log C, log M)


def _predict_with_jacobian(law: str, theta: np.ndarray, x1: np.ndarray, x2: np.ndarray):
    """log L (K, n) and its Jacobian (K, n, p) in the law's own parameters, for each row of theta (K, p)."""
    if law == "chinchilla":
        prediction, (w_n, w_d, w_e) = log_sum_exp3(*lse_terms(x1, x2, theta))
        return prediction, np.stack([w_n, w_d, w_e, -w_n * x1, -w_d * x2], axis=-1)
    la, lb, le, eta = (theta[:, k, None] for k in range(4))
    log_c, log_m = x1, x2
    prediction, (w1, w2, w3) = log_sum_exp3(la + eta * (log_m - log_c), lb - eta * (log_m + log_c), le + 0.0 * log_c)
    return prediction, np.stack([w1, w2, w3, w1 * (log_m - log_c) - w2 * (log_m + log_c)], axis=-1)


def _exponent_bounds(law: str) -> tuple[slice, float, float]:
    from proxyscale.analysis.fit import MAX_EXPONENT, MIN_EXPONENT
    from proxyscale.analysis.overtraining import MAX_ETA, MIN_ETA

    return (slice(3, 5), MIN_EXPONENT, MAX_EXPONENT) if law == "chinchilla" else (slice(3, 4), MIN_ETA, MAX_ETA)


class _SharedE:
    """The recipes' laws with one log E: parameters (the others of recipe 0, of recipe 1, ..., log E)."""

    def __init__(self, law: str, recipes) -> None:
        self.law = law
        self.p = PARAMETER_COUNT[law]
        self.count = len(recipes)
        self.size = self.count * (self.p - 1) + 1
        feats = [_features(law, r.n, r.d) for r in recipes]
        self.x1 = [f[0] for f in feats]
        self.x2 = [f[1] for f in feats]
        self.log_l = np.concatenate([np.log(r.loss) for r in recipes])
        self.bounds = np.cumsum([0] + [len(r.loss) for r in recipes])
        self.own = [i for i in range(self.p) if i != E_INDEX]

    def split(self, joint: np.ndarray) -> list[np.ndarray]:
        """Each recipe's theta (K, p) from joint rows (K, size)."""
        joint = np.atleast_2d(joint)
        out = []
        for r in range(self.count):
            theta = np.empty((len(joint), self.p))
            theta[:, self.own] = joint[:, r * (self.p - 1):(r + 1) * (self.p - 1)]
            theta[:, E_INDEX] = joint[:, -1]
            out.append(theta)
        return out

    def join(self, thetas: list[np.ndarray], e: float) -> np.ndarray:
        return np.concatenate([np.asarray(t, float)[self.own] for t in thetas] + [np.array([e])])

    def predict_with_jacobian(self, joint: np.ndarray):
        joint = np.atleast_2d(joint)
        k = len(joint)
        prediction = np.empty((k, len(self.log_l)))
        jacobian = np.zeros((k, len(self.log_l), self.size))
        for r, theta in enumerate(self.split(joint)):
            lo, hi = self.bounds[r], self.bounds[r + 1]
            pred, jac = _predict_with_jacobian(self.law, theta, self.x1[r], self.x2[r])
            prediction[:, lo:hi] = pred
            jacobian[:, lo:hi, r * (self.p - 1):(r + 1) * (self.p - 1)] = jac[..., self.own]
            jacobian[:, lo:hi, -1] = jac[..., E_INDEX]
        return prediction, jacobian

    def objective(self, joint: np.ndarray, weights: np.ndarray) -> np.ndarray:
        prediction, _ = self.predict_with_jacobian(joint)
        return (weights * huber(self.log_l - prediction, HUBER_DELTA)).sum(axis=1)

    def project(self, candidate: np.ndarray) -> np.ndarray:
        where, low, high = _exponent_bounds(self.law)
        for r in range(self.count):
            block = candidate[:, r * (self.p - 1):(r + 1) * (self.p - 1)]
            # the exponents sit at positions 3.. of theta, i.e. 2.. of a recipe's block (E removed from index 2)
            block[:, where.start - 1:where.stop - 1] = np.clip(block[:, where.start - 1:where.stop - 1], low, high)
            candidate[:, r * (self.p - 1):(r + 1) * (self.p - 1)] = block
        return candidate

    def refine(self, starts: np.ndarray, weights=None, iterations: int = 400):
        return damped_gauss_newton(starts, self.predict_with_jacobian, self.objective, self.log_l, weights,
                                   HUBER_DELTA, self.project, iterations)


def fit_shared_e(law: str, recipes, starts: list[np.ndarray], *, bootstrap: int = 0, seed: int = 0):
    """The recipes' laws fitted jointly with one E: (thetas per recipe (p,), members per recipe (B, p)).

    starts: each recipe's own best theta; the joint fit starts from them with E at each recipe's own E (and their
    median), keeps the best, and refits every bootstrap resample (each recipe's runs resampled with the seed
    `seed + index`, as its own fit would) from it."""
    model = _SharedE(law, recipes)
    es = [float(t[E_INDEX]) for t in starts]
    candidates = np.stack([model.join(starts, e) for e in [*es, float(np.median(es))]])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        solutions, values = model.refine(candidates)
        best = solutions[int(np.argmin(values))]
        members = [np.empty((0, model.p)) for _ in recipes]
        if bootstrap:
            weights = np.concatenate([bootstrap_weights(len(r.loss), bootstrap, seed + i) for i, r in enumerate(recipes)],
                                     axis=1)
            refits, _ = model.refine(np.repeat(best[None], bootstrap, 0), weights)
            members = model.split(refits)
    return [t[0] for t in model.split(best)], members


def _rss(law: str, recipes, thetas) -> float:
    total = 0.0
    for r, theta in zip(recipes, thetas, strict=True):
        residual = np.log(r.loss) - log_loss(law, r.n, r.d, theta)[0]
        total += float(np.sum(residual ** 2))
    return total


def aicc(rss: float, n_points: int, n_parameters: int) -> float:
    """Small-sample AIC of a least-squares-like fit: n log(RSS / n) + 2k + 2k(k + 1) / (n - k - 1) (plain AIC when
    n - k - 1 <= 0)."""
    value = n_points * np.log(max(rss, 1e-300) / n_points) + 2 * n_parameters
    if n_points - n_parameters - 1 > 0:
        value += 2 * n_parameters * (n_parameters + 1) / (n_points - n_parameters - 1)
    return float(value)


@dataclass(frozen=True)
class Sharing:
    """What the recipes' laws share, and why."""

    shared: tuple[str, ...]
    """("E",) or ()."""
    decided_by: str
    """auto (the AICc test), asked (share="E" or "none"), or a reason it was not tried."""
    aicc_separate: float = float("nan")
    aicc_shared: float = float("nan")
    own_e: dict = field(default_factory=dict)
    """recipe -> its E with the bootstrap interval when fitted alone."""

    def line(self) -> str:
        """One line for a person: what is shared and on what grounds."""
        own = ", ".join(f"{k} {v.value:.3g} [{v.low:.3g}, {v.high:.3g}]" for k, v in self.own_e.items())
        test = (f"AICc {self.aicc_shared:.1f} shared vs {self.aicc_separate:.1f} separate"
                if np.isfinite(self.aicc_shared) else "")
        what = "one E for all recipes" if self.shared else "an E per recipe"
        reason = {"auto": f"the data do not tell the floors apart ({test})" if self.shared else
                          f"the floors differ by more than the parameters saved ({test})",
                  "asked": "as asked"}.get(self.decided_by, self.decided_by)
        return f"sharing: {what}: {reason}" + (f"; each alone: E {own}" if own else "")

    def as_dict(self) -> dict:
        """{"shared", "decided_by", "aicc_separate", "aicc_shared", "own_e"}."""
        return {"shared": list(self.shared), "decided_by": self.decided_by, "aicc_separate": self.aicc_separate,
                "aicc_shared": self.aicc_shared, "own_e": {k: v.as_dict() for k, v in self.own_e.items()}}


@dataclass(frozen=True)
class RecipeLaw:
    """One recipe's fitted law: its optimum, its bootstrap members, the calibration that scales them, its runs."""

    recipe: Recipe
    theta: np.ndarray
    members: np.ndarray = field(repr=False)
    calibration: Calibration = field(repr=False)
    task: object | None = field(default=None, repr=False)
    """analysis.downstream.DownstreamFit of the recipe's (loss, error) runs, or None."""

    @property
    def name(self) -> str:
        """The recipe's name."""
        return self.recipe.name


@dataclass(frozen=True)
class RecipeFits:
    """Every recipe's law, fitted with or without a shared E (`fit_recipes`)."""

    law: str
    laws: tuple[RecipeLaw, ...]
    sharing: Sharing
    bootstrap: int
    seed: int = 0
    metric: str = "loss"
    """What the losses are: loss (nats per token), bpb, or a label the caller chose."""
    task_name: str | None = None
    higher_is_better: bool = False
    """The task metric is an accuracy (reported as 1 - the error the laws use)."""

    @property
    def names(self) -> list[str]:
        """The recipes' names, in their order."""
        return [law.name for law in self.laws]

    def law_of(self, name: str) -> RecipeLaw:
        """The fitted law of the recipe `name` (KeyError naming the recipes otherwise)."""
        for law in self.laws:
            if law.name == name:
                return law
        raise KeyError(f"no recipe {name!r}; the recipes are {self.names}")

    def compute_range(self) -> tuple[float, float]:
        """The smallest and largest training compute 6 N D among every recipe's runs."""
        c = np.concatenate([6 * law.recipe.n * law.recipe.d for law in self.laws])
        return float(c.min()), float(c.max())


def fit_recipes(recipes, *, law: str = "chinchilla", share: str = "auto", bootstrap: int = 1000, seed: int = 0,
                calibrate: bool = True, same_eval: bool = True, metric: str = "loss", task_name: str | None = None,
                higher_is_better: bool = False) -> RecipeFits:
    """A law per recipe, sharing E across recipes when the data cannot tell their floors apart (the module docstring).

    recipes: `Recipe`s (two or more; `check_recipes` refuses what cannot be compared). share: auto (the AICc
    test), E (always one E) or none. same_eval: the recipes are evaluated on the same text (False: never share E).
    calibrate: measure the backtest that scales the members (as `fit` does). A task metric on the recipes
    (`Recipe.metric`, an error) gets its task law per recipe."""
    recipes = list(recipes)
    check_recipes(recipes, law)
    if bootstrap < 2:  # compare_at would state P = 1.00 and zero-width intervals from the point alone
        raise CompareInputError(f"bootstrap: {bootstrap}; comparing needs bootstrap members (>= {MIN_MEMBERS})")
    if share not in SHARE_CHOICES:
        raise CompareInputError(f"share: {share!r} is not one of {list(SHARE_CHOICES)}")
    has_task = [r.metric is not None for r in recipes]
    if any(has_task) and not all(has_task):
        raise CompareInputError("a task metric is given for some recipes and not others; give it for every recipe")
    alone = [fit_law(law, r.n, r.d, r.loss, bootstrap=bootstrap, seed=seed + i) for i, r in enumerate(recipes)]
    own_e = {r.name: f.intervals()["E"] for r, f in zip(recipes, alone, strict=True)}
    thetas = [np.asarray(f.theta, float) for f in alone]
    members = [np.asarray(f.bootstrap, float) for f in alone]
    shared = False
    n_points = sum(len(r.loss) for r in recipes)
    p = PARAMETER_COUNT[law]
    score_separate = aicc(_rss(law, recipes, thetas), n_points, len(recipes) * p)
    score_shared = float("nan")
    if not same_eval:
        decided = "not tried: the recipes are evaluated on different texts, so their floors differ"
    elif share == "none":
        decided = "asked"
    else:
        joint_thetas, joint_members = fit_shared_e(law, recipes, thetas, bootstrap=bootstrap, seed=seed)
        score_shared = aicc(_rss(law, recipes, joint_thetas), n_points, len(recipes) * (p - 1) + 1)
        shared = share == "E" or score_shared <= score_separate
        decided = "asked" if share == "E" else "auto"
        if shared:
            thetas, members = joint_thetas, joint_members
    sharing = Sharing(("E",) if shared else (), decided, score_separate, score_shared, own_e)
    if not calibrate:
        calibrations = [Calibration.none("not asked for")] * len(recipes)
    elif shared:
        # one pooled one-step factor; the growth with distance is each recipe's own (its ladder, its residuals)
        pooled = shared_backtest(law, recipes, seed=seed)
        calibrations = [_with_distance(pooled, law, r, f) for r, f in zip(recipes, alone, strict=True)]
    else:
        calibrations = [backtest_calibration(law, r.n, r.d, r.loss, seed=seed, fit=f)
                        for r, f in zip(recipes, alone, strict=True)]
    tasks: list = [None] * len(recipes)
    if all(has_task):
        from proxyscale.analysis.downstream import DownstreamInputError, fit_downstream

        for i, r in enumerate(recipes):
            try:  # the same seed and rows as the recipe's loss law: member b of both is one resample
                tasks[i] = fit_downstream(r.loss, r.metric, bootstrap=bootstrap, seed=seed + i, calibrate=calibrate,
                                          metric_name=task_name or "metric")
            except DownstreamInputError as error:
                raise CompareInputError(f"recipe {r.name!r}: {error}") from None
    laws = tuple(RecipeLaw(r, t, m, c, task) for r, t, m, c, task in zip(recipes, thetas, members, calibrations, tasks,
                                                                          strict=True))
    return RecipeFits(law, laws, sharing, bootstrap, seed, metric, task_name, higher_is_better)


def shared_backtest(law: str, recipes, *, seed: int = 0, level: float = 0.95) -> Calibration:
    """The backtest of the shared-E model: each recipe's largest sizes held out (`largest_size_split`), the shared
    model refitted on the rest with its bootstrap, its prediction band (members plus drawn residuals) scored on
    every recipe's held-out runs, pooled into one factor."""
    splits = [largest_size_split(r.n) for r in recipes]
    if any(s is None for s in splits):
        sizes = min(len(np.unique(r.n)) for r in recipes)
        return Calibration.none(f"{sizes} model sizes: holding out the largest leaves fewer than 3")
    rest = [Recipe.of(r.name, r.n[~s], r.d[~s], r.loss[~s]) for r, s in zip(recipes, splits, strict=True)]
    if any(len(r.loss) <= PARAMETER_COUNT[law] + 1 or len(np.unique(r.d)) < 3 for r in rest):
        return Calibration.none("the runs below the held-out ones cannot identify the law")
    starts = [np.asarray(fit_law(law, r.n, r.d, r.loss, seed=seed + i).theta, float) for i, r in enumerate(rest)]
    thetas, members = fit_shared_e(law, rest, starts, bootstrap=MIN_MEMBERS, seed=seed)
    residuals = np.concatenate([np.log(r.loss) - log_loss(law, r.n, r.d, t)[0]
                                for r, t in zip(rest, thetas, strict=True)])
    noise = noise_draws(residuals, len(recipes) * (PARAMETER_COUNT[law] - 1) + 1)
    pooled: list[list[np.ndarray]] = [[], [], [], []]
    for r, s, theta, boot in zip(recipes, splits, thetas, members, strict=True):
        point = log_loss(law, r.n[s], r.d[s], theta)[0]
        member_logs = log_loss(law, r.n[s], r.d[s], boot)
        member_logs = member_logs[np.isfinite(member_logs).all(axis=1)]
        low, high = predictive_band(point, member_logs if len(member_logs) else point[None], noise, level=level,
                                    seed=seed)
        for bucket, values in zip(pooled, (np.log(r.loss[s]), point, low, high), strict=True):
            bucket.append(values)
    held = int(sum(s.sum() for s in splits))
    split = f"each recipe's largest sizes held out ({held} runs), the shared-E model fitted on the runs below"
    return Calibration.measure(*(np.concatenate(b) for b in pooled), split=split, level=level)


# ------------------------------------------------------------------------------------------- along a path

@dataclass(frozen=True)
class Target:
    """Where recipes are compared: at `flops` (each at its own compute-optimal N, D) or at (`n`, `d`)."""

    flops: float | None = None
    n: float | None = None
    d: float | None = None

    def __post_init__(self) -> None:
        if (self.flops is None) == (self.n is None and self.d is None) or ((self.n is None) != (self.d is None)):
            raise CompareInputError("target: give flops, or both n and d (not both kinds)")
        for name in ("flops", "n", "d"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise CompareInputError(f"target {name}: {value!r}; it must be a positive number")

    @property
    def compute(self) -> float:
        """The target's training compute (6 N D at a given N, D)."""
        return float(self.flops) if self.flops is not None else 6.0 * float(self.n) * float(self.d)

    def as_dict(self) -> dict:
        """{"flops"} or {"n", "d", "flops"}, with the path the comparison runs along."""
        if self.flops is not None:
            return {"flops": self.flops, "path": "each recipe's compute-optimal N and D"}
        return {"n": self.n, "d": self.d, "flops": self.compute, "path": f"tokens per parameter D / N = {self.d / self.n:.4g}"}


def _log_loss_along(law: str, theta: np.ndarray, compute: np.ndarray, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """(log L, N) along the path at each compute, for each row of theta: shapes (K, G)."""
    theta = np.atleast_2d(np.asarray(theta, float))
    compute = np.asarray(compute, float)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if target.flops is None:
            ratio = float(target.d) / float(target.n)
            n = np.sqrt(compute / (6.0 * ratio))
            return log_loss(law, n, ratio * n, theta), np.broadcast_to(n, (len(theta), len(compute)))
        if law == "chinchilla":
            a, b, e, alpha, beta = (theta[:, k, None] for k in range(5))
            n, d = compute_optimal_allocation(compute[None, :], A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)
            return log_sum_exp3(*lse_terms(np.log(n), np.log(d), theta))[0], n
        la, lb, le, eta = (theta[:, k, None] for k in range(4))
        log_m = (lb - la) / (2 * eta)  # the loss-minimising tokens per parameter, the same at every compute
        log_c = np.log(compute)[None, :]
        log_l = log_sum_exp3(la + eta * (log_m - log_c), lb - eta * (log_m + log_c), le + 0.0 * log_c)[0]
        return log_l, np.sqrt(compute[None, :] / (6.0 * np.exp(log_m)))


@dataclass(frozen=True)
class RecipePath:
    """One recipe's compared quantity along a compute grid: the point (G,) and the calibrated members (B, G)."""

    compute: np.ndarray
    point: np.ndarray
    members: np.ndarray
    loss_point: np.ndarray
    loss_members: np.ndarray
    n_point: np.ndarray
    n_members: np.ndarray
    collapsed: CollapsedSides | None = field(default=None, repr=False)
    """Where the bootstrap collapsed onto the point on a side and the members were spread to the distance floor
    there (`calibrate_members`); None without a distance model."""


def recipe_path(fits: RecipeFits, name: str, compute, target: Target) -> RecipePath:
    """The recipe's loss (and task error, when it has a task law) along `compute` on the target's path: the point
    prediction and the members, each member's log deviation from the point scaled by the calibration factor (a side
    the bootstrap collapsed onto the point: spread to the distance floor, `calibrate_members`)."""
    law = fits.law_of(name)
    compute = np.atleast_1d(np.asarray(compute, float))
    point, n_point = _log_loss_along(fits.law, law.theta, compute, target)
    boot = law.members if len(law.members) else law.theta[None]
    members, n_members = _log_loss_along(fits.law, boot, compute, target)
    # every path spends C = 6 N D, so its D is C / 6N: a target past the ladder's longest runs counts as far out
    d_path = compute / (6.0 * n_point[0])
    collapsed = collapsed_sides(law.calibration, point[0], members, n_point[0], d=d_path)
    # members on the point together are ordered by a permutation of the recipe's own (seed, index): two recipes with no
    # spread are then not spread in lockstep, which would keep their difference at zero width
    members = calibrate_members(law.calibration, point[0], members, n_point[0], d=d_path,
                                tie_seed=(fits.seed, fits.names.index(name)))
    loss_point, loss_members = np.exp(point[0]), np.exp(members)
    value, spread = loss_point, loss_members
    if law.task is not None:
        from proxyscale.analysis.downstream import error_of_loss

        task = law.task
        value = np.clip(task.error(loss_point), 0.0, 1.0)
        picks = task.bootstrap if len(task.bootstrap) else task.theta[None]
        picks = picks[np.arange(len(loss_members)) % len(picks)]  # member b of both laws: one resample
        with np.errstate(over="ignore", invalid="ignore"):
            err = error_of_loss(loss_members, picks[:, 0, None], picks[:, 1, None], picks[:, 2, None])
        spread = np.clip(value + task.factor * (err - value), 0.0, 1.0)
    return RecipePath(compute, np.asarray(value, float), np.asarray(spread, float), loss_point, loss_members,
                 np.asarray(n_point[0], float), np.asarray(n_members, float), collapsed)


def _with_distance(calibration: Calibration, law: str, recipe: Recipe, fit) -> Calibration:
    """The calibration with the recipe's own distance model (how its held-out error grows beyond its ladder), when
    this proxyscale measures one (analysis/predictive.distance_model)."""
    import dataclasses

    from proxyscale.analysis import predictive

    if not hasattr(predictive, "distance_model") or "distance" not in {f.name for f in dataclasses.fields(calibration)}:
        return calibration
    return dataclasses.replace(calibration, distance=predictive.distance_model(law, recipe.n, recipe.d, recipe.loss,
                                                                              fit=fit))


COLLAPSED_WIDTH = 1e-12
"""A side of the members' band (log) at or below this has collapsed onto the point: the bootstrap has no spread there."""


@dataclass(frozen=True)
class CollapsedSides:
    """Where a recipe's bootstrap members collapsed onto the point along a path (`collapsed_sides`), per grid point:
    whether the band below (above) the point has no spread while the distance model asks for some, and that floor."""

    below: np.ndarray
    above: np.ndarray
    floor: np.ndarray
    """The distance model's half-width (log, the law's mean) each collapsed side was set to."""


def _band_sides(calibration: Calibration, point: np.ndarray, members: np.ndarray, n: np.ndarray, level: float,
                d: np.ndarray | None):
    """(below, above, floor) at each point: the members' band's half-widths each side of the point (the `level`
    percentiles of the finite members) and the distance model's half-width there; None without a distance model or
    finite members."""
    distance = getattr(calibration, "distance", None)
    finite = members[np.isfinite(members).all(axis=1)] if len(members) else members
    if distance is None or not len(finite):
        return None
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"):
        low, high = np.percentile(finite, [tail, 100 - tail], axis=0)
    below, above = np.maximum(point - low, 0.0), np.maximum(high - point, 0.0)
    floor = np.broadcast_to(np.asarray(distance.half_width(distance.distance_of(n, d), noise=False), float),
                            below.shape)
    return below, above, floor


def collapsed_sides(calibration: Calibration, point, members, n, level: float = 0.95, d=None) -> CollapsedSides | None:
    """Where the bootstrap members (B, G) of log L collapsed onto the point on a side (that side's `level` percentile
    within COLLAPSED_WIDTH of it) while the distance model's floor there is wider: the sides `calibrate_members` sets
    to the floor. None without a distance model (nothing is set then)."""
    point, members, n = (np.asarray(v, float) for v in (point, members, n))
    sides = _band_sides(calibration, point, members, n, level, d)
    if sides is None:
        return None
    return _collapsed(*sides)


def _collapsed(below: np.ndarray, above: np.ndarray, floor: np.ndarray) -> CollapsedSides:
    """The sides of the band (half-widths below / above the point) with no spread where the floor asks for some."""
    wide = floor > COLLAPSED_WIDTH
    return CollapsedSides((below <= COLLAPSED_WIDTH) & wide, (above <= COLLAPSED_WIDTH) & wide, np.array(floor))


def _tie_order(count: int, seed: int | tuple[int, ...] | None) -> np.ndarray:
    """The order members that tie (sit on the point together) take: their index, or a permutation drawn with `seed`."""
    return np.arange(count) if seed is None else np.random.default_rng(seed).permutation(count)


def _spread_collapsed(deviation: np.ndarray, lower: float, upper: float, tie: np.ndarray, *, below: bool,
                      above: bool, level: float) -> np.ndarray:
    """New log deviations (K,) for the finite members at one point where the band collapsed on a side (`below`,
    `above`): the members keep their order (ties, members on the point, in `tie`'s order) and are placed on a shape
    that is symmetric in rank, the collapsed side mirroring the other side's deviations (both collapsed, or nothing to
    mirror: normal quantiles), each side scaled so its `level` percentile is `lower` / `upper` from the point."""
    count = len(deviation)
    key = np.where(np.abs(deviation) <= COLLAPSED_WIDTH, 0.0, deviation)
    order = np.lexsort((tie, key))  # by deviation; members on the point in the tie order
    rank = (np.arange(count) + 0.5) / count
    tail = (1 - level) / 2 * 100

    def tails(shape: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(shape, [tail, 100 - tail])
        return float(-low), float(high)

    shape = np.zeros(count)
    if below != above:
        # the side with spread, as magnitudes, mirrored about the median rank: the member at rank u sits where the
        # other side's |deviation| quantile |2u - 1| is, below the point for u < 1/2 and above it for u > 1/2
        source = np.maximum(key if below else -key, 0.0)
        shape = np.sign(rank - 0.5) * np.quantile(source, np.abs(2 * rank - 1))
    low, high = tails(shape)
    if min(low, high) <= COLLAPSED_WIDTH:
        from scipy.stats import norm

        shape = norm.ppf(rank)
        low, high = tails(shape)
    out = np.empty(count)
    out[order] = np.where(shape < 0, shape * lower / low, shape * upper / high)
    return out


def calibrate_members(calibration: Calibration, point: np.ndarray, members: np.ndarray, n: np.ndarray,
                      level: float = 0.95, d: np.ndarray | None = None, *,
                      tie_seed: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Members (B, G) of log L calibrated as `fit` calibrates the law's mean band at each point: each side of the band scaled by
    the backtest's one-step factor and floored at the held-out error's spread at that point's extrapolation distance (the farther
    of N and, given d, D; the growth alone, as predict_loss does for the mean; none without a distance model); each member's
    deviation from the point is scaled by its side's ratio, so the members' percentiles are the calibrated band and their
    order (and the pairing) is kept.

    Where the bootstrap collapsed onto the point on a side (`collapsed_sides`: e.g. E pinned at its bound 0 in every
    member, every member on or above the point) scaling cannot widen that side, and it would stay of width ~0 at any
    distance, with P(a lower) and P(best) read from members that never cross the point. There the members are spread
    instead (`_spread_collapsed`): they keep their order, the collapsed side mirrors the other side's deviations (both
    sides collapsed: normal quantiles) scaled so its percentile is the floor, and the side with spread keeps its
    calibrated width. So every interval, difference and probability built from the members holds at least the floor
    on both sides, and the pairing keeps the bootstrap's ranks. Members that sit on the point together are ordered by
    `tie_seed`'s permutation (None: by index): the caller gives each recipe its own, so two recipes with no spread do
    not move in lockstep (their difference would keep zero width); nothing in a collapsed bootstrap says they co-vary."""
    point, members, n = (np.asarray(v, float) for v in (point, members, n))
    base = float(getattr(calibration, "one_step_factor", calibration.factor))
    with np.errstate(invalid="ignore", divide="ignore"):
        deviation = members - point
        if getattr(calibration, "distance", None) is None:
            return point + base * deviation
        sides = _band_sides(calibration, point, members, n, level, d)
        if sides is None:
            return members
        below, above, floor = sides
        lower = np.where(below > COLLAPSED_WIDTH, np.maximum(base * below, floor) / np.maximum(below, COLLAPSED_WIDTH),
                         base)
        upper = np.where(above > COLLAPSED_WIDTH, np.maximum(base * above, floor) / np.maximum(above, COLLAPSED_WIDTH),
                         base)
        out = point + np.where(deviation < 0, lower * deviation, upper * deviation)
        hit = _collapsed(below, above, floor)
        collapsed = hit.below | hit.above
        if not collapsed.any():
            return out
        out = np.array(out, float).reshape(members.shape)
        rows = np.flatnonzero(np.isfinite(members).all(axis=1))
        tie = _tie_order(len(members), tie_seed)[rows]
        point_g = np.broadcast_to(point, below.shape)
        for g in np.flatnonzero(np.atleast_1d(collapsed)):
            out[rows, g] = point_g[g] + _spread_collapsed(
                deviation[rows, g], max(base * below[g], floor[g]), max(base * above[g], floor[g]), tie,
                below=bool(np.atleast_1d(hit.below)[g]), above=bool(np.atleast_1d(hit.above)[g]), level=level)
        return out


def _interval(point: float, samples, level: float = 0.95) -> Interval:
    return percentile_interval(point, np.asarray(samples, float)[np.isfinite(samples)], level)


def recipe_table_fit(fits: RecipeFits, name: str, level: float = 0.95) -> TableFit:
    """The recipe's law as `proxyscale fit` holds one (analysis.table_fit.TableFit: its optimum, its bootstrap members,
    its calibration and its runs), so what `fit --target-flops` reports for it (N_opt, D_opt, L(C*): the calibration
    carried to the target and the profile over E where the bootstrap collapsed onto E = 0,
    analysis.predictive.calibrated_at_flops) comes from the same code, not a second calibration. Without a shared E
    this is `fit`'s fit of the recipe's runs (the bootstrap seeded seed + index, the backtest seed); with one, the joint
    law's optimum and members for this recipe with the pooled calibration."""
    from proxyscale.analysis.fit import ChinchillaFit
    from proxyscale.analysis.overtraining import OvertrainingFit

    law = fits.law_of(name)
    recipe, theta = law.recipe, np.asarray(law.theta, float)
    # the Huber objective on the log residuals, as both fitters report it (the profile over E compares against it)
    with np.errstate(all="ignore"):
        objective = float(huber(np.log(recipe.loss) - log_loss(fits.law, recipe.n, recipe.d, theta)[0],
                                HUBER_DELTA).sum())
    kind = ChinchillaFit if fits.law == "chinchilla" else OvertrainingFit
    fit = kind(theta=theta, objective=objective, n_points=len(recipe.loss), bootstrap=np.asarray(law.members, float),
               level=level)
    return TableFit(fits.law, fit, len(recipe.loss), len(law.members), law.calibration,
                    data={"n": recipe.n, "d": recipe.d, "loss": recipe.loss})


def _n_interval(fits: RecipeFits, name: str, path: RecipePath, target: Target, level: float) -> Interval:
    """The recipe's N at the target: at a compute, `fit`'s calibrated N_opt interval (`recipe_table_fit`); at a fixed
    (N, D), the given N (every member's, so the interval is the point)."""
    if target.flops is None:
        return _interval(float(path.n_point[0]), path.n_members[:, 0], level)
    return recipe_table_fit(fits, name, level).compute_optimal(float(target.flops))["n_opt"]


def _share_lower(diff: np.ndarray) -> float:
    """P(a lower) from paired member differences a - b: ties count half."""
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return float("nan")
    return float(np.mean(diff < 0) + 0.5 * np.mean(diff == 0))


def _crossing_cells(compute: np.ndarray, diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(computes, grid cells) where one difference curve (G,) changes sign: the crossing interpolated in log compute
    and the index i of the grid cell [i, i + 1] it lies in."""
    sign = np.sign(diff)
    where = np.flatnonzero((sign[:-1] * sign[1:] < 0) & np.isfinite(diff[:-1]) & np.isfinite(diff[1:]))
    x = np.log(compute)
    t = diff[where] / (diff[where] - diff[where + 1])
    return np.exp(x[where] + t * (x[where + 1] - x[where])), where


def _crossings(compute: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """The computes where one difference curve (G,) changes sign (interpolated in log compute)."""
    return _crossing_cells(compute, diff)[0]


@dataclass(frozen=True)
class Crossover:
    """Where a pair's point predictions cross along the path, with the members' interval, or not in the window."""

    a: str
    b: str
    window: tuple[float, float]
    flops: Interval | None
    """The crossing nearest the target (None: no crossing in the window)."""
    crossings: int
    lower_before: str | None
    lower_after: str | None
    share_of_members: float
    """Share of members that cross inside the window."""

    def as_dict(self) -> dict:
        """{"found", "window", "flops", "crossings", "lower_before", "lower_after", "share_of_members"}."""
        return {"found": self.flops is not None, "window": list(self.window),
                "flops": None if self.flops is None else self.flops.as_dict(), "crossings": self.crossings,
                "lower_before": self.lower_before, "lower_after": self.lower_after,
                "share_of_members": self.share_of_members}

    def line(self) -> str:
        """'crosses at C [low, high]: a lower below, b above' or 'no crossover in [C1, C2]'."""
        c1, c2 = self.window
        if self.flops is None:
            return (f"no crossover in [{c1:.3g}, {c2:.3g}] FLOPs ({self.share_of_members:.0%} of the members cross "
                    "there)")
        low = f"< {c1:.3g}" if self.flops.low <= c1 else f"{self.flops.low:.3g}"
        high = f"> {c2:.3g}" if not np.isfinite(self.flops.high) or self.flops.high >= c2 else f"{self.flops.high:.3g}"
        more = f" ({self.crossings} crossings; the one nearest the target)" if self.crossings > 1 else ""
        return (f"cross at {self.flops.value:.3g} FLOPs [{low}, {high}]{more}: {self.lower_before} lower below, "
                f"{self.lower_after} above ({self.share_of_members:.0%} of the members cross in [{c1:.3g}, {c2:.3g}])")


def crossover(fits: RecipeFits, a: str, b: str, target: Target, *, window: tuple[float, float] | None = None,
              points: int = PATH_POINTS, level: float = 0.95) -> Crossover:
    """The compute where recipes a and b cross along the target's path, with an interval from the members (module
    docstring), in `window` (default: the smallest run's compute to the larger of the target and the largest run)."""
    if window is None:
        low, high = fits.compute_range()
        window = (low, max(high, target.compute))
    grid = np.geomspace(window[0], window[1], points)
    pa, pb = recipe_path(fits, a, grid, target), recipe_path(fits, b, grid, target)
    diff = pa.point - pb.point
    cross, cells = _crossing_cells(grid, diff)
    k = min(len(pa.members), len(pb.members))
    member_diff = pa.members[:k] - pb.members[:k]
    member_cross = [_crossings(grid, row) for row in member_diff]
    share = float(np.mean([len(c) > 0 for c in member_cross])) if member_cross else 0.0
    if not len(cross):
        return Crossover(a, b, (float(window[0]), float(window[1])), None, 0, None, None, share)
    # the crossing nearest the target in log compute; which recipe is lower on each side is read from the sign of
    # the difference in the grid points on either side of THAT crossing (with an even number of crossings the
    # window's ends are on the same side, so they cannot say it)
    pick = int(np.argmin(np.abs(np.log(cross) - np.log(target.compute))))
    chosen = float(cross[pick])
    before, after = np.sign(diff[cells[pick]]), np.sign(diff[cells[pick] + 1])
    samples = []
    for row, c in zip(member_diff, member_cross, strict=True):
        if len(c):
            samples.append(float(c[np.argmin(np.abs(np.log(c) - np.log(chosen)))]))
        elif np.all(np.isfinite(row)):
            # never crosses in the window: already on the far side (crossed before it) or not yet (after it)
            samples.append(0.0 if np.sign(np.median(row)) == after else float("inf"))
    interval = percentile_interval(chosen, samples, level)
    before_lower = a if before < 0 else b
    after_lower = a if after < 0 else b
    return Crossover(a, b, (float(window[0]), float(window[1])), interval, len(cross), before_lower, after_lower, share)


# --------------------------------------------------------------------------------------------- the comparison

def verdict(p_a_lower: float, a: str, b: str, decide_at: float = DECIDE_AT, *, lower_is_better: bool = True) -> str:
    """'a lower' / 'b lower' (or better) when the probability is decisive, else 'no clear winner'."""
    word = "lower" if lower_is_better else "better"
    if p_a_lower >= decide_at:
        return f"{a} {word}"
    if p_a_lower <= 1 - decide_at:
        return f"{b} {word}"
    return "no clear winner"


def check_members(fits: RecipeFits) -> None:
    """Refuse (CompareInputError) fits with fewer than two bootstrap members per recipe: the point alone stands in
    for the members then, and every share and percentile of them reads P = 1.00 and zero width. (The command and
    `proxyscale.compare` refuse fewer than MIN_MEMBERS; the deciding planner's smaller ensembles pass here.)"""
    fewest = min(len(law.members) for law in fits.laws)
    if fewest < 2:
        raise CompareInputError(f"bootstrap: {fewest} members per recipe; a probability or an interval needs "
                                f"bootstrap members: fit with bootstrap >= {MIN_MEMBERS}")


def decision_probability(fits: RecipeFits, target: Target) -> dict[str, float]:
    """Each recipe's probability of being the best (lowest loss or error) at the target: the share of member
    indices at which it is lowest (members paired by index; the module docstring)."""
    check_members(fits)
    paths = [recipe_path(fits, name, [target.compute], target) for name in fits.names]
    k = min(len(p.members) for p in paths)
    stack = np.stack([p.members[:k, 0] for p in paths])  # (R, K)
    ok = np.isfinite(stack).all(axis=0)
    if not ok.any():
        return {name: float("nan") for name in fits.names}
    winners = np.argmin(stack[:, ok], axis=0)
    return {name: float(np.mean(winners == i)) for i, name in enumerate(fits.names)}


@dataclass(frozen=True)
class GroupResult:
    """One recipe at the target: its loss (and task metric), N at the target, with their intervals."""

    name: str
    loss: Interval
    n: Interval
    metric: Interval | None
    p_best: float
    n_runs: int

    def as_dict(self) -> dict:
        """{"name", "loss": {"value", "low", "high"}, "n", "metric" (a task only), "p_best", "runs"}."""
        out = {"name": self.name, "loss": self.loss.as_dict(), "n": self.n.as_dict(), "p_best": self.p_best,
               "runs": self.n_runs}
        if self.metric is not None:
            out["metric"] = self.metric.as_dict()
        return out


@dataclass(frozen=True)
class PairResult:
    """Two recipes at the target: the difference a - b of the compared quantity, P(a lower), the crossover."""

    a: str
    b: str
    difference: Interval
    p_a_lower: float
    verdict: str
    crossover: Crossover

    def as_dict(self) -> dict:
        """{"a", "b", "difference", "p_a_lower", "p_a_better", "verdict", "crossover"}; p_a_lower is of the compared
        quantity the laws use (loss, or a task's error), so it is also P(a better)."""
        return {"a": self.a, "b": self.b, "difference": self.difference.as_dict(), "p_a_lower": self.p_a_lower,
                "p_a_better": self.p_a_lower, "verdict": self.verdict, "crossover": self.crossover.as_dict()}


@dataclass(frozen=True)
class CollapsedFlag:
    """A recipe whose bootstrap collapsed onto the point at the target on a side (or both): that side of its interval
    is the distance model's floor there, not the bootstrap's (`calibrate_members` spread the members to it)."""

    recipe: str
    sides: tuple[str, ...]
    """("below",), ("above",) or ("below", "above"): the sides with no spread."""
    floor: float
    """The distance model's half-width (log, the law's mean) at the target the sides were set to."""
    e_at_bound: float
    """The share of the recipe's bootstrap members with E at its bound 0 (the usual cause)."""

    def line(self) -> str:
        """'recipe X: the bootstrap collapsed below the point (E at its bound 0 in 100% of its members); that side was
        set to the distance floor +-Y%'."""
        both = len(self.sides) == 2
        where = "onto the point on both sides" if both else f"{self.sides[0]} the point"
        cause = (f"E at its bound 0 in {self.e_at_bound:.0%} of its members" if self.e_at_bound > 0 else
                 "E off its bound in every member")
        which = "both sides were" if both else "that side was"
        return (f"recipe {self.recipe}: the bootstrap collapsed {where} ({cause}); {which} set to the distance floor "
                f"+-{self.floor:.2%} at the target (the law's mean), and its interval, P(best) and P(a lower) come from "
                "members spread to it")

    def as_dict(self) -> dict:
        """{"recipe", "sides", "floor", "e_at_bound", "line"}."""
        return {"recipe": self.recipe, "sides": list(self.sides), "floor": self.floor, "e_at_bound": self.e_at_bound,
                "line": self.line()}


def collapsed_flags(fits: RecipeFits, paths: dict) -> tuple[CollapsedFlag, ...]:
    """The recipes whose members collapsed onto the point at the target (the first point of each `RecipePath`)."""
    from proxyscale.analysis.predictive import e_at_bound_share

    flags = []
    for law in fits.laws:
        sides = paths[law.name].collapsed
        if sides is None:
            continue
        named = tuple(word for word, hit in (("below", sides.below), ("above", sides.above)) if bool(np.ravel(hit)[0]))
        if not named:
            continue
        e_share = e_at_bound_share(law.theta, law.members, law.recipe.loss)
        flags.append(CollapsedFlag(law.name, named, float(np.ravel(sides.floor)[0]), e_share))
    return tuple(flags)


@dataclass(frozen=True)
class Comparison:
    """The recipes compared at the target (`compare_at`); `to_dict` is `proxyscale compare --json`."""

    target: Target
    compared: str
    """What is compared: loss, bpb, or the task metric's name."""
    higher_is_better: bool
    groups: tuple[GroupResult, ...]
    best: str
    p_best: float
    decided: bool
    pairs: tuple[PairResult, ...]
    fits: RecipeFits = field(repr=False)
    decide_at: float = DECIDE_AT
    collapsed: tuple[CollapsedFlag, ...] = ()
    """Recipes whose bootstrap collapsed onto the point at the target on a side, set to the distance floor there."""

    @property
    def winner(self) -> str | None:
        """The best recipe when P(best) reaches decide_at, else None (no clear winner)."""
        return self.best if self.decided else None

    def calibration_dict(self) -> dict:
        """Each recipe's calibration (one shared backtest when E is shared)."""
        laws = self.fits.laws
        if self.fits.sharing.shared:
            return {"shared": True} | laws[0].calibration.as_dict()
        return {"shared": False, "recipes": {law.name: law.calibration.as_dict() for law in laws}}

    def to_dict(self) -> dict:
        """The comparison as `proxyscale compare --json` prints it."""
        return {"target": self.target.as_dict(), "law": self.fits.law, "metric": self.fits.metric,
                "compared": self.compared, "higher_is_better": self.higher_is_better,
                "sharing": self.fits.sharing.as_dict(), "bootstrap": self.fits.bootstrap, "decide_at": self.decide_at,
                "groups": [g.as_dict() for g in self.groups], "best": self.best, "p_best": self.p_best,
                "verdict": self.best if self.decided else "no clear winner",
                "pairs": [p.as_dict() for p in self.pairs], "calibration": self.calibration_dict(),
                "collapsed": [f.as_dict() for f in self.collapsed]}

    def lines(self) -> list[str]:
        """The comparison for a person: one line per recipe, per pair, and what was shared and calibrated."""
        t = self.target
        where = (f"C = {t.flops:.3g} FLOPs (each recipe at its compute-optimal N, D)" if t.flops is not None else
                 f"N = {t.n:.3g}, D = {t.d:.3g} (C = {t.compute:.3g} FLOPs)")
        unit = {"loss": "loss (nats per token)", "bpb": "bits per byte"}.get(self.fits.metric, self.fits.metric)
        task = self.fits.laws[0].task is not None
        what = (f"{self.compared} ({'higher' if self.higher_is_better else 'lower'} is better), through each recipe's "
                f"task law of its {unit}" if task else unit)
        out = [f"{len(self.groups)} recipes, {self.fits.law} law each, compared on {what} at {where}:"]
        width = max(len(g.name) for g in self.groups)
        for g in sorted(self.groups, key=lambda g: -g.p_best):
            metric = (f"   {self.compared} {g.metric.value:.4g} [{g.metric.low:.4g}, {g.metric.high:.4g}]"
                      if g.metric is not None else "")
            out.append(f"  {g.name:<{width}}  {g.loss.value:.4f} [{g.loss.low:.4f}, {g.loss.high:.4f}]{metric}   "
                       f"N {g.n.value:.3g}   P(best) {g.p_best:.2f}   ({g.n_runs} runs)")
        out.extend(f"  flag: {flag.line()}" for flag in self.collapsed)
        call = (f"best: {self.best} (P = {self.p_best:.2f})" if self.decided else
                f"no clear winner: {self.best} leads with P(best) = {self.p_best:.2f} < {self.decide_at:g}")
        out.append(call)
        word = "lower" if not self.higher_is_better else "better"

        def crossing(c: Crossover) -> str:  # a task metric: lower error is better, whichever way it is reported
            return c.line().replace(" lower below, ", " better below, ") if task else c.line()

        for p in self.pairs:
            d = p.difference
            out.append(f"  {p.a} - {p.b}: {d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}], P({p.a} {word}) "
                       f"{p.p_a_lower:.2f} -> {p.verdict}; {crossing(p.crossover)}")
        out.append(self.fits.sharing.line())
        for law in (self.fits.laws[:1] if self.fits.sharing.shared else self.fits.laws):
            prefix = "" if self.fits.sharing.shared else f"{law.name}: "
            out.append(f"{prefix}{law.calibration.line()}")
        return out


def compare_at(fits: RecipeFits, target: Target, *, decide_at: float = DECIDE_AT,
               window: tuple[float, float] | None = None, level: float = 0.95) -> Comparison:
    """Every recipe at the target with its interval, every pair's difference with P(a lower) and its crossover, the
    best recipe with P(best), or no clear winner (the module docstring)."""
    if not 0.5 < decide_at < 1:
        raise CompareInputError(f"decide_at: {decide_at!r}; it must lie in (0.5, 1), e.g. {DECIDE_AT}")
    check_members(fits)
    at = [target.compute]
    paths = {name: recipe_path(fits, name, at, target) for name in fits.names}
    p_best = decision_probability(fits, target)
    task = fits.laws[0].task is not None
    groups = []
    for law in fits.laws:
        path = paths[law.name]
        loss = _interval(float(path.loss_point[0]), path.loss_members[:, 0], level)
        n = _n_interval(fits, law.name, path, target, level)
        metric = None
        if task:
            value, members = float(path.point[0]), path.members[:, 0]
            if fits.higher_is_better:
                value, members = 1 - value, 1 - members
            metric = _interval(value, members, level)
        groups.append(GroupResult(law.name, loss, n, metric, p_best[law.name], len(law.recipe.loss)))
    pairs = []
    names = fits.names
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = paths[a], paths[b]
            k = min(len(pa.members), len(pb.members))
            diff = pa.members[:k, 0] - pb.members[:k, 0]
            point = float(pa.point[0] - pb.point[0])
            p = _share_lower(diff)
            if task and fits.higher_is_better:  # report the metric's own difference (accuracy a - b)
                point, diff = -point, -diff
            pairs.append(PairResult(a, b, _interval(point, diff, level), p,
                                    verdict(p, a, b, decide_at, lower_is_better=not (task and fits.higher_is_better)),
                                    crossover(fits, a, b, target, window=window, level=level)))
    best = max(names, key=lambda name: (p_best[name], -float(paths[name].point[0])))
    compared = (fits.task_name or "task") if task else fits.metric
    return Comparison(target, compared, bool(task and fits.higher_is_better), tuple(groups), best, p_best[best],
                      bool(p_best[best] >= decide_at), tuple(pairs), fits, decide_at, collapsed_flags(fits, paths))


# ---------------------------------------------------------------------------------------------------- figure

def plot_comparison(comparison: Comparison, path: str | Path, *, points: int = 60) -> Path:
    """Each recipe's loss (or task metric) along the target's path with its 95% band out to the target, its runs,
    the target, and each pair's crossover (dashed, its interval shaded)."""
    from proxyscale.analysis.plots import _pyplot, _save

    plt = _pyplot()
    fits, target = comparison.fits, comparison.target
    low, high = fits.compute_range()
    grid = np.geomspace(low, max(high, target.compute), points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    task = fits.laws[0].task is not None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, law in enumerate(fits.laws):
        colour = colours[i % len(colours)]
        p = recipe_path(fits, law.name, grid, target)
        value, members = p.point, p.members
        if task and fits.higher_is_better:
            value, members = 1 - value, 1 - members
        finite = members[np.isfinite(members).all(axis=1)]
        if len(finite):
            lo, hi = np.percentile(finite, [2.5, 97.5], axis=0)
            ax.fill_between(grid, lo, hi, color=colour, alpha=0.18)
        ax.plot(grid, value, "-", color=colour, label=f"{law.name} ({len(law.recipe.loss)} runs)")
        r = law.recipe
        observed = r.loss if not task else (1 - r.metric if fits.higher_is_better else r.metric)
        ax.scatter(6 * r.n * r.d, observed, s=10, color=colour, alpha=0.6)
        g = next(g for g in comparison.groups if g.name == law.name)
        at = g.metric if task else g.loss
        ax.errorbar([target.compute], [at.value], yerr=[[at.value - at.low], [at.high - at.value]], fmt="*",
                    color=colour, markersize=9, capsize=3)
    for pair in comparison.pairs:
        c = pair.crossover
        if c.flops is None:
            continue
        ax.axvline(c.flops.value, color="grey", linestyle="--", linewidth=1)
        span_low = max(c.flops.low, grid[0]) if np.isfinite(c.flops.low) else grid[0]
        span_high = min(c.flops.high, grid[-1]) if np.isfinite(c.flops.high) else grid[-1]
        ax.axvspan(span_low, span_high, color="grey", alpha=0.08)
        ax.annotate(f"{pair.a} / {pair.b}\n{c.flops.value:.2g}", (c.flops.value, ax.get_ylim()[1]), fontsize=7,
                    ha="center", va="top")
    ax.axvline(target.compute, color="red", linewidth=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    label = comparison.compared if task else {"loss": "loss (nats per token)", "bpb": "bits per byte"}.get(
        fits.metric, fits.metric)
    ax.set_ylabel(label)
    ax.set_title("each recipe's law, 95% band to the target" +
                 (", crossovers dashed" if any(p.crossover.flops is not None for p in comparison.pairs) else ""),
                 fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)
