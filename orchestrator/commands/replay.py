"""`proxyscale replay`: a published sweep replayed as a pool of finished runs (analysis/replay.py).

Rows above --test-above-flops are the test set; the planner, random order and cheapest-first each
buy pool rows up to a fraction of the pool's compute, fit L(N, D) and predict the test rows with
95% intervals for their measured losses.
"""

from __future__ import annotations

import argparse

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import print_json
from proxyscale.orchestrator.tables import Column, read_table

# analysis.predictive.LAWS, analysis.replay.METHODS, DEFAULT_FRACTIONS and INTERVALS, repeated so that building the
# parser imports no scipy (tests/test_replay.py checks they agree).
LAWS = ("chinchilla", "overtraining")
METHODS = ("planner", "random", "cheapest_first")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)
INTERVALS = ("residual", "backtest")


def add_parser(subparsers) -> None:
    replay = subparsers.add_parser(
        "replay", help="replay a published sweep: buy part of its runs, fit, predict its largest runs",
        description="Rows above --test-above-flops are predicted from rows bought below it by each method, at each "
                    "fraction of the pool's compute. Give two of --n, --d, --flops (C = 6 N D gives the third).")
    add_table_arguments(replay)
    replay.add_argument("--test-above-flops", type=float, required=True, metavar="C",
                        help="rows with more training FLOPs than this are the test set")
    replay.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                        help="fractions of the pool's compute each method may spend (default: %(default)s)")
    replay.add_argument("--seeds", type=int, default=5, help="seeds per method and fraction (default: %(default)s)")
    replay.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    replay.add_argument("--law", choices=LAWS, default="chinchilla", help="the law fitted (default: %(default)s)")
    replay.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits per fit (default: %(default)s)")
    replay.add_argument("--interval", choices=INTERVALS, default="residual",
                        help="residual: the law's bootstrap plus run-to-run noise; backtest: the errors of the bought "
                             "runs' own largest share predicted from the rest (default: %(default)s)")
    replay.add_argument("--metric", choices=("loss", "bpb"), default="loss",
                        help="loss: --loss as given (nats per token); bpb: converted to bits per byte, loss / ln 2 / "
                             "bytes per token, comparable across tokenizers (default: %(default)s)")
    replay.add_argument("--bytes-per-token", metavar="X|COL",
                        help="--metric bpb: the eval split's bytes per token, a number or a column (default: the "
                             "table's bytes_per_token column, as `proxyscale export` writes it)")
    replay.add_argument("--json", action="store_true", help="machine-readable output")


def add_table_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The CSV options shared with `predict`: the file and the columns that hold N, D, C and the loss."""
    parser.add_argument("--csv", required=required, help="a results table (W&B export, published data)")
    parser.add_argument("--n", metavar="COL", help="column of parameter counts")
    parser.add_argument("--d", metavar="COL", help="column of training tokens")
    parser.add_argument("--flops", metavar="COL", help="column of training FLOPs (what a row costs)")
    parser.add_argument("--loss", metavar="COL", help="column of final losses")
    parser.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                        help="drop the K rows with the highest loss first (e.g. 5 for Epoch's Chinchilla points)")


def load_runs(args: argparse.Namespace, command: str, *, min_rows: int):
    """The table of --csv as analysis.replay.Runs, each failure one SpecError line naming the problem."""
    from proxyscale.analysis.replay import Runs

    if args.loss is None:
        raise SpecError(f"{command}: give --loss COL")
    if sum(column is not None for column in (args.n, args.d, args.flops)) < 2:
        raise SpecError(f"{command}: give two of --n COL, --d COL, --flops COL (C = 6 N D gives the third)")
    if args.drop_highest_loss < 0:
        raise SpecError(f"--drop-highest-loss: must be >= 0, got {args.drop_highest_loss}")
    named = {"--n": args.n, "--d": args.d, "--flops": args.flops, "--loss": args.loss}
    table = read_table(args.csv, [Column(option, name) for option, name in named.items() if name is not None],
                       min_rows=min_rows + args.drop_highest_loss, purpose=f"{command} (a law with up to 5 parameters)")
    if args.drop_highest_loss:
        table = table.sort_values(args.loss).iloc[: -args.drop_highest_loss]
    column = {option: table[name].to_numpy(float) for option, name in named.items() if name is not None}
    flops = column.get("--flops")
    n = column["--n"] if "--n" in column else flops / (6 * column["--d"])
    d = column["--d"] if "--d" in column else flops / (6 * n)
    return Runs.of(n, d, column["--loss"], flops)


def in_bits_per_byte(runs, args: argparse.Namespace):
    """The table's losses (nats per token) as bits per byte, with --bytes-per-token a number or a column."""
    import math

    import numpy as np
    import pandas as pd

    from proxyscale.analysis.replay import Runs

    given = args.bytes_per_token or "bytes_per_token"
    try:
        per_token = np.full(len(runs.loss), float(given))
    except ValueError:
        table = read_table(args.csv, [Column("--bytes-per-token", given)], min_rows=1, purpose="--metric bpb")
        if args.drop_highest_loss or len(table) != len(runs.loss):
            raise SpecError("--bytes-per-token: give a number with --drop-highest-loss (a column is read row by row)") \
                from None
        per_token = pd.to_numeric(table[given]).to_numpy(float)
    if not (np.isfinite(per_token) & (per_token > 0)).all():
        raise SpecError(f"--bytes-per-token {given}: must be positive numbers")
    return Runs(n=runs.n, d=runs.d, flops=runs.flops, loss=runs.loss / math.log(2) / per_token)


def run(args: argparse.Namespace) -> int:
    from proxyscale.analysis.replay import replay

    if not args.test_above_flops > 0:
        raise SpecError(f"--test-above-flops: must be a positive number of FLOPs, got {args.test_above_flops:g}")
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad:
        raise SpecError(f"--fractions: each must be in (0, 1], got {bad}")
    if args.seeds < 1:
        raise SpecError(f"--seeds: at least 1, got {args.seeds}")
    if args.bootstrap < 10:
        raise SpecError(f"--bootstrap: at least 10 refits for a 95% interval, got {args.bootstrap}")
    runs = in_bits_per_byte(load_runs(args, "replay", min_rows=7), args) if args.metric == "bpb" else \
        load_runs(args, "replay", min_rows=7)
    test = runs.flops > args.test_above_flops
    if not test.any():
        raise SpecError(f"--test-above-flops: no row of {args.csv} has more than {args.test_above_flops:g} FLOPs (the "
                        f"largest has {runs.flops.max():g}); lower it so the largest runs are the test set")
    if (~test).sum() < 6:
        raise SpecError(f"--test-above-flops: only {(~test).sum()} rows of {args.csv} have at most "
                        f"{args.test_above_flops:g} FLOPs; fitting needs at least 6 below it; raise it")

    def progress(message: str) -> None:
        if not args.json:
            print(f"  {message}", flush=True)

    if not args.json:
        print(f"replay of {args.csv}: {int((~test).sum())} pool rows, {int(test.sum())} test rows above "
              f"{args.test_above_flops:g} FLOPs; law {args.law} on {args.metric}, {args.seeds} seeds, "
              f"{args.bootstrap} bootstraps, "
              f"{args.interval} intervals",
              flush=True)
    try:
        result = replay(runs, test_above_flops=args.test_above_flops, fractions=args.fractions, seeds=args.seeds,
                        law=args.law, methods=args.methods, bootstrap=args.bootstrap, interval=args.interval,
                        progress=progress)
    except ValueError as error:
        raise SpecError(f"replay: {error}") from None
    payload = result.as_dict()
    if args.json:
        print_json(payload)
        return 0
    full = payload["full_pool"]
    print(f"full pool ({payload['pool_rows']} rows, {payload['pool_flops']:.3g} FLOPs): median |error| "
          f"{full['median_abs_rel_error']:.4f}, coverage {full['coverage']:.3f} (law's mean alone: "
          f"{full['mean_interval_coverage']:.3f})")
    print(f"{'method':<15} {'fraction':>8} {'FLOPs':>10} {'rows':>5} {'median |err|':>12} {'x full':>7} {'coverage':>8}")
    for row in payload["results"]:
        ratio = row["median_abs_rel_error"] / full["median_abs_rel_error"] if full["median_abs_rel_error"] else float("nan")
        print(f"{row['method']:<15} {row['fraction']:>8.3g} {row['flops']:>10.3g} {row['n_rows']:>5.0f} "
              f"{row['median_abs_rel_error']:>12.4f} {ratio:>7.2f} {row['coverage']:>8.3f}"
              + (f"  ({row['not_fitted']} seeds too few rows to fit)" if row["not_fitted"] else ""))
    return 0
