"""Named task metrics a run records at every evaluation (`train.evals`), and one shipped task.

A task metric is any importable function

    def my_metric(model, *, spec, device) -> float

called at each evaluation of a run (step 0 included) with the model in eval mode under no_grad
(and the run's bf16 autocast on CUDA); `spec` is the run's RunSpec, `device` its torch device. The
float it returns is stored under its name beside the eval loss: ledger table `evals`, W&B
`evals/<name>`, `proxyscale export` column `eval.<name>`. `train.evals` names them, either as a
list of "module:function" (each named by its function) or as a mapping name -> "module:function".

Two tasks ship for byte-level proxies (data.kind=stdlib, vocab 256), both scored at fixed windows:
- `proxyscale.models.evals:next_byte_accuracy`: next-byte top-1 accuracy on a fixed slice of the held-out stdlib
  files (the files the split keeps out of training). Cheap, in-distribution, and its error falls
  smoothly with the loss: the task the downstream chain is tested on end to end.
- `proxyscale.models.evals:json_next_byte_accuracy`: the same on JSON lines generated deterministically here (no
  download, the same bytes on every machine and Python version): a structured text unlike the
  training corpus. Measured: a width-32 proxy at loss 2.7 scores 0.13-0.20, moving as much between
  evals as over 300 steps; a task the small ladders do not yet learn (docs/downstream.md).
"""

from __future__ import annotations

import importlib
import json
import math
import random
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

TASK_RECORDS = 600
TASK_SEED = 20240607
TASK_WINDOWS = 32
"""JSON task: windows of seq_len + 1 bytes scored per evaluation (32 x 128 = 4,096 predictions at seq_len 128)."""
HELDOUT_WINDOWS = 64
"""Held-out stdlib task: 64 windows (2,048 predictions at seq_len 32: a standard error of about 0.011)."""

_WORDS = ("alpha", "beta", "gamma", "delta", "model", "width", "depth", "tokens", "loss", "batch", "schedule",
          "cosine", "warmup", "layer", "head", "vector", "matrix", "sample", "record", "value", "index", "path",
          "query", "result", "status", "finished", "pending", "shard", "node", "worker", "queue", "cache")
_KINDS = ("run", "fork", "sweep", "probe", "eval")


def resolve_eval(ref: str) -> Callable:
    """The function `module:function` names, or ValueError saying which part could not be found."""
    module_name, _, function_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{ref!r}: cannot import module {module_name!r} ({error}); is it on PYTHONPATH (or "
                         "installed) where the runs train?") from None
    function = getattr(module, function_name, None)
    if function is None or not callable(function):
        found = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                       and getattr(v, "__module__", None) == module.__name__ and not isinstance(v, type))[:12]
        raise ValueError(f"{ref!r}: module {module_name!r} has no function {function_name!r}; its functions include "
                         f"{found}")
    return function


def run_evals(functions: dict[str, Callable], model: torch.nn.Module, *, spec, device: torch.device) -> dict[str, float]:
    """Call each named metric; a metric that returns no real number is an error naming it."""
    values = {}
    for name, function in functions.items():
        value = function(model, spec=spec, device=device)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"train.evals: {name} returned {type(value).__name__} {value!r}; it must return a float")
        values[name] = float(value)
        if not math.isfinite(values[name]):
            raise ValueError(f"train.evals: {name} returned {values[name]}; it must return a finite float")
    return values


@lru_cache(maxsize=1)
def structured_text(records: int = TASK_RECORDS, seed: int = TASK_SEED) -> bytes:
    """JSON lines built from a seeded RNG over a fixed vocabulary: the same bytes everywhere."""
    rng = random.Random(seed)
    lines = []
    for i in range(records):
        record = {"id": i, "name": f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}", "kind": rng.choice(_KINDS),
                  "size": rng.randrange(1, 4096), "ok": rng.random() < 0.8,
                  "tags": sorted(rng.sample(_WORDS, rng.randrange(0, 4))), "score": round(rng.random(), 3)}
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


def task_windows(seq_len: int, windows: int = TASK_WINDOWS) -> torch.Tensor:
    """(windows, seq_len + 1) bytes at evenly spaced offsets of the structured text."""
    data = np.frombuffer(structured_text(), dtype=np.uint8)
    span = seq_len + 1
    if len(data) < span:
        raise ValueError(f"the task text ({len(data)} bytes) is shorter than one window of seq_len + 1 = {span}")
    starts = np.linspace(0, len(data) - span, windows).astype(np.int64)
    return torch.from_numpy(np.stack([data[s:s + span] for s in starts]).astype(np.int64))


def _top1(model: torch.nn.Module, windows: torch.Tensor, device: torch.device) -> float:
    batch = windows.to(device)
    logits = model(batch[:, :-1])
    return float((logits.argmax(dim=-1) == batch[:, 1:]).float().mean())


def _byte_level(spec, name: str) -> None:
    if spec.model.vocab_size != 256 or spec.data.kind != "stdlib":
        raise ValueError(f"{name} scores byte-level models trained on the stdlib corpus (data.kind='stdlib', vocab "
                         f"256); this run has data.kind={spec.data.kind!r}, vocab {spec.model.vocab_size}")


def heldout_windows(tokens: np.ndarray, seq_len: int, windows: int = HELDOUT_WINDOWS) -> torch.Tensor:
    """(windows, seq_len + 1) tokens at evenly spaced offsets of a held-out array (fixed, unlike eval batches)."""
    span = seq_len + 1
    starts = np.linspace(0, len(tokens) - span, windows).astype(np.int64)
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + span]) for s in starts]).astype(np.int64))


def next_byte_accuracy(model: torch.nn.Module, *, spec, device: torch.device) -> float:
    """Top-1 next-byte accuracy on a fixed held-out slice of the stdlib corpus (files no run trains on)."""
    from proxyscale.models.data import load_tokens

    _byte_level(spec, "next_byte_accuracy")
    return _top1(model, heldout_windows(load_tokens(spec.data).val, spec.model.seq_len), device)


def json_next_byte_accuracy(model: torch.nn.Module, *, spec, device: torch.device) -> float:
    """Top-1 next-byte accuracy on the generated JSON-lines text: a task unlike the training corpus."""
    _byte_level(spec, "json_next_byte_accuracy")
    return _top1(model, task_windows(spec.model.seq_len), device)
