"""What a run reports, real or simulated: step records while it trains and one result at the end.

Kept free of torch so the simulated trainer and the driver can use it without importing PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepRecord:
    """One logged step: a train/probe record, an evaluation, or both."""

    step: int
    """Optimiser steps completed."""
    tokens: int
    lr: float
    train_loss: float | None = None
    eval_loss: float | None = None
    probes: dict[str, float] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    evals: dict[str, float] = field(default_factory=dict)
    """Named task metrics (train.evals) at this evaluation; empty on steps without one."""
    eval_bpb: float | None = None
    """Bits per byte of the eval split at this eval: eval_loss / ln 2 / its bytes per token (bits_per_byte)."""


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str
    """'finished' or 'diverged'."""
    reason: str | None
    initial_eval_loss: float
    final_eval_loss: float
    best_eval_loss: float
    steps: int
    tokens: int
    n_params: int
    n_params_nonembedding: int
    flops_per_token: float
    flops: float
    """Training FLOPs actually spent (FLOPs per token x tokens trained)."""
    wall_seconds: float
    train_seconds: float
    data_hash: str
    device: str
    eval_curve: tuple[tuple[int, int, float], ...]
    """(step, tokens, eval loss) at every evaluation, step 0 included."""
    last_probes: dict[str, float]
    evals: dict[str, float] = field(default_factory=dict)
    """The named task metrics (train.evals) at the last evaluation."""
    tokens_per_second: float | None = None
    """Training tokens per second of the process that finished the run (its first steps left out: models/train.py)."""
    mfu: float | None = None
    """Model FLOPs utilisation: flops_per_token * tokens_per_second / peak_flops (models/throughput.py); None
    without a peak (a CPU, an unknown GPU) unless cluster.peak_flops is set."""
    peak_flops: float | None = None
    device_name: str | None = None
    """torch.cuda.get_device_name() on CUDA, 'cpu' on CPU."""
    val_bytes_per_token: float | None = None
    """UTF-8 bytes per token of the eval split (1 for the byte corpus; None when unknown, as for a memmap file)."""

    @property
    def final_eval_bpb(self) -> float | None:
        """Bits per byte of the final eval (bits_per_byte); None when bytes per token is unknown."""
        return bits_per_byte(self.final_eval_loss, self.val_bytes_per_token)

    @property
    def best_eval_bpb(self) -> float | None:
        """Bits per byte of the best eval; named as the ledger's runs column."""
        return bits_per_byte(self.best_eval_loss, self.val_bytes_per_token)

    def to_dict(self) -> dict[str, Any]:
        """The fields, and final_eval_bpb / best_eval_bpb (None when bytes per token is unknown)."""
        return asdict(self) | {"final_eval_bpb": self.final_eval_bpb, "best_eval_bpb": self.best_eval_bpb}


def bits_per_byte(loss: float | None, bytes_per_token: float | None) -> float | None:
    """Bits per byte of text: loss (nats per token) / ln 2 / bytes per token; comparable across tokenizers."""
    if loss is None or bytes_per_token is None or not bytes_per_token > 0:
        return None
    return loss / math.log(2) / bytes_per_token
