"""What a run reports, real or simulated: step records while it trains and one result at the end.

Kept free of torch so the simulated trainer and the driver can use it without importing PyTorch.
"""

from __future__ import annotations

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
