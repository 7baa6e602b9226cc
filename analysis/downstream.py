"""Task metrics from loss: Gadre et al. (2024, papers.md §3), Err(L) = eps - k exp(-gamma L).

A task's top-1 error falls with the model's loss along an exponential decay: eps is the error a model
that has learned nothing the task can use tends to as L grows, and k, gamma set how fast the error
falls as L falls. All three are > 0 here except eps, which may be any number (it is a limit, not an
error a model reaches).

Fitting. The law is fitted in a centred form, Err = eps - c exp(-gamma (L - L0)) with L0 the median
fitted loss and k = c exp(gamma L0), so c and gamma are not tied together by a huge exp(gamma L0).
For a fixed gamma the law is linear in (eps, c): every gamma of a log grid gets its least-squares
(eps, c), and all those starts are refined at once by the project's damped Gauss-Newton on a Huber
objective (analysis.fit.damped_gauss_newton; Huber in error units, delta = HUBER_DELTA). The best is
kept. Intervals: bootstrap refits (analysis.fit.bootstrap_weights), resampling points or, with
`groups`, whole groups: the eval points of one run are not independent, so a table of per-step
points is bootstrapped over runs.

Prediction through a loss law (`chain`): loss samples from a loss law (its bootstrap members, and
members plus a run's noise) are pushed through Err-law bootstrap members paired at random, and, for
the interval of a MEASURED error, plus a draw of the Err law's own residuals (centred, inflated by
sqrt(n / (n - 3)) as analysis.predictive does for losses). Both laws' uncertainties are carried.

Calibration by the backtest (`backtest_calibration`; the one mechanism of analysis.predictive.Calibration). The
task law is asked about lower losses than it was fitted on (a larger run), so the backtest holds out the points
in that direction: the groups (runs) with the lowest minimum loss, until at least HELD_SHARE of the points and two
groups are out (points alone without groups); the law is fitted to the rest with its bootstrap, and its
measured-error interval at each held-out point's measured loss (what `chain` gives a user: members plus residual
noise) is scored against the measured error. The split-conformal factor scales every interval of the full fit
about its point (`chain` applies `fit.calibration`); the saved file stores it. Measured on the tasks ladder
(docs/downstream.md): pointwise residual noise does not carry a run's shared offset nor the law's error one step
down the losses, and the raw interval covered too few held-out points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from proxyscale.analysis.fit import Interval, bootstrap_weights, damped_gauss_newton, huber, percentile_interval
from proxyscale.analysis.predictive import MIN_MEMBERS, Calibration

PARAMETERS = ("eps", "k", "gamma")
N_PARAMETERS = 3
HUBER_DELTA = 0.01
"""Huber threshold in units of error (1 percentage point): residuals beyond it count linearly."""
GAMMA_MIN, GAMMA_MAX = 1e-3, 50.0
GAMMA_GRID = 48
MIN_POINTS = 5
MIN_DISTINCT_LOSSES = 4
MIN_GROUPS = 3
CHAIN_SAMPLES = 4000
"""At least this many (loss, Err member) pairs behind each chained interval, however few loss samples come in."""
HELD_SHARE = 0.1
"""The backtest holds out at least this share of the points (and two groups), the lowest losses first."""
FILE_FORMAT = "proxyscale-downstream-fit/1"
"""The `format` key of a saved fit (`fit --law downstream -o FILE`): the file `predict --downstream` reads."""


class DownstreamInputError(ValueError):
    """The points cannot fit the law; the message says which input and what is missing."""


def error_of_loss(loss, eps, k, gamma) -> np.ndarray:
    """Err(L) = eps - k exp(-gamma L), broadcast over any shapes (k exp(-gamma L) taken as exp(log k - gamma L))."""
    loss, eps, k, gamma = (np.asarray(v, float) for v in (loss, eps, k, gamma))
    with np.errstate(divide="ignore", over="ignore"):
        return eps - np.exp(np.log(k) - gamma * loss)


def _centred(theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction (K, n) and Jacobian (K, n, 3) of eps - c exp(-gamma x), theta rows (eps, c, gamma)."""
    eps, c, gamma = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    decay = np.exp(-gamma * x[None, :])
    prediction = eps - c * decay
    jacobian = np.stack([np.ones_like(decay), -decay, c * x[None, :] * decay], axis=-1)
    return prediction, jacobian


def _gamma_bounds(x: np.ndarray) -> tuple[float, float]:
    """gamma stays where exp(-gamma x) cannot overflow over the fitted (centred) losses."""
    spread = float(np.max(np.abs(x))) or 1.0
    return GAMMA_MIN, min(GAMMA_MAX, 500.0 / spread)


def _project(low: float, high: float):
    def project(candidate: np.ndarray) -> np.ndarray:
        candidate[:, 1] = np.maximum(candidate[:, 1], 0.0)
        candidate[:, 2] = np.clip(candidate[:, 2], low, high)
        return candidate
    return project


def _objective(theta: np.ndarray, x: np.ndarray, err: np.ndarray, weights: np.ndarray, delta: float) -> np.ndarray:
    prediction, _ = _centred(np.atleast_2d(theta), x)
    return (weights * huber(err - prediction, delta)).sum(axis=1)


def grid_starts(x: np.ndarray, err: np.ndarray, low: float, high: float, size: int = GAMMA_GRID) -> np.ndarray:
    """One start per gamma of a log grid: the least-squares (eps, c >= 0) of the law linear at that gamma."""
    starts = []
    for gamma in np.geomspace(low, high, size):
        design = np.stack([np.ones_like(x), -np.exp(-gamma * x)], axis=1)
        (eps, c), *_ = np.linalg.lstsq(design, err, rcond=None)
        if c < 0:  # the data rise with loss less than this gamma allows: the flat law is the best start
            eps, c = float(np.mean(err)), 0.0
        starts.append((eps, c, gamma))
    return np.array(starts)


def _refine(starts, x, err, weights, delta, low, high, iterations=200):
    return damped_gauss_newton(
        starts, lambda t: _centred(t, x), lambda t, w: _objective(t, x, err, w, delta), err, weights, delta,
        _project(low, high), iterations)


def check_points(loss, err, *, loss_name: str = "loss", metric_name: str = "metric", groups=None) -> None:
    """Refuse points the law cannot be fitted to, with one line naming the input and what is missing."""
    loss, err = np.asarray(loss, float), np.asarray(err, float)
    if loss.shape != err.shape or loss.ndim != 1:
        raise DownstreamInputError(f"{loss_name} and {metric_name} must be two columns of one length")
    for name, values in ((loss_name, loss), (metric_name, err)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DownstreamInputError(f"{name}: value {values[bad[0]]} at row {bad[0]}; every value must be a finite number")
    outside = np.flatnonzero((err < 0) | (err > 1))
    if len(outside):
        raise DownstreamInputError(f"{metric_name}: {err[outside[0]]:g} at row {outside[0]} is outside [0, 1]; a task "
                                   "metric is a fraction (give 0.42, not 42%)")
    if len(loss) < MIN_POINTS:
        raise DownstreamInputError(f"{loss_name}/{metric_name}: {len(loss)} points; Err(L) = eps - k exp(-gamma L) "
                                   f"has 3 parameters and needs at least {MIN_POINTS} (loss, metric) points")
    distinct = len(np.unique(loss))
    if distinct < MIN_DISTINCT_LOSSES:
        raise DownstreamInputError(f"{loss_name}: {distinct} distinct losses; the law needs points at "
                                   f"{MIN_DISTINCT_LOSSES} or more different losses to fit its decay")
    if groups is not None:
        count = len(np.unique(np.asarray(groups)))
        if count < MIN_GROUPS:
            raise DownstreamInputError(f"groups: the points come from {count} group(s); bootstrapping over groups "
                                       f"needs at least {MIN_GROUPS}")


@dataclass(frozen=True)
class DownstreamFit:
    """Err(L) = eps - k exp(-gamma L) fitted to (loss, error) points, with bootstrap refits."""

    theta: np.ndarray
    """(eps, k, gamma) of the best fit."""
    objective: float
    n_points: int
    loss_range: tuple[float, float]
    """The smallest and largest fitted loss: outside it, a prediction extrapolates the law."""
    residuals: np.ndarray = field(repr=False)
    """Error measured - fitted, for each fitted point."""
    bootstrap: np.ndarray = field(repr=False)
    """(R, 3) refits (eps, k, gamma) on resampled data (empty when none was asked for)."""
    n_groups: int | None = None
    """Groups resampled by the bootstrap (None: points were resampled)."""
    level: float = 0.95
    calibration: Calibration | None = None
    """The backtest's calibration, applied by `chain` (None: not calibrated, factor 1; a file saved before it)."""

    @property
    def factor(self) -> float:
        return 1.0 if self.calibration is None else float(self.calibration.factor)

    @property
    def params(self) -> dict[str, float]:
        return dict(zip(PARAMETERS, (float(v) for v in self.theta), strict=True))

    def intervals(self) -> dict[str, Interval]:
        return {name: percentile_interval(self.theta[i], self.bootstrap[:, i] if len(self.bootstrap) else [], self.level)
                for i, name in enumerate(PARAMETERS)}

    def error(self, loss) -> np.ndarray:
        """The law's error at each loss."""
        return error_of_loss(loss, *self.theta)

    def predict(self, loss: float) -> Interval:
        """The law's error at one loss with the bootstrap interval of the law (the mean, no measurement noise)."""
        members = error_of_loss(loss, *self.bootstrap.T) if len(self.bootstrap) else []
        return percentile_interval(float(self.error(loss)), members, self.level)

    def noise(self) -> np.ndarray:
        """Residuals a new measurement's noise is drawn from: median-centred, inflated by sqrt(n / (n - 3))."""
        r = np.asarray(self.residuals, float)
        return (r - np.median(r)) * np.sqrt(len(r) / max(len(r) - N_PARAMETERS, 1))

    def to_dict(self) -> dict:
        """The saved file's content (FILE_FORMAT)."""
        return {"format": FILE_FORMAT, "law": "downstream", "form": "Err(L) = eps - k exp(-gamma L)",
                "theta": [float(v) for v in self.theta], "objective": float(self.objective),
                "n_points": int(self.n_points), "loss_range": [float(v) for v in self.loss_range],
                "residuals": [float(v) for v in self.residuals], "bootstrap": self.bootstrap.tolist(),
                "n_groups": self.n_groups, "level": float(self.level)} | (
                    {} if self.calibration is None else {"calibration": self.calibration.as_dict()})

    @classmethod
    def from_dict(cls, raw: dict) -> DownstreamFit:
        """Rebuild a saved fit; a file of another kind or version is refused with what it is."""
        if not isinstance(raw, dict) or raw.get("format") != FILE_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise DownstreamInputError(f"not a downstream fit (format {found!r}, expected {FILE_FORMAT!r}); write one "
                                       "with `proxyscale fit --law downstream ... -o FILE`")
        missing = [key for key in ("theta", "objective", "n_points", "loss_range", "residuals", "bootstrap") if key not in raw]
        if missing:
            raise DownstreamInputError(f"a downstream fit without {missing}; write it again with `proxyscale fit --law "
                                       "downstream ... -o FILE`")
        bootstrap = np.asarray(raw["bootstrap"], float).reshape(-1, N_PARAMETERS)
        return cls(theta=np.asarray(raw["theta"], float), objective=float(raw["objective"]), n_points=int(raw["n_points"]),
                   loss_range=(float(raw["loss_range"][0]), float(raw["loss_range"][1])),
                   residuals=np.asarray(raw["residuals"], float), bootstrap=bootstrap, n_groups=raw.get("n_groups"),
                   level=float(raw.get("level", 0.95)), calibration=calibration_from_dict(raw.get("calibration")))


def calibration_from_dict(raw) -> Calibration | None:
    """A saved `Calibration.as_dict()` back, in error units (None: the file has none, an uncalibrated fit of factor 1)."""
    if raw is None:
        return None
    try:
        return Calibration.from_dict(raw, log=False)
    except ValueError as error:
        raise DownstreamInputError(str(error)) from None


def fit_downstream(loss, err, *, bootstrap: int = 0, seed: int = 0, groups=None, level: float = 0.95,
                   delta: float = HUBER_DELTA, loss_name: str = "loss", metric_name: str = "metric",
                   calibrate: bool = False) -> DownstreamFit:
    """Fit Err(L) = eps - k exp(-gamma L) to (loss, error) points; bootstrap: refits on resampled points or groups;
    calibrate: also run the backtest (`backtest_calibration`) and carry its factor."""
    check_points(loss, err, loss_name=loss_name, metric_name=metric_name, groups=groups)
    calibration = None
    if calibrate:
        calibration = backtest_calibration(loss, err, groups=groups, bootstrap=bootstrap, seed=seed, level=level,
                                           delta=delta)
    loss, err = np.asarray(loss, float), np.asarray(err, float)
    centre = float(np.median(loss))
    x = loss - centre
    low, high = _gamma_bounds(x)
    ones = np.ones_like(err)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        starts = grid_starts(x, err, low, high)
        solutions, values = _refine(starts, x, err, ones, delta, low, high)
        order = np.argsort(values)
        best = solutions[order[0]]
        boot = np.empty((0, N_PARAMETERS))
        if bootstrap:
            weights = bootstrap_weights(len(err), bootstrap, seed, groups)
            # From the best fit and from the best of a distinct gamma, so a resample can change basin.
            other = next((solutions[i] for i in order[1:] if abs(np.log(solutions[i, 2] / best[2])) > 0.5), best)
            fits = [_refine(np.repeat(start[None], bootstrap, 0), x, err, weights, delta, low, high)
                    for start in (best, other)]
            choice = np.argmin(np.stack([v for _, v in fits]), axis=0)
            centred = np.stack([fits[c][0][i] for i, c in enumerate(choice)])
            boot = _natural(centred, centre)
    theta = _natural(best[None], centre)[0]
    residuals = err - error_of_loss(loss, *theta)
    n_groups = None if groups is None else len(np.unique(np.asarray(groups)))
    return DownstreamFit(theta=theta, objective=float(values[order[0]]), n_points=len(err),
                         loss_range=(float(loss.min()), float(loss.max())), residuals=residuals, bootstrap=boot,
                         n_groups=n_groups, level=level, calibration=calibration)


def _natural(centred: np.ndarray, centre: float) -> np.ndarray:
    """(eps, c, gamma) of the centred form -> (eps, k, gamma), k = c exp(gamma L0)."""
    eps, c, gamma = centred[:, 0], centred[:, 1], centred[:, 2]
    with np.errstate(over="ignore", divide="ignore"):
        k = np.exp(np.log(c) + gamma * centre)
    return np.stack([eps, k, gamma], axis=1)


@dataclass(frozen=True)
class ErrorPrediction:
    """The task error at one predicted loss, both laws' uncertainty carried through."""

    value: float
    """Err at the loss law's point prediction, by the Err law's best fit."""
    low: float
    high: float
    """Interval for a MEASURED error: loss-law members plus run noise, Err-law members plus its residuals."""
    mean_low: float
    mean_high: float
    """Interval for the laws' mean: loss-law members through Err-law members, no noise."""
    extrapolated: bool
    """The predicted loss lies outside the losses the Err law was fitted on."""
    factor: float = 1.0
    """The backtest's calibration factor both intervals were scaled by about `value` (1: uncalibrated)."""

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "mean_low": self.mean_low,
                "mean_high": self.mean_high, "extrapolated": self.extrapolated, "calibration_factor": self.factor}


def chain(fit: DownstreamFit, loss_point: float, loss_members, loss_samples, *, seed: int = 0,
          pairings: int = 8) -> ErrorPrediction:
    """Carry a loss prediction through the Err law.

    loss_members: losses of the loss law's bootstrap members at the target (the law's mean uncertainty);
    loss_samples: losses a run there may measure (members plus drawn run noise). Each is paired with
    `pairings` Err-law members drawn at random (more when there are few losses: CHAIN_SAMPLES pairs at least);
    the measured samples also get a drawn Err residual.
    """
    rng = np.random.default_rng(seed)
    members, samples = (np.ravel(np.asarray(v, float)) for v in (loss_members, loss_samples))
    members, samples = members[np.isfinite(members)], samples[np.isfinite(samples)]
    boot = fit.bootstrap if len(fit.bootstrap) else fit.theta[None]
    tail = (1 - fit.level) / 2 * 100

    def through(losses: np.ndarray, noisy: bool) -> np.ndarray:
        if len(losses) == 0:
            return np.array([float(fit.error(loss_point))])
        losses = np.repeat(losses, max(pairings, -(-CHAIN_SAMPLES // len(losses))))  # enough samples for the 95% ends
        picks = boot[rng.integers(0, len(boot), size=len(losses))]
        err = error_of_loss(losses, picks[:, 0], picks[:, 1], picks[:, 2])
        if noisy:
            noise = fit.noise()
            err = err + noise[rng.integers(0, len(noise), size=len(err))]
        return np.clip(err[np.isfinite(err)], 0.0, 1.0)

    value = float(np.clip(fit.error(loss_point), 0.0, 1.0))
    mean = through(members, noisy=False)
    measured = through(samples, noisy=True)
    low, high = _about(value, *np.percentile(measured, [tail, 100 - tail]), fit.factor)
    mean_low, mean_high = _about(value, *np.percentile(mean, [tail, 100 - tail]), fit.factor)
    lo, hi = fit.loss_range
    return ErrorPrediction(value=value, low=low, high=high, mean_low=mean_low, mean_high=mean_high,
                           extrapolated=not (lo <= loss_point <= hi), factor=fit.factor)


def _about(value: float, low: float, high: float, factor: float) -> tuple[float, float]:
    """An interval holding its point (as analysis.predictive.predictive_band's), scaled about it by the calibration
    factor in error units (the interval is built additively there), kept inside [0, 1]."""
    low, high = min(low, value), max(high, value)
    return float(np.clip(value + factor * (low - value), 0, 1)), float(np.clip(value + factor * (high - value), 0, 1))


def lowest_loss_split(loss, groups=None) -> np.ndarray:
    """Mask of the held-out points: the groups with the lowest minimum loss (each point its own group without
    groups), adding groups until at least two groups and HELD_SHARE of the points are held out (the spirit of
    analysis.predictive.largest_size_split: hold out where the law will be asked, a larger run's lower losses)."""
    loss = np.asarray(loss, float)
    groups = np.arange(len(loss)) if groups is None else np.asarray(groups)
    names, index = np.unique(groups, return_inverse=True)
    lowest = np.full(len(names), np.inf)
    np.minimum.at(lowest, index, loss)
    held = np.zeros(len(loss), dtype=bool)
    for count, g in enumerate(np.argsort(lowest, kind="stable"), start=1):
        held |= index == g
        if count >= 2 and held.sum() >= HELD_SHARE * len(loss):
            break
    return held


def backtest_calibration(loss, err, *, groups=None, bootstrap: int = MIN_MEMBERS, seed: int = 0,
                         level: float = 0.95, delta: float = HUBER_DELTA) -> Calibration:
    """Hold out the lowest losses (`lowest_loss_split`), fit the law with its bootstrap to the rest and calibrate its
    measured-error interval (`chain` at each held-out point's measured loss) on the held-out measured errors;
    Calibration.none, with why, when the rest cannot fit the law."""
    loss, err = np.asarray(loss, float), np.asarray(err, float)
    held = lowest_loss_split(loss, groups)
    rest = ~held
    rest_groups = None if groups is None else np.asarray(groups)[rest]
    unit = "points" if groups is None else "groups"
    try:
        check_points(loss[rest], err[rest], groups=rest_groups)
    except DownstreamInputError as why:
        return Calibration.none(f"the rest after holding out the lowest-loss {unit} cannot fit the law: {why}")
    fit = fit_downstream(loss[rest], err[rest], bootstrap=max(bootstrap, MIN_MEMBERS), seed=seed, groups=rest_groups,
                         level=level, delta=delta)
    bands = np.array([[p.value, p.low, p.high] for p in
                      (chain(fit, at, [at], [at], seed=seed + i) for i, at in enumerate(loss[held]))])
    if groups is None:
        split = f"the {int(held.sum())} lowest losses held out, fitted on {int(rest.sum())} points"
    else:
        split = (f"the {len(np.unique(np.asarray(groups)[held]))} groups of lowest loss held out ({int(held.sum())} "
                 f"points), fitted on {int(rest.sum())} points of {len(np.unique(rest_groups))} groups")
    # Err is a fraction and the interval is built additively in it (members plus residuals), so the factor is taken
    # and applied in error units (log=False): the conformal factor and the coverage need only consistent values.
    # The points of one run share an offset: a narrowing factor needs enough held-out groups, not points.
    independent = None if groups is None else len(np.unique(np.asarray(groups)[held]))
    return Calibration.measure(err[held], bands[:, 0], bands[:, 1], bands[:, 2], split=split, level=level, log=False,
                               independent=independent)
