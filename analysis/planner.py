"""The planner: which runs, among those the sweep allows, most sharpen the prediction at C* per FLOP.

Pure functions of plain data (no torch, Ray or W&B). Inputs: the allowed runs (`Candidate`), what
is known (`Observation`: finished, diverged, failed, or still pending), and `PlannerSettings`.

How a run is scored. L(N, D) is fitted with a bootstrap ensemble (each member a refit on
resampled runs). Across members we have the targets q = (log N_opt(C*), log L(C*)) and each
candidate's predicted log loss f_j. Treating them as jointly Gaussian (the ensemble's covariance
S), observing candidate j with noise variance s^2 would shrink Var(q_i) by
    S[q_i, j]^2 / (S[j, j] + s^2)
(the Kalman / expected-variance-reduction formula; it needs only WHERE a run is, not its outcome).
A candidate's score is the sum over targets of that reduction relative to Var(q_i), per PFLOP.
A batch is chosen greedily, conditioning S on each pick; runs still pending are conditioned on first,
so asynchronous proposals do not duplicate what is already being measured.

The learning rate. L(N, D) uses each (N, D) cell's best run. Runs are placed at the best LR known
for their width (the nearest width's under transfer). Where a width's optimum is not bracketed
(its best LR is the highest or lowest tried and the grid goes further), the planner proposes the
next LR outward at that width's cheapest budget, spending at most `lr_fraction` of the compute on
such runs. LRs at or above one that diverged at the same or a smaller width are never proposed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from proxyscale.analysis.fit import MAX_EXPONENT, ChinchillaFit, Interval, fit_chinchilla
from proxyscale.analysis.laws import compute_optimal_allocation, log_chinchilla_loss

if TYPE_CHECKING:
    from proxyscale.analysis.curve_law import CurveLawFit

PFLOP = 1e15
EXPONENT_FLOOR = 0.02
"""An exponent below this (or within it of the upper bound) means the runs do not tell N and D apart:
no N_opt is estimated from such a fit."""
COARSE_STARTS = np.array([(a, b, e, al, be) for a in (0, 5, 10, 15, 20, 25) for b in (0, 5, 10, 15, 20, 25)
                          for e in (-1, 0, 1) for al in (0.25, 0.5, 1.0) for be in (0.25, 0.5, 1.0)], float)
"""A 972-point subset of Epoch's grid, for refits that also start from the previous optimum."""


@dataclass(frozen=True)
class Candidate:
    """One run the sweep allows."""

    key: str
    width: int
    n_params: float
    tokens: float
    flops: float
    lr: float


@dataclass(frozen=True)
class Observation:
    """A run already in the ledger; `loss` is None unless it finished."""

    key: str
    width: int
    n_params: float
    tokens: float
    flops: float
    lr: float
    status: str
    """'finished', 'diverged', 'failed', or 'pending' (submitted or running)."""
    loss: float | None = None


@dataclass(frozen=True, kw_only=True)
class PlannerSettings:
    target_flops: float
    budget_flops: float
    """FLOPs this call may commit (the budget left)."""
    batch: int = 1
    max_run_flops: float | None = None
    lr_fraction: float = 0.25
    """At most this share of the compute goes to runs that only locate the optimal LR."""
    ensemble: int = 64
    seed: int = 0
    min_noise: float = 1e-3
    """Floor of the observation noise (standard deviation of log loss)."""


@dataclass(frozen=True)
class Proposal:
    candidate: Candidate
    score: float
    """Expected relative reduction of the target variances per PFLOP (0 for design runs)."""
    reason: str


@dataclass(frozen=True)
class TargetEstimate:
    """A fitted law and N_opt, D_opt, L at the target with their intervals; the fit is L(N, D)'s
    ChinchillaFit here, the curve law's CurveLawFit in analysis.curve_planner (CurveEstimate)."""

    fit: ChinchillaFit | CurveLawFit
    n_opt: Interval
    d_opt: Interval
    loss: Interval

    def relative_halfwidth(self, name: str) -> float:
        interval = getattr(self, name)
        if not (np.isfinite(interval.value) and interval.value > 0):
            return float("inf")
        return (interval.high - interval.low) / (2 * interval.value)


def best_per_cell(observations: list[Observation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, loss) with one point per (N, D): the best finished run of the cell over its LRs."""
    best: dict[tuple[float, float], float] = {}
    for o in observations:
        if o.status == "finished" and o.loss is not None and np.isfinite(o.loss):
            cell = (o.n_params, o.tokens)
            best[cell] = min(best.get(cell, np.inf), o.loss)
    cells = sorted(best)
    return (np.array([c[0] for c in cells], float), np.array([c[1] for c in cells], float),
            np.array([best[c] for c in cells], float))


def identifiable(n: np.ndarray, d: np.ndarray) -> bool:
    """Five parameters need at least six cells spread over three values of N and of D."""
    return len(n) >= 6 and len(np.unique(n)) >= 3 and len(np.unique(d)) >= 3


def estimate_target(observations: list[Observation], target_flops: float, *, bootstrap: int = 1000,
                    seed: int = 0, starts: np.ndarray | None = None) -> TargetEstimate | None:
    """The fitted L(N, D) and N_opt, D_opt, L at the target with bootstrap intervals (None: too few runs).

    starts: fit starting points (default: Epoch's full grid); a closed loop passes its previous
    optimum plus a coarse grid, which refits several times faster.
    """
    n, d, loss = best_per_cell(observations)
    if not identifiable(n, d):
        return None
    fit = fit_chinchilla(n, d, loss, bootstrap=bootstrap, seed=seed, grid=starts)
    p = fit.params
    if not all(EXPONENT_FLOOR < p[name] < MAX_EXPONENT - EXPONENT_FLOOR for name in ("alpha", "beta")):
        return None  # an exponent at its bound: the runs do not separate the N and D terms yet
    with np.errstate(all="ignore"):
        at = fit.compute_optimal(target_flops)
    if not all(np.isfinite(at[k].value) and at[k].value > 0 for k in ("n_opt", "d_opt", "loss")):
        return None
    return TargetEstimate(fit=fit, n_opt=at["n_opt"], d_opt=at["d_opt"], loss=at["loss"])


def identifiability_problem(observations: list[Observation], target_flops: float) -> str | None:
    """Why L(N, D) gives no N_opt at the target from these runs, naming the axis to widen (None: it does)."""
    n, d, loss = best_per_cell(observations)
    widths = sorted({o.width for o in observations if o.status == "finished" and o.loss is not None})
    span_n = f"widths {widths[0]}-{widths[-1]} (N {n.min():.3g}-{n.max():.3g})" if len(n) else "no runs"
    if not identifiable(n, d):
        return (f"only {len(n)} finished (N, D) cells over {len(np.unique(n))} values of N and {len(np.unique(d))} of D;"
                " five parameters need 6+ cells over 3+ values of each: add runs at more widths and token budgets"
                " (`proxyscale plan`)")
    fit = fit_chinchilla(n, d, loss)
    p = fit.params
    span_d = f"{d.min():.3g}-{d.max():.3g} tokens"
    if p["alpha"] <= EXPONENT_FLOOR:
        return (f"losses barely change with N over {span_n} (fitted alpha {p['alpha']:.3f}): add wider models, or "
                "more tokens per run so that model size limits the loss")
    if p["beta"] <= EXPONENT_FLOOR:
        return (f"losses barely change with D over {span_d} (fitted beta {p['beta']:.3f}): add longer runs, "
                "a wider range of token budgets")
    for name, axis in (("alpha", f"N over {span_n}"), ("beta", f"D over {span_d}")):
        if p[name] >= MAX_EXPONENT - EXPONENT_FLOOR:
            return (f"the loss falls implausibly fast with {axis} (fitted {name} {p[name]:.3f} at its bound): the "
                    "runs are too few or too noisy along that axis: add runs spread wider along it, or seeds")
    with np.errstate(all="ignore"):
        at = fit.compute_optimal(target_flops)
    if not all(np.isfinite(at[k].value) and at[k].value > 0 for k in ("n_opt", "d_opt", "loss")):
        return f"the fitted law has no finite optimum at C = {target_flops:.3g}: widen both N and D"
    return None


def ensemble_targets(theta: np.ndarray, target_flops: float) -> np.ndarray:
    """(R, 2): log N_opt(C*) and log L(C*) of each ensemble member."""
    p = ChinchillaFit.natural(theta)
    with np.errstate(all="ignore"):
        n, d = compute_optimal_allocation(target_flops, A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])
        log_loss = log_chinchilla_loss(np.log(n)[:, None], np.log(d)[:, None], theta)[:, 0]
        return np.column_stack([np.log(n), log_loss])


def is_safe(candidate: Candidate, observations: list[Observation]) -> bool:
    """False at or above an LR that diverged at the same or a smaller width (wider models are no more stable)."""
    diverged = [o.lr for o in observations if o.status == "diverged" and o.width <= candidate.width]
    return candidate.lr < min(diverged, default=np.inf)


def best_lr_by_width(observations: list[Observation]) -> dict[int, float]:
    """Per width: the LR of its best finished run, judged at the budget with the most LRs tried."""
    by_width: dict[int, dict[float, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for o in observations:
        if o.status == "finished" and o.loss is not None:
            by_width[o.width][o.tokens][o.lr] = min(o.loss, by_width[o.width][o.tokens].get(o.lr, np.inf))
    best = {}
    for width, budgets in by_width.items():
        tokens = max(budgets, key=lambda t: (len(budgets[t]), -t))
        best[width] = min(budgets[tokens], key=budgets[tokens].get)
    return best


def preferred_lr(width: int, best: dict[int, float], default: float) -> float:
    """The best LR known at this width, else at the nearest width in log scale (LR transfer), else default."""
    if width in best:
        return best[width]
    if not best:
        return default
    nearest = min(best, key=lambda w: abs(np.log(w / width)))
    return best[nearest]


def _median_lr(candidates: list[Candidate]) -> float:
    lrs = sorted({c.lr for c in candidates})
    return lrs[(len(lrs) - 1) // 2]


def initial_design(candidates: list[Candidate], count: int = 6, *, max_run_flops: float | None = None,
                   lr: float | None = None) -> list[Candidate]:
    """A cheap space-filling start: among the cheaper half of the allowed runs (the loop climbs from
    there), the candidates nearest a 3x3 grid of quantiles of log N and log D, at one LR (the median
    of the allowed LRs unless given), the `count` cheapest of them."""
    lr = _median_lr(candidates) if lr is None else lr
    pool = [c for c in candidates if c.lr == lr and (max_run_flops is None or c.flops <= max_run_flops)]
    cheap = np.median([c.flops for c in pool]) if pool else 0.0
    pool = [c for c in pool if c.flops <= cheap] if len([c for c in pool if c.flops <= cheap]) >= count else pool
    if not pool:
        raise ValueError(f"no allowed run has lr={lr:g} within the cost cap")
    log_n = np.log([c.n_params for c in pool])
    log_d = np.log([c.tokens for c in pool])
    scale_n = max(np.ptp(log_n), 1e-9)
    scale_d = max(np.ptp(log_d), 1e-9)
    chosen: list[Candidate] = []
    for qn in (0.0, 0.5, 1.0):
        for qd in (0.0, 0.5, 1.0):
            goal_n, goal_d = np.quantile(log_n, qn), np.quantile(log_d, qd)
            distance = ((log_n - goal_n) / scale_n) ** 2 + ((log_d - goal_d) / scale_d) ** 2
            for index in np.argsort(distance, kind="stable"):
                if pool[index] not in chosen:
                    chosen.append(pool[index])
                    break
    return sorted(chosen, key=lambda c: c.flops)[:count]


def _design_completion(pool: list[Candidate], observations: list[Observation], room: int, budget: float,
                       reason: str = "design: L(N, D) needs runs at three or more values of N and of D") -> list[Proposal]:
    """The cheapest runs that add a new value of N or D (else the cheapest new cells)."""
    proposals: list[Proposal] = []
    seen_n = {o.n_params for o in observations if o.status in ("finished", "pending")}
    seen_d = {o.tokens for o in observations if o.status in ("finished", "pending")}
    spent = 0.0
    for c in sorted(pool, key=lambda c: c.flops):
        if len(proposals) >= room:
            break
        if (c.n_params in seen_n and c.tokens in seen_d) or spent + c.flops > budget:
            continue
        proposals.append(Proposal(c, 0.0, reason))
        seen_n.add(c.n_params)
        seen_d.add(c.tokens)
        spent += c.flops
    for c in sorted(pool, key=lambda c: c.flops):  # nothing new left to spread to: the cheapest new cells
        if len(proposals) >= room:
            break
        if all(p.candidate.key != c.key for p in proposals) and spent + c.flops <= budget:
            proposals.append(Proposal(c, 0.0, reason))
            spent += c.flops
    return proposals


def _lr_exploration(pool: list[Candidate], observations: list[Observation], room: int,
                    budget: float) -> list[Proposal]:
    """Runs that bracket the optimal LR at widths where it is not bracketed yet (largest width first)."""
    attempted = [o for o in observations if o.status in ("finished", "pending", "diverged")]
    allowed_lrs = sorted({c.lr for c in pool} | {o.lr for o in observations})
    proposals: list[Proposal] = []
    best = best_lr_by_width(observations)
    for width in sorted(best, reverse=True):
        if len(proposals) >= room:
            break
        tried = sorted({o.lr for o in attempted if o.width == width})
        best_lr = best[width]
        outward = []
        if best_lr == tried[-1]:
            outward += [lr for lr in allowed_lrs if lr > best_lr][:1]
        if best_lr == tried[0]:
            outward += [lr for lr in allowed_lrs if lr < best_lr][-1:]
        for lr in outward:
            options = [c for c in pool if c.width == width and c.lr == lr and c.flops <= budget]
            if options and len(proposals) < room:
                c = min(options, key=lambda c: c.flops)
                side = "highest" if lr > best_lr else "lowest"
                proposals.append(Proposal(c, 0.0, f"LR: at width {width} the best LR {best_lr:g} is the {side} tried;"
                                                   f" trying {lr:g} to bracket the optimum"))
                budget -= c.flops
    return proposals


def lr_exploration_flops(observations: list[Observation]) -> float:
    """Compute spent on runs that lost to another LR in their (N, D) cell."""
    cells: dict[tuple[float, float], list[Observation]] = defaultdict(list)
    for o in observations:
        if o.status in ("finished", "diverged"):
            cells[(o.n_params, o.tokens)].append(o)
    spent = 0.0
    for runs in cells.values():
        if len(runs) > 1:
            scores = [o.loss if o.status == "finished" and o.loss is not None else np.inf for o in runs]
            winner = int(np.argmin(scores))
            spent += sum(o.flops for i, o in enumerate(runs) if i != winner)
    return spent


_NOT_GIVEN = object()


def propose(candidates: list[Candidate], observations: list[Observation], settings: PlannerSettings,
            *, estimate: TargetEstimate | None | object = _NOT_GIVEN) -> list[Proposal]:
    """Up to `settings.batch` new runs, best first, each with its score and a one-line reason.

    estimate: the caller's `estimate_target` of these observations (None: not identifiable), so a
    closed loop that has just refitted does not fit twice; computed here when not given.
    """
    known = {o.key for o in observations}
    cap = settings.max_run_flops if settings.max_run_flops is not None else np.inf
    pool = [c for c in candidates if c.key not in known and c.flops <= min(cap, settings.budget_flops)
            and is_safe(c, observations)]
    if not pool or settings.batch < 1:
        return []
    n, d, _ = best_per_cell([o for o in observations if o.status == "finished"])
    pending = [o for o in observations if o.status == "pending"]
    if not identifiable(np.concatenate([n, [o.n_params for o in pending]]),
                        np.concatenate([d, [o.tokens for o in pending]])):
        cells = _cell_candidates(pool, observations, _median_lr(pool))
        return _design_completion(cells, observations, settings.batch, settings.budget_flops)
    if not identifiable(n, d):
        # The design is complete but still running: keep the free slot busy with cheap runs that
        # help either way (the LR bracket where the space has LRs, else the cheapest new cell).
        explore = _lr_exploration(pool, observations, settings.batch, settings.budget_flops)
        if explore:
            return explore
        cheapest = sorted(pool, key=lambda c: c.flops)[: settings.batch]
        return [Proposal(c, 0.0, "design: a cheap extra cell while the initial design finishes") for c in cheapest
                if c.flops <= settings.budget_flops]

    proposals: list[Proposal] = []
    budget = settings.budget_flops
    total_spent = sum(o.flops for o in observations if o.status != "failed")
    lr_room = settings.lr_fraction * (total_spent + settings.budget_flops) - lr_exploration_flops(observations)
    if len({c.lr for c in candidates}) > 1 and lr_room > 0:
        lr_slots = max(1, int(settings.lr_fraction * settings.batch)) if settings.batch > 1 else 1
        explore = _lr_exploration(pool, observations, min(lr_slots, settings.batch), min(budget, lr_room))
        proposals += explore
        budget -= sum(p.candidate.flops for p in explore)
    room = settings.batch - len(proposals)
    if room <= 0:
        return proposals

    if estimate is _NOT_GIVEN:
        estimate = estimate_target(observations, settings.target_flops, bootstrap=settings.ensemble, seed=settings.seed)
    taken = {p.candidate.key for p in proposals}
    if estimate is None:  # fitted, but an exponent sits at its bound: widen the spread of N and D first
        cells = [c for c in _cell_candidates(pool, observations, _median_lr(pool)) if c.key not in taken]
        return proposals + _design_completion(cells, observations, room, budget,
                                              "spread: the fit cannot yet separate the N and D terms")
    proposals += _information_batch(pool, observations, estimate, settings, room, budget, taken=taken)
    return proposals


def _cell_candidates(pool: list[Candidate], observations: list[Observation], default_lr: float) -> list[Candidate]:
    """One candidate per unobserved (N, D) cell, at the LR preferred for its width."""
    observed = {(o.n_params, o.tokens) for o in observations if o.status in ("finished", "pending")}
    best = best_lr_by_width(observations)
    by_cell: dict[tuple[float, float], list[Candidate]] = defaultdict(list)
    for c in pool:
        if (c.n_params, c.tokens) not in observed:
            by_cell[(c.n_params, c.tokens)].append(c)
    chosen = []
    for options in by_cell.values():
        goal = preferred_lr(options[0].width, best, default_lr)
        chosen.append(min(options, key=lambda c: (abs(np.log(c.lr / goal)), c.lr)))
    return sorted(chosen, key=lambda c: (c.flops, c.key))


def _information_batch(pool, observations, estimate: TargetEstimate, settings: PlannerSettings, room: int,
                       budget: float, taken: set[str]) -> list[Proposal]:
    cells = [c for c in _cell_candidates(pool, observations, _median_lr(pool)) if c.key not in taken]
    if not cells:
        return []
    theta = estimate.fit.bootstrap
    targets = ensemble_targets(theta, settings.target_flops)
    pending = [o for o in observations if o.status == "pending"]
    points = np.array([[c.n_params, c.tokens] for c in cells] + [[o.n_params, o.tokens] for o in pending], float)
    with np.errstate(all="ignore"):
        predictions = log_chinchilla_loss(np.log(points[:, 0]), np.log(points[:, 1]), theta)  # (R, M + P)
    members = np.isfinite(targets).all(axis=1) & np.isfinite(predictions).all(axis=1)
    if members.sum() < 8:
        return []
    joint = np.column_stack([targets[members], predictions[members]])
    covariance = np.cov(joint, rowvar=False)
    noise = max(settings.min_noise, _residual_scale(estimate.fit, observations))
    n_targets = targets.shape[1]
    prior = np.diag(covariance)[:n_targets].copy()
    # Runs already being measured: condition on them first.
    for column in range(n_targets + len(cells), covariance.shape[0]):
        covariance = _condition(covariance, column, noise**2)
    proposals = []
    available = list(range(len(cells)))
    while available and len(proposals) < room:
        columns = np.array([n_targets + i for i in available])
        gains = (covariance[:n_targets][:, columns] ** 2 / (np.diag(covariance)[columns] + noise**2))
        relative = gains / np.maximum(prior[:, None], 1e-300)
        cost = np.array([cells[i].flops for i in available]) / PFLOP
        score = relative.sum(axis=0) / cost
        affordable = np.array([cells[i].flops <= budget for i in available])
        if not affordable.any():
            break
        score = np.where(affordable, score, -np.inf)
        pick = int(np.argmax(score))
        index = available.pop(pick)
        c = cells[index]
        before = np.diag(covariance)[:n_targets].copy()
        covariance = _condition(covariance, n_targets + index, noise**2)
        after = np.diag(covariance)[:n_targets]
        cut = 1 - after / np.maximum(before, 1e-300)
        proposals.append(Proposal(c, float(score[pick]),
                                  f"cuts the variance of log N_opt(C*) by {100 * cut[0]:.0f}% and of log L(C*) by "
                                  f"{100 * cut[1]:.0f}% for {c.flops:.2e} FLOPs"))
        budget -= c.flops
    return proposals


def _condition(covariance: np.ndarray, column: int, noise_variance: float) -> np.ndarray:
    """Gaussian conditioning on a noisy observation of one coordinate (a rank-one update)."""
    link = covariance[:, column]
    return covariance - np.outer(link, link) / (covariance[column, column] + noise_variance)


def _residual_scale(fit: ChinchillaFit, observations: list[Observation]) -> float:
    """Robust standard deviation of the fit's log residuals (MAD)."""
    n, d, loss = best_per_cell(observations)
    residual = np.log(loss) - log_chinchilla_loss(np.log(n), np.log(d), fit.theta[None])[0]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))
