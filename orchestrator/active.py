"""The closed loop of `planner=active`: the sweep's combinations are the allowed space, the ledger is the
memory, `analysis.planner` decides. Each time a run ends, `ActiveLoop.propose` refits and returns the
next runs for the free slots, so no worker waits for a round to finish.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from proxyscale.analysis.planner import (
    COARSE_STARTS,
    Candidate,
    PlannerSettings,
    Proposal,
    TargetEstimate,
    estimate_target,
    initial_design,
    propose,
)
from proxyscale.models.spec import RunSpec, SpecError, build_spec
from proxyscale.orchestrator.ledger import Ledger
from proxyscale.orchestrator.observations import candidates_from_rows, committed_flops, observations_from_ledger
from proxyscale.orchestrator.sweep import plan_rows


@dataclass(frozen=True, kw_only=True)
class ActiveSettings:
    kind: str = "active"
    initial_runs: int = 6
    max_run_flops: float | None = None
    tolerance_n_opt: float = 0.1
    tolerance_loss: float = 0.005
    lr_fraction: float = 0.25
    ensemble: int = 64
    seed: int = 0
    objective: str = "target"
    """target: pin down N_opt and L at target_flops; compare: decide between the sweep's recipes there."""
    decide_at: float = 0.95
    """objective compare: stop when P(best) at the target reaches this."""
    metric: str = "loss"
    """objective compare: what the recipes' laws are fitted to: loss (nats per token) or bpb (bits per byte)."""


OBJECTIVES = ("target", "compare")
PLANNER_METRICS = ("loss", "bpb")


def planner_settings(raw: dict[str, Any]) -> ActiveSettings | None:
    """The validated `planner:` block (None for planner=none)."""
    kind = (raw or {}).get("kind", "none")
    if kind not in ("none", "active"):
        raise SpecError(f"planner.kind: {kind!r} is not allowed; choose one of ['none', 'active'] (planner=none|active)")
    if kind == "none":
        return None
    settings = build_spec(ActiveSettings, raw, "planner")
    if settings.initial_runs < 6:
        raise SpecError(f"planner.initial_runs: must be >= 6 (L(N, D) has five parameters), got {settings.initial_runs}")
    for name in ("tolerance_n_opt", "tolerance_loss"):
        if getattr(settings, name) <= 0:
            raise SpecError(f"planner.{name}: must be > 0, got {getattr(settings, name)}")
    if not 0 <= settings.lr_fraction < 1:
        raise SpecError(f"planner.lr_fraction: must be in [0, 1), got {settings.lr_fraction}")
    if settings.ensemble < 16:
        raise SpecError(f"planner.ensemble: must be >= 16 bootstrap refits, got {settings.ensemble}")
    if settings.max_run_flops is not None and settings.max_run_flops <= 0:
        raise SpecError(f"planner.max_run_flops: must be > 0 or null, got {settings.max_run_flops}")
    if settings.objective not in OBJECTIVES:
        raise SpecError(f"planner.objective: {settings.objective!r} is not allowed; choose one of {list(OBJECTIVES)}")
    if not 0.5 < settings.decide_at < 1:
        raise SpecError(f"planner.decide_at: must lie in (0.5, 1), e.g. 0.95, got {settings.decide_at}")
    if settings.metric not in PLANNER_METRICS:
        raise SpecError(f"planner.metric: {settings.metric!r} is not allowed; choose one of {list(PLANNER_METRICS)}")
    return settings


class ActiveLoop:
    """Owns the proposals of one `launch planner=active`: registers each in the ledger and prints why."""

    def __init__(self, *, sweep_name: str, space: list[RunSpec], ledger: Ledger, settings: ActiveSettings,
                 target_flops: float, budget_flops: float, say=print) -> None:
        self.sweep_name, self.ledger, self.settings = sweep_name, ledger, settings
        self.target_flops, self.budget_flops, self.say = target_flops, budget_flops, say
        self.specs = {spec.run_id(): spec for spec in space}
        self.rows = {row["run_id"]: row for row in plan_rows(space)}
        self.candidates = candidates_from_rows(list(self.rows.values()))
        self.stopped: str | None = None
        # A space of forks (stable segments and cooldowns) is planned on curves: analysis.curve_planner.
        self.curve_mode = any(spec.train.init_from for spec in space)
        self.actions = actions_from_specs(space) if self.curve_mode else []
        self.last_estimate: TargetEstimate | None = None
        # Curve mode's estimate: warm-started refits, a slow one in a background thread, and recursive updates in
        # between (`CurveEstimates`); created at the first curve step.
        self.curve_estimates: CurveEstimates | None = None
        self.background_min_points = BACKGROUND_MIN_POINTS
        self.proposals: list[Proposal] = []
        """Every run this loop proposed, in order, each with its reason (the live view shows the last)."""
        # planner.objective compare: decide between the sweep's recipes (analysis.compare_planner).
        self.recipes = {spec.run_id(): spec.recipe for spec in space if spec.recipe is not None}
        # Recipes on different data are evaluated on different texts: their floors E are never shared.
        self.same_eval = len({spec.data for spec in space if spec.recipe is not None}) <= 1
        self.decision = None
        """The last analysis.compare_planner.DecisionState (objective compare)."""
        if settings.objective == "compare":
            names = list(dict.fromkeys(self.recipes.values()))
            if len(names) < 2:
                raise SpecError("planner.objective: compare decides between recipes; the sweep has "
                                f"{len(names)} (sweep.recipes: {{a: {{...}}, b: {{...}}}})")
            if self.curve_mode:
                raise SpecError("planner.objective: compare plans fresh runs; a sweep of forks (sweep.cooldowns) is "
                                "planned on curves: use planner.objective: target")

    def initial(self) -> list[RunSpec]:
        """The initial design, or nothing if the ledger already holds runs (a relaunch resumes instead)."""
        if self.ledger.runs():
            return []
        if self.settings.objective == "compare":
            proposals = self._decide(float("inf"), 10**6)
            design_flops = sum(p.candidate.flops for p in proposals)
            if not proposals or design_flops > self.budget_flops:
                raise SpecError(f"budget_flops: {self.budget_flops:.3g} does not cover the recipes' initial designs "
                                f"({len(proposals)} runs); raise it or lower planner.initial_runs")
            return self._register(proposals)
        if self.curve_mode:
            from proxyscale.analysis.curve_planner import propose_actions

            picks = propose_actions(self.actions, {}, None, self._curve_settings(self.budget_flops,
                                                                                 self.settings.initial_runs))
            design_flops = sum(p.action.flops for p in picks)
            if not picks or design_flops > self.budget_flops:
                raise SpecError(f"budget_flops: {self.budget_flops:.3g} does not cover the initial design "
                                f"({len(picks)} runs, {design_flops:.3g} FLOPs); raise it or lower planner.initial_runs")
            return self._register([self._as_proposal(p) for p in picks])
        design = initial_design(self.candidates, self.settings.initial_runs, max_run_flops=self.settings.max_run_flops)
        design_flops = sum(c.flops for c in design)
        if design_flops > self.budget_flops:
            raise SpecError(f"budget_flops: {self.budget_flops:.3g} does not cover the initial design "
                            f"({len(design)} runs, {design_flops:.3g} FLOPs); raise it or lower planner.initial_runs")
        return self._register([Proposal(c, 0.0, "initial design: spread over N and D, cheapest first") for c in design])

    def _register(self, proposals: list[Proposal]) -> list[RunSpec]:
        specs = [self.specs[p.candidate.key] for p in proposals]
        self.ledger.register(self.sweep_name, specs, [self.rows[p.candidate.key] for p in proposals])
        self.proposals += proposals
        for p in proposals:
            c = p.candidate
            self.say(f"  plan: {c.key} width {c.width} N {c.n_params:.3g} D {c.tokens:.3g} lr {c.lr:.2g} "
                     f"({c.flops:.2e} FLOPs): {p.reason}")
        return specs

    def converged(self, estimate: TargetEstimate | None) -> bool:
        return (estimate is not None and estimate.relative_halfwidth("n_opt") <= self.settings.tolerance_n_opt
                and estimate.relative_halfwidth("loss") <= self.settings.tolerance_loss)

    def _curve_settings(self, budget: float, batch: int):
        from proxyscale.analysis.curve_planner import CurvePlannerSettings

        template = next(s for s in self.specs.values() if s.train.schedule != "constant")
        return CurvePlannerSettings(target_flops=self.target_flops, target_schedule=schedule_shape(template.train),
                                    target_batch_tokens=float(template.train.batch_tokens), budget_flops=budget,
                                    batch=batch, max_run_flops=self.settings.max_run_flops,
                                    ensemble=self.settings.ensemble, seed=self.settings.seed)

    def _as_proposal(self, picked) -> Proposal:
        a = picked.action
        return Proposal(Candidate(a.key, a.width, a.n_params, a.tokens, a.flops, self.specs[a.key].train.lr),
                        picked.score, picked.reason)

    def _read_curves(self, run_ids: set[str] | None) -> list[tuple[str, Any]]:
        """(run id, Curve) of every finished run with an eval loss (run_ids None), or of those in run_ids only (only
        their step rows are read: the curve points already fitted are not read again). In this thread: the ledger's
        SQLite connection belongs to it."""
        from proxyscale.orchestrator.curves import ledger_curves

        return [(c.run_id, c.curve) for c in ledger_curves(self.ledger, run_ids)]

    def _propose_on_curves(self, free_slots: int) -> list[RunSpec]:
        from proxyscale.analysis.curve_planner import propose_actions
        from proxyscale.analysis.incremental import WarmCurves

        runs = self.ledger.runs()
        # Skipped runs never trained (their parent failed): their planned FLOPs were not spent.
        left = self.budget_flops - sum(r["flops"] or 0.0 for r in runs if r["status"] != "skipped")
        status = {r["run_id"]: r["status"] for r in runs}
        settings = self._curve_settings(left, free_slots)
        if self.curve_estimates is None:  # warm-started refits: a step costs ~flat as curves grow
            self.curve_estimates = CurveEstimates(WarmCurves(settings.ensemble, seed=settings.seed),
                                                  background_min_points=self.background_min_points)
        finished = {key for key, state in status.items() if state == "finished"}

        def decide(wait: bool):
            estimate, unseen = self.curve_estimates.step(finished, self._read_curves, settings, wait=wait)
            # Runs finished but not in the estimate yet (no recursive update possible) are conditioned on as observed.
            scored = {key: "running" if key in unseen else state for key, state in status.items()}
            if estimate is not None and (estimate.relative_halfwidth("n_opt") <= self.settings.tolerance_n_opt
                                         and estimate.relative_halfwidth("loss") <= self.settings.tolerance_loss):
                stop = (f"converged: N_opt within +-{estimate.relative_halfwidth('n_opt'):.1%} and L(C*) within "
                        f"+-{estimate.relative_halfwidth('loss'):.2%} (curve law)")
                return [], stop
            picks = propose_actions(self.actions, scored, estimate, settings)
            if not picks and not any(s in ("pending", "running") for s in status.values()):
                return [], (f"budget spent: {self.budget_flops - left:.3e} of {self.budget_flops:.3e} FLOPs committed"
                            if left > 0 else "budget spent")
            return picks, None

        picks, stop = decide(wait=False)
        if stop and self.curve_estimates.in_flight is not None:
            # The loop would end: not on an estimate a refit in flight is about to replace. Wait for it (its error,
            # if any, surfaces here) and decide again on it.
            picks, stop = decide(wait=True)
        self.stopped = stop
        return self._register([self._as_proposal(p) for p in picks])

    def close(self) -> None:
        """Wait for a curve refit in flight (its error surfaces). Every end of the loop through `propose` already
        has (a stop waits for it); this is for a caller that ends the loop otherwise."""
        if self.curve_estimates is not None:
            self.curve_estimates.wait()

    def _decide_settings(self, budget: float, batch: int):
        from proxyscale.analysis.compare_planner import DecideSettings

        s = self.settings
        return DecideSettings(target_flops=self.target_flops, budget_flops=budget, batch=batch, decide_at=s.decide_at,
                              max_run_flops=s.max_run_flops, ensemble=s.ensemble, seed=s.seed,
                              initial_runs=s.initial_runs, same_eval=self.same_eval)

    def _recipe_candidates(self) -> dict[str, list[Candidate]]:
        out: dict[str, list[Candidate]] = {}
        for c in self.candidates:
            if c.key in self.recipes:
                out.setdefault(self.recipes[c.key], []).append(c)
        return out

    def _decide(self, budget: float, batch: int, observations=None, state=None) -> list[Proposal]:
        from proxyscale.analysis.compare_planner import propose_to_decide

        candidates = self._recipe_candidates()
        observations = observations if observations is not None else {name: [] for name in candidates}
        return propose_to_decide(candidates, observations, self._decide_settings(budget, batch), state=state)

    def _propose_to_decide(self, free_slots: int) -> list[RunSpec]:
        """objective compare: refit every recipe, stop when P(best) reaches decide_at, else the runs that most raise
        its expectation per FLOP (analysis.compare_planner)."""
        from proxyscale.analysis.compare_planner import decision_state
        from proxyscale.orchestrator.recipes import recipe_observations

        by_recipe = recipe_observations(self.ledger, self.settings.metric)
        observations = {name: by_recipe.get(name, []) for name in self._recipe_candidates()}
        flat = [o for obs in by_recipe.values() for o in obs]
        left = self.budget_flops - committed_flops(flat)
        state = decision_state(observations, self._decide_settings(left, free_slots))
        self.decision = state
        if state.decided(self.settings.decide_at):
            self.stopped = (f"decided: {state.best} is best at C = {self.target_flops:.3g} with P(best) "
                            f"{state.p_best:.3f} >= {self.settings.decide_at:g} ({self.settings.metric})")
            return []
        proposals = self._decide(left, free_slots, observations, state)
        if not proposals and not any(o.status == "pending" for o in flat):
            where = state.line()
            self.stopped = (f"budget spent: {committed_flops(flat):.3e} of {self.budget_flops:.3e} FLOPs committed "
                            f"without a decision ({where})")
        return self._register(proposals)

    def propose(self, free_slots: int) -> list[RunSpec]:
        """Refit on the ledger and return up to `free_slots` runs ([] when done or waiting for results)."""
        if self.stopped:
            return []
        if self.settings.objective == "compare":
            return self._propose_to_decide(free_slots)
        if self.curve_mode:
            return self._propose_on_curves(free_slots)
        observations = observations_from_ledger(self.ledger)
        left = self.budget_flops - committed_flops(observations)
        # Refits start from the previous optimum plus a coarse grid: proposals must not keep slots waiting.
        starts = None if self.last_estimate is None else np.vstack([self.last_estimate.fit.theta, COARSE_STARTS])
        estimate = estimate_target(observations, self.target_flops, bootstrap=self.settings.ensemble,
                                   seed=self.settings.seed, starts=starts)
        self.last_estimate = estimate
        if self.converged(estimate):
            self.stopped = (f"converged: N_opt within +-{estimate.relative_halfwidth('n_opt'):.1%} and L(C*) within "
                            f"+-{estimate.relative_halfwidth('loss'):.2%}")
            return []
        settings = PlannerSettings(target_flops=self.target_flops, budget_flops=left, batch=free_slots,
                                   max_run_flops=self.settings.max_run_flops, lr_fraction=self.settings.lr_fraction,
                                   ensemble=self.settings.ensemble, seed=self.settings.seed)
        proposals = propose(self.candidates, observations, settings, estimate=estimate)
        if not proposals and not any(o.status == "pending" for o in observations):
            known = {o.key for o in observations}
            cheapest = min((c.flops for c in self.candidates if c.key not in known), default=float("inf"))
            self.stopped = (f"budget spent: {committed_flops(observations):.3e} of {self.budget_flops:.3e} FLOPs "
                            "committed" if left < cheapest else "no allowed run left that the planner would add")
        return self._register(proposals)


BACKGROUND_MIN_POINTS = 20_000
"""A full curve refit of at least this many points runs in a background thread (a warm refit takes seconds from
~1e4 points, 42 s at 1e5: bench_fit.py --scale); smaller ones run in line, so a small sweep's proposals do not depend
on thread timing."""


class _Background:
    """One call in a daemon thread; `result` joins it and re-raises what it raised. Daemon: a stop signal must not
    wait for a refit to end (nothing in it is durable; the next launch refits)."""

    def __init__(self, function: Callable, *args) -> None:
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(function, *args), daemon=True,
                                       name="proxyscale-curve-refit")
        self.thread.start()

    def _run(self, function: Callable, *args) -> None:
        try:
            self.value = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread by `result`
            self.error = error

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


class CurveEstimates:
    """The closed loop's estimate on curves as runs finish: a full warm refit (analysis.incremental.WarmCurves) as the
    finished runs grow by 5% (`geometric_due`), and in between a recursive Gauss-Newton update from each newly
    finished run's points only (`WarmCurves.update`), so a step between refits costs the same at 1e3 and 1e5 points.

    A refit of `background_min_points` points or more runs in a background thread (numpy releases the GIL in its
    large operations) on curves read in the calling thread: the loop keeps proposing from the last estimate plus
    recursive updates, and the refit's estimate is swapped in at the first step after it ends, then updated with the
    runs that finished while it ran. One refit in flight at most. Without an estimate to update (none yet, or the
    law not identifiable) the refit runs in line and runs finished since are left unseen (the planner conditions on
    them as in flight) until the next.
    """

    def __init__(self, refits, *, background_min_points: float = BACKGROUND_MIN_POINTS) -> None:
        self.refits = refits
        """proxyscale.analysis.incremental.WarmCurves"""
        self.background_min_points = background_min_points
        self.estimate = None
        self.included: set[str] = set()
        """The finished runs the estimate has seen (its refit's and the updates')."""
        self.refitted: set[str] | None = None
        """The finished runs when the last refit started (the geometric schedule counts from them)."""
        self.in_flight: tuple[_Background, set[str]] | None = None
        """A refit running in the background and the finished runs it was given."""

    def step(self, finished: set[str], read_curves: Callable[[set[str] | None], list[tuple[str, Any]]], settings, *,
             wait: bool = False):
        """(estimate, finished runs it has not seen) with `finished` the runs finished now. read_curves(None): (run id,
        Curve) of every finished run; read_curves(ids): of those only. wait: for a refit in flight to end first, and
        start none (the loop's last decision: no thread is left running after it)."""
        from proxyscale.analysis.incremental import geometric_due, run_curve_refit

        self._collect(wait)
        due = self.refitted is None or geometric_due(len(finished), len(self.refitted))
        if self.in_flight is None and due and not (wait and self.refits.recursive):
            refit = self.refits.prepare([curve for _, curve in read_curves(None)], settings)
            if self.refits.recursive and refit.points >= self.background_min_points:
                self.in_flight = (_Background(run_curve_refit, refit), set(finished))
            else:
                self.estimate = self.refits.adopt(run_curve_refit(refit))
                self.included = set(finished)
            self.refitted = set(finished)
        new = finished - self.included
        if new and self.refits.recursive:
            self.estimate = self.refits.update([curve for _, curve in read_curves(new)], settings)
            self.included |= new
        return self.estimate, finished - self.included

    def wait(self) -> None:
        """Wait for a refit in flight and take its estimate (the runs finished since wait for the next step)."""
        self._collect(wait=True)

    def _collect(self, wait: bool) -> None:
        if self.in_flight is None:
            return
        job, given = self.in_flight
        if not (wait or job.done()):
            return
        self.in_flight = None  # before result(): an error surfaces once, and the next step may refit again
        self.estimate = self.refits.adopt(job.result())
        self.included = set(given)


def schedule_shape(train):
    """schedule(T): the LR multipliers of a fresh run of T steps with the shape of `train` (for targets)."""
    from dataclasses import replace

    from proxyscale.models.schedules import lr_multiplier

    template = replace(train, init_from=None)

    def multipliers(steps: int) -> np.ndarray:
        run = replace(template, tokens=max(steps, template.warmup_steps + 2) * template.batch_tokens)
        return np.array([lr_multiplier(i, run) for i in range(run.steps)])

    return multipliers


def eval_steps_of(train) -> np.ndarray:
    """The steps the real trainer evaluates at (models.train._is_eval_step), after the fork step."""
    steps = np.arange(train.fork_step + 1, train.steps + 1)
    crossed = (steps * train.batch_tokens) // train.eval_interval_tokens > ((steps - 1) * train.batch_tokens) // \
        train.eval_interval_tokens
    return steps[crossed | (steps == train.steps)]


def actions_from_specs(space: list[RunSpec]):
    """The planner's actions (analysis.curve_planner.Action) for a space of runs with lineage."""
    from proxyscale.analysis.curve_planner import Action
    from proxyscale.models.flops import count_parameters, training_flops
    from proxyscale.models.schedules import lr_multiplier
    from proxyscale.models.spec import parse_init_from

    parents = {spec.run_id(): parse_init_from(spec.train.init_from)[0] if spec.train.init_from else None
               for spec in space}

    def root(key: str) -> str:
        while parents.get(key):
            key = parents[key]
        return key

    actions = []
    for spec in space:
        key, train = spec.run_id(), spec.train
        parent = parents[key]
        constant = train.schedule == "constant"
        kind = ("new_width" if constant else "fresh") if parent is None else ("extend" if constant else "cooldown")
        multipliers = np.array([lr_multiplier(i, train) for i in range(train.steps)])
        actions.append(Action(key, kind, parent, spec.model.width, float(count_parameters(spec.model).total),
                              multipliers, float(train.batch_tokens), train.fork_step, eval_steps_of(train),
                              training_flops(spec), root(key)))
    return actions