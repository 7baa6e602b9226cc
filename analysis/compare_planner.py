"""The deciding planner: which runs, across several recipes' ladders, most settle which recipe is best at the target.

`planner.objective: compare` (orchestrator/active.py) hands this module the runs each recipe allows (`Candidate`s)
and what each recipe has (`Observation`s), and gets back the next runs. The question is not "where is N_opt" but
"which recipe is lower at C*", so a run is worth what it does to that decision.

The decision. Each recipe's law is fitted as `proxyscale compare` fits it (analysis/compare.py: `fit_recipes`, E
shared when the AICc says so, the backtest's calibration) and `compare_at` gives P(best), the share of the paired
bootstrap members in which each recipe is lowest at the target (each at its compute-optimal N, D). The loop stops
when the leader's P(best) reaches `decide_at` (0.95 by default) or the budget is spent.

How a run is scored (a preposterior estimate, as analysis/planner.py does for N_opt). Across the bootstrap members
we have each recipe's log L at the target, q_r, and every candidate's predicted log loss f_j; treated as jointly
Gaussian (the members' covariance S, with no covariance between two recipes unless they share E, where member b of
both comes from one joint refit), observing candidate j of recipe r with noise s_r^2 (the MAD of that recipe's
log residuals) would move the mean of q by c z, c = S[q, j] / sqrt(S[j, j] + s_r^2), z ~ N(0, 1), and leave
covariance S[q, q] - c c^T. The decision's certainty is g(mean, cov) = max_r P(r lowest); for two recipes
g = Phi(|m| / sd), m and sd of the difference, and for more a fixed set of normal draws (common random numbers, so
candidates are compared on the same draws). A candidate's score is the expected certainty after it,
E_z[g(mu + c z, S' )] (Gauss-Hermite), less the certainty now, per PFLOP: the expected reduction of 1 - P(best).
It needs only WHERE a run is, not its outcome, and is never negative: each recipe's P(lowest) after the run has
the P now as its expectation (a martingale), and the maximum of expectations is at most the expectation of the
maximum (Jensen); a small negative from the quadrature is clipped to 0. A batch is chosen greedily, conditioning S on
each pick; runs still pending are conditioned on first.

The Gaussian P(best) orders candidates; the stop uses the members' P(best) (what `compare` reports), so the
approximation never decides when to stop.

The design. A recipe's law needs `compare.min_runs(law)` runs over 3 sizes and 3 token counts (check_recipes); each
recipe starts with that many runs at the cheapest corner of its space (`corner_design`: the 3 smallest sizes x the 3
smallest token counts), or, with `design="spread"`, the planner's space-filling design (analysis/planner.
initial_design), and is completed (new sizes or token counts first) until every recipe can be fitted. Runs go at
each width's best known LR (the planner's cells); the compare objective does not spend on LR search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proxyscale.analysis.compare import (
    MIN_SIZES,
    MIN_TOKEN_COUNTS,
    CompareInputError,
    Comparison,
    Recipe,
    Target,
    compare_at,
    fit_recipes,
    min_runs,
    recipe_path,
)
from proxyscale.analysis.planner import (
    PFLOP,
    Candidate,
    Observation,
    Proposal,
    _cell_candidates,
    _design_completion,
    _median_lr,
    best_per_cell,
    initial_design,
    is_safe,
)
from proxyscale.analysis.predictive import log_loss

DECIDE_AT = 0.95
"""The deciding planner stops when the leader's P(best) reaches this (issue 32's threshold)."""
HERMITE_NODES = 16
GAUSSIAN_DRAWS = 4000
"""Normal draws for max_r P(r lowest) with three or more recipes (two have a closed form)."""


@dataclass(frozen=True, kw_only=True)
class DecideSettings:
    """What the deciding planner may spend and when it is done."""

    target_flops: float
    budget_flops: float
    """FLOPs this call may commit (the budget left)."""
    batch: int = 1
    decide_at: float = DECIDE_AT
    max_run_flops: float | None = None
    ensemble: int = 64
    """Bootstrap members per recipe (the P(best) stop has a resolution of 1 / ensemble)."""
    seed: int = 0
    law: str = "chinchilla"
    share: str = "auto"
    same_eval: bool = True
    """The recipes are evaluated on the same text (False: never share E, as `compare` does for different texts)."""
    calibrate: bool = True
    """Scale the members by the backtest, as `compare` does (costs a refit per recipe)."""
    initial_runs: int = 6
    design: str = "corner"
    """How a recipe's first runs are placed: corner (the cheapest runs among the 3 smallest sizes x 3 smallest token
    counts: the law becomes fittable for the least compute, and the scoring then buys the runs that decide) or
    spread (analysis/planner.initial_design: spread over the cheaper half of N and D, as planner=active's target
    objective starts)."""
    min_noise: float = 1e-3
    """Floor of the observation noise (standard deviation of log loss)."""


@dataclass(frozen=True)
class DecisionState:
    """The decision on the runs so far: the comparison at the target, or why there is none yet."""

    comparison: Comparison | None
    problem: str | None = None

    @property
    def best(self) -> str | None:
        """The recipe with the highest P(best) (None before every recipe can be fitted)."""
        return None if self.comparison is None else self.comparison.best

    @property
    def p_best(self) -> float:
        """The leader's P(best) from the members (nan before every recipe can be fitted)."""
        return float("nan") if self.comparison is None else float(self.comparison.p_best)

    def decided(self, decide_at: float) -> bool:
        """Whether the leader's P(best) has reached decide_at."""
        return self.comparison is not None and self.p_best >= decide_at

    def line(self) -> str:
        """One line: each recipe's P(best) at the target, or what is missing."""
        if self.comparison is None:
            return f"no decision yet: {self.problem}"
        shown = ", ".join(f"{g.name} {g.loss.value:.4f} [{g.loss.low:.4f}, {g.loss.high:.4f}] P(best) {g.p_best:.2f}"
                          for g in sorted(self.comparison.groups, key=lambda g: -g.p_best))
        return f"at C = {self.comparison.target.compute:.3g}: {shown}"


def recipe_problem(name: str, observations: list[Observation], law: str = "chinchilla", *,
                   include_pending: bool = False) -> str | None:
    """Why the recipe's law cannot be fitted yet (too few finished cells, sizes or token counts), or None."""
    statuses = ("finished", "pending") if include_pending else ("finished",)
    cells = {(o.n_params, o.tokens) for o in observations if o.status in statuses
             and (o.status == "pending" or (o.loss is not None and np.isfinite(o.loss)))}
    sizes, tokens = len({c[0] for c in cells}), len({c[1] for c in cells})
    need = min_runs(law)
    if len(cells) < need or sizes < MIN_SIZES or tokens < MIN_TOKEN_COUNTS:
        return (f"recipe {name!r} has {len(cells)} cells over {sizes} sizes and {tokens} token counts; its law needs "
                f"{need} over {MIN_SIZES} and {MIN_TOKEN_COUNTS}")
    return None


def decision_state(observations: dict[str, list[Observation]], settings: DecideSettings) -> DecisionState:
    """Fit every recipe's law on its finished runs (best run per (N, D) cell) and compare them at the target."""
    problems = [p for name, obs in observations.items() if (p := recipe_problem(name, obs, settings.law))]
    if problems:
        return DecisionState(None, "; ".join(problems))
    recipes = [Recipe.of(name, *best_per_cell(obs)) for name, obs in observations.items()]
    try:
        fits = fit_recipes(recipes, law=settings.law, share=settings.share, bootstrap=settings.ensemble,
                           seed=settings.seed, calibrate=settings.calibrate, same_eval=settings.same_eval)
        comparison = compare_at(fits, Target(flops=settings.target_flops), decide_at=settings.decide_at)
    except CompareInputError as error:
        return DecisionState(None, str(error))
    if not np.isfinite(comparison.p_best):
        return DecisionState(None, "no bootstrap member gives a finite loss at the target")
    return DecisionState(comparison)


# ------------------------------------------------------------------------------------------- the certainty

def best_probability(mean: np.ndarray, covariance: np.ndarray, normals: np.ndarray | None = None) -> float:
    """max_r P(recipe r has the lowest value) under N(mean, covariance): Phi(|m| / sd) of the difference for two
    recipes, the share of `normals` (M, R) draws otherwise."""
    from scipy.stats import norm

    mean, covariance = np.asarray(mean, float), np.asarray(covariance, float)
    if len(mean) == 2:
        variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
        return float(norm.cdf(abs(mean[0] - mean[1]) / np.sqrt(max(variance, 1e-300))))
    if normals is None:
        normals = np.random.default_rng(0).standard_normal((GAUSSIAN_DRAWS, len(mean)))
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    draws = mean + normals @ root.T
    wins = np.bincount(np.argmin(draws, axis=1), minlength=len(mean)) / len(draws)
    return float(wins.max())


def expected_best_probability(mean: np.ndarray, covariance_after: np.ndarray, shift: np.ndarray, *,
                              nodes: int = HERMITE_NODES, normals: np.ndarray | None = None) -> float:
    """E_z[max_r P(r lowest)] after a measurement that moves the mean by shift * z, z ~ N(0, 1), and leaves
    `covariance_after` (Gauss-Hermite over z)."""
    z, weights = np.polynomial.hermite_e.hermegauss(nodes)
    weights = weights / weights.sum()
    return float(sum(w * best_probability(mean + shift * x, covariance_after, normals) for x, w in zip(z, weights,
                                                                                                       strict=True)))


def _condition(covariance: np.ndarray, column: int, noise_variance: float) -> np.ndarray:
    link = covariance[:, column]
    return covariance - np.outer(link, link) / (covariance[column, column] + noise_variance)


def _noise(fits, name: str, min_noise: float) -> float:
    """Robust standard deviation (MAD) of the recipe's log residuals at its point law."""
    law = fits.law_of(name)
    r = law.recipe
    residual = np.log(r.loss) - log_loss(fits.law, r.n, r.d, law.theta)[0]
    return max(min_noise, float(1.4826 * np.median(np.abs(residual - np.median(residual)))))


@dataclass(frozen=True)
class _Joint:
    """The members' joint Gaussian over the recipes' log L at the target and the runs' predicted log loss."""

    mean: np.ndarray
    """(R,) point predictions of log L at the target."""
    covariance: np.ndarray
    """(R + M, R + M): targets first, then the M runs' columns."""
    noise: np.ndarray
    """(M,) observation noise variance of each run's column."""


def joint_gaussian(fits, target: Target, runs: list[tuple[str, float, float]], min_noise: float = 1e-3) -> _Joint:
    """The joint Gaussian of the recipes' targets and runs (recipe, N, D), from the paired members (module docstring);
    no covariance between recipes that do not share E."""
    names = fits.names
    paths = [recipe_path(fits, name, [target.compute], target) for name in names]
    k = min(len(p.members) for p in paths)
    columns = [np.log(p.members[:k, 0]) for p in paths]
    owner = list(range(len(names)))
    for recipe, n, d in runs:
        law = fits.law_of(recipe)
        members = law.members if len(law.members) else law.theta[None]
        columns.append(log_loss(fits.law, [n], [d], members[:k])[:, 0])
        owner.append(names.index(recipe))
    stack = np.column_stack(columns)
    stack = stack[np.isfinite(stack).all(axis=1)]
    if len(stack) < 8:
        raise CompareInputError(f"only {len(stack)} bootstrap members give finite predictions; the laws are too loose "
                                "to score runs")
    covariance = np.atleast_2d(np.cov(stack, rowvar=False))
    if not fits.sharing.shared:  # independent members: any covariance between recipes is sampling noise
        owner_array = np.array(owner)
        covariance = np.where(owner_array[:, None] == owner_array[None, :], covariance, 0.0)
    mean = np.log([p.point[0] for p in paths])
    noise = np.array([_noise(fits, recipe, min_noise) ** 2 for recipe, _, _ in runs])
    return _Joint(mean, covariance, noise)


def score_runs(joint: _Joint, *, normals: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(expected certainty after each run (M,), the certainty now) under the joint Gaussian."""
    r = len(joint.mean)
    now = best_probability(joint.mean, joint.covariance[:r, :r], normals)
    after = np.empty(len(joint.noise))
    for j in range(len(joint.noise)):
        column = r + j
        scale = np.sqrt(max(joint.covariance[column, column] + joint.noise[j], 1e-300))
        shift = joint.covariance[:r, column] / scale
        remaining = joint.covariance[:r, :r] - np.outer(shift, shift)
        after[j] = expected_best_probability(joint.mean, remaining, shift, normals=normals)
    return after, now


# --------------------------------------------------------------------------------------------- proposals

def corner_design(pool: list[Candidate], count: int) -> list[Candidate]:
    """The `count` cheapest runs among the 3 smallest sizes x the 3 smallest token counts of the pool (at its median
    LR), cheapest first; the spread design (analysis/planner.initial_design) when the pool has fewer than 3 of each."""
    lr = _median_lr(pool)
    at_lr = [c for c in pool if c.lr == lr]
    sizes, tokens = sorted({c.n_params for c in at_lr})[:3], sorted({c.tokens for c in at_lr})[:3]
    corner = [c for c in at_lr if c.n_params in sizes and c.tokens in tokens]
    if len(sizes) < 3 or len(tokens) < 3 or len(corner) < count:
        return initial_design(pool, count)
    return sorted(corner, key=lambda c: (c.flops, c.key))[:count]


def _design(name: str, candidates: list[Candidate], observations: list[Observation], settings: DecideSettings,
            room: int, budget: float) -> list[Proposal]:
    """Runs that make the recipe's law fittable: its first design (corner or spread), then new sizes and token counts."""
    cap = settings.max_run_flops if settings.max_run_flops is not None else np.inf
    known = {o.key for o in observations}
    pool = [c for c in candidates if c.key not in known and c.flops <= min(cap, budget) and is_safe(c, observations)]
    if not pool or room < 1:
        return []
    need = min_runs(settings.law)
    # The first design, whatever the batch: its runs not yet tried (a batch of one proposes them one by one).
    count = min(9, max(settings.initial_runs, need))
    allowed = [c for c in candidates if c.flops <= cap]
    design = (corner_design(allowed, count) if settings.design == "corner" else
              initial_design(allowed, count, max_run_flops=settings.max_run_flops))
    todo = [c for c in design if c.key not in known and c.flops <= budget and is_safe(c, observations)]
    if todo:
        picked, spent = [], 0.0
        for c in todo:
            if len(picked) < room and spent + c.flops <= budget:
                picked.append(Proposal(c, 0.0, f"{name}: initial design ({settings.design}): the cheapest runs that "
                                               "make its law fittable" if settings.design == "corner" else
                                       f"{name}: initial design (spread): spread over N and D, cheapest first"))
                spent += c.flops
        return picked
    cells = _cell_candidates(pool, observations, _median_lr(pool))
    have = len({(o.n_params, o.tokens) for o in observations if o.status in ("finished", "pending")})
    proposals = _design_completion(cells, observations, min(room, max(1, need - have)), budget,
                                   f"{name}: design: its law needs runs at three or more values of N and of D")
    return proposals


def propose_to_decide(candidates: dict[str, list[Candidate]], observations: dict[str, list[Observation]],
                      settings: DecideSettings, *, state: DecisionState | None = None) -> list[Proposal]:
    """Up to `settings.batch` new runs across the recipes, best first, each with its score (expected gain in P(best)
    per PFLOP) and a reason that starts with its recipe's name. [] when decided, when nothing affordable is left, or
    while the design is still running."""
    if settings.batch < 1:
        return []
    proposals: list[Proposal] = []
    budget = settings.budget_flops
    for name in candidates:  # the design: every recipe's law fittable, counting runs under way
        obs = observations.get(name, [])
        if recipe_problem(name, obs, settings.law, include_pending=True) is not None:
            design = _design(name, candidates[name], obs, settings, settings.batch - len(proposals), budget)
            proposals += design
            budget -= sum(p.candidate.flops for p in design)
    if proposals:
        return proposals
    if state is None:
        state = decision_state(observations, settings)
    if state.comparison is None or state.decided(settings.decide_at):
        return []  # waiting for the design to finish, or done
    return _information_batch(candidates, observations, state.comparison, settings, budget)


def _information_batch(candidates, observations, comparison: Comparison, settings: DecideSettings,
                       budget: float) -> list[Proposal]:
    cap = settings.max_run_flops if settings.max_run_flops is not None else np.inf
    cells: list[tuple[str, Candidate]] = []
    for name, allowed in candidates.items():
        obs = observations.get(name, [])
        known = {o.key for o in obs}
        pool = [c for c in allowed if c.key not in known and c.flops <= min(cap, budget) and is_safe(c, obs)]
        if pool:
            cells += [(name, c) for c in _cell_candidates(pool, obs, _median_lr(pool))]
    if not cells:
        return []
    pending = [(name, o) for name, obs in observations.items() for o in obs if o.status == "pending"]
    fits, target = comparison.fits, comparison.target
    runs = [(name, c.n_params, c.tokens) for name, c in cells] + [(name, o.n_params, o.tokens) for name, o in pending]
    try:
        joint = joint_gaussian(fits, target, runs, settings.min_noise)
    except CompareInputError:
        return []
    r = len(joint.mean)
    covariance = joint.covariance
    for index in range(len(cells), len(runs)):  # runs already being measured: condition on them first
        covariance = _condition(covariance, r + index, joint.noise[index])
    normals = np.random.default_rng(settings.seed).standard_normal((GAUSSIAN_DRAWS, r)) if r > 2 else None
    available = list(range(len(cells)))
    proposals: list[Proposal] = []
    leader = comparison.best
    while available and len(proposals) < settings.batch:
        affordable = [i for i in available if cells[i][1].flops <= budget]
        if not affordable:
            break
        keep = np.array([r + i for i in affordable])
        view = _Joint(joint.mean, covariance[np.ix_(np.r_[np.arange(r), keep], np.r_[np.arange(r), keep])],
                      joint.noise[affordable])
        after, now = score_runs(view, normals=normals)
        gain = np.clip(after - now, 0.0, None)
        cost = np.array([cells[i][1].flops for i in affordable]) / PFLOP
        score = gain / cost
        pick = int(np.argmax(score))
        index = affordable[pick]
        name, c = cells[index]
        proposals.append(Proposal(c, float(score[pick]),
                                  f"{name}: expected P(best) {now:.3f} -> {after[pick]:.3f} (Gaussian) for "
                                  f"{c.flops:.2e} FLOPs; {leader} leads with P(best) {comparison.p_best:.2f} (members)"))
        covariance = _condition(covariance, r + index, joint.noise[index])
        available.remove(index)
        budget -= c.flops
    return proposals
