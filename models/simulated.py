"""The SIMULATED trainer: losses from a configurable ground truth instead of training.

It exists for planner tests and benchmarks, where the truth must be known and a run must cost
nothing. It reports exactly like `models.train.train_run` (step records along the run, one
`RunResult`), so the ledger, W&B and the planner cannot tell the path apart. The ground truth is a
`SimulatedSpec` (see its docstring for the loss model); everything here is a pure function of the
spec, so the same run always reports the same losses.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

import numpy as np

from models.flops import count_parameters, flops_per_token
from models.results import RunResult, StepRecord
from models.schedules import lr_multiplier
from models.spec import RunSpec, SimulatedSpec


def optimal_lr(truth: SimulatedSpec, width: float) -> float:
    return truth.lr_optimal * (width / truth.lr_base_width) ** truth.lr_width_exponent


def divergence_lr(truth: SimulatedSpec, width: float) -> float:
    return truth.divergence_lr * (width / truth.lr_base_width) ** truth.lr_width_exponent


def true_loss(truth: SimulatedSpec, n_params, tokens, lr, width):
    """The noiseless loss of the ground truth (arrays broadcast)."""
    base = truth.E + truth.A / np.power(n_params, truth.alpha) + truth.B / np.power(tokens, truth.beta)
    return base * (1 + truth.lr_penalty * np.log(np.asarray(lr) / optimal_lr(truth, width)) ** 2)


def noise_generator(truth: SimulatedSpec, run_id: str) -> np.random.Generator:
    """Noise seeded by the truth's seed and the run, so reruns and resumes report identical losses."""
    digest = int(hashlib.sha256(f"{truth.seed}:{run_id}".encode()).hexdigest()[:15], 16)
    return np.random.default_rng(digest)


def simulate_run(spec: RunSpec, *, on_record: Callable[[StepRecord], None] | None = None) -> RunResult:
    """Report a run's curve and result from the ground truth in `spec.simulated`."""
    truth = spec.simulated
    if truth is None:
        raise ValueError("simulate_run needs a spec with a `simulated` ground truth (trainer=simulated)")
    started = time.perf_counter()
    emit = on_record or (lambda record: None)
    cfg = spec.train
    counts = count_parameters(spec.model)
    per_token = flops_per_token(spec.model)
    rng = noise_generator(truth, spec.run_id())
    initial = math.log(spec.model.vocab_size)
    emit(StepRecord(0, 0, 0.0, None, initial, {}, 0.0))
    interval_steps = max(1, cfg.eval_interval_tokens // cfg.batch_tokens)
    eval_steps = sorted(set(range(interval_steps, cfg.steps + 1, interval_steps)) | {cfg.steps})
    curve = [(0, 0, initial)]
    diverged = cfg.lr > divergence_lr(truth, spec.model.width)
    status, reason = "finished", None
    for step in eval_steps:
        tokens = step * cfg.batch_tokens
        lr = cfg.lr * lr_multiplier(step - 1, cfg)
        if diverged and step >= eval_steps[0]:
            loss = float("nan")
            status = "diverged"
            reason = (f"simulated: lr {cfg.lr:g} is above the divergence threshold "
                      f"{divergence_lr(truth, spec.model.width):g} at width {spec.model.width}")
        else:
            clean = float(true_loss(truth, counts.total, tokens, cfg.lr, spec.model.width))
            loss = clean * (1 + truth.noise * rng.standard_normal())
        emit(StepRecord(step, tokens, lr, loss, loss, {}, time.perf_counter() - started))
        curve.append((step, tokens, loss))
        if status == "diverged":
            break
    last_step, last_tokens, final = curve[-1]
    spent = per_token * last_tokens
    if truth.seconds_per_pflop:
        time.sleep(max(0.0, truth.seconds_per_pflop * spent / 1e15 - (time.perf_counter() - started)))
    finite = [loss for _, _, loss in curve[1:] if math.isfinite(loss)]
    wall = time.perf_counter() - started
    return RunResult(
        run_id=spec.run_id(), status=status, reason=reason, initial_eval_loss=initial, final_eval_loss=final,
        best_eval_loss=min(finite) if finite else final, steps=last_step, tokens=last_tokens,
        n_params=counts.total, n_params_nonembedding=counts.non_embedding, flops_per_token=per_token, flops=spent,
        wall_seconds=wall, train_seconds=wall, data_hash="simulated", device="simulated",
        eval_curve=tuple(curve), last_probes={},
    )
