"""Fitting L(N, D) the way Besiroglu et al. (2024) reproduce Chinchilla, fast, with bootstrap intervals.

log L is modelled as LSE(a - alpha log N, b - beta log D, e), and the sum of Huber losses
(delta = 1e-3) of the log residuals is minimised by L-BFGS-B from a grid of starting points.

Speed: every grid start is first refined by a damped Gauss-Newton (IRLS) iteration that runs for
all K starts at once in numpy (shape (K, 5); each start keeps its own damping and step acceptance,
so the K problems stay independent). The best few refined candidates are then finished by
independent L-BFGS-B runs with the analytic gradient, and the best kept. A bootstrap resample is
the same data with multinomial integer weights, so 1,000 resamples are one more batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from proxyscale.analysis.laws import compute_optimal_allocation, log_chinchilla_loss, log_sum_exp3, lse_terms

PARAMETERS = ("a", "b", "e", "alpha", "beta")
HUBER_DELTA = 1e-3
MIN_EXPONENT, MAX_EXPONENT = 0.0, 3.0
"""alpha and beta stay in [0, 3]: a loss that grows with N or D is no scaling law (and has no optimum), and
with few runs an unbounded fit can trade E against an absurd exponent. Published fits lie near 0.3."""
POLISHED_CANDIDATES = 8
SCREENING_ITERATIONS = 12
SURVIVORS = 64


def default_grid() -> np.ndarray:
    """Epoch's grid: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}."""
    exponents = np.arange(0.0, 2.01, 0.5)
    offsets = np.arange(-1.0, 1.01, 0.5)
    scales = np.arange(0.0, 25.01, 5.0)
    return np.array([(a, b, e, al, be) for a, b, e, al, be in itertools.product(scales, scales, offsets, exponents, exponents)])


def huber(residual: np.ndarray, delta: float) -> np.ndarray:
    small = np.abs(residual) <= delta
    return np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))


def huber_objective_and_gradient(theta, log_n, log_d, log_l, weights=None, delta=HUBER_DELTA):
    """Weighted sum of Huber losses of log-residuals, and its gradient, for each row of theta (K, 5).

    weights: None, (n,) or (K, n) non-negative point weights (bootstrap counts).
    """
    theta = np.atleast_2d(theta)
    prediction, (w_n, w_d, w_e) = log_sum_exp3(*lse_terms(log_n, log_d, theta))
    residual = log_l - prediction
    if weights is None:
        weights = np.ones_like(log_l)
    weights = np.broadcast_to(weights, residual.shape)
    value = (weights * huber(residual, delta)).sum(axis=1)
    # d huber / d prediction = -clip(residual, -delta, delta)
    slope = -weights * np.clip(residual, -delta, delta)
    gradient = np.stack(
        [
            (slope * w_n).sum(1),
            (slope * w_d).sum(1),
            (slope * w_e).sum(1),
            -(slope * w_n * log_n).sum(1),
            -(slope * w_d * log_d).sum(1),
        ],
        axis=1,
    )
    return value, gradient


def huber_values(theta, log_n, log_d, log_l, weights, delta=HUBER_DELTA):
    """The weighted Huber objective alone (no gradient) for each row of theta (K, 5)."""
    residual = log_l - log_chinchilla_loss(log_n, log_d, theta)
    return (weights * huber(residual, delta)).sum(axis=1)


BOUNDS = [(None, None), (None, None), (None, None), (MIN_EXPONENT, MAX_EXPONENT), (MIN_EXPONENT, MAX_EXPONENT)]


def _lbfgsb(fun_and_grad, x0: np.ndarray, max_iterations: int):
    x0 = np.asarray(x0, float).copy()
    x0[3:] = np.clip(x0[3:], MIN_EXPONENT, MAX_EXPONENT)
    return minimize(fun_and_grad, x0, jac=True, method="L-BFGS-B", bounds=BOUNDS,
                    options={"maxiter": max_iterations, "maxfun": 4 * max_iterations, "ftol": 1e-15, "gtol": 1e-12})


def _predict_with_jacobian(theta, log_n, log_d):
    """Predicted log L (K, n) and its Jacobian (K, n, 5) in (a, b, e, alpha, beta)."""
    prediction, (w_n, w_d, w_e) = log_sum_exp3(*lse_terms(log_n, log_d, theta))
    jacobian = np.empty(prediction.shape + (5,))
    jacobian[..., 0], jacobian[..., 1], jacobian[..., 2] = w_n, w_d, w_e
    jacobian[..., 3], jacobian[..., 4] = -w_n * log_n, -w_d * log_d
    return prediction, jacobian


def damped_gauss_newton(theta, predict_with_jacobian, objective, log_l, weights, delta, project, max_iterations=200):
    """Damped Gauss-Newton on a Huber objective (IRLS weights), vectorised over the K rows of theta.

    predict_with_jacobian(theta (k, p)) -> (prediction (k, n), jacobian (k, n, p)) of the model's log L;
    objective(theta (k, p), weights (k, n)) -> values (k,); project(candidate (k, p)) -> the candidate
    brought back into the parameters' bounds (may clip in place). weights: None, (n,) or (K, n).
    Each problem keeps its own Levenberg-Marquardt damping and accepts a step only if its own objective
    falls, so the K problems are exactly independent. Returns (theta (K, p), values (K,)).
    """
    theta = np.atleast_2d(np.asarray(theta, float)).copy()
    k, p = theta.shape
    weights = np.broadcast_to(np.ones_like(log_l) if weights is None else weights, (k, len(log_l)))
    values = objective(theta, weights)
    damping = np.full(k, 1e-3)
    active = np.ones(k, dtype=bool)
    eye = np.eye(p)
    for _ in range(max_iterations):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        prediction, jacobian = predict_with_jacobian(theta[idx])
        residual = log_l - prediction
        irls = weights[idx] * np.where(np.abs(residual) <= delta, 1.0, delta / np.maximum(np.abs(residual), delta))
        weighted = jacobian.transpose(0, 2, 1) * irls[:, None, :]
        normal = weighted @ jacobian
        rhs = (weighted @ residual[..., None])[..., 0]
        scale = np.einsum("kii->ki", normal) + 1e-12
        system = normal + damping[idx, None, None] * scale[:, :, None] * eye
        step = np.linalg.solve(system, rhs[..., None])[..., 0]
        candidate = project(theta[idx] + step)  # a projected step
        new_values = objective(candidate, weights[idx])
        better = np.isfinite(new_values) & (new_values < values[idx])
        gain = np.where(better, (values[idx] - new_values) / np.maximum(values[idx], 1e-300), 0.0)
        theta[idx[better]] = candidate[better]
        values[idx[better]] = new_values[better]
        damping[idx] = np.where(better, np.maximum(damping[idx] * 0.3, 1e-9), damping[idx] * 10.0)
        # A problem is done when an accepted step gains almost nothing, or damping has exploded.
        done = (better & (gain < 1e-12)) | (damping[idx] > 1e12)
        active[idx[done]] = False
    return theta, values


def _clip_exponents(candidate: np.ndarray) -> np.ndarray:
    candidate[:, 3:] = np.clip(candidate[:, 3:], MIN_EXPONENT, MAX_EXPONENT)
    return candidate


def refine_batch(starts, log_n, log_d, log_l, weights=None, max_iterations=200, delta=HUBER_DELTA):
    """damped_gauss_newton on the Huber objective of the five-parameter law, from K starts at once.

    Returns (theta (K, 5), values (K,)).
    """
    return damped_gauss_newton(starts, lambda t: _predict_with_jacobian(t, log_n, log_d),
                               lambda t, w: huber_values(t, log_n, log_d, log_l, w, delta),
                               log_l, weights, delta, _clip_exponents, max_iterations)


def polish(theta, log_n, log_d, log_l, weights=None):
    """An independent L-BFGS-B run (analytic gradient) that finishes one candidate exactly."""
    def fun(x):
        value, gradient = huber_objective_and_gradient(x[None], log_n, log_d, log_l, weights)
        return float(value[0]), gradient[0]

    result = _lbfgsb(fun, np.asarray(theta, float), 3000)
    return result.x, float(result.fun)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval (95% unless the fit said otherwise): value, low, high."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """{"value", "low", "high"}, as every --json output writes an interval."""
        return {"value": self.value, "low": self.low, "high": self.high}


def percentile_interval(point: float, samples, level: float) -> Interval:
    """The point estimate with the central `level` percentile interval of its bootstrap samples.

    NaN samples are dropped; infinite ones are kept (a member whose fit says N does not matter has
    D_opt = inf): dropping them would narrow the interval exactly when the fit is least certain.
    """
    samples = np.ravel(np.asarray(samples, float))
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return Interval(float(point), float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    # With infinities, interpolating between neighbours gives nan: take observed samples instead.
    method = "closest_observation" if np.isinf(samples).any() else "linear"
    low, high = np.percentile(samples, [tail, 100 - tail], method=method)
    return Interval(float(point), float(low), float(high))


@dataclass(frozen=True)
class ChinchillaFit:
    theta: np.ndarray
    """(a, b, e, alpha, beta) of the best fit."""
    objective: float
    n_points: int
    bootstrap: np.ndarray = field(repr=False)
    """(R, 5) refits on resampled data (empty when no bootstrap was asked for)."""
    level: float = 0.95

    @staticmethod
    def natural(theta: np.ndarray) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        return {"A": np.exp(theta[:, 0]), "B": np.exp(theta[:, 1]), "E": np.exp(theta[:, 2]),
                "alpha": theta[:, 3], "beta": theta[:, 4]}

    @property
    def params(self) -> dict[str, float]:
        return {name: float(value[0]) for name, value in self.natural(self.theta).items()}

    def _interval(self, point: float, samples) -> Interval:
        return percentile_interval(point, samples, self.level)

    def intervals(self) -> dict[str, Interval]:
        boot = self.natural(self.bootstrap) if len(self.bootstrap) else {}
        return {name: self._interval(value, boot.get(name, np.array([]))) for name, value in self.params.items()}

    def predict(self, n, d) -> Interval:
        point = float(np.exp(log_chinchilla_loss(np.log(n), np.log(d), self.theta)).item())
        samples = np.exp(log_chinchilla_loss(np.log(n), np.log(d), self.bootstrap)) if len(self.bootstrap) else []
        return self._interval(point, np.ravel(samples))

    def compute_optimal(self, flops: float) -> dict[str, Interval]:
        """N_opt, D_opt and the loss there at a compute budget, each with its bootstrap interval."""
        def allocation(theta) -> dict[str, np.ndarray]:
            """N_opt, D_opt and L(N_opt, D_opt) for each row of theta (K, 5)."""
            theta = np.atleast_2d(theta)
            p = self.natural(theta)
            # A member with alpha ~ 0 (N does not matter) puts N_opt at 0 and D_opt at infinity: a
            # legitimate extreme of the ensemble, kept in the interval, not a warning.
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                n, d = compute_optimal_allocation(flops, A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])
                loss = np.exp(log_chinchilla_loss(np.log(n)[:, None], np.log(d)[:, None], theta))[:, 0]
            return {"n_opt": n, "d_opt": d, "loss": loss}

        point = {k: float(v[0]) for k, v in allocation(self.theta).items()}
        samples = allocation(self.bootstrap) if len(self.bootstrap) else {k: [] for k in point}
        return {k: self._interval(v, samples[k]) for k, v in point.items()}


def fit_chinchilla(n, d, loss, *, grid=None, bootstrap=0, seed=0, level=0.95, groups=None) -> ChinchillaFit:
    """Fit L(N, D) from every grid start, keep the best, and optionally bootstrap it.

    bootstrap: number of resamples. Each resample draws the points (or, with `groups`, whole groups
    such as the seeds of one configuration) with replacement and refits from the full-data optimum
    and the best distinct grid minima.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _fit_chinchilla(n, d, loss, grid, bootstrap, seed, level, groups)


def _fit_chinchilla(n, d, loss, grid, bootstrap, seed, level, groups) -> ChinchillaFit:
    log_n, log_d, log_l = np.log(np.asarray(n, float)), np.log(np.asarray(d, float)), np.log(np.asarray(loss, float))
    starts = default_grid() if grid is None else np.asarray(grid, float)
    # Screen: a few Gauss-Newton steps from every start; then run the most promising to convergence.
    solutions, values = refine_batch(starts, log_n, log_d, log_l, max_iterations=SCREENING_ITERATIONS)
    keep = np.argsort(values)[:SURVIVORS]
    solutions, values = refine_batch(solutions[keep], log_n, log_d, log_l)
    # Finish the best few distinct candidates with L-BFGS-B and keep the best of those.
    order = np.argsort(values)[:POLISHED_CANDIDATES]
    finished = [polish(solutions[i], log_n, log_d, log_l) for i in order]
    best, best_value = min(finished, key=lambda pair: pair[1])
    boot = np.empty((0, 5))
    if bootstrap:
        weights = bootstrap_weights(len(log_l), bootstrap, seed, groups)
        # Starts: the full-data optimum, plus the runner-up basin so a resample can switch basins.
        runner_up = solutions[order[1]] if len(order) > 1 else best
        candidates = []
        for start in (best, runner_up):
            sol, val = refine_batch(np.repeat(start[None], bootstrap, 0), log_n, log_d, log_l, weights)
            candidates.append((sol, val))
        stacked_values = np.stack([v for _, v in candidates])
        choice = stacked_values.argmin(axis=0)
        boot = np.stack([candidates[c][0][i] for i, c in enumerate(choice)])
    return ChinchillaFit(theta=best, objective=best_value, n_points=len(log_l), bootstrap=boot, level=level)


def bootstrap_weights(n_points: int, resamples: int, seed: int, groups=None) -> np.ndarray:
    """(resamples, n_points) multinomial counts: resampling points, or whole groups when given."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=resamples).astype(float)
    labels, index = np.unique(np.asarray(groups), return_inverse=True)
    group_counts = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=resamples)
    return group_counts[:, index].astype(float)
