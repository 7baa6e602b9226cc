"""Which LR schedule is best at the target: each schedule's final loss at (N, D) by the fitted curve law
(analysis/curve_law.py), and its difference to cosine, with bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval


def schedule_shapes() -> dict:
    """The schedules ranked at the target: name -> schedule(T) giving the LR multipliers of T steps."""
    from proxyscale.analysis.curve_law import constant_shape, cosine_shape, wsd_shape

    shapes = {"cosine": cosine_shape(min_lr_ratio=0.1)}
    for fraction in (0.1, 0.2, 0.3):
        shapes[f"wsd (1-sqrt cooldown {fraction:g})"] = wsd_shape(decay_fraction=fraction, sqrt=True)
    shapes["constant then linear cooldown 0.2"] = wsd_shape(decay_fraction=0.2, sqrt=False)
    shapes["constant"] = constant_shape()
    return shapes


@dataclass(frozen=True)
class ScheduleRanking:
    """Final loss of each schedule at (N, D) by the curve law, and its difference to cosine, with intervals."""

    n_params: float
    tokens: float
    losses: dict[str, Interval]
    vs_cosine: dict[str, Interval]
    """loss(schedule) - loss(cosine); negative = better than cosine."""
    best: str

    def as_dict(self) -> dict:
        return {"n_params": self.n_params, "tokens": self.tokens, "best": self.best,
                "losses": {k: v.as_dict() for k, v in self.losses.items()},
                "vs_cosine": {k: v.as_dict() for k, v in self.vs_cosine.items()}}


def rank_schedules(fit, n_params: float, tokens: float, *, batch_tokens: float, shapes: dict | None = None,
                   level: float = 0.95) -> ScheduleRanking:
    """Rank schedules at (N, D) with a fitted curve law (analysis.curve_law.CurveLawFit, several sizes,
    with a bootstrap): each shape's final loss E' + A / N^alpha + B' / D^beta from `fit.reduced` at this N
    (its annealing gain at N when it scales with N), for the point fit and every bootstrap member."""
    shapes = shapes or schedule_shapes()
    steps = max(2, int(round(tokens / batch_tokens)))

    def final(shape, members: bool) -> np.ndarray:
        law = fit.reduced(shape(steps), batch_tokens=batch_tokens, members=members, n_params=n_params)
        return law["E"] + law["A"] * n_params ** -law["alpha"] + law["B"] * tokens ** -law["beta"]

    points = {name: float(final(shape, False)[0]) for name, shape in shapes.items()}
    members = {name: final(shape, True) for name, shape in shapes.items()} if len(fit.bootstrap) else {}
    losses = {name: percentile_interval(points[name], members.get(name, []), level) for name in shapes}
    base = "cosine" if "cosine" in shapes else next(iter(shapes))
    vs = {name: percentile_interval(points[name] - points[base],
                                    (members[name] - members[base]) if members else [], level) for name in shapes}
    best = min(points, key=points.get)
    return ScheduleRanking(float(n_params), float(tokens), losses, vs, best)
