"""One law fitted to a table of final losses: the engine behind `proxyscale fit` and `proxyscale.fit`.

Arrays in (N, D, loss, and FLOPs for the isoFLOP law), a `TableFit` out: the fitted parameters with their
bootstrap intervals, predictions and the compute-optimal allocation, each scaled by the backtest
calibration (analysis/predictive.py) when one was measured, and the same dictionary `fit --json` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from proxyscale.analysis.fit import Interval

TABLE_LAWS = ("chinchilla", "overtraining", "isoflop")
E_AT_ZERO = 0.05
"""A fitted E below this share of the lowest loss is at its bound 0: the fit has found no floor."""
EXPONENT_SLACK = 1e-3
MIN_LEVELS = 3
"""A power term with its constant and exponent needs at least this many distinct values of its variable."""
RIDGE_SHARE = 0.005
"""A power term that changes by less than this share of the lowest loss across the ladder is on a ridge."""


@dataclass(frozen=True)
class Flag:
    """A parameter the data cannot tell: at a bound, or a term from too few distinct sizes, with what to run."""

    parameter: str
    message: str
    run_next: str

    def as_dict(self) -> dict[str, str]:
        """{"parameter", "message", "run_next"}, as `fit --json` writes a flag."""
        return {"parameter": self.parameter, "message": self.message, "run_next": self.run_next}


def _share(samples, test) -> str:
    samples = np.asarray(samples, float)
    return f"; {np.mean(test(samples)):.0%} of the bootstrap members there too" if samples.size else ""


def identification_flags(law: str, params: dict[str, float], members: dict[str, np.ndarray], n, d,
                         loss) -> list[Flag]:
    """Every parameter of a chinchilla or overtraining fit that sits at a bound, and every power term fitted from
    fewer than MIN_LEVELS distinct sizes (or token counts), each with the runs that would identify it."""
    from proxyscale.analysis.fit import MAX_EXPONENT, MIN_EXPONENT
    from proxyscale.analysis.overtraining import MAX_ETA, MIN_ETA

    flags = []
    floor = E_AT_ZERO * float(np.min(loss))
    if params["E"] < floor:
        flags.append(Flag("E", f"E = {params['E']:.3g} is at its bound 0 (below {E_AT_ZERO:.0%} of the lowest loss): "
                               "the ladder shows no floor, so the prediction beyond it rests on the power terms alone"
                               + _share(members.get("E", []), lambda v: v < floor),
                          "a larger size, or longer runs of the largest sizes, to show where the loss flattens"))
    bounds = ({"alpha": (MIN_EXPONENT, MAX_EXPONENT), "beta": (MIN_EXPONENT, MAX_EXPONENT)} if law == "chinchilla"
              else {"eta": (MIN_ETA, MAX_ETA)})
    for name, (low, high) in bounds.items():
        for bound in (low, high):
            if abs(params[name] - bound) < EXPONENT_SLACK:
                flags.append(Flag(name, f"{name} = {params[name]:.3g} is at its limit {bound:g}"
                                        + _share(members.get(name, []), lambda v, b=bound: abs(v - b) < EXPONENT_SLACK),
                                  "sizes (or token counts) spread wider, below and above the ladder's"))
    if law == "chinchilla":
        # A ridge: a term that barely changes across the ladder, so its constant and exponent trade freely.
        for name, constant, exponent, values, variable in (("A", "A", "alpha", n, "N"), ("B", "B", "beta", d, "D")):
            term = params[constant] / np.asarray(values, float) ** params[exponent]
            if np.ptp(term) < RIDGE_SHARE * float(np.min(loss)):
                flags.append(Flag(name, f"the {variable} term {constant}/{variable}^{exponent} changes by "
                                        f"{np.ptp(term):.2g} across the ladder (< {RIDGE_SHARE:.1%} of the loss): "
                                        f"{constant} and {exponent} lie on a ridge the data cannot resolve",
                                  f"a wider span of {variable} (below and above the ladder's)"))
    for variable, values, term in (("N", n, "A, alpha" if law == "chinchilla" else "a, eta"),
                                   ("D", d, "B, beta" if law == "chinchilla" else "b, eta")):
        levels = len(np.unique(np.asarray(values, float)))
        if levels < MIN_LEVELS:
            flags.append(Flag(term.split(",")[0], f"the {variable} term ({term}) is fitted from {levels} distinct "
                                                  f"{variable} value{'s' if levels != 1 else ''}: with E it is not "
                                                  "identified (a ridge of equally good fits)",
                              f"{MIN_LEVELS - levels} more {'size' if variable == 'N' else 'token count'}"
                              f"{'s' if MIN_LEVELS - levels > 1 else ''}, one below and one above the ladder's"))
    return flags


@dataclass(frozen=True)
class TableFit:
    """A fitted law with intervals. `parameters` and `predict` / `compute_optimal` are what a notebook reads;
    `to_dict` is `proxyscale fit --json` (without the input's description, which the command adds)."""

    law: str
    """chinchilla (L(N, D), approach 3), overtraining (Gadre et al.'s L(C, M)) or isoflop (approach 2)."""
    fit: object = field(repr=False)
    """The underlying fit: analysis.fit.ChinchillaFit, analysis.overtraining.OvertrainingFit or
    analysis.isoflop.IsoflopFit."""
    n_points: int
    bootstrap: int
    calibration: object | None = field(default=None, repr=False)
    """analysis.predictive.Calibration measured by holding out the largest sizes, or None (not measured)."""
    window: int | None = 5
    data: dict = field(default_factory=dict, repr=False)
    """The arrays fitted (n, d, loss, flops), kept for `plot`."""

    @property
    def parameters(self) -> dict[str, Interval]:
        """Each fitted parameter with its bootstrap interval (A, B, E, alpha, beta for chinchilla)."""
        if self.law == "isoflop":
            f = self.fit
            return {"n_opt_coefficient": f.n_law.coefficient, "n_opt_exponent": f.n_law.exponent,
                    "d_opt_coefficient": f.d_law.coefficient, "d_opt_exponent": f.d_law.exponent,
                    "loss_coefficient": f.loss_law.coefficient, "loss_exponent": f.loss_law.exponent}
        return self.fit.intervals()

    def _calibrated(self, interval: Interval) -> Interval:
        return self.calibration.interval(interval) if self.calibration is not None else interval

    def predict(self, n: float, d: float) -> Interval:
        """The law's mean loss at N parameters and D tokens, with its calibrated 95% interval: the bootstrap's band scaled by the
        one-step factor and each side floored at the held-out error's spread at its distance beyond the ladder, the farther of
        N and D in spans of the ladder (the distance model's growth alone), as `proxyscale predict` gives the mean band
        (`mean_low`, `mean_high`; analysis.predictive.predict_loss). That command's `low`/`high` also hold a new run's own
        noise: use it for the interval a measured loss should fall in."""
        if self.law == "isoflop":
            raise ValueError("an isoFLOP fit predicts at a compute budget: use compute_optimal(C)")
        raw = self.fit.predict(n, d)
        calibration = self.calibration
        if calibration is None or calibration.distance is None or not all(
                np.isfinite(v) and v > 0 for v in (raw.value, raw.low, raw.high)):
            return self._calibrated(raw)
        point = np.log(raw.value)
        low, high = calibration.distance_band(float(n), point, min(np.log(raw.low), point),
                                              max(np.log(raw.high), point), noise=False, d=float(d))
        return Interval(raw.value, float(np.exp(low)), float(np.exp(high)))

    def compute_optimal(self, flops: float) -> dict[str, Interval]:
        """n_opt, d_opt and the loss there at `flops` FLOPs, each with its (calibrated) interval: carried to the
        target's distance, and containing the profile over E where the bootstrap collapsed onto E = 0
        (analysis/predictive.py)."""
        return self._at_target(flops)[0]

    def at_target(self, flops: float) -> tuple[object | None, object | None]:
        """(the calibration carried to the target's N_opt, the profile over E or None) at `flops` FLOPs
        (analysis.predictive.calibrated_at_flops; the calibration as measured for an isoFLOP fit)."""
        return self._at_target(flops)[1:]

    def _at_target(self, flops: float):
        if self.law == "isoflop":
            return {name: self._calibrated(value) for name, value in self.fit.at(flops).items()}, self.calibration, None
        from proxyscale.analysis.predictive import calibrated_at_flops

        calibration, profile = calibrated_at_flops(self.law, self.fit, self.data["n"], self.data["d"], self.data["loss"],
                                                   self.calibration, flops)
        target = {name: calibration.interval(value) if calibration is not None else value
                  for name, value in self.fit.compute_optimal(flops).items()}
        if profile is not None:
            target = {name: profile.widen(name, value) for name, value in target.items()}
        return target, calibration, profile

    def flags(self) -> list[Flag]:
        """Parameters the data cannot tell (at a bound, a term from too few sizes), each with what to run next;
        empty for an isoFLOP fit."""
        if self.law == "isoflop":
            return []
        members = self.fit.natural(self.fit.bootstrap) if len(self.fit.bootstrap) else {}
        return identification_flags(self.law, self.fit.params, members, self.data["n"], self.data["d"],
                                    self.data["loss"])

    def to_dict(self, target_flops: float | None = None) -> dict:
        """The fit as `proxyscale fit --json` prints it; with `target_flops`, the allocation there too."""
        payload: dict = {}
        if self.law == "isoflop":
            f = self.fit
            x = self.data["x"]
            payload["budgets"] = [float(b) for b in f.budgets]
            payload["window"] = self.window
            payload["budget_points"] = [
                {"budget": float(b), "sizes_used": sorted({float(v) for v in x[used]}), "at_edge": bool(edge)}
                for b, used, edge in zip(f.budgets, f.used, f.at_edge, strict=True)]
        else:
            payload["objective"] = self.fit.objective
        payload["parameters"] = {k: v.as_dict() for k, v in self.parameters.items()}
        payload["flags"] = [flag.as_dict() for flag in self.flags()]
        if self.law == "chinchilla":
            p = self.fit.params
            payload["n_opt_exponent"] = p["beta"] / (p["alpha"] + p["beta"])
        if target_flops is not None:
            target, calibration, profile = self._at_target(target_flops)
            if calibration is not None:
                payload["calibration"] = calibration.as_dict()
            if profile is not None:
                payload["profile"] = profile.as_dict()
            payload["target"] = {"flops": target_flops} | {k: v.as_dict() for k, v in target.items()}
        return payload

    def plot(self, path: str | Path, target_flops: float) -> Path:
        """The fitted frontier with its band out to `target_flops` and the points fitted (a PNG; chinchilla)."""
        if self.law != "chinchilla":
            raise ValueError(f"plot draws the L(N, D) frontier; this fit is {self.law}")
        from proxyscale.analysis.plots import plot_frontier

        return plot_frontier(self.fit, self.data["n"], self.data["d"], self.data["loss"], target_flops, path)


def fit_table(n, d, loss, *, law: str = "chinchilla", flops=None, x_is_tokens: bool = False, bootstrap: int = 1000,
              seed: int = 0, window: int | None = 5, calibrate: bool = True) -> TableFit:
    """Fit `law` to final losses. n, d: parameters and tokens per run (for isoflop, `flops` groups runs by budget
    and the parabola runs in N, or in D with `x_is_tokens`). calibrate: measure the backtest calibration that
    scales predictions (chinchilla and overtraining; the largest sizes held out, analysis/predictive.py)."""
    if law not in TABLE_LAWS:
        raise ValueError(f"law: {law!r} is not one of {list(TABLE_LAWS)}")
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    data = {"n": n, "d": d, "loss": loss}
    calibration = None
    if law == "chinchilla":
        from proxyscale.analysis.fit import fit_chinchilla

        fitted = fit_chinchilla(n, d, loss, bootstrap=bootstrap, seed=seed)
    elif law == "overtraining":
        from proxyscale.analysis.overtraining import fit_overtraining

        fitted = fit_overtraining(n, d, loss, bootstrap=bootstrap, seed=seed)
    else:
        from proxyscale.analysis.isoflop import fit_isoflop

        if flops is None:
            raise ValueError("law isoflop: give flops (runs are grouped by their FLOP budget)")
        flops = np.asarray(flops, float)
        x = d if x_is_tokens else n
        data |= {"x": x, "flops": flops}
        fitted = fit_isoflop(flops, x, loss, x_is_tokens=x_is_tokens, bootstrap=bootstrap, seed=seed, window=window)
    if calibrate and law in ("chinchilla", "overtraining"):
        from proxyscale.analysis.predictive import backtest_calibration

        calibration = backtest_calibration(law, n, d, loss, seed=seed)
    return TableFit(law=law, fit=fitted, n_points=int(len(loss)), bootstrap=bootstrap, calibration=calibration,
                    window=window, data=data)
