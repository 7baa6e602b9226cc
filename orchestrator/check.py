"""The check run: the ladder's prediction for a run beyond it, then that run, trained and compared.

A fit that extrapolates 30x or more deserves one real test before anyone spends on the big run. The
check takes a compute C_check = factor x the largest finished ladder run (4-10x is a real
extrapolation that a laptop can still afford), places N at the fitted N_opt(C_check) (the nearest
width of the sweep's model family) and D = C_check / FLOPs per token, predicts its loss with a 95%
interval for a MEASURED loss (law uncertainty plus run-to-run noise, analysis.predictive), prints
that before training, trains it through the same Ray / ledger / W&B path as every run (in DIR/check,
so it never feeds the ladder's fit), and writes DIR/check.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxyscale.analysis.planner import best_per_cell, estimate_target, identifiability_problem
from proxyscale.analysis.predictive import backtest_calibration, log_residuals, predict_loss
from proxyscale.models.flops import count_parameters, flops_per_token
from proxyscale.models.spec import ModelSpec, RunSpec, SpecError, TrainSpec, build_spec
from proxyscale.orchestrator.advice import NotIdentifiable, lr_at_target, width_for_parameters
from proxyscale.orchestrator.ledger import Ledger, cell_flops
from proxyscale.orchestrator.observations import observations_from_ledger
from proxyscale.orchestrator.sweep import SweepSpec, simulated_truth

CHECK_FILE = "check.json"
CHECK_DIR = "check"


@dataclass(frozen=True)
class CheckPlan:
    spec: RunSpec
    flops: float
    n_params: int
    tokens: int
    predicted: float
    interval: tuple[float, float]
    """95% interval for the measured loss (law and run noise)."""
    mean_interval: tuple[float, float]
    """95% interval of the law's mean alone."""
    ladder_flops: float
    """FLOPs of the largest finished ladder run."""
    n_opt: float
    why: str
    calibration: str = ""
    """The backtest's line: the factor the band was scaled by and what it measured (analysis/predictive.py)."""


def plan_check(plain: dict[str, Any], sweep: SweepSpec, ledger: Ledger, *, factor: float, bootstrap: int = 1000,
               seed: int = 0) -> CheckPlan:
    """The check run at factor x the largest ladder run, and its predicted loss."""
    if not factor > 1:
        raise SpecError(f"--factor: must be > 1 (a run beyond the ladder), got {factor}")
    observations = observations_from_ledger(ledger)
    finished = [o for o in observations if o.status == "finished"]
    if not finished:
        raise SpecError("DIR: no finished runs to check against; run `proxyscale launch` first")
    # The largest cell's whole compute (a fork's ledger FLOPs are only its own tokens').
    ladder_flops = max(cell_flops(r) for r in ledger.runs(["finished"]))
    target = factor * ladder_flops
    estimate = estimate_target(observations, target, bootstrap=bootstrap, seed=seed)
    if estimate is None:
        reason = identifiability_problem(observations, target) or "the bootstrap gives no finite optimum"
        raise NotIdentifiable(f"DIR: no check run: L(N, D) is not identifiable from these runs: {reason}")
    model = dict(plain["model"])
    width = width_for_parameters(model, estimate.n_opt.value)
    model["width"] = width
    lr, lr_why = lr_at_target(observations, width, bootstrap=200, seed=seed)
    train = {k: v for k, v in plain["train"].items() if v is not None}
    train.pop("init_from", None)
    if sweep.cooldown_fraction is not None:  # a ladder of cooldown forks: the check is a fresh run of that schedule
        train |= {"schedule": "wsd", "decay_fraction": sweep.cooldown_fraction, "decay_shape": sweep.cooldown_shape}
    per_token = flops_per_token(build_spec(ModelSpec, model, "model"))
    batch = int(train.get("batch_tokens", TrainSpec().batch_tokens))
    tokens = max(batch, round(target / per_token / batch) * batch)
    spec = RunSpec.from_dict({"model": model, "train": train | {"tokens": tokens, "lr": float(lr.value)},
                              "data": plain["data"], "simulated": simulated_truth(plain)})
    n_params = count_parameters(spec.model).total
    n, d, loss = best_per_cell(observations)
    residuals = log_residuals("chinchilla", estimate.fit, n, d, loss)
    calibration = backtest_calibration("chinchilla", n, d, loss, seed=seed, target=(n_params, tokens), fit=estimate.fit)
    prediction = predict_loss("chinchilla", estimate.fit, [n_params], [tokens], residuals, seed=seed,
                              calibration=calibration)
    return CheckPlan(spec=spec, flops=per_token * tokens, n_params=n_params, tokens=tokens,
                     predicted=float(prediction.value[0]), interval=(float(prediction.low[0]), float(prediction.high[0])),
                     mean_interval=(float(prediction.mean_low[0]), float(prediction.mean_high[0])),
                     ladder_flops=ladder_flops, n_opt=float(estimate.n_opt.value),
                     why=f"width {width} is nearest N_opt({target:.3g}) = {estimate.n_opt.value:.4g}; LR {lr.value:.3g}: "
                         f"{lr_why}", calibration=calibration.line())


def check_record(plan: CheckPlan, *, measured: float | None, status: str, factor: float) -> dict[str, Any]:
    low, high = plan.interval
    inside = None if measured is None else bool(low <= measured <= high)
    return {
        "flops": plan.flops, "n_params": plan.n_params, "tokens": plan.tokens, "width": plan.spec.model.width,
        "lr": plan.spec.train.lr, "schedule": plan.spec.train.schedule, "run_id": plan.spec.run_id(),
        "predicted": plan.predicted, "interval": [low, high], "mean_interval": list(plan.mean_interval),
        "measured": measured, "inside": inside, "status": status, "factor": factor,
        "ladder_largest_flops": plan.ladder_flops, "n_opt": plan.n_opt, "why": plan.why, "calibration": plan.calibration,
    }


def write_check(directory: Path, record: dict[str, Any]) -> Path:
    path = directory / CHECK_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    return path


def read_check(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / CHECK_FILE
    return json.loads(path.read_text()) if path.exists() else None
