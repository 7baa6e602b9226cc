"""Learning-rate schedules as pure functions of the step: the LR multiplier of the peak LR."""

from __future__ import annotations

import math

from proxyscale.models.spec import TrainSpec


def lr_multiplier(step: int, spec: TrainSpec) -> float:
    """Multiplier of the peak LR at optimiser step `step` (0-based) of `spec.steps` steps.

    Linear warmup from 1/warmup to 1, then: constant; cosine or linear decay to `min_lr_ratio`
    reached at the last step; or warmup-stable-decay (WSD) that holds the peak and decays
    to `min_lr_ratio` over the last `decay_fraction` of the steps, linearly or as 1 - sqrt (`decay_shape`).
    """
    total, warmup, floor = spec.steps, spec.warmup_steps, spec.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    if spec.schedule == "constant":
        return 1.0
    if spec.schedule == "wsd":
        decay_start = spec.decay_start
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / (total - decay_start)
        if spec.decay_shape == "sqrt":  # Hägele et al.'s (1 - sqrt) cooldown
            return floor + (1.0 - floor) * (1.0 - math.sqrt(progress))
        return 1.0 - (1.0 - floor) * progress
    progress = (step - warmup) / max(1, total - 1 - warmup)
    if spec.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - floor) * progress  # linear
