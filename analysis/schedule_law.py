"""The learning-rate-schedule law of Tissue et al. (2024), fitted to whole loss curves.

L(s) = L0 + A S1(s)^-alpha - C S2(s), with S1 the forward area (sum of LRs) and S2 the annealing
area with momentum decay lambda (see `analysis.laws.schedule_areas`). The fit uses every logged
point past the first `skip_fraction` of each fitting curve (Choshen et al. 2024: early points
mislead), and predicts any other schedule from its LRs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from proxyscale.analysis.laws import schedule_areas, schedule_loss


@dataclass(frozen=True)
class LossCurve:
    """A loss curve: LR at every optimiser step from step 1, and losses observed at some steps."""

    name: str
    lrs: np.ndarray
    """LR of steps 1..T (index i holds step i + 1), warmup included."""
    steps: np.ndarray
    losses: np.ndarray


def curve_from_table(name: str, steps, lrs, losses, *, warmup_steps: int = 0, peak_lr: float | None = None) -> LossCurve:
    """Rebuild the per-step LR sequence from a logged (step, lr, loss) table.

    Between logged rows the LR is interpolated linearly. Steps before the first logged row are
    reconstructed as a linear warmup to `peak_lr` over `warmup_steps`, then `peak_lr` until the
    first row (tables that start after warmup, as in Luo et al.'s curves).
    """
    steps, lrs, losses = (np.asarray(v, float) for v in (steps, lrs, losses))
    peak = float(lrs[0]) if peak_lr is None else peak_lr
    all_steps = np.arange(1, int(steps[-1]) + 1)
    per_step = np.interp(all_steps, steps, lrs)
    before = all_steps < steps[0]
    warm = before & (all_steps <= warmup_steps)
    per_step[before] = peak
    if warmup_steps:
        per_step[warm] = peak * all_steps[warm] / warmup_steps
    return LossCurve(name=name, lrs=per_step, steps=steps.astype(int), losses=losses)


@dataclass(frozen=True)
class ScheduleLawFit:
    L0: float
    A: float
    alpha: float
    C: float
    decay: float

    def predict(self, curve: LossCurve) -> np.ndarray:
        s1, s2 = schedule_areas(curve.lrs, decay=self.decay)
        index = curve.steps - 1
        return schedule_loss(s1[index], s2[index], L0=self.L0, A=self.A, alpha=self.alpha, C=self.C)

    def relative_error(self, curve: LossCurve, skip_fraction: float = 0.1) -> float:
        """Mean absolute relative error on the points past the first `skip_fraction` of the curve."""
        mask = _past_start(curve, skip_fraction)
        predicted = self.predict(curve)[mask]
        return float(np.mean(np.abs(predicted - curve.losses[mask]) / curve.losses[mask]))

    def as_dict(self) -> dict[str, float]:
        return {"L0": self.L0, "A": self.A, "alpha": self.alpha, "C": self.C, "decay": self.decay}


def _past_start(curve: LossCurve, skip_fraction: float) -> np.ndarray:
    return curve.steps > skip_fraction * len(curve.lrs)


def fit_schedule_law(curves: list[LossCurve], *, decay: float = 0.999, skip_fraction: float = 0.1) -> ScheduleLawFit:
    """Least squares on relative residuals over all fitting curves, from a few starting points."""
    areas = []
    for curve in curves:
        s1, s2 = schedule_areas(curve.lrs, decay=decay)
        mask = _past_start(curve, skip_fraction)
        index = curve.steps[mask] - 1
        areas.append((s1[index], s2[index], curve.losses[mask]))
    s1 = np.concatenate([a[0] for a in areas])
    s2 = np.concatenate([a[1] for a in areas])
    observed = np.concatenate([a[2] for a in areas])

    def residuals(params):
        L0, A, alpha, C = params
        return (schedule_loss(s1, s2, L0=L0, A=A, alpha=alpha, C=C) - observed) / observed

    s2_scale = max(float(np.max(np.abs(s2))), 1e-12)
    best = None
    for alpha0 in (0.3, 0.5, 1.0):
        for l0_fraction in (0.5, 0.8, 0.95):
            start = [l0_fraction * observed.min(), (1 - l0_fraction) * observed.min() * s1.max() ** alpha0, alpha0,
                     0.1 * observed.min() / s2_scale]
            result = least_squares(residuals, start, bounds=([0, 0, 0, 0], [np.inf, np.inf, 5, np.inf]),
                                   x_scale="jac", max_nfev=2000)
            if best is None or result.cost < best.cost:
                best = result
    L0, A, alpha, C = best.x
    return ScheduleLawFit(L0=float(L0), A=float(A), alpha=float(alpha), C=float(C), decay=decay)
