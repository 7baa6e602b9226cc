"""`proxyscale export`: one row per run (or per logged step) of a sweep directory."""

from __future__ import annotations

import argparse
import sys

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import open_ledger


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="one row per run (or per logged step) of a sweep directory")
    export.add_argument("dir")
    export.add_argument("--format", choices=["csv", "parquet"], default="csv")
    export.add_argument("-o", "--output", help="file to write (default: CSV on stdout)")
    export.add_argument("--steps", action="store_true", help="export the per-step metrics and probes instead (with an "
                                                              "eval.<name> column per task metric of train.evals)")


def run(args: argparse.Namespace) -> int:
    from proxyscale.orchestrator.frames import runs_frame, steps_frame

    ledger = open_ledger(args.dir)
    table = steps_frame(ledger) if args.steps else runs_frame(ledger)
    ledger.close()
    if args.format == "parquet":
        if not args.output:
            raise SpecError("--format parquet needs -o FILE")
        table.to_parquet(args.output, index=False)
    elif args.output:
        table.to_csv(args.output, index=False)
    else:
        table.to_csv(sys.stdout, index=False)
    if args.output:
        print(f"{len(table)} rows written to {args.output}", file=sys.stderr)
    return 0
