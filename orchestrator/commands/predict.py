"""`proxyscale predict`: the loss of any (N, D), e.g. an over-trained run, with a 95% interval.

The law (Chinchilla's L(N, D) or Gadre et al.'s over-training law L(C, M)) is fitted to a sweep
directory's finished runs or to a CSV; the interval is for the loss such a run would MEASURE (the
law's bootstrap plus run-to-run noise, analysis/predictive.py), and the law's mean alone is given too.
"""

from __future__ import annotations

import argparse
import math

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import open_ledger, print_json
from proxyscale.orchestrator.commands.replay import LAWS, add_table_arguments, load_runs
from proxyscale.orchestrator.observations import finished_rows

TARGET_OPTIONS = ("--target-n", "--target-d", "--target-flops", "--target-m")


def add_parser(subparsers) -> None:
    predict = subparsers.add_parser(
        "predict", help="predicted loss of any (N, D) (e.g. an over-trained run) with a 95%% interval",
        description="Fit a law to a sweep directory's finished runs or to a CSV and predict the loss of one run. "
                    "The target is any two of --target-n, --target-d, --target-flops (C = 6 N D) and --target-m "
                    "(tokens per parameter, D / N).")
    predict.add_argument("dir", nargs="?", help="a sweep directory (its finished runs; N = all parameters)")
    add_table_arguments(predict, required=False)
    predict.add_argument("--target-n", type=float, metavar="N", help="parameters of the run to predict")
    predict.add_argument("--target-d", type=float, metavar="D", help="its training tokens")
    predict.add_argument("--target-flops", type=float, metavar="C", help="its training FLOPs, C = 6 N D")
    predict.add_argument("--target-m", type=float, metavar="M", help="its tokens per parameter, M = D / N")
    predict.add_argument("--law", choices=LAWS, default="chinchilla",
                         help="chinchilla: L(N, D), 5 parameters; overtraining: Gadre et al.'s L(C, M), 4")
    predict.add_argument("--bootstrap", type=int, default=1000, help="bootstrap refits (default: %(default)s)")
    predict.add_argument("--seed", type=int, default=0)
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.add_argument("--downstream", metavar="FILE",
                         help="also predict a task metric: FILE is a fit of Err(L) written by `fit --law downstream -o "
                              "FILE`; (N, D) -> L -> Err with both laws' intervals (docs/downstream.md)")


def target_point(args: argparse.Namespace) -> tuple[float, float]:
    """(N, D) from any two of --target-n, --target-d, --target-flops, --target-m."""
    given = {option: getattr(args, option[2:].replace("-", "_")) for option in TARGET_OPTIONS}
    given = {option: value for option, value in given.items() if value is not None}
    for option, value in given.items():
        if not (math.isfinite(value) and value > 0):
            raise SpecError(f"{option}: must be a positive number, got {value:g}")
    if len(given) != 2:
        named = ", ".join(given) or "none"
        raise SpecError(f"predict: give exactly two of {', '.join(TARGET_OPTIONS)} (given: {named})")
    n, d, c, m = (given.get(option) for option in TARGET_OPTIONS)
    if n is None and d is None:
        n = math.sqrt(c / (6 * m))
    if n is None:
        n = d / m if m is not None else c / (6 * d)
    if d is None:
        d = n * m if m is not None else c / (6 * n)
    return n, d


def _sweep_runs(directory: str):
    from proxyscale.analysis.replay import Runs

    ledger = open_ledger(directory)
    rows = finished_rows(ledger)
    ledger.close()
    if len(rows) < 7:
        raise SpecError(f"DIR: {directory} has {len(rows)} finished runs; predicting needs at least 7")
    return Runs.of([r["n_params"] for r in rows], [r["tokens"] for r in rows], [r["final_eval_loss"] for r in rows],
                   [r["flops"] for r in rows])


def run(args: argparse.Namespace) -> int:
    from proxyscale.analysis.planner import identifiable
    from proxyscale.analysis.predictive import backtest_calibration, fit_law, log_residuals, predict_loss, profile_target

    n_target, d_target = target_point(args)
    if args.downstream is not None:  # a bad file is refused before any fitting
        from proxyscale.orchestrator.commands.downstream import load_fit

        load_fit(args.downstream)
    if args.bootstrap < 10:
        raise SpecError(f"--bootstrap: at least 10 refits for a 95% interval, got {args.bootstrap}")
    if args.dir is not None:
        if args.csv is not None:
            raise SpecError("predict: give a sweep directory or --csv FILE, not both")
        runs = _sweep_runs(args.dir)
        source = args.dir
    elif args.csv is not None:
        runs = load_runs(args, "predict", min_rows=7)
        source = args.csv
    else:
        raise SpecError("predict: give a sweep directory or --csv FILE")
    if not identifiable(runs.n, runs.d):
        raise SpecError(f"predict: the {len(runs.n)} runs of {source} span {len(set(runs.n))} values of N and "
                        f"{len(set(runs.d))} of D; a law of N and D needs 6 or more runs over 3 or more of each")
    fit = fit_law(args.law, runs.n, runs.d, runs.loss, bootstrap=args.bootstrap, seed=args.seed)
    residuals = log_residuals(args.law, fit, runs.n, runs.d, runs.loss)
    # The one calibration (analysis/predictive.py): the largest sizes held out, the band scaled by what they measured.
    # With the distance model: the band floored at the held-out error's spread at the target's distance.
    calibration = backtest_calibration(args.law, runs.n, runs.d, runs.loss, seed=args.seed,
                                       target=(n_target, d_target), fit=fit)
    prediction = predict_loss(args.law, fit, [n_target], [d_target], residuals, seed=args.seed, calibration=calibration)
    # A bootstrap collapsed onto E = 0: the interval contains what the E values the objective admits predict.
    profile = profile_target(args.law, fit, runs.n, runs.d, runs.loss, target_n=[n_target], target_d=[d_target])
    c_target = 6 * n_target * d_target
    m_fitted = runs.d / runs.n
    payload = {
        "law": args.law, "source": source, "n_points": len(runs.n), "bootstrap": args.bootstrap,
        "parameters": {k: v.as_dict() for k, v in fit.intervals().items()},
        "target": {"n": n_target, "d": d_target, "flops": c_target, "tokens_per_parameter": d_target / n_target},
        "loss": prediction.row(0),
        "noise_scale": prediction.noise_scale,
        "calibration": calibration.as_dict(),
        "profile": None if profile is None else profile.as_dict(),
        "extrapolation": {"flops_over_largest_fitted": c_target / float((6 * runs.n * runs.d).max()),
                          "n_over_largest_fitted": n_target / float(runs.n.max()),
                          "fitted_tokens_per_parameter": [float(m_fitted.min()), float(m_fitted.max())]},
    }
    if profile is not None:
        (low,), (high,) = profile.loss_range()
        (mean_low,), (mean_high,) = profile.loss_range(measured=False)
        row = payload["loss"]
        row |= {"low": min(row["low"], float(low)), "high": max(row["high"], float(high)),
                "mean_low": min(row["mean_low"], float(mean_low)), "mean_high": max(row["mean_high"], float(mean_high))}
    if args.downstream is not None:
        from proxyscale.orchestrator.commands.downstream import chain_prediction, loss_draws

        members, samples = loss_draws(args.law, fit, n_target, d_target, residuals, seed=args.seed, calibration=calibration)
        payload["downstream"] = chain_prediction(args.downstream, loss_point=payload["loss"]["value"],
                                                 log_members=members, log_samples=samples, seed=args.seed)
    if args.json:
        print_json(payload)
        return 0
    print(f"{args.law} fit on {len(runs.n)} runs of {source} ({args.bootstrap} bootstrap refits, 95% intervals)")
    for name, value in payload["parameters"].items():
        print(f"  {name:>8} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
    loss, x = payload["loss"], payload["extrapolation"]
    print(f"at N = {n_target:.4g}, D = {d_target:.4g} (C = {c_target:.3g}, M = D/N = {d_target / n_target:.3g}; "
          f"{x['flops_over_largest_fitted']:.3g}x the largest fitted run's compute):")
    print(f"  loss {loss['value']:.4f}, measured-loss interval [{loss['low']:.4f}, {loss['high']:.4f}], law's mean "
          f"[{loss['mean_low']:.4f}, {loss['mean_high']:.4f}] (run-to-run noise {payload['noise_scale']:.2%} of the loss)")
    print(f"  {calibration.line()}")
    if profile is not None:
        print(f"  ! {profile.line()}")
    if "downstream" in payload:
        from proxyscale.orchestrator.commands.downstream import print_chain

        print_chain(payload["downstream"])
    return 0
