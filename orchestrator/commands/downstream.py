"""Task metrics at the command line: `fit --law downstream` and `predict --downstream FILE`.

The math is analysis/downstream.py; here are the table checks, the saved file and the printing.
The saved file (`fit --law downstream -o FILE`, or the `--json` output saved to a file) is JSON with
`format` = analysis.downstream.FILE_FORMAT; docs/downstream.md lists its keys.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import open_ledger, print_json, strict_json


def _read_points(args: argparse.Namespace):
    """(loss, error, groups) from the CSV; every bad value is one SpecError line naming its column and line."""
    import pandas as pd

    from proxyscale.analysis.downstream import MIN_POINTS
    from proxyscale.orchestrator.tables import Column, read_table

    if args.dir is not None:
        return _ledger_points(args)
    if args.csv is None:
        raise SpecError("fit --law downstream: give a sweep directory or --csv FILE (e.g. `proxyscale export DIR --steps "
                        "-o F`)")
    missing = [option for option, value in (("--loss", args.loss), ("--metric", args.metric)) if value is None]
    if missing:
        raise SpecError(f"fit --law downstream: give {' and '.join(missing)} COL (the loss and the task metric columns "
                        f"of {args.csv})")
    for option in ("--n", "--d", "--flops", "--target-flops"):
        if getattr(args, option[2:].replace("-", "_")) is not None:
            raise SpecError(f"{option}: not used by --law downstream (it fits the metric against the loss only); drop it")
    if args.bootstrap and args.bootstrap < 10:
        raise SpecError(f"--bootstrap: at least 10 refits for a 95% interval (or 0 for none), got {args.bootstrap}")
    columns = [Column("--loss", args.loss), Column("--metric", args.metric, positive=False, at_most=1.0)]
    table = read_table(args.csv, columns, min_rows=MIN_POINTS, purpose="fitting Err(L) = eps - k exp(-gamma L)",
                       repeats_allowed=True)
    groups = None
    if args.group is not None:
        raw = pd.read_csv(args.csv, usecols=lambda c: c == args.group)
        if args.group not in raw.columns:
            names = list(pd.read_csv(args.csv, nrows=0).columns)
            raise SpecError(f"--group: column {args.group!r} is not in {args.csv}; its columns are {names}")
        if raw[args.group].isna().any():
            line = int(np.flatnonzero(raw[args.group].isna().to_numpy())[0]) + 2
            raise SpecError(f"{args.csv}: column {args.group!r} (--group) is empty at line {line}; fill it in or remove the row")
        groups = raw[args.group].astype(str).to_numpy()
    if args.drop_highest_loss:
        keep = np.argsort(table[args.loss].to_numpy(), kind="stable")[: -args.drop_highest_loss]
        table = table.iloc[np.sort(keep)]
        groups = None if groups is None else groups[np.sort(keep)]
    metric = table[args.metric].to_numpy(float)
    error = 1.0 - metric if args.accuracy else metric
    return table[args.loss].to_numpy(float), error, groups


def _ledger_points(args: argparse.Namespace):
    """(eval loss, error, run ids) of every eval after step 0 that recorded the task metric --metric (train.evals)."""
    from proxyscale.analysis.downstream import MIN_POINTS

    if args.csv is not None:
        raise SpecError("fit --law downstream: give a sweep directory or --csv FILE, not both")
    for option, value in (("--loss", args.loss), ("--group", args.group)):
        if value is not None:
            raise SpecError(f"{option}: with a sweep directory the loss is each evaluation's eval_loss and the bootstrap "
                            "resamples runs; drop it (or export the table and use --csv)")
    ledger = open_ledger(args.dir)
    steps, evals = ledger.steps(), ledger.evals()
    ledger.close()
    names = sorted({e["name"] for e in evals})
    if args.metric is None or args.metric not in names:
        recorded = names or "none (launch with train.evals=[module:function], docs/downstream.md)"
        given = "give --metric NAME" if args.metric is None else f"--metric: {args.metric!r} is not among them"
        raise SpecError(f"fit DIR --law downstream: the runs of {args.dir} recorded the task metrics {recorded}; {given}")
    loss = {(s["run_id"], s["step"]): s["eval_loss"] for s in steps if s["eval_loss"] is not None}
    # Step 0 is left out: an untrained model's top-1 is whatever its random init favours, not a point of the law.
    rows = [(e["run_id"], e["step"], loss[e["run_id"], e["step"]], e["value"]) for e in evals
            if e["name"] == args.metric and e["step"] > 0 and (e["run_id"], e["step"]) in loss]
    for run_id, step, _, value in rows:
        if value is None or not 0 <= value <= 1:
            raise SpecError(f"--metric: {args.metric} of run {run_id} at step {step} is {value}; a task metric fit "
                            "needs fractions in [0, 1]")
    if len(rows) < MIN_POINTS:
        raise SpecError(f"fit DIR --law downstream: {len(rows)} evaluations after step 0 recorded {args.metric}; the "
                        f"law needs at least {MIN_POINTS}")
    runs, _, losses, values = (np.array(column) for column in zip(*rows, strict=True))
    metric = values.astype(float)
    args.loss, args.group, args.csv = "eval_loss", "run_id", args.dir
    return losses.astype(float), 1.0 - metric if args.accuracy else metric, runs.astype(str)


def _check_direction(loss: np.ndarray, error: np.ndarray, args: argparse.Namespace) -> None:
    """An error that FALLS as the loss rises is an accuracy given as an error (or the other way round)."""
    from scipy.stats import spearmanr

    rho = float(spearmanr(loss, error).statistic)
    if np.isfinite(rho) and rho < -0.5:
        read = "1 - it (--accuracy) read as an error" if args.accuracy else "read as an error"
        fix = "it is an error: drop --accuracy" if args.accuracy else "it looks like an accuracy: add --accuracy"
        raise SpecError(f"--metric: {args.metric!r} {read} falls as {args.loss!r} rises (Spearman {rho:.2f}), but a "
                        f"task's error rises with the loss; {fix}")


def run_fit_downstream(args: argparse.Namespace) -> int:
    from proxyscale.analysis.downstream import DownstreamInputError, fit_downstream

    loss, error, groups = _read_points(args)
    _check_direction(loss, error, args)
    try:
        # calibrate: the one calibration (analysis/predictive.py's Calibration): the lowest-loss runs held out, the
        # law refitted on the rest, its measured-error intervals scored there; the factor goes into the saved file.
        fit = fit_downstream(loss, error, bootstrap=args.bootstrap, seed=args.seed, groups=groups,
                             loss_name=args.loss, metric_name=args.metric, calibrate=True)
    except DownstreamInputError as failure:
        raise SpecError(str(failure)) from None
    saved = fit.to_dict() | {"source": args.csv, "loss_column": args.loss, "metric_column": args.metric,
                             "metric_kind": "accuracy" if args.accuracy else "error", "group_column": args.group}
    if args.output:
        Path(args.output).write_text(json.dumps(strict_json(saved), indent=1, allow_nan=False) + "\n")
    payload = saved | {"parameters": {k: v.as_dict() for k, v in fit.intervals().items()},
                       "residual_scale": float(1.4826 * np.median(np.abs(fit.noise()))), "warnings": _warnings(fit),
                       "at_lowest_loss": _at_lowest_loss(fit, args.seed)}
    if args.json:
        print_json(payload)
        return 0
    resampled = f"{fit.n_groups} groups of {args.group!r}" if fit.n_groups else "points"
    print(f"downstream fit: Err({args.loss}) = eps - k exp(-gamma {args.loss}) on {fit.n_points} points of {args.csv} "
          f"({args.bootstrap} bootstrap resamples of {resampled}, 95% intervals; Err = "
          f"{'1 - ' if args.accuracy else ''}{args.metric})")
    for name, value in payload["parameters"].items():
        print(f"  {name:>6} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
    low, high = fit.loss_range
    print(f"  fitted losses {low:.4g}..{high:.4g}; residual scale {payload['residual_scale']:.4f} (robust sd of the error)")
    at = payload["at_lowest_loss"]
    print(f"  at the lowest fitted loss {at['loss']:.4g}: Err {at['value']:.4f}, measured-error interval "
          f"[{at['low']:.4f}, {at['high']:.4f}] (calibrated, factor {at['calibration_factor']:.2f}; bootstrap's "
          f"[{at['raw_low']:.4f}, {at['raw_high']:.4f}])")
    print(f"  {fit.calibration.line()}")
    for warning in payload["warnings"]:
        print(f"  warning: {warning}")
    if args.output:
        print(f"fit written to {args.output} (for `proxyscale predict --downstream {args.output}`)")
    return 0


def _at_lowest_loss(fit, seed: int) -> dict:
    """The measured-error interval at the lowest fitted loss (where a larger run's prediction starts), calibrated by
    the backtest and, beside it, as the bootstrap gives it."""
    import dataclasses

    from proxyscale.analysis.downstream import chain

    loss = fit.loss_range[0]
    calibrated = chain(fit, loss, [loss], [loss], seed=seed)
    raw = chain(dataclasses.replace(fit, calibration=None), loss, [loss], [loss], seed=seed)
    return {"loss": loss} | calibrated.as_dict() | {"raw_low": raw.low, "raw_high": raw.high}


def _warnings(fit) -> list[str]:
    """What a user must know before trusting the fit: a decay rate at its bound means the points show no decay."""
    from proxyscale.analysis.downstream import GAMMA_MAX, GAMMA_MIN

    gamma = fit.params["gamma"]
    if gamma >= 0.99 * GAMMA_MAX or gamma <= 1.01 * GAMMA_MIN:
        return [f"gamma = {gamma:.3g} is at its bound: over these losses the metric shows no exponential decay (flat, "
                "or a straight line), so eps, k and gamma are not identified; predictions outside the fitted losses "
                "are not to be trusted"]
    return []


def load_fit(path: str):
    """The saved downstream fit at `path`, or one SpecError line saying what is wrong with the file."""
    from proxyscale.analysis.downstream import DownstreamFit, DownstreamInputError

    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"--downstream: {path}: no such file; write one with `proxyscale fit --law downstream ... "
                        "-o FILE`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"--downstream: {path}: not JSON ({error}); give the file `fit --law downstream -o FILE` wrote") \
            from None
    try:
        return DownstreamFit.from_dict(raw), raw
    except (DownstreamInputError, TypeError, ValueError, IndexError) as error:
        raise SpecError(f"--downstream: {path}: {error}") from None


def chain_prediction(path: str, *, loss_point: float, log_members: np.ndarray, log_samples: np.ndarray,
                     seed: int) -> dict:
    """The task metric at a predicted loss: the loss law's members and samples (log L) through the saved Err law."""
    from proxyscale.analysis.downstream import chain

    fit, raw = load_fit(path)
    prediction = chain(fit, loss_point, np.exp(log_members), np.exp(log_samples), seed=seed)
    calibration = None if fit.calibration is None else fit.calibration.as_dict() | {"line": fit.calibration.line()}
    out = {"file": path, "metric_column": raw.get("metric_column"), "metric_kind": raw.get("metric_kind", "error"),
           "loss_range": list(fit.loss_range), "error": prediction.as_dict(), "calibration": calibration}
    if out["metric_kind"] == "accuracy":
        e = prediction
        out["accuracy"] = {"value": 1 - e.value, "low": 1 - e.high, "high": 1 - e.low, "mean_low": 1 - e.mean_high,
                           "mean_high": 1 - e.mean_low, "extrapolated": e.extrapolated, "calibration_factor": e.factor}
    return out


def print_chain(out: dict) -> None:
    kind = "accuracy" if out["metric_kind"] == "accuracy" else "error"
    value = out[kind]
    name = out.get("metric_column") or "the task metric"
    print(f"  {name} ({kind}, Err law from {out['file']}): {value['value']:.4f}, measured interval "
          f"[{value['low']:.4f}, {value['high']:.4f}], laws' mean [{value['mean_low']:.4f}, {value['mean_high']:.4f}]")
    if out.get("calibration") is None:
        print(f"  task law: uncalibrated (factor 1: {out['file']} was saved before the backtest calibration; write it "
              "again with `proxyscale fit --law downstream ... -o FILE`)")
    else:
        print(f"  task law {out['calibration']['line']}")
    if value["extrapolated"]:
        low, high = out["loss_range"]
        print(f"  note: the predicted loss is outside the losses the Err law was fitted on ({low:.4g}..{high:.4g}): "
              "the task law is extrapolated too")


def loss_draws(law: str, fit, n: float, d: float, residuals, *, seed: int, draws: int = 25,
               calibration=None) -> tuple[np.ndarray, np.ndarray]:
    """log L at (N, D) of the loss law's bootstrap members, and members plus drawn run noise (analysis.predictive's
    prediction interval, as samples rather than percentiles); with a backtest `calibration`, both are scaled about
    the point prediction by its factor, as predict_loss scales the loss bands."""
    from proxyscale.analysis.predictive import PARAMETER_COUNT, log_loss, noise_draws

    point = log_loss(law, [n], [d], fit.theta)[0]
    members = log_loss(law, [n], [d], fit.bootstrap)[:, 0] if len(fit.bootstrap) else point
    members = members[np.isfinite(members)]
    if len(members) == 0:
        members = point
    noise = noise_draws(residuals, PARAMETER_COUNT[law])
    rng = np.random.default_rng(seed)
    samples = (members[:, None] + noise[rng.integers(0, len(noise), size=(len(members), draws))]).ravel()
    if calibration is not None:
        def scaled(values: np.ndarray) -> np.ndarray:
            return point[0] + calibration.factor * (values - point[0])

        members, samples = scaled(members), scaled(samples)
    return members, samples


def check_evals(specs) -> None:
    """Every train.evals 'module:function' of these runs imports and names a function: checked before any run starts."""
    refs = sorted({ref for spec in specs for _, ref in spec.train.evals})
    if not refs:
        return
    from proxyscale.models.evals import resolve_eval

    for ref in refs:
        try:
            resolve_eval(ref)
        except ValueError as error:
            raise SpecError(f"train.evals: {error}") from None
