"""`proxyscale coord-check`: activation scales vs width (and depth), as a PNG."""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers) -> None:
    coord = subparsers.add_parser("coord-check", help="coordinate check: activation scales vs width (and depth), saved as PNG")
    coord.add_argument("--parametrization", nargs="+", default=["sp", "mup"], choices=["sp", "mup", "completep"])
    coord.add_argument("--widths", nargs="+", type=int, default=[32, 64, 128, 256])
    coord.add_argument("--depths", nargs="+", type=int, default=[2])
    coord.add_argument("--steps", type=int, default=5)
    coord.add_argument("--lr", type=float, default=1e-2)
    coord.add_argument("--seed", type=int, default=0)
    coord.add_argument("--out", default="coord_check.png")


def run(args: argparse.Namespace) -> int:
    from proxyscale.analysis.plots import plot_coord_check
    from proxyscale.models.coord_check import coord_check

    records = []
    for parametrization in args.parametrization:
        started = time.perf_counter()
        records += coord_check(
            parametrization=parametrization,
            widths=args.widths,
            depths=args.depths,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
        )
        print(f"{parametrization}: {time.perf_counter() - started:.1f}s")
    plot_coord_check(records, args.out)
    print(f"coordinate check plot written to {args.out}")
    return 0
