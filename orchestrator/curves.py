"""Loss curves from a sweep directory's ledger.

Every finished run becomes one `analysis.curve_law.Curve`: its eval losses from the ledger's steps
table, its whole LR history (steps 1..T) from its own spec (a fork's schedule equals its parent's
up to the fork step, so its spec alone gives the history), N = all parameters, and its lineage
group: the root of its chain of `train.init_from` parents (the bootstrap draws a lineage whole).
Used by the closed loop on curves (`active.py`), the schedule ranking of `recommend` (`advice.py`) and
`fit DIR --curves` (`commands/fit_curves.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from proxyscale.models.spec import RunSpec, TrainSpec, parse_init_from


@dataclass(frozen=True)
class LedgerCurve:
    run_id: str
    spec: RunSpec
    curve: object
    """proxyscale.analysis.curve_law.Curve"""
    final_loss: float
    tokens: float
    flops: float


def lr_history(train: TrainSpec) -> np.ndarray:
    """Peak LR times the multiplier of every step 1..T of the run's own schedule."""
    from proxyscale.models.schedules import lr_multiplier

    return train.lr * np.array([lr_multiplier(i, train) for i in range(train.steps)])


def lineage_root(run_id: str, parents: dict[str, str | None]) -> str:
    seen = {run_id}
    while parents.get(run_id):
        run_id = parents[run_id]
        if run_id in seen:  # a cycle cannot happen with hashed ids; stop rather than loop
            break
        seen.add(run_id)
    return run_id


def ledger_curves(ledger, run_ids: set[str] | None = None) -> list[LedgerCurve]:
    """One curve per finished run with at least one eval loss, grouped by lineage; run_ids: of these runs only (only
    their step rows are read, the bulk of a ledger; the runs table is still read whole, for the lineage roots)."""
    from proxyscale.analysis.curve_law import Curve

    rows = [r for r in ledger.runs(["finished"])
            if r["final_eval_loss"] is not None and (run_ids is None or r["run_id"] in run_ids)]
    specs = {r["run_id"]: RunSpec.from_dict(json.loads(r["spec_json"])) for r in rows}
    parents = {}
    for run in ledger.runs():
        parent = run.get("parent_id")
        if parent is None:
            init_from = json.loads(run["spec_json"]).get("train", {}).get("init_from")
            parent = parse_init_from(init_from)[0] if init_from else None
        parents[run["run_id"]] = parent
    steps = {}
    for record in ledger.steps() if run_ids is None else (r for run_id in sorted(run_ids) for r in ledger.steps(run_id)):
        if record["eval_loss"] is not None and record["step"] > 0 and np.isfinite(record["eval_loss"]):
            steps.setdefault(record["run_id"], []).append((record["step"], record["eval_loss"]))
    out = []
    for row in rows:
        points = sorted(steps.get(row["run_id"], []))
        if not points:
            continue
        spec = specs[row["run_id"]]
        curve = Curve(name=row["run_id"], lrs=lr_history(spec.train), steps=[s for s, _ in points],
                      losses=[loss for _, loss in points], n_params=float(row["n_params"]),
                      batch_tokens=float(spec.train.batch_tokens), group=lineage_root(row["run_id"], parents),
                      peak_lr=spec.train.lr)
        out.append(LedgerCurve(row["run_id"], spec, curve, float(row["final_eval_loss"]), float(row["tokens"]),
                               float(row["flops"] or 0.0)))
    return out


def schedule_label(train: TrainSpec) -> str:
    """A run's schedule as the fit and the score name it."""
    if train.schedule == "wsd":
        return f"wsd (cooldown {train.decay_fraction:g}, {train.decay_shape})"
    if train.schedule in ("cosine", "linear"):
        return f"{train.schedule} to {train.min_lr_ratio:g}"
    return train.schedule


def target_shape(runs: list[LedgerCurve]):
    """The schedule shape the target run is assumed to have: that of the largest run that ends annealed
    (a cosine, linear or WSD run), else a cosine to 10%; returned as (name, schedule(T), batch_tokens)."""
    annealed = [r for r in runs if r.spec.train.schedule != "constant"]
    template = max(annealed or runs, key=lambda r: (r.flops, r.tokens)).spec.train
    if not annealed:
        template = replace(template, schedule="cosine", min_lr_ratio=0.1)
    template = replace(template, init_from=None)

    def multipliers(steps: int) -> np.ndarray:
        from proxyscale.models.schedules import lr_multiplier

        train = replace(template, tokens=max(steps, template.warmup_steps + 2) * template.batch_tokens)
        return np.array([lr_multiplier(i, train) for i in range(train.steps)])

    return schedule_label(template), multipliers, float(template.batch_tokens)
