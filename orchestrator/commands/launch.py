"""`proxyscale launch`: expand a sweep, show the plan, run it on Ray with live progress, summarise."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import print_summary


def add_parser(subparsers) -> None:
    launch = subparsers.add_parser(
        "launch", help="run a sweep (sweep=NAME) on Ray; relaunching the same command resumes it",
        description="Expand sweep=NAME (a file in sweeps/) with Hydra overrides, show the plan, run it on Ray.",
    )
    launch.add_argument("overrides", nargs="*", help="Hydra overrides: sweep=demo model.depth=3 cluster.num_cpus=2 ...")
    launch.add_argument("--dry-run", action="store_true", help="print the plan and start nothing")
    launch.add_argument("--cfg", choices=["job"], help="print the composed config and exit (as a Hydra app)")
    launch.add_argument("--plain", action="store_true",
                        help="progress as plain lines, one per event (the default when stdout is not a terminal) "
                             "instead of the live table")


def run(args: argparse.Namespace) -> int:
    """Expand the sweep, show the plan, run what is not done yet on Ray, summarise.

    SIGTERM and SIGINT stop it cleanly wherever it is (orchestrator.stopping): running runs are cancelled
    and marked so, the ledger and W&B runs are closed, Ray is shut down, and it exits 143 or 130.
    """
    from proxyscale.orchestrator import stopping

    stopping.install()
    try:
        with ExitStack() as held:  # the sweep directory's lock, once taken, is held until the command returns
            return _launch(args, held)
    except KeyboardInterrupt as stop:
        print(f"\n{stopping.stop_message(stop)}", file=sys.stderr, flush=True)
        from proxyscale.orchestrator.execution import shutdown_ray

        shutdown_ray()
        return stopping.exit_code_of(stop)


def _launch(args: argparse.Namespace, held: ExitStack) -> int:
    from omegaconf import OmegaConf

    from proxyscale.orchestrator.active import ActiveLoop, planner_settings
    from proxyscale.orchestrator.commands.downstream import check_evals
    from proxyscale.orchestrator.config import check_not_swept, compose_config, to_plain
    from proxyscale.orchestrator.execution import run_sweep
    from proxyscale.orchestrator.ledger import DONE_STATUSES, Ledger
    from proxyscale.orchestrator.live import refit
    from proxyscale.orchestrator.lock import EXIT_LOCKED, SweepLocked, sweep_lock
    from proxyscale.orchestrator.sweep import expand, keep_steps_by_parent, plan_rows, sweep_from_config
    from proxyscale.orchestrator.tracking import validate_settings

    cfg = compose_config(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    plain = to_plain(cfg)
    sweep = sweep_from_config(plain)
    check_not_swept(args.overrides, sweep)
    runs = expand(sweep)
    check_evals(runs)  # every train.evals function imports, before anything starts
    cluster = _cluster_settings(plain["cluster"])
    tracking = validate_settings(plain["tracking"])
    active = planner_settings(plain.get("planner"))
    rows = plan_rows(runs)
    sweep_dir = _sweep_dir(cfg, sweep.name)
    target = _target_flops(plain.get("target_flops"), rows)
    budget = _budget_flops(plain.get("budget_flops"), active)
    existed = sweep_dir.exists()
    if not args.dry_run:  # one live launch per sweep directory: a second one exits at once
        try:
            held.enter_context(sweep_lock(sweep_dir))
        except SweepLocked as error:
            print(f"proxyscale: error: {error}", file=sys.stderr)
            return EXIT_LOCKED
    ledger_path = sweep_dir / "ledger.sqlite"
    done, recorded = set(), []
    if ledger_path.exists():
        ledger = Ledger(ledger_path)
        done = {r["run_id"] for r in ledger.runs(DONE_STATUSES)}
        recorded = ledger.runs()
        ledger.close()
    try:
        _check_forks(runs, recorded, sweep_dir, sweep.name, cluster.storage)
    except SpecError:
        if not existed:  # refused before anything started: leave no directory behind (only the lock was there)
            import shutil

            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    print(f"sweep {sweep.name!r} in {sweep_dir}" + (f": {sweep.description}" if sweep.description else ""))
    if sweep.simulated is not None:
        print("trainer: SIMULATED (losses from the ground truth in trainer.*; nothing is trained)")
    _print_plan(rows, done)
    if active is not None:
        goal = (f"to decide between the recipes at C = {target:.3e} (it stops at P(best) >= {active.decide_at:g})"
                if active.objective == "compare" else f"to pin down N_opt and L at C = {target:.3e}")
        print(f"planner=active: the {len(rows)} runs above are the allowed space; the loop spends at most "
              f"{budget:.3e} FLOPs {goal}")
    if args.dry_run:
        print("dry run: nothing started")
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # The resolved config, so `plan`, `recommend` and `report` know the sweep's allowed space.
    (sweep_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
    ledger = Ledger(ledger_path)
    loop = None
    if active is None:
        ledger.register(sweep.name, runs, rows)
        todo = [spec for spec in runs if spec.run_id() not in done]
    else:
        loop = ActiveLoop(sweep_name=sweep.name, space=runs, ledger=ledger, settings=active, target_flops=target,
                          budget_flops=budget)
        todo = loop.initial() or [spec for spec in runs if spec.run_id() in
                                  {r["run_id"] for r in ledger.runs() if r["status"] not in DONE_STATUSES}]
    monitor = _monitor(args, sweep.name, sweep_dir, rows, done, todo, ledger, loop, tracking, target,
                       todo_flops=None if active is None else budget - sum(r["flops"] for r in rows if r["run_id"] in done),
                       budget_flops=None if active is None else budget)
    held.callback(ledger.close)  # also on a stop signal (a second close is a no-op)
    with monitor:  # the live table (or plain lines) while the sweep runs; a stop signal closes it and its W&B run
        run_sweep(todo, ledger=ledger, sweep=sweep.name, sweep_dir=str(sweep_dir.resolve()), cluster=cluster,
                  tracking=tracking, on_event=monitor, propose=loop.propose if loop else None,
                  keep_steps=keep_steps_by_parent(runs), release_checkpoints=loop is None)
    print_summary(ledger.runs())
    if loop is not None:
        spent = sum(r["flops"] for r in ledger.runs())
        grid = sum(r["flops"] for r in rows)
        print(f"planner: {loop.stopped or 'stopped'}; {len(ledger.runs())} of {len(rows)} allowed runs, "
              f"{spent:.3e} FLOPs = {spent / grid:.1%} of the full grid ({grid:.3e})")
    final = refit(ledger, target, bootstrap=1000)
    if final is not None:
        print(final.line(), flush=True)
    monitor.finish(final)  # the W&B analysis run's last point, figures and summary
    if monitor.analysis is not None and monitor.analysis.run_dir:
        print(f"live analysis: W&B run {sweep.name}-analysis ({monitor.analysis.run_dir})")
    ledger.close()
    return 0


def _sweep_dir(cfg, sweep_name: str) -> Path:
    return Path(cfg.sweep_dir) if cfg.get("sweep_dir") else Path("runs") / sweep_name


def _check_forks(runs: list, recorded: list[dict], sweep_dir: Path, sweep_name: str = "", storage: str | None = None) -> None:
    """Every fork's parent exists (in this sweep or the ledger), matches it, and has or will have the checkpoint."""
    import json

    from proxyscale.models.spec import RunSpec, parse_init_from
    from proxyscale.models.train import CHECKPOINT_NAME, step_checkpoint_name
    from proxyscale.orchestrator.storage import CheckpointStore
    from proxyscale.orchestrator.sweep import check_fork

    store = CheckpointStore(storage, str(sweep_dir), sweep_name)  # where the parents' checkpoints are

    planned = {spec.run_id(): spec for spec in runs}
    rows = {row["run_id"]: row for row in recorded}
    for spec in runs:
        if spec.train.init_from is None or spec.run_id() in rows and rows[spec.run_id()]["status"] in ("finished",):
            continue
        parent_id, step = parse_init_from(spec.train.init_from)
        parent = planned.get(parent_id)
        if parent is None and parent_id in rows:
            parent = RunSpec.from_dict(json.loads(rows[parent_id]["spec_json"]))
        check_fork(spec, parent)
        if parent_id not in planned and rows[parent_id]["status"] == "finished":
            names = store.names(parent_id)
            at_end = step == parent.train.steps and CHECKPOINT_NAME in names
            if step_checkpoint_name(step) not in names and not at_end:
                kept = sorted(int(name[len("step_"):-len(".pt")]) for name in names if name.startswith("step_"))
                if CHECKPOINT_NAME in names:
                    kept.append(parent.train.steps)
                raise SpecError(f"train.init_from: run {parent_id} has no checkpoint at step {step} "
                                f"(kept: {kept or 'none'}); fork at one of those steps, or relaunch the parent's "
                                "sweep with this fork in it so the step is kept")


def _print_plan(rows: list[dict], done: set[str]) -> None:
    print(f"{'run_id':<17} {'width':>5} {'depth':>5} {'N':>10} {'D':>11} {'FLOPs':>10} {'lr':>8} {'seed':>4}  "
          f"{'schedule':<8} {'from':<22} state")
    for row in rows:
        state = "done" if row["run_id"] in done else "to run"
        origin = f"{row['parent_id']}@{row['parent_step']}" if row.get("parent_id") else "scratch"
        print(f"{row['run_id']:<17} {row['width']:>5} {row['depth']:>5} {row['n_params']:>10,} {row['tokens']:>11,} "
              f"{row['flops']:>10.3e} {row['lr']:>8.2e} {row['seed']:>4}  {row['schedule']:<8} {origin:<22} {state}")
    total = sum(r["flops"] for r in rows)
    remaining = sum(r["flops"] for r in rows if r["run_id"] not in done)
    print(f"{len(rows)} runs, total compute {total:.3e} FLOPs ({len(done)} already done; {remaining:.3e} FLOPs to run)")
    cells = [r for r in rows if r.get("parent_id") and r["schedule"] != "constant"]
    if cells:
        # What the annealed (N, D) cells would cost as fresh runs: every cell's whole token count.
        fresh = sum(r["flops"] * r["tokens"] / (r["tokens"] - r["parent_step"] * r["batch_tokens"]) for r in cells)
        segments = sum(1 for r in rows if r.get("parent_id") and r["schedule"] == "constant")
        print(f"forks: {len(cells)} cooldowns and {segments} stable-run extensions (FLOPs column: their own new tokens "
              f"only; D: every token the model has seen); the {len(cells)} cooldown cells as fresh runs would cost "
              f"{fresh:.3e} FLOPs, {fresh / total:.1f}x this plan")


def _monitor(args, sweep_name: str, sweep_dir: Path, rows: list[dict], done: set[str], todo: list, ledger, loop,
             tracking: dict, target: float, *, todo_flops: float | None, budget_flops: float | None):
    """run_sweep's on_event: the live table (or plain lines), a refit after each finished run, the W&B analysis run."""
    from proxyscale.orchestrator.live import LaunchMonitor, Refitter, SweepState, make_view
    from proxyscale.orchestrator.tracking import LiveAnalysisRun

    state = SweepState(rows, done, todo=[spec.run_id() for spec in todo], todo_flops=todo_flops,
                       budget_flops=budget_flops)
    view = make_view(state, plain=getattr(args, "plain", False), title=f"proxyscale launch: {sweep_name} ({sweep_dir})")
    return LaunchMonitor(state, view, refit=Refitter(ledger, target, bootstrap=100),  # warm-started refits
                         planner=loop,
                         analysis=LiveAnalysisRun(tracking, sweep=sweep_name, directory=sweep_dir.resolve()),
                         ledger=ledger, figures_dir=sweep_dir / "live")


def _target_flops(raw, rows: list[dict]) -> float:
    if raw is None:
        from proxyscale.orchestrator.ledger import cell_flops

        return 100 * max(cell_flops(r) for r in rows)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise SpecError(f"target_flops: must be a positive number of FLOPs (e.g. 1e18) or null, got {raw!r}")
    return float(raw)


def _budget_flops(raw, active) -> float:
    if active is None:
        if raw is not None:
            raise SpecError("budget_flops: only planner=active spends a budget; add planner=active or drop it")
        return float("inf")
    if raw is None:
        raise SpecError("budget_flops: planner=active needs a compute budget, e.g. budget_flops=2e12")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise SpecError(f"budget_flops: must be a positive number of FLOPs, got {raw!r}")
    return float(raw)


def _cluster_settings(raw: dict):
    from proxyscale.models.spec import build_spec
    from proxyscale.orchestrator.execution import ClusterSettings

    settings = build_spec(ClusterSettings, raw, "cluster")
    if settings.cpus_per_run <= 0:
        raise SpecError(f"cluster.cpus_per_run: must be > 0, got {settings.cpus_per_run}")
    from proxyscale.orchestrator.gpus import check_setting

    check_setting(settings.gpus_per_run)  # 'auto' or > 0; against the nodes' GPUs once Ray is up (execution.py)
    if settings.peak_flops is not None and not settings.peak_flops > 0:
        raise SpecError(f"cluster.peak_flops: must be a positive number of FLOP/s (e.g. 989e12) or null, "
                        f"got {settings.peak_flops}")
    if settings.max_concurrent is not None and settings.max_concurrent < 1:
        raise SpecError(f"cluster.max_concurrent: must be >= 1 or null, got {settings.max_concurrent}")
    if settings.address is not None and not (settings.address == "auto" or settings.address.startswith("ray://")
                                             or ":" in settings.address):
        raise SpecError(f"cluster.address: {settings.address!r} is not allowed; use null, 'auto', 'ray://host:10001'"
                        " or host:port")
    from dataclasses import replace

    from proxyscale.orchestrator.storage import check_storage

    return replace(settings, storage=check_storage(settings.storage))
