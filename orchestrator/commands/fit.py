"""`proxyscale fit`: a scaling law fitted to a CSV or a sweep directory, with intervals."""

from __future__ import annotations

import argparse

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import METRICS, metric_label, open_ledger, print_json
from proxyscale.orchestrator.observations import finished_rows
from proxyscale.orchestrator.tables import Column, read_table


def add_parser(subparsers) -> None:
    fit = subparsers.add_parser("fit", help="fit L(N, D) (approach 3) or isoFLOP minima (approach 2) to a CSV, with intervals")
    fit.add_argument("dir", nargs="?", help="a sweep directory (its finished runs; N = all parameters)")
    fit.add_argument("--csv", help="a results table (W&B export, published data)")
    fit.add_argument("--n", help="column of parameter counts")
    fit.add_argument("--d", help="column of training tokens")
    fit.add_argument("--loss", help="column of final losses")
    fit.add_argument("--flops", help="column of training FLOPs (D = C / 6N when --d is not given)")
    fit.add_argument("--law", choices=["chinchilla", "isoflop", "overtraining", "downstream", "lr_batch", "auto", "tissue",
                                       "mpl"], default="chinchilla",
                     help="chinchilla: L(N, D), approach 3; isoflop: approach 2; overtraining: Gadre et al.'s L(C, M); "
                          "auto, tissue, mpl: with --curves, the curve form (auto, the default there: the one with the "
                          "lowest held-out error in the backtest; docs/trust.md); "
                          "downstream: a task's error from the loss, Err(L) = eps - k exp(-gamma L) (docs/downstream.md); "
                          "lr_batch: Step Law's eta_opt(N, D) and B_opt(D) from a table of runs (docs/scale.md)")
    fit.add_argument("--lr", help="lr_batch: column of peak learning rates")
    fit.add_argument("--batch", help="lr_batch: column of batch sizes in tokens")
    fit.add_argument("--metric", help="DIR (and --curves): loss | bpb, what the law is fitted to: the eval loss in "
                                      "nats per token (default) or bits per byte, which compares across tokenizers "
                                      "(docs/corpora.md); "
                                      "downstream: column of the task metric, a fraction in [0, 1] (an error, or an "
                                      "accuracy with --accuracy)")
    fit.add_argument("--accuracy", action="store_true", help="downstream: --metric is an accuracy; the law fits 1 - it")
    fit.add_argument("--group", metavar="COL", help="downstream: bootstrap whole groups of rows sharing this column "
                                                    "(run_id: the eval points of one run are not independent)")
    fit.add_argument("-o", "--output", metavar="FILE", help="downstream: also write the fit to FILE (JSON) for "
                                                            "`predict --downstream FILE`")
    fit.add_argument("--window", type=_window, default=5, metavar="K|all",
                     help="isoflop: fit each budget's parabola to the K sizes around its lowest point, or 'all' "
                          "(default: %(default)s)")
    fit.add_argument("--target-flops", type=float, help="report N_opt, D_opt and loss at this compute")
    fit.add_argument("--plot-distance", metavar="PNG",
                     help="chinchilla, overtraining with --target-flops: draw the held-out error against extrapolation "
                          "distance, the fitted growth of its band and the target's distance (docs/trust.md)")
    fit.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    fit.add_argument("--drop-highest-loss", type=int, default=0, help="drop this many highest-loss rows first")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--json", action="store_true", help="machine-readable output")
    fit.add_argument("--curves", action="store_true",
                     help="DIR: fit the joint loss-curve law to every eval point, beside L(N, D) on the final losses")
    fit.add_argument("--holdout-largest", action="store_true",
                     help="with --curves: leave the largest model size out and report each law's error on it")
    fit.add_argument("--score", metavar="OTHER_DIR",
                     help="with --curves: predict the final loss of every finished run of another sweep from its own LR "
                          "schedule (e.g. cosine runs from a law fitted on WSD forks), and, on the (N, D) cells both "
                          "sweeps ran, the difference between their schedules")


def _window(raw: str) -> int | None:
    if raw == "all":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number of sizes or 'all'") from None
    if value < 3:
        raise argparse.ArgumentTypeError(f"a parabola needs at least 3 sizes, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Fit a scaling law to any CSV (a W&B export, a published table) and report the target allocation."""
    from proxyscale.analysis.table_fit import fit_table

    if args.law == "downstream":
        from proxyscale.orchestrator.commands.downstream import run_fit_downstream

        return run_fit_downstream(args)
    if args.law == "lr_batch":
        from proxyscale.orchestrator.commands.fit_lr_batch import run_fit_lr_batch

        return run_fit_lr_batch(args)
    if args.metric is not None and args.metric not in METRICS:
        raise SpecError(f"--metric: {args.metric!r} is not allowed with --law {args.law}; choose one of {list(METRICS)} "
                        "(a column name goes with --law downstream)")
    if args.metric == "bpb" and args.dir is None:
        raise SpecError("--metric bpb: goes with a sweep directory; with --csv give the bits-per-byte column as --loss "
                        "(`proxyscale export DIR` writes final_eval_bpb)")
    if args.law in ("auto", "tissue", "mpl") and not args.curves:
        raise SpecError(f"--law {args.law}: a curve form, goes with DIR --curves (final losses: chinchilla, isoflop, "
                        "overtraining)")
    if args.curves or args.holdout_largest or args.score:
        if args.curves and args.law not in ("chinchilla", "auto", "tissue", "mpl"):
            raise SpecError(f"--law {args.law}: with --curves the law is a curve form: auto, tissue or mpl")
        if args.dir is None or not args.curves:
            raise SpecError("fit --curves: give a sweep directory (the curves come from its ledger)"
                            if args.dir is None else
                            f"{'--holdout-largest' if args.holdout_largest else '--score'}: goes with --curves")
        from proxyscale.orchestrator.commands.fit_curves import run_fit_curves

        return run_fit_curves(args)
    if args.dir is not None:
        # A sweep directory: its finished runs, N = all parameters, D = tokens trained.
        import pandas as pd

        from proxyscale.analysis.isoflop import budget_levels

        ledger = open_ledger(args.dir, metric=args.metric)
        rows = finished_rows(ledger)
        ledger.close()
        if len(rows) < 5:
            raise SpecError(f"DIR: {args.dir} has {len(rows)} finished runs; L(N, D) needs at least 5")
        # --law isoflop groups runs by the budget they were planned at (FLOPs per token x tokens).
        table = pd.DataFrame({"n_params": [r["n_params"] for r in rows], "tokens": [r["tokens"] for r in rows],
                              "final_eval_loss": [r["final_eval_loss"] for r in rows],
                              "flop_budget": budget_levels([r["flops"] for r in rows])})
        args.n, args.d, args.loss = "n_params", "tokens", "final_eval_loss"
        args.flops = "flop_budget" if args.law == "isoflop" else None
    else:
        if args.csv is None:
            raise SpecError("fit: give a sweep directory or --csv FILE")
        if args.loss is None:
            raise SpecError("fit: give --loss COL")
        if args.n is None and args.d is None:
            raise SpecError("fit: give --n COL or --d COL (or both)")
        if args.d is None and args.flops is None or args.n is None and args.flops is None:
            raise SpecError("fit: with only one of --n / --d, give --flops COL so the other follows from C = 6 N D")
        named = {"--n": args.n, "--d": args.d, "--loss": args.loss, "--flops": args.flops}
        of_n_and_d = args.law != "isoflop"
        table = read_table(args.csv, [Column(option, name) for option, name in named.items() if name is not None],
                           min_rows=5 if of_n_and_d else 3,
                           purpose=f"fitting the {args.law} law" if of_n_and_d else "an isoFLOP parabola")
    if args.drop_highest_loss:
        table = table.sort_values(args.loss).iloc[: -args.drop_highest_loss]
    flops = table[args.flops].to_numpy(float) if args.flops else None
    n = table[args.n].to_numpy(float) if args.n else flops / (6 * table[args.d].to_numpy(float))
    d = table[args.d].to_numpy(float) if args.d else flops / (6 * n)
    loss = table[args.loss].to_numpy(float)
    if flops is None:
        flops = 6 * n * d
    payload: dict = {"law": args.law, "metric": args.metric or "loss", "n_points": int(len(loss)), "bootstrap": args.bootstrap,
                     "n_definition": f"column {args.n!r}" if args.n else "C / (6 D)"}
    if args.law == "isoflop" and args.flops is None:
        raise SpecError("fit --law isoflop: give --flops COL (runs are grouped by their FLOP budget)")
    # The engine of `proxyscale.fit` too (analysis/table_fit.py); the calibration is measured only for a target.
    if args.plot_distance and (args.target_flops is None or args.law not in ("chinchilla", "overtraining")):
        raise SpecError("--plot-distance: goes with --target-flops and --law chinchilla or overtraining")
    fit = fit_table(n, d, loss, law=args.law, flops=flops,
                    x_is_tokens=args.n is None, bootstrap=args.bootstrap, seed=args.seed, window=args.window,
                    calibrate=args.target_flops is not None)
    # At a target: the calibration carried to its distance, and the profile over E where the bootstrap collapsed.
    payload |= fit.to_dict(target_flops=args.target_flops)
    calibration = fit.at_target(args.target_flops)[0] if args.target_flops is not None else None
    if args.plot_distance and calibration is not None and calibration.distance is not None:
        from proxyscale.analysis.plots import plot_distance

        payload["plot_distance"] = str(plot_distance(calibration.distance, args.plot_distance,
                                                     target_distance=calibration.target_distance))
    target = payload.get("target")
    if args.json:
        print_json(payload)
        return 0
    level = "95%"
    print(f"{args.law} fit of {metric_label(payload['metric'])} on {payload['n_points']} points ({args.bootstrap} "
          f"bootstrap resamples, {level} intervals)")
    for name, value in payload["parameters"].items():
        print(f"  {name:>18} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
    for flag in payload["flags"]:  # what the data cannot tell (analysis/table_fit.identification_flags)
        print(f"  ! {flag['parameter']}: {flag['message']}; run next: {flag['run_next']}")
    for row in payload.get("budget_points", []):
        edge = "  (lowest point at the edge of the sampled sizes)" if row["at_edge"] else ""
        print(f"  budget {row['budget']:.3g}: parabola through {len(row['sizes_used'])} sizes "
              f"{row['sizes_used'][0]:.3g}..{row['sizes_used'][-1]:.3g}{edge}")
    if target is not None:
        print(f"at C = {args.target_flops:.3g} FLOPs:")
        for name in ("n_opt", "d_opt", "loss"):
            value = payload["target"][name]
            print(f"  {name:>18} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
        if calibration is not None:
            print(f"  {calibration.line()}")
        if "profile" in payload:
            print(f"  ! {payload['profile']['line']}")
        if "plot_distance" in payload:
            print(f"  distance figure: {payload['plot_distance']}")
    return 0

