"""The loss of a run not yet trained, with an interval its MEASURED loss should fall in.

Two laws of L(N, D) can be fitted and asked for predictions here: "chinchilla" (analysis.fit, five
parameters) and "overtraining" (analysis.overtraining, Gadre et al.'s four). Both fit log L with
Huber and bootstrap over runs, so a fit carries `theta` (its optimum) and `bootstrap` (R refits).

Why the interval is wider than the bootstrap of the law. The bootstrap members mu_b(x) spread only
as much as the fitted MEAN log loss at x is uncertain. A run's measured loss is that mean plus its
own noise (seed, data order, evaluation batches; for published points also the plot extraction),
which does not shrink with more runs: an interval for the mean covers the measured loss less and
less often as the fit gets better (on the Chinchilla points, far below 95%). So the interval here is
a bootstrap prediction interval (Davison and Hinkley 1997, sec. 6.3.3): the distribution of
    log y* = mu_b(x) + r*,
with mu_b a bootstrap member and r* a log residual of the fitted runs drawn at random, centred on
its median (a Huber fit has median residual ~ 0; a mean would be dragged by outliers) and inflated
by sqrt(n / (n - p)) because a fit with p parameters leaves its own runs' residuals smaller than
the noise of a new run. Drawing residuals, not a Gaussian, keeps the heavy tails real data has.
Its percentiles combine the two sources of error, which are independent (the new run's noise is
not in the fit). What it does not cover: a law that is wrong where it extrapolates.

The backtest interval (`backtest_errors`, `predict_loss(..., calibration=...)`) covers that too, at
the price of an assumption: the runs are split by compute as the task splits them (the largest
`share` of them held out), the law is fitted to the smaller ones and predicts the larger, and the
log errors of those predictions, NOT centred (a law that extrapolates too high shows it here) and
not inflated, are added to the full fit's point prediction; the interval is their percentiles. It
assumes the law errs on the runs it will be asked about as it erred one step down the ladder: a
split-conformal interval whose calibration set mimics the extrapolation, with no exact guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.fit import fit_chinchilla
from analysis.laws import log_chinchilla_loss
from analysis.overtraining import fit_overtraining, log_loss_nd

LAWS = ("chinchilla", "overtraining")
PARAMETER_COUNT = {"chinchilla": 5, "overtraining": 4}
RESIDUAL_DRAWS = 25
"""Residuals drawn per bootstrap member: 200 members give 5,000 samples per predicted point."""


def check_law(law: str) -> None:
    if law not in LAWS:
        raise ValueError(f"law: {law!r} is not one of {list(LAWS)}")


def fit_law(law: str, n, d, loss, *, bootstrap: int = 0, seed: int = 0, grid=None, level: float = 0.95):
    """Fit `law` to runs (N, D, loss); the result has .theta, .bootstrap, .params and .intervals()."""
    check_law(law)
    fitter = fit_chinchilla if law == "chinchilla" else fit_overtraining
    return fitter(n, d, loss, bootstrap=bootstrap, seed=seed, grid=grid, level=level)


def log_loss(law: str, n, d, theta) -> np.ndarray:
    """Predicted log L at every (N, D) for each parameter row of theta: shape (K, m)."""
    log_n, log_d = np.log(np.asarray(n, float)), np.log(np.asarray(d, float))
    theta = np.atleast_2d(theta)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if law == "chinchilla":
            return log_chinchilla_loss(log_n, log_d, theta)
        return log_loss_nd(log_n, log_d, theta)


def log_residuals(law: str, fit, n, d, loss) -> np.ndarray:
    """log L observed - log L fitted, for the runs the law was fitted to."""
    return np.log(np.asarray(loss, float)) - log_loss(law, n, d, fit.theta)[0]


def noise_draws(residuals, n_parameters: int) -> np.ndarray:
    """The residuals a new run's noise is drawn from: centred on their median, inflated by sqrt(n / (n - p))."""
    residuals = np.asarray(residuals, float)
    n = len(residuals)
    if n <= n_parameters:
        raise ValueError(f"a predictive interval needs more runs ({n}) than the law has parameters ({n_parameters})")
    return (residuals - np.median(residuals)) * np.sqrt(n / (n - n_parameters))


@dataclass(frozen=True)
class LossPrediction:
    """Point predictions with two 95% intervals at each requested (N, D) (arrays of one length)."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    """The interval for a measured loss there: law uncertainty and run-to-run noise (the module docstring)."""
    mean_low: np.ndarray
    mean_high: np.ndarray
    """The interval for the law's mean alone (the bootstrap of the fit)."""
    noise_scale: float
    """Robust standard deviation (1.4826 MAD) of the inflated log residuals."""

    def row(self, i: int) -> dict[str, float]:
        return {"value": float(self.value[i]), "low": float(self.low[i]), "high": float(self.high[i]),
                "mean_low": float(self.mean_low[i]), "mean_high": float(self.mean_high[i])}


def backtest_errors(law: str, n, d, loss, flops, *, share: float, grid=None) -> np.ndarray | None:
    """Log errors (measured - predicted) of the largest `share` of the runs (by FLOPs) predicted by the law
    fitted to the others; None when the others cannot fit it (fewer than 6 runs over 3 values of N and D)."""
    n, d, loss, flops = (np.asarray(v, float) for v in (n, d, loss, flops))
    held = max(2, int(round(share * len(flops))))
    order = np.argsort(flops, kind="stable")
    small, large = order[:-held], order[-held:]
    if len(small) < 6 or len(np.unique(n[small])) < 3 or len(np.unique(d[small])) < 3:
        return None
    fit = fit_law(law, n[small], d[small], loss[small], grid=grid)
    return np.log(loss[large]) - log_loss(law, n[large], d[large], fit.theta)[0]


def predict_loss(law: str, fit, n, d, residuals, *, level: float = 0.95, draws: int = RESIDUAL_DRAWS,
                 seed: int = 0, calibration: np.ndarray | None = None) -> LossPrediction:
    """Predicted loss at each (N, D) with a prediction interval for a measured loss (see the module docstring).

    residuals: log residuals of the runs `fit` was fitted to (`log_residuals`).
    calibration: backtest errors (`backtest_errors`): the interval is the point prediction plus their
    percentiles instead of the bootstrap members plus drawn residuals.
    """
    check_law(law)
    n, d = np.atleast_1d(np.asarray(n, float)), np.atleast_1d(np.asarray(d, float))
    point = log_loss(law, n, d, fit.theta)[0]
    members = log_loss(law, n, d, fit.bootstrap) if len(fit.bootstrap) else point[None]
    members = members[np.isfinite(members).all(axis=1)]
    if len(members) == 0:
        members = point[None]
    noise = noise_draws(residuals, PARAMETER_COUNT[law])
    tail = (1 - level) / 2 * 100
    if calibration is not None:
        errors = np.asarray(calibration, float)
        low, high = point + np.percentile(errors, tail), point + np.percentile(errors, 100 - tail)
    else:
        rng = np.random.default_rng(seed)
        picks = noise[rng.integers(0, len(noise), size=(len(members), draws))]  # (R, J): one noise draw per sample
        samples = (members[:, None, :] + picks[:, :, None]).reshape(-1, len(n))  # (R J, m)
        low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    mean_low, mean_high = np.percentile(members, [tail, 100 - tail], axis=0)
    scale = float(1.4826 * np.median(np.abs(noise - np.median(noise))))
    return LossPrediction(value=np.exp(point), low=np.exp(low), high=np.exp(high), mean_low=np.exp(mean_low),
                          mean_high=np.exp(mean_high), noise_scale=scale)
