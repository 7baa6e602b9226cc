"""`proxyscale fit-schedule`: the loss-curve law fitted to whole loss curves, predicting others.

Each curve is a CSV file with step, lr, loss columns, optionally followed by `:N`, its model's
parameter count (FILE:2.5e7 or FILE:25000000). With two or more distinct N among the fitting curves
the joint law across sizes (analysis.curve_law) is fitted, with bootstrap intervals over whole
curves. --law picks the form: `tissue` (analysis.curve_law), `mpl` (the multi-power law of Luo et al.,
analysis.multipower) or `auto` (default: the form and clock that best predict what a backtest holds
out, analysis.predictive.backtest_curve_forms); `schedule` is Tissue et al.'s single-curve law with a
momentum lambda (analysis.schedule_law), `curve` the old name of `tissue`. Every form but `schedule`
prints the backtest table and its calibration, and the predicted curves' coverage by the calibrated band: the
one-step factor, then each predicted point's band floored at the held-out error's spread at its distance, the farther
of its N and its tokens in spans of the fitted ladder (analysis/predictive.curve_distance_model; the prior with fewer
than 6 sizes, said); the backtest line ends with the distance model carried to the farthest predicted point.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import print_json
from proxyscale.orchestrator.tables import Column, read_table

LAWS = ("auto", "mpl", "tissue", "schedule", "curve")


def add_parser(subparsers) -> None:
    schedule = subparsers.add_parser(
        "fit-schedule", help="fit the loss-curve law to loss curves (one or several model sizes) and predict others",
        description="Fit whole loss curves and predict other curves from their LRs (and N) alone. FILE:N gives a "
                    "curve's parameter count; two or more distinct N fit the joint law across sizes.")
    schedule.add_argument("--fit", nargs="+", required=True, metavar="FILE[:N]",
                          help="CSV curves with step, lr, loss columns; :N is the model's parameter count")
    schedule.add_argument("--predict", nargs="*", metavar="FILE[:N]",
                          help="curves to predict; their mean |relative error| (mare) is reported")
    schedule.add_argument("--law", choices=LAWS, default="auto",
                          help="mpl: the multi-power law; tissue: the Tissue form with a size term; auto: the form "
                               "and clock with the lowest held-out error in the backtest; schedule: Tissue's "
                               "single-curve law with momentum lambda; curve: the old name of tissue "
                               "(default: %(default)s)")
    schedule.add_argument("--clock", choices=["auto", "relative", "step", "token"], default="auto",
                          help="tissue form: how an LR drop is realised, over a share of the elapsed time, over "
                               "steps or over tokens; auto: whichever of relative and step predicts the held-out "
                               "points better (default: %(default)s)")
    schedule.add_argument("--batch-tokens", type=float, default=1.0,
                          help="curve law: tokens per step, so S1 and D count tokens (default 1: steps)")
    schedule.add_argument("--bootstrap", type=int, default=200,
                          help="curve forms: resamples of whole curves (lineages), at least 64 (default: %(default)s)")
    schedule.add_argument("--seed", type=int, default=0)
    schedule.add_argument("--warmup-steps", type=int, default=0, help="reconstruct a linear warmup before the first row")
    schedule.add_argument("--peak-lr", type=float, help="peak LR of that warmup (default: the first row's LR)")
    schedule.add_argument("--decay", type=float, default=0.999, help="schedule law: momentum lambda of the annealing area")
    schedule.add_argument("--skip-fraction", type=float, default=0.1, help="ignore the first fraction of each curve")
    schedule.add_argument("--json", action="store_true")


def parse_curve_argument(text: str) -> tuple[str, float | None]:
    """'FILE' or 'FILE:N' -> (path, N or None); N a positive number such as 2.5e7 or 25000000."""
    if os.path.exists(text) or ":" not in text:
        return text, None
    path, _, tail = text.rpartition(":")
    try:
        n = float(tail)
    except ValueError:
        n = float("nan")
    if not (math.isfinite(n) and n > 0):
        raise SpecError(f"{text}: {tail!r} after ':' is not a parameter count; write FILE:N with N a positive "
                        "number such as 2.5e7 or 25000000")
    return path, n


def _read_curve(path: str):
    # Steps count from 1 and increase; the LR may decay to 0; losses are positive.
    return read_table(path, [Column("fit-schedule", "step"), Column("fit-schedule", "lr", positive=False),
                             Column("fit-schedule", "loss")], min_rows=2, purpose="a loss curve",
                      unique="step", increasing="step")


def run(args: argparse.Namespace) -> int:
    fitting = [parse_curve_argument(text) for text in args.fit]
    predicting = [parse_curve_argument(text) for text in args.predict or []]
    tables = {path: _read_curve(path) for path, _ in fitting + predicting}  # every file checked before fitting
    sizes = {n for _, n in fitting if n is not None}
    law = "tissue" if args.law == "curve" else args.law
    if law != "schedule" and args.bootstrap < 64:
        raise SpecError(f"--bootstrap: at least 64 resamples for a 95% interval's ends, got {args.bootstrap}")
    if law != "schedule" and len(sizes) >= 2:
        missing = [path for path, n in fitting + predicting if n is None]
        if missing:
            raise SpecError(f"{missing[0]}: give its parameter count as {missing[0]}:N; the joint law across sizes "
                            "needs N for every curve")
    if law == "schedule":
        payload = _schedule_law(args, fitting, predicting, tables)
    else:
        payload = _curve_law(args, law, fitting, predicting, tables)
    errors = payload["predict_error"]
    payload["mare"] = errors
    payload["mare_max"] = max(errors.values()) if errors else None
    payload["skip_fraction"] = args.skip_fraction
    if args.json:
        print_json(payload)
        return 0
    _print(payload, args.skip_fraction)
    return 0


def _schedule_law(args, fitting, predicting, tables) -> dict:
    from proxyscale.analysis.schedule_law import curve_from_table, fit_schedule_law

    def load(path: str):
        table = tables[path]
        return curve_from_table(Path(path).stem, table["step"], table["lr"], table["loss"],
                                warmup_steps=args.warmup_steps, peak_lr=args.peak_lr)

    curves = [load(path) for path, _ in fitting]
    fit = fit_schedule_law(curves, decay=args.decay, skip_fraction=args.skip_fraction)
    return {
        "law": "schedule",
        "parameters": fit.as_dict(),
        "fit_error": {c.name: fit.relative_error(c, args.skip_fraction) for c in curves},
        "predict_error": {c.name: fit.relative_error(c, args.skip_fraction)
                          for c in (load(path) for path, _ in predicting)},
    }


def _curve_law(args, law: str, fitting, predicting, tables) -> dict:
    from proxyscale.analysis.curve_law import curve_from_table
    from proxyscale.analysis.predictive import curve_band, fit_curves

    def load(path: str, n: float | None):
        table = tables[path]
        return curve_from_table(Path(path).stem, table["step"], table["lr"], table["loss"],
                                n_params=float("nan") if n is None else n, batch_tokens=args.batch_tokens,
                                warmup_steps=args.warmup_steps, peak_lr=args.peak_lr)

    curves = [load(path, n) for path, n in fitting]
    if len({c.n_params for c in curves}) < 2:  # one size: the single-size form ignores N
        curves = [dataclasses.replace(c, n_params=float("nan")) for c in curves]
    if args.clock == "token" and law == "mpl":
        raise SpecError("--clock token: a Tissue-form clock; --law mpl has its own (drops realised over LR area)")
    fit, backtest = fit_curves(curves, law=law, clock=args.clock, skip_fraction=args.skip_fraction,
                               bootstrap=args.bootstrap, seed=args.seed)
    form = backtest.chosen[0]
    predicted = [load(path, n if fit.sizes else None) for path, n in predicting]
    coverage = None
    if predicted:
        held = [(c, c.steps[c.past_start(args.skip_fraction)]) for c in predicted]
        measured, point, low, high = curve_band(fit, form, curves, held, level=fit.level, seed=args.seed,
                                                skip_fraction=args.skip_fraction)
        # Each predicted point's band: the one-step factor, then floored at the held-out error's spread at its own
        # distance (the farther of its N and its tokens in spans of the fitted ladder; analysis/predictive.py).
        n_points = np.concatenate([np.full(len(steps), c.n_params) for c, steps in held if len(steps)] + [np.zeros(0)])
        tokens = np.concatenate([steps * c.batch_tokens for c, steps in held if len(steps)] + [np.zeros(0)])
        calibrated_low, calibrated_high = backtest.calibration.distance_band(n_points, point, low, high, d=tokens)
        calibration = backtest.calibration
        if calibration.distance is not None and len(point):  # the line and JSON say the farthest predicted point
            far = int(np.lexsort((n_points * tokens, calibration.distance.spans_of(n_points, tokens)))[-1])
            calibration = calibration.at_target(calibration.distance, float(n_points[far]), float(point[far]),
                                                float(low[far]), float(high[far]), d_target=float(tokens[far]))
            backtest = dataclasses.replace(backtest, calibration=calibration)

        def share(lo, hi) -> float:
            return float(((lo <= measured) & (measured <= hi)).mean())

        def width(lo, hi) -> float:
            return float(np.median(np.exp(hi) - np.exp(lo)) / np.median(np.exp(point)))

        coverage = {"points": int(len(measured)), "coverage_before": share(low, high),
                    "coverage_after": share(calibrated_low, calibrated_high), "median_width_before": width(low, high),
                    "median_width_after": width(calibrated_low, calibrated_high),
                    "worst_point_error": float(np.max(np.abs(np.exp(measured - point) - 1)))}
        one_low, one_high = dataclasses.replace(calibration, factor=calibration.one_step_factor).scale(point, low, high)
        # The band with the one-step factor alone (as before the distance model), to set beside "after".
        coverage |= {"coverage_one_step": share(one_low, one_high), "median_width_one_step": width(one_low, one_high)}
    raw = None
    if form == "mpl" and not fit.sizes:  # Luo et al.'s units: the raw LR (their published fits read this way)
        from proxyscale.analysis.multipower import authors_units

        peak = args.peak_lr if args.peak_lr is not None else float(tables[fitting[0][0]]["lr"].iloc[0])
        raw = authors_units(fit.params, peak) | {"peak_lr": peak}
    return {
        "law": form,
        "form": form,
        "parameters_in_raw_lr": raw,
        "clock": fit.clock,
        "backtest": backtest.as_dict(),
        "backtest_lines": backtest.lines(),
        "calibration": backtest.calibration.as_dict(),
        "predict_coverage": coverage,
        "sizes": sorted({c.n_params for c in curves}) if fit.sizes else None,
        "n_ref": fit.n_ref if fit.sizes else None,
        "n_points": fit.n_points,
        "n_curves": fit.n_curves,
        "bootstrap": args.bootstrap,
        "parameters": {name: interval.as_dict() for name, interval in fit.intervals().items()},
        "fit_error": {c.name: fit.mare(c, args.skip_fraction) for c in curves},
        "predict_error": {c.name: fit.mare(c, args.skip_fraction) for c in predicted},
    }


def _print(payload: dict, skip_fraction: float) -> None:
    p = payload["parameters"]
    if payload["law"] == "schedule":
        print(f"L(s) = {p['L0']:.4f} + {p['A']:.4f} S1^-{p['alpha']:.4f} - {p['C']:.4f} S2   (lambda = {p['decay']})")
    else:
        if payload["form"] == "mpl":
            form = ("E + A_N (N/n_ref)^-alpha_N + A S1^-alpha - B (N/n_ref)^kappa LD(C, beta, gamma)" if payload["sizes"]
                    else "E + A S1^-alpha - B LD(C, beta, gamma)")
        else:
            form = ("E + A / N^alpha + B S1^-beta - C (N/n_ref)^kappa S2" if payload["sizes"]
                    else "E + B S1^-beta - C S2")
        print(f"L = {form}   ({payload['form']}, {payload['clock']} clock; {payload['n_curves']} curves, "
              f"{payload['n_points']} points, {payload['bootstrap']} resamples of whole curves, 95% intervals)")
        for name, value in p.items():
            print(f"  {name:>7} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
        if payload.get("parameters_in_raw_lr"):
            raw = payload["parameters_in_raw_lr"]
            print("  in Luo et al.'s units (raw LR, S1 in steps): " + ", ".join(
                f"{k} {raw[k]:.4g}" for k in ("L0", "A", "alpha", "B", "C", "beta", "gamma")))
        for line in payload["backtest_lines"]:
            print(line)
    for kind in ("fit_error", "predict_error"):
        for name, error in payload[kind].items():
            print(f"  {kind.replace('_error', ''):>7} {name:<24} mean |relative error| {100 * error:.3f}%"
                  f" (past the first {skip_fraction:.0%})")
    if payload["mare_max"] is not None:
        print(f"  largest mean |relative error| of a predicted curve: {100 * payload['mare_max']:.3f}%")
    coverage = payload.get("predict_coverage")
    if coverage:
        print(f"  predicted points inside their 95% band: {coverage['coverage_before']:.0%} before calibration, "
              f"{coverage['coverage_after']:.0%} after; median width {coverage['median_width_before']:.2%} -> "
              f"{coverage['median_width_after']:.2%} of the loss ({coverage['points']} points; the one-step factor "
              f"alone, without the distance floor: {coverage['coverage_one_step']:.0%}, "
              f"{coverage['median_width_one_step']:.2%})")
