"""Named task metrics a run records at every evaluation (`train.evals`), and one shipped task.

A task metric is any importable function

    def my_metric(model, *, spec, device) -> float

called at each evaluation of a run (step 0 included) with the model in eval mode under no_grad
(and the run's bf16 autocast on CUDA); `spec` is the run's RunSpec, `device` its torch device. The
float it returns is stored under its name beside the eval loss: ledger table `evals`, W&B
`evals/<name>`, `proxyscale export` column `eval.<name>`. `train.evals` names them, either as a
list of "module:function" (each named by its function) or as a mapping name -> "module:function".

The shipped task, `models.evals:next_byte_accuracy`, is next-byte top-1 accuracy on a structured
text no run trains on: JSON lines generated deterministically here (no download, the same bytes on
every machine and Python version), scored at fixed windows. Byte-level proxies (vocab 256, the
default stdlib corpus) learn its brackets, quotes, keys and digits as their loss falls, so its error
follows their loss; it is the task the downstream law (analysis/downstream.py) is tested on.
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
"""Windows of seq_len + 1 bytes scored per evaluation: 32 x 128 = 4,096 predictions at seq_len 128 (a
standard error of about 0.008 on an accuracy near 0.5)."""

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


def next_byte_accuracy(model: torch.nn.Module, *, spec, device: torch.device) -> float:
    """Top-1 accuracy of the next byte on the structured task text (a byte-level model: vocab 256)."""
    if spec.model.vocab_size != 256:
        raise ValueError(f"next_byte_accuracy scores byte-level models (vocab 256); this run's vocab is "
                         f"{spec.model.vocab_size} (data.kind={spec.data.kind!r})")
    batch = task_windows(spec.model.seq_len).to(device)
    logits = model(batch[:, :-1])
    return float((logits.argmax(dim=-1) == batch[:, 1:]).float().mean())
