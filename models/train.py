"""Training of ONE run: a function of a `RunSpec`, reporting through a callback.

`train_run` is importable by a Ray worker or a test. It checkpoints every
`train.checkpoint_interval` steps (and at the end) when given a checkpoint directory, and resumes
from a checkpoint found there: the batch sequence is a pure function of (seed, step), so on CPU a
resumed run reproduces the uninterrupted loss curve exactly.

Forks: `keep_steps` asks a run to also keep its full state at those steps (step_<S>.pt, for the runs
forked from it); a spec with `train.init_from` starts from such a file (`init_checkpoint`): weights,
optimizer state, RNG and the divergence state, and the data position follows from the step. A
fork whose schedule equals its parent's therefore reproduces the parent's later losses exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from proxyscale.models import probes
from proxyscale.models.data import TokenSource, eval_batch, load_tokens
from proxyscale.models.device import (
    Batches,
    autocast,
    compile_model,
    configure,
    device_name,
    resolve_device,
    synchronize,
    syncs_every_step,
    uses_compile,
)
from proxyscale.models.device import peak_flops as peak_of
from proxyscale.models.flops import count_parameters, flops_per_token
from proxyscale.models.gpt import GPT
from proxyscale.models.results import RunResult, StepRecord, bits_per_byte
from proxyscale.models.schedules import lr_multiplier
from proxyscale.models.spec import RunSpec
from proxyscale.models.throughput import model_flops_utilization

CHECKPOINT_NAME = "checkpoint.pt"


def step_checkpoint_name(step: int) -> str:
    """The file a run keeps its state in at `step` for the forks that start there."""
    return f"step_{step}.pt"


class _Divergence(Exception):
    """Raised inside the loop to end a run as `diverged`; its message is the reason."""


WARM_STEPS = 2
"""Steps of a process left out of its tokens/s (torch.compile's compilation, cuBLAS and allocator warm-up)."""


def _is_eval_step(step_done: int, spec: RunSpec) -> bool:
    """Evaluate whenever the tokens seen cross a multiple of the eval interval, and at the end."""
    batch, interval = spec.train.batch_tokens, spec.train.eval_interval_tokens
    return step_done == spec.train.steps or (step_done * batch) // interval > ((step_done - 1) * batch) // interval


@torch.no_grad()
def evaluate(model: torch.nn.Module, source: TokenSource, spec: RunSpec, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    eval_tokens = spec.train.eval_batch_tokens or spec.train.micro_batch_tokens or spec.train.batch_tokens
    n_seqs = eval_tokens // spec.model.seq_len
    total = 0.0
    for index in range(spec.train.eval_batches):
        x, y = eval_batch(source, index, n_seqs, spec.model.seq_len)
        with autocast(device, spec.train.precision):
            logits = model(x.to(device))
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten()))
    model.train(was_training)
    return total / spec.train.eval_batches


def _task_metrics(spec: RunSpec) -> dict[str, Callable]:
    """train.evals resolved to functions (models/evals.py); a bad 'module:function' fails the run at its start."""
    if not spec.train.evals:
        return {}
    from proxyscale.models.evals import resolve_eval

    return {name: resolve_eval(ref) for name, ref in spec.train.evals}


@torch.no_grad()
def _score(metrics: dict[str, Callable], model: torch.nn.Module, spec: RunSpec, device: torch.device) -> dict[str, float]:
    """The named task metrics of the model now, in eval mode (and bf16 autocast on CUDA)."""
    if not metrics:
        return {}
    from proxyscale.models.evals import run_evals

    was_training = model.training
    model.eval()
    with autocast(device, spec.train.precision):
        values = run_evals(metrics, model, spec=spec, device=device)
    model.train(was_training)
    return values


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore_rng(saved: dict[str, Any]) -> None:
    if saved.get("rng") is not None:
        torch.set_rng_state(saved["rng"])
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def _start_fork(spec: RunSpec, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                init_checkpoint: str | Path | None, device: torch.device,
                tokenizer_hash: str | None = None) -> dict[str, Any]:
    """Load the parent's state at the fork step; the fork's own curve starts empty after it."""
    from proxyscale.models.spec import parse_init_from

    parent_id, step = parse_init_from(spec.train.init_from)
    if init_checkpoint is None or not Path(init_checkpoint).exists():
        raise RuntimeError(f"train.init_from={spec.train.init_from}: no checkpoint of run {parent_id} at step {step} "
                           f"({init_checkpoint}); the parent must be trained with that step kept")
    saved = torch.load(init_checkpoint, map_location=device, weights_only=False)
    if saved["run_id"] != parent_id or saved["state"]["step"] != step:
        raise RuntimeError(f"{init_checkpoint} holds run {saved['run_id']} at step {saved['state']['step']}, "
                           f"not {parent_id} at step {step}")
    parent_tokenizer = saved.get("tokenizer_hash")
    if parent_tokenizer is not None and tokenizer_hash is not None and parent_tokenizer != tokenizer_hash:
        raise RuntimeError(f"data.path={spec.data.path}: its manifest's tokenizer ({tokenizer_hash[:12]}) differs from "
                           f"the one fork parent {parent_id} was trained with ({parent_tokenizer[:12]}); a fork must "
                           "read its parent's tokens")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    _restore_rng(saved)
    parent = saved["state"]
    return {"step": step, "initial_eval_loss": parent["initial_eval_loss"], "eval_curve": [],
            "above_threshold": parent["above_threshold"], "train_seconds": 0.0, "last_probes": {}}


def train_run(
    spec: RunSpec,
    *,
    on_record: Callable[[StepRecord], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    keep_steps: tuple[int, ...] = (),
    init_checkpoint: str | Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    peak_flops: float | None = None,
) -> RunResult:
    """Train one proxy to its token budget (or until it diverges) and return its result.

    keep_steps: steps at which to save step_<S>.pt in `checkpoint_dir` for forks.
    init_checkpoint: for a fork (train.init_from = PARENT@S), its parent's step_<S>.pt.
    on_checkpoint: called with each checkpoint file once written (the worker copies it to cluster.storage).
    peak_flops: the device's peak FLOP/s for MFU (cluster.peak_flops); None = the table of known GPUs.
    """
    wall_start = time.perf_counter()
    emit = on_record or (lambda record: None)
    cfg = spec.train
    device = resolve_device(cfg.device)
    configure(device)
    source = load_tokens(spec.data, batch_sequences=cfg.batch_tokens // spec.model.seq_len)
    emit = _with_bits_per_byte(emit, source.val_bytes_per_token)

    torch.manual_seed(cfg.seed)
    model = GPT(spec.model).to(device)
    groups = model.optimizer_groups(cfg.lr, cfg.weight_decay, cfg.eps)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    forward = compile_model(model) if uses_compile(cfg.compile, device) else model
    task_metrics = _task_metrics(spec)

    micro_tokens = cfg.micro_batch_tokens or cfg.batch_tokens
    accumulation = cfg.batch_tokens // micro_tokens
    n_seqs = micro_tokens // spec.model.seq_len
    params = [p for g in groups for p in g["params"]]
    batches = Batches(source, device, seed=cfg.seed, n_seqs=n_seqs, seq_len=spec.model.seq_len)

    state = {
        "step": 0,
        "initial_eval_loss": None,
        "eval_curve": [],
        "above_threshold": 0,
        "train_seconds": 0.0,
        "last_probes": {},
    }
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if checkpoint_path is not None and checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if saved["run_id"] != spec.run_id():
            raise RuntimeError(f"checkpoint {checkpoint_path} belongs to run {saved['run_id']}, not {spec.run_id()}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        _restore_rng(saved)
    else:
        if checkpoint_path is not None:
            checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.init_from is not None:
            state = _start_fork(spec, model, optimizer, init_checkpoint, device, source.tokenizer_hash)

    def full_state() -> dict[str, Any]:
        return {"run_id": spec.run_id(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "state": state, "rng": torch.get_rng_state(), "tokenizer_hash": source.tokenizer_hash,
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}

    def checkpoint() -> None:
        if checkpoint_path is not None:
            _save_checkpoint(checkpoint_path, full_state())
            if on_checkpoint is not None:
                on_checkpoint(checkpoint_path)

    keep = set(keep_steps)

    def record_eval(step_done: int, lr: float, train_loss: float | None, probe_values: dict[str, float]) -> None:
        loss = evaluate(model, source, spec, device)
        state["last_evals"] = _score(task_metrics, model, spec, device)
        state["eval_curve"].append((step_done, step_done * cfg.batch_tokens, loss))
        emit(StepRecord(step_done, step_done * cfg.batch_tokens, lr, train_loss, loss, probe_values,
                        time.perf_counter() - wall_start, evals=state["last_evals"]))
        if not math.isfinite(loss):
            raise _Divergence(f"eval loss is {loss} at step {step_done}")
        if loss > cfg.divergence_factor * state["initial_eval_loss"]:
            state["above_threshold"] += 1
            if state["above_threshold"] >= cfg.divergence_patience:
                raise _Divergence(
                    f"eval loss {loss:.4g} stayed above {cfg.divergence_factor} x the initial "
                    f"{state['initial_eval_loss']:.4g} for {state['above_threshold']} evaluations (step {step_done})"
                )
        else:
            state["above_threshold"] = 0

    every_step = syncs_every_step(device)
    start_step, start_seconds = state["step"], state["train_seconds"]
    steady: tuple[int, float] | None = None  # (step, train_seconds) after this process's first WARM_STEPS
    status, reason = "finished", None
    try:
        if state["initial_eval_loss"] is None:
            state["initial_eval_loss"] = evaluate(model, source, spec, device)
            state["last_evals"] = _score(task_metrics, model, spec, device)
            state["eval_curve"].append((0, 0, state["initial_eval_loss"]))
            emit(StepRecord(0, 0, 0.0, None, state["initial_eval_loss"], {}, time.perf_counter() - wall_start,
                            evals=state["last_evals"]))
        model.train()
        while state["step"] < cfg.steps:
            step = state["step"]
            step_start = time.perf_counter()
            lr = cfg.lr * lr_multiplier(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            probe_step = (step + 1) % cfg.log_interval == 0 or step + 1 == cfg.steps
            probe_values: dict[str, float] = {}
            # Steps whose loss and gradient norm are read (and checked for NaN): all on CPU; on CUDA only those
            # something uses, since reading one waits for the GPU (models/device.py: syncs_every_step).
            read = (every_step or probe_step or _is_eval_step(step + 1, spec) or step + 1 in keep
                    or bool(cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0)
                    or step - start_step < WARM_STEPS)

            loss_sum = torch.zeros((), device=device)
            for micro in range(accumulation):
                x, y = batches.get(step, micro)
                record_probes = probe_step and micro == 0
                model.set_probe_recording(record_probes)
                with autocast(device, cfg.precision):
                    # The probe's explicit attention logits run eagerly: the compiled graph never holds them.
                    logits = (model if record_probes else forward)(x)
                logits = logits.float().flatten(0, 1)
                cross_entropy = F.cross_entropy(logits, y.flatten())
                loss = cross_entropy
                if cfg.z_loss > 0 or record_probes:
                    log_z = torch.logsumexp(logits, dim=-1)
                    if cfg.z_loss > 0:
                        loss = loss + cfg.z_loss * log_z.pow(2).mean()
                    if record_probes:
                        probe_values.update(probes.logz_stats(log_z))
                        probe_values.update(probes.attention_logit_stats(model.max_attention_logits()))
                (loss / accumulation).backward()
                loss_sum += cross_entropy.detach()
            model.set_probe_recording(False)
            train_loss = float(loss_sum) / accumulation if read else None
            if train_loss is not None and not math.isfinite(train_loss):
                state["last_probes"] = probe_values
                emit(StepRecord(step + 1, (step + 1) * cfg.batch_tokens, lr, train_loss, None, probe_values,
                                time.perf_counter() - wall_start))
                raise _Divergence(f"train loss is {train_loss} at step {step + 1}")

            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm_tensor = torch.nn.utils.clip_grad_norm_(params, max_norm)
            grad_norm = float(grad_norm_tensor) if read else None
            before = probes.snapshot_groups(optimizer.param_groups) if probe_step else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step + 1
            if probe_step:
                n_params = sum(p.numel() for p in params)
                probe_values["grad_norm"] = grad_norm
                probe_values["grad_rms"] = grad_norm / math.sqrt(n_params)
                probe_values["param_norm"] = probes.parameter_norm(optimizer.param_groups)
                probe_values.update(probes.update_ratios(optimizer.param_groups, before))
                state["last_probes"] = probe_values
            if read:
                synchronize(device)  # the step's kernels are done before its time is counted
            state["train_seconds"] += time.perf_counter() - step_start
            if steady is None and state["step"] - start_step >= WARM_STEPS:
                steady = (state["step"], state["train_seconds"])
            if grad_norm is not None and not math.isfinite(grad_norm):
                raise _Divergence(f"gradient norm is {grad_norm} at step {step + 1}")

            step_done = state["step"]
            if _is_eval_step(step_done, spec):
                record_eval(step_done, lr, train_loss, probe_values if probe_step else {})
            elif probe_step:
                emit(StepRecord(step_done, step_done * cfg.batch_tokens, lr, train_loss, None, probe_values,
                                time.perf_counter() - wall_start))
            if step_done in keep and checkpoint_path is not None:
                _save_checkpoint(checkpoint_path.parent / step_checkpoint_name(step_done), full_state())
                if on_checkpoint is not None:
                    on_checkpoint(checkpoint_path.parent / step_checkpoint_name(step_done))
            if cfg.checkpoint_interval and step_done % cfg.checkpoint_interval == 0 and step_done < cfg.steps:
                checkpoint()
    except _Divergence as divergence:
        status, reason = "diverged", str(divergence)
    finally:
        model.set_probe_recording(False)
    checkpoint()

    counts = count_parameters(spec.model)
    losses = [loss for _, _, loss in state["eval_curve"]] or [float("nan")]
    finite = [loss for loss in losses if math.isfinite(loss)]
    tokens_done = state["step"] * cfg.batch_tokens
    tokens_per_second = _tokens_per_second(state, cfg.batch_tokens, steady, (start_step, start_seconds))
    peak = peak_of(device, peak_flops)
    return RunResult(
        run_id=spec.run_id(),
        status=status,
        reason=reason,
        initial_eval_loss=state["initial_eval_loss"],
        final_eval_loss=losses[-1],
        best_eval_loss=min(finite) if finite else float("nan"),
        steps=state["step"],
        tokens=tokens_done,
        n_params=counts.total,
        n_params_nonembedding=counts.non_embedding,
        flops_per_token=flops_per_token(spec.model),
        flops=flops_per_token(spec.model) * (state["step"] - cfg.fork_step) * cfg.batch_tokens,
        wall_seconds=time.perf_counter() - wall_start,
        train_seconds=state["train_seconds"],
        data_hash=source.data_hash,
        device=str(device),
        eval_curve=tuple(tuple(point) for point in state["eval_curve"]),
        last_probes=dict(state["last_probes"]),
        evals=dict(state.get("last_evals") or {}),
        tokens_per_second=tokens_per_second,
        mfu=None if tokens_per_second is None else model_flops_utilization(spec.model, tokens_per_second, peak),
        peak_flops=peak,
        device_name=device_name(device),
        val_bytes_per_token=source.val_bytes_per_token,
    )


def _with_bits_per_byte(emit: Callable[[StepRecord], None], bytes_per_token: float | None
                        ) -> Callable[[StepRecord], None]:
    """Every eval record also carries bits per byte of the eval split (models.results.bits_per_byte)."""
    def emit_with_bpb(record: StepRecord) -> None:
        if record.eval_loss is not None and bytes_per_token is not None:
            record = dataclasses.replace(record, eval_bpb=bits_per_byte(record.eval_loss, bytes_per_token))
        emit(record)

    return emit_with_bpb


def _tokens_per_second(state: dict[str, Any], batch_tokens: int, steady: tuple[int, float] | None,
                       start: tuple[int, float]) -> float | None:
    """Training tokens per second of this process: after its first WARM_STEPS when it trained more, else all of
    its steps; None when it trained none."""
    step, seconds = steady if steady is not None and state["step"] > steady[0] else start
    steps, elapsed = state["step"] - step, state["train_seconds"] - seconds
    return steps * batch_tokens / elapsed if steps > 0 and elapsed > 0 else None
