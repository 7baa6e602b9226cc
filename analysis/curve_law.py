"""The loss along a run across model sizes: one law for whole curves of several N, fitted jointly.

    L(N, s) = E + A / N^alpha + B * S1(s)^-beta - C * S2(s)

(Tissue et al. 2024 with a size term; ../shared/papers.md §2, §4, §4b.) At step s of a run:
- S1 is the forward area in TOKENS of the peak-normalised LR, sum_{i<=s} (eta_i / eta_peak) * tokens
  per step, so a constant-LR run has S1 = D and B, beta read as in L(N, D);
- S2 is the realised annealing: every drop of the normalised LR, d_j = u_{j-1} - u_j (after the peak
  is first reached), counts once it is realised, S2(s) = sum_{j<=s} d_j (1 - K(j, s)) with the
  kernel K(j, s) = exp(-(x(s + 1) - x(j)) / r). The clock x says how fast: `relative` (x = ln step:
  a drop realises over a fixed FRACTION r of the time it happened at), `step` (x = step: over r
  steps; Tissue et al.'s lambda = exp(-1/r)) or `token` (x = tokens: over r tokens). With the step
  clock this is exactly Tissue's law: their S2 with momentum lambda equals ours / (1 - lambda).
  C is the loss gained by a fully realised drop of the whole peak LR, so it reads in nats.

With several sizes the gain may scale with N: C (N / n_ref)^kappa (`anneal_size_exponent`, on by
default: Luo et al.'s per-size fits at 25M-400M grow about as N^0.13, while a gain proportional to
the reducible loss would shrink with N; along one run a gain proportional to B S1^-beta predicts
the 25M curves twice as badly as a constant C).

A finished run whose schedule has a fixed shape (cosine to 10%, WSD with a 20% cooldown, ...) has
S1 = k D (k the mean LR multiplier) and S2 = the drop realised by its end, so its final loss is
L(N, D) = (E - C S2_end) + A / N^alpha + (B k^-beta) / D^beta: `reduce_to_chinchilla`. Under the
relative clock S2_end depends on the shape only, so the reduction is exact at every length; under
the step or token clocks it depends on the run's length too (see `CurveLawFit.compute_optimal`).

Fitting: least squares on relative residuals over every point past the first `skip_fraction` of
each curve. The law is linear in (E, A, B, C) for fixed (alpha, beta, r), so a grid over those three
is solved exactly (variable projection) and the best cell is refined by Levenberg-Marquardt over all
parameters, with S2 a cubic spline in log r precomputed once per curve. The bootstrap resamples
whole lineage groups (a fork and its parent are one group; `groups`), and refits every resample at
once (a batched Levenberg-Marquardt over (resamples, points)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.interpolate import CubicSpline

from proxyscale.analysis.fit import Interval, percentile_interval
from proxyscale.analysis.laws import compute_optimal_allocation

CLOCKS = ("relative", "step", "token")
AUTO_CLOCKS = ("relative", "step")
"""The clocks `clock="auto"` chooses between (token is the step clock in tokens: the same fit when every curve
has the same batch size; ask for it by name when batch sizes differ)."""
PARAMETERS = ("E", "A", "alpha", "B", "beta", "C", "r")
_E, _A, _ALPHA, _B, _BETA, _C, _R = range(7)
R_RANGES = {"relative": (1e-3, 3.0), "step": (1.0, 3e5), "token": (1e2, 1e10)}
"""Range of the realisation scale r per clock (fraction of the time / steps / tokens)."""
SPLINE_KNOTS_PER_DECADE = 6
MAX_EXPONENT = 3.0
BOOTSTRAP_METHODS = ("lineage", "wild", "wild-jackknife", "wild-nested", "wild-point")
"""How the bootstrap members are drawn: whole lineages resampled with replacement (the pairs cluster bootstrap),
or a wild bootstrap (the point fit plus its residuals times random weights, `wild_targets`): one weight per lineage
(wild), the same on each lineage's leave-one-lineage-out residuals (wild-jackknife, `jackknife_residuals`), one per
lineage for the lineage's mean residual and one per point for the rest (wild-nested), one per point (wild-point)."""
WILD_WEIGHTS = ("webb", "rademacher")
"""The wild bootstrap's weight per lineage: Webb's six-point (+-sqrt(1/2), +-1, +-sqrt(3/2)) or Rademacher (+-1)."""


@dataclass(frozen=True)
class Curve:
    """One run's loss curve with its whole LR history.

    A fork's `lrs` hold its parent's history up to the fork step and its own after it; its `steps`
    only its own evaluations. Runs of one lineage share a `group` (bootstrap resamples groups).
    """

    name: str
    lrs: np.ndarray
    """LR of optimiser steps 1..T (index i holds step i + 1), warmup included."""
    steps: np.ndarray
    """Steps (1-based, <= T) at which the loss was measured."""
    losses: np.ndarray
    n_params: float = float("nan")
    """N of the model (nan: one model size only, fit the single-size law)."""
    batch_tokens: float = 1.0
    """Tokens per step (1: S1 and D count steps)."""
    group: str | None = None
    """Lineage group for the bootstrap (default: the curve's own name)."""
    peak_lr: float | None = None
    """LR the schedule is normalised by (default: the largest LR of the history)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lrs", np.asarray(self.lrs, float))
        object.__setattr__(self, "steps", np.asarray(self.steps, int))
        object.__setattr__(self, "losses", np.asarray(self.losses, float))

    @property
    def peak(self) -> float:
        return float(self.peak_lr) if self.peak_lr is not None else float(np.max(self.lrs))

    @property
    def label(self) -> str:
        return self.group if self.group is not None else self.name

    def past_start(self, skip_fraction: float) -> np.ndarray:
        """Points past the first `skip_fraction` of the run's whole history (Choshen et al. 2024)."""
        return (self.steps > skip_fraction * len(self.lrs)) & np.isfinite(self.losses)


def curve_from_table(name: str, steps, lrs, losses, *, n_params: float = float("nan"), batch_tokens: float = 1.0,
                     warmup_steps: int = 0, peak_lr: float | None = None, group: str | None = None) -> Curve:
    """A Curve from a logged (step, lr, loss) table: the LR between rows interpolated linearly.

    Steps before the first row are a linear warmup to `peak_lr` over `warmup_steps`, then `peak_lr`
    (tables that start after warmup, as Luo et al.'s curves).
    """
    steps, lrs, losses = (np.asarray(v, float) for v in (steps, lrs, losses))
    peak = float(lrs[0]) if peak_lr is None else float(peak_lr)
    every = np.arange(1, int(steps[-1]) + 1)
    per_step = np.interp(every, steps, lrs)
    before = every < steps[0]
    per_step[before] = peak
    if warmup_steps:
        warm = before & (every <= warmup_steps)
        per_step[warm] = peak * every[warm] / warmup_steps
    return Curve(name=name, lrs=per_step, steps=steps.astype(int), losses=losses, n_params=n_params,
                 batch_tokens=batch_tokens, group=group, peak_lr=peak)


# --------------------------------------------------------------------------------------------- areas


def normalised_drops(lrs: np.ndarray, peak: float) -> tuple[np.ndarray, np.ndarray]:
    """(u, d): the LR multipliers u_j = eta_j / peak and their drops d_j = u_{j-1} - u_j, counted
    only after the peak is first reached (warmup is not annealing)."""
    u = np.asarray(lrs, float) / peak
    d = np.zeros_like(u)
    d[1:] = u[:-1] - u[1:]
    reached = int(np.argmax(u >= u.max() * (1 - 1e-12)))
    d[: reached + 1] = 0.0
    return u, d


def _clock(steps: np.ndarray, clock: str, batch_tokens: float) -> np.ndarray:
    steps = np.asarray(steps, float)
    if clock == "relative":
        return np.log(steps)
    if clock == "step":
        return steps
    if clock == "token":
        return steps * batch_tokens
    raise ValueError(f"clock {clock!r}: choose one of {CLOCKS}")


def forward_area(curve: Curve, steps=None) -> np.ndarray:
    """S1 at `steps` (default: the curve's eval steps), in tokens of peak-normalised LR."""
    steps = curve.steps if steps is None else np.asarray(steps, int)
    return curve.batch_tokens * np.cumsum(curve.lrs / curve.peak)[steps - 1]


def annealing_area(lrs: np.ndarray, peak: float, steps, r, *, clock: str = "relative",
                   batch_tokens: float = 1.0) -> np.ndarray:
    """Realised annealing S2 at `steps` for each realisation scale in `r`: shape (len(steps), len(r)).

    S2(s) = sum_{j<=s} d_j (1 - exp(-(x(s+1) - x(j)) / r)); computed in blocks between consecutive
    evaluation points, so no exponent overflows however long the run.
    """
    r = np.atleast_1d(np.asarray(r, float))
    steps = np.asarray(steps, int)
    order = np.argsort(steps)
    sorted_steps = steps[order]
    _, d = normalised_drops(lrs, peak)
    cumulative = np.cumsum(d)
    drops = np.flatnonzero(d[: sorted_steps[-1]])  # 0-based index j-1 of step j
    out = np.empty((len(steps), len(r)))
    ends = _clock(sorted_steps + 1, clock, batch_tokens)  # x(s + 1) per evaluation
    # Each drop belongs to the first evaluation at or after its step.
    block = np.searchsorted(sorted_steps, drops + 1)
    pending = np.zeros((len(sorted_steps), len(r)))
    if len(drops):
        lag = (ends[block] - _clock(drops + 1, clock, batch_tokens))[:, None] / r
        weighted = d[drops][:, None] * np.exp(-lag)
        np.add.at(pending, block, weighted)
    unrealised = np.zeros(len(r))
    previous = None
    for k in range(len(sorted_steps)):
        if previous is not None:
            unrealised = unrealised * np.exp(-(ends[k] - previous) / r)
        unrealised = unrealised + pending[k]
        previous = ends[k]
        out[order[k]] = cumulative[sorted_steps[k] - 1] - unrealised
    return out


# ----------------------------------------------------------------------------------------- the law


def curve_loss(n_params, s1, s2, *, E, A, alpha, B, beta, C):
    """L = E + A / N^alpha + B S1^-beta - C S2 (arrays broadcast)."""
    return E + A * np.asarray(n_params, float) ** -alpha + B * np.asarray(s1, float) ** -beta - C * np.asarray(s2, float)


@dataclass
class _Points:
    """Every fitted point of every curve, with what the law needs at it."""

    n: np.ndarray
    s1: np.ndarray
    loss: np.ndarray
    curve: np.ndarray
    """Index of the curve each point came from."""
    log_r_knots: np.ndarray
    s2_table: np.ndarray
    """(points, knots): S2 at each point for each knot of log r."""
    spline: CubicSpline | None = None

    def s2(self, log_r) -> np.ndarray:
        """S2 at every point for each log r: (K, points)."""
        log_r = np.clip(np.atleast_1d(log_r), self.log_r_knots[0], self.log_r_knots[-1])
        return self.spline(log_r).reshape(len(log_r), -1)

    def ds2(self, log_r) -> np.ndarray:
        log_r = np.clip(np.atleast_1d(log_r), self.log_r_knots[0], self.log_r_knots[-1])
        return self.spline(log_r, 1).reshape(len(log_r), -1)


def _knots(clock: str) -> np.ndarray:
    low, high = R_RANGES[clock]
    count = int(np.ceil(np.log10(high / low) * SPLINE_KNOTS_PER_DECADE)) + 1
    return np.linspace(np.log(low), np.log(high), count)


def _points(curves: Sequence[Curve], clock: str, skip_fraction: float, masks=None) -> _Points:
    knots = _knots(clock)
    n, s1, loss, index, tables = [], [], [], [], []
    for i, curve in enumerate(curves):
        keep = curve.past_start(skip_fraction) if masks is None else masks[i]
        steps = curve.steps[keep]
        if not len(steps):
            continue
        n.append(np.full(len(steps), curve.n_params))
        s1.append(forward_area(curve, steps))
        loss.append(curve.losses[keep])
        index.append(np.full(len(steps), i))
        tables.append(annealing_area(curve.lrs, curve.peak, steps, np.exp(knots), clock=clock,
                                     batch_tokens=curve.batch_tokens))
    if not n:
        raise ValueError("no curve has a point past its first skip_fraction")
    points = _Points(np.concatenate(n), np.concatenate(s1), np.concatenate(loss), np.concatenate(index), knots,
                     np.concatenate(tables))
    points.spline = CubicSpline(knots, points.s2_table.T, axis=0)
    return points


def _predict_and_jacobian(theta: np.ndarray, pts: _Points, kappa_on: bool, n_ref: float):
    """Prediction (K, n) and its Jacobian (K, n, 8) in (E, A, alpha, B, beta, C, log r, kappa)."""
    theta = np.atleast_2d(theta)
    E, A, alpha, B, beta, C, log_r, kappa = (theta[:, k, None] for k in range(8))
    log_n = np.log(pts.n / n_ref)
    size_power = np.exp(-alpha * log_n)
    data_power = np.exp(-beta * np.log(pts.s1))
    s2 = pts.s2(theta[:, 6])
    anneal_scale = np.exp(kappa * log_n) if kappa_on else np.ones_like(size_power)
    prediction = E + A * size_power + B * data_power - C * anneal_scale * s2
    jacobian = np.empty(prediction.shape + (8,))
    jacobian[..., 0] = 1.0
    jacobian[..., 1] = size_power
    jacobian[..., 2] = -A * size_power * log_n
    jacobian[..., 3] = data_power
    jacobian[..., 4] = -B * data_power * np.log(pts.s1)
    jacobian[..., 5] = -anneal_scale * s2
    jacobian[..., 6] = -C * anneal_scale * pts.ds2(theta[:, 6])
    jacobian[..., 7] = -C * anneal_scale * s2 * log_n if kappa_on else 0.0
    return prediction, jacobian


def _lower_upper(clock: str) -> tuple[np.ndarray, np.ndarray]:
    knots = _knots(clock)
    lower = np.array([-np.inf, 0.0, 0.0, 0.0, 0.0, 0.0, knots[0], -2.0])
    upper = np.array([np.inf, np.inf, MAX_EXPONENT, np.inf, MAX_EXPONENT, np.inf, knots[-1], 2.0])
    return lower, upper


def _objective(theta, pts, weights, kappa_on, n_ref, targets=None) -> np.ndarray:
    """Weighted sum of squared relative residuals of each row; targets: (K, points) losses per row (default the
    measured ones; the wild bootstrap's are the point fit plus flipped residuals)."""
    prediction, _ = _predict_and_jacobian(theta, pts, kappa_on, n_ref)
    loss = pts.loss if targets is None else targets
    residual = (prediction - loss) / loss
    return (weights * residual**2).sum(axis=1)


def _levenberg_marquardt(theta, pts: _Points, weights, free: np.ndarray, kappa_on: bool, n_ref: float,
                         clock: str, iterations: int = 100, targets: np.ndarray | None = None):
    """Damped Gauss-Newton on the weighted relative residuals, vectorised over K problems (rows of theta).

    Each problem keeps its own damping and accepts a step only if its own objective falls.
    targets: (K, points) the losses each row is fitted to (default: the measured ones for every row).
    """
    theta = np.atleast_2d(np.asarray(theta, float)).copy()
    k = len(theta)
    weights = np.broadcast_to(weights, (k, len(pts.loss)))
    targets = np.broadcast_to(pts.loss if targets is None else targets, (k, len(pts.loss)))
    lower, upper = _lower_upper(clock)
    values = _objective(theta, pts, weights, kappa_on, n_ref, targets)
    damping = np.full(k, 1e-3)
    active = np.ones(k, dtype=bool)
    fixed = ~free
    eye = np.eye(8)
    for _ in range(iterations):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        prediction, jacobian = _predict_and_jacobian(theta[idx], pts, kappa_on, n_ref)
        loss = targets[idx]
        jacobian = jacobian / loss[:, :, None]
        jacobian[..., fixed] = 0.0
        residual = (prediction - loss) / loss
        weighted = jacobian.transpose(0, 2, 1) * weights[idx][:, None, :]
        normal = weighted @ jacobian
        gradient = (weighted @ residual[..., None])[..., 0]
        scale = np.einsum("kii->ki", normal) + 1e-12
        scale[:, fixed] = 1.0
        system = normal + damping[idx, None, None] * scale[:, :, None] * eye + np.diag(fixed.astype(float))
        try:
            step = -np.linalg.solve(system, gradient[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -np.stack([np.linalg.lstsq(s, g, rcond=None)[0] for s, g in zip(system, gradient, strict=True)])
        candidate = np.clip(theta[idx] + step, lower, upper)
        new_values = _objective(candidate, pts, weights[idx], kappa_on, n_ref, loss)
        better = np.isfinite(new_values) & (new_values < values[idx])
        gain = np.where(better, (values[idx] - new_values) / np.maximum(values[idx], 1e-300), 0.0)
        theta[idx[better]] = candidate[better]
        values[idx[better]] = new_values[better]
        damping[idx] = np.where(better, np.maximum(damping[idx] * 0.3, 1e-9), damping[idx] * 10.0)
        done = (better & (gain < 1e-10)) | (damping[idx] > 1e10)
        active[idx[done]] = False
    return theta, values


def _grid_start(pts: _Points, weights: np.ndarray, sizes: bool, anneals: bool, n_ref: float) -> np.ndarray:
    """Best (alpha, beta, r) cell of a grid, with (E, A, B, C) solved exactly there (variable projection).

    The design has columns [1, (N/n_ref)^-alpha, S1^-beta, -S2(r)]; its Gram matrix for every cell
    is assembled from products of the per-column tables, so the whole grid costs a few matrix products.
    """
    alphas = np.linspace(0.05, 1.5, 16) if sizes else np.zeros(1)
    betas = np.linspace(0.05, 1.5, 16)
    knots = pts.log_r_knots[::2] if anneals else pts.log_r_knots[:1]
    w = weights / pts.loss**2
    y = pts.loss
    size = np.exp(-alphas[:, None] * np.log(pts.n / n_ref)) if sizes else np.zeros((1, len(y)))
    data = np.exp(-betas[:, None] * np.log(pts.s1))
    anneal = -pts.s2(knots) if anneals else np.zeros((1, len(y)))
    ga, gb, gr = len(alphas), len(betas), len(knots)
    shape = (ga, gb, gr)
    # Per-column axis in the grid: 0 = alpha, 1 = beta, 2 = r; the constant column has none.
    tables = [(None, np.ones((1, len(y)))), (0, size), (1, data), (2, anneal)]

    def on_grid(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        target = [1, 1, 1]
        values = values.reshape(-1) if not axes else values
        for axis, length in zip(axes, values.shape[: len(axes)], strict=True):
            target[axis] = length
        return np.broadcast_to(values.reshape(target), shape)

    gram = np.empty(shape + (4, 4))
    rhs = np.empty(shape + (4,))
    for i, (axis_i, col_i) in enumerate(tables):
        rhs[..., i] = on_grid(col_i @ (w * y), () if axis_i is None else (axis_i,))
        for j in range(i, 4):
            axis_j, col_j = tables[j]
            if axis_i is None and axis_j is None:
                value = on_grid(np.array([w.sum()]), ())
            elif axis_i is None or axis_j is None or axis_i == axis_j:
                axis = axis_j if axis_i is None else axis_i
                value = on_grid((col_i * col_j * w).sum(axis=1), (axis,))
            else:
                value = on_grid((col_i * w) @ col_j.T, (axis_i, axis_j))
            gram[..., i, j] = gram[..., j, i] = value
    active = [0] + ([1] if sizes else []) + [2] + ([3] if anneals else [])
    sub = gram[..., active, :][..., :, active]
    sub = sub + 1e-12 * np.einsum("...ii->...i", sub)[..., None] * np.eye(len(active))
    solution = np.linalg.solve(sub, rhs[..., active][..., None])[..., 0]
    residual = (w * y * y).sum() - (solution * rhs[..., active]).sum(-1)
    feasible = (solution[..., 1:] >= 0).all(-1)  # A, B, C >= 0 (E may be anything)
    if feasible.any():
        residual = np.where(feasible, residual, np.inf)
    best = np.unravel_index(np.argmin(residual), shape)
    values = dict(zip(active, solution[best], strict=True))
    theta = np.zeros(8)
    theta[_E] = values[0]
    theta[_A] = max(values.get(1, 0.0), 0.0)
    theta[_ALPHA] = alphas[best[0]]
    theta[_B] = max(values[2], 0.0)
    theta[_BETA] = betas[best[1]]
    theta[_C] = max(values.get(3, 0.0), 0.0)
    theta[_R] = knots[best[2]]
    return theta


# ---------------------------------------------------------------------------------------- the fit


class CurveReadouts:
    """What every fitted curve form reads off its own `predict(curve, steps, members=)`, `bootstrap` and
    `level`: pointwise intervals and errors on a curve (shared by the Tissue and multi-power fits)."""

    def predict_interval(self, curve: Curve, steps=None) -> list[Interval]:
        point = self.predict(curve, steps)
        if not len(self.bootstrap):
            return [Interval(float(p), float("nan"), float("nan")) for p in point]
        samples = self.predict(curve, steps, members=True)
        return [percentile_interval(p, samples[:, i], self.level) for i, p in enumerate(point)]

    def relative_errors(self, curve: Curve, skip_fraction: float = 0.1) -> np.ndarray:
        keep = curve.past_start(skip_fraction)
        predicted = self.predict(curve, curve.steps[keep])
        return np.abs(predicted - curve.losses[keep]) / curve.losses[keep]

    def mare(self, curve: Curve, skip_fraction: float = 0.1) -> float:
        """Mean |predicted - measured| / measured over the curve's points past `skip_fraction` (a fraction)."""
        return float(np.mean(self.relative_errors(curve, skip_fraction)))


@dataclass(frozen=True)
class CurveLawFit(CurveReadouts):
    """A fitted curve law with its bootstrap ensemble (rows of `bootstrap`, same layout as `theta`).

    theta: (E, A, alpha, B, beta, C, log r, kappa) in natural units (A for N, B for S1 in tokens).
    """

    theta: np.ndarray
    clock: str
    sizes: bool
    """False when every curve had the same N: then E holds E + A / N^alpha and A = alpha = 0."""
    objective: float
    n_points: int
    n_curves: int
    n_ref: float = 1.0
    kappa_on: bool = False
    bootstrap: np.ndarray = field(default_factory=lambda: np.empty((0, 8)), repr=False)
    level: float = 0.95

    # ------------------------------------------------------------------ parameters and intervals
    @property
    def params(self) -> dict[str, float]:
        return self.natural(self.theta[None])[0]

    def natural(self, theta: np.ndarray) -> list[dict[str, float]]:
        out = []
        for row in np.atleast_2d(theta):
            values = {"E": row[_E], "A": row[_A] * self.n_ref ** row[_ALPHA], "alpha": row[_ALPHA], "B": row[_B],
                      "beta": row[_BETA], "C": row[_C], "r": float(np.exp(row[_R]))}
            if self.kappa_on:
                values["kappa"] = row[7]
            out.append({k: float(v) for k, v in values.items()})
        return out

    def intervals(self) -> dict[str, Interval]:
        point = self.params
        members = self.natural(self.bootstrap) if len(self.bootstrap) else []
        names = [k for k in point if self.sizes or k not in ("A", "alpha")]
        return {k: percentile_interval(point[k], [m[k] for m in members], self.level) for k in names}

    # ------------------------------------------------------------------------------ prediction
    def _members(self, members: bool) -> np.ndarray:
        return self.bootstrap if members else self.theta[None]

    def predict(self, curve: Curve, steps=None, *, members: bool = False) -> np.ndarray:
        """Loss at `steps` (default: the curve's own) from the curve's N and LR history.

        members=True: one row per bootstrap member, (R, len(steps)); else the point fit, (len(steps),).
        A candidate run is predicted by building its Curve with its planned LRs and no losses.
        """
        steps = curve.steps if steps is None else np.asarray(steps, int)
        thetas = self._members(members)
        s1 = forward_area(curve, steps)
        log_r = np.clip(thetas[:, 6], *_knots(self.clock)[[0, -1]])
        unique, inverse = np.unique(log_r, return_inverse=True)
        s2 = annealing_area(curve.lrs, curve.peak, steps, np.exp(unique), clock=self.clock,
                            batch_tokens=curve.batch_tokens).T[inverse]
        n = curve.n_params if self.sizes else 1.0
        a = thetas[:, _A, None] if self.sizes else 0.0
        scale = (n / self.n_ref) ** thetas[:, 7, None] if self.kappa_on else 1.0
        values = (thetas[:, _E, None] + a * (n / self.n_ref) ** -thetas[:, _ALPHA, None]
                  + thetas[:, _B, None] * s1 ** -thetas[:, _BETA, None] - thetas[:, _C, None] * scale * s2)
        return values if members else values[0]

    # ----------------------------------------------------------------- reduction to L(N, D)
    def reduced(self, multipliers, *, batch_tokens: float = 1.0, members: bool = False,
                n_params: float | None = None) -> dict[str, np.ndarray]:
        """(E, A, alpha, B, beta) of L(N, D) for finished runs whose LR multipliers are `multipliers`.

        A finished run of that schedule has S1 = k D (k = mean multiplier / peak) and S2 = S2_end, so
        its final loss is exactly E' + A / N^alpha + B' / D^beta with E' = E - C S2_end and
        B' = B k^-beta, at that run length; under the relative clock at every length of the same shape.
        Arrays: one value for the point fit, or one per bootstrap member (members=True).
        With kappa the annealing gain depends on N, so E' does too: it is given at `n_params` (default
        n_ref), and the optimum over N needs `optimal_members`.
        """
        thetas = self._members(members)
        k, s2_end = schedule_end(multipliers, np.exp(thetas[:, 6]), clock=self.clock, batch_tokens=batch_tokens)
        scale = (n_params / self.n_ref) ** thetas[:, 7] if (self.kappa_on and n_params is not None) else 1.0
        return {"E": thetas[:, _E] - thetas[:, _C] * scale * s2_end, "A": thetas[:, _A] * self.n_ref ** thetas[:, _ALPHA],
                "alpha": thetas[:, _ALPHA], "B": thetas[:, _B] * k ** -thetas[:, _BETA], "beta": thetas[:, _BETA]}

    def final_loss(self, n_params, tokens, schedule: Callable[[int], np.ndarray], *, batch_tokens: float,
                   members: bool = False) -> np.ndarray:
        """The curve law's loss at the end of a run of `tokens` tokens with schedule shape `schedule`."""
        steps = max(2, int(round(tokens / batch_tokens)))
        law = self.reduced(schedule(steps), batch_tokens=batch_tokens, members=members)
        value = law["E"] + law["A"] * n_params ** -law["alpha"] + law["B"] * tokens ** -law["beta"]
        return value if members else value[0]

    def compute_optimal(self, flops: float, schedule: Callable[[int], np.ndarray], *, batch_tokens: float,
                        span: float = 30.0, points: int = 241) -> dict[str, Interval]:
        """N_opt, D_opt (C = 6 N D) and the final loss there for runs of shape `schedule`, with intervals
        (the point fit's values and the percentiles of the bootstrap members'; see `optimal_members`)."""
        members = self.optimal_members(flops, schedule, batch_tokens=batch_tokens, span=span, points=points)
        return {name: percentile_interval(values[0], values[1:], self.level) for name, values in members.items()}

    def optimal_members(self, flops: float, schedule: Callable[[int], np.ndarray], *, batch_tokens: float,
                        span: float = 30.0, points: int = 241) -> dict[str, np.ndarray]:
        """N_opt, D_opt and the final loss at C = 6 N D of the point fit (index 0) and of every bootstrap member.

        schedule(T) gives the LR multipliers of a run of T steps. Every member's final loss
        L_end(N, C / 6N) is minimised numerically over a grid of log N (span times either side of the
        point fit's reduced-law optimum, then a parabola through the best three points). This is exact
        under every clock and with kappa: the run's length D / batch_tokens sets its S2_end and k
        (interpolated in log length from a grid of lengths), which the closed form of `reduced` cannot
        follow. A member whose minimum lies on the grid's edge gets N_opt = 0 or inf (kept in the interval).
        """
        if not self.sizes:
            raise ValueError("compute_optimal needs a fit over several model sizes")
        thetas = np.concatenate([self.theta[None], self.bootstrap]) if len(self.bootstrap) else self.theta[None]
        center = self._reduced_optimum(flops, schedule, batch_tokens)
        log_n = np.log(center) + np.linspace(-np.log(span), np.log(span), points)
        n = np.exp(log_n)
        d = flops / (6 * n)
        steps = np.clip(d / batch_tokens, 2, MAX_STEPS)
        lengths = np.unique(np.geomspace(steps.min(), steps.max(), 8 * int(np.ceil(np.log10(span * span))) + 2)
                            .round().astype(int))
        ends = [schedule_end(schedule(int(t)), np.exp(thetas[:, 6]), clock=self.clock, batch_tokens=batch_tokens)
                for t in lengths]
        log_lengths = np.log(lengths)
        k = np.interp(np.log(steps), log_lengths, [e[0] for e in ends])  # (points,)
        s2_table = np.stack([e[1] for e in ends])  # (lengths, members)
        s2 = np.stack([np.interp(np.log(steps), log_lengths, s2_table[:, m]) for m in range(len(thetas))])
        E, A, alpha, B, beta, C, _, kappa = (thetas[:, i, None] for i in range(8))
        size_scale = (n / self.n_ref)[None, :]
        anneal_scale = size_scale ** kappa if self.kappa_on else 1.0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss = E + A * size_scale ** -alpha + B * (k * d)[None, :] ** -beta - C * anneal_scale * s2
        loss = np.where(np.isfinite(loss), loss, np.inf)
        best = np.argmin(loss, axis=1)
        inner = np.clip(best, 1, points - 2)
        rows = np.arange(len(thetas))
        left, mid, right = loss[rows, inner - 1], loss[rows, inner], loss[rows, inner + 1]
        curvature = left - 2 * mid + right
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = np.where(curvature > 0, 0.5 * (left - right) / curvature, 0.0)
        shift = np.clip(np.nan_to_num(shift), -1, 1)
        step = log_n[1] - log_n[0]
        n_opt = np.exp(log_n[inner] + shift * step)
        loss_opt = mid - 0.125 * (left - right) * shift
        n_opt = np.where(best == 0, 0.0, np.where(best == points - 1, np.inf, n_opt))
        with np.errstate(divide="ignore"):
            d_opt = flops / (6 * n_opt)
        return {"n_opt": n_opt, "d_opt": d_opt, "loss": loss_opt}

    def _reduced_optimum(self, flops: float, schedule: Callable[[int], np.ndarray], batch_tokens: float) -> float:
        """The point fit's N_opt from its reduced law, iterated to the length it implies (a starting point)."""
        steps = 1000
        n = self.n_ref
        for _ in range(6):
            law = {key: float(v[0]) for key, v in self.reduced(schedule(steps), batch_tokens=batch_tokens).items()}
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                n, d = (float(v) for v in compute_optimal_allocation(flops, A=law["A"], B=law["B"],
                                                                     alpha=law["alpha"], beta=law["beta"]))
            if not (np.isfinite(n) and n > 0 and np.isfinite(d)):
                return self.n_ref
            implied = int(np.clip(round(d / batch_tokens), 2, MAX_STEPS))
            if implied == steps:
                break
            steps = implied
        return n


MAX_STEPS = 10**7
END_BINS = 8192


def schedule_end(multipliers, r, *, clock: str, batch_tokens: float = 1.0) -> tuple[float, np.ndarray]:
    """(k, S2_end) of a finished run: its mean normalised LR and its realised annealing at the end for each r.

    Runs longer than END_BINS steps have their drops pooled into END_BINS bins of equal drop count
    (each at its drop-weighted position), which changes S2_end by far less than the fit's noise.
    """
    multipliers = np.asarray(multipliers, float)
    peak = float(multipliers.max())
    k = float(np.mean(multipliers) / peak)
    _, d = normalised_drops(multipliers, peak)
    where = np.flatnonzero(d)
    r = np.atleast_1d(np.asarray(r, float))
    if not len(where):
        return k, np.zeros(len(r))
    x = _clock(where + 1.0, clock, batch_tokens)
    drops = d[where]
    if len(where) > END_BINS:
        bins = np.minimum((np.arange(len(where)) * END_BINS) // len(where), END_BINS - 1)
        total = np.bincount(bins, drops)
        x = np.bincount(bins, drops * x) / np.where(total == 0, 1.0, total)
        drops = total
    end = _clock(np.array([len(multipliers) + 1.0]), clock, batch_tokens)[0]
    unrealised = (drops[:, None] * np.exp(-(end - x)[:, None] / r)).sum(axis=0)
    return k, drops.sum() - unrealised


def reduce_to_chinchilla(fit: CurveLawFit, schedule: Callable[[int], np.ndarray], steps: int, *,
                         batch_tokens: float = 1.0) -> dict[str, float]:
    """The five numbers (E, A, alpha, B, beta) of L(N, D) for finished runs of `steps` steps of shape `schedule`."""
    return {k: float(v[0]) for k, v in fit.reduced(schedule(steps), batch_tokens=batch_tokens).items()}


def fit_curve_law(curves: Sequence[Curve], *, clock: str = "auto", skip_fraction: float = 0.1,
                  bootstrap: int = 0, seed: int = 0, level: float = 0.95, groups: Sequence[str] | None = None,
                  anneal_size_exponent: bool = True, r: float | None = None, warm: CurveLawFit | None = None,
                  label_weights: dict | None = None, bootstrap_method: str = "lineage",
                  wild_weights: str = "webb") -> CurveLawFit:
    """Fit the curve law to whole curves (of one or several model sizes), optionally with a bootstrap.

    groups: a lineage label per curve (default: Curve.group or its name); the bootstrap resamples
    groups with replacement, so a fork and its parent are drawn together.
    anneal_size_exponent: with several sizes, let the annealing gain scale as C (N / n_ref)^kappa (kappa
        fitted; Luo et al.'s fits at 25M-400M grow about as N^0.13). Then E of `reduced` is at N = n_ref and
        the optimum needs `compute_optimal` / `optimal_members`, which minimise numerically.
    r: fix the realisation scale instead of fitting it.
    warm, label_weights (a closed loop's refit as runs arrive; analysis/incremental.py): start from the last fit
        of the same kind (its optimum, and each bootstrap member from its own last solution) instead of the grid;
        label_weights maps each group label to its (bootstrap,) weights, kept from refit to refit.
    clock "auto": fit the relative and the step clock (same parameters, so their objectives compare
        directly) and keep the one that fits these curves better; the bootstrap then uses that clock.
        Which one the data want differs: the published 25M curves favour the relative clock, this
        machine's WSD forks the step clock (docs/results.md, "Schedule at the target").
    bootstrap_method: "lineage" (default: resample whole lineages) or "wild" (the wild cluster bootstrap,
        `wild_targets`: every member refits the point fit's curves plus the residuals, each lineage's multiplied by
        one draw of `wild_weights`; every lineage stays in every member, so with few lineages the members do not
        lean the way a resample that drops a third of them does). The wild bootstrap takes no warm start.
    """
    check_bootstrap(bootstrap_method, wild_weights)
    if bootstrap_method != "lineage" and (label_weights is not None or warm is not None):
        raise ValueError("bootstrap_method 'wild' takes no warm start or label_weights (those are the lineage "
                         "bootstrap's online weights)")
    if clock == "auto":
        if r is not None:  # r is a share of the elapsed time on one clock and a number of steps on the other
            raise ValueError("a fixed r needs a named clock (relative or step), not clock='auto'")
        trials = {name: fit_curve_law(curves, clock=name, skip_fraction=skip_fraction, groups=groups,
                                      anneal_size_exponent=anneal_size_exponent, r=r) for name in AUTO_CLOCKS}
        clock = min(trials, key=lambda name: trials[name].objective)
        if not bootstrap:
            return trials[clock]
    if clock not in CLOCKS:
        raise ValueError(f"clock {clock!r}: choose one of {list(CLOCKS) + ['auto']}")
    curves = list(curves)
    sizes_seen = {c.n_params for c in curves if np.isfinite(c.n_params)}
    sizes = len(sizes_seen) >= 2
    if sizes and any(not np.isfinite(c.n_params) for c in curves):
        raise ValueError("give every curve its N, or none")
    pts = _points(curves, clock, skip_fraction)
    if not sizes:
        pts.n = np.ones_like(pts.n)
    n_ref = float(np.exp(np.mean(np.log(pts.n)))) if sizes else 1.0
    anneals = _anneals(curves)
    kappa_on = anneal_size_exponent and sizes and anneals
    free = _free_parameters(sizes, anneals, kappa_on, fixed_r=r is not None)
    ones = np.ones(len(pts.loss))
    warm_ok = warm is not None and (warm.clock, warm.sizes, warm.kappa_on) == (clock, sizes, kappa_on) and r is None
    start = _grid_start(pts, ones, sizes, anneals, n_ref)
    if r is not None:
        start[_R] = np.log(r)
    # Warm: the last optimum too (its members restart from theirs below); the grid's cell stays, since a warm start
    # alone can stop in the flat valley of (E, r) next to the new optimum.
    starts = [start] + ([_rescaled(warm.theta[None], warm.n_ref, n_ref)[0]] if warm_ok else [])
    if anneals and r is None and not warm_ok:  # also from both ends of the r range: S2 can have two basins
        for log_r in pts.log_r_knots[[2, -3]]:
            other = start.copy()
            other[_R] = log_r
            starts.append(other)
    solutions, values = _levenberg_marquardt(np.array(starts), pts, ones, free, kappa_on, n_ref, clock, 300)
    best = int(np.argmin(values))
    theta, objective = solutions[best], float(values[best])
    boot = np.empty((0, 8))
    if bootstrap:
        labels = [c.label for c in curves] if groups is None else list(groups)
        point_labels = np.asarray(labels, dtype=object)[pts.curve]
        if bootstrap_method != "lineage":
            fitted, jacobian = _predict_and_jacobian(theta, pts, kappa_on, n_ref)
            # The fit's residuals are relative, (y - yhat) / y: so is the leverage's Jacobian.
            relative = wild_residuals((pts.loss - fitted[0]) / pts.loss, jacobian[0][:, free] / pts.loss[:, None],
                                      point_labels, bootstrap_method)
            targets = wild_targets(fitted[0], fitted[0] + relative * pts.loss, point_labels, bootstrap, seed,
                                   wild_weights, "wild" if bootstrap_method == "wild-jackknife" else bootstrap_method)
            boot, _ = _levenberg_marquardt(np.repeat(theta[None], bootstrap, 0), pts, ones, free, kappa_on, n_ref,
                                           clock, 100, targets=targets)
        else:
            weights = (_group_weights(point_labels, bootstrap, seed) if label_weights is None
                       else np.stack([label_weights[label] for label in point_labels], axis=1))
            members = (_rescaled(warm.bootstrap, warm.n_ref, n_ref) if warm_ok and len(warm.bootstrap) == bootstrap
                       else np.repeat(theta[None], bootstrap, 0))
            boot, _ = _levenberg_marquardt(members, pts, weights, free, kappa_on, n_ref, clock, 100)
    return CurveLawFit(theta=theta, clock=clock, sizes=sizes, objective=objective, n_points=len(pts.loss),
                       n_curves=len(curves), n_ref=n_ref, kappa_on=kappa_on, bootstrap=boot, level=level)


def _anneals(curves: Sequence[Curve]) -> bool:
    """Whether any curve's LR ever drops after its peak (else C, r and kappa are not identifiable: fixed)."""
    return any(np.any(normalised_drops(c.lrs, c.peak)[1] != 0) for c in curves)


def _free_parameters(sizes: bool, anneals: bool, kappa_on: bool, *, fixed_r: bool = False) -> np.ndarray:
    """(8,) which of (E, A, alpha, B, beta, C, log r, kappa) the fit moves; the others stay at their start."""
    return np.array([True, sizes, sizes, True, True, anneals, anneals and not fixed_r, kappa_on])


# ------------------------------------------------------------------- recursive (Gauss-Newton) update


@dataclass(frozen=True)
class GaussNewtonState:
    """A curve-law fit with what a recursive update needs: each row's Gauss-Newton normal matrix J^T W J over
    the points it has seen (row 0 the point fit with unit weights, then one per bootstrap member with its
    online-bootstrap weights), and which parameters the fit moves."""

    fit: CurveLawFit
    normals: np.ndarray
    """(1 + members, 8, 8); rows and columns of fixed parameters are zero."""
    free: np.ndarray
    """(8,) bool, as in fit_curve_law."""
    skip_fraction: float = 0.1


def _rows(fit: CurveLawFit) -> np.ndarray:
    """(1 + members, 8): the point fit, then every bootstrap member."""
    return np.concatenate([fit.theta[None], fit.bootstrap]) if len(fit.bootstrap) else fit.theta[None]


def _row_weights(fit: CurveLawFit, pts: _Points, point_labels: np.ndarray, label_weights: dict | None) -> np.ndarray:
    """(1 + members, points): unit weights for the point fit, each member's lineage weight for its rows."""
    members = len(fit.bootstrap)
    if members and label_weights is None:
        raise ValueError("a fit with bootstrap members needs the members' label weights")
    member_weights = (np.stack([label_weights[label] for label in point_labels], axis=1) if members
                      else np.empty((0, len(pts.loss))))
    return np.concatenate([np.ones((1, len(pts.loss))), member_weights])


def _weighted_system(thetas: np.ndarray, pts: _Points, weights: np.ndarray, fixed: np.ndarray, kappa_on: bool,
                     n_ref: float, chunk: int = 8):
    """(J^T W J, J^T W r, sum W r^2) of every row at its own theta on the relative residuals, `chunk` rows at a
    time (the Jacobian of a chunk is (chunk, points, 8): bounded memory however many members)."""
    normals = np.zeros((len(thetas), 8, 8))
    gradients = np.zeros((len(thetas), 8))
    values = np.zeros(len(thetas))
    for start in range(0, len(thetas), chunk):
        rows = slice(start, start + chunk)
        prediction, jacobian = _predict_and_jacobian(thetas[rows], pts, kappa_on, n_ref)
        jacobian = jacobian / pts.loss[None, :, None]
        jacobian[..., fixed] = 0.0
        residual = (prediction - pts.loss) / pts.loss
        weighted = jacobian.transpose(0, 2, 1) * weights[rows][:, None, :]
        normals[rows] = weighted @ jacobian
        gradients[rows] = (weighted @ residual[..., None])[..., 0]
        values[rows] = (weights[rows] * residual**2).sum(axis=1)
    return normals, gradients, values


def _fit_points(fit: CurveLawFit, curves: Sequence[Curve], skip_fraction: float) -> tuple[_Points, np.ndarray]:
    """The fitted points of `curves` under the fit's clock (as fit_curve_law builds them) and each one's label."""
    pts = _points(curves, fit.clock, skip_fraction)
    if not fit.sizes:
        pts.n = np.ones_like(pts.n)
    labels = np.asarray([c.label for c in curves], dtype=object)[pts.curve]
    return pts, labels


def gauss_newton_state(fit: CurveLawFit, curves: Sequence[Curve], label_weights: dict | None = None, *,
                       skip_fraction: float = 0.1, fixed_r: bool = False) -> GaussNewtonState:
    """The normal matrices of a fit (the point fit and every member) over the curves it was fitted to.

    label_weights: each lineage label's (members,) online-bootstrap weights (analysis.incremental.WarmCurves);
    needed when the fit has members. One pass over every point (O(points x members)): done after a full refit.
    """
    pts, labels = _fit_points(fit, curves, skip_fraction)
    free = _free_parameters(fit.sizes, _anneals(curves), fit.kappa_on, fixed_r=fixed_r)
    weights = _row_weights(fit, pts, labels, label_weights)
    normals, _, _ = _weighted_system(_rows(fit), pts, weights, ~free, fit.kappa_on, fit.n_ref)
    return GaussNewtonState(fit=fit, normals=normals, free=free, skip_fraction=skip_fraction)


def recursive_update(state: GaussNewtonState, new_curves: Sequence[Curve], label_weights: dict | None = None, *,
                     damping: float = 1e-4, tries: int = 8) -> GaussNewtonState:
    """One Gauss-Newton step of the point fit and of every member from the points of `new_curves` only.

    For each row b: H_b <- H_b + J_new^T W_b J_new, theta_b <- theta_b - (H_b + damping)^-1 g_new, clipped to the
    bounds, with J_new, g_new = J_new^T W_b r_new the new points' Jacobian and gradient at theta_b (W_b: the row's
    weights of the new curves' lineages, from label_weights). The old points' gradient is taken as zero: theta_b was
    their optimum at the last full fit (or the optimum of the quadratic model kept in H_b since, which is this
    recursion: the linearised least squares solved exactly, as a Kalman filter does). The old points' curvature
    moves with theta_b and their model is only quadratic, so the estimate drifts from the full refit's as the
    updates pile up; the periodic full refit (analysis/incremental.py, orchestrator/active.py) corrects that drift.
    n_ref stays that of the last full fit: re-expressing it would need the old points (and changes nothing the fit
    predicts). A step is taken only if it lowers the row's model objective, theta_b's quadratic
    (Delta^T H_old Delta) plus the new points' exact squared residuals; else the damping grows tenfold, `tries`
    times, before the row keeps its theta. Cost: O(new points x rows); nothing is evaluated on old points.
    The objective is the point fit's model value (old objective + Delta^T H_old Delta + the new points' residuals).
    """
    fit = state.fit
    new_curves = [c for c in new_curves if np.any(c.past_start(state.skip_fraction))]
    if not new_curves:
        return state
    if _anneals(new_curves) and not state.free[_C]:
        raise ValueError("the new curves anneal and the fit had C fixed: a full refit is needed")
    pts, labels = _fit_points(fit, new_curves, state.skip_fraction)
    thetas = _rows(fit)
    fixed = ~state.free
    weights = _row_weights(fit, pts, labels, label_weights)
    added, gradient, before = _weighted_system(thetas, pts, weights, fixed, fit.kappa_on, fit.n_ref)
    held = state.normals * np.outer(state.free, state.free)  # a fixed parameter couples to nothing: it stays
    normals = held + added
    scale = np.einsum("kii->ki", normals) + 1e-12
    scale[:, fixed] = 1.0
    lower, upper = _lower_upper(fit.clock)
    eye = np.eye(8)
    result, best = thetas.copy(), before.copy()
    pending = np.any(gradient != 0, axis=1)  # a member that weighs the new lineages 0 has nothing to move it
    mu = np.full(len(thetas), damping)
    for _ in range(tries):
        idx = np.flatnonzero(pending)
        if not len(idx):
            break
        system = normals[idx] + mu[idx, None, None] * scale[idx, :, None] * eye + np.diag(fixed.astype(float))
        step = -np.linalg.solve(system, gradient[idx][..., None])[..., 0]
        candidate = np.clip(thetas[idx] + step, lower, upper)
        delta = candidate - thetas[idx]
        prediction, _ = _predict_and_jacobian(candidate, pts, fit.kappa_on, fit.n_ref)
        new_values = (weights[idx] * ((prediction - pts.loss) / pts.loss) ** 2).sum(axis=1)
        model = np.einsum("ki,kij,kj->k", delta, held[idx], delta) + new_values
        better = np.isfinite(model) & (model < before[idx])
        result[idx[better]] = candidate[better]
        best[idx[better]] = model[better]
        pending[idx[better]] = False
        mu[idx] *= 10.0
    objective = fit.objective + float(best[0])
    updated = replace(fit, theta=result[0], bootstrap=result[1:] if len(fit.bootstrap) else fit.bootstrap,
                      objective=objective, n_points=fit.n_points + len(pts.loss),
                      n_curves=fit.n_curves + len(new_curves))
    return replace(state, fit=updated, normals=normals)


def _rescaled(theta: np.ndarray, old_ref: float, new_ref: float) -> np.ndarray:
    """Parameters relative to one n_ref re-expressed relative to another (A (N/n_ref)^-alpha, C (N/n_ref)^kappa)."""
    theta = np.array(theta, float)
    theta[:, _A] *= (old_ref / new_ref) ** theta[:, _ALPHA]
    theta[:, _C] *= (new_ref / old_ref) ** theta[:, 7]
    return theta


def check_bootstrap(method: str, weights: str = "webb") -> None:
    """A clear error for a bootstrap method or wild weight that does not exist."""
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"bootstrap_method: {method!r} is not one of {list(BOOTSTRAP_METHODS)}")
    if weights not in WILD_WEIGHTS:
        raise ValueError(f"wild_weights: {weights!r} is not one of {list(WILD_WEIGHTS)}")


def wild_multipliers(point_labels, members: int, seed: int, kind: str = "webb") -> np.ndarray:
    """(members, points): one random weight per lineage and member, the same for every point of the lineage.

    Rademacher: +-1 with probability 1/2. Webb (2014): +-sqrt(1/2), +-1, +-sqrt(3/2), each 1/6 (mean 0,
    variance 1, fourth moment 7/6): with G lineages Rademacher has only 2^G distinct members (2^(G-1) up to a sign),
    too few to draw percentiles from when G is 7; Webb's has 6^G.
    """
    check_bootstrap("lineage", kind)
    rng = np.random.default_rng(seed)
    _, index = np.unique(np.asarray(point_labels).astype(str), return_inverse=True)
    groups = int(index.max()) + 1 if len(index) else 0
    if kind == "rademacher":
        draws = rng.choice(np.array([-1.0, 1.0]), size=(members, groups))
    else:
        magnitudes = np.sqrt(np.array([0.5, 1.0, 1.5]))
        draws = rng.choice(np.concatenate([-magnitudes, magnitudes]), size=(members, groups))
    return draws[:, index]


def wild_targets(fitted: np.ndarray, measured: np.ndarray, point_labels, members: int, seed: int,
                 kind: str = "webb", method: str = "wild") -> np.ndarray:
    """(members, points): a wild bootstrap's data y* = yhat + v (y - yhat).

    wild: the wild cluster bootstrap (Cameron, Gelbach and Miller 2008), one weight v_bg per member and lineage g,
    the same at every point of g. Every member keeps the design (every lineage, every point) and the point fit as its
    truth; only the residuals move, and a lineage's move together, so whatever they share (a run's offset, a fork's
    parent) stays shared. Each member's fit varies about the point fit as the point fit varies about the truth,
    to first order.
    wild-nested: the two-level wild bootstrap (Modugno and Giannerini 2015): each lineage's mean residual times a
    lineage weight, plus each point's deviation from that mean times its own weight.
    wild-point: one weight per point (independent residuals).
    (wild-jackknife is `wild` on `jackknife_residuals`; fit_curve_law passes them as `measured`.)
    """
    fitted, measured = np.asarray(fitted, float), np.asarray(measured, float)
    residual = measured - fitted
    labels = np.asarray(point_labels).astype(str)
    if method == "wild-point":
        return fitted[None] + wild_multipliers(np.arange(len(fitted)).astype(str), members, seed, kind) * residual[None]
    lineage = wild_multipliers(labels, members, seed, kind)
    if method == "wild":
        return fitted[None] + lineage * residual[None]
    _, index = np.unique(labels, return_inverse=True)
    mean = (np.bincount(index, residual) / np.bincount(index))[index]
    points = wild_multipliers(np.arange(len(fitted)).astype(str), members, seed + 1, kind)
    return fitted[None] + lineage * mean[None] + points * (residual - mean)[None]


def wild_residuals(residual: np.ndarray, jacobian: np.ndarray, point_labels, method: str) -> np.ndarray:
    """The residuals a wild bootstrap flips: the fit's own, or for wild-jackknife each lineage's as if left out
    (`jackknife_residuals`; jacobian: (points, free parameters) of the fitted values in the residuals' units)."""
    return jackknife_residuals(residual, jacobian, point_labels) if method == "wild-jackknife" else residual


LEVERAGE_CAP = 0.9
"""Eigenvalues of a lineage's leverage block are capped here, so its residuals grow at most 10-fold."""


def jackknife_residuals(residual: np.ndarray, jacobian: np.ndarray, point_labels) -> np.ndarray:
    """Each lineage's residuals as if it had been left out of the fit, to first order: (I - H_gg)^-1 e_g, with H the
    hat matrix of the linearised fit, J (J^T J)^+ J^T (the CV3 / jackknife residuals of cluster-robust inference;
    MacKinnon, Nielsen and Webb 2023). A fit absorbs part of each lineage's residuals, most of those of a lineage that
    alone pins a parameter down: with few lineages the raw residuals understate how far a new lineage would fall."""
    residual = np.asarray(residual, float)
    labels = np.asarray(point_labels).astype(str)
    inverse = np.linalg.pinv(jacobian.T @ jacobian)
    out = residual.copy()
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        block = jacobian[rows] @ inverse @ jacobian[rows].T
        values, vectors = np.linalg.eigh((block + block.T) / 2)
        values = np.clip(values, 0.0, LEVERAGE_CAP)
        out[rows] = vectors @ ((vectors.T @ residual[rows]) / (1 - values))
    return out


def _group_weights(point_labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, points) counts: whole groups drawn with replacement, each point weighted by its group's count."""
    rng = np.random.default_rng(seed)
    labels, index = np.unique(point_labels.astype(str), return_inverse=True)
    counts = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=resamples)
    return counts[:, index].astype(float)


# ----------------------------------------------------------------------------- schedule shapes


def cosine_shape(*, min_lr_ratio: float = 0.1, warmup_fraction: float = 0.0) -> Callable[[int], np.ndarray]:
    """LR multipliers of a cosine run of T steps (as models.schedules: warmup, then cosine to the floor)."""
    def multipliers(steps: int) -> np.ndarray:
        warmup = int(round(warmup_fraction * steps))
        i = np.arange(steps, dtype=float)
        progress = (i - warmup) / max(1, steps - 1 - warmup)
        out = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + np.cos(np.pi * np.clip(progress, 0, 1)))
        out[:warmup] = (i[:warmup] + 1) / warmup
        return out
    return multipliers


def wsd_shape(*, decay_fraction: float = 0.2, min_lr_ratio: float = 0.0, sqrt: bool = True,
              warmup_fraction: float = 0.0) -> Callable[[int], np.ndarray]:
    """LR multipliers of a warmup-stable-decay run of T steps with a final cooldown of `decay_fraction`."""
    def multipliers(steps: int) -> np.ndarray:
        warmup = int(round(warmup_fraction * steps))
        start = steps - max(1, int(np.ceil(decay_fraction * steps)))
        i = np.arange(steps, dtype=float)
        progress = np.clip((i - start + 1) / (steps - start), 0, 1)
        decayed = (min_lr_ratio + (1 - min_lr_ratio) * (1 - np.sqrt(progress)) if sqrt
                   else 1 - (1 - min_lr_ratio) * progress)
        out = np.where(i < start, 1.0, decayed)
        out[:warmup] = (i[:warmup] + 1) / warmup
        return out
    return multipliers


def constant_shape(*, warmup_fraction: float = 0.0) -> Callable[[int], np.ndarray]:
    def multipliers(steps: int) -> np.ndarray:
        warmup = int(round(warmup_fraction * steps))
        out = np.ones(steps)
        out[:warmup] = (np.arange(warmup) + 1) / warmup
        return out
    return multipliers
