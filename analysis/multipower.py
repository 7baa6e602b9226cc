"""The multi-power law (Luo et al. 2025) as a fitted curve form, for one model size or across sizes.

    L(N, s) = E + A_N (N / n_ref)^-alpha_N + A S1(s)^-alpha - B (N / n_ref)^kappa LD(s)
    LD(s)   = sum_{k<=s} d_k G(u_k^-gamma S_k(s)),   G(x) = 1 - (1 + C x)^-beta,   S_k(s) = sum_{i=k}^{s} u_i

(../shared/papers.md §4; the authors' form L = L0 + A (S1 + S_W)^-alpha - LD with the LR u_i normalised by
its peak, so the parameters read the same at any peak LR.) At step s of a run:
- S1 is the forward area in TOKENS of the peak-normalised LR, warmup included (the authors' S1 + S_W),
  as in analysis/curve_law.py;
- d_k = u_{k-1} - u_k is the drop of the LR at step k (after the peak is first reached) and S_k(s) the
  LR area (in steps) since the drop: a drop is realised with a power-law tail in the area trained
  since, faster at a low LR (u_k^-gamma);
- the size term: with several N, L0 = E + A_N (N / n_ref)^-alpha_N and the annealing gain B scales as
  (N / n_ref)^kappa (Luo et al.'s per-size fits grow about as N^0.13), n_ref the geometric mean N.
  With one N, A_N = alpha_N = kappa = 0 and E is the authors' L0.

`authors_units` converts (E, A, alpha, B, C, beta, gamma) to the raw-LR units of the paper (LR not
normalised, S1 in steps), so a fit can be compared with their published 25M numbers.

Fitting: the sum of Huber losses (delta 1e-3) of the log residuals, as analysis/fit.py fits L(N, D),
with its damped Gauss-Newton (IRLS) from the best cells of a grid (the law is linear in E, A_N, A, B for
fixed exponents, so every grid cell is solved exactly), then L-BFGS-B-like bounds by projection.
The bootstrap resamples whole lineage groups (as the curve law) and refits every member from the
point fit. Drops are pooled into bins whose edges include every evaluation step, so no bin straddles
a point it is evaluated at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from proxyscale.analysis.curve_law import (
    Curve,
    CurveReadouts,
    check_bootstrap,
    forward_area,
    normalised_drops,
    wild_residuals,
    wild_targets,
)
from proxyscale.analysis.fit import HUBER_DELTA, Interval, damped_gauss_newton, huber, percentile_interval

PARAMETERS = ("E", "A_N", "alpha_N", "A", "alpha", "B", "C", "beta", "gamma", "kappa")
_E, _AN, _ALPHA_N, _A, _ALPHA, _B, _LOGC, _BETA, _GAMMA, _KAPPA = range(10)
SIZE_ONLY = (_AN, _ALPHA_N, _KAPPA)
MAX_BINS = 128
"""Drop bins per curve between evaluation steps (beyond its evaluation steps themselves)."""
U_FLOOR = 1e-3
"""u_k^-gamma uses max(u_k, U_FLOOR): a schedule that decays to 0 has a finite last term (as the truth)."""
LOWER = np.array([-np.inf, 0.0, 0.0, 0.0, 0.0, 0.0, np.log(1e-6), 0.01, 0.0, -2.0])
UPPER = np.array([np.inf, np.inf, 3.0, np.inf, 3.0, np.inf, np.log(1e4), 5.0, 3.0, 2.0])
MEMBER_CHUNK = 16
SCREENING_ITERATIONS = 60
POLISHED_STARTS = 6
"""Every grid start gets SCREENING_ITERATIONS of Gauss-Newton; the best POLISHED_STARTS are run to convergence."""


# ----------------------------------------------------------------------------------------- points


@dataclass
class _Points:
    """Every fitted point of every curve, and the (point, drop bin) pairs the loss drop sums over."""

    n: np.ndarray
    s1: np.ndarray
    loss: np.ndarray
    curve: np.ndarray
    pair_mass: np.ndarray
    pair_u: np.ndarray
    pair_area: np.ndarray
    starts: np.ndarray
    """Index of each point's first pair (pairs are sorted by point); `has_pairs` marks points with any."""
    has_pairs: np.ndarray

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Per-pair values (K, pairs) summed into their points: (K, points)."""
        out = np.zeros((values.shape[0], len(self.loss)))
        if values.shape[1]:
            out[:, self.has_pairs] = np.add.reduceat(values, self.starts[self.has_pairs], axis=1)
        return out


def _bins(curve: Curve, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drops pooled into bins: (last step of each bin, drop mass, mass-weighted u, mass-weighted area before)."""
    u, d = normalised_drops(curve.lrs, curve.peak)
    last = int(steps.max()) if len(steps) else 0
    where = np.flatnonzero(d[:last])  # 0-based: step where + 1
    if not len(where):
        return np.zeros(0, int), np.zeros(0), np.zeros(0), np.zeros(0)
    area = np.concatenate([[0.0], np.cumsum(u)])  # area[m] = sum of u over steps 1..m
    grid = np.linspace(0, last, MAX_BINS + 1).round().astype(int)[1:]
    edges = np.unique(np.concatenate([grid, steps]))
    step_of = where + 1
    bin_of = np.searchsorted(edges, step_of, side="left")
    mass = np.bincount(bin_of, d[where], len(edges))
    safe = np.where(mass == 0, 1.0, mass)
    mean_u = np.bincount(bin_of, d[where] * u[where], len(edges)) / safe
    before = np.bincount(bin_of, d[where] * area[where], len(edges)) / safe  # area up to step k - 1
    keep = mass != 0
    return edges[keep], mass[keep], mean_u[keep], before[keep]


def _points(curves: Sequence[Curve], skip_fraction: float, masks=None, steps_of=None) -> _Points:
    n, s1, loss, index = [], [], [], []
    rows, mass, mean_u, area_since = [], [], [], []
    offset = 0
    for i, curve in enumerate(curves):
        if steps_of is not None:
            steps, losses = np.asarray(steps_of[i], int), np.full(len(steps_of[i]), np.nan)
        else:
            keep = curve.past_start(skip_fraction) if masks is None else masks[i]
            steps, losses = curve.steps[keep], curve.losses[keep]
        if not len(steps):
            continue
        n.append(np.full(len(steps), curve.n_params))
        s1.append(forward_area(curve, steps))
        loss.append(losses)
        index.append(np.full(len(steps), i))
        ends, m, mu, before = _bins(curve, steps)
        area = np.concatenate([[0.0], np.cumsum(curve.lrs / curve.peak)])
        for p, t in enumerate(steps):
            upto = np.searchsorted(ends, t, side="right")
            rows.append(np.full(upto, offset + p))
            mass.append(m[:upto])
            mean_u.append(mu[:upto])
            area_since.append(area[t] - before[:upto])
        offset += len(steps)
    if not n:
        raise ValueError("no curve has a point past its first skip_fraction")
    rows_all = np.concatenate(rows) if rows else np.zeros(0, int)
    q = len(rows_all)
    counts = np.bincount(rows_all, minlength=offset)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    return _Points(np.concatenate(n), np.concatenate(s1), np.concatenate(loss), np.concatenate(index),
                   np.concatenate(mass) if q else np.zeros(0), np.concatenate(mean_u) if q else np.zeros(0),
                   np.concatenate(area_since) if q else np.zeros(0), starts, counts > 0)


# ------------------------------------------------------------------------------------------ the law


def loss_drop_terms(pts: _Points, log_c, beta, gamma, *, derivatives: bool = False):
    """LD at every point for each parameter row (K, points); with derivatives also d/d(log C, beta, gamma)."""
    log_c, beta, gamma = (np.atleast_1d(np.asarray(v, float))[:, None] for v in (log_c, beta, gamma))
    log_u = np.log(np.maximum(pts.pair_u, U_FLOOR))[None, :]
    cx = np.exp(log_c - gamma * log_u) * pts.pair_area[None, :]
    x = 1.0 + cx
    log_x = np.log(x)
    power = np.exp(-beta * log_x)  # x^-beta
    mass = pts.pair_mass[None, :]
    ld = pts.gather(mass * (1.0 - power))
    if not derivatives:
        return ld
    slope = mass * beta * power / x * cx  # d G / d log C, times the mass
    return ld, pts.gather(slope), pts.gather(mass * power * log_x), pts.gather(-slope * log_u)


def multipower_loss(n_params, s1, ld, *, E, A_N=0.0, alpha_N=0.0, A, alpha, B, kappa=0.0, n_ref=1.0):
    """L = E + A_N (N/n_ref)^-alpha_N + A S1^-alpha - B (N/n_ref)^kappa LD (arrays broadcast)."""
    size = np.asarray(n_params, float) / n_ref
    return E + A_N * size**-alpha_N + A * np.asarray(s1, float) ** -alpha - B * size**kappa * np.asarray(ld, float)


def _predict(theta: np.ndarray, pts: _Points, n_ref: float, jacobian: bool = False):
    """Predicted loss (K, n), with its Jacobian (K, n, 10) in the rows' parameters when asked."""
    theta = np.atleast_2d(theta)
    col = [theta[:, k, None] for k in range(10)]
    log_size = np.log(pts.n / n_ref)[None, :]
    size_power = np.exp(-col[_ALPHA_N] * log_size)
    log_s1 = np.log(pts.s1)[None, :]
    data_power = np.exp(-col[_ALPHA] * log_s1)
    anneal = np.exp(col[_KAPPA] * log_size)
    terms = loss_drop_terms(pts, theta[:, _LOGC], theta[:, _BETA], theta[:, _GAMMA], derivatives=jacobian)
    ld = terms[0] if jacobian else terms
    prediction = col[_E] + col[_AN] * size_power + col[_A] * data_power - col[_B] * anneal * ld
    if not jacobian:
        return prediction
    _, d_log_c, d_beta, d_gamma = terms
    out = np.empty(prediction.shape + (10,))
    out[..., _E] = 1.0
    out[..., _AN] = size_power
    out[..., _ALPHA_N] = -col[_AN] * size_power * log_size
    out[..., _A] = data_power
    out[..., _ALPHA] = -col[_A] * data_power * log_s1
    out[..., _B] = -anneal * ld
    out[..., _LOGC] = -col[_B] * anneal * d_log_c
    out[..., _BETA] = -col[_B] * anneal * d_beta
    out[..., _GAMMA] = -col[_B] * anneal * d_gamma
    out[..., _KAPPA] = -col[_B] * anneal * ld * log_size
    return prediction, out


# ---------------------------------------------------------------------------------------- fitting


def _free_mask(sizes: bool, anneals: bool, kappa_on: bool) -> np.ndarray:
    free = np.ones(10, dtype=bool)
    if not sizes:
        free[[_AN, _ALPHA_N]] = False
    if not anneals:
        free[[_B, _LOGC, _BETA, _GAMMA]] = False
    free[_KAPPA] = kappa_on
    return free


def _huber_fit(starts: np.ndarray, pts: _Points, free: np.ndarray, n_ref: float, weights=None,
               iterations: int = 200, targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Huber on log residuals by damped Gauss-Newton (analysis.fit) over the free parameters of each row.

    targets: (K, points) the losses each row is fitted to (the wild bootstrap's; default the measured ones).
    """
    starts = np.atleast_2d(starts)
    fixed_values = starts[0].copy()
    log_l = np.log(pts.loss)
    index = np.flatnonzero(free)
    # Per-row targets enter as a per-row offset of the prediction (log y - log y*_b), so the shared solver keeps one
    # log_l. It hands the model a subset of rows, so each row carries its own number in a last column: a "parameter"
    # with a zero Jacobian column, which the damped step never moves.
    offsets = None if targets is None else log_l[None] - np.log(np.atleast_2d(targets))
    tagged = offsets is not None

    def full(sub: np.ndarray) -> np.ndarray:
        theta = np.repeat(fixed_values[None], len(sub), 0)
        theta[:, index] = sub[:, :len(index)]
        return theta

    def offset(sub: np.ndarray):
        return offsets[sub[:, -1].astype(int)] if tagged else 0.0

    def predict_with_jacobian(sub):
        with np.errstate(all="ignore"):
            prediction, jac = _predict(full(sub), pts, n_ref, jacobian=True)
            log_prediction = np.log(np.maximum(prediction, 1e-12)) + offset(sub)
            jac = jac[..., index] / np.maximum(prediction, 1e-12)[..., None]
        if tagged:
            jac = np.concatenate([jac, np.zeros(jac.shape[:-1] + (1,))], axis=-1)
        return log_prediction, np.nan_to_num(jac)

    def objective(sub, w):
        with np.errstate(all="ignore"):
            prediction = _predict(full(sub), pts, n_ref)
            residual = log_l - np.log(np.where(prediction > 0, prediction, np.nan)) - offset(sub)
        values = (w * huber(residual, HUBER_DELTA)).sum(axis=1)
        return np.where(np.isfinite(values), values, np.inf)

    def project(candidate):
        candidate[:, :len(index)] = np.clip(candidate[:, :len(index)], LOWER[index], UPPER[index])
        return candidate

    solutions, values = [], []
    weights = None if weights is None else np.atleast_2d(weights)
    for begin in range(0, len(starts), MEMBER_CHUNK):
        chunk = starts[begin:begin + MEMBER_CHUNK][:, index]
        if tagged:
            rows = np.arange(begin, begin + len(chunk), dtype=float)
            chunk = np.column_stack([chunk, rows])
        w = None if weights is None else (weights if len(weights) == 1 else weights[begin:begin + MEMBER_CHUNK])
        theta, value = damped_gauss_newton(chunk, predict_with_jacobian, objective, log_l, w, HUBER_DELTA, project,
                                           iterations)
        if tagged:
            theta[:, -1] = np.arange(begin, begin + len(chunk))  # the tag, exactly (the solver's step on it is 0)
        solutions.append(full(theta))
        values.append(value)
    return np.concatenate(solutions), np.concatenate(values)


def _grid_starts(pts: _Points, sizes: bool, anneals: bool, n_ref: float, keep: int = 4) -> np.ndarray:
    """Starts from a grid over the exponents, with (E, A_N, A, B) solved exactly in each cell (weighted least
    squares on relative residuals): the best `keep` cells, and the best cell of every data exponent alpha.

    The best cells alone are not enough: E trades against alpha along a valley whose cells all fit about
    equally, and a start on the wrong side of it ends in a basin 4x worse than the truth (seen on a
    simulated multi-power ladder of WSD forks); one start per alpha reaches both sides."""
    alphas = np.linspace(0.1, 1.2, 12)
    alpha_ns = np.array([0.1, 0.2, 0.35, 0.5, 0.7, 1.0]) if sizes else np.zeros(1)
    nonlinear = ([(c, b, g) for c in np.log(np.geomspace(1e-3, 10.0, 6)) for b in (0.3, 0.6, 1.2)
                  for g in (0.3, 0.65, 1.0)] if anneals else [(np.log(0.1), 0.6, 0.65)])
    c, b, g = (np.array(v) for v in zip(*nonlinear, strict=True))
    ld = loss_drop_terms(pts, c, b, g) if anneals else np.zeros((1, len(pts.loss)))  # (G, n)
    y, w = pts.loss, 1.0 / pts.loss**2
    log_size = np.log(pts.n / n_ref)
    candidates = []
    for alpha in alphas:
        data = pts.s1**-alpha
        for alpha_n in alpha_ns:
            size = np.exp(-alpha_n * log_size) if sizes else None
            base = [np.ones_like(y)] + ([size] if sizes else []) + [data]
            for gi in range(len(ld)):
                columns = base + ([-ld[gi]] if anneals else [])
                x = np.column_stack(columns)
                xw = x * w[:, None]
                solution, *_ = np.linalg.lstsq(xw.T @ x + 1e-12 * np.eye(x.shape[1]), xw.T @ y, rcond=None)
                if (solution[1:] < 0).any():
                    continue
                residual = float((w * (x @ solution - y) ** 2).sum())
                theta = np.zeros(10)
                theta[_E] = solution[0]
                k = 1
                if sizes:
                    theta[_AN], theta[_ALPHA_N] = solution[1], alpha_n
                    k = 2
                theta[_A], theta[_ALPHA] = solution[k], alpha
                if anneals:
                    theta[_B] = solution[k + 1]
                theta[_LOGC], theta[_BETA], theta[_GAMMA] = c[gi], b[gi], g[gi]
                candidates.append((residual, float(alpha), theta))
    if not candidates:
        theta = np.zeros(10)
        theta[_E], theta[_A], theta[_ALPHA] = float(np.min(y)) * 0.9, 1.0, 0.3
        theta[_LOGC], theta[_BETA], theta[_GAMMA] = np.log(0.1), 0.6, 0.65
        return theta[None]
    candidates.sort(key=lambda item: item[0])
    chosen = [theta for _, _, theta in candidates[:keep]]
    seen = set()
    for _, alpha, theta in candidates:
        if alpha not in seen:
            seen.add(alpha)
            chosen.append(theta)
    return np.array(chosen)


@dataclass(frozen=True)
class MultiPowerFit(CurveReadouts):
    """A fitted multi-power law with its bootstrap ensemble (rows of `bootstrap`, same layout as `theta`).

    theta: (E, A_N, alpha_N, A, alpha, B, log C, beta, gamma, kappa), LR normalised by its peak, S1 in tokens.
    """

    theta: np.ndarray
    sizes: bool
    objective: float
    n_points: int
    n_curves: int
    n_ref: float = 1.0
    kappa_on: bool = False
    bootstrap: np.ndarray = field(default_factory=lambda: np.empty((0, 10)), repr=False)
    level: float = 0.95
    form: str = "mpl"
    clock: str = "power"
    """How a drop is realised: with a power-law tail in the LR area since (the form has no other clock)."""

    @property
    def params(self) -> dict[str, float]:
        return self.natural(self.theta[None])[0]

    def natural(self, theta: np.ndarray) -> list[dict[str, float]]:
        out = []
        for row in np.atleast_2d(theta):
            values = {"E": row[_E], "A": row[_A], "alpha": row[_ALPHA], "B": row[_B], "C": float(np.exp(row[_LOGC])),
                      "beta": row[_BETA], "gamma": row[_GAMMA]}
            if self.sizes:
                values |= {"A_N": row[_AN] * self.n_ref ** row[_ALPHA_N], "alpha_N": row[_ALPHA_N]}
            if self.kappa_on:
                values["kappa"] = row[_KAPPA]
            out.append({k: float(v) for k, v in values.items()})
        return out

    def intervals(self) -> dict[str, Interval]:
        point = self.params
        members = self.natural(self.bootstrap) if len(self.bootstrap) else []
        return {k: percentile_interval(point[k], [m[k] for m in members], self.level) for k in point}

    def _members(self, members: bool) -> np.ndarray:
        return self.bootstrap if members else self.theta[None]

    def predict(self, curve: Curve, steps=None, *, members: bool = False) -> np.ndarray:
        """Loss at `steps` (default: the curve's own) from its N and LR history; members=True: (R, len(steps))."""
        steps = curve.steps if steps is None else np.asarray(steps, int)
        pts = _points([curve], 0.0, steps_of=[steps])
        if not self.sizes:
            pts.n = np.ones_like(pts.n)
        thetas = self._members(members)
        out = np.concatenate([_predict(thetas[i:i + MEMBER_CHUNK], pts, self.n_ref)
                              for i in range(0, max(len(thetas), 1), MEMBER_CHUNK)]) if len(thetas) else np.zeros((0, len(steps)))
        return out if members else out[0]

    # ------------------------------------------------------------- finished runs and the optimum
    def final_members(self, n_params, tokens, schedule: Callable[[int], np.ndarray], *, batch_tokens: float,
                      members: bool = True) -> np.ndarray:
        """Final loss of runs of shape `schedule` at each (n_params[i], tokens[i]): (rows, len(tokens))."""
        n = np.atleast_1d(np.asarray(n_params, float))
        d = np.atleast_1d(np.asarray(tokens, float))
        thetas = np.concatenate([self.theta[None], self.bootstrap]) if members and len(self.bootstrap) else self.theta[None]
        steps = np.clip(np.round(d / batch_tokens), 2, 10**7).astype(int)
        lengths = np.unique(np.geomspace(steps.min(), steps.max(), 24).round().astype(int)) if len(np.unique(steps)) > 24 \
            else np.unique(steps)
        k, ld = [], []
        for t in lengths:
            u = np.asarray(schedule(int(t)), float)
            curve = Curve(name="end", lrs=u, steps=np.array([int(t)]), losses=np.array([np.nan]), peak_lr=float(u.max()))
            pts = _points([curve], 0.0, steps_of=[[int(t)]])
            k.append(float(u.mean() / u.max()))
            ld.append(loss_drop_terms(pts, thetas[:, _LOGC], thetas[:, _BETA], thetas[:, _GAMMA])[:, 0])
        log_lengths = np.log(lengths)
        where = np.log(steps)
        k_at = np.interp(where, log_lengths, k) if len(lengths) > 1 else np.full(len(steps), k[0])
        ld_table = np.stack(ld)  # (lengths, members)
        ld_at = np.stack([np.interp(where, log_lengths, ld_table[:, m]) if len(lengths) > 1
                          else np.full(len(steps), ld_table[0, m]) for m in range(len(thetas))])
        size = (n / self.n_ref)[None, :] if self.sizes else np.ones((1, len(n)))
        col = [thetas[:, j, None] for j in range(10)]
        with np.errstate(all="ignore"):
            size_term = col[_AN] * size ** -col[_ALPHA_N] if self.sizes else 0.0
            anneal = size ** col[_KAPPA] if self.kappa_on else 1.0
            return col[_E] + size_term + col[_A] * (k_at * d)[None, :] ** -col[_ALPHA] - col[_B] * anneal * ld_at

    def optimal_members(self, flops: float, schedule: Callable[[int], np.ndarray], *, batch_tokens: float,
                        span: float = 30.0, points: int = 121) -> dict[str, np.ndarray]:
        """N_opt, D_opt (C = 6 N D) and the final loss there, for the point fit (index 0) and every member:
        the final loss minimised over a grid of log N, refined by a parabola through the best three points."""
        if not self.sizes:
            raise ValueError("compute_optimal needs a fit over several model sizes")
        center = self._center(flops, schedule, batch_tokens)
        log_n = np.log(center) + np.linspace(-np.log(span), np.log(span), points)
        n = np.exp(log_n)
        loss = self.final_members(n, flops / (6 * n), schedule, batch_tokens=batch_tokens)
        loss = np.where(np.isfinite(loss), loss, np.inf)
        best = np.argmin(loss, axis=1)
        inner = np.clip(best, 1, points - 2)
        rows = np.arange(len(loss))
        left, mid, right = loss[rows, inner - 1], loss[rows, inner], loss[rows, inner + 1]
        curvature = left - 2 * mid + right
        with np.errstate(all="ignore"):
            shift = np.clip(np.nan_to_num(np.where(curvature > 0, 0.5 * (left - right) / curvature, 0.0)), -1, 1)
        n_opt = np.exp(log_n[inner] + shift * (log_n[1] - log_n[0]))
        loss_opt = mid - 0.125 * (left - right) * shift
        n_opt = np.where(best == 0, 0.0, np.where(best == points - 1, np.inf, n_opt))
        with np.errstate(divide="ignore"):
            return {"n_opt": n_opt, "d_opt": flops / (6 * n_opt), "loss": loss_opt}

    def _center(self, flops: float, schedule, batch_tokens: float) -> float:
        log_n = np.log(self.n_ref) + np.linspace(-np.log(1e4), np.log(1e4), 81)
        n = np.exp(log_n)
        loss = self.final_members(n, flops / (6 * n), schedule, batch_tokens=batch_tokens, members=False)[0]
        loss = np.where(np.isfinite(loss), loss, np.inf)
        return float(n[int(np.argmin(loss))])

    def compute_optimal(self, flops: float, schedule: Callable[[int], np.ndarray], *, batch_tokens: float,
                        span: float = 30.0, points: int = 121) -> dict[str, Interval]:
        members = self.optimal_members(flops, schedule, batch_tokens=batch_tokens, span=span, points=points)
        return {name: percentile_interval(values[0], values[1:], self.level) for name, values in members.items()}


def authors_units(params: dict[str, float], peak_lr: float) -> dict[str, float]:
    """(L0, A, alpha, B, C, beta, gamma) of a single-size fit in Luo et al.'s units (raw LR, S1 in steps of
    a curve fitted with batch_tokens=1): A (S1/p)^-alpha = A p^alpha S1^-alpha, B d/p -> B / p, C p^(gamma-1)."""
    p = float(peak_lr)
    return {"L0": params["E"], "A": params["A"] * p ** params["alpha"], "alpha": params["alpha"], "B": params["B"] / p,
            "C": params["C"] * p ** (params["gamma"] - 1), "beta": params["beta"], "gamma": params["gamma"]}


def _group_weights(point_labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels, index = np.unique(point_labels.astype(str), return_inverse=True)
    counts = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=resamples)
    return counts[:, index].astype(float)


def fit_multipower(curves: Sequence[Curve], *, skip_fraction: float = 0.1, bootstrap: int = 0, seed: int = 0,
                   level: float = 0.95, groups: Sequence[str] | None = None,
                   anneal_size_exponent: bool = True, bootstrap_method: str = "lineage",
                   wild_weights: str = "webb") -> MultiPowerFit:
    """Fit the multi-power law to whole curves (one or several model sizes), optionally with a bootstrap over
    lineage groups (a label per curve: Curve.group or its name by default).

    bootstrap_method: "lineage" (resample whole lineages) or "wild" (the wild cluster bootstrap of
    analysis.curve_law.wild_targets on the log residuals: each member refits the point fit times
    exp(v_g r), r the log residual and v_g one `wild_weights` draw per lineage)."""
    check_bootstrap(bootstrap_method, wild_weights)
    curves = list(curves)
    sizes_seen = {c.n_params for c in curves if np.isfinite(c.n_params)}
    sizes = len(sizes_seen) >= 2
    if sizes and any(not np.isfinite(c.n_params) for c in curves):
        raise ValueError("give every curve its N, or none")
    pts = _points(curves, skip_fraction)
    if not sizes:
        pts.n = np.ones_like(pts.n)
    n_ref = float(np.exp(np.mean(np.log(pts.n)))) if sizes else 1.0
    anneals = bool(len(pts.pair_mass))
    kappa_on = anneal_size_exponent and sizes and anneals
    free = _free_mask(sizes, anneals, kappa_on)
    starts = _grid_starts(pts, sizes, anneals, n_ref)
    screened, screen_values = _huber_fit(starts, pts, free, n_ref, iterations=SCREENING_ITERATIONS)
    best_starts = screened[np.argsort(screen_values)[:POLISHED_STARTS]]
    solutions, values = _huber_fit(best_starts, pts, free, n_ref, iterations=300)
    best = int(np.argmin(values))
    theta, objective = solutions[best], float(values[best])
    boot = np.empty((0, 10))
    if bootstrap:
        labels = [c.label for c in curves] if groups is None else list(groups)
        point_labels = np.asarray(labels, dtype=object)[pts.curve]
        members = np.repeat(theta[None], bootstrap, 0)
        if bootstrap_method != "lineage":  # on log residuals, as this law is fitted
            prediction, jacobian = _predict(theta[None], pts, n_ref, jacobian=True)
            fitted = np.log(prediction[0])
            residual = wild_residuals(np.log(pts.loss) - fitted, jacobian[0][:, free] / prediction[0][:, None],
                                      point_labels, bootstrap_method)
            method = "wild" if bootstrap_method == "wild-jackknife" else bootstrap_method
            targets = np.exp(wild_targets(fitted, fitted + residual, point_labels, bootstrap, seed, wild_weights,
                                          method))
            boot, _ = _huber_fit(members, pts, free, n_ref, iterations=100, targets=targets)
        else:
            weights = _group_weights(point_labels, bootstrap, seed)
            boot, _ = _huber_fit(members, pts, free, n_ref, weights=weights, iterations=100)
    return MultiPowerFit(theta=theta, sizes=sizes, objective=objective, n_points=len(pts.loss), n_curves=len(curves),
                         n_ref=n_ref, kappa_on=kappa_on, bootstrap=boot, level=level)
