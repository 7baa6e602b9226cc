"""The SIMULATED trainer: losses from a configurable ground truth instead of training.

It exists for planner tests and benchmarks, where the truth must be known and a run must cost
nothing. It reports exactly like `models.train.train_run` (step records along the run, one
`RunResult`), so the ledger, W&B and the planner cannot tell the path apart. The ground truth is a
`SimulatedSpec` (see its docstring for the loss model): whole curves shaped by the LR schedule.
The loss at step s is a pure function of the truth, N, the LR history up to s and the noise keyed
by (truth seed, model shape, train.seed, lr, step), so a rerun, a resume or a fork whose schedule
equals its parent's reports the same losses.

Helpers for tests and benchmarks: `true_curve` (a run's clean curve), `true_final_loss`,
`true_reduced_law` (the L(N, D) that finished runs of one schedule follow) and
`true_compute_optimal` (the truth's N_opt, D_opt and loss at a compute budget for a schedule);
for the batch-size and depth effects `optimal_lr(..., batch_tokens=, tokens=)`, `optimal_batch` and
`knob_factor` (see SimulatedSpec: all off by default).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable

import numpy as np

from proxyscale.models.flops import count_parameters, flops_per_token
from proxyscale.models.results import RunResult, StepRecord
from proxyscale.models.spec import RunSpec, SimulatedSpec, TrainSpec

MULTIPOWER_BLOCK = 32
"""multipower: drops are pooled in blocks of this many steps (each block only once it is complete)."""


def optimal_lr(truth: SimulatedSpec, width: float, *, batch_tokens=None, tokens=None, n_params=None):
    """The optimal peak LR at this width; with batch_tokens / tokens / n_params also the truth's batch (surge),
    token-budget and model-size terms (each 1 when off, or when the argument is not given)."""
    lr = truth.lr_optimal * (np.asarray(width, float) / truth.lr_base_width) ** truth.lr_width_exponent
    if tokens is not None and truth.lr_tokens_exponent:
        lr = lr * (np.asarray(tokens, float) / truth.knob_tokens_ref) ** truth.lr_tokens_exponent
    if n_params is not None and truth.lr_params_exponent:
        lr = lr * (np.asarray(n_params, float) / truth.knob_params_ref) ** truth.lr_params_exponent
    if batch_tokens is not None and truth.lr_surge_batch:
        ratio = np.asarray(batch_tokens, float) / truth.lr_surge_batch
        lr = lr * 2.0 / (np.sqrt(1.0 / ratio) + np.sqrt(ratio))
    return float(lr) if np.ndim(lr) == 0 else lr


def divergence_lr(truth: SimulatedSpec, width: float) -> float:
    return truth.divergence_lr * (width / truth.lr_base_width) ** truth.lr_width_exponent


def lr_factor(truth: SimulatedSpec, lr, width, *, batch_tokens=None, tokens=None, n_params=None):
    """The multiplicative penalty of a peak LR away from the optimum (of the width, and of the batch, token
    budget and model size when given)."""
    best = optimal_lr(truth, width, batch_tokens=batch_tokens, tokens=tokens, n_params=n_params)
    return 1 + truth.lr_penalty * np.log(np.asarray(lr) / best) ** 2


def optimal_batch(truth: SimulatedSpec, tokens):
    """B_opt(D) = batch_optimal * (D / knob_tokens_ref)^batch_tokens_exponent (tokens)."""
    return truth.batch_optimal * (np.asarray(tokens, float) / truth.knob_tokens_ref) ** truth.batch_tokens_exponent


def batch_factor(truth: SimulatedSpec, batch_tokens, tokens):
    """Step Law's bowl in log B around B_opt(D): 1 + batch_penalty * ln(B / B_opt(D))^2 (1 when off)."""
    if not truth.batch_penalty:
        return 1.0
    return 1 + truth.batch_penalty * np.log(np.asarray(batch_tokens, float) / optimal_batch(truth, tokens)) ** 2


def depth_factor(truth: SimulatedSpec, width, depth):
    """The penalty of an aspect ratio width / depth away from aspect_optimal (1 when off)."""
    if not truth.depth_penalty:
        return 1.0
    aspect = np.asarray(width, float) / np.asarray(depth, float)
    return 1 + truth.depth_penalty * np.log(aspect / truth.aspect_optimal) ** 2


def effective_batch_tokens(truth: SimulatedSpec, batch_tokens: float) -> float:
    """Tokens per step as L_curve counts them: B / (1 + B / B_noise) (McCandlish et al.; B when off)."""
    if not truth.batch_noise_scale:
        return float(batch_tokens)
    return float(batch_tokens) / (1.0 + float(batch_tokens) / truth.batch_noise_scale)


def knob_factor(truth: SimulatedSpec, spec: RunSpec):
    """Every multiplicative penalty of a run's knobs: LR (at its width, batch and budget), batch, depth."""
    train, model = spec.train, spec.model
    n_params = count_parameters(model).total if truth.lr_params_exponent else None
    return (lr_factor(truth, train.lr, model.width, batch_tokens=train.batch_tokens, tokens=train.tokens, n_params=n_params)
            * batch_factor(truth, train.batch_tokens, train.tokens) * depth_factor(truth, model.width, model.depth))


def true_loss(truth: SimulatedSpec, n_params, tokens, lr, width):
    """L(N, D) times the LR penalty (arrays broadcast): the noiseless final loss of a finished cosine
    run to `truth.reference_min_lr_ratio` under curve_form=tissue (exactly), and the long-run limit of
    one under multipower (see `true_final_loss` for any schedule)."""
    base = truth.E + truth.A / np.power(n_params, truth.alpha) + truth.B / np.power(tokens, truth.beta)
    return base * lr_factor(truth, lr, width)


# ----------------------------------------------------------------------------------- the curve


def schedule_multipliers(train: TrainSpec) -> np.ndarray:
    """LR multipliers of steps 1..train.steps (models.schedules.lr_multiplier, vectorised)."""
    total, warmup, floor = train.steps, train.warmup_steps, train.min_lr_ratio
    step = np.arange(total, dtype=float)
    if train.schedule == "constant":
        out = np.ones(total)
    elif train.schedule == "wsd":
        start = train.decay_start
        progress = np.clip((step - start + 1) / (total - start), 0.0, 1.0)
        decayed = (floor + (1.0 - floor) * (1.0 - np.sqrt(progress)) if train.decay_shape == "sqrt"
                   else 1.0 - (1.0 - floor) * progress)
        out = np.where(step < start, 1.0, decayed)
    else:
        progress = (step - warmup) / max(1, total - 1 - warmup)
        out = (floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * progress)) if train.schedule == "cosine"
               else 1.0 - (1.0 - floor) * progress)
    out[:warmup] = (step[:warmup] + 1) / warmup
    return out


def _drops(u: np.ndarray) -> np.ndarray:
    """d_j = u_{j-1} - u_j, zero until the peak is first reached (warmup is not annealing)."""
    d = np.zeros_like(u)
    d[1:] = u[:-1] - u[1:]
    reached = int(np.argmax(u >= u.max() * (1 - 1e-12))) if len(u) else 0
    d[: reached + 1] = 0.0
    return d


def _relative_annealing(u: np.ndarray, steps: np.ndarray, time_fraction: float) -> np.ndarray:
    """S2 at sorted `steps`: sum_{j<=s} d_j (1 - (j / (s + 1))^(1 / time_fraction)), in blocks between steps."""
    d = _drops(u)
    cumulative = np.cumsum(d)
    where = np.flatnonzero(d[: steps[-1]])
    ends = np.log(steps + 1.0)
    pending = np.zeros(len(steps))
    if len(where):
        block = np.searchsorted(steps, where + 1)
        np.add.at(pending, block, d[where] * np.exp(-(ends[block] - np.log(where + 1.0)) / time_fraction))
    unrealised, out = 0.0, np.empty(len(steps))
    for k in range(len(steps)):
        if k:
            unrealised *= math.exp(-(ends[k] - ends[k - 1]) / time_fraction)
        unrealised += pending[k]
        out[k] = cumulative[steps[k] - 1] - unrealised
    return out


def _cosine_reference(steps: int, warmup: int, floor: float) -> np.ndarray:
    """Multipliers of a cosine run of `steps` steps with this warmup (only the ramp if it ends in warmup)."""
    if steps <= warmup:
        return (np.arange(steps) + 1.0) / warmup
    return schedule_multipliers(TrainSpec(schedule="cosine", tokens=steps, batch_tokens=1, warmup_steps=warmup,
                                          min_lr_ratio=floor))


REFERENCE_BINS = 4096


@functools.lru_cache(maxsize=4096)
def _cosine_reference_areas(steps: int, warmup: int, floor: float, time_fraction: float) -> tuple[float, float]:
    """(sum of multipliers, S2 at the end) of the cosine reference of `steps` steps.

    Beyond REFERENCE_BINS drops, the drops are pooled into that many bins of equal count (each at its
    drop-weighted position): a fixed function of `steps`, within ~1e-7 of the exact sum.
    """
    u = _cosine_reference(steps, warmup, floor)
    d = _drops(u)
    where = np.flatnonzero(d)
    if len(where) <= REFERENCE_BINS:
        return float(u.sum()), float(_relative_annealing(u, np.array([steps]), time_fraction)[0])
    bins = (np.arange(len(where)) * REFERENCE_BINS) // len(where)
    mass = np.bincount(bins, d[where])
    position = np.bincount(bins, d[where] * np.log(where + 1.0)) / mass
    unrealised = float((mass * np.exp(-(math.log(steps + 1.0) - position) / time_fraction)).sum())
    return float(u.sum()), float(mass.sum() - unrealised)


def _multipower_annealing(truth: SimulatedSpec, u: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """LD at sorted `steps` (Luo et al.'s loss drop with the LR area in steps), drops pooled in blocks."""
    d = _drops(u)
    area = np.concatenate([[0.0], np.cumsum(u)])  # area[j] = sum of u over steps 1..j
    scale = np.maximum(u, 1e-3) ** -truth.multipower_gamma
    c, power = truth.multipower_c, truth.multipower_beta
    n_blocks = len(u) // MULTIPOWER_BLOCK
    index = np.arange(n_blocks * MULTIPOWER_BLOCK)
    block_of = index // MULTIPOWER_BLOCK
    mass = np.bincount(block_of, d[index], n_blocks)
    safe = np.where(mass == 0, 1.0, mass)
    block_scale = np.bincount(block_of, d[index] * scale[index], n_blocks) / safe
    block_area = np.bincount(block_of, d[index] * area[index], n_blocks) / safe  # area before step j
    out = np.empty(len(steps))
    for k, s in enumerate(steps):
        complete = s // MULTIPOWER_BLOCK
        pooled = mass[:complete] * (1 - (1 + c * block_scale[:complete] * (area[s] - block_area[:complete])) ** -power)
        rest = np.arange(complete * MULTIPOWER_BLOCK, s)  # 0-based j - 1 of the last, incomplete block
        exact = d[rest] * (1 - (1 + c * scale[rest] * (area[s] - area[rest])) ** -power)
        out[k] = pooled.sum() + exact.sum()
    return out


def _anneal_gain(truth: SimulatedSpec, n_params: float) -> float:
    return truth.anneal * (n_params / truth.anneal_n_ref) ** truth.anneal_size_exponent


def curve_loss(truth: SimulatedSpec, n_params: float, multipliers: np.ndarray, steps, *, batch_tokens: float,
               warmup_steps: int) -> np.ndarray:
    """L_curve (no LR penalty, no noise) at `steps` of a run whose LR multipliers are `multipliers`."""
    steps = np.asarray(steps, int)
    order = np.argsort(steps)
    sorted_steps = steps[order]
    u = np.asarray(multipliers, float)
    s1 = batch_tokens * np.cumsum(u)[sorted_steps - 1]
    f = truth.reference_min_lr_ratio
    b_curve = truth.B * ((1 + f) / 2) ** truth.beta
    gain = _anneal_gain(truth, n_params)
    size = truth.A / n_params**truth.alpha
    if truth.curve_form == "multipower":
        ld = _multipower_annealing(truth, u, sorted_steps)
        out = truth.E + truth.anneal * (1 - f) + size + b_curve * s1**-truth.beta - gain * ld
    else:
        s2 = _relative_annealing(u, sorted_steps, truth.anneal_time)
        phi = b_curve * s1**-truth.beta - gain * s2
        reference = np.empty(len(sorted_steps))
        for k, s in enumerate(sorted_steps):
            ref_area, ref_s2 = _cosine_reference_areas(int(s), int(warmup_steps), float(f), float(truth.anneal_time))
            reference[k] = b_curve * (batch_tokens * ref_area) ** -truth.beta - gain * ref_s2
        tokens = sorted_steps * float(batch_tokens)
        out = truth.E + size + truth.B * tokens**-truth.beta + phi - reference
    result = np.empty(len(steps))
    result[order] = out
    return result


def true_curve(truth: SimulatedSpec, spec: RunSpec, steps=None) -> np.ndarray:
    """The noiseless losses (LR penalty included) a run reports at `steps` (default: its eval steps)."""
    steps = eval_steps(spec.train) if steps is None else np.asarray(steps, int)
    n = count_parameters(spec.model).total
    clean = curve_loss(truth, n, schedule_multipliers(spec.train), steps,
                       batch_tokens=effective_batch_tokens(truth, spec.train.batch_tokens),
                       warmup_steps=spec.train.warmup_steps)
    return clean * knob_factor(truth, spec)


def eval_steps(train: TrainSpec) -> np.ndarray:
    """Every train.eval_interval_tokens and the last step; a fork only its own (after its fork step)."""
    interval = max(1, train.eval_interval_tokens // train.batch_tokens)
    steps = sorted(set(range(interval, train.steps + 1, interval)) | {train.steps})
    return np.array([s for s in steps if s > train.fork_step], dtype=int)


def noise(truth: SimulatedSpec, spec: RunSpec, steps) -> np.ndarray:
    """Standard normal noise at `steps`, keyed by (truth seed, model shape, train.seed, lr): step s always
    gets the same draw, whatever the run's length or schedule after s."""
    key = json.dumps([truth.seed, dataclasses.asdict(spec.model), spec.train.seed, repr(spec.train.lr)], sort_keys=True)
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
    steps = np.asarray(steps, int)
    draws = np.random.default_rng(digest).standard_normal(int(steps.max()) if len(steps) else 0)
    return draws[steps - 1]


# ------------------------------------------------------------------------------------ the trainer


def simulate_run(spec: RunSpec, *, on_record: Callable[[StepRecord], None] | None = None) -> RunResult:
    """Report a run's curve and result from the ground truth in `spec.simulated`.

    A fork (train.init_from) reports only its own evaluations (steps after the fork); its `tokens`
    are every token the model has seen and its `flops` only its own.
    """
    truth = spec.simulated
    if truth is None:
        raise ValueError("simulate_run needs a spec with a `simulated` ground truth (trainer=simulated)")
    started = time.perf_counter()
    emit = on_record or (lambda record: None)
    cfg = spec.train
    counts = count_parameters(spec.model)
    per_token = flops_per_token(spec.model)
    initial = math.log(spec.model.vocab_size)
    forked = cfg.init_from is not None
    curve: list[tuple[int, int, float]] = []
    if not forked:
        emit(StepRecord(0, 0, 0.0, None, initial, {}, 0.0))
        curve.append((0, 0, initial))
    steps = eval_steps(cfg)
    diverged = cfg.lr > divergence_lr(truth, spec.model.width)
    status, reason = "finished", None
    if diverged:
        steps = steps[:1]
        losses = np.full(len(steps), float("nan"))
        status = "diverged"
        reason = (f"simulated: lr {cfg.lr:g} is above the divergence threshold "
                  f"{divergence_lr(truth, spec.model.width):g} at width {spec.model.width}")
    else:
        losses = true_curve(truth, spec, steps) * (1 + truth.noise * noise(truth, spec, steps))
    multipliers = schedule_multipliers(cfg)
    for step, loss in zip(steps.tolist(), losses.tolist(), strict=True):
        tokens = step * cfg.batch_tokens
        emit(StepRecord(step, tokens, cfg.lr * float(multipliers[step - 1]), loss, loss, {},
                        time.perf_counter() - started))
        curve.append((step, tokens, loss))
    last_step = int(steps[-1]) if len(steps) else cfg.fork_step
    last_tokens = last_step * cfg.batch_tokens
    final = curve[-1][2] if curve else float("nan")
    spent = per_token * (last_step - cfg.fork_step) * cfg.batch_tokens
    if truth.seconds_per_pflop:
        time.sleep(max(0.0, truth.seconds_per_pflop * spent / 1e15 - (time.perf_counter() - started)))
    finite = [loss for step, _, loss in curve if step > 0 and math.isfinite(loss)]
    wall = time.perf_counter() - started
    return RunResult(
        run_id=spec.run_id(), status=status, reason=reason, initial_eval_loss=initial, final_eval_loss=final,
        best_eval_loss=min(finite) if finite else final, steps=last_step, tokens=last_tokens,
        n_params=counts.total, n_params_nonembedding=counts.non_embedding, flops_per_token=per_token, flops=spent,
        wall_seconds=wall, train_seconds=wall, data_hash="simulated", device="simulated",
        eval_curve=tuple(curve), last_probes={},
    )


# ------------------------------------------------------------------- the truth's optimum, for tests


def _scaled(train: TrainSpec, tokens: float) -> TrainSpec:
    """The same schedule shape over `tokens` tokens (whole steps), trained from scratch."""
    steps = max(int(round(tokens / train.batch_tokens)), train.warmup_steps + 2)
    return dataclasses.replace(train, tokens=steps * train.batch_tokens, init_from=None)


def true_final_loss(truth: SimulatedSpec, n_params: float, tokens: float, train: TrainSpec, *,
                    lr: float | None = None, width: float | None = None) -> float:
    """The noiseless final loss of a run of N parameters, `tokens` tokens and the schedule of `train`
    (its shape rescaled to the tokens); with no LR penalty unless lr and width are given."""
    run = _scaled(train, tokens)
    loss = curve_loss(truth, n_params, schedule_multipliers(run), [run.steps], batch_tokens=run.batch_tokens,
                      warmup_steps=run.warmup_steps)[0]
    return float(loss * (lr_factor(truth, lr, width) if lr is not None else 1.0))


def true_reduced_law(truth: SimulatedSpec, train: TrainSpec) -> dict[str, float]:
    """(E, A, alpha, B, beta) such that finished runs with the schedule of `train` (at its length) end at
    E + A / N^alpha + B / D^beta, up to warmup-sized corrections; (E, A, B, alpha, beta) of the truth
    itself for cosine runs to reference_min_lr_ratio under curve_form=tissue. An annealing gain that
    scales with N (anneal_size_exponent) makes E depend on N: the value here is at N = anneal_n_ref;
    use `true_compute_optimal` for the optimum then."""
    u = schedule_multipliers(train)
    steps = np.array([train.steps])
    f = truth.reference_min_lr_ratio
    b_curve = truth.B * ((1 + f) / 2) ** truth.beta
    k_run = float(u.mean())
    if truth.curve_form == "multipower":
        ld = _multipower_annealing(truth, u, steps)[0]
        return {"E": truth.E + truth.anneal * (1 - f - ld), "A": truth.A, "alpha": truth.alpha,
                "B": b_curve * k_run**-truth.beta, "beta": truth.beta}
    ref_area, s2_ref = _cosine_reference_areas(train.steps, train.warmup_steps, float(f), float(truth.anneal_time))
    s2_run = _relative_annealing(u, steps, truth.anneal_time)[0]
    b = truth.B + b_curve * (k_run**-truth.beta - (ref_area / train.steps) ** -truth.beta)
    return {"E": truth.E - truth.anneal * (s2_run - s2_ref), "A": truth.A, "alpha": truth.alpha, "B": b,
            "beta": truth.beta}


def true_compute_optimal(truth: SimulatedSpec, flops: float, train: TrainSpec) -> dict[str, float]:
    """The truth's N_opt, D_opt = C / (6 N_opt) and final loss at C for runs with the schedule shape of
    `train`, found numerically: golden section in log N over the exact final losses, bracketed around
    the optimum of `true_reduced_law` (exact for tissue cosine runs to reference_min_lr_ratio)."""
    def loss_at(log_n: float) -> float:
        n = math.exp(log_n)
        return true_final_loss(truth, n, flops / (6 * n), train)

    law = true_reduced_law(truth, train)
    g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1 / (law["alpha"] + law["beta"]))
    guess = math.log(g * (flops / 6) ** (law["beta"] / (law["alpha"] + law["beta"])))
    grid = np.linspace(guess - math.log(10), guess + math.log(10), 9)
    values = [loss_at(x) for x in grid]
    best = int(np.argmin(values))
    a, b = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss_at(c), loss_at(d)
    for _ in range(30):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss_at(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss_at(d)
    n = math.exp((a + b) / 2)
    return {"n_opt": n, "d_opt": flops / (6 * n), "loss": loss_at((a + b) / 2)}
