"""The `proxyscale` command line: builds the parser and dispatches; each command lives in orchestrator/commands/."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands import (
    check,
    compare,
    coord_check,
    export,
    fit,
    fit_schedule,
    launch,
    plan,
    predict,
    prepare_data,
    recommend,
    replay,
    report,
    status,
    train,
    transfer,
)

# In the order of `proxyscale --help`.
COMMANDS = {
    "prepare-data": prepare_data,
    "train": train,
    "coord-check": coord_check,
    "launch": launch,
    "status": status,
    "export": export,
    "fit": fit,
    "compare": compare,
    "replay": replay,
    "predict": predict,
    "transfer": transfer,
    "plan": plan,
    "recommend": recommend,
    "check": check,
    "report": report,
    "fit-schedule": fit_schedule,
}

# Commands whose positional arguments are Hydra overrides (which may come after flags).
HYDRA_COMMANDS = ("train", "launch")


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, through the wheel or editable metadata)."""
    try:
        return metadata.version("proxyscale")
    except metadata.PackageNotFoundError:  # run from a source tree that was never pip-installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyscale", description="Plan large training runs from small GPT proxies.")
    parser.add_argument("--version", action="version", version=f"proxyscale {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Hydra overrides may come after flags (`launch sweep=demo --dry-run model.depth=3`).
        if args.command not in HYDRA_COMMANDS or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        return COMMANDS[args.command].run(args)
    except SpecError as error:
        print(f"proxyscale: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
