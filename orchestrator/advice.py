"""`plan` and `recommend` on a sweep directory: the sweep's allowed space (from the config that `launch`
saved there), the ledger's results, and the analysis turned into proposals or a configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval
from proxyscale.analysis.lr_batch_law import NEAR_OPTIMAL_TOLERANCE
from proxyscale.analysis.lr_grid import optimal_lr
from proxyscale.analysis.planner import Observation, PlannerSettings, Proposal, TargetEstimate, estimate_target, propose
from proxyscale.models.flops import count_parameters
from proxyscale.models.spec import ModelSpec, RunSpec, SpecError
from proxyscale.orchestrator.family import LR_FAMILY_KEYS, check_same_family, family_values, shown_value
from proxyscale.orchestrator.ledger import Ledger, cell_flops
from proxyscale.orchestrator.observations import candidates_from_rows, observations_from_ledger
from proxyscale.orchestrator.sweep import SweepSpec, expand, plan_rows, sweep_from_config


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
    "batch_size": "a sweep that varies train.batch_tokens with the LR over 2+ token budgets, e.g. sweeps/lr_batch.yaml",
    "schedule": "runs whose curves have 3+ evaluations each at 2+ sizes (the curve law), e.g. sweeps/schedules.yaml",
    "lr": "a sweep that varies train.lr at 2+ widths and token budgets, e.g. sweeps/lr_batch.yaml",
}


def target_flops_of(plain: dict[str, Any], ledger: Ledger, given: float | None) -> float:
    """The target compute: given, else the sweep's target_flops, else 100x its largest run."""
    if given is not None:
        return float(given)
    if plain.get("target_flops"):
        return float(plain["target_flops"])
    return 100 * max((cell_flops(r) for r in ledger.runs()), default=0) or 1.0


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
                   seed: int = 0, evidence: dict[str, Any] | None = None,
                   knob_sources: Sequence[tuple[str, dict[str, Any], Ledger]] = ()) -> dict[str, Any]:
    """The compute-optimal configuration at the target: every knob with value, low, high, basis and why.

    lr, batch_size, depth and schedule come from their laws where the runs support them (`knob_laws`);
    pass a dict as `evidence` to receive the fitted law objects (the report plots them).
    `knob_sources` are other sweeps of the same model family, as (directory, config, ledger): a knob this
    sweep has no law for takes the first source's law, evaluated at this sweep's N_opt and D_opt."""
    from proxyscale.analysis.planner import identifiability_problem

    recipes = None
    if (plain.get("sweep") or {}).get("recipes"):  # a recipe sweep: the winner at the target, then its runs alone
        from proxyscale.orchestrator.recipes import RecipeLedger, recipe_verdict

        recipes = recipe_verdict(plain, ledger, target_flops, bootstrap=bootstrap, seed=seed)
        ledger = RecipeLedger(ledger, recipes["recipe"])
    observations = observations_from_ledger(ledger)
    estimate: TargetEstimate | None = estimate_target(observations, target_flops, bootstrap=bootstrap, seed=seed)
    if estimate is None:
        reason = identifiability_problem(observations, target_flops) or "the bootstrap gives no finite optimum"
        raise NotIdentifiable(f"DIR: no recommendation: L(N, D) is not identifiable from these runs: {reason}")
    # The backtest (the largest sizes of the ladder held out) calibrates N_opt, D_opt and L(C*) (analysis/predictive.py).
    from dataclasses import replace

    from proxyscale.analysis.planner import best_per_cell
    from proxyscale.analysis.predictive import backtest_calibration, profile_target

    # Carried to the target's N_opt: the band widens as the held-out error grows with distance (the distance model).
    cells = best_per_cell(observations)
    calibration = backtest_calibration("chinchilla", *cells, seed=seed, fit=estimate.fit,
                                       target=(estimate.n_opt.value, estimate.d_opt.value))
    estimate = replace(estimate, n_opt=calibration.interval(estimate.n_opt), d_opt=calibration.interval(estimate.d_opt),
                       loss=calibration.interval(estimate.loss))
    # A bootstrap collapsed onto E = 0: the intervals contain what every E the objective admits gives.
    profile = profile_target("chinchilla", estimate.fit, *cells, target_n=[estimate.n_opt.value],
                             target_d=[estimate.d_opt.value], target_flops=target_flops)
    if profile is not None:
        estimate = replace(estimate, n_opt=profile.widen("n_opt", estimate.n_opt),
                           d_opt=profile.widen("d_opt", estimate.d_opt), loss=profile.widen("loss", estimate.loss))
    model = dict(plain["model"])
    widths = {name: width_for_parameters(model, getattr(estimate.n_opt, name)) for name in ("value", "low", "high")}
    lr, lr_why = lr_at_target(observations, widths["value"], bootstrap, seed)
    runs = ledger.runs(["finished"])
    if any(r["schedule"] != "constant" for r in runs):  # constant-LR segments are stretches of runs, not cells
        runs = [r for r in runs if r["schedule"] != "constant"]
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
    found = knob_laws(plain, ledger, runs, estimate, bootstrap=bootstrap, seed=seed)
    if evidence is not None:
        evidence.update(found)
    width_knob = _knob(widths["value"], widths["low"], widths["high"], "fitted_law",
                       f"the width of this model family (depth {model.get('depth')}) whose N is nearest N_opt")
    depth_knob = found.get("depth_knob") or _categorical_knob("depth", runs, best, "depth")
    if found.get("depth_knob") and found["depth_knob"]["basis"] == "fitted_law":
        width_knob = found["width_knob"]
    if found.get("lr_knob") and lrs and len(lrs) > 1:
        lr_knob = found["lr_knob"]
    elif found.get("lr_reason") and lr_knob["basis"] != "not_varied":
        lr_knob["why"] += f" (no Step Law fit: {found['lr_reason']})"
    knobs = {
        "width": width_knob,
        "depth": depth_knob,
        "lr": lr_knob,
        "batch_size": found.get("batch_knob") or _categorical_knob("batch_size", runs, best, "batch_size"),
        "schedule": found.get("schedule_knob") or _with_reason(_categorical_knob("schedule", runs, best, "schedule"),
                                                              found["summary"]["schedule"]["why"]),
    }
    sources = {}
    mine = family_values(ledger)
    for directory, source_plain, source_ledger in knob_sources:
        theirs = family_values(source_ledger)
        check_same_family(mine, theirs, directory)
        source_runs = [r for r in source_ledger.runs(["finished"])
                       if r["final_eval_loss"] is not None and np.isfinite(r["final_eval_loss"])]
        if not source_runs:
            raise SpecError(f"--knobs-from: {directory} has no finished runs with a final loss")
        lawful_batch = knobs["batch_size"]["value"] if knobs["batch_size"]["basis"] in LAW_BASES else None
        borrowed = knob_laws(source_plain, source_ledger, source_runs, estimate, bootstrap=bootstrap, seed=seed,
                             batch_at_target=lawful_batch)
        sources[str(directory)] = borrowed["summary"]
        if evidence is not None:
            evidence.setdefault("sources", {})[str(directory)] = borrowed
        optimizer_differs = [key for key in LR_FAMILY_KEYS if mine[key] != theirs[key]]
        for key, found_key in (("lr", "lr_knob"), ("batch_size", "batch_knob"), ("depth", "depth_knob"),
                               ("schedule", "schedule_knob")):
            offered = borrowed.get(found_key)
            if knobs[key]["basis"] in LAW_BASES or offered is None or offered["basis"] not in LAW_BASES:
                continue
            if key in ("lr", "batch_size") and optimizer_differs:
                # The optimal LR and batch depend on the parametrisation and the optimiser: not borrowed.
                first = optimizer_differs[0]
                knobs[key]["why"] += (f" ({directory} has a law for it, but {first} = {shown_value(theirs[first])!r} "
                                      f"there, {shown_value(mine[first])!r} here, so it does not carry over)")
                continue
            note = ""
            if key == "depth" and mine["model.parametrization"] != theirs["model.parametrization"]:
                note = (f" (measured under {shown_value(theirs['model.parametrization'])}; this sweep is "
                        f"{shown_value(mine['model.parametrization'])})")
            knobs[key] = offered | {"why": f"from {directory} (its law at this sweep's N_opt, D_opt): {offered['why']}{note}",
                                    "source": str(directory)}
            if key == "depth" and borrowed.get("width_knob"):
                knobs["width"] = borrowed["width_knob"] | {
                    "why": f"from {directory}: {borrowed['width_knob']['why']}{note}", "source": str(directory)}
    return {
        "identifiable": True,
        "target_flops": target_flops,
        "n_params": _knob(*_triple(estimate.n_opt), "fitted_law", f"N_opt(C*) of {law}"),
        "tokens": _knob(*_triple(estimate.d_opt), "fitted_law", "D_opt(C*) = C* / 6 N_opt of the same law"),
        **knobs,
        "loss": _knob(*_triple(estimate.loss), "fitted_law", "L(N_opt, D_opt) of the same law"),
        "law": {name: interval.as_dict() for name, interval in estimate.fit.intervals().items()},
        "fit": law,
        "backtest": calibration.line(),
        "calibration": calibration.as_dict(),
        "profile": None if profile is None else profile.as_dict(),
        "knob_laws": found["summary"],
        "knob_sources": sources,
    } | ({"recipes": recipes} if recipes is not None else {})


def open_knob_sources(directories: Sequence[str], main_directory: str, stack: ExitStack
                      ) -> list[tuple[str, dict[str, Any], Ledger]]:
    """(directory, config, ledger) for each `--knobs-from` sweep directory, checked before any fit: a sweep
    directory with finished runs, not the main one (nor twice), of the same model family as the main
    sweep's runs. The ledgers are closed by `stack` (the caller's ExitStack), also on an error."""
    main = Path(main_directory).resolve()
    with Ledger(main / "ledger.sqlite") as ledger:
        mine = family_values(ledger)
    sources, seen = [], set()
    for directory in directories:
        resolved = Path(directory).resolve()
        if resolved == main:
            raise SpecError(f"--knobs-from: {directory} is the sweep being recommended; give other sweeps")
        if resolved in seen:
            continue
        seen.add(resolved)
        if not (resolved / "ledger.sqlite").exists():
            raise SpecError(f"--knobs-from: {directory} is not a sweep directory (no ledger.sqlite)")
        plain, _, _ = load_sweep(directory)
        ledger = stack.enter_context(Ledger(resolved / "ledger.sqlite"))
        theirs = family_values(ledger)
        if not theirs:
            raise SpecError(f"--knobs-from: {directory} has no finished runs")
        if mine:  # (a main sweep without finished runs is refused by recommend itself, as not identifiable)
            check_same_family(mine, theirs, str(directory))
        sources.append((str(directory), plain, ledger))
    return sources


LAW_BASES = ("fitted_law", "transfer")
# ----------------------------------------------------------------------------- a law for every knob


def _round_batch(value: float, seq_len: int, how=round) -> int | None:
    """A batch size in tokens as a whole number of sequences (at least one); None when not finite."""
    if not (np.isfinite(value) and value > 0):
        return None
    return int(max(1, how(value / seq_len)) * seq_len)


def shape_for_aspect(model: dict[str, Any], n_params: float, aspect: float, max_depth: int = 64) -> tuple[int, int] | None:
    """(depth, width) of this model family with N nearest n_params and width / depth nearest `aspect`."""
    if not (np.isfinite(n_params) and n_params > 0 and np.isfinite(aspect) and aspect > 0):
        return None
    best = None
    for depth in range(1, max_depth + 1):
        width = width_for_parameters(model | {"depth": depth}, n_params)
        if width is None:
            continue
        score = abs(np.log(width / depth / aspect))
        if best is None or score < best[0]:
            best = (score, depth, width)
    return None if best is None else (best[1], best[2])


def _knob_rows(runs: list[dict]) -> list[dict]:
    """Finished runs with a loss, of the sweep's most common schedule (constant-LR segments only when no
    run is annealed, as for L(N, D)), so the LR, batch and depth optima compare like with like."""
    rows = [r for r in runs if r["final_eval_loss"] is not None and np.isfinite(r["final_eval_loss"])]
    if any(r["schedule"] != "constant" for r in rows):
        rows = [r for r in rows if r["schedule"] != "constant"]
    if rows:
        schedules = [r["schedule"] for r in rows]
        common = max(set(schedules), key=schedules.count)
        rows = [r for r in rows if r["schedule"] == common]
    return rows


def knob_laws(plain: dict[str, Any], ledger: Ledger, runs: list[dict], estimate: TargetEstimate, *,
              bootstrap: int, seed: int, batch_at_target: float | None = None) -> dict[str, Any]:
    """lr, batch_size, depth and schedule at the target from their laws (papers §4, §5, §6), each as a
    knob dict when the runs support a law (or transfer), else None with the reason in `summary`.

    - lr, batch_size: Step Law (`analysis.lr_batch_law.lr_batch_evidence`): eta_opt = c N^a D^b (under
      muP/CompleteP the law in width is replaced by transfer, if the sweep's drift of LR_opt in width
      allows it) and B_opt = k D^g, at N_opt and D_opt; and whether the optimal LR moves with the batch.
    - depth: the optimal aspect ratio from the loss at equal N across 3+ depths (`fit_depth_law`), turned
      into the depth (and width) of this family at N_opt.
    - schedule: the curve law fitted to the runs' curves ranks cosine, WSD and constant-then-cooldown
      at N_opt, D_opt (`rank_schedules`).
    """
    from proxyscale.analysis.depth_law import fit_depth_law
    from proxyscale.analysis.lr_batch_law import lr_batch_evidence

    model = dict(plain["model"])
    seq_len = int(model.get("seq_len", 1))
    rows = _knob_rows(runs)
    n_opt, d_opt = estimate.n_opt.value, estimate.d_opt.value
    column = {key: np.array([r[key] for r in rows], float)
              for key in ("n_params", "tokens", "width", "depth", "lr", "batch_size", "final_eval_loss")}
    parametrization = model.get("parametrization", "sp")
    transfer = parametrization in ("mup", "completep")
    out: dict[str, Any] = {"summary": {}}
    # ---- LR and batch size
    lr_ev = lr_batch_evidence(column["n_params"], column["tokens"], column["width"], column["lr"],
                              column["batch_size"], column["final_eval_loss"], transfer=transfer,
                              bootstrap=bootstrap, seed=seed)
    out["lr_batch"] = lr_ev
    out["summary"]["lr_batch"] = lr_ev.as_dict()
    drift_text = ""
    if lr_ev.drift is not None:
        per_width, slope = lr_ev.drift
        drift_text = (f"drift of log LR_opt in log width {slope.value:+.2f} [{slope.low:+.2f}, {slope.high:+.2f}] over "
                      f"widths {', '.join(f'{w:g}' for w in per_width)}")
    trend_text = ""
    if lr_ev.trend is not None:
        t = lr_ev.trend
        trend_text = (f"; the optimal LR against the batch size: {t.verdict} (LR_opt "
                      + ", ".join(f"B={b:g}: {i.value:.3g} [{i.low:.3g}, {i.high:.3g}]"
                                  for b, i in zip(t.batches, t.lr_opt, strict=True)) + ")")
    if lr_ev.lr_law is not None:
        law = lr_ev.lr_law
        at = law.predict(**{"N": n_opt, "D": d_opt}) if law.features else None
        bound = f"; exponent(s) of {', '.join(law.at_bound)} at the bound" if law.at_bound else ""
        if lr_ev.lr_transfer:
            checked = (f"the sweep's {drift_text} allows it" if drift_text
                       else "not checked: the sweep has one width with 3+ LRs at a shared budget")
            why = (f"{parametrization}: the LR law in width is replaced by transfer ({checked}); Step Law in D: "
                   f"{law.formula()} ({lr_ev.lr_reason}) at D_opt{bound}")
            basis = "transfer"
        else:
            why = f"Step Law: {law.formula()} ({lr_ev.lr_reason}) at N_opt, D_opt{bound}"
            if transfer and drift_text:
                why += f"; under {parametrization} the {drift_text} excludes 0, so the law keeps N"
            basis = "fitted_law"
        out["lr_knob"] = _knob(at.value, at.low, at.high, basis, why + trend_text)
    out["lr_reason"] = lr_ev.lr_reason
    if lr_ev.batch_law is not None:
        law = lr_ev.batch_law
        at = law.predict(D=d_opt)
        bound = "; exponent of D at the bound" if law.at_bound else ""
        value = _round_batch(at.value, seq_len)
        if value is not None:
            out["batch_knob"] = _knob(value, _round_batch(at.low, seq_len, np.floor), _round_batch(at.high, seq_len, np.ceil),
                                      "fitted_law", f"Step Law: {law.formula()} ({lr_ev.batch_reason}) at D_opt, in "
                                      f"whole sequences of {seq_len}{bound}{trend_text}")
    batches = sorted({r["batch_size"] for r in rows})
    if "batch_knob" not in out and len(batches) > 1:
        best = min(rows, key=lambda r: r["final_eval_loss"])
        out["batch_knob"] = _knob(best["batch_size"], batches[0], batches[-1], "best_run",
                                  f"the best run's of {batches} (no law: {lr_ev.batch_reason}){trend_text}; "
                                  f"{SWEEP_FOR['batch_size']} would fit it")
    # ---- depth
    p = estimate.fit.params

    def size_law(n, d):
        return float(np.log(p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]))

    depth_law, depth_why = fit_depth_law(column["n_params"], column["tokens"], column["width"], column["depth"],
                                         column["final_eval_loss"], size_law=size_law, bootstrap=bootstrap, seed=seed)
    out["depth"] = depth_law
    out["summary"]["depth"] = {"law": depth_law.as_dict() if depth_law else None, "why": depth_why}
    depths = sorted({r["depth"] for r in rows})
    if depth_law is not None and depth_law.bracketed:
        a = depth_law.aspect
        shapes = {k: shape_for_aspect(model, n_opt, getattr(a, k)) for k in ("value", "low", "high")}
        if shapes["value"] is not None:
            depth, width = shapes["value"]
            # A smaller aspect ratio is a deeper model: the interval's ends swap.
            deep = shapes["low"][0] if shapes["low"] else None
            shallow = shapes["high"][0] if shapes["high"] else None
            out["depth_knob"] = _knob(
                depth, shallow, deep, "fitted_law",
                f"optimal aspect ratio width/depth = {a.value:.3g} [{a.low:.3g}, {a.high:.3g}] from the loss at equal N "
                f"({depth_why}; log-loss curvature {depth_law.curvature.value:.3g} [{depth_law.curvature.low:.3g}, "
                f"{depth_law.curvature.high:.3g}] per ln(aspect)^2), as the depth of this family at N_opt")
            widths = {k: width_for_parameters(model | {"depth": depth}, getattr(estimate.n_opt, k))
                      for k in ("value", "low", "high")}
            out["width_knob"] = _knob(widths["value"], widths["low"], widths["high"], "fitted_law",
                                      f"the width of this model family at the recommended depth {depth} whose N is "
                                      f"nearest N_opt (aspect ratio {width / depth:.3g})")
    elif depth_law is not None and len(depths) > 1:
        best = min(rows, key=lambda r: r["final_eval_loss"])
        lo, hi = depth_law.aspect_range
        out["depth_knob"] = _knob(
            best["depth"], depths[0], depths[-1], "best_run",
            f"the fitted optimal aspect ratio {depth_law.aspect.value:.3g} is AT ITS BOUND: outside the aspect ratios "
            f"tried ({lo:.3g}-{hi:.3g}), so no law; the best run's depth of {depths}; extend the depths")
    elif len(depths) > 1:
        best = min(rows, key=lambda r: r["final_eval_loss"])
        out["depth_knob"] = _knob(best["depth"], depths[0], depths[-1], "best_run",
                                  f"the best run's of {depths} (no law: {depth_why}); {SWEEP_FOR['depth']} would fit it")
    # ---- schedule
    # The schedules are ranked at the batch the big run will use (the step clock counts steps): the given
    # one (a law from another sweep), else this sweep's batch law, else its largest batch.
    batch_at_target = batch_at_target or (out.get("batch_knob") or {}).get("value") or (batches[-1] if batches else 1)
    ranking, schedule_why = schedule_ranking(ledger, n_opt, d_opt, batch_tokens=float(batch_at_target),
                                             bootstrap=min(bootstrap, 200), seed=seed)
    out["schedule"] = ranking
    out["summary"]["schedule"] = {"ranking": ranking.as_dict() if ranking else None, "why": schedule_why}
    if ranking is not None:
        diff = ranking.vs_cosine[ranking.best]
        others = ", ".join(f"{name} {v.value:+.4f}" for name, v in ranking.vs_cosine.items()
                           if name not in (ranking.best, "cosine"))
        verdict = ("" if ranking.best == "cosine" else
                   " (indistinguishable from cosine at 95%)" if diff.low <= 0 <= diff.high else "")
        out["schedule_knob"] = _knob(
            ranking.best, None, None, "fitted_law",
            f"the curve law ({schedule_why}) at N_opt, D_opt, batch {batch_at_target:g}: {ranking.best} "
            f"{diff.value:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] nats vs cosine{verdict}; others vs cosine: {others}")
    return out


MIN_CURVE_POINTS = 32
"""Evaluation points the curve law needs before it ranks schedules (4 per parameter of the law)."""


def schedule_ranking(ledger: Ledger, n_params: float, tokens: float, *, batch_tokens: float, bootstrap: int,
                     seed: int):
    """(ScheduleRanking, why) from the curve law fitted to the ledger's curves, or (None, why not): the law
    needs 2+ model sizes, 3+ curves with 3+ evaluations past their first 10% (MIN_CURVE_POINTS in all) and
    2+ schedules among them (cosine alone does not separate annealing from the forward area)."""
    from proxyscale.analysis.curve_law import fit_curve_law
    from proxyscale.analysis.schedule_ranking import rank_schedules
    from proxyscale.orchestrator.curves import ledger_curves

    curves = ledger_curves(ledger)
    rich = [c for c in curves if int(c.curve.past_start(0.1).sum()) >= 3]
    sizes = {c.curve.n_params for c in rich}
    points = sum(int(c.curve.past_start(0.1).sum()) for c in rich)
    if len(sizes) < 2 or len(rich) < 3 or points < MIN_CURVE_POINTS:
        return None, (f"{len(rich)} curves with 3+ evaluations past their first 10% over {len(sizes)} size(s), "
                      f"{points} points: the curve law needs 3+ such curves over 2+ sizes and {MIN_CURVE_POINTS}+ points")
    schedules = sorted({c.spec.train.schedule for c in rich})
    if len(schedules) < 2:
        return None, (f"every curve is {schedules[0]}: one schedule cannot separate the annealing term of the curve "
                      "law from its forward area, so the law would not rank schedules (add constant-LR runs or WSD "
                      "cooldowns at some sizes, e.g. sweeps/schedules.yaml or sweeps/wsd_forks.yaml)")
    if not (np.isfinite(n_params) and np.isfinite(tokens) and n_params > 0 and tokens > 0):
        return None, "no finite N_opt, D_opt to rank schedules at"
    fit = fit_curve_law([c.curve for c in rich], bootstrap=bootstrap, seed=seed)
    ranking = rank_schedules(fit, n_params, tokens, batch_tokens=batch_tokens, level=0.95)
    return ranking, (f"fitted to {len(rich)} curves ({fit.n_points} points, schedules {', '.join(schedules)}), "
                     f"{fit.clock} clock (the better fit of relative and step), {len(fit.bootstrap)} bootstrap refits")


def _with_reason(knob: dict[str, Any], reason: str) -> dict[str, Any]:
    knob["why"] += f" (no curve-law ranking: {reason})"
    return knob


def _triple(interval: Interval) -> tuple[float, float, float]:
    return interval.value, interval.low, interval.high
