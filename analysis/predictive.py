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

Calibration by the backtest (`Calibration`, the ONE mechanism every command uses: fit, predict,
recommend, check, replay and the planner's ensemble) covers that too, at the price of an assumption.
The runs are split as the task extrapolates (the largest model size held out; for curves also the
longest runs), the law is fitted to the rest WITH its bootstrap (`MIN_MEMBERS` or more members, over
lineages and seeds) and gives its band at the held-out points, as above. A conformal-style factor
    z_i = (log y_i - log yhat_i) / (its side's half-width of the band, in log),
    factor = the ceil((n + 1) level)-th smallest |z_i| (split-conformal, Vovk et al.; Angelopoulos and Bates 2021)
then scales every band of the full fit about its point prediction, in log: 1 when the band was right
one step down the ladder, > 1 when the law extrapolates worse than its bootstrap says (a wrong form),
< 1 when the band was wider than it needed to be (only with 19 or more held-out points at 95%: fewer
can widen a band, not narrow it). Every calibration reports the held-out coverage and
median relative width before and after. It assumes the law errs on the runs it will be asked about as
it erred one step down the ladder: no exact guarantee (the held-out points of one curve are correlated).
`backtest_errors` gives the held-out log errors alone (their sign shows a bias).

Curve forms (`CURVE_FORMS`: the Tissue form under two clocks and the multi-power law) are chosen by
the same backtest (`backtest_curve_forms`): each is fitted to the rest of every split and scored by
the mean |log error| of the held-out points; `auto` keeps the lowest (Choshen et al. 2024: judge a fit
by its prediction of a larger held-out run), not the lowest training objective. The kept form gets the distance
model of the table laws (`curve_distance_model`: the largest 1, 2, 3... sizes of the curve set held out, every held-out
point past the skip scored at its distance), and `carry_to_target` floors L(C*)'s band at the target's distance (the
farther of N_opt and D_opt in spans) and widens N_opt's and D_opt's intervals by the same ratio: fit --curves and
the curve planner's final estimate; fit-schedule floors each predicted point at its own distance (`distance_band`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from proxyscale.analysis.fit import Interval, fit_chinchilla
from proxyscale.analysis.laws import log_chinchilla_loss
from proxyscale.analysis.overtraining import fit_overtraining, log_loss_nd

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
                 seed: int = 0, calibration: Calibration | None = None) -> LossPrediction:
    """Predicted loss at each (N, D) with a prediction interval for a measured loss (see the module docstring).

    residuals: log residuals of the runs `fit` was fitted to (`log_residuals`).
    calibration: a backtest's `Calibration` (`backtest_calibration`): both bands scaled by its factor.
    """
    check_law(law)
    n, d = np.atleast_1d(np.asarray(n, float)), np.atleast_1d(np.asarray(d, float))
    point = log_loss(law, n, d, fit.theta)[0]
    members = log_loss(law, n, d, fit.bootstrap) if len(fit.bootstrap) else point[None]
    members = members[np.isfinite(members).all(axis=1)]
    if len(members) == 0:
        members = point[None]
    noise = noise_draws(residuals, PARAMETER_COUNT[law])
    low, high = predictive_band(point, members, noise, level=level, draws=draws, seed=seed)
    tail = (1 - level) / 2 * 100
    mean_low, mean_high = np.percentile(members, [tail, 100 - tail], axis=0)
    if calibration is not None:
        if calibration.distance is None:
            low, high = calibration.scale(point, low, high)
            mean_low, mean_high = calibration.scale(point, mean_low, mean_high)
        else:  # each point floored at the held-out spread at its own distance (the mean: the growth alone, no noise)
            low, high = calibration.distance_band(n, point, low, high, d=d)
            mean_low, mean_high = calibration.distance_band(n, point, mean_low, mean_high, noise=False, d=d)
    scale = float(1.4826 * np.median(np.abs(noise - np.median(noise))))
    return LossPrediction(value=np.exp(point), low=np.exp(low), high=np.exp(high), mean_low=np.exp(mean_low),
                          mean_high=np.exp(mean_high), noise_scale=scale)


# ------------------------------------------------------------------ calibration by the backtest

MIN_MEMBERS = 64
"""Bootstrap members a calibrated band is built from (enough for its 2.5% and 97.5% ends)."""
MIN_LOG_WIDTH = 1e-6
"""The narrowest uncalibrated log band `Calibration.at_target` divides by (a loss known to 1e-4 %): a bootstrap
collapsed on noise-free runs has a band of ~1e-13, and a ratio to that is not a widening of anything."""
MAX_BAND_FACTOR = 100.0
"""The most `Calibration.at_target` widens a band by (never below the one-step factor). The factor scales N_opt's,
D_opt's and L(C*)'s intervals in log; one past this measures a bootstrap with (almost) no spread rather than the
extrapolation (the published and simulated ladders in docs/trust.md give 1-5), and would carry an interval of a few
percent to exp(hundreds): past float range. Noise-free data (SimulatedSpec.noise 0) reach it: the loss band itself
still gets the distance floor in full (`predict_loss`)."""


def predictive_band(point, members, noise, *, level: float = 0.95, draws: int = RESIDUAL_DRAWS,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of log y* = mu_b + r*: bootstrap members (R, m) plus residuals drawn from `noise`
    (none: the members alone); see the module docstring."""
    members = np.atleast_2d(np.asarray(members, float))
    tail = (1 - level) / 2 * 100
    if noise is None or len(noise) == 0:
        samples = members
    else:
        rng = np.random.default_rng(seed)
        noise = np.asarray(noise, float)
        picks = noise[rng.integers(0, len(noise), size=(len(members), draws))]  # (R, J): one noise draw per sample
        samples = (members[:, None, :] + picks[:, :, None]).reshape(-1, members.shape[1])
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return np.minimum(low, point), np.maximum(high, point)


def conformal_factor(measured, point, low, high, *, level: float = 0.95) -> float:
    """The factor that makes the bands (low, high) about `point` cover `level` of `measured` (all in log):
    the ceil((n + 1) level)-th smallest |error| / (its side's half-width)."""
    measured, point, low, high = (np.asarray(v, float) for v in (measured, point, low, high))
    error = measured - point
    half = np.where(error >= 0, high - point, point - low)
    z = np.sort(np.abs(error) / np.maximum(half, 1e-12))
    if not len(z):
        return 1.0
    rank = int(np.ceil((len(z) + 1) * level))
    return float(z[min(rank, len(z)) - 1])


def narrowing_points(level: float = 0.95) -> int:
    """Held-out points needed before a factor below 1 is trusted: with fewer than level / (1 - level) (19 at 95%)
    the conformal rank ceil((n + 1) level) is past the largest error, and a small set that happened to land near
    its predictions would shrink the band (a 3-run backtest once gave 0.18)."""
    return int(np.ceil(level / (1 - level) - 1e-9))


@dataclass(frozen=True)
class Calibration:
    """A backtest's factor for the bands of a fit, with what it measured on the held-out points.

    coverage_* and width_* are the held-out points' coverage and median relative width ((high - low) /
    prediction) of the bands before and after the factor (after: about `level` by construction).
    """

    factor: float
    n_points: int
    coverage_before: float
    coverage_after: float
    width_before: float
    width_after: float
    split: str
    level: float = 0.95
    error: float = float("nan")
    """Mean |log error| of the held-out points' predictions (the backtest's score)."""
    log: bool = True
    """The bands were given in log (widths relative to the prediction); False: in the quantity's own units (a
    task's error, a fraction: widths and the held-out error absolute, in those units)."""
    distance: DistanceModel | None = None
    """How the held-out error grows with the extrapolation distance (`distance_model`): predict_loss floors each
    point's band at its distance's spread (curve forms: `curve_distance_model`, carried by `carry_to_target`); None:
    the one-step factor alone (task laws)."""
    target_distance: float = float("nan")
    """The target's distance when the factor was set at a target (`at_target`), in log N units of the ladder: span x
    the distance in spans, the farther of N and D (`DistanceModel.distance_of`; with N alone, log(N_target / largest
    fitted N)); NaN otherwise."""
    base_factor: float = float("nan")
    """The one-step factor measured by the backtest before `at_target` widened it (NaN: not at a target)."""
    target_n: float = float("nan")
    target_d: float = float("nan")
    """The target's N and D (`at_target`; D NaN when only N was given): the line says how far out it is in each."""
    target_noise: bool = True
    """The target's band holds a run's own noise (a measured loss); False: the law's mean (a curve law's L(C*) from
    its members), floored at the growth alone (`at_target(noise=False)`)."""

    @classmethod
    def none(cls, why: str) -> Calibration:
        """No backtest possible: the bands as they are (factor 1), and why."""
        nan = float("nan")
        return cls(1.0, 0, nan, nan, nan, nan, f"none ({why})")

    @classmethod
    def measure(cls, measured, point, low, high, *, split: str, level: float = 0.95, log: bool = True,
                independent: int | None = None) -> Calibration:
        """The factor from held-out points (log measured, log point prediction and band; log=False: all four in the
        quantity's own units, for a band built additively there: the factor needs only consistent values).
        independent: how many of the held-out units are independent (runs whose points share an offset; default
        the points): fewer than narrowing_points widen the band, never narrow it."""
        measured, point, low, high = (np.asarray(v, float) for v in (measured, point, low, high))
        factor = conformal_factor(measured, point, low, high, level=level)
        units = len(measured) if independent is None else int(independent)
        if units < narrowing_points(level):  # too few to show the band is too wide: widen only
            factor = max(factor, 1.0)
            what = "points" if independent is None else "independent groups"
            split += f"; {units} {what} can widen the band, not narrow it"
        after_low, after_high = point + factor * (low - point), point + factor * (high - point)

        def coverage(lo, hi) -> float:
            return float(np.mean((lo <= measured) & (measured <= hi)))

        def width(lo, hi) -> float:
            if not log:
                return float(np.median(hi - lo))
            return float(np.median((np.exp(hi) - np.exp(lo)) / np.exp(point)))

        return cls(factor, len(measured), coverage(low, high), coverage(after_low, after_high), width(low, high),
                   width(after_low, after_high), split, level, float(np.mean(np.abs(measured - point))), log)

    @property
    def one_step_factor(self) -> float:
        """The factor the backtest measured one step out (before any widening to the target's distance)."""
        return self.factor if not np.isfinite(self.base_factor) else self.base_factor

    def distance_band(self, n, point, low, high, *, noise: bool = True, d=None) -> tuple[np.ndarray, np.ndarray]:
        """Log bands at runs of N parameters (and D tokens): the one-step factor, then each side floored at the
        held-out error's spread at that run's distance, the farther of N and D in spans (`DistanceModel.spans_of`;
        without d, N alone); without a distance model, `scale`.
        noise=False: a band for the law's mean (the bootstrap's alone), floored at the growth alone."""
        if self.distance is None:
            return self.scale(point, low, high)
        point, low, high = (np.asarray(v, float) for v in (point, low, high))
        base = self.one_step_factor
        floor = self.distance.half_width(self.distance.distance_of(n, d), noise=noise)
        return point - np.maximum(base * (point - low), floor), point + np.maximum(base * (high - point), floor)

    def at_target(self, model: DistanceModel, n_target: float, point: float, low: float, high: float, *,
                  d_target: float | None = None, noise: bool = True) -> Calibration:
        """This calibration carried to a target of `n_target` parameters whose uncalibrated log band is (low, high)
        about `point`: the factor becomes the ratio by which the loss band there widens when each side is floored
        at the held-out error's spread at the target's distance (never below the one-step factor, so the bootstrap's
        own band is narrowed only when the one-step factor was allowed to narrow it). The width divided by is at
        least the runs' own noise band and MIN_LOG_WIDTH, and the factor at most MAX_BAND_FACTOR (or the one-step
        factor when that is larger): a collapsed bootstrap (noise-free runs) would otherwise give millions.
        d_target: the target's D, so a target past the ladder's longest runs counts as far out as that makes it
        (`DistanceModel.spans_of`). noise=False: (low, high) is a band for the law's mean (a curve law's L(C*) from
        its members alone), floored at the growth alone and divided by its own width, at least the runs' noise band
        as above (a mean band narrower than that is a well-pinned loss, not a measure of how N_opt's interval
        widens: divided by it alone, a +-0.1% band at 10x on the prior gave factor 100, N_opt up to 5e9x)."""
        base = self.one_step_factor
        new_low, new_high = replace(self, distance=model, factor=base).distance_band(n_target, point, low, high,
                                                                                      noise=noise, d=d_target)
        # The band's width is measured against the least a run's loss can be known to: its own noise (2 z noise, the
        # band at distance 0) and MIN_LOG_WIDTH. A bootstrap collapsed on noise-free or near-duplicate runs has a band
        # of ~1e-13 in log, and the ratio to it (5e6 on a noise-free 6-size ladder at 100x) says nothing about how
        # N_opt's interval widens, only that the bootstrap had no spread.
        # Also for the law's mean (noise=False): the same floor as a measured loss's, so a curve law's factor is the
        # table laws' on the same ladder, not the ratio of the growth to a members' band far narrower than a run.
        width = max(float(high - low), 2 * model.z * model.noise, MIN_LOG_WIDTH)
        factor = min(max(base, float(new_high - new_low) / width), max(base, MAX_BAND_FACTOR))
        return replace(self, factor=factor, distance=model, base_factor=base,
                       target_distance=float(model.distance_of(n_target, d_target)), target_n=float(n_target),
                       target_d=float("nan") if d_target is None else float(d_target), target_noise=noise)

    def target_interval(self, interval: Interval, *, noise: bool = False) -> Interval:
        """A loss interval at the target carried there by `at_target`: scaled by the factor (`interval`), then each
        side floored at the held-out error's spread at the target's distance (noise=False: the growth alone, for
        the law's mean), so neither side is narrower than the distance model allows."""
        scaled = self.interval(interval)
        if self.distance is None or not np.isfinite(self.target_distance) or not (scaled.value > 0):
            return scaled
        floor = float(self.distance.half_width(self.target_distance, noise=noise))
        value = float(scaled.value)
        low = min(scaled.low, value * np.exp(-floor)) if np.isfinite(scaled.low) else scaled.low
        high = max(scaled.high, value * np.exp(floor)) if np.isfinite(scaled.high) else scaled.high
        return Interval(scaled.value, float(low), float(high))

    def scale(self, point, low, high) -> tuple[np.ndarray, np.ndarray]:
        """Bands in log scaled about their point prediction by the factor."""
        point, low, high = (np.asarray(v, float) for v in (point, low, high))
        return point + self.factor * (low - point), point + self.factor * (high - point)

    def interval(self, interval: Interval) -> Interval:
        """A positive quantity's interval (N_opt, D_opt, L(C*)) scaled about its value in log."""
        value, low, high = interval.value, interval.low, interval.high
        if not (np.isfinite(value) and value > 0) or self.factor == 1.0:
            return interval
        with np.errstate(all="ignore"):
            def side(end: float) -> float:
                if not np.isfinite(end) or end <= 0:
                    return end
                return float(np.exp(np.log(value) + self.factor * (np.log(end) - np.log(value))))
            # Each end stays on its side of the value: a bootstrap's percentile can sit a rounding error past the
            # point (a collapsed bootstrap), and scaling that by the factor would invert the interval.
            return Interval(value, min(side(low), value), max(side(high), value))

    def as_dict(self) -> dict:
        """The calibration as every --json writes it; with a distance model, its growth and the target's distance."""
        payload = {"factor": self.factor, "n_points": self.n_points, "split": self.split, "level": self.level,
                   "held_out_error": self.error,
                   "coverage_before": self.coverage_before, "coverage_after": self.coverage_after,
                   "median_width_before": self.width_before, "median_width_after": self.width_after}
        if self.distance is not None:
            payload["one_step_factor"] = self.one_step_factor
            payload["distance"] = self.distance.as_dict() | (
                {"target_distance": self.target_distance, "target_ratio": float(np.exp(self.target_distance)),
                 "target_half_width": self.distance.half_width(self.target_distance, noise=self.target_noise),
                 "band_factor": self.factor, "target_band": "measured loss" if self.target_noise else "law's mean",
                 "target_spans": self.target_distance / self.distance.span}
                | {f"target_{k}_ratio": v for k, v in self._target_ratios().items()}
                if np.isfinite(self.target_distance) else {})
        return payload

    @classmethod
    def from_dict(cls, raw: dict, *, log: bool = True) -> Calibration:
        """`as_dict()` back (a saved fit's calibration); log: how its bands were built (as_dict does not say).
        ValueError when the factor is not a positive number."""
        factor = float(raw["factor"])
        if not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"calibration factor {raw['factor']!r}; it must be a positive number")
        nan = float("nan")

        def number(key: str) -> float:
            value = raw.get(key)
            return nan if value is None else float(value)

        return cls(factor, int(raw.get("n_points", 0)), number("coverage_before"), number("coverage_after"),
                   number("median_width_before"), number("median_width_after"), str(raw.get("split", "")),
                   float(raw.get("level", 0.95)), number("held_out_error"), log=log)

    def line(self) -> str:
        """One line: what the backtest measured and, with a distance model, how the band grows to the target."""
        base = self._base_line()
        if self.distance is None:
            return base
        return (f"{base}; "
                f"{self.distance.summary(self.target_distance, self.factor, self._target_ratios(), self.target_noise)}")

    def _target_ratios(self) -> dict[str, float]:
        """The target's N, D, C over the ladder's largest (empty without a target N)."""
        if self.distance is None or not (np.isfinite(self.target_n) or np.isfinite(self.target_d)):
            return {}
        return self.distance.ratios(self.target_n, None if not np.isfinite(self.target_d) else self.target_d)

    def _base_line(self) -> str:
        if not self.n_points:
            if self.distance is not None:
                return f"calibration: {self.split}"
            return f"calibration: {self.split}; intervals are the bootstrap's as they are (factor 1)"
        if not self.log:
            return (f"backtest ({self.split}): held-out mean |error| {self.error:.4f}; calibration factor "
                    f"{self.factor:.2f}, held-out coverage {self.coverage_before:.0%} -> {self.coverage_after:.0%}, "
                    f"median width {self.width_before:.4f} -> {self.width_after:.4f}")
        return (f"backtest ({self.split}): held-out error {self.error:.2%}; calibration factor "
                f"{self.one_step_factor:.2f}, "
                f"held-out coverage {self.coverage_before:.0%} -> {self.coverage_after:.0%}, median width "
                f"{self.width_before:.2%} -> {self.width_after:.2%} of the loss")


HELD_SHARE = 0.1
"""The largest sizes held out hold at least this share of the runs (and two runs)."""


def largest_size_split(n) -> np.ndarray | None:
    """Mask of the runs of the largest N, adding the next sizes down until at least two runs and HELD_SHARE
    of them are held out (None: the rest would have fewer than three sizes)."""
    n = np.asarray(n, float)
    sizes = np.unique(n)[::-1]
    held = np.zeros(len(n), dtype=bool)
    for k, size in enumerate(sizes):
        held |= n == size
        if held.sum() >= max(2, HELD_SHARE * len(n)):
            return held if len(sizes) - (k + 1) >= 3 else None
    return None


def backtest_calibration(law: str, n, d, loss, *, flops=None, share: float | None = None, bootstrap: int = MIN_MEMBERS,
                         seed: int = 0, grid=None, level: float = 0.95, distance: bool = True,
                         target: tuple[float, float] | None = None, fit=None) -> Calibration:
    """Hold out the largest model sizes (`largest_size_split`; with `share` and `flops`: the largest `share`
    of the runs by compute, as a replay splits its table), fit `law` with its bootstrap to the rest and
    calibrate its prediction band on the held-out runs (factor 1, and why, when the rest cannot identify it).

    distance: also measure how the held-out error grows with the distance (`distance_model`, the prior on a short
    ladder); predict_loss then floors each point's band at its distance's spread. target: (N, D) of the run the
    command predicts: the factor is carried there (`Calibration.at_target`), so intervals scaled by it (N_opt,
    D_opt, L(C*)) widen as the loss band does at the target. fit: the full fit (with its bootstrap) the command
    already has (refitted with MIN_MEMBERS members when None)."""
    check_law(law)
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    calibration = _one_step_calibration(law, n, d, loss, flops=flops, share=share, bootstrap=bootstrap, seed=seed,
                                        grid=grid, level=level)
    if not distance:
        return calibration
    full = fit if fit is not None else fit_law(law, n, d, loss, grid=grid,
                                                bootstrap=MIN_MEMBERS if target is not None else 0, seed=seed)
    model = distance_model(law, n, d, loss, fit=full, grid=grid, level=level)
    calibration = replace(calibration, distance=model)
    if target is None or not all(np.isfinite(v) and v > 0 for v in target):
        return calibration
    if not len(full.bootstrap):
        full = fit_law(law, n, d, loss, grid=grid, bootstrap=MIN_MEMBERS, seed=seed, level=level)
    residuals = log_residuals(law, full, n, d, loss)
    raw = predict_loss(law, full, [target[0]], [target[1]], residuals, level=level, seed=seed)
    return calibration.at_target(model, float(target[0]), float(np.log(raw.value[0])), float(np.log(raw.low[0])),
                                 float(np.log(raw.high[0])), d_target=float(target[1]))


def _one_step_calibration(law: str, n, d, loss, *, flops, share, bootstrap, seed, grid, level) -> Calibration:
    if share is not None:
        flops = 6 * n * d if flops is None else np.asarray(flops, float)
        held = np.zeros(len(n), dtype=bool)
        held[np.argsort(flops, kind="stable")[-max(2, int(round(share * len(n)))):]] = True
    else:
        held = largest_size_split(n)
    if held is None:
        return Calibration.none(f"{len(np.unique(n))} model sizes: holding out the largest leaves fewer than 3")
    rest = ~held
    if rest.sum() <= PARAMETER_COUNT[law] + 1 or len(np.unique(n[rest])) < 3 or len(np.unique(d[rest])) < 3:
        return Calibration.none("the runs below the held-out ones cannot identify the law")
    fit = fit_law(law, n[rest], d[rest], loss[rest], bootstrap=max(bootstrap, MIN_MEMBERS), seed=seed, grid=grid,
                  level=level)
    residuals = log_residuals(law, fit, n[rest], d[rest], loss[rest])
    prediction = predict_loss(law, fit, n[held], d[held], residuals, level=level, seed=seed)
    what = f"largest {int(held.sum())} runs by compute" if share is not None else f"largest sizes N >= {n[held].min():.3g}"
    split = f"{what} held out ({int(held.sum())} runs), fitted on {int(rest.sum())} runs below"
    return Calibration.measure(np.log(loss[held]), np.log(prediction.value), np.log(prediction.low),
                               np.log(prediction.high), split=split, level=level)


# ------------------------------------------------------------------ error against extrapolation distance

GROWTH_PRIOR = 0.0370
"""The growth of the held-out log error's spread per span of the fitted ladder that a ladder too short to measure its
own is given: the upper quartile of the growths (`conformal_growth`) measured on the published ladders in
../shared/data (misfitting_small 0.0472, gadre_small 0.1328, chinchilla_epoch 0.0279, revisiting_scaling LM 0.0335)
and on four misspecified simulated truths (0.0178-0.0246), as printed by `.venv/bin/python
tests/benchmarks/bench_distance.py --prior` (4 seeds per truth; docs/trust.md). The upper quartile, not the median
(0.0262): judged leave-one-source-out, the median's band alone covers 88% of misfitting_small's held-out units, 67%
of gadre_small's and 78% of revisiting_scaling's; the upper quartile 91%, 74% and 95% (bench_sharpen.py). Not a
fitted constant: rerun that command to update it."""
GROWTH_PRIOR_SOURCE = "tests/benchmarks/bench_distance.py --prior"
MIN_GROWTH_UNITS = 3
"""Distinct held-out sizes a ladder needs before its own growth replaces the prior (a ladder of 6 sizes: the
splits that keep 3 sizes to fit hold out the largest 1, 2 and 3)."""
MIN_FIT_SIZES = 3
"""Sizes every split keeps to fit (a size term E + A / N^alpha is three numbers)."""
MIN_SPAN = float(np.log(2.0))
"""The smallest span (log N_max / N_min) distances are counted in: a ladder of one size counts as one doubling."""
MAX_DISTANCE_SPLITS = 6
"""At most this many splits (a ladder of many sizes, e.g. points read off a published figure, is cut at evenly
spaced log N)."""


@dataclass(frozen=True)
class DistanceModel:
    """How far off a held-out run's loss is, as a function of its extrapolation distance x = log(N / N_max fitted).

    sigma(x) = sqrt(noise^2 + (growth x / span)^2): at x = 0 a new run is off by its own noise (the fit's residual
    scale); far out, a wrong or uncertain exponent moves log L linearly in log N (d log L / d alpha = -x times the
    term's share of L), so the spread grows linearly with x. The two add in quadrature because they are independent.
    The distance is counted in spans of the fitted ladder (span = log(N_max / N_min) fitted): an exponent fitted over
    a wider ladder is pinned better (its sampling error falls as 1 / span, as a regression slope's does), so a split
    that keeps 3 sizes to fit errs more per unit of log N than the full ladder will. Measured on four misspecified
    simulated truths, the spread this predicts at 10x the full ladder is within 0.6-1.7 of the full fit's measured
    error; counted in plain log N it was 1.7-4.1 times too wide (docs/trust.md).
    Every direction the ladder is extrapolated in counts (`spans_of`): a run's distance in spans is the larger of
    log(N / N_max) / span and log(D / D_max) / span_D, so a target inside the ladder in N but past its longest runs
    is as far out as its D makes it; x is then span times that (the N-equivalent distance). The held-out points are
    scored the same way, but the splits hold out sizes: on the ladders measured their distance is N's, so the growth
    per span is measured in N and assumed to hold in D (the line says so when the target is farthest in D).
    `growth` is set on the backtest's held-out errors (`conformal_growth`: the smallest growth that puts `level` of
    them inside z sigma(x), each held-out (split, size) weighted as one unit; a bias counts as error) or, on a ladder
    too short to measure it, is the prior GROWTH_PRIOR measured the same way on published ladders and misspecified
    truths (tests/benchmarks/bench_distance.py). sigma is therefore the scale whose z multiple holds `level` of the
    held-out errors, not their standard deviation.
    """

    noise: float
    """The spread at distance 0: the robust scale (1.4826 MAD) of the full fit's log residuals."""
    growth: float
    """The spread (in log loss) added per span of the ladder beyond its largest size (per doubling of N on this
    ladder: growth log 2 / span)."""
    measured_growth: float
    """The growth this ladder's own backtest measured (NaN: no split could be fitted)."""
    units: int
    """Distinct held-out sizes behind `measured_growth`."""
    source: str
    """"measured" or "prior"."""
    n_max: float
    """The largest N the full fit saw: distances are log(N / n_max), 0 inside the ladder."""
    span: float = float(np.log(2.0))
    """log(N_max / N_min) of the full ladder (at least MIN_SPAN): the unit distances are counted in."""
    more_sizes: int = 0
    """With the prior: how many more sizes would let the ladder measure its own growth."""
    level: float = 0.95
    distances: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    """Each held-out point's distance log(N / largest N its split fitted)."""
    errors: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    """Each held-out point's log error (measured - predicted)."""
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False, compare=False)
    """Each held-out point's (split, size) unit."""
    spans: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    """Each held-out point's split's span log(N_max / N_min) fitted."""
    axis: str = "N"
    d_max: float = float("nan")
    """The largest D (tokens) the full fit saw (NaN: distance counted in N alone)."""
    span_d: float = float("nan")
    """log(D_max / D_min) of the full ladder (at least MIN_SPAN): the unit a distance in D is counted in."""
    d_range: float = float("nan")
    """log(D_max / D_min) of the full ladder as it is (0: one D): below MIN_SPAN the ladder cannot measure the D
    direction at all, and a target farthest in D gets the runs that would."""
    c_max: float = float("nan")
    """The largest compute 6 N D the full fit saw (reported beside the distance, not counted in it)."""
    n_distances: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    """Each held-out point's log(N / largest N its split fitted) (its distance in N alone; `distances` is the
    distance in spans, counted in both directions, times its split's span)."""

    @property
    def per_doubling(self) -> float:
        """The spread added per doubling of N beyond this ladder's largest size."""
        return float(self.growth * np.log(2) / self.span)

    @property
    def equivalent_distances(self) -> np.ndarray:
        """Each held-out point's distance rescaled to this ladder's span (x span / its split's span): where the
        full ladder would be as far out, the axis the band `sigma` is drawn on."""
        return self.distances * self.span / np.maximum(self.spans, MIN_SPAN) if len(self.spans) else self.distances

    @property
    def z(self) -> float:
        """The normal quantile of the two-sided level (1.96 at 95%)."""
        from scipy.stats import norm

        return float(norm.ppf(0.5 + self.level / 2))

    def spans_of(self, n, d=None) -> np.ndarray | float:
        """The distance in spans of the fitted ladder, counted in every direction the ladder is extrapolated:
        max(log(N / n_max) / span, log(D / d_max) / span_d, 0) (without d, or without d_max: N alone). A target
        inside the ladder in N but past its longest runs in D is as far out as its D makes it."""
        return count_spans(n, d, n_max=self.n_max, span=self.span, d_max=self.d_max, span_d=self.span_d)

    def distance_of(self, n, d=None) -> np.ndarray | float:
        """The distance sigma is evaluated at, in log N units of this ladder: span x `spans_of(n, d)`; without d,
        log(N / n_max), 0 for N inside the ladder (as before D was counted)."""
        x = self.span * np.asarray(self.spans_of(n, d), float)
        return float(x) if np.ndim(x) == 0 else x

    def ratios(self, n, d=None) -> dict[str, float]:
        """The target's N / n_max, D / d_max and C / c_max (C = 6 N D; NaN where not known)."""
        n = float(np.asarray(n, float).ravel()[0]) if np.size(n) else float("nan")
        d = float("nan") if d is None else float(np.asarray(d, float).ravel()[0])
        with np.errstate(all="ignore"):
            return {"n": n / self.n_max, "d": d / self.d_max, "c": 6 * n * d / self.c_max}

    def sigma(self, x, *, noise: bool = True) -> np.ndarray | float:
        """The spread of the log error at distance x (noise=False: the growth alone, for the law's mean)."""
        x = np.asarray(x, float)
        value = np.sqrt((self.noise**2 if noise else 0.0) + (self.growth * x / self.span) ** 2)
        return float(value) if value.ndim == 0 else value

    def half_width(self, x, *, noise: bool = True) -> np.ndarray | float:
        """The half-width (in log) of a `level` band at distance x."""
        return self.z * self.sigma(x, noise=noise)

    def measured_range(self) -> tuple[float, float]:
        """The smallest and largest held-out distances in N, as ratios N / N_max fitted (NaN without a split)."""
        if not len(self.distances):
            return float("nan"), float("nan")
        x = self.n_distances if len(self.n_distances) == len(self.distances) else self.distances
        return float(np.exp(x.min())), float(np.exp(x.max()))

    def measured_spans(self) -> tuple[float, float]:
        """The smallest and largest held-out distances in spans of their split's ladder (NaN without a split)."""
        if not len(self.distances):
            return float("nan"), float("nan")
        s = self.distances / np.maximum(self.spans, MIN_SPAN) if len(self.spans) else self.distances / self.span
        return float(s.min()), float(s.max())

    def as_dict(self) -> dict:
        """The model as --json writes it: its form, growth (and per doubling), where it was measured, its source."""
        low, high = self.measured_range()
        return {"form": "sigma(x) = sqrt(noise^2 + (growth x / span)^2), x = span max(log(N / N_max fitted) / span, "
                        "log(D / D_max fitted) / span_D), span = log(N_max / N_min fitted); growth: the smallest "
                        "with the level's share of the held-out errors inside z sigma(x)", "axis": self.axis,
                "noise": self.noise, "growth_per_span": self.growth, "span": self.span,
                "growth_per_doubling": self.per_doubling,
                "measured_growth": self.measured_growth, "units": self.units, "source": self.source,
                "prior": GROWTH_PRIOR, "more_sizes_for_own": self.more_sizes, "measured_ratio": [low, high],
                "n_max": self.n_max, "points": [{"distance": float(x), "error": float(e), "unit": int(g)}
                                                for x, e, g in zip(self.distances, self.errors, self.groups,
                                                                   strict=True)],
                "directions": self.directions, "d_max": self.d_max, "span_d": self.span_d, "d_range": self.d_range,
                "c_max": self.c_max,
                "measured_spans": list(self.measured_spans())}

    @property
    def directions(self) -> str:
        """How a distance is counted: "N" (N alone), or "max(N, D) in spans" when D is counted too."""
        return "max(N, D) in spans" if np.isfinite(self.d_max) else "N"

    def summary(self, target_distance: float = float("nan"), band_factor: float = float("nan"),
                target: dict[str, float] | None = None, noise: bool = True) -> str:
        """"measured at 1.1x-3.1x N (4 sizes held out); growth +0.41% per doubling (measured); target at 6.7x N:
        +-2.3%, band x1.8"; target: the target's `ratios` (its N, D and C over the ladder's largest), said as
        "target at 1x N, 4.9x D, 33x C (0.57 spans, farthest in D: ...)"; noise=False: the half-width of the law's
        mean there (the growth alone), said "(mean)"."""
        low, high = self.measured_range()
        where = (f"measured at {low:.3g}x-{high:.3g}x {self.axis} ({self.units} size{'s' if self.units != 1 else ''} "
                 f"held out)" if len(self.distances) else "no held-out size")
        more = (f"{self.more_sizes} more size{'s' if self.more_sizes != 1 else ''} would let this ladder measure its "
                "own")
        prior = GROWTH_PRIOR * np.log(2) / self.span
        if self.source == "prior" and self.growth > GROWTH_PRIOR:  # too few units, but they measured more than it
            why = (f"this ladder's own on only {self.units} held-out size{'s' if self.units != 1 else ''}, kept as it "
                   f"is above the prior {prior:+.2%} from {GROWTH_PRIOR_SOURCE}; {more} reliably")
        elif self.source == "prior":
            own = "" if not np.isfinite(self.measured_growth) else \
                f"; this ladder's own {self.measured_growth * np.log(2) / self.span:+.2%}"
            why = f"prior from {GROWTH_PRIOR_SOURCE}{own}; {more}"
        else:
            why = "measured"
        # One size (a single-size curve law): no N to double; the growth is per span of the ladder's D.
        rate = "per doubling" if np.isfinite(self.n_max) else "per span of D"
        text = f"distance: {where}; growth {self.per_doubling:+.2%} {rate} ({why})"
        if np.isfinite(target_distance):
            text += (f"; target at {self._target_words(target_distance, target)}: "
                     f"+-{self.half_width(target_distance, noise=noise):.2%}{'' if noise else ' (mean)'}, "
                     f"band x{band_factor:.2f}")
        return text

    def _target_words(self, target_distance: float, target: dict[str, float] | None) -> str:
        """"30x N" (N alone), or "1x N, 4.9x D, 33x C (0.57 spans, ...)" when D is counted."""
        if not target or not np.isfinite(target.get("d", float("nan"))) or not np.isfinite(self.d_max):
            return f"{np.exp(target_distance):.3g}x {self.axis}"
        n_ratio = target["n"] if np.isfinite(target["n"]) else 1.0  # unknown N (one size): inside in N
        words = (f"{max(n_ratio, 1.0):.3g}x N, " if np.isfinite(target["n"]) else "") + f"{max(target['d'], 1.0):.3g}x D"
        if np.isfinite(target.get("c", float("nan"))):
            words += f", {max(target['c'], 1.0):.3g}x C"
        spans = target_distance / self.span
        in_d = np.log(max(target["d"], 1.0)) / self.span_d > np.log(max(n_ratio, 1.0)) / self.span + 1e-12
        words += f" ({spans:.2f} spans"
        if in_d and spans > 0:  # the splits hold out sizes: what they measured per span is assumed to hold in D
            words += ", farthest in D: the growth per span of held-out sizes, carried to D"
            if np.isfinite(self.d_range) and self.d_range < MIN_SPAN:
                # more sizes at the same D cannot tell how the error grows in D: runs at larger D can
                words += (f"; the ladder's D spans only {np.exp(self.d_range):.3g}x: runs at 2x and 4x its largest D "
                          "would let it measure this direction")
        return words + ")"


def count_spans(n, d=None, *, n_max: float, span: float, d_max: float = float("nan"),
                span_d: float = float("nan")) -> np.ndarray | float:
    """max(log(N / n_max) / span, log(D / d_max) / span_d, 0): how many spans of a fitted ladder (N_min..n_max,
    D_min..d_max) a run of N parameters and D tokens lies beyond it, counted in whichever direction is farthest.
    Without d (or a d_max) N alone; an unknown N (NaN, a single-size curve law) counts as inside the ladder in N.
    A span that is not finite (a D_min of 0) counts as MIN_SPAN: max(nan, MIN_SPAN) is nan, which dropped D."""
    def unit(value: float) -> float:
        return max(float(value), MIN_SPAN) if np.isfinite(value) else MIN_SPAN

    with np.errstate(all="ignore"):
        s = np.nan_to_num(np.log(np.asarray(n, float) / n_max) / unit(span), nan=0.0)
        if d is not None and np.isfinite(d_max):
            s_d = np.nan_to_num(np.log(np.asarray(d, float) / d_max) / unit(span_d), nan=0.0)
            s = np.maximum(s, s_d)
    s = np.maximum(s, 0.0)
    return float(s) if np.ndim(s) == 0 else s


def distance_splits(n) -> list[np.ndarray]:
    """Masks of held-out runs: the largest 1, 2, 3... sizes, each split keeping MIN_FIT_SIZES sizes to fit
    (at most MAX_DISTANCE_SPLITS, cut at evenly spaced log N when the ladder has more)."""
    n = np.asarray(n, float)
    sizes = np.unique(n)
    cuts = sizes[MIN_FIT_SIZES - 1:-1]  # the largest size each split fits
    if len(cuts) > MAX_DISTANCE_SPLITS:
        wanted = np.linspace(np.log(cuts[0]), np.log(cuts[-1]), MAX_DISTANCE_SPLITS)
        cuts = np.unique([cuts[np.argmin(np.abs(np.log(cuts) - w))] for w in wanted])
    return [n > cut for cut in cuts[::-1]]


def distance_backtest(law: str, n, d, loss, *, grid=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out the largest 1, 2, 3... sizes (`distance_splits`), fit `law` to the rest (no bootstrap: the errors
    are what is measured) and return every held-out run's (distance, log error, unit, span log(N_max / N_min) of the
    sizes fitted): a unit is one (split, size), the runs of one size in one split sharing that split's fit. The
    distance is counted as the target's is (`count_spans`): in spans of the split's fitted ladder, the farther of N
    and D, times the split's span (so distance / span is the distance in spans)."""
    points = _distance_points(law, n, d, loss, grid=grid)
    return points[0], points[1], points[2], points[3]


def _distance_points(law: str, n, d, loss, *, grid=None) -> tuple[np.ndarray, ...]:
    """`distance_backtest`'s four arrays and each point's distance in N alone, log(N / N_max fitted)."""
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    out: list[list[np.ndarray]] = [[], [], [], [], []]
    for k, held in enumerate(distance_splits(n)):
        rest = ~held
        if rest.sum() <= PARAMETER_COUNT[law] + 1 or len(np.unique(d[rest])) < 3 or not held.any():
            continue
        fit = fit_law(law, n[rest], d[rest], loss[rest], grid=grid)
        error = np.log(loss[held]) - log_loss(law, n[held], d[held], fit.theta)[0]
        span = max(float(np.log(n[rest].max() / n[rest].min())), MIN_SPAN)
        spans = count_spans(n[held], d[held], n_max=float(n[rest].max()), span=span, d_max=float(d[rest].max()),
                            span_d=float(np.log(d[rest].max() / d[rest].min())))
        _, index = np.unique(n[held], return_inverse=True)
        for bucket, values in zip(out, (span * np.atleast_1d(spans), error, 1000 * k + index,
                                        np.full(int(held.sum()), span), np.log(n[held] / n[rest].max())), strict=True):
            bucket.append(values)
    if not out[0]:
        return np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0), np.zeros(0)
    x, e, g, w, xn = (np.concatenate(v) for v in out)
    finite = np.isfinite(x) & np.isfinite(e)
    return x[finite], e[finite], g[finite], w[finite], xn[finite]


def fit_growth(distances, errors, groups, noise) -> float:
    """The growth g of sigma(x) = sqrt(noise^2 + (g x)^2) that maximises the Gaussian likelihood of the held-out
    errors, each (split, size) unit weighted as one (its runs share the split's fit). noise: one number, or one per
    point (several ladders pooled). NaN without points. Kept for comparison: the distance model uses
    `conformal_growth` (on the published ladders the two differ by under 20%; docs/trust.md)."""
    from scipy.optimize import minimize_scalar

    x, e, groups = np.asarray(distances, float), np.asarray(errors, float), np.asarray(groups)
    if not len(x):
        return float("nan")
    _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[index]
    noise = np.maximum(np.broadcast_to(np.asarray(noise, float), x.shape), 1e-6)

    def negative_log_likelihood(g: float) -> float:
        variance = noise**2 + (g * x) ** 2
        return float(np.sum(weights * (0.5 * np.log(variance) + e**2 / (2 * variance))))

    return float(minimize_scalar(negative_log_likelihood, bounds=(0.0, 1.0), method="bounded",
                                 options={"xatol": 1e-6}).x)


def conformal_growth(distances, errors, groups, noise, *, level: float = 0.95, weights=None) -> float:
    """The smallest growth g with `level` of the held-out errors inside z sqrt(noise^2 + (g x)^2) (z the normal
    quantile of the two-sided level), each (split, size) unit weighing one (its runs share the split's fit).

    A split-conformal quantile of |error| / sigma(x) (Vovk et al.; Angelopoulos and Bates 2021), not a likelihood:
    a misspecified law errs by a bias that grows with x rather than by Gaussian noise, and a Gaussian fit counts that
    bias as a standard deviation, so its z sigma(x) lies about z times beyond the errors it was fitted to (100%
    coverage where 95% is asked; docs/trust.md). noise: one number, or one per point. weights: one per point
    (default: 1 / the size of its unit; several sources pooled pass their own). NaN without points; 1 (the search's
    bound) when even that leaves more than 1 - level outside."""
    x, e = np.asarray(distances, float), np.abs(np.asarray(errors, float))
    if not len(x):
        return float("nan")
    if weights is None:
        _, index, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
        weights = 1.0 / counts[index]
    weights = np.asarray(weights, float)
    noise = np.broadcast_to(np.asarray(noise, float), x.shape)
    z = _normal_quantile(level)

    def covered(g: float) -> float:
        return float(np.sum(weights * (e <= z * np.sqrt(noise**2 + (g * x) ** 2))) / np.sum(weights))

    if covered(0.0) >= level:
        return 0.0
    low, high = 0.0, 1.0
    if covered(high) < level:
        return high
    while high - low > 1e-6:  # coverage only grows with g: bisect for the smallest g that reaches the level
        middle = (low + high) / 2
        low, high = (low, middle) if covered(middle) >= level else (middle, high)
    return float(high)


def _normal_quantile(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def residual_scale(residuals) -> float:
    """The robust scale (1.4826 MAD) of log residuals."""
    residuals = np.asarray(residuals, float)
    residuals = residuals[np.isfinite(residuals)]
    return float(1.4826 * np.median(np.abs(residuals - np.median(residuals)))) if len(residuals) else 0.0


def growth_model(distances, errors, groups, spans, *, noise: float, n_max: float, span: float, sizes: int,
                 level: float = 0.95, axis: str = "N", d_max: float = float("nan"), span_d: float = float("nan"),
                 c_max: float = float("nan"), n_distances=None) -> DistanceModel:
    """The distance model from held-out (distance, error, unit, split span) points: the ladder's own growth (per
    span) with MIN_GROWTH_UNITS or more held-out sizes, else the prior (never below it when fewer units measured
    more). d_max, span_d: the ladder's largest D and its span in D, so a target is as far out as the farther of N
    and D makes it (NaN: N alone); c_max: its largest compute (reported); n_distances: each point's distance in N
    alone (for the line's "measured at")."""
    x, e, g, w = (np.asarray(v) for v in (distances, errors, groups, spans))
    measured = conformal_growth(x / np.maximum(w, MIN_SPAN), e, g, noise, level=level) if len(x) else float("nan")
    units = held_out_sizes(g)
    if units >= MIN_GROWTH_UNITS and np.isfinite(measured):
        growth, source, more = measured, "measured", 0
    else:
        growth = GROWTH_PRIOR if not np.isfinite(measured) else max(measured, GROWTH_PRIOR)
        source, more = "prior", max(1, MIN_GROWTH_UNITS + MIN_FIT_SIZES - sizes)
    return DistanceModel(noise=float(noise), growth=float(growth), measured_growth=measured, units=units,
                         source=source, n_max=float(n_max), span=max(float(span), MIN_SPAN), more_sizes=more,
                         level=level, distances=x.astype(float), errors=e.astype(float), groups=g.astype(int),
                         spans=w.astype(float), axis=axis, d_max=float(d_max),
                         # a D range not finite (D_min 0) with a finite d_max: D still counts, in MIN_SPAN units
                         span_d=max(float(span_d), MIN_SPAN) if np.isfinite(span_d)
                         else (MIN_SPAN if np.isfinite(d_max) else float("nan")),
                         c_max=float(c_max), d_range=float(span_d),
                         n_distances=np.zeros(0) if n_distances is None else np.asarray(n_distances, float))


def held_out_sizes(groups) -> int:
    """Distinct held-out sizes among the units (a size held out by several splits counts once): units of one
    split are its sizes in order, so the largest split's unit count is the number of distinct sizes."""
    groups = np.asarray(groups, int)
    if not len(groups):
        return 0
    per_split = {}
    for g in np.unique(groups):
        per_split.setdefault(int(g) // 1000, set()).add(int(g) % 1000)
    return max(len(v) for v in per_split.values())


def distance_model(law: str, n, d, loss, *, fit=None, grid=None, level: float = 0.95) -> DistanceModel:
    """The distance model of a table law on runs (N, D, loss) (`distance_backtest`, `growth_model`); `fit`: the
    full fit (its residuals give the noise; refitted when None)."""
    check_law(law)
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    if fit is None:
        fit = fit_law(law, n, d, loss, grid=grid)
    noise = residual_scale(log_residuals(law, fit, n, d, loss))
    x, e, g, w, xn = _distance_points(law, n, d, loss, grid=grid)
    return growth_model(x, e, g, w, noise=noise, n_max=float(n.max()), span=float(np.log(n.max() / n.min())),
                        sizes=len(np.unique(n)), level=level, d_max=float(d.max()),
                        span_d=float(np.log(d.max() / d.min())), c_max=float(np.max(6 * n * d)), n_distances=xn)


# ------------------------------------------------------------------ the profile where the bootstrap collapses

E_AT_BOUND = 0.05
"""E below this share of the lowest loss is at its bound 0: the share analysis/table_fit.E_AT_ZERO flags (kept here
too because table_fit imports this module; tests/test_distance.py holds them equal)."""
COLLAPSE_SHARE = 0.9
"""The bootstrap has collapsed onto E's bound 0 when E is there in this share of its members or more."""
PROFILE_POINTS = 25
"""Values of E, from 0 to PROFILE_TOP of the lowest loss, at which the objective is minimised over the rest."""
PROFILE_TOP = 0.98
REFUSE_SHARE = 0.9
"""Admitted E reaching this share of the lowest loss: the ladder cannot bound the floor at all."""


@dataclass(frozen=True)
class Profile:
    """The objective's profile over E (every other parameter refitted at each fixed E) and what the E values it
    admits predict at the target: the interval a bootstrap collapsed onto E = 0 cannot give."""

    e_values: np.ndarray = field(repr=False)
    objective: np.ndarray = field(repr=False)
    admitted: np.ndarray = field(repr=False)
    """E values whose objective is within `threshold`."""
    loss: np.ndarray = field(repr=False)
    """(K, m) the law's loss at each target for each E."""
    n_opt: np.ndarray = field(repr=False)
    d_opt: np.ndarray = field(repr=False)
    """(K,) the compute-optimal allocation at target_flops for each E (empty without target_flops)."""
    threshold: float
    share: float
    """Bootstrap members with E at its bound."""
    noise: float
    """Robust scale of the log residuals: a measured run's noise about the law's loss."""
    refused: bool
    """The admitted E reach REFUSE_SHARE of the lowest loss: the ladder cannot bound the floor at all."""
    run_next: str
    level: float = 0.95

    def e_range(self) -> tuple[float, float]:
        """The smallest and largest admitted E."""
        admitted = self.e_values[self.admitted]
        return float(admitted.min()), float(admitted.max())

    def loss_range(self, *, measured: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the loss at each target over the admitted E; measured: widened by a run's noise."""
        from scipy.stats import norm

        rows = self.loss[self.admitted]
        spread = np.exp(norm.ppf(0.5 + self.level / 2) * self.noise) if measured else 1.0
        return rows.min(axis=0) / spread, rows.max(axis=0) * spread

    def widen(self, name: str, interval: Interval) -> Interval:
        """`interval` (of "loss" at the first target, "n_opt" or "d_opt") widened to contain the profile's range."""
        if name == "loss":
            low, high = (float(v[0]) for v in self.loss_range(measured=False))
        else:
            values = (self.n_opt if name == "n_opt" else self.d_opt)[self.admitted]
            values = values[np.isfinite(values)]
            if not len(values):
                return interval
            low, high = float(values.min()), float(values.max())
        return Interval(interval.value, float(np.nanmin([interval.low, low])), float(np.nanmax([interval.high, high])))

    def line(self) -> str:
        """What the profile admits and what to run next."""
        low, high = self.e_range()
        loss_low, loss_high = (float(v[0]) for v in self.loss_range(measured=False))
        head = (f"profile: E is at its bound 0 in {self.share:.0%} of the bootstrap members, so the bootstrap cannot "
                f"say how high the floor may be; the objective (every other parameter refitted) admits E in "
                f"[{low:.3g}, {high:.3g}] within its {self.level:.0%} threshold")
        if self.refused:
            head += (", up to the lowest loss: the ladder cannot bound the floor, and the intervals are not narrowed "
                     f"below what any such E allows (L at the target {loss_low:.4g}-{loss_high:.4g})")
        else:
            head += f"; L at the target over them {loss_low:.4g}-{loss_high:.4g}, the intervals widened to contain it"
        return f"{head}; run next: {self.run_next}"

    def as_dict(self) -> dict:
        """The profile as --json writes it."""
        low, high = self.e_range()
        loss_low, loss_high = (float(v[0]) for v in self.loss_range(measured=False))
        payload = {"share_at_bound": self.share, "e_admitted": [low, high], "refused": self.refused,
                   "threshold": self.threshold, "loss_range": [loss_low, loss_high], "run_next": self.run_next,
                   "line": self.line()}
        if len(self.n_opt):
            admitted = self.n_opt[self.admitted], self.d_opt[self.admitted]
            payload["n_opt_range"] = [float(np.nanmin(admitted[0])), float(np.nanmax(admitted[0]))]
            payload["d_opt_range"] = [float(np.nanmin(admitted[1])), float(np.nanmax(admitted[1]))]
        return payload


def collapsed_share(fit, loss) -> float:
    """The share of the bootstrap members (the fit itself without any) whose E is at its bound 0."""
    return e_at_bound_share(fit.theta, fit.bootstrap, loss)


def e_at_bound_share(theta, members, loss) -> float:
    """The share of the members (theta (P,) itself without any) of a table law (log E third) whose E is at its bound 0:
    below E_AT_BOUND of the lowest loss."""
    floor = E_AT_BOUND * float(np.min(loss))
    log_e = np.atleast_2d(members)[:, 2] if len(members) else np.atleast_1d(np.asarray(theta)[2])
    return float(np.mean(np.exp(log_e) < floor))


def _profile_residual(x, theta, free, law, n, d, log_l) -> np.ndarray:
    """log L observed - log L of `theta` with its `free` entries set to x (a failed evaluation: a large residual)."""
    theta = theta.copy()
    theta[free] = x
    with np.errstate(all="ignore"):
        r = log_l - log_loss(law, n, d, theta)[0]
    return np.where(np.isfinite(r), r, 1e3)


def profile_target(law: str, fit, n, d, loss, *, target_n, target_d=None, target_flops: float | None = None,
                   level: float = 0.95) -> Profile | None:
    """Where the bootstrap collapsed onto E = 0 (COLLAPSE_SHARE of its members or more), the profile of the Huber
    objective over E: at each E from 0 to PROFILE_TOP of the lowest loss the other parameters are refitted, and an
    E is admitted when its objective is within F_min (1 + F_{1, n-p}(level) / (n - p)) (the likelihood-ratio
    interval of a least-squares fit; for a Huber fit with most residuals in its linear part it is twice as wide as
    a Laplace likelihood's, i.e. conservative). The target's values over the admitted E are the interval the
    bootstrap cannot give. None when the bootstrap did not collapse."""
    from scipy.optimize import least_squares
    from scipy.stats import f as f_distribution

    from proxyscale.analysis.fit import HUBER_DELTA, MAX_EXPONENT, MIN_EXPONENT, huber
    from proxyscale.analysis.laws import compute_optimal_allocation
    from proxyscale.analysis.overtraining import MAX_ETA, MIN_ETA

    check_law(law)
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    share = collapsed_share(fit, loss)
    if share < COLLAPSE_SHARE:
        return None
    p = PARAMETER_COUNT[law]
    log_l = np.log(loss)
    free = [k for k in range(p) if k != 2]  # theta[2] is log E in both laws
    high = [np.inf, np.inf] + ([MAX_EXPONENT, MAX_EXPONENT] if law == "chinchilla" else [MAX_ETA])
    low = [-np.inf, -np.inf] + ([MIN_EXPONENT, MIN_EXPONENT] if law == "chinchilla" else [MIN_ETA])
    e_values = np.linspace(0.0, PROFILE_TOP, PROFILE_POINTS) * float(loss.min())
    theta = np.asarray(fit.theta, float).copy()
    thetas, objective = [], []
    for e in e_values:
        theta[2] = np.log(max(e, 1e-12 * float(loss.min())))
        start = np.clip(theta[free], np.array(low) + 1e-9, np.array(high) - 1e-9)
        arguments = (theta.copy(), free, law, n, d, log_l)
        result = least_squares(_profile_residual, start, bounds=(low, high), loss="huber", f_scale=HUBER_DELTA,
                               max_nfev=400, args=arguments)
        theta[free] = result.x
        thetas.append(theta.copy())
        objective.append(float(huber(_profile_residual(result.x, *arguments), HUBER_DELTA).sum()))
    thetas, objective = np.array(thetas), np.array(objective)
    f_min = min(float(np.min(objective)), float(getattr(fit, "objective", np.inf)))
    dof = max(len(loss) - p, 1)
    threshold = f_min * (1 + float(f_distribution.ppf(level, 1, dof)) / dof)
    admitted = objective <= threshold
    admitted[0] |= not admitted.any()
    target_n = np.atleast_1d(np.asarray(target_n, float))
    target_d = np.atleast_1d(np.asarray(target_d if target_d is not None else target_n, float))
    with np.errstate(all="ignore"):
        predicted = np.exp(log_loss(law, target_n, target_d, thetas))
        n_opt = d_opt = np.zeros(0)
        if target_flops is not None:
            natural = (fit.natural(thetas))
            n_opt, d_opt = compute_optimal_allocation(target_flops, A=natural["A"], B=natural["B"],
                                                      alpha=natural["alpha"], beta=natural["beta"])
            predicted = np.exp(log_loss(law, n_opt, d_opt, thetas).diagonal())[:, None]
    noise = residual_scale(log_residuals(law, fit, n, d, loss))
    run_next = (f"a size above the ladder's largest (N > {n.max():.3g}), or longer runs of the largest sizes, to show "
                "where the loss flattens; then the fit can place E and the profile narrows")
    return Profile(e_values=e_values, objective=objective, admitted=admitted, loss=predicted, n_opt=np.asarray(n_opt),
                   d_opt=np.asarray(d_opt), threshold=threshold, share=share, noise=noise,
                   refused=bool(e_values[admitted].max() >= REFUSE_SHARE * float(loss.min())), run_next=run_next,
                   level=level)



def calibrated_at_flops(law: str, fit, n, d, loss, calibration: Calibration | None, flops: float, *, seed: int = 0,
                        level: float = 0.95) -> tuple[Calibration | None, Profile | None]:
    """A table fit's calibration carried to its compute-optimal (N, D) at `flops` (`Calibration.at_target`, with the
    distance model it already holds: no second backtest), and the profile over E there where the bootstrap collapsed
    onto E = 0 (`profile_target`; None otherwise). The engine of `fit --target-flops` and `proxyscale.fit`."""
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    raw = fit.compute_optimal(flops)
    target = (float(raw["n_opt"].value), float(raw["d_opt"].value))
    if not all(np.isfinite(v) and v > 0 for v in target):
        return calibration, None
    if calibration is not None and calibration.distance is not None:
        residuals = log_residuals(law, fit, n, d, loss)
        band = predict_loss(law, fit, [target[0]], [target[1]], residuals, level=level, seed=seed)
        calibration = calibration.at_target(calibration.distance, target[0], float(np.log(band.value[0])),
                                            float(np.log(band.low[0])), float(np.log(band.high[0])),
                                            d_target=target[1])
    profile = profile_target(law, fit, n, d, loss, target_n=[target[0]], target_d=[target[1]], target_flops=flops,
                             level=level)
    return calibration, profile

# ------------------------------------------------------------------------ curve forms and their backtest

CURVE_FORMS = (("tissue", "relative"), ("tissue", "step"), ("mpl", "power"))
"""Candidate (form, clock) pairs for whole curves: the Tissue form under two clocks, the multi-power law."""
CURVE_LAWS = ("auto", "tissue", "mpl")
CURVE_PARAMETERS = {"tissue": 8, "mpl": 10}
LONGEST_RATIO = 1.5
"""The 'longest runs' are those within this factor of the longest (a 23,920-step and a 23,936-step run are one length)."""
LATEST_SHARE = 0.25
"""With one run length, the 'longest runs' split holds out the last quarter of every curve's points."""


def check_curve_law(law: str, clock: str = "auto") -> None:
    if law not in CURVE_LAWS:
        raise ValueError(f"law: {law!r} is not one of {list(CURVE_LAWS)}")
    from proxyscale.analysis.curve_law import CLOCKS

    if clock not in (*CLOCKS, "auto"):
        raise ValueError(f"clock: {clock!r} is not one of {list(CLOCKS) + ['auto']}")


def candidate_forms(law: str, clock: str = "auto") -> list[tuple[str, str]]:
    """The (form, clock) pairs `law` chooses between."""
    check_curve_law(law, clock)
    if law == "mpl":
        return [("mpl", "power")]
    tissue = [("tissue", clock)] if clock != "auto" else [f for f in CURVE_FORMS if f[0] == "tissue"]
    return tissue if law == "tissue" else tissue + [("mpl", "power")]


def fit_curve_form(form: str, clock: str, curves, *, skip_fraction: float = 0.1, bootstrap: int = 0, seed: int = 0,
                   level: float = 0.95, groups=None, warm=None, label_weights=None):
    """Fit one curve form (a CurveLawFit or a MultiPowerFit: the same predict / mare / optimal_members).
    warm, label_weights: tissue's warm start (fit_curve_law); mpl always fits from scratch."""
    if form == "mpl":
        from proxyscale.analysis.multipower import fit_multipower

        return fit_multipower(curves, skip_fraction=skip_fraction, bootstrap=bootstrap, seed=seed, level=level,
                              groups=groups)
    from proxyscale.analysis.curve_law import fit_curve_law

    return fit_curve_law(curves, clock=clock, skip_fraction=skip_fraction, bootstrap=bootstrap, seed=seed,
                         level=level, groups=groups, warm=warm, label_weights=label_weights)


@dataclass(frozen=True)
class CurveSplit:
    name: str
    train: list
    """Curves fitted (whole, or truncated to their earlier points)."""
    held: list
    """(curve, steps) pairs scored."""


def curve_splits(curves, skip_fraction: float = 0.1) -> list[CurveSplit]:
    """The backtest's splits: the largest model size held out (four or more sizes), and the longest runs
    held out (with one run length: the last quarter of every curve's points)."""
    import dataclasses

    curves = list(curves)
    splits = []
    sizes = sorted({c.n_params for c in curves if np.isfinite(c.n_params)})
    if len(sizes) >= 4:  # the rest keeps three sizes: a size term of three parameters is identified
        largest = [c for c in curves if c.n_params == sizes[-1]]
        rest = [c for c in curves if c.n_params != sizes[-1]]
        held = [(c, c.steps[c.past_start(skip_fraction)]) for c in largest]
        splits.append(CurveSplit(f"largest size (N = {sizes[-1]:.3g}) held out", rest, held))
    length = {id(c): len(c.lrs) * c.batch_tokens for c in curves}
    longest = max(length.values())
    if any(v < longest / LONGEST_RATIO for v in length.values()):
        held_curves = [c for c in curves if length[id(c)] >= longest / LONGEST_RATIO]
        rest = [c for c in curves if length[id(c)] < longest / LONGEST_RATIO]
        sizes_rest = {c.n_params for c in rest}
        if len(sizes) >= 2:  # a size the rest does not have cannot be predicted by a fit over the rest's sizes
            held_curves = [c for c in held_curves if c.n_params in sizes_rest or len(sizes_rest) >= 2]
        held = [(c, c.steps[c.past_start(skip_fraction)]) for c in held_curves]
        unit = "tokens" if curves[0].batch_tokens != 1 else "steps"
        splits.append(CurveSplit(f"longest runs (>= {longest / LONGEST_RATIO:.3g} {unit}) held out", rest, held))
    else:
        train, held = [], []
        for c in curves:
            keep = c.past_start(skip_fraction)
            cut = c.steps[keep].max() * (1 - LATEST_SHARE) if keep.any() else 0
            early = c.steps <= cut
            if early.sum() >= 2:
                train.append(dataclasses.replace(c, steps=c.steps[early], losses=c.losses[early]))
            held.append((c, c.steps[keep & ~early]))
        splits.append(CurveSplit(f"latest {LATEST_SHARE:.0%} of every curve held out", train, held))
    return [s for s in splits if s.train and sum(len(steps) for _, steps in s.held)]


def curve_band(fit, form: str, train, held, *, level: float, seed: int, skip_fraction: float):
    """(log measured, log point, log low, log high) at the `held` (curve, steps) points of `fit`: its bootstrap
    members plus residuals of its fit to `train` drawn as noise (`predictive_band`), before any calibration."""
    residuals = curve_log_residuals(fit, train, skip_fraction)
    residuals = residuals[np.isfinite(residuals)]
    noise = noise_draws(residuals, CURVE_PARAMETERS[form]) if len(residuals) > CURVE_PARAMETERS[form] else None
    out = [[], [], [], []]
    for c, steps in held:
        if not len(steps):
            continue
        with np.errstate(all="ignore"):
            point = np.log(fit.predict(c, steps))
            members = np.log(fit.predict(c, steps, members=True)) if len(fit.bootstrap) else point[None]
        members = members[np.isfinite(members).all(axis=1)] if len(members) else point[None]
        if not len(members):
            members = point[None]
        low, high = predictive_band(point, members, noise, level=level, seed=seed)
        index = np.searchsorted(c.steps, steps)
        for bucket, values in zip(out, (np.log(c.losses[index]), point, low, high), strict=True):
            bucket.append(values)
    return tuple(np.concatenate(b) if b else np.zeros(0) for b in out)


@dataclass(frozen=True)
class CurveBacktest:
    """The backtest table of the curve forms, the form kept and its calibration."""

    rows: list
    """One dict per (form, clock, split): held-out curves and points, mean |log error|."""
    scores: dict
    """(form, clock) -> mean over the splits of the held-out mean |log error| (inf: a fit failed)."""
    chosen: tuple[str, str]
    calibration: Calibration
    reason: str

    def as_dict(self) -> dict:
        return {"rows": self.rows, "scores": {f"{f}/{c}": s for (f, c), s in self.scores.items()},
                "chosen": {"form": self.chosen[0], "clock": self.chosen[1]}, "calibration": self.calibration.as_dict(),
                "reason": self.reason}

    def lines(self) -> list[str]:
        out = ["backtest (fit the rest, predict what was held out; mean |log error| of the held-out points):"]
        for row in self.rows:
            mark = "*" if (row["form"], row["clock"]) == self.chosen else " "
            error = "failed" if not np.isfinite(row["error"]) else f"{100 * row['error']:.3f}%"
            out.append(f" {mark} {row['form']:>6} {row['clock']:<8} {row['split']:<48} {row['points']:>6} points  {error}")
        out.append(f"  kept: {self.chosen[0]} ({self.chosen[1]} clock): {self.reason}")
        out.append("  " + self.calibration.line())
        return out


def backtest_curve_forms(curves, *, forms=CURVE_FORMS, skip_fraction: float = 0.1, bootstrap: int = MIN_MEMBERS,
                         seed: int = 0, level: float = 0.95, calibrate: bool = True,
                         distance: bool = True) -> CurveBacktest:
    """Score every (form, clock) by how it predicts what each split holds out; keep the lowest mean error and
    calibrate its band on the same splits (the bootstrap of each split's fit, `bootstrap` members or more;
    calibrate=False: the choice alone, factor 1). distance (with calibrate): also measure how the kept form's
    held-out error grows with the distance (`curve_distance_model`: the largest 1, 2, 3... sizes held out, the prior
    on a short ladder), so a target's band can be carried out to it (`carry_to_target`)."""
    splits = curve_splits(curves, skip_fraction)
    forms = list(forms)
    rows, scores = [], {}
    point_fits: dict = {}  # (form, clock, the train curves) -> its point fit, reused by the distance backtest
    for form, clock in forms:
        errors = []
        for split in splits:
            try:
                fit = fit_curve_form(form, clock, split.train, skip_fraction=skip_fraction)
                point_fits[(form, clock, _curve_key(split.train))] = fit
                measured, point, _, _ = curve_band(fit, form, split.train, split.held, level=level, seed=seed,
                                                    skip_fraction=skip_fraction)
                error = float(np.mean(np.abs(measured - point)))
            except (ValueError, np.linalg.LinAlgError):
                error = float("inf")
            points = int(sum(len(s) for _, s in split.held))
            rows.append({"form": form, "clock": clock, "split": split.name, "points": points, "error": error})
            errors.append(error if np.isfinite(error) else np.inf)
        scores[(form, clock)] = float(np.mean(errors)) if errors else float("nan")
    if not splits:
        calibration = Calibration.none("no split of these curves leaves a fit")
        if calibrate and distance:
            calibration = replace(calibration, distance=curve_distance_model(
                *forms[0], curves, skip_fraction=skip_fraction, level=level, fits=point_fits))
        return CurveBacktest(rows, scores, forms[0], calibration,
                             "no backtest split (one curve, or too few points): the first candidate")
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    chosen = min(finite, key=finite.get) if finite else forms[0]
    reason = ("the lowest held-out error" if len(forms) > 1 else "the only candidate asked for")
    pooled = [[], [], [], []]
    names = []
    # The held-out points of one lineage share its offset (a run's seed, a fork's parent): the band may be narrowed
    # only on enough independent lineages, not on many correlated points (a single held-out width of 33 eval points
    # once narrowed a band to 0.80 and lost the truth at the target; bench_planner, low-E noisy).
    lineages: set[str] = set()
    for split in splits if calibrate else []:
        try:
            fit = fit_curve_form(*chosen, split.train, skip_fraction=skip_fraction, bootstrap=max(bootstrap, MIN_MEMBERS),
                                 seed=seed, level=level)
        except (ValueError, np.linalg.LinAlgError):
            continue
        for bucket, values in zip(pooled, curve_band(fit, chosen[0], split.train, split.held, level=level, seed=seed,
                                                      skip_fraction=skip_fraction), strict=True):
            bucket.append(values)
        names.append(split.name.split(" (")[0].split(" held")[0])
        lineages.update(c.label for c, steps in split.held if len(steps))
    if not names:
        calibration = Calibration.none("not asked for" if not calibrate else
                                       "the kept form could not be refitted on the splits")
    else:
        measured, point, low, high = (np.concatenate(b) for b in pooled)
        finite_points = np.isfinite(measured) & np.isfinite(point) & np.isfinite(low) & np.isfinite(high)
        calibration = Calibration.measure(measured[finite_points], point[finite_points], low[finite_points],
                                          high[finite_points], split=" + ".join(names), level=level,
                                          independent=len(lineages))
    if calibrate and distance:
        calibration = replace(calibration, distance=curve_distance_model(
            *chosen, curves, skip_fraction=skip_fraction, level=level, fits=point_fits))
    return CurveBacktest(rows, scores, chosen, calibration, reason)


def _curve_key(curves) -> tuple:
    """The identity of a list of curves (a split's train set), for reusing a fit to the same curves."""
    return tuple(sorted(id(c) for c in curves))


def curve_distance_points(form: str, clock: str, curves, *, skip_fraction: float = 0.1,
                          fits: dict | None = None) -> tuple[np.ndarray, ...]:
    """The distance backtest of a curve form: hold out the curves of the largest 1, 2, 3... sizes
    (`distance_splits` over the curves' N, each split keeping MIN_FIT_SIZES sizes), fit the form to the rest (a
    point fit; `fits` holds fits already made, keyed by (form, clock, `_curve_key(train)`)) and score every held-out
    point past skip_fraction. Returns (distance, log error, unit, split span, distance in N alone) as
    `distance_backtest` does: a point's distance counts the farther of N (over the split's largest size) and D (its
    tokens, step x batch_tokens, over the largest point the split fitted) in spans of the split's fitted ladder, the
    way a target's is counted; a unit is one (split, size)."""
    curves = list(curves)
    n = np.array([c.n_params for c in curves], float)
    empty = np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0), np.zeros(0)
    if not np.isfinite(n).all():
        return empty
    out: list[list[np.ndarray]] = [[], [], [], [], []]
    for k, held in enumerate(distance_splits(n)):
        train = [c for c, h in zip(curves, held, strict=True) if not h]
        key = (form, clock, _curve_key(train))
        try:
            fit = fits[key] if fits is not None and key in fits else fit_curve_form(form, clock, train,
                                                                                   skip_fraction=skip_fraction)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if fits is not None:
            fits[key] = fit
        n_max, d_min, d_max = _curve_ranges(train, skip_fraction)
        span = max(float(np.log(n_max / min(c.n_params for c in train))), MIN_SPAN)
        sizes = np.unique(n[held])
        for c in (c for c, h in zip(curves, held, strict=True) if h):
            keep = c.past_start(skip_fraction)
            if not keep.any():
                continue
            with np.errstate(all="ignore"):
                error = np.log(c.losses[keep]) - np.log(fit.predict(c, c.steps[keep]))
            tokens = c.steps[keep] * c.batch_tokens
            spans = np.atleast_1d(count_spans(np.full(len(tokens), c.n_params), tokens, n_max=n_max, span=span,
                                              d_max=d_max, span_d=float(np.log(d_max / d_min))))
            unit = 1000 * k + int(np.searchsorted(sizes, c.n_params))
            for bucket, values in zip(out, (span * spans, error, np.full(len(error), unit), np.full(len(error), span),
                                            np.full(len(error), np.log(c.n_params / n_max))), strict=True):
                bucket.append(values)
    if not out[0]:
        return empty
    x, e, g, w, xn = (np.concatenate(v) for v in out)
    finite = np.isfinite(x) & np.isfinite(e)
    return x[finite], e[finite], g[finite].astype(int), w[finite], xn[finite]


def _curve_ranges(curves, skip_fraction: float) -> tuple[float, float, float]:
    """(largest N, smallest and largest tokens of the points past skip_fraction) of curves (N NaN: one size)."""
    tokens = np.concatenate([c.steps[c.past_start(skip_fraction)] * c.batch_tokens for c in curves]
                            + [np.zeros(0)])
    tokens = tokens[tokens > 0]
    sizes = np.array([c.n_params for c in curves], float)
    n_max = float(np.max(sizes)) if np.isfinite(sizes).any() else float("nan")
    if not len(tokens):
        return n_max, float("nan"), float("nan")
    return n_max, float(tokens.min()), float(tokens.max())


def curve_distance_model(form: str, clock: str, curves, *, fit=None, skip_fraction: float = 0.1,
                         level: float = 0.95, fits: dict | None = None) -> DistanceModel:
    """The distance model of a curve form (`curve_distance_points`, `growth_model`: the ladder's own growth with
    MIN_GROWTH_UNITS held-out sizes, else the prior, said): the one mechanism of the table laws, on curves. The
    noise (the spread at distance 0) is the robust scale of `fit`'s log residuals past skip_fraction (fit: the
    full fit; None: the fit to the curves below the largest size, from `fits` when there, else to every curve)."""
    curves = list(curves)
    x, e, g, w, xn = curve_distance_points(form, clock, curves, skip_fraction=skip_fraction, fits=fits)
    if fit is None:
        sizes = sorted({c.n_params for c in curves if np.isfinite(c.n_params)})
        below = [c for c in curves if c.n_params != sizes[-1]] if len(sizes) >= 2 else []
        fit = (fits or {}).get((form, clock, _curve_key(below))) if below else None
        fit = fit if fit is not None else fit_curve_form(form, clock, curves, skip_fraction=skip_fraction)
    n_max, d_min, d_max = _curve_ranges(curves, skip_fraction)
    sizes = np.array(sorted({c.n_params for c in curves if np.isfinite(c.n_params)}), float)
    span = float(np.log(sizes[-1] / sizes[0])) if len(sizes) else MIN_SPAN
    finals = [c.n_params * len(c.lrs) * c.batch_tokens for c in curves if np.isfinite(c.n_params)]
    return growth_model(x, e, g, w, noise=curve_noise(fit, curves, skip_fraction), n_max=n_max, span=span,
                        sizes=len(sizes), level=level, d_max=d_max,
                        span_d=float(np.log(d_max / d_min)) if np.isfinite(d_max) else float("nan"),
                        c_max=6 * float(max(finals)) if finals else float("nan"), n_distances=xn)


def curve_log_residuals(fit, curves, skip_fraction: float = 0.1) -> np.ndarray:
    """log measured - log predicted at every point of `curves` past skip_fraction (NaN where the fit has none)."""
    residuals = []
    for c in curves:
        keep = c.past_start(skip_fraction)
        if keep.any():
            with np.errstate(all="ignore"):
                residuals.append(np.log(c.losses[keep]) - np.log(fit.predict(c, c.steps[keep])))
    return np.concatenate(residuals) if residuals else np.zeros(0)


def curve_noise(fit, curves, skip_fraction: float = 0.1) -> float:
    """The robust scale (1.4826 MAD) of a curve fit's log residuals past skip_fraction: a new point's own noise."""
    residuals = curve_log_residuals(fit, curves, skip_fraction)
    return residual_scale(residuals) if len(residuals) else 0.0


def carry_to_target(calibration: Calibration, at: dict[str, Interval]) -> tuple[Calibration, dict[str, Interval]]:
    """A curve law's N_opt, D_opt and L(C*) (`compute_optimal`'s intervals, from its bootstrap members) calibrated
    and carried to the target: with a distance model, L(C*)'s band is floored at the growth's spread at the
    target's distance (the farther of N_opt and D_opt in spans; the growth alone, as the members give the law's
    mean) and every interval widened by the same ratio (`Calibration.at_target`, `target_interval`); without one,
    the one-step factor alone. Returns the calibration at the target (its line says the distance) and the
    intervals."""
    loss, n_opt, d_opt = at.get("loss"), at.get("n_opt"), at.get("d_opt")
    usable = calibration.distance is not None and all(
        v is not None and np.isfinite([v.value, v.low, v.high]).all() and v.value > 0 and v.low > 0
        for v in (loss,)) and all(v is not None and np.isfinite(v.value) and v.value > 0 for v in (n_opt, d_opt))
    if not usable:
        return calibration, {k: calibration.interval(v) for k, v in at.items()}
    point = float(np.log(loss.value))
    carried = calibration.at_target(calibration.distance, float(n_opt.value), point, min(float(np.log(loss.low)), point),
                                    max(float(np.log(loss.high)), point), d_target=float(d_opt.value), noise=False)
    out = {k: carried.interval(v) for k, v in at.items()}
    out["loss"] = carried.target_interval(loss, noise=False)
    return carried, out


def fit_curves(curves, *, law: str = "auto", clock: str = "auto", skip_fraction: float = 0.1,
               bootstrap: int = MIN_MEMBERS, mpl_bootstrap: int | None = None, seed: int = 0, level: float = 0.95,
               groups=None):
    """The curve form `law` chooses by the backtest (`backtest_curve_forms`), fitted to every curve with its
    bootstrap: (fit, CurveBacktest). Intervals of its predictions go through `backtest.calibration`.
    mpl_bootstrap: members when the multi-power law is kept (default `bootstrap`; its refits cost more)."""
    backtest = backtest_curve_forms(curves, forms=candidate_forms(law, clock), skip_fraction=skip_fraction,
                                    bootstrap=MIN_MEMBERS, seed=seed, level=level)
    members = mpl_bootstrap if backtest.chosen[0] == "mpl" and mpl_bootstrap is not None else bootstrap
    fit = fit_curve_form(*backtest.chosen, curves, skip_fraction=skip_fraction, bootstrap=members, seed=seed,
                         level=level, groups=groups)
    model = backtest.calibration.distance
    if model is not None:  # the spread at distance 0: the full fit's residuals, not the split's it was measured with
        backtest = replace(backtest, calibration=replace(backtest.calibration, distance=replace(
            model, noise=curve_noise(fit, curves, skip_fraction))))
    return fit, backtest
