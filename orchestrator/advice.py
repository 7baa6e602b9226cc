"""`plan` and `recommend` on a sweep directory: the sweep's allowed space (from the config that `launch`
saved there), the ledger's results, and the analysis turned into proposals or a configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis.fit import Interval, percentile_interval
from analysis.hyperparams import NEAR_OPTIMAL_TOLERANCE, optimal_lr
from analysis.planner import Observation, PlannerSettings, Proposal, TargetEstimate, estimate_target, propose
from models.flops import count_parameters
from models.spec import ModelSpec, RunSpec, SpecError
from orchestrator.active import candidates_from_rows, observations_from_ledger
from orchestrator.ledger import Ledger
from orchestrator.sweep import SweepSpec, expand, plan_rows, sweep_from_config


def load_sweep(directory: str | Path) -> tuple[dict[str, Any], SweepSpec, list[RunSpec]]:
    """The resolved config `launch` saved in the sweep directory, its SweepSpec and allowed runs."""
    from omegaconf import OmegaConf

    path = Path(directory) / "config.yaml"
    if not path.exists():
        raise SpecError(f"DIR: {directory} has no config.yaml; it is written by `proxyscale launch` into the sweep "
                        "directory (relaunch once to create it)")
    plain = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    sweep = sweep_from_config(plain)
    return plain, sweep, expand(sweep)


def plan_proposals(ledger: Ledger, space: list[RunSpec], *, target_flops: float, budget_flops: float,
                   batch: int | None, max_run_flops: float | None, seed: int) -> tuple[list[Proposal], list[RunSpec]]:
    rows = plan_rows(space)
    candidates = candidates_from_rows(rows)
    observations = observations_from_ledger(ledger)
    settings = PlannerSettings(target_flops=target_flops, budget_flops=budget_flops,
                               batch=batch or len(candidates), max_run_flops=max_run_flops, seed=seed)
    proposals = propose(candidates, observations, settings)
    by_id = {spec.run_id(): spec for spec in space}
    return proposals, [by_id[p.candidate.key] for p in proposals]


def _flatten(spec: RunSpec) -> dict[str, Any]:
    plain = spec.to_dict()
    return {f"{section}.{key}": value for section in ("model", "train", "data") for key, value in plain[section].items()}


def plan_sweep_file(plain: dict[str, Any], specs: list[RunSpec], *, name: str, sweep_dir: str) -> str:
    """A sweep file that runs exactly these specs (into the same sweep directory) with `launch`."""
    import yaml

    flat = [_flatten(spec) for spec in specs]
    varying = [key for key in flat[0] if len({json.dumps(f[key]) for f in flat}) > 1]
    base = {section: {k.split(".", 1)[1]: v for k, v in flat[0].items() if k.startswith(section + ".")
                      and k not in varying} for section in ("model", "train", "data")}
    document: dict[str, Any] = dict(base)
    if plain.get("trainer", {}).get("kind") == "simulated":
        document["trainer"] = plain["trainer"]
    document["sweep_dir"] = sweep_dir
    document["sweep"] = {"name": name, "description": f"{len(specs)} runs proposed by `proxyscale plan`"}
    if varying:
        document["sweep"]["zip"] = [{key: [f[key] for f in flat] for key in varying}]
    return "# @package _global_\n" + yaml.safe_dump(document, sort_keys=False)


def width_for_parameters(model: dict[str, Any], n_params: float) -> int | None:
    """The width of this model family (its other keys fixed) whose parameter count is nearest n_params
    (None for a bound that is not a positive finite count, e.g. a degenerate bootstrap tail)."""
    if not (np.isfinite(n_params) and n_params > 0):
        return None
    step = model.get("head_size") or model.get("n_heads") or 1
    base = {k: v for k, v in model.items() if k != "width"}

    def count(multiple: int) -> int:
        return count_parameters(ModelSpec(**base, width=multiple * step)).total

    low, high = 1, 2
    while count(high) < n_params:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < n_params else (low, middle)
    best = min((low, high), key=lambda m: abs(np.log(count(m) / n_params)))
    return best * step


def lr_at_target(observations: list[Observation], target_width: float, bootstrap: int, seed: int) -> tuple[Interval, str]:
    """The LR for the target width: a power law in width through the per-width optima (when two or more
    widths have a bracketed optimum), else the best width's optimum with its near-optimal range."""
    finished = [o for o in observations if o.status == "finished" and o.loss is not None]
    optima: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for width in sorted({o.width for o in finished}):
        at_width = [o for o in finished if o.width == width]
        budgets = {}
        for o in at_width:
            budgets.setdefault(o.tokens, []).append(o)
        runs = max(budgets.values(), key=len)
        if len({o.lr for o in runs}) >= 3:
            optima[width] = (np.array([o.lr for o in runs]), np.array([o.loss for o in runs]))
    if len(optima) >= 2:
        widths = np.array(sorted(optima), float)
        point = np.array([optimal_lr(*optima[w]) for w in sorted(optima)])
        slope, intercept = np.polyfit(np.log(widths), np.log(point), 1)
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            resampled = []
            for w in sorted(optima):
                lrs, losses = optima[w]
                pick = rng.integers(0, len(lrs), len(lrs))
                resampled.append(optimal_lr(lrs[pick], losses[pick]))
            s, i = np.polyfit(np.log(widths), np.log(resampled), 1)
            samples.append(np.exp(i + s * np.log(target_width)))
        value = float(np.exp(intercept + slope * np.log(target_width)))
        return (percentile_interval(value, samples, 0.95),
                f"power law in width through the optima of {len(optima)} widths (exponent {slope:+.2f})")
    if optima:
        width = max(optima)
        lrs, losses = optima[width]
        near = lrs[losses <= losses.min() * (1 + NEAR_OPTIMAL_TOLERANCE)]
        return (Interval(optimal_lr(lrs, losses), float(near.min()), float(near.max())),
                f"optimum at width {width} (one width with 3+ LRs), transferred; interval = its near-optimal LRs")
    lrs = sorted({o.lr for o in finished})
    best = min(finished, key=lambda o: o.loss).lr if finished else float("nan")
    return Interval(best, min(lrs, default=best), max(lrs, default=best)), "LR not varied enough to locate an optimum"


class NotIdentifiable(SpecError):
    """No recommendation: the fit cannot place N_opt; the message says why and which axis to widen."""


EXIT_NOT_IDENTIFIABLE = 4
"""`recommend` (and `check`) exit status when the runs do not identify L(N, D); 2 stays for usage errors."""

BASES = ("fitted_law", "transfer", "best_run", "not_varied")
SWEEP_FOR = {
    "depth": "a sweep that varies model.depth at equal N, e.g. sweeps/depth.yaml",
    "batch_size": "a sweep that varies train.batch_tokens with the LR, e.g. sweeps/batch_size.yaml",
    "schedule": "a sweep that varies train.schedule, e.g. sweeps/schedules.yaml",
    "lr": "a sweep that varies train.lr at 2+ widths, e.g. sweeps/mup_transfer.yaml",
}


def target_flops_of(plain: dict[str, Any], ledger: Ledger, given: float | None) -> float:
    """The target compute: given, else the sweep's target_flops, else 100x its largest run."""
    if given is not None:
        return float(given)
    if plain.get("target_flops"):
        return float(plain["target_flops"])
    return 100 * max((r["flops"] or 0 for r in ledger.runs()), default=0) or 1.0


def _knob(value, low, high, basis: str, why: str) -> dict[str, Any]:
    assert basis in BASES, basis
    return {"value": value, "low": low, "high": high, "basis": basis, "why": why}


def _categorical_knob(name: str, runs: list[dict], best: dict, column: str) -> dict[str, Any]:
    values = sorted({r[column] for r in runs})
    if len(values) == 1:
        return _knob(values[0], values[0], values[0], "not_varied",
                     f"every run used {values[0]}; {SWEEP_FOR[name]} would fit it")
    low, high = (values[0], values[-1]) if not isinstance(values[0], str) else (None, None)
    return _knob(best[column], low, high, "best_run",
                 f"the best run's of {values} (no law fitted for it yet); {SWEEP_FOR[name]} would fit it")


def recommendation(plain: dict[str, Any], ledger: Ledger, *, target_flops: float, bootstrap: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """The compute-optimal configuration at the target: every knob with value, low, high, basis and why."""
    from analysis.planner import identifiability_problem

    observations = observations_from_ledger(ledger)
    estimate: TargetEstimate | None = estimate_target(observations, target_flops, bootstrap=bootstrap, seed=seed)
    if estimate is None:
        reason = identifiability_problem(observations, target_flops) or "the bootstrap gives no finite optimum"
        raise NotIdentifiable(f"DIR: no recommendation: L(N, D) is not identifiable from these runs: {reason}")
    model = dict(plain["model"])
    widths = {name: width_for_parameters(model, getattr(estimate.n_opt, name)) for name in ("value", "low", "high")}
    lr, lr_why = lr_at_target(observations, widths["value"], bootstrap, seed)
    runs = ledger.runs(["finished"])
    best = min(runs, key=lambda r: r["final_eval_loss"])
    p = estimate.fit.params
    law = (f"L = {p['E']:.4g} + {p['A']:.4g}/N^{p['alpha']:.3f} + {p['B']:.4g}/D^{p['beta']:.3f} fitted on "
           f"{estimate.fit.n_points} (N, D) cells, {bootstrap} bootstrap refits")
    lrs = sorted({r["lr"] for r in runs})
    if len(lrs) == 1:
        lr_knob = _knob(lrs[0], lrs[0], lrs[0], "not_varied",
                        f"every run used {lrs[0]:g}; {SWEEP_FOR['lr']} would fit it")
    elif lr_why.startswith("power law"):
        lr_knob = _knob(lr.value, lr.low, lr.high, "fitted_law", lr_why)
    elif lr_why.startswith("optimum at width"):
        basis = "transfer" if model.get("parametrization") in ("mup", "completep") else "best_run"
        lr_knob = _knob(lr.value, lr.low, lr.high, basis,
                        lr_why + (f" under {model.get('parametrization')}" if basis == "transfer" else
                                  " (standard parametrisation: the LR does not transfer across width)"))
    else:
        lr_knob = _knob(lr.value, lr.low, lr.high, "best_run", f"{lr_why}; {SWEEP_FOR['lr']} would fit it")
    return {
        "identifiable": True,
        "target_flops": target_flops,
        "n_params": _knob(*_triple(estimate.n_opt), "fitted_law", f"N_opt(C*) of {law}"),
        "tokens": _knob(*_triple(estimate.d_opt), "fitted_law", "D_opt(C*) = C* / 6 N_opt of the same law"),
        "width": _knob(widths["value"], widths["low"], widths["high"], "fitted_law",
                       f"the width of this model family (depth {model.get('depth')}) whose N is nearest N_opt"),
        "depth": _categorical_knob("depth", runs, best, "depth"),
        "lr": lr_knob,
        "batch_size": _categorical_knob("batch_size", runs, best, "batch_size"),
        "schedule": _categorical_knob("schedule", runs, best, "schedule"),
        "loss": _knob(*_triple(estimate.loss), "fitted_law", "L(N_opt, D_opt) of the same law"),
        "law": {name: interval.as_dict() for name, interval in estimate.fit.intervals().items()},
        "fit": law,
    }


def _triple(interval: Interval) -> tuple[float, float, float]:
    return interval.value, interval.low, interval.high
