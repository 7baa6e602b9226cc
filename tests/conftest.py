from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec  # noqa: E402


def tiny_spec(**overrides) -> RunSpec:
    """A proxy small enough to train in seconds on 2 cores; keyword overrides go to model/train."""
    model_fields = {f.name for f in dataclasses.fields(ModelSpec)}
    model_kw = {k: v for k, v in overrides.items() if k in model_fields}
    train_kw = {k: v for k, v in overrides.items() if k not in model_fields}
    model = ModelSpec(**({"width": 32, "depth": 2, "n_heads": 2, "seq_len": 64} | model_kw))
    train = TrainSpec(
        **(
            {"tokens": 16_384, "batch_tokens": 1024, "warmup_steps": 2, "eval_interval_tokens": 4096,
             "eval_batches": 2, "log_interval": 4, "lr": 1e-2, "device": "cpu"}
            | train_kw
        )
    )
    return RunSpec(model=model, train=train)


@pytest.fixture
def cli_env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
