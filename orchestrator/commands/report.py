"""`proxyscale report`: the Markdown report of a sweep directory (the library is orchestrator.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from proxyscale.orchestrator.commands.common import open_ledger


def add_parser(subparsers) -> None:
    report = subparsers.add_parser("report", help="Markdown report (fits, intervals, tables, plots) of a sweep directory")
    report.add_argument("dir")
    report.add_argument("--target-flops", type=float, help="default: the sweep's target_flops or 100x its largest run")
    report.add_argument("--bootstrap", type=int, default=1000)
    report.add_argument("-o", "--output", help="folder for report.md and the PNGs (default DIR/report)")
    report.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    report.add_argument("--knobs-from", nargs="+", default=[], metavar="DIR",
                        help="as for recommend: knob laws from other sweeps of the same model family")


def run(args: argparse.Namespace) -> int:
    """Markdown report with fits, intervals, tables and plots; also logged to the sweep's W&B analysis run."""
    from contextlib import ExitStack

    from omegaconf import OmegaConf

    from proxyscale.orchestrator.advice import open_knob_sources
    from proxyscale.orchestrator.report import build_report
    from proxyscale.orchestrator.tracking import log_analysis, validate_settings

    open_ledger(args.dir).close()
    with ExitStack() as stack:
        sources = open_knob_sources(args.knobs_from, args.dir, stack)
        report, figures, summary = build_report(args.dir, target_flops=args.target_flops, bootstrap=args.bootstrap,
                                                out=Path(args.output) if args.output else None, knob_sources=sources)
    print(f"report written to {report} ({len(figures)} figures)")
    config_path = Path(args.dir) / "config.yaml"
    tracking = OmegaConf.to_container(OmegaConf.load(config_path))["tracking"] if config_path.exists() else {}
    if args.no_wandb:
        tracking = {"enabled": False}
    sweep = Path(args.dir).resolve().name
    logged = log_analysis(validate_settings(tracking), sweep=sweep, directory=Path(args.dir).resolve(), report=report,
                          figures=figures, summary=summary)
    if logged:
        print(f"logged to the W&B analysis run {sweep}-analysis ({logged})")
    return 0
