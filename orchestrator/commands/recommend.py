"""`proxyscale recommend`: the compute-optimal configuration at a target, with intervals."""

from __future__ import annotations

import argparse

from orchestrator.commands.common import open_ledger, print_json


def add_parser(subparsers) -> None:
    recommend = subparsers.add_parser("recommend", help="the compute-optimal configuration at a target, with intervals")
    recommend.add_argument("dir")
    recommend.add_argument("--target-flops", type=float, required=True)
    recommend.add_argument("--bootstrap", type=int, default=1000)
    recommend.add_argument("--seed", type=int, default=0)
    recommend.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """The compute-optimal configuration at the target, with intervals."""
    from orchestrator.advice import load_sweep, recommendation

    plain, _, _ = load_sweep(args.dir)
    ledger = open_ledger(args.dir)
    advice = recommendation(plain, ledger, target_flops=args.target_flops, bootstrap=args.bootstrap, seed=args.seed)
    ledger.close()
    if args.json:
        print_json(advice)
        return 0
    print(f"recommended configuration at C = {args.target_flops:.3e} FLOPs (95% intervals)")
    for key, fmt in (("n_params", ".4g"), ("tokens", ".4g"), ("width", "d"), ("depth", "d"), ("lr", ".3g"),
                     ("batch_size", "d"), ("loss", ".4f")):
        v = {k: ("-" if x is None else format(x, fmt)) for k, x in advice[key].items()}
        note = advice["notes"].get(key, "")
        print(f"  {key:>10} = {v['value']:<12} [{v['low']}, {v['high']}]"
              + (f"   ({note})" if note else ""))
    print(f"  {'schedule':>10} = {advice['schedule']['value']:<12} ({advice['notes']['schedule']})")
    print(f"  fit: {advice['notes']['fit']}")
    return 0
