"""`proxyscale status`: the runs of a sweep directory and their state."""

from __future__ import annotations

import argparse

from proxyscale.orchestrator.commands.common import open_ledger, print_summary


def add_parser(subparsers) -> None:
    status = subparsers.add_parser("status", help="the runs of a sweep directory and their state")
    status.add_argument("dir")


def run(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.dir)
    print_summary(ledger.runs())
    ledger.close()
    return 0
