"""`proxyscale export`: one row per run (or per logged step) of a sweep directory."""

from __future__ import annotations

import argparse
import json
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
    import pandas as pd

    from proxyscale.orchestrator.ledger import RUN_COLUMNS

    ledger = open_ledger(args.dir)
    if args.steps:
        table = pd.DataFrame(ledger.steps())
        if not table.empty:
            probes = pd.json_normalize(table.pop("probes_json").map(json.loads)).add_prefix("probe.")
            table = pd.concat([table, probes], axis=1)
            evals = pd.DataFrame(ledger.evals())
            if not evals.empty:  # one column eval.<name> per task metric (train.evals), at its eval steps
                wide = evals.pivot(index=["run_id", "step"], columns="name", values="value").add_prefix("eval.")
                table = table.merge(wide.reset_index(), on=["run_id", "step"], how="left")
    else:
        table = pd.DataFrame(ledger.runs())
        table = table[[c for c in RUN_COLUMNS if c in table.columns]] if not table.empty else table
        final = ledger.final_evals()
        if final and not table.empty:  # each task metric (train.evals) at the run's last evaluation
            wide = pd.DataFrame.from_dict(final, orient="index").add_prefix("eval.")
            table = table.merge(wide, left_on="run_id", right_index=True, how="left")
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
