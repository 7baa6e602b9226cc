"""The `proxyscale` command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from models.spec import SpecError


def _format_record(record) -> str:
    parts = [f"step {record.step:>6}", f"tokens {record.tokens:>10,}", f"lr {record.lr:.2e}"]
    if record.train_loss is not None:
        parts.append(f"train {record.train_loss:.4f}")
    if record.eval_loss is not None:
        parts.append(f"eval {record.eval_loss:.4f}")
    if "max_attn_logit" in record.probes:
        parts.append(f"max-attn-logit {record.probes['max_attn_logit']:.2f}")
    if "grad_norm" in record.probes:
        parts.append(f"grad-norm {record.probes['grad_norm']:.3f}")
    return "  ".join(parts)


def command_train(overrides: list[str]) -> int:
    """Compose the config, train ONE run, write its result; relaunching resumes from the checkpoint."""
    from models.data import load_tokens, unigram_entropy
    from models.flops import count_parameters, training_flops
    from models.train import train_run
    from orchestrator.config import compose_config, run_spec_from_config

    cfg = compose_config(overrides)
    spec = run_spec_from_config(cfg)
    out_dir = Path(cfg.out_dir) / spec.run_id()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = count_parameters(spec.model)
    source = load_tokens(spec.data)
    entropy = unigram_entropy(source.train, source.vocab_size)
    print(f"run {spec.run_id()}  N={counts.total:,} (non-embedding {counts.non_embedding:,})  "
          f"D={spec.train.steps * spec.train.batch_tokens:,} tokens  steps={spec.train.steps}  "
          f"C={training_flops(spec):.3e} FLOPs")
    print(f"data: {source.description}, hash {source.data_hash[:12]}, unigram entropy {entropy:.4f} nats/token")
    (out_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
    with open(out_dir / "records.jsonl", "a") as records:
        def on_record(record) -> None:
            records.write(json.dumps(record.__dict__) + "\n")
            records.flush()
            print(_format_record(record), flush=True)

        result = train_run(spec, on_record=on_record, checkpoint_dir=out_dir)
    summary = result.to_dict() | {"unigram_entropy": entropy}
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"{result.status}: final eval loss {result.final_eval_loss:.4f} (best {result.best_eval_loss:.4f}, "
          f"unigram entropy {entropy:.4f}) in {result.wall_seconds:.1f}s; result in {out_dir}/result.json")
    if result.reason:
        print(f"reason: {result.reason}")
    return 0


def command_coord_check(args: argparse.Namespace) -> int:
    from analysis.plots import plot_coord_check
    from models.coord_check import coord_check

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


def _read_columns(path: str, columns: dict[str, str | None]):
    import pandas as pd

    table = pd.read_csv(path)
    for option, column in columns.items():
        if column is not None and column not in table.columns:
            raise SpecError(f"{option}: column {column!r} is not in {path}; columns are {list(table.columns)}")
    return table


def _strict_json(value):
    """Standard JSON has no NaN or Infinity: an undefined or unbounded interval end becomes null."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if hasattr(value, "dtype"):  # a numpy scalar: its Python value
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _print_json(payload: dict) -> None:
    print(json.dumps(_strict_json(payload), indent=2, allow_nan=False))


def command_fit(args: argparse.Namespace) -> int:
    """Fit a scaling law to any CSV (a W&B export, a published table) and report the target allocation."""
    from analysis.fit import fit_chinchilla
    from analysis.isoflop import fit_isoflop

    if args.dir is not None:
        # A sweep directory: its finished runs, N = all parameters, D = tokens trained.
        import pandas as pd

        from analysis.isoflop import budget_levels

        ledger = _open_ledger(args.dir)
        rows = _finished_rows(ledger)
        ledger.close()
        if len(rows) < 5:
            raise SpecError(f"DIR: {args.dir} has {len(rows)} finished runs; L(N, D) needs at least 5")
        # --law isoflop groups runs by the budget they were planned at (FLOPs per token x tokens).
        table = pd.DataFrame({"n_params": [r["n_params"] for r in rows], "tokens": [r["tokens"] for r in rows],
                              "final_eval_loss": [r["final_eval_loss"] for r in rows],
                              "flop_budget": budget_levels([r["flops"] for r in rows])})
        args.n, args.d, args.loss = "n_params", "tokens", "final_eval_loss"
        args.flops = "flop_budget" if args.law == "isoflop" else None
    else:
        if args.csv is None:
            raise SpecError("fit: give a sweep directory or --csv FILE")
        if args.loss is None:
            raise SpecError("fit: give --loss COL")
        if args.n is None and args.d is None:
            raise SpecError("fit: give --n COL or --d COL (or both)")
        if args.d is None and args.flops is None or args.n is None and args.flops is None:
            raise SpecError("fit: with only one of --n / --d, give --flops COL so the other follows from C = 6 N D")
        table = _read_columns(args.csv, {"--n": args.n, "--d": args.d, "--loss": args.loss, "--flops": args.flops})
    if args.drop_highest_loss:
        table = table.sort_values(args.loss).iloc[: -args.drop_highest_loss]
    flops = table[args.flops].to_numpy(float) if args.flops else None
    n = table[args.n].to_numpy(float) if args.n else flops / (6 * table[args.d].to_numpy(float))
    d = table[args.d].to_numpy(float) if args.d else flops / (6 * n)
    loss = table[args.loss].to_numpy(float)
    if flops is None:
        flops = 6 * n * d
    payload: dict = {"law": args.law, "n_points": int(len(loss)), "bootstrap": args.bootstrap,
                     "n_definition": f"column {args.n!r}" if args.n else "C / (6 D)"}
    if args.law == "chinchilla":
        fit = fit_chinchilla(n, d, loss, bootstrap=args.bootstrap, seed=args.seed)
        payload["objective"] = fit.objective
        payload["parameters"] = {k: v.as_dict() for k, v in fit.intervals().items()}
        payload["n_opt_exponent"] = fit.params["beta"] / (fit.params["alpha"] + fit.params["beta"])
        target = fit.compute_optimal(args.target_flops) if args.target_flops else None
    else:
        if args.flops is None:
            raise SpecError("fit --law isoflop: give --flops COL (runs are grouped by their FLOP budget)")
        fit = fit_isoflop(flops, d if args.n is None else n, loss, x_is_tokens=args.n is None,
                          bootstrap=args.bootstrap, seed=args.seed)
        payload["budgets"] = [float(b) for b in fit.budgets]
        payload["parameters"] = {
            "n_opt_coefficient": fit.n_law.coefficient.as_dict(), "n_opt_exponent": fit.n_law.exponent.as_dict(),
            "d_opt_coefficient": fit.d_law.coefficient.as_dict(), "d_opt_exponent": fit.d_law.exponent.as_dict(),
            "loss_coefficient": fit.loss_law.coefficient.as_dict(), "loss_exponent": fit.loss_law.exponent.as_dict(),
        }
        target = fit.at(args.target_flops) if args.target_flops else None
    if target is not None:
        payload["target"] = {"flops": args.target_flops} | {k: v.as_dict() for k, v in target.items()}
    if args.json:
        _print_json(payload)
        return 0
    level = "95%"
    print(f"{args.law} fit on {payload['n_points']} points ({args.bootstrap} bootstrap resamples, {level} intervals)")
    for name, value in payload["parameters"].items():
        print(f"  {name:>18} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
    if target is not None:
        print(f"at C = {args.target_flops:.3g} FLOPs:")
        for name in ("n_opt", "d_opt", "loss"):
            value = payload["target"][name]
            print(f"  {name:>18} = {value['value']:<12.6g} [{value['low']:.6g}, {value['high']:.6g}]")
    return 0


def command_fit_schedule(args: argparse.Namespace) -> int:
    from analysis.schedule_law import curve_from_table, fit_schedule_law

    def load(path: str):
        table = _read_columns(path, {"step": "step", "lr": "lr", "loss": "loss"})
        return curve_from_table(Path(path).stem, table["step"], table["lr"], table["loss"],
                                warmup_steps=args.warmup_steps, peak_lr=args.peak_lr)

    fitting = [load(path) for path in args.fit]
    fit = fit_schedule_law(fitting, decay=args.decay, skip_fraction=args.skip_fraction)
    payload = {
        "parameters": fit.as_dict(),
        "fit_error": {c.name: fit.relative_error(c, args.skip_fraction) for c in fitting},
        "predict_error": {c.name: fit.relative_error(c, args.skip_fraction) for c in map(load, args.predict or [])},
    }
    if args.json:
        _print_json(payload)
        return 0
    p = payload["parameters"]
    print(f"L(s) = {p['L0']:.4f} + {p['A']:.4f} S1^-{p['alpha']:.4f} - {p['C']:.4f} S2   (lambda = {p['decay']})")
    for kind in ("fit_error", "predict_error"):
        for name, error in payload[kind].items():
            print(f"  {kind.replace('_error', ''):>7} {name:<24} mean |relative error| {100 * error:.3f}%"
                  f" (past the first {args.skip_fraction:.0%})")
    return 0


def _sweep_dir(cfg, sweep_name: str) -> Path:
    return Path(cfg.sweep_dir) if cfg.get("sweep_dir") else Path("runs") / sweep_name


def _print_plan(rows: list[dict], done: set[str]) -> None:
    print(f"{'run_id':<17} {'width':>5} {'depth':>5} {'N':>10} {'D':>11} {'FLOPs':>10} {'lr':>8} {'seed':>4}  state")
    for row in rows:
        state = "done" if row["run_id"] in done else "to run"
        print(f"{row['run_id']:<17} {row['width']:>5} {row['depth']:>5} {row['n_params']:>10,} {row['tokens']:>11,} "
              f"{row['flops']:>10.3e} {row['lr']:>8.2e} {row['seed']:>4}  {state}")
    total = sum(r["flops"] for r in rows)
    remaining = sum(r["flops"] for r in rows if r["run_id"] not in done)
    print(f"{len(rows)} runs, total compute {total:.3e} FLOPs ({len(done)} already done; {remaining:.3e} FLOPs to run)")


class _Progress:
    """Live lines: done / running / failed / diverged, ETA by FLOPs, best loss so far."""

    def __init__(self, rows: list[dict], already_done: set[str], on_finished=lambda: None,
                 todo_flops: float | None = None) -> None:
        self.on_finished = on_finished
        self.flops = {r["run_id"]: r["flops"] for r in rows}
        # The grid runs every row; the active planner at most its budget.
        grid_todo = sum(f for run_id, f in self.flops.items() if run_id not in already_done)
        self.todo = grid_todo if todo_flops is None else min(grid_todo, todo_flops)
        self.spent = 0.0
        self.counts = {"finished": 0, "diverged": 0, "failed": 0}
        self.running: set[str] = set()
        self.best: float | None = None
        self.started = time.perf_counter()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        eta = elapsed * (self.todo - self.spent) / self.spent if self.spent else float("nan")
        best = f"{self.best:.4f}" if self.best is not None else "-"
        return (f"[{self.counts['finished']} done, {len(self.running)} running, {self.counts['failed']} failed, "
                f"{self.counts['diverged']} diverged | {elapsed:5.0f}s elapsed, ETA {eta:5.0f}s | best loss {best}]")

    def __call__(self, kind: str, run_id: str, payload) -> None:
        if kind == "submitted":
            self.running.add(run_id)
            return
        if kind == "started":
            print(f"{run_id} started on node {payload['node'][:12]} pid {payload['pid']}", flush=True)
            return
        if kind == "record":
            return
        self.running.discard(run_id)
        if kind != "cancelled":  # a cancelled run resumes later; its compute still lies ahead
            self.spent += self.flops.get(run_id, 0.0)
        if kind in self.counts:
            self.counts[kind] += 1
        detail = ""
        if kind in ("finished", "diverged"):
            result = payload["result"]
            loss = result["final_eval_loss"]
            if kind == "finished" and (self.best is None or loss < self.best):
                self.best = loss
            detail = f"eval loss {loss:.4f} in {result['wall_seconds']:.0f}s"
            if result.get("reason"):
                detail += f" ({result['reason']})"
        elif kind == "failed":
            detail = payload["error"].splitlines()[0]
        print(f"{run_id} {kind}: {detail}  {self.line()}", flush=True)
        if kind == "finished":
            self.on_finished()


def command_launch(args: argparse.Namespace) -> int:
    """Expand the sweep, show the plan, run what is not done yet on Ray, summarise."""
    from omegaconf import OmegaConf

    from orchestrator.active import ActiveLoop, planner_settings
    from orchestrator.config import compose_config, to_plain
    from orchestrator.execution import run_sweep
    from orchestrator.ledger import DONE_STATUSES, Ledger
    from orchestrator.sweep import expand, plan_rows, sweep_from_config
    from orchestrator.tracking import validate_settings

    cfg = compose_config(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    plain = to_plain(cfg)
    sweep = sweep_from_config(plain)
    runs = expand(sweep)
    cluster = _cluster_settings(plain["cluster"])
    tracking = validate_settings(plain["tracking"])
    active = planner_settings(plain.get("planner"))
    rows = plan_rows(runs)
    sweep_dir = _sweep_dir(cfg, sweep.name)
    target = _target_flops(plain.get("target_flops"), rows)
    budget = _budget_flops(plain.get("budget_flops"), active)
    ledger_path = sweep_dir / "ledger.sqlite"
    done = set()
    if ledger_path.exists():
        ledger = Ledger(ledger_path)
        done = {r["run_id"] for r in ledger.runs(DONE_STATUSES)}
        ledger.close()
    print(f"sweep {sweep.name!r} in {sweep_dir}" + (f": {sweep.description}" if sweep.description else ""))
    if sweep.simulated is not None:
        print("trainer: SIMULATED (losses from the ground truth in trainer.*; nothing is trained)")
    _print_plan(rows, done)
    if active is not None:
        print(f"planner=active: the {len(rows)} runs above are the allowed space; the loop spends at most "
              f"{budget:.3e} FLOPs to pin down N_opt and L at C = {target:.3e}")
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
    progress = _Progress(rows, done, on_finished=lambda: _print_estimate(ledger, target, bootstrap=100),
                         todo_flops=None if active is None else budget - sum(r["flops"] for r in rows if r["run_id"] in done))
    try:
        run_sweep(todo, ledger=ledger, sweep=sweep.name, sweep_dir=str(sweep_dir.resolve()), cluster=cluster,
                  tracking=tracking, on_event=progress, propose=loop.propose if loop else None)
    except KeyboardInterrupt:
        print("\ninterrupted: running runs marked cancelled; relaunch the same command to resume", file=sys.stderr)
        return 130
    _print_summary(ledger.runs())
    if loop is not None:
        spent = sum(r["flops"] for r in ledger.runs())
        grid = sum(r["flops"] for r in rows)
        print(f"planner: {loop.stopped or 'stopped'}; {len(ledger.runs())} of {len(rows)} allowed runs, "
              f"{spent:.3e} FLOPs = {spent / grid:.1%} of the full grid ({grid:.3e})")
    _print_estimate(ledger, target, bootstrap=1000)
    ledger.close()
    return 0


def _target_flops(raw, rows: list[dict]) -> float:
    if raw is None:
        return 100 * max(r["flops"] for r in rows)
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


def _finished_rows(ledger) -> list[dict]:
    return [r for r in ledger.runs(["finished"]) if r["final_eval_loss"] is not None]


def _finished_table(ledger) -> tuple:
    import numpy as np

    rows = _finished_rows(ledger)
    n = np.array([r["n_params"] for r in rows], float)
    d = np.array([r["tokens"] for r in rows], float)
    loss = np.array([r["final_eval_loss"] for r in rows], float)
    return n, d, loss


def _print_estimate(ledger, target_flops: float, bootstrap: int) -> None:
    """Refit L(N, D) on the finished runs and print the compute-optimal estimate at the target."""
    from analysis.fit import fit_chinchilla

    n, d, loss = _finished_table(ledger)
    if len(loss) < 6 or len(set(n)) < 3 or len(set(d)) < 3:
        return  # five parameters need more than a handful of runs spread over N and D
    fit = fit_chinchilla(n, d, loss, bootstrap=bootstrap, seed=0)
    p = fit.params
    at_bound = [name for name in ("alpha", "beta") if not 1e-3 < p[name] < 3 - 1e-3]
    if at_bound:
        print(f"  fit on {len(loss)} runs: not identifiable yet ({' and '.join(at_bound)} at the bound of [0, 3]:"
              f" the runs do not yet separate the N and D terms); L(N, D) needs runs spread over both", flush=True)
        return
    at = fit.compute_optimal(target_flops)
    print(f"  fit on {len(loss)} runs: L = {p['E']:.3f} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f};"
          f" at C={target_flops:.2e}: N_opt {at['n_opt'].value:.3g} [{at['n_opt'].low:.3g}, {at['n_opt'].high:.3g}],"
          f" D_opt {at['d_opt'].value:.3g}, loss {at['loss'].value:.4f} [{at['loss'].low:.4f}, {at['loss'].high:.4f}]"
          f" ({bootstrap} bootstraps)", flush=True)


def _cluster_settings(raw: dict):
    from models.spec import build_spec
    from orchestrator.execution import ClusterSettings

    settings = build_spec(ClusterSettings, raw, "cluster")
    if settings.cpus_per_run <= 0:
        raise SpecError(f"cluster.cpus_per_run: must be > 0, got {settings.cpus_per_run}")
    if settings.gpus_per_run < 0:
        raise SpecError(f"cluster.gpus_per_run: must be >= 0 (fractions share a GPU), got {settings.gpus_per_run}")
    if settings.max_concurrent is not None and settings.max_concurrent < 1:
        raise SpecError(f"cluster.max_concurrent: must be >= 1 or null, got {settings.max_concurrent}")
    if settings.address is not None and not (settings.address == "auto" or settings.address.startswith("ray://")
                                             or ":" in settings.address):
        raise SpecError(f"cluster.address: {settings.address!r} is not allowed; use null, 'auto', 'ray://host:10001'"
                        " or host:port")
    return settings


def _print_summary(runs: list[dict]) -> None:
    print(f"\n{'run_id':<17} {'status':<9} {'width':>5} {'N':>10} {'D':>11} {'final loss':>10} {'best loss':>10} {'s':>6}")
    for r in runs:
        final = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
        best = f"{r['best_eval_loss']:.4f}" if r["best_eval_loss"] is not None else "-"
        wall = f"{r['wall_seconds']:.0f}" if r["wall_seconds"] is not None else "-"
        print(f"{r['run_id']:<17} {r['status']:<9} {r['width']:>5} {r['n_params']:>10,} {r['tokens']:>11,} "
              f"{final:>10} {best:>10} {wall:>6}")
    statuses = {}
    for r in runs:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))


def _open_ledger(directory: str):
    from orchestrator.ledger import Ledger

    path = Path(directory) / "ledger.sqlite"
    if not path.exists():
        raise SpecError(f"DIR: {directory} holds no ledger.sqlite; give a sweep directory made by `proxyscale launch`")
    return Ledger(path)


def command_status(args: argparse.Namespace) -> int:
    ledger = _open_ledger(args.dir)
    _print_summary(ledger.runs())
    ledger.close()
    return 0


def command_export(args: argparse.Namespace) -> int:
    import pandas as pd

    from orchestrator.ledger import RUN_COLUMNS

    ledger = _open_ledger(args.dir)
    if args.steps:
        table = pd.DataFrame(ledger.steps())
        if not table.empty:
            probes = pd.json_normalize(table.pop("probes_json").map(json.loads)).add_prefix("probe.")
            table = pd.concat([table, probes], axis=1)
    else:
        table = pd.DataFrame(ledger.runs())
        table = table[[c for c in RUN_COLUMNS if c in table.columns]] if not table.empty else table
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


def command_transfer(args: argparse.Namespace) -> int:
    """Per setting (parametrisation, qk-layernorm, z-loss): LR_opt per width, muP drift, LR sensitivity."""
    from analysis.hyperparams import lr_sensitivity, predict_divergence_lr, transfer_drift

    ledger = _open_ledger(args.dir)
    rows = ledger.runs(["finished", "diverged"])
    ledger.close()
    settings: dict[tuple, list[dict]] = {}
    for row in rows:
        spec = json.loads(row["spec_json"])
        key = (spec["model"]["parametrization"], spec["model"]["qk_layernorm"], spec["train"]["z_loss"])
        settings.setdefault(key, []).append(row | {"loss": row["final_eval_loss"] if row["status"] == "finished"
                                                   else float("nan")})
    groups = []
    for (parametrization, qk_layernorm, z_loss), members in sorted(settings.items(), key=str):
        widths = sorted({m["width"] for m in members})
        entry = {"parametrization": parametrization, "qk_layernorm": qk_layernorm, "z_loss": z_loss,
                 "runs": len(members), "sensitivity": {}, "lr_opt": {}, "drift": None}
        for width in widths:
            at_width = [m for m in members if m["width"] == width]
            initial = max(m["initial_eval_loss"] for m in at_width)
            entry["sensitivity"][width] = lr_sensitivity([m["loss"] for m in at_width], initial)
        usable = [m for m in members if m["loss"] == m["loss"]]
        if len(widths) >= 2 and all(sum(m["width"] == w for m in usable) >= 2 for w in widths):
            lr_opt, drift = transfer_drift([m["width"] for m in usable], [m["lr"] for m in usable],
                                           [m["loss"] for m in usable], bootstrap=args.bootstrap)
            entry["lr_opt"], entry["drift"] = lr_opt, drift.as_dict()
        if args.target_width:
            found = predict_divergence_lr([m["width"] for m in members], [m["lr"] for m in members],
                                          [m["status"] == "diverged" for m in members], args.target_width,
                                          bootstrap=args.bootstrap)
            if found is not None:
                entry["divergence_lr"] = found[0]
                entry["divergence_lr_at_target"] = {"width": args.target_width} | found[1].as_dict()
        groups.append(entry)
    if not groups:
        raise SpecError(f"DIR: {args.dir} has no finished or diverged runs")
    if args.json:
        _print_json({"groups": groups})
        return 0
    for g in groups:
        print(f"{g['parametrization']}, qk_layernorm={g['qk_layernorm']}, z_loss={g['z_loss']} ({g['runs']} runs)")
        for width, value in g["sensitivity"].items():
            lr = g["lr_opt"].get(width)
            print(f"  width {width:>5}: LR sensitivity {value:.4f}" + (f", LR_opt {lr:.3g}" if lr else ""))
        if g["drift"]:
            d = g["drift"]
            print(f"  drift of log LR_opt vs log width: {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        if "divergence_lr_at_target" in g:
            t = g["divergence_lr_at_target"]
            print(f"  diverges above LR {t['value']:.3g} [{t['low']:.3g}, {t['high']:.3g}] at width {t['width']}"
                  f" (thresholds per width: {', '.join(f'{w}: {v:.3g}' for w, v in g['divergence_lr'].items())})")
    return 0


def command_plan(args: argparse.Namespace) -> int:
    """The planner's next runs for a sweep directory, as a table and optionally as a sweep file."""
    from orchestrator.advice import load_sweep, plan_proposals, plan_sweep_file

    plain, sweep, space = load_sweep(args.dir)
    ledger = _open_ledger(args.dir)
    proposals, specs = plan_proposals(ledger, space, target_flops=args.target_flops, budget_flops=args.budget_flops,
                                      batch=args.batch, max_run_flops=args.max_run_flops, seed=args.seed)
    ledger.close()
    rows = [{"run_id": p.candidate.key, "width": p.candidate.width, "n_params": p.candidate.n_params,
             "tokens": p.candidate.tokens, "lr": p.candidate.lr, "flops": p.candidate.flops, "score": p.score,
             "reason": p.reason} for p in proposals]
    if args.output and specs:
        name = Path(args.output).stem
        Path(args.output).write_text(plan_sweep_file(plain, specs, name=name, sweep_dir=str(Path(args.dir).resolve())))
    if args.json:
        _print_json({"target_flops": args.target_flops, "budget_flops": args.budget_flops,
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


def command_recommend(args: argparse.Namespace) -> int:
    """The compute-optimal configuration at the target, with intervals."""
    from orchestrator.advice import load_sweep, recommendation

    plain, _, _ = load_sweep(args.dir)
    ledger = _open_ledger(args.dir)
    advice = recommendation(plain, ledger, target_flops=args.target_flops, bootstrap=args.bootstrap, seed=args.seed)
    ledger.close()
    if args.json:
        _print_json(advice)
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


def command_report(args: argparse.Namespace) -> int:
    """Markdown report with fits, intervals, tables and plots; also logged to the sweep's W&B analysis run."""
    from omegaconf import OmegaConf

    from orchestrator.report import build_report
    from orchestrator.tracking import log_analysis, validate_settings

    _open_ledger(args.dir).close()
    report, figures, summary = build_report(args.dir, target_flops=args.target_flops, bootstrap=args.bootstrap,
                                            out=Path(args.output) if args.output else None)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyscale", description="Plan large training runs from small GPT proxies.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train ONE proxy from the Hydra config (conf/); arguments are Hydra overrides",
        description="Train one run. Arguments are Hydra overrides, e.g. model=proxy_1m train.tokens=3e6 train.lr=1e-2.",
    )
    train.add_argument("overrides", nargs="*", help="Hydra overrides (key=value, group=option)")
    coord = sub.add_parser("coord-check", help="coordinate check: activation scales vs width (and depth), saved as PNG")
    coord.add_argument("--parametrization", nargs="+", default=["sp", "mup"], choices=["sp", "mup", "completep"])
    coord.add_argument("--widths", nargs="+", type=int, default=[32, 64, 128, 256])
    coord.add_argument("--depths", nargs="+", type=int, default=[2])
    coord.add_argument("--steps", type=int, default=5)
    coord.add_argument("--lr", type=float, default=1e-2)
    coord.add_argument("--seed", type=int, default=0)
    coord.add_argument("--out", default="coord_check.png")

    launch = sub.add_parser(
        "launch", help="run a sweep (sweep=NAME) on Ray; relaunching the same command resumes it",
        description="Expand sweep=NAME (a file in sweeps/) with Hydra overrides, show the plan, run it on Ray.",
    )
    launch.add_argument("overrides", nargs="*", help="Hydra overrides: sweep=demo model.depth=3 cluster.num_cpus=2 ...")
    launch.add_argument("--dry-run", action="store_true", help="print the plan and start nothing")
    launch.add_argument("--cfg", choices=["job"], help="print the composed config and exit (as a Hydra app)")
    status = sub.add_parser("status", help="the runs of a sweep directory and their state")
    status.add_argument("dir")
    export = sub.add_parser("export", help="one row per run (or per logged step) of a sweep directory")
    export.add_argument("dir")
    export.add_argument("--format", choices=["csv", "parquet"], default="csv")
    export.add_argument("-o", "--output", help="file to write (default: CSV on stdout)")
    export.add_argument("--steps", action="store_true", help="export the per-step metrics and probes instead")

    fit = sub.add_parser("fit", help="fit L(N, D) (approach 3) or isoFLOP minima (approach 2) to a CSV, with intervals")
    fit.add_argument("dir", nargs="?", help="a sweep directory (its finished runs; N = all parameters)")
    fit.add_argument("--csv", help="a results table (W&B export, published data)")
    fit.add_argument("--n", help="column of parameter counts")
    fit.add_argument("--d", help="column of training tokens")
    fit.add_argument("--loss", help="column of final losses")
    fit.add_argument("--flops", help="column of training FLOPs (D = C / 6N when --d is not given)")
    fit.add_argument("--law", choices=["chinchilla", "isoflop"], default="chinchilla")
    fit.add_argument("--target-flops", type=float, help="report N_opt, D_opt and loss at this compute")
    fit.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    fit.add_argument("--drop-highest-loss", type=int, default=0, help="drop this many highest-loss rows first")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--json", action="store_true", help="machine-readable output")

    transfer = sub.add_parser("transfer", help="LR_opt per width, muP transfer drift and LR sensitivity of a sweep")
    transfer.add_argument("dir")
    transfer.add_argument("--bootstrap", type=int, default=1000)
    transfer.add_argument("--target-width", type=float, help="predict the LR at which this width diverges")
    transfer.add_argument("--json", action="store_true")

    plan = sub.add_parser("plan", help="the planner's next runs for a sweep directory (table, JSON or a sweep file)")
    plan.add_argument("dir")
    plan.add_argument("--target-flops", type=float, required=True, help="compute of the big run")
    plan.add_argument("--budget-flops", type=float, required=True, help="FLOPs the proposals may spend")
    plan.add_argument("--batch", type=int, help="at most this many runs (default: as many as the budget allows)")
    plan.add_argument("--max-run-flops", type=float, help="cost cap per run")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--json", action="store_true")
    plan.add_argument("-o", "--output", help="also write the proposals as a sweep file that `launch` runs")
    recommend = sub.add_parser("recommend", help="the compute-optimal configuration at a target, with intervals")
    recommend.add_argument("dir")
    recommend.add_argument("--target-flops", type=float, required=True)
    recommend.add_argument("--bootstrap", type=int, default=1000)
    recommend.add_argument("--seed", type=int, default=0)
    recommend.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="Markdown report (fits, intervals, tables, plots) of a sweep directory")
    report.add_argument("dir")
    report.add_argument("--target-flops", type=float, help="default: the sweep's target_flops or 100x its largest run")
    report.add_argument("--bootstrap", type=int, default=1000)
    report.add_argument("-o", "--output", help="folder for report.md and the PNGs (default DIR/report)")
    report.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")

    schedule = sub.add_parser("fit-schedule", help="fit the LR-schedule law to loss curves and predict others")
    schedule.add_argument("--fit", nargs="+", required=True, help="CSV curves with step, lr, loss columns")
    schedule.add_argument("--predict", nargs="*", help="curves to predict; their error is reported")
    schedule.add_argument("--warmup-steps", type=int, default=0, help="reconstruct a linear warmup before the first row")
    schedule.add_argument("--peak-lr", type=float, help="peak LR of that warmup (default: the first row's LR)")
    schedule.add_argument("--decay", type=float, default=0.999, help="momentum lambda of the annealing area")
    schedule.add_argument("--skip-fraction", type=float, default=0.1, help="ignore the first fraction of each curve")
    schedule.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Hydra overrides may come after flags (`launch sweep=demo --dry-run model.depth=3`).
        if args.command not in ("train", "launch") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        if args.command == "train":
            return command_train(args.overrides)
        if args.command == "coord-check":
            return command_coord_check(args)
        if args.command == "fit":
            return command_fit(args)
        if args.command == "launch":
            return command_launch(args)
        if args.command == "status":
            return command_status(args)
        if args.command == "export":
            return command_export(args)
        if args.command == "transfer":
            return command_transfer(args)
        if args.command == "fit-schedule":
            return command_fit_schedule(args)
        if args.command == "report":
            return command_report(args)
        if args.command == "plan":
            return command_plan(args)
        if args.command == "recommend":
            return command_recommend(args)
    except SpecError as error:
        print(f"proxyscale: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
