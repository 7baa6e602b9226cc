"""Fitting Gadre et al.'s over-training law L(C, M) = E + (a M^eta + b M^-eta) C^-eta, with bootstrap intervals.

C = 6 N D is the training compute and M = D / N the tokens per parameter (analysis.laws.overtraining_loss
derives the form: it is Chinchilla's L(N, D) with alpha = beta = 2 eta). Fitted as in analysis/fit.py:
log L = LSE(log a + eta (log M - log C), log b - eta (log M + log C), log E), the sum of Huber losses
(delta 1e-3) of the log residuals minimised from a grid of starts (a vectorised damped Gauss-Newton /
IRLS screen of every start, the best refined to convergence, the best few finished by L-BFGS-B), and a
bootstrap over runs (multinomial weights, refitted from the optimum and the runner-up basin).

Gadre et al. fit in linear space with least squares (scipy curve_fit); we keep this project's Huber on
log residuals, which is robust to the odd diverged or mislogged run, and say so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from proxyscale.analysis.fit import HUBER_DELTA, Interval, bootstrap_weights, damped_gauss_newton, huber, percentile_interval
from proxyscale.analysis.laws import log_sum_exp3

PARAMETERS = ("log_a", "log_b", "log_E", "eta")
MIN_ETA, MAX_ETA = 0.0, 1.5
"""eta in [0, 1.5], i.e. Chinchilla exponents alpha = beta = 2 eta in [0, 3] as in analysis/fit.py."""
SCREENING_ITERATIONS = 12
SURVIVORS = 32
POLISHED_CANDIDATES = 4


def default_grid() -> np.ndarray:
    """Starts: log a, log b in {0, 4, ..., 24}, log E in {-1, -0.5, ..., 1}, eta in {0.05, 0.1, 0.2, 0.3, 0.5}.

    With C between 1e15 and 1e24 and eta near 0.15 (alpha ~ 0.3), C^-eta is e^-5 to e^-8, so a reducible
    term of order one needs log a, log b of 5-10; the grid covers that for eta up to 0.5."""
    scales = np.arange(0.0, 24.01, 4.0)
    offsets = np.arange(-1.0, 1.01, 0.5)
    etas = (0.05, 0.1, 0.2, 0.3, 0.5)
    return np.array(list(itertools.product(scales, scales, offsets, etas)), float)


def log_features(n, d) -> tuple[np.ndarray, np.ndarray]:
    """(log C, log M) of runs with N parameters and D tokens: C = 6 N D, M = D / N."""
    log_n, log_d = np.log(np.asarray(n, float)), np.log(np.asarray(d, float))
    return np.log(6.0) + log_n + log_d, log_d - log_n


def _terms(log_c, log_m, theta):
    theta = np.atleast_2d(np.asarray(theta, float))
    la, lb, le, eta = (theta[:, k, None] for k in range(4))
    return la + eta * (log_m - log_c), lb - eta * (log_m + log_c), le + 0.0 * log_c


def log_overtraining_loss(log_c, log_m, theta) -> np.ndarray:
    """log L for each row of theta (K, 4) at every (log C, log M): shape (K, n)."""
    return log_sum_exp3(*_terms(log_c, log_m, theta))[0]


def log_loss_nd(log_n, log_d, theta) -> np.ndarray:
    """log L at (log N, log D) for each row of theta (K, 4): shape (K, n)."""
    log_n, log_d = np.asarray(log_n, float), np.asarray(log_d, float)
    return log_overtraining_loss(np.log(6.0) + log_n + log_d, log_d - log_n, theta)


def _predict_with_jacobian(theta, log_c, log_m):
    prediction, (w1, w2, w3) = log_sum_exp3(*_terms(log_c, log_m, theta))
    jacobian = np.stack([w1, w2, w3, w1 * (log_m - log_c) - w2 * (log_m + log_c)], axis=-1)
    return prediction, jacobian


def _values(theta, log_c, log_m, log_l, weights, delta=HUBER_DELTA):
    residual = log_l - log_overtraining_loss(log_c, log_m, theta)
    return (weights * huber(residual, delta)).sum(axis=1)


def _clip_eta(candidate: np.ndarray) -> np.ndarray:
    candidate[:, 3] = np.clip(candidate[:, 3], MIN_ETA, MAX_ETA)
    return candidate


def refine_batch(starts, log_c, log_m, log_l, weights=None, max_iterations=200, delta=HUBER_DELTA):
    """Damped Gauss-Newton with IRLS weights on the Huber objective, K independent problems at once.

    The loop is analysis.fit.damped_gauss_newton (shared with the five-parameter law's refine_batch).
    Returns (theta (K, 4), values (K,)).
    """
    return damped_gauss_newton(starts, lambda t: _predict_with_jacobian(t, log_c, log_m),
                               lambda t, w: _values(t, log_c, log_m, log_l, w, delta),
                               log_l, weights, delta, _clip_eta, max_iterations)


def _polish(theta, log_c, log_m, log_l):
    """An L-BFGS-B run with the analytic gradient that finishes one candidate."""
    def fun(x):
        prediction, jacobian = _predict_with_jacobian(x[None], log_c, log_m)
        residual = log_l - prediction[0]
        value = float(huber(residual, HUBER_DELTA).sum())
        gradient = -(np.clip(residual, -HUBER_DELTA, HUBER_DELTA)[:, None] * jacobian[0]).sum(axis=0)
        return value, gradient

    x0 = np.asarray(theta, float).copy()
    x0[3] = np.clip(x0[3], MIN_ETA, MAX_ETA)
    result = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=[(None, None)] * 3 + [(MIN_ETA, MAX_ETA)],
                      options={"maxiter": 3000, "maxfun": 12000, "ftol": 1e-15, "gtol": 1e-12})
    return result.x, float(result.fun)


@dataclass(frozen=True)
class OvertrainingFit:
    theta: np.ndarray
    """(log a, log b, log E, eta) of the best fit."""
    objective: float
    n_points: int
    bootstrap: np.ndarray = field(repr=False)
    """(R, 4) refits on resampled runs (empty without a bootstrap)."""
    level: float = 0.95

    @staticmethod
    def natural(theta: np.ndarray) -> dict[str, np.ndarray]:
        """E, a, b, eta, and the Chinchilla-form equivalents A = a 6^-eta, B = b 6^-eta, alpha = beta = 2 eta,
        and the loss-minimising multiplier M* = (b / a)^(1 / (2 eta)), for each row of theta (K, 4)."""
        theta = np.atleast_2d(theta)
        la, lb, le, eta = theta.T
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            m_opt = np.exp((lb - la) / (2 * eta))
        return {"E": np.exp(le), "a": np.exp(la), "b": np.exp(lb), "eta": eta,
                "A": np.exp(la - eta * np.log(6.0)), "B": np.exp(lb - eta * np.log(6.0)), "alpha": 2 * eta,
                "beta": 2 * eta, "m_opt": m_opt}

    @property
    def params(self) -> dict[str, float]:
        return {name: float(value[0]) for name, value in self.natural(self.theta).items()}

    def intervals(self) -> dict[str, Interval]:
        boot = self.natural(self.bootstrap) if len(self.bootstrap) else {}
        return {name: percentile_interval(value, boot.get(name, np.array([])), self.level)
                for name, value in self.params.items()}

    def predict(self, n, d) -> Interval:
        """The mean loss at one (N, D) with the bootstrap interval of the law (no observation noise)."""
        log_n, log_d = np.log([float(n)]), np.log([float(d)])
        point = float(np.exp(log_loss_nd(log_n, log_d, self.theta)[0, 0]))
        samples = np.exp(log_loss_nd(log_n, log_d, self.bootstrap)[:, 0]) if len(self.bootstrap) else []
        return percentile_interval(point, samples, self.level)

    def compute_optimal(self, flops: float) -> dict[str, Interval]:
        """N_opt, D_opt and the loss at a compute budget, with bootstrap intervals. Under this law the best
        multiplier M* = (b / a)^(1 / (2 eta)) is the same at every C: N_opt = sqrt(C / (6 M*)), D_opt = M* N_opt."""
        def allocation(theta) -> dict[str, np.ndarray]:
            theta = np.atleast_2d(theta)
            m_opt = self.natural(theta)["m_opt"]
            la, lb, le, eta = theta.T
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                n = np.sqrt(flops / (6.0 * m_opt))
                log_c, log_m = np.log(flops), np.log(m_opt)
                loss = np.exp(log_sum_exp3(la + eta * (log_m - log_c), lb - eta * (log_m + log_c), le)[0])
            return {"n_opt": n, "d_opt": m_opt * n, "loss": loss}

        point = {k: float(v[0]) for k, v in allocation(self.theta).items()}
        samples = allocation(self.bootstrap) if len(self.bootstrap) else {k: [] for k in point}
        return {k: percentile_interval(v, samples[k], self.level) for k, v in point.items()}


def fit_overtraining(n, d, loss, *, grid=None, bootstrap: int = 0, seed: int = 0, level: float = 0.95,
                     groups=None) -> OvertrainingFit:
    """Fit L(C, M) to runs with N parameters, D tokens and final loss; optionally bootstrap it.

    grid: starting points (K, 4) in (log a, log b, log E, eta) (default: `default_grid()`).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_c, log_m = log_features(n, d)
        log_l = np.log(np.asarray(loss, float))
        starts = default_grid() if grid is None else np.atleast_2d(np.asarray(grid, float))
        solutions, values = refine_batch(starts, log_c, log_m, log_l, max_iterations=SCREENING_ITERATIONS)
        keep = np.argsort(values)[:SURVIVORS]
        solutions, values = refine_batch(solutions[keep], log_c, log_m, log_l)
        order = np.argsort(values)[:POLISHED_CANDIDATES]
        best, best_value = min((_polish(solutions[i], log_c, log_m, log_l) for i in order), key=lambda pair: pair[1])
        boot = np.empty((0, 4))
        if bootstrap:
            weights = bootstrap_weights(len(log_l), bootstrap, seed, groups)
            runner_up = solutions[order[1]] if len(order) > 1 else best
            candidates = [refine_batch(np.repeat(start[None], bootstrap, 0), log_c, log_m, log_l, weights)
                          for start in (best, runner_up)]
            choice = np.stack([v for _, v in candidates]).argmin(axis=0)
            boot = np.stack([candidates[c][0][i] for i, c in enumerate(choice)])
    return OvertrainingFit(theta=best, objective=best_value, n_points=len(log_l), bootstrap=boot, level=level)
