"""`proxyscale fit-schedule`: the LR-schedule law fitted to loss curves, predicting others."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.commands.common import print_json
from orchestrator.tables import Column, read_table


def add_parser(subparsers) -> None:
    schedule = subparsers.add_parser("fit-schedule", help="fit the LR-schedule law to loss curves and predict others")
    schedule.add_argument("--fit", nargs="+", required=True, help="CSV curves with step, lr, loss columns")
    schedule.add_argument("--predict", nargs="*", help="curves to predict; their error is reported")
    schedule.add_argument("--warmup-steps", type=int, default=0, help="reconstruct a linear warmup before the first row")
    schedule.add_argument("--peak-lr", type=float, help="peak LR of that warmup (default: the first row's LR)")
    schedule.add_argument("--decay", type=float, default=0.999, help="momentum lambda of the annealing area")
    schedule.add_argument("--skip-fraction", type=float, default=0.1, help="ignore the first fraction of each curve")
    schedule.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from analysis.schedule_law import curve_from_table, fit_schedule_law

    def load(path: str):
        # Steps count from 1 and increase; the LR may decay to 0; losses are positive.
        table = read_table(path, [Column("fit-schedule", "step"), Column("fit-schedule", "lr", positive=False),
                                  Column("fit-schedule", "loss")], min_rows=2, purpose="a loss curve",
                           unique="step", increasing="step")
        return curve_from_table(Path(path).stem, table["step"], table["lr"], table["loss"],
                                warmup_steps=args.warmup_steps, peak_lr=args.peak_lr)

    fitting = [load(path) for path in args.fit]
    fit = fit_schedule_law(fitting, decay=args.decay, skip_fraction=args.skip_fraction)
    payload = {
        "parameters": fit.as_dict(),
        "fit_error": {c.name: fit.relative_error(c, args.skip_fraction) for c in fitting},
        "predict_error": {c.name: fit.relative_error(c, args.skip_fraction) for c in map(load, args.predict or [])},
    }
    if args.json:
        print_json(payload)
        return 0
    p = payload["parameters"]
    print(f"L(s) = {p['L0']:.4f} + {p['A']:.4f} S1^-{p['alpha']:.4f} - {p['C']:.4f} S2   (lambda = {p['decay']})")
    for kind in ("fit_error", "predict_error"):
        for name, error in payload[kind].items():
            print(f"  {kind.replace('_error', ''):>7} {name:<24} mean |relative error| {100 * error:.3f}%"
                  f" (past the first {args.skip_fraction:.0%})")
    return 0
