"""bench_fit.py --scale: the analysis's cost as a sweep grows (issue 22). See bench_fit.py's docstring."""

from __future__ import annotations

import copy
import math
import time

import numpy as np

from proxyscale.analysis.curve_law import Curve, cosine_shape, fit_curve_law
from proxyscale.analysis.curve_planner import CurvePlannerSettings, estimate_from_fit, fit_curves, propose_actions
from proxyscale.analysis.fit import fit_chinchilla
from proxyscale.analysis.incremental import WarmCurves, refit_chinchilla, run_curve_refit
from proxyscale.models.flops import count_parameters
from proxyscale.models.simulated import schedule_multipliers, simulate_run
from proxyscale.models.spec import ModelSpec, RunSpec, SimulatedSpec, TrainSpec
from proxyscale.orchestrator.active import _Background

WIDTHS = (32, 48, 64, 96, 128, 192)
STEPS = (400, 800, 1600, 3200)
SCHEDULES = ("cosine", "wsd")
POINTS_PER_RUN = 33
BATCH = 1024
TRUTH = SimulatedSpec(noise=0.003)


def run_spec(i: int, *, seed_offset: int = 0) -> RunSpec:
    steps = STEPS[(i // len(WIDTHS)) % len(STEPS)]
    return RunSpec(model=ModelSpec(width=WIDTHS[i % len(WIDTHS)], depth=2, n_heads=2, seq_len=64), simulated=TRUTH,
                   train=TrainSpec(lr=0.01, tokens=steps * BATCH, batch_tokens=BATCH, warmup_steps=10,
                                   eval_interval_tokens=steps * BATCH // POINTS_PER_RUN,
                                   schedule=SCHEDULES[(i // (len(WIDTHS) * len(STEPS))) % 2],
                                   seed=seed_offset + i // (len(WIDTHS) * len(STEPS) * 2)))


def simulated_runs(count: int) -> list[tuple[RunSpec, Curve, float]]:
    """(spec, its curve of ~33 eval points, its final loss) of `count` simulated runs."""
    out = []
    for i in range(count):
        spec = run_spec(i)
        result = simulate_run(spec)
        steps, _, losses = (np.array(v) for v in zip(*result.eval_curve[1:], strict=True))
        curve = Curve(name=spec.run_id(), lrs=spec.train.lr * schedule_multipliers(spec.train), steps=steps.astype(int),
                      losses=losses, n_params=float(result.n_params), batch_tokens=BATCH, group=spec.run_id())
        out.append((spec, curve, result.final_eval_loss))
    return out


def open_actions(count: int = 40):
    """The planner's candidates: fresh runs not yet run (other seeds of the same ladder)."""
    from proxyscale.orchestrator.active import actions_from_specs

    return actions_from_specs([run_spec(i, seed_offset=1000) for i in range(count)])


RECURSIVE_RUNS = 3
"""Runs taken in one at a time by the recursive update (each compared with a warm refit on the same curves)."""


def gaps(stepped, refitted, base) -> dict[str, float]:
    """|log N_opt| and |L(C*)| (nats) between a recursively updated estimate and a full refit on the same curves, and
    the same for the estimate not updated (the last refit's)."""
    return {"log_n": abs(np.log(stepped.n_opt.value / refitted.n_opt.value)),
            "loss": abs(stepped.loss.value - refitted.loss.value),
            "log_n_none": abs(np.log(base.n_opt.value / refitted.n_opt.value)),
            "loss_none": abs(base.loss.value - refitted.loss.value),
            "half_log_n": 0.5 * np.log(refitted.n_opt.high / refitted.n_opt.low),
            "half_loss": 0.5 * (refitted.loss.high - refitted.loss.low)}


def timed(function, repeats: int = 1) -> tuple[float, object]:
    started = time.perf_counter()
    for _ in range(repeats):
        out = function()
    return (time.perf_counter() - started) / repeats, out


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) > 1 else math.nan


def main(sizes: list[int], *, scratch: bool = True) -> None:
    # The target is a big run: its batch is 1M tokens (a target at this ladder's 1,024 would have ~1e7 steps, and the
    # target's schedule integrals, not the points, would dominate every step).
    settings = CurvePlannerSettings(target_flops=1e17, target_schedule=cosine_shape(), target_batch_tokens=2**20,
                                    budget_flops=1e30, batch=1, ensemble=64)
    actions = open_actions()
    every = simulated_runs(max(sizes))
    rows = []
    for size in sizes:
        runs = every[:size]
        specs, curves, finals = zip(*runs, strict=True)
        points = sum(len(c.steps) for c in curves)
        n = np.array([count_parameters(s.model).total for s in specs], float)
        d = np.array([s.train.tokens for s in specs], float)
        keys = [s.run_id() for s in specs]
        loss = np.array(finals)
        row = {"runs": size, "points": points}
        skipped = (math.nan, None)
        row["lnd_scratch"], _ = timed(lambda: fit_chinchilla(n, d, loss, bootstrap=100, seed=0)) if scratch else skipped  # noqa: B023
        last = refit_chinchilla(keys[:-1], n[:-1], d[:-1], loss[:-1], bootstrap=100)
        row["lnd_warm"], _ = timed(lambda: refit_chinchilla(keys, n, d, loss, previous=last, bootstrap=100))  # noqa: B023
        row["curve_scratch"], _ = (timed(lambda: fit_curve_law(curves, clock="relative", bootstrap=64, seed=0))  # noqa: B023
                                   if scratch else skipped)
        status = {key: "finished" for key in keys}

        def planner_step():
            estimate = fit_curves(list(curves), settings)  # noqa: B023
            return propose_actions(actions, status, estimate, settings)  # noqa: B023

        row["step_scratch"], picks = timed(planner_step) if scratch else skipped
        refits = WarmCurves(settings.ensemble)
        refits.fit(list(curves[:-RECURSIVE_RUNS]), settings)  # the loop's refit before the last runs ended
        stepped = copy.deepcopy(refits)  # the same fit and members' weights, then recursive updates only
        base = estimate_from_fit(stepped.state.fit, settings)  # the estimate not updated
        updates, found = [], []
        for k in range(RECURSIVE_RUNS, 0, -1):  # one more run each time: its update, and a warm refit to compare
            seen = list(curves[:len(curves) - k + 1])
            spare = copy.deepcopy(stepped) if k == 1 else None  # before the last update: to time it again below
            elapsed, stepped_estimate = timed(lambda: stepped.update([seen[-1]], settings))  # noqa: B023
            updates.append(elapsed)
            if k > 1:
                before = refits.fit(seen, settings)  # at the end: the loop's refit before the last run ended
                found.append(gaps(stepped_estimate, before, base))
        row["update"] = float(np.median(updates))
        between = dict(status) | {keys[-1]: "running"}  # between refits: the new run conditioned on, not refitted

        propose_actions(actions, between, before, settings)  # once untimed: first-call costs (imports, caches) aside
        row["step_between"], _ = timed(lambda: propose_actions(actions, between, before, settings), repeats=3)  # noqa: B023
        # A step with the recursive update: the last run's update, then the scoring on its estimate (every run seen).
        scoring, _ = timed(lambda: propose_actions(actions, status, stepped_estimate, settings), repeats=3)  # noqa: B023
        row["step_update"] = row["update"] + scoring

        # The same step while the full refit runs in a background thread (orchestrator/active.py): they share the cores.
        refit = _Background(run_curve_refit, refits.prepare(list(curves), settings))
        during = []
        while len(during) < 3 and not refit.done():
            again = copy.deepcopy(spare)
            elapsed, _ = timed(lambda: propose_actions(actions, status, again.update([curves[-1]], settings), settings))  # noqa: B023
            during.append(elapsed)
        refit.result()
        row["step_update_during"] = float(np.median(during)) if during else math.nan
        warm = {}

        def warm_step():
            warm["estimate"] = refits.fit(list(curves), settings)  # noqa: B023
            return propose_actions(actions, status, warm["estimate"], settings)  # noqa: B023

        row["step_warm"], warm_picks = timed(warm_step)
        assert not refits.full
        found.append(gaps(stepped_estimate, warm["estimate"], base))
        row["warm_pick"] = warm_picks[0].action.key if warm_picks else "-"
        row["pick"] = picks[0].action.key if picks else "-"  # the same pick as the warm step's, when both ran
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        row["gaps"] = found
    points = [r["points"] for r in rows]
    columns = ("lnd_scratch", "lnd_warm", "curve_scratch", "step_scratch", "step_warm", "step_between", "update",
               "step_update", "step_update_during")
    widths = (12, 8, 14, 13, 8, 9, 8, 12, 15)
    print(f"\n{'runs':>6} {'points':>7} {'L(N,D)+boot':>12} {'warm':>8} {'curve law+ens':>14} {'planner step':>13} {'warm':>8} "
          f"{'between':>9} {'update':>8} {'step+update':>12} {'during refit':>15}")
    for r in rows:
        print(f"{r['runs']:>6} {r['points']:>7} " + " ".join(f"{r[c]:>{w - 1}.2f}s" for c, w in zip(columns, widths,
                                                                                                    strict=True)))
    print(f"{'log-log slope':>14} " + " ".join(f"{slope(points, [r[c] for r in rows]):>{w}.2f}"
                                             for c, w in zip(columns, widths, strict=True)))
    print(f"\nrecursive update vs a warm refit on the same curves ({RECURSIVE_RUNS} runs taken in one at a time; "
          "none: the estimate not updated; half: the refit's interval half-width)")
    for r in rows:
        for i, g in enumerate(r["gaps"]):
            print(f"{r['runs']:>6} +{i + 1}: |d log N_opt| {g['log_n']:.2e} (none {g['log_n_none']:.2e}, half "
                  f"{g['half_log_n']:.2e})  |d L(C*)| {g['loss']:.2e} (none {g['loss_none']:.2e}, half {g['half_loss']:.2e})")
    print(f"planner_step_ratio={rows[-1]['step_between'] / rows[0]['step_between']:.1f} "
          f"update_step={rows[-1]['step_update'] / rows[0]['step_update']:.1f} "
          f"refit_step={rows[-1]['step_warm'] / rows[0]['step_warm']:.1f} "
          f"scratch={rows[-1]['step_scratch'] / rows[0]['step_scratch']:.1f}")
