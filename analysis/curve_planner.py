"""The planner on curves and forks: which action most sharpens N_opt(C*) and L(C*) per FLOP it adds.

The allowed actions (`Action`) are runs with a lineage:
- `new_width`: the first constant-LR segment of a width not started yet;
- `extend`: the next constant-LR segment of a stable run (a fork of the previous segment's end);
- `cooldown`: a WSD cooldown forked from a stable segment's end (an annealed (N, D) cell);
- `fresh`: a run from scratch with its own schedule (a cosine ladder, where the schedule must be cosine).
An action is available once its parent has finished, is running, or is picked earlier in the same
batch (the run then waits for its parent through Ray); its cost is its own FLOPs only.

How an action is scored. The curve law (analysis.curve_law) is fitted to every eval point of every
run, with a bootstrap over lineages. Each ensemble member gives the targets q = (log N_opt(C*),
log L(C*)) of the reduced L(N, D) for the target schedule, and the log loss it predicts at the
action's own eval points (its last point and one mid-way, for a stable segment a whole stretch of
curve). Treating these as jointly Gaussian across members, observing the action's points y with
noise s^2 I shrinks Var(q_i) by S_qy (S_yy + s^2 I)^-1 S_yq. The score is that shrinkage relative to
Var(q_i), summed over the two targets, per PFLOP of the action's own compute; a batch is built
greedily, conditioning on each pick, and on runs already in flight first.

Before the law can be fitted over sizes (fewer than three widths with data, or an exponent at its
bound), actions spread: the first segments of the widths farthest apart in log N, then their
cheapest cooldowns.

The form refitted after every action is `settings.law` (the Tissue form under `settings.clock`, or the
multi-power law). `final_estimate` is what the planner reports once it stops: the form (and clock) the
backtest keeps (analysis/predictive.py: the largest width and the longest runs held out) and N_opt,
D_opt, L(C*) with intervals calibrated by that backtest, the one calibration every command uses; the
ensemble's target members are scaled about the point fit by the same factor (`target_members`). The loop's
refits resample lineages (cheap, and warm-started); so does the final estimate's ensemble by default, or a wild
cluster bootstrap (`settings.final_bootstrap`; what each measured: `final_estimate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from proxyscale.analysis.curve_law import Curve, check_bootstrap, fit_curve_law
from proxyscale.analysis.fit import Interval
from proxyscale.analysis.multipower import fit_multipower
from proxyscale.analysis.planner import TargetEstimate
from proxyscale.analysis.predictive import (
    MIN_MEMBERS,
    Calibration,
    CurveBacktest,
    backtest_curve_forms,
    candidate_forms,
    carry_to_target,
    fit_curve_form,
)

KINDS = ("new_width", "extend", "cooldown", "fresh")
KIND_TEXT = {"new_width": "a new width's stable run", "extend": "extending a stable run",
             "cooldown": "a cooldown fork", "fresh": "a fresh run"}
PFLOP = 1e15
EXPONENT_FLOOR = 0.02
DONE = ("finished",)
IN_FLIGHT = ("pending", "running", "cancelled")
"""A cancelled run resumes with the next launch of the sweep: still under way for the planner."""


@dataclass(frozen=True, eq=False)
class Action:
    """One allowed run and where its curve would be observed."""

    key: str
    kind: str
    parent: str | None
    width: int
    n_params: float
    multipliers: np.ndarray
    """LR multiplier (peak 1) of every step 1..T of its whole history, the parent's included."""
    batch_tokens: float
    start_step: int
    """The step it starts from (0 from scratch)."""
    eval_steps: np.ndarray
    """Its own evaluation steps (> start_step)."""
    flops: float
    """Its own compute."""
    group: str
    """Its lineage root (the bootstrap resamples lineages)."""

    @property
    def tokens(self) -> float:
        return len(self.multipliers) * self.batch_tokens

    def curve(self, losses=None, steps=None) -> Curve:
        steps = self.eval_steps if steps is None else np.asarray(steps, int)
        losses = np.full(len(steps), np.nan) if losses is None else losses
        return Curve(name=self.key, lrs=self.multipliers, steps=steps, losses=losses, n_params=self.n_params,
                     batch_tokens=self.batch_tokens, group=self.group, peak_lr=1.0)

    def observed_steps(self, count: int = 2) -> np.ndarray:
        """The points scored: the last eval step and (count - 1) more spread over its own stretch."""
        steps = self.eval_steps
        if len(steps) <= count:
            return steps
        picks = np.unique(np.round(np.linspace(0, len(steps) - 1, count)).astype(int))
        return steps[picks]


@dataclass(frozen=True, kw_only=True)
class CurvePlannerSettings:
    target_flops: float
    target_schedule: Callable[[int], np.ndarray]
    """LR multipliers of a target run of T steps (the ladder's annealed schedule)."""
    target_batch_tokens: float
    budget_flops: float
    batch: int = 1
    max_run_flops: float | None = None
    ensemble: int = 64
    seed: int = 0
    min_noise: float = 2e-3
    points_per_action: int = 2
    clock: str = "relative"
    law: str = "tissue"
    """The curve form refitted after every action: tissue (with `clock`) or mpl (analysis/multipower.py)."""
    calibration_factor: float = 1.0
    """Scales the ensemble's target members about the point fit (a backtest's Calibration.factor)."""
    final_bootstrap: str = "lineage"
    """The bootstrap of `final_estimate`'s ensemble (analysis.curve_law.BOOTSTRAP_METHODS): lineages resampled, as
    every refit of the loop does, or a wild bootstrap ("wild-jackknife": Webb weights per lineage on leave-one-
    lineage-out residuals). The wild ones measured narrower and covered less in bench_planner (docs/trust.md)."""

    final_interval: str = "basic"
    """How `final_estimate` reads its members: "basic" (the default: their 2.5th and 97.5th percentiles reflected
    about the point in log, Davison and Hinkley 1997 eq. 5.6: members that lean above the point put the interval
    below it) or "percentile" (the percentiles as they are). Chosen on bench_planner v2's seeds 0-7 (basic 92%,
    percentile 88% of 40 pairs), then tested on fresh seeds 8-15: basic 37/40 (exact 95% interval 80%-98%),
    percentile 34/40, at the same widths (docs/trust.md, "Planner coverage")."""

    def __post_init__(self) -> None:
        check_bootstrap(self.final_bootstrap)
        if self.final_interval not in FINAL_INTERVALS:
            raise ValueError(f"final_interval: {self.final_interval!r} is not one of {list(FINAL_INTERVALS)}")


@dataclass(frozen=True)
class ActionProposal:
    action: Action
    score: float
    reason: str


CurveEstimate = TargetEstimate
"""The curve law's fit (a CurveLawFit) and N_opt, D_opt, L at C*: analysis.planner's TargetEstimate."""


FINAL_INTERVALS = ("percentile", "basic")


def basic_interval(interval: Interval) -> Interval:
    """The basic bootstrap interval of a percentile interval of a positive quantity: its ends reflected about the
    value in log, value^2 / (high, low). An interval without positive ends is returned as it is."""
    if not (interval.low > 0 and interval.high > 0 and interval.value > 0):
        return interval
    return Interval(interval.value, interval.value**2 / interval.high, interval.value**2 / interval.low)


EXPONENTS = {"tissue": ("alpha", "beta"), "mpl": ("alpha_N", "alpha")}
"""The size and data exponents of each form, which must be off their bounds for an optimum."""


def fit_curves(curves: list[Curve], settings: CurvePlannerSettings, *, bootstrap: int | None = None,
               form: str | None = None, clock: str | None = None, warm=None, label_weights=None,
               bootstrap_method: str = "lineage") -> CurveEstimate | None:
    """The curve law over sizes with its ensemble, and N_opt, D_opt, L at C* (None: not identifiable yet);
    form / clock: default the settings'; warm, label_weights: a warm start (analysis/incremental.py);
    bootstrap_method: "lineage" (the loop's refits) or a wild bootstrap (analysis.curve_law.BOOTSTRAP_METHODS; the
    final estimate's)."""
    form = settings.law if form is None else form
    clock = settings.clock if clock is None else clock
    sizes = {c.n_params for c in curves}
    if len(sizes) < 3 or sum(len(c.steps) for c in curves) < 8:
        return None
    members = settings.ensemble if bootstrap is None else bootstrap
    try:
        if bootstrap_method == "lineage":
            fit = fit_curve_form(form, clock, curves, bootstrap=members, seed=settings.seed, warm=warm,
                                 label_weights=label_weights)
        else:
            fit = _fit_form(form, clock, curves, members, settings.seed, bootstrap_method)
    except (ValueError, np.linalg.LinAlgError):
        return None
    return estimate_from_fit(fit, settings, form)


def _fit_form(form: str, clock: str, curves: list[Curve], bootstrap: int, seed: int, method: str):
    """One curve form with the bootstrap `method` (analysis.predictive.fit_curve_form fits the lineage bootstrap)."""
    if form == "mpl":
        return fit_multipower(curves, bootstrap=bootstrap, seed=seed, bootstrap_method=method)
    return fit_curve_law(curves, clock=clock, bootstrap=bootstrap, seed=seed, bootstrap_method=method)


def estimate_from_fit(fit, settings: CurvePlannerSettings, form: str | None = None) -> CurveEstimate | None:
    """N_opt, D_opt, L at C* of a fitted curve form (None: an exponent at its bound, or no finite optimum): what
    fit_curves does after its fit, shared with the recursive update (analysis.incremental.WarmCurves.update)."""
    form = settings.law if form is None else form
    p = fit.params
    if not all(EXPONENT_FLOOR < p[k] < 3 - EXPONENT_FLOOR for k in EXPONENTS[form]):
        return None
    with np.errstate(all="ignore"):
        at = fit.compute_optimal(settings.target_flops, settings.target_schedule,
                                 batch_tokens=settings.target_batch_tokens)
    if not all(np.isfinite(at[k].value) and at[k].value > 0 for k in ("n_opt", "d_opt", "loss")):
        return None
    return CurveEstimate(fit=fit, n_opt=at["n_opt"], d_opt=at["d_opt"], loss=at["loss"])


def target_members(estimate: CurveEstimate, settings: CurvePlannerSettings) -> np.ndarray:
    """(R, 2): log N_opt(C*) and log L(C*) of every bootstrap member, for the target schedule, scaled about the
    point fit by settings.calibration_factor."""
    with np.errstate(all="ignore"):
        members = estimate.fit.optimal_members(settings.target_flops, settings.target_schedule,
                                               batch_tokens=settings.target_batch_tokens)
        # The point fit first, then one row per bootstrap member (the rows of fit.bootstrap).
        point = np.array([np.log(members["n_opt"][0]), np.log(members["loss"][0])])
        rows = np.column_stack([np.log(members["n_opt"][1:]), np.log(members["loss"][1:])])
        return point + settings.calibration_factor * (rows - point)


@dataclass(frozen=True)
class FinalEstimate:
    """What the planner reports when it stops: the backtest's form and the estimate before and after calibration."""

    raw: CurveEstimate | None
    calibrated: CurveEstimate | None
    backtest: CurveBacktest
    calibration: Calibration | None = None
    """The backtest's calibration carried to the estimate's target (analysis.predictive.carry_to_target: the band
    floored at the held-out error's growth at the target's distance); its line() says how far out and how wide."""


def final_estimate(curves: list[Curve], settings: CurvePlannerSettings, *, law: str = "auto",
                   backtest: CurveBacktest | None = None) -> FinalEstimate:
    """The form `law` keeps by the backtest (auto: Tissue under either clock, or the multi-power law), refitted
    with the ensemble, and N_opt, D_opt, L(C*) with their intervals calibrated by the same backtest and carried to the
    target's distance by its distance model (`FinalEstimate.calibration`; the prior on a ladder of 5 or fewer sizes).

    The ensemble is drawn by `settings.final_bootstrap` (default: lineages resampled). The wild cluster bootstrap
    (every width in every member, only the residuals moved, a lineage's together) was tried against the lineage
    bootstrap's lean with 7 lineages: on bench_planner's curves it is narrower and covers less (plain: its members
    span at most 6 of the 8 parameter directions; on leave-one-lineage-out residuals: closer, still below). The
    n-heavy miss examined lies 3 standard deviations out in the noise-only sampling distribution of its own design,
    which every bootstrap but the plain wild one is as wide as: what misses is the planner's adaptive design, which no
    bootstrap of one design sees (docs/trust.md, "Planner coverage: the wild cluster bootstrap").
    backtest: a backtest of these curves already computed (it does not depend on the final bootstrap)."""
    clock = settings.clock if law == "tissue" else "auto"
    if backtest is None:
        backtest = backtest_curve_forms(curves, forms=candidate_forms(law, clock),
                                        bootstrap=max(settings.ensemble, MIN_MEMBERS), seed=settings.seed)
    form, chosen_clock = backtest.chosen
    raw = fit_curves(curves, settings, bootstrap=max(settings.ensemble, MIN_MEMBERS), form=form, clock=chosen_clock,
                     bootstrap_method=settings.final_bootstrap)
    if raw is None:
        return FinalEstimate(None, None, backtest)
    if settings.final_interval == "basic":
        raw = replace(raw, n_opt=basic_interval(raw.n_opt), d_opt=basic_interval(raw.d_opt), loss=basic_interval(raw.loss))
    # The one mechanism of analysis/predictive.py: the one-step factor, and L(C*)'s band floored at the held-out
    # error's spread at the target's distance (the farther of N_opt and D_opt in spans of the ladder), every interval
    # widened by the same ratio.
    c, at = carry_to_target(backtest.calibration, {"n_opt": raw.n_opt, "d_opt": raw.d_opt, "loss": raw.loss})
    calibrated = replace(raw, n_opt=at["n_opt"], d_opt=at["d_opt"], loss=at["loss"])
    return FinalEstimate(raw, calibrated, backtest, c)


def available(actions: list[Action], status: dict[str, str], chosen: set[str], cap: float) -> list[Action]:
    """Actions not run yet whose parent has finished, is in flight or is chosen, within the cost cap."""
    ready = []
    for a in actions:
        if a.key in status or a.key in chosen or a.flops > cap:
            continue
        if a.parent is None or status.get(a.parent) in DONE + IN_FLIGHT or a.parent in chosen:
            ready.append(a)
    return ready


def _spread(actions: list[Action], status: dict[str, str], settings: CurvePlannerSettings,
            room: int, budget: float) -> list[ActionProposal]:
    """Design: first segments of the widths farthest apart in log N, then the cheapest annealed cells."""
    cap = min(budget, settings.max_run_flops or np.inf)
    chosen: list[ActionProposal] = []
    keys: set[str] = set()
    started = {a.n_params for a in actions if status.get(a.key) in DONE + IN_FLIGHT}
    while len(chosen) < room:
        pool = [a for a in available(actions, status, keys, cap) if a.flops <= budget]
        if not pool:
            break
        starts = [a for a in pool if a.kind in ("new_width", "fresh") and a.n_params not in started]
        if len(started) < 3 and starts:
            def distance(a: Action) -> float:
                return min((abs(np.log(a.n_params / n)) for n in started), default=np.inf)
            far = max(distance(a) for a in starts)
            pick = min((a for a in starts if distance(a) >= far - 1e-9), key=lambda a: a.flops)
            reason = (f"design, {KIND_TEXT[pick.kind]} ({pick.kind}): width {pick.width}, the N farthest from those started; "
                      "the curve law needs three or more sizes")
        else:
            annealed = [a for a in pool if a.kind in ("cooldown", "fresh")]
            pick = min(annealed or pool, key=lambda a: a.flops)
            reason = (f"design, {KIND_TEXT[pick.kind]} ({pick.kind}): width {pick.width}, D {pick.tokens:.3g}, the cheapest "
                      "run that adds a point while the law cannot yet separate N and D")
        chosen.append(ActionProposal(pick, 0.0, reason))
        keys.add(pick.key)
        started.add(pick.n_params)
        budget -= pick.flops
    return chosen


def propose_actions(actions: list[Action], status: dict[str, str], estimate: CurveEstimate | None,
                    settings: CurvePlannerSettings) -> list[ActionProposal]:
    """Up to `settings.batch` actions, best first, each with its score and a reason that names its kind.

    status: the state of every action already run or in flight ('finished', 'pending', 'running',
    'diverged', 'failed', 'skipped'); estimate: `fit_curves` of the curves observed so far.
    """
    budget = settings.budget_flops
    if settings.batch < 1 or budget <= 0:
        return []
    if estimate is None or len(estimate.fit.bootstrap) < 8:
        return _spread(actions, status, settings, settings.batch, budget)
    targets = target_members(estimate, settings)
    cap = min(budget, settings.max_run_flops or np.inf)
    open_actions = [a for a in actions if a.key not in status and a.flops <= cap]
    in_flight = [a for a in actions if status.get(a.key) in IN_FLIGHT]
    blocks, columns = [], []
    for a in open_actions + in_flight:
        steps = a.observed_steps(settings.points_per_action)
        with np.errstate(all="ignore"):
            predicted = np.log(estimate.fit.predict(a.curve(steps=steps), steps, members=True))
        blocks.append(predicted)
        columns.append(len(steps))
    if not blocks:
        return []
    members = np.isfinite(targets).all(axis=1)
    for block in blocks:
        members &= np.isfinite(block).all(axis=1)
    if members.sum() < 8:
        return _spread(actions, status, settings, settings.batch, budget)
    joint = np.column_stack([targets[members]] + [b[members] for b in blocks])
    covariance = np.cov(joint, rowvar=False)
    residual = np.sqrt(estimate.fit.objective / max(estimate.fit.n_points, 1))
    noise2 = max(settings.min_noise, residual) ** 2
    offsets = np.concatenate([[2], 2 + np.cumsum(columns)])
    index_of = {a.key: i for i, a in enumerate(open_actions + in_flight)}

    def block_columns(i: int) -> np.ndarray:
        return np.arange(offsets[i], offsets[i + 1])

    for a in in_flight:  # what is being measured already
        covariance = _condition_block(covariance, block_columns(index_of[a.key]), noise2)
    prior = np.diag(covariance)[:2].copy()
    proposals: list[ActionProposal] = []
    chosen: set[str] = set()
    while len(proposals) < settings.batch:
        pool = [a for a in available(actions, status, chosen, cap) if a.flops <= budget and a.key in index_of]
        if not pool:
            break
        best, best_score, best_gain = None, -np.inf, None
        for a in pool:
            gain = _block_gain(covariance, block_columns(index_of[a.key]), noise2)
            score = float((gain / np.maximum(prior, 1e-300)).sum() / (a.flops / PFLOP))
            if score > best_score:
                best, best_score, best_gain = a, score, gain
        before = np.diag(covariance)[:2].copy()
        cut = best_gain / np.maximum(before, 1e-300)
        reason = (f"{KIND_TEXT[best.kind]} ({best.kind}): width {best.width}, D {best.tokens:.3g} tokens, "
                  f"{best.flops:.3g} FLOPs of its own; cuts the variance of log N_opt(C*) by {cut[0]:.0%} and of "
                  f"log L(C*) by {cut[1]:.0%}")
        proposals.append(ActionProposal(best, best_score, reason))
        chosen.add(best.key)
        budget -= best.flops
        covariance = _condition_block(covariance, block_columns(index_of[best.key]), noise2)
    return proposals


def _block_gain(covariance: np.ndarray, columns: np.ndarray, noise2: float) -> np.ndarray:
    """Reduction of the variance of each target (the first two columns) from observing `columns`."""
    s_qy = covariance[:2][:, columns]
    s_yy = covariance[np.ix_(columns, columns)] + noise2 * np.eye(len(columns))
    solved = np.linalg.solve(s_yy, s_qy.T)
    return np.einsum("ij,ji->i", s_qy, solved)


def _condition_block(covariance: np.ndarray, columns: np.ndarray, noise2: float) -> np.ndarray:
    s_xy = covariance[:, columns]
    s_yy = covariance[np.ix_(columns, columns)] + noise2 * np.eye(len(columns))
    return covariance - s_xy @ np.linalg.solve(s_yy, s_xy.T)
