"""`proxyscale check`: predict a run beyond the ladder, print the prediction, train it, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    check = subparsers.add_parser(
        "check", help="train one run beyond the ladder at its compute-optimal N and compare it with the prediction",
        description="C_check = factor x the largest finished run; N = the fitted N_opt(C_check) (nearest width); the "
                    "predicted loss and its 95% interval are printed before training; the result goes to DIR/check.json "
                    "(the run itself to DIR/check, apart from the ladder). Relaunching reuses a finished check run. "
                    "Exit status 4 when the runs do not identify L(N, D).")
    check.add_argument("dir")
    check.add_argument("--factor", type=float, default=6.0, help="compute of the check run / largest ladder run")
    check.add_argument("--bootstrap", type=int, default=1000)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--dry-run", action="store_true", help="print the prediction and train nothing")


def run(args: argparse.Namespace) -> int:
    import os

    from proxyscale.orchestrator.advice import EXIT_NOT_IDENTIFIABLE, NotIdentifiable, load_sweep
    from proxyscale.orchestrator.check import CHECK_DIR, check_record, plan_check, write_check
    from proxyscale.orchestrator.commands.common import open_ledger
    from proxyscale.orchestrator.commands.launch import _cluster_settings
    from proxyscale.orchestrator.execution import run_sweep
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.tracking import validate_settings

    directory = Path(args.dir)
    plain, sweep, _ = load_sweep(directory)
    ledger = open_ledger(args.dir)
    try:
        plan = plan_check(plain, sweep, ledger, factor=args.factor, bootstrap=args.bootstrap, seed=args.seed)
    except NotIdentifiable as error:
        print(f"proxyscale: {error}", file=sys.stderr)
        return EXIT_NOT_IDENTIFIABLE
    finally:
        ledger.close()
    low, high = plan.interval
    print(f"check run {plan.spec.run_id()}: {plan.flops:.3e} FLOPs = {plan.flops / plan.ladder_flops:.1f}x the largest "
          f"ladder run; N = {plan.n_params:,} (width {plan.spec.model.width}), D = {plan.tokens:,} tokens, "
          f"LR {plan.spec.train.lr:.3g}, {plan.spec.train.schedule}")
    print(f"  predicted loss {plan.predicted:.4f}, 95% interval for the measured loss [{low:.4f}, {high:.4f}] "
          f"(law alone [{plan.mean_interval[0]:.4f}, {plan.mean_interval[1]:.4f}])", flush=True)
    print(f"  {plan.calibration}", flush=True)
    if args.dry_run:
        return 0
    check_dir = directory / CHECK_DIR
    check_ledger = Ledger(check_dir / "ledger.sqlite")
    from proxyscale.orchestrator.sweep import plan_rows

    check_ledger.register(f"{sweep.name}-check", [plan.spec], plan_rows([plan.spec]))
    row = check_ledger.run(plan.spec.run_id())
    if row["status"] not in ("finished", "diverged"):
        cluster = _cluster_settings(plain.get("cluster") or {})
        # One run: give it every CPU of the machine (torch threads follow cpus_per_run).
        cpus = cluster.num_cpus or os.cpu_count() or 1
        from dataclasses import replace

        cluster = replace(cluster, cpus_per_run=float(cpus), max_concurrent=1)
        tracking = validate_settings(plain.get("tracking") or {"enabled": False})
        run_sweep([plan.spec], ledger=check_ledger, sweep=f"{sweep.name}-check", sweep_dir=str(check_dir.resolve()),
                  cluster=cluster, tracking=tracking)
        row = check_ledger.run(plan.spec.run_id())
    check_ledger.close()
    measured = row["final_eval_loss"] if row["status"] == "finished" else None
    record = check_record(plan, measured=measured, status=row["status"], factor=args.factor)
    path = write_check(directory, record)
    if measured is None:
        print(f"  the check run ended {row['status']}: {row['error'] or row['reason'] or ''}".rstrip(), file=sys.stderr)
        return 1
    verdict = "INSIDE" if record["inside"] else "OUTSIDE"
    error = (measured - plan.predicted) / plan.predicted
    print(f"  measured loss {measured:.4f} ({error:+.2%} from the prediction): {verdict} the 95% interval "
          f"[{low:.4f}, {high:.4f}]; written to {path}")
    return 0
