"""`proxyscale plan`: the planner's next runs for a sweep directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from proxyscale.orchestrator.commands.common import open_ledger, print_json


def add_parser(subparsers) -> None:
    plan = subparsers.add_parser("plan", help="the planner's next runs for a sweep directory (table, JSON or a sweep file)")
    plan.add_argument("dir")
    plan.add_argument("--target-flops", type=float, required=True, help="compute of the big run")
    plan.add_argument("--budget-flops", type=float, required=True, help="FLOPs the proposals may spend")
    plan.add_argument("--batch", type=int, help="at most this many runs (default: as many as the budget allows)")
    plan.add_argument("--max-run-flops", type=float, help="cost cap per run")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--json", action="store_true")
    plan.add_argument("-o", "--output", help="also write the proposals as a sweep file that `launch` runs")


def run(args: argparse.Namespace) -> int:
    """The planner's next runs for a sweep directory, as a table and optionally as a sweep file."""
    from proxyscale.orchestrator.advice import load_sweep, plan_proposals, plan_sweep_file

    plain, sweep, space = load_sweep(args.dir)
    ledger = open_ledger(args.dir)
    proposals, specs = plan_proposals(ledger, space, target_flops=args.target_flops, budget_flops=args.budget_flops,
                                      batch=args.batch, max_run_flops=args.max_run_flops, seed=args.seed)
    ledger.close()
    rows = [{"run_id": p.candidate.key, "width": p.candidate.width, "n_params": p.candidate.n_params,
             "tokens": p.candidate.tokens, "lr": p.candidate.lr, "flops": p.candidate.flops, "score": p.score,
             "reason": p.reason} for p in proposals]
    if args.output and specs:
        name = Path(args.output).stem
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)  # `-o next/more.yaml` on a fresh clone
        Path(args.output).write_text(plan_sweep_file(plain, specs, name=name, sweep_dir=str(Path(args.dir).resolve())))
    if args.json:
        print_json({"target_flops": args.target_flops, "budget_flops": args.budget_flops,
                     "total_flops": sum(r["flops"] for r in rows), "proposals": rows})
        return 0
    if not rows:
        print("no proposal: every allowed run is done, or none fits the budget and cost cap")
        return 0
    print(f"{'#':>2} {'run_id':<17} {'width':>5} {'N':>10} {'D':>12} {'lr':>8} {'FLOPs':>10} {'score/PFLOP':>11}  reason")
    for i, r in enumerate(rows, 1):
        print(f"{i:>2} {r['run_id']:<17} {r['width']:>5} {r['n_params']:>10,.0f} {r['tokens']:>12,.0f} {r['lr']:>8.2e} "
              f"{r['flops']:>10.3e} {r['score']:>11.3g}  {r['reason']}")
    print(f"{len(rows)} runs, {sum(r['flops'] for r in rows):.3e} FLOPs of the {args.budget_flops:.3e} budget")
    if args.output:
        folder = Path(args.output).resolve().parent
        print(f"sweep file written to {args.output}; run it with:\n  PROXYSCALE_SWEEP_PATH={folder} proxyscale launch "
              f"sweep={Path(args.output).stem}")
    return 0
