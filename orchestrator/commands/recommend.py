"""`proxyscale recommend`: the compute-optimal configuration at a target, every knob with an interval and a basis."""

from __future__ import annotations

import argparse

from proxyscale.orchestrator.commands.common import METRIC_HELP, METRICS, metric_label, open_ledger, print_json


def add_parser(subparsers) -> None:
    recommend = subparsers.add_parser(
        "recommend", help="the compute-optimal configuration at a target, with intervals",
        description="Every knob with value, 95% interval, basis (fitted_law, transfer, best_run, not_varied) and why. "
                    "Exit status 4 when the runs do not identify L(N, D) (the message says which axis to widen).")
    recommend.add_argument("dir")
    recommend.add_argument("--target-flops", type=float,
                           help="default: the sweep's target_flops (else 100x its largest run)")
    recommend.add_argument("--bootstrap", type=int, default=1000)
    recommend.add_argument("--seed", type=int, default=0)
    recommend.add_argument("--knobs-from", nargs="+", default=[], metavar="DIR",
                           help="other sweeps of the same model family (e.g. runs/lr_batch runs/depth): a knob this "
                                "sweep has no law for takes theirs, evaluated at this sweep's N_opt and D_opt")
    recommend.add_argument("--metric", choices=METRICS, default="loss", help=METRIC_HELP)
    recommend.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """The compute-optimal configuration at the target, with intervals."""
    import sys
    from contextlib import ExitStack

    from proxyscale.orchestrator.advice import (
        EXIT_NOT_IDENTIFIABLE,
        NotIdentifiable,
        load_sweep,
        open_knob_sources,
        recommendation,
        target_flops_of,
    )

    plain, _, _ = load_sweep(args.dir)
    with ExitStack() as stack:
        ledger = stack.enter_context(open_ledger(args.dir, metric=args.metric))
        sources = open_knob_sources(args.knobs_from, args.dir, stack)
        target = target_flops_of(plain, ledger, args.target_flops)
        try:
            advice = recommendation(plain, ledger, target_flops=target, bootstrap=args.bootstrap, seed=args.seed,
                                    knob_sources=sources)
        except NotIdentifiable as error:
            if args.json:
                print_json({"identifiable": False, "target_flops": target, "reason": str(error)})
            print(f"proxyscale: {error}", file=sys.stderr)
            return EXIT_NOT_IDENTIFIABLE
    advice = {"metric": args.metric} | advice
    if args.json:
        print_json(advice)
        return 0
    print(f"recommended configuration at C = {target:.3e} FLOPs (95% intervals), fitted to {metric_label(args.metric)}")
    print_advice(advice)
    return 0


def print_advice(advice: dict) -> None:
    flagged = []
    if advice.get("recipes"):  # a recipe sweep: which recipe wins, how sure; the knobs below are its own
        print(f"  {advice['recipes']['line']}")
        print(f"  the configuration below is for recipe {advice['recipes']['recipe']}, fitted to its runs alone")
    for key, fmt in (("n_params", ".4g"), ("tokens", ".4g"), ("width", "d"), ("depth", "d"), ("lr", ".3g"),
                     ("batch_size", "d"), ("schedule", "s"), ("loss", ".4f")):
        knob = advice[key]
        v = {k: ("-" if knob[k] is None else format(knob[k], fmt)) for k in ("value", "low", "high")}
        interval = f"[{v['low']}, {v['high']}]" if knob["low"] is not None and knob["low"] != knob["high"] else ""
        mark = " !" if knob["basis"] in ("best_run", "not_varied") else "  "
        if mark.strip():
            flagged.append(key)
        if len(v["value"]) > 10:  # a long value (a schedule's name) gets the interval's column too
            print(f" {mark}{key:>10} = {v['value']:<35} {knob['basis']:<10}  {knob['why']}")
        else:
            print(f" {mark}{key:>10} = {v['value']:<10} {interval:<24} {knob['basis']:<10}  {knob['why']}")
    print(f"  fit: {advice['fit']}")
    if advice.get("backtest"):
        print(f"  {advice['backtest']}")
    if advice.get("profile"):
        print(f"  ! {advice['profile']['line']}")
    if flagged:
        print(f"  ! {', '.join(flagged)}: not from a fitted law or transfer (see why: the sweep that would fit each)")
