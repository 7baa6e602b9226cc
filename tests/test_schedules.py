from __future__ import annotations

import math

import pytest

from proxyscale.models.schedules import lr_multiplier
from proxyscale.models.spec import TrainSpec


def multipliers(**kwargs) -> list[float]:
    spec = TrainSpec(**({"tokens": 100 * 1024, "batch_tokens": 1024, "warmup_steps": 10} | kwargs))
    return [lr_multiplier(step, spec) for step in range(spec.steps)]


def test_warmup_is_linear_to_the_peak():
    values = multipliers(schedule="constant")
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert set(values[10:]) == {1.0}


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decays_reach_the_floor_at_the_last_step(schedule):
    values = multipliers(schedule=schedule, min_lr_ratio=0.1)
    assert values[10] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


def test_cosine_midpoint():
    values = multipliers(schedule="cosine", min_lr_ratio=0.0, warmup_steps=0, tokens=101 * 1024)
    assert values[50] == pytest.approx(0.5)
    assert values[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_wsd_holds_then_decays_over_its_fraction():
    values = multipliers(schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert set(values[10:80]) == {1.0}
    assert values[80] < 1.0 and values[-1] == pytest.approx(0.0)
    assert values[89] == pytest.approx(0.5)
