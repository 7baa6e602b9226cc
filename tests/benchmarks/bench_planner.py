"""bench_planner v2: error at the target against the compute spent, per method, on SIMULATED truths.

Every method is charged the FLOPs of the runs it buys (a fork only its own tokens) and, after each
result, refits and records |log N_opt(C*) error|, |L(C*) error| and whether its 95% intervals cover
the truth. Methods, on the same ladder (a depth-4 GPT at widths 64..512, FLOP budgets 1e14..3e16 with
2..400 tokens per parameter; C* = 100x the largest cell):
- planner: analysis/curve_planner.py over the WSD-fork space (per width a chain of constant-LR
  segments, a 20% (1 - sqrt) cooldown forked at each budget), one action at a time, curve law refitted
  on every eval point (bootstrap over lineages) after each, with a budget of 25% of the full grid's
  compute (--planner-budget; its "end" is there);
- grid: the full isoFLOP grid of fresh cosine runs, one budget level at a time (cheapest first), L(N, D)
  fitted to final losses (approach 3) after each level;
- grid_wsd: the same grid built from WSD forks, level by level, fitted with the curve law;
- random: the fresh cosine cells in a random order, L(N, D) refitted after each.
Truths: the 5 of v1 in the curve form (`models/simulated.py`, curve_form=tissue: schedule-aware curves
whose finished cosine runs end exactly at L(N, D)), plus one MISSPECIFIED truth whose curves follow the
multi-power law (Luo et al.) while the planner fits the Tissue-form curve law; reported on its own line.
Each method's truth is the simulated optimum for the schedule it would train the big run with (WSD
cooldown for the fork methods, cosine for the others).

Reported per method: the median errors at its end; for the planner the FLOPs at which its median errors
(both) first get as low as the grid's at its end; saving = grid FLOPs / those FLOPs, against the fresh grid
(grid) and against the same grid from WSD forks (grid_wsd: its own FLOPs at its end), each on the seeds both
ran; coverage of the 95% intervals at the end. Last line: compute_saving_vs_grid=<X>
compute_saving_vs_grid_wsd=<Z> coverage=<Y> (Y over the planner's (truth, seed) pairs of the well-specified
truths, covering both N_opt and L(C*)).

The final estimate's bootstrap is the planner's own (CurvePlannerSettings.final_bootstrap: lineages resampled);
--final-bootstrap A B C reports A and compares B, C (e.g. wild-jackknife, wild) on the same curves and the same
backtest (a line each, and `compared final bootstrap B: coverage=...` at the end).
--final-interval percentile|basic picks how the reported estimate reads its members; both readings of the SAME
members (each carried to the target by the same calibration) are scored on every run: a `same members, both
readings` line per truth (coverage with its exact Clopper-Pearson 95% interval, median widths) and
`same members: coverage_percentile=k/n ... coverage_basic=k/n ...` at the end.
--traces-out FILE keeps every trace; --traces-in FILE... runs nothing and summarises saved runs together (the
planner over 8 seeds with the grids over 2: the savings then use the seeds both have).

v2 with trust at the target (issue 24): when the planner and grid_wsd stop, their curves go through
analysis.curve_planner.final_estimate: the backtest (the largest width and the longest runs held out)
keeps the form and clock that best predict what it held out (Tissue relative / step, or the multi-power
law) and calibrates the intervals by its conformal factor. Their end point is that calibrated estimate;
per truth the bench prints which form was kept, the coverage and the median widths (N_opt high/low,
L(C*) (high - low)/L) before and after calibration, and each seed's reach of N_opt and L(C*) (the error over
the interval's half-width on the truth's side: above 1 is a miss, and says by how much). Last lines:
coverage_before=, the multipower truth's picks and coverage.

Run: .venv/bin/python tests/benchmarks/bench_planner.py [--seeds 4] [--first-seed 0] [--truths chinchilla multipower]
     [--methods planner grid_wsd grid] [--final-bootstrap wild-jackknife lineage] [--traces-out F | --traces-in F G]
     [--plot docs/figures/bench_planner.png]
"""

from __future__ import annotations

import argparse
import pickle
import time
from dataclasses import dataclass, field, replace

import numpy as np

from proxyscale.analysis.curve_law import BOOTSTRAP_METHODS, wsd_shape
from proxyscale.analysis.curve_planner import (
    FINAL_INTERVALS,
    Action,
    CurvePlannerSettings,
    basic_interval,
    final_estimate,
    fit_curves,
    propose_actions,
)
from proxyscale.analysis.fit import fit_chinchilla
from proxyscale.analysis.planner import COARSE_STARTS
from proxyscale.analysis.predictive import carry_to_target
from proxyscale.models.flops import count_parameters, flops_per_token
from proxyscale.models.simulated import curve_loss, true_compute_optimal
from proxyscale.models.spec import ModelSpec, SimulatedSpec, TrainSpec

WIDTHS = (64, 96, 128, 192, 256, 384, 512)
BUDGETS = np.geomspace(1e14, 3e16, 8)
BATCH = 32768
COOLDOWN = 0.2
POINTS_PER_RUN = 8
TRUTHS = {
    "chinchilla": SimulatedSpec(noise=0.002),
    "chinchilla-noisy": SimulatedSpec(noise=0.01),
    "n-heavy (a=.5 b=.25)": SimulatedSpec(alpha=0.5, beta=0.25, A=2000.0, B=300.0, noise=0.003),
    "d-heavy (a=.22 b=.45)": SimulatedSpec(alpha=0.22, beta=0.45, A=120.0, B=6000.0, noise=0.003),
    "low-E noisy": SimulatedSpec(E=0.6, A=300.0, B=900.0, alpha=0.3, beta=0.3, noise=0.006),
}
MISSPECIFIED = {"multipower (misspecified)": SimulatedSpec(noise=0.002, curve_form="multipower")}
COSINE = TrainSpec(schedule="cosine", tokens=BATCH * 1000, batch_tokens=BATCH, warmup_steps=0, min_lr_ratio=0.1)
WSD = TrainSpec(schedule="wsd", tokens=BATCH * 1000, batch_tokens=BATCH, warmup_steps=0, min_lr_ratio=0.0,
                decay_fraction=COOLDOWN, decay_shape="sqrt")


@dataclass
class Cell:
    width: int
    n_params: float
    per_token: float
    steps: int
    level: int
    """Index of its FLOP budget in BUDGETS."""


def ladder() -> list[Cell]:
    cells = []
    for width in WIDTHS:
        model = ModelSpec(width=width, depth=4, n_heads=4, seq_len=256)
        n, per_token = count_parameters(model).total, flops_per_token(model)
        for level, flops in enumerate(BUDGETS):
            tokens = flops / per_token
            if 2 <= tokens / n <= 400:
                cells.append(Cell(width, float(n), per_token, int(round(tokens / BATCH)), level))
    return cells


def multipliers(train: TrainSpec, steps: int) -> np.ndarray:
    from proxyscale.models.simulated import schedule_multipliers

    return schedule_multipliers(replace(train, tokens=steps * BATCH))


def eval_steps(start: int, end: int) -> np.ndarray:
    return np.unique(np.linspace(start, end, POINTS_PER_RUN + 1)[1:].round().astype(int))


def fork_actions(cells: list[Cell]) -> list[Action]:
    """Per width: chain segments (constant) to each fork step, and a cooldown from each."""
    actions = []
    for width in WIDTHS:
        mine = sorted((c for c in cells if c.width == width), key=lambda c: c.steps)
        if not mine:
            continue
        previous, root = None, f"w{width}-s1"
        for k, cell in enumerate(mine):
            fork = cell.steps - int(np.ceil(COOLDOWN * cell.steps))
            start = 0 if previous is None else previous[1]
            if fork > start:
                key = f"w{width}-s{k + 1}"
                actions.append(Action(key, "new_width" if previous is None else "extend",
                                      None if previous is None else previous[0], width, cell.n_params,
                                      np.ones(fork), BATCH, start, eval_steps(start, fork),
                                      cell.per_token * BATCH * (fork - start), root))
                previous = (key, fork)
            u = multipliers(WSD, cell.steps)
            actions.append(Action(f"w{width}-c{cell.level}", "cooldown", previous[0], width, cell.n_params, u, BATCH,
                                  previous[1], eval_steps(previous[1], cell.steps),
                                  cell.per_token * BATCH * (cell.steps - previous[1]), root))
    return actions


def fresh_actions(cells: list[Cell]) -> list[Action]:
    return [Action(f"w{c.width}-f{c.level}", "fresh", None, c.width, c.n_params, multipliers(COSINE, c.steps), BATCH,
                   0, eval_steps(0, c.steps), c.per_token * BATCH * c.steps, f"w{c.width}-f{c.steps}") for c in cells]


@dataclass
class Trace:
    flops: list[float] = field(default_factory=list)
    n_error: list[float] = field(default_factory=list)
    loss_error: list[float] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)
    seed: int = -1
    final: dict = field(default_factory=dict)
    """v2: the end through final_estimate: form kept, coverage and widths before / after calibration."""


class World:
    """A truth, a seed, and the noisy curves it reports for actions."""

    def __init__(self, truth: SimulatedSpec, seed: int, target: float) -> None:
        self.truth, self.rng, self.target = truth, np.random.default_rng(seed), target
        self.optimum = {name: true_compute_optimal(truth, target, replace(train, tokens=BATCH * 10**4))
                        for name, train in (("cosine", COSINE), ("wsd", WSD))}

    def observe(self, action: Action):
        clean = curve_loss(self.truth, action.n_params, action.multipliers, action.eval_steps, batch_tokens=BATCH,
                           warmup_steps=0)
        noisy = clean * (1 + self.truth.noise * self.rng.standard_normal(len(clean)))
        return action.curve(losses=noisy)

    def record(self, trace: Trace, spent: float, n_opt, loss, schedule: str) -> None:
        truth = self.optimum[schedule]
        if n_opt is None:
            trace.flops.append(spent)
            trace.n_error.append(np.inf)
            trace.loss_error.append(np.inf)
            trace.covered.append(False)
            return
        trace.flops.append(spent)
        trace.n_error.append(abs(np.log(n_opt.value / truth["n_opt"])))
        trace.loss_error.append(abs(loss.value / truth["loss"] - 1))
        trace.covered.append(bool(n_opt.low <= truth["n_opt"] <= n_opt.high and loss.low <= truth["loss"] <= loss.high))


def covers(truth: dict, n_opt, loss) -> bool:
    return bool(n_opt.low <= truth["n_opt"] <= n_opt.high and loss.low <= truth["loss"] <= loss.high)


def reflected(interval):
    """The interval mirrored about its value in log (the basic bootstrap interval of the same members)."""
    from proxyscale.analysis.fit import Interval

    if not (interval.low > 0 and interval.high > 0 and interval.value > 0):
        return interval
    return Interval(interval.value, interval.value**2 / interval.high, interval.value**2 / interval.low)


def readings(truth: dict, final) -> dict[str, dict]:
    """Both readings of the SAME final members (percentile and basic), each carried to the target by the same
    backtest's calibration and distance model, as final_estimate does: per reading, coverage of N_opt and L(C*),
    widths and reaches. Reflecting is its own inverse, so the reading not asked for costs one reflection."""
    out = {}
    for reading in FINAL_INTERVALS:
        raw = final.raw
        if reading != FINAL["interval"]:
            raw = replace(raw, n_opt=basic_interval(raw.n_opt), d_opt=basic_interval(raw.d_opt),
                          loss=basic_interval(raw.loss))
        _, at = carry_to_target(final.backtest.calibration, {"n_opt": raw.n_opt, "d_opt": raw.d_opt, "loss": raw.loss})
        n_opt, loss = at["n_opt"], at["loss"]
        out[reading] = {"covered": covers(truth, n_opt, loss),
                        "n_covered": bool(n_opt.low <= truth["n_opt"] <= n_opt.high),
                        "l_covered": bool(loss.low <= truth["loss"] <= loss.high),
                        "n_ratio": n_opt.high / n_opt.low if n_opt.low > 0 else np.inf,
                        "l_width": (loss.high - loss.low) / loss.value,
                        "n_reach": reach(truth["n_opt"], n_opt), "l_reach": reach(truth["loss"], loss),
                        "n_error": float(np.log(n_opt.value / truth["n_opt"])),
                        "l_error": float(loss.value / truth["loss"] - 1)}
    return out


def exact_interval(hits: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a coverage of hits / total: 10-20 pairs cannot tell 90% from 80% sharply."""
    from scipy.stats import binomtest

    if total == 0:
        return float("nan"), float("nan")
    ci = binomtest(hits, total).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def readings_line(finals: list[dict]) -> str | None:
    """Percentile and basic readings of the same members: coverage (count, exact 95% interval) and median widths."""
    rows = [f["readings"] for f in finals if "readings" in f]
    if not rows:
        return None
    parts = []
    for reading in FINAL_INTERVALS:
        hits = sum(r[reading]["covered"] for r in rows)
        low, high = exact_interval(hits, len(rows))
        parts.append(f"{reading} {hits}/{len(rows)} = {hits / len(rows):.0%} [exact 95% {low:.0%}, {high:.0%}] "
                     f"(N_opt {sum(r[reading]['n_covered'] for r in rows)}, L(C*) "
                     f"{sum(r[reading]['l_covered'] for r in rows)}), median N_opt high/low "
                     f"{np.median([r[reading]['n_ratio'] for r in rows]):.2f}, L(C*) width "
                     f"{np.median([r[reading]['l_width'] for r in rows]):.2%}")
    return "same members, both readings (after calibration): " + "; ".join(parts)


def reach(truth: float, interval) -> float:
    """|log(truth / value)| over the log half-width on the truth's side: <= 1 when the interval covers it."""
    if not (interval.low > 0 and interval.high > 0 and interval.value > 0):
        return float("inf")
    error = np.log(truth / interval.value)
    side = np.log(interval.high / interval.value) if error >= 0 else np.log(interval.value / interval.low)
    return float(abs(error) / max(side, 1e-12))


def finish(world: World, trace: Trace, curves, spent: float, seed: int, ensemble: int, method: str = "planner") -> None:
    """v2: the end estimate through the backtest and its calibration (replaces the trace's last point)."""
    if not trace.flops:
        return
    final = final_estimate(curves, settings_for(world.target, 0.0, seed, ensemble))
    truth = world.optimum["wsd"]
    if FINAL["curves_out"]:  # the curves the final estimate saw, to try other final estimates on them later
        t = world.truth
        name = f"{method}-a{t.alpha}-b{t.beta}-E{t.E}-n{t.noise}-{t.curve_form}-s{seed}"
        with open(f"{FINAL['curves_out']}/{name}.pkl", "wb") as handle:
            pickle.dump({"curves": list(curves), "optimum": world.optimum, "target": world.target, "seed": seed,
                         "truth": world.truth, "ensemble": ensemble}, handle)
    trace.final = {"form": "/".join(final.backtest.chosen), "factor": final.backtest.calibration.factor}
    if final.raw is None:
        trace.final |= {"covered_before": False, "covered_after": False}
        return
    for tag, est in (("before", final.raw), ("after", final.calibrated)):
        trace.final[f"covered_{tag}"] = covers(truth, est.n_opt, est.loss)
        trace.final[f"n_ratio_{tag}"] = est.n_opt.high / est.n_opt.low if est.n_opt.low > 0 else np.inf
        trace.final[f"l_width_{tag}"] = (est.loss.high - est.loss.low) / est.loss.value
        trace.final[f"n_reach_{tag}"] = reach(truth["n_opt"], est.n_opt)
        trace.final[f"l_reach_{tag}"] = reach(truth["loss"], est.loss)
    # Diagnostic, not what the tool reports: the reported interval reflected about the point after calibration (the
    # other reading, 2 value - (high, low) in log); `readings` scores both readings exactly, before calibration.
    est = final.calibrated
    trace.final["covered_basic"] = covers(truth, reflected(est.n_opt), reflected(est.loss))
    trace.final["readings"] = readings(truth, final)
    # The other final bootstraps asked for, on the same curves and the same backtest (its form and factor).
    for method in FINAL["compare"]:
        other = final_estimate(curves, replace(settings_for(world.target, 0.0, seed, ensemble), final_bootstrap=method),
                               backtest=final.backtest)
        if other.raw is None:
            continue
        for tag, est in (("before", other.raw), ("after", other.calibrated)):
            trace.final[f"{method}:covered_{tag}"] = covers(truth, est.n_opt, est.loss)
            trace.final[f"{method}:n_ratio_{tag}"] = est.n_opt.high / est.n_opt.low if est.n_opt.low > 0 else np.inf
            trace.final[f"{method}:l_width_{tag}"] = (est.loss.high - est.loss.low) / est.loss.value
    trace.n_error[-1] = abs(np.log(final.calibrated.n_opt.value / truth["n_opt"]))
    trace.loss_error[-1] = abs(final.calibrated.loss.value / truth["loss"] - 1)
    trace.covered[-1] = trace.final["covered_after"]


def settings_for(target: float, budget: float, seed: int, ensemble: int) -> CurvePlannerSettings:
    return CurvePlannerSettings(target_flops=target, target_schedule=wsd_shape(decay_fraction=COOLDOWN),
                                target_batch_tokens=BATCH, budget_flops=budget, seed=seed, ensemble=ensemble,
                                final_bootstrap=FINAL["bootstrap"], final_interval=FINAL["interval"])


FINAL = {"bootstrap": CurvePlannerSettings.__dataclass_fields__["final_bootstrap"].default, "compare": [],
         "curves_out": None, "interval": CurvePlannerSettings.__dataclass_fields__["final_interval"].default}
"""The final estimate's bootstrap (--final-bootstrap: the first is reported, the others compared on the same curves);
the loop's refits always resample lineages."""


def run_planner(world: World, actions: list[Action], budget: float, seed: int, ensemble: int) -> Trace:
    trace, curves, status, spent = Trace(), [], {}, 0.0
    estimate = None
    while True:
        settings = settings_for(world.target, budget - spent, seed, ensemble)
        proposals = propose_actions(actions, status, estimate, settings)
        if not proposals:
            finish(world, trace, curves, spent, seed, ensemble)
            return trace
        action = proposals[0].action
        curves.append(world.observe(action))
        status[action.key] = "finished"
        spent += action.flops
        estimate = fit_curves(curves, settings)
        world.record(trace, spent, *(None, None) if estimate is None else (estimate.n_opt, estimate.loss), "wsd")


def run_grid_wsd(world: World, actions: list[Action], seed: int, ensemble: int) -> Trace:
    trace, curves, spent = Trace(), [], 0.0
    done: set[str] = set()
    by_key = {a.key: a for a in actions}
    settings = settings_for(world.target, 0.0, seed, ensemble)
    for level in range(len(BUDGETS)):
        wanted = [a for a in actions if a.kind == "cooldown" and int(a.key.split("-c")[1]) == level]
        if not wanted:
            continue
        for cooldown in wanted:
            chain, key = [], cooldown.key
            while key is not None and key not in done:
                chain.append(by_key[key])
                key = by_key[key].parent
            for a in reversed(chain):
                curves.append(world.observe(a))
                done.add(a.key)
                spent += a.flops
        estimate = fit_curves(curves, settings)
        world.record(trace, spent, *(None, None) if estimate is None else (estimate.n_opt, estimate.loss), "wsd")
    finish(world, trace, curves, spent, seed, ensemble, "grid_wsd")
    return trace


def _final_fit(world: World, finals: list[tuple[float, float, float]], trace: Trace, spent: float) -> None:
    n, d, loss = (np.array(v) for v in zip(*finals, strict=True)) if finals else ([], [], [])
    if len(finals) < 6 or len(set(n)) < 3 or len(set(d)) < 3:
        world.record(trace, spent, None, None, "cosine")
        return
    fit = fit_chinchilla(n, d, loss, bootstrap=100, grid=COARSE_STARTS)
    p = fit.params
    if not all(0.02 < p[k] < 2.98 for k in ("alpha", "beta")):
        world.record(trace, spent, None, None, "cosine")
        return
    with np.errstate(all="ignore"):
        at = fit.compute_optimal(world.target)
    world.record(trace, spent, at["n_opt"], at["loss"], "cosine")


def run_grid(world: World, actions: list[Action]) -> Trace:
    trace, finals, spent = Trace(), [], 0.0
    for level in sorted({int(a.key.split("-f")[1]) for a in actions}):
        for a in actions:
            if int(a.key.split("-f")[1]) == level:
                curve = world.observe(a)
                finals.append((a.n_params, a.tokens, float(curve.losses[-1])))
                spent += a.flops
        _final_fit(world, finals, trace, spent)
    return trace


def run_random(world: World, actions: list[Action], seed: int) -> Trace:
    trace, finals, spent = Trace(), [], 0.0
    for index in np.random.default_rng(1000 + seed).permutation(len(actions)):
        a = actions[index]
        finals.append((a.n_params, a.tokens, float(world.observe(a).losses[-1])))
        spent += a.flops
        _final_fit(world, finals, trace, spent)
    return trace


def at_compute(trace: Trace, flops: float) -> tuple[float, float, bool]:
    """The trace's errors after the last result bought within `flops` (inf before any estimate)."""
    index = np.searchsorted(trace.flops, flops, side="right") - 1
    if index < 0:
        return np.inf, np.inf, False
    return trace.n_error[index], trace.loss_error[index], trace.covered[index]


def median_curve(traces: list[Trace], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([[at_compute(t, c)[:2] for c in grid] for t in traces])  # (seeds, grid, 2)
    return np.median(values[:, :, 0], axis=0), np.median(values[:, :, 1], axis=0)


def needed_to_match(traces: dict[str, list[Trace]], reference: str, total: float) -> float | None:
    """The FLOPs at which the planner's median errors (both) first get as low as `reference`'s at its end
    (None: never, or a method missing)."""
    if "planner" not in traces or not traces.get(reference):
        return None
    # Compared on the same (truth, seed) pairs: a reference run over fewer seeds (--traces-in) meets those seeds only.
    seeds = {t.seed for t in traces[reference]}
    planner = [t for t in traces["planner"] if t.seed in seeds]
    if not planner:
        return None
    target_n = np.median([t.n_error[-1] for t in traces[reference]])
    target_l = np.median([t.loss_error[-1] for t in traces[reference]])
    grid = np.geomspace(total / 1000, total * 1.5, 200)
    n_med, l_med = median_curve(planner, grid)
    reached = np.flatnonzero((n_med <= target_n) & (l_med <= target_l))
    return float(grid[reached[0]]) if len(reached) else None


def savings(traces: dict[str, list[Trace]], grid_total: float) -> dict[str, tuple[float, float | None]]:
    """Per reference method (grid: fresh runs; grid_wsd: the same grid from WSD forks): (its FLOPs at its end, the
    planner's FLOPs to match its end errors). Saving = the first over the second."""
    out = {}
    for reference in ("grid", "grid_wsd"):
        if reference in traces and traces[reference] and "planner" in traces:
            total = grid_total if reference == "grid" else float(np.median([t.flops[-1] for t in traces[reference]]))
            out[reference] = (total, needed_to_match(traces, reference, total))
    return out


def saving_text(total: float, needed: float | None) -> str:
    return f"{total / needed:.2f}x ({needed:.2e} of {total:.2e} FLOPs)" if needed else "- (never as low)"


def summarise(name: str, traces: dict[str, list[Trace]], grid_total: float) -> tuple[float | None, dict]:
    """Print one truth's (or the pool's) end errors, coverage and savings; returns (FLOPs to match grid, ends)."""
    ends = {m: (np.median([t.n_error[-1] for t in ts]), np.median([t.loss_error[-1] for t in ts]),
                np.mean([t.covered[-1] for t in ts]), np.median([t.flops[-1] for t in ts])) for m, ts in traces.items()}
    saved = savings(traces, grid_total)
    needed = saved.get("grid", (grid_total, None))[1]
    parts = [f"{m} N {e[0]:.3f} L {e[1]:.4f} cov {e[2]:.0%} @ {e[3]:.2e}" for m, e in ends.items()]
    saving = "; ".join(f"planner saving vs {ref} {saving_text(*value)}" for ref, value in saved.items())
    print(f"{name:<27} end |log N err|, |L err|, coverage: " + "; ".join(parts) + (f" | {saving}" if saving else ""),
          flush=True)
    for method in ("planner", "grid_wsd"):
        finals = [t.final for t in traces.get(method, []) if t.final]
        if finals:
            print(f"{'':<27} {method} v2: " + trust_line(finals), flush=True)
            for line in compared_lines(finals) + [x for x in [readings_line(finals)] if x]:
                print(f"{'':<27} {method} v2 {line}", flush=True)
    return needed, ends


def trust_line(finals: list[dict]) -> str:
    """Forms the backtest kept, calibration factors, coverage and median widths before -> after calibration."""
    forms = {}
    for f in finals:
        forms[f["form"]] = forms.get(f["form"], 0) + 1

    def median(key: str) -> float:
        values = [f[key] for f in finals if key in f]
        return float(np.median(values)) if values else float("nan")

    kept = ", ".join(f"{form} {count}/{len(finals)}" for form, count in sorted(forms.items()))
    return (f"kept {kept}; factor median {median('factor'):.2f}; coverage "
            f"{np.mean([f['covered_before'] for f in finals]):.0%} -> {np.mean([f['covered_after'] for f in finals]):.0%};"
            f" median N_opt high/low {median('n_ratio_before'):.2f} -> {median('n_ratio_after'):.2f}, L(C*) width "
            f"{median('l_width_before'):.2%} -> {median('l_width_after'):.2%}; reach (error / half-width, > 1 misses) "
            f"N_opt {_reaches(finals, 'n_reach_after')}, L(C*) {_reaches(finals, 'l_reach_after')}; diagnostic: the "
            f"reported intervals reflected about the value (after calibration; the other reading) cover "
            f"{np.mean([f.get('covered_basic', False) for f in finals]):.0%}")


def compared_lines(finals: list[dict]) -> list[str]:
    """One line per compared final bootstrap (--final-bootstrap's others): coverage and median widths."""
    methods = sorted({key.split(":")[0] for f in finals for key in f if ":" in key})
    out = []
    for method in methods:
        rows = [f for f in finals if f"{method}:covered_after" in f]

        def median(key: str, rows=rows, method=method) -> float:
            return float(np.median([f[f"{method}:{key}"] for f in rows]))

        out.append(f"compared, final bootstrap {method}: coverage {np.mean([f[f'{method}:covered_before'] for f in rows]):.0%}"
                   f" -> {np.mean([f[f'{method}:covered_after'] for f in rows]):.0%}; median N_opt high/low "
                   f"{median('n_ratio_before'):.2f} -> {median('n_ratio_after'):.2f}, L(C*) width "
                   f"{median('l_width_before'):.2%} -> {median('l_width_after'):.2%} ({len(rows)} pairs)")
    return out


def _reaches(finals: list[dict], key: str) -> str:
    return "[" + " ".join(f"{f[key]:.2f}" for f in finals if key in f) + "]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--ensemble", type=int, default=32, help="bootstrap members of the planner's curve law")
    parser.add_argument("--plot", help="write the error-against-compute figure here (PNG)")
    parser.add_argument("--planner-budget", type=float, default=0.25,
                        help="the planner's budget as a share of the full grid's compute")
    parser.add_argument("--truths", nargs="+", metavar="WORD",
                        help="only the truths whose name contains one of these words (default: all)")
    parser.add_argument("--methods", nargs="+", choices=["planner", "grid", "grid_wsd", "random"],
                        default=["planner", "grid", "grid_wsd", "random"],
                        help="methods to run (grid is needed for the saving; default: all)")
    parser.add_argument("--final-bootstrap", nargs="+", choices=list(BOOTSTRAP_METHODS), default=[FINAL["bootstrap"]],
                        help="the bootstrap of the final estimate (default: the planner's own, %(default)s); more "
                             "than one: the first is reported, the others are compared on the same curves")
    parser.add_argument("--final-interval", choices=list(FINAL_INTERVALS), default=FINAL["interval"],
                        help="how the reported final estimate reads its members (basic: reflected about the point; "
                             "default: the planner's own, %(default)s); both readings are scored either way")
    parser.add_argument("--traces-out", help="also write every trace here (pickle), to merge with --traces-in")
    parser.add_argument("--curves-out", metavar="DIR",
                        help="also write the curves each final estimate saw (one pickle per method, truth and seed)")
    parser.add_argument("--traces-in", nargs="+", metavar="FILE",
                        help="run nothing: merge the traces of earlier runs (e.g. the planner over 8 seeds and the "
                             "grids over 2) and print their summary; savings compare the same seeds")
    args = parser.parse_args()
    FINAL["bootstrap"], FINAL["compare"] = args.final_bootstrap[0], args.final_bootstrap[1:]
    FINAL["curves_out"], FINAL["interval"] = args.curves_out, args.final_interval
    cells = ladder()
    forks, fresh = fork_actions(cells), fresh_actions(cells)
    grid_total = sum(a.flops for a in fresh)
    fork_total = sum(a.flops for a in forks)
    target = 100 * max(a.flops for a in fresh)
    print(f"ladder: {len(cells)} cells over {len(WIDTHS)} widths; full grid of fresh runs {grid_total:.3e} FLOPs, the "
          f"same grid from WSD forks {fork_total:.3e}; C* = {target:.2e}; {args.seeds} seeds, ensemble {args.ensemble}; "
          f"final bootstrap {args.final_bootstrap[0]}" + (f" (compared: {', '.join(FINAL['compare'])})"
                                                          if FINAL["compare"] else ""))
    started = time.perf_counter()
    truths = {name: truth for name, truth in {**TRUTHS, **MISSPECIFIED}.items()
              if not args.truths or any(word in name for word in args.truths)}
    loaded = merged_traces(args.traces_in) if args.traces_in else None
    methods = sorted({m for by_method in loaded.values() for m in by_method}) if loaded else args.methods
    pooled: dict[str, list[Trace]] = {m: [] for m in methods}
    needed_by_truth = {}
    kept: dict[str, dict[str, list[Trace]]] = {}
    for name, truth in truths.items():
        if loaded is not None:
            if name not in loaded:
                continue
            traces = {m: list(loaded[name].get(m, [])) for m in pooled}
        else:
            traces = {m: [] for m in pooled}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                world = World(replace(truth, seed=seed), seed, target)
                for method in args.methods:
                    if method == "planner":
                        trace = run_planner(world, forks, args.planner_budget * grid_total, seed, args.ensemble)
                    elif method == "grid":
                        trace = run_grid(world, fresh)
                    elif method == "grid_wsd":
                        trace = run_grid_wsd(world, forks, seed, args.ensemble)
                    else:
                        trace = run_random(world, fresh, seed)
                    trace.seed = seed
                    traces[method].append(trace)
        kept[name] = traces
        if args.traces_out:  # after every truth, so a stopped run keeps what it has
            with open(args.traces_out, "wb") as handle:
                pickle.dump({"bootstrap": args.final_bootstrap[0], "traces": kept}, handle)
        needed_by_truth[name], _ = summarise(name, traces, grid_total)
        if name in TRUTHS:
            for m in pooled:
                pooled[m] += traces[m]
        else:
            _MISSPECIFIED_TRACES[name] = traces.get("planner", []) + traces.get("grid_wsd", [])
        if args.plot:
            _plot_add(name, traces, grid_total)
    needed, ends = summarise("all well-specified", pooled, grid_total) if any(pooled.values()) else (None, {})
    planner = pooled.get("planner", [])
    coverage = float(np.mean([t.covered[-1] for t in planner])) if planner else float("nan")
    before = float(np.mean([t.final.get("covered_before", False) for t in planner])) if planner else float("nan")
    print(f"({time.perf_counter() - started:.0f}s)")
    if args.plot:
        _plot_save(args.plot, pooled, grid_total)
    saving = grid_total / needed if needed else 0.0
    wsd_total, wsd_needed = savings(pooled, grid_total).get("grid_wsd", (0.0, None))
    saving_wsd = wsd_total / wsd_needed if wsd_needed else 0.0
    print(f"compute_saving_vs_grid={saving:.2f} compute_saving_vs_grid_wsd={saving_wsd:.2f} coverage={coverage:.2f} "
          f"coverage_before={before:.2f}")
    for method in sorted({key.split(":")[0] for t in planner for key in t.final if ":" in key}):
        rows = [t.final for t in planner if f"{method}:covered_after" in t.final]
        print(f"compared final bootstrap {method}: coverage={np.mean([f[f'{method}:covered_after'] for f in rows]):.2f} "
              f"coverage_before={np.mean([f[f'{method}:covered_before'] for f in rows]):.2f} ({len(rows)} pairs)")
    rows = [t.final["readings"] for t in planner if "readings" in t.final]
    if rows:
        text = []
        for reading in FINAL_INTERVALS:
            hits = sum(r[reading]["covered"] for r in rows)
            low, high = exact_interval(hits, len(rows))
            text.append(f"coverage_{reading}={hits}/{len(rows)} ({hits / len(rows):.2f}, exact 95% {low:.2f}-{high:.2f})")
        print("same members: " + " ".join(text))
    for name in MISSPECIFIED:
        if name in truths and _MISSPECIFIED_TRACES.get(name):
            finals = [t.final for t in _MISSPECIFIED_TRACES[name] if t.final]
            picks = np.mean([f["form"].startswith("mpl") for f in finals]) if finals else float("nan")
            print(f"multipower_picks_mpl={picks:.2f} multipower_coverage="
                  f"{np.mean([f['covered_after'] for f in finals]) if finals else float('nan'):.2f}")


def merged_traces(paths: list[str]) -> dict[str, dict[str, list[Trace]]]:
    """{truth: {method: traces}} from --traces-out files; a (truth, method, seed) seen twice keeps its first trace."""
    merged: dict[str, dict[str, list[Trace]]] = {}
    for path in paths:
        with open(path, "rb") as handle:
            saved = pickle.load(handle)
        for name, by_method in saved["traces"].items():
            for method, traces in by_method.items():
                have = merged.setdefault(name, {}).setdefault(method, [])
                seeds = {t.seed for t in have}
                have += [t for t in traces if t.seed not in seeds]
    return merged


_FIGURE: dict = {}
_MISSPECIFIED_TRACES: dict[str, list[Trace]] = {}


def _plot_add(name: str, traces: dict[str, list[Trace]], grid_total: float) -> None:
    _FIGURE[name] = traces


def _plot_save(path: str, pooled: dict[str, list[Trace]], grid_total: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.geomspace(grid_total / 300, grid_total * 1.2, 150)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, traces in pooled.items():
        n_med, l_med = median_curve(traces, grid)
        axes[0].plot(grid, n_med, label=method)
        axes[1].plot(grid, l_med, label=method)
    for ax, title in zip(axes, ("median |log N_opt(C*) error|", "median |L(C*) error| (relative)"), strict=True):
        ax.axvline(grid_total, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FLOPs spent")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("bench_planner v2: well-specified truths pooled (dotted: the full grid's compute)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
