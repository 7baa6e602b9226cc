"""The orchestrator's own cost as a sweep grows: 100, 1,000 and 10,000 runs of the simulated trainer
(near-zero training time, so only proxyscale's overhead is measured), and Ray Tune running the same
trials in the same script as the reference.

Each size goes through what `proxyscale launch` runs: `run_sweep` on Ray with the real ledger, the real
progress queue, and launch's own monitor (plain lines to /dev/null, a bootstrap-100 refit of L(N, D) as
finished runs arrive). Measured per size:
- wall time and the slots' time lost per run: (wall x slots - training seconds) / runs;
- the driver's CPU seconds per run (every thread of the driver process, Ray's included);
- the ledger: rows written per second of time inside its writes, and its file size (with the WAL);
- the time from a run's end (in its worker) to its row being committed;
- the live view's refresh cost (one render of the rich table at the sweep's end state);
- the driver's peak memory (RSS sampled every 20 ms during the sweep).

Run: .venv/bin/python tests/benchmarks/bench_scale.py [--sizes 100,1000,10000] [--slots 2] [--tune-runs 100]
Ray Tune runs --tune-runs trials (its per-trial cost is flat; 10,000 trials would take hours here).
Last line: overhead_per_run_ms=X tune_ms=Y growth=Z (X and growth: ours, slot-ms lost per run, at the
largest size and largest / smallest; Y: Tune's slot-ms lost per trial).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from proxyscale.models.spec import ModelSpec, RunSpec, SimulatedSpec, TrainSpec

WIDTHS = (32, 48, 64, 96, 128)
TOKENS = (200_000, 400_000, 800_000, 1_600_000)
LRS = (0.003, 0.006, 0.01, 0.02, 0.04)


def simulated_runs(count: int, *, evals: int = 4) -> list[RunSpec]:
    """`count` distinct simulated runs over widths x tokens x LRs x seeds, each reporting `evals` eval points."""
    truth = SimulatedSpec(noise=0.005)
    runs = []
    for i in range(count):
        tokens = TOKENS[(i // len(WIDTHS)) % len(TOKENS)]
        runs.append(RunSpec(
            model=ModelSpec(width=WIDTHS[i % len(WIDTHS)], depth=2, n_heads=2, seq_len=32),
            train=TrainSpec(lr=LRS[(i // (len(WIDTHS) * len(TOKENS))) % len(LRS)], tokens=tokens, batch_tokens=1024,
                            warmup_steps=5, eval_interval_tokens=tokens // evals, device="cpu",
                            seed=i // (len(WIDTHS) * len(TOKENS) * len(LRS))),
            simulated=truth))
    return runs


class PeakMemory:
    """The driver's peak resident memory while the block runs (RSS sampled every 20 ms from /proc)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed_ledger(path: Path):
    """A Ledger that counts the rows it writes, the seconds inside its writes, and when each result committed."""
    from proxyscale.orchestrator.ledger import Ledger

    class TimedLedger(Ledger):
        rows = 0
        seconds = 0.0
        committed: dict[str, float] = {}

        def _timed(self, method, rows: int, *args, **kwargs):
            started = time.perf_counter()
            out = method(*args, **kwargs)
            self.seconds += time.perf_counter() - started
            self.rows += rows
            return out

        def register(self, sweep, specs, plan):
            return self._timed(super().register, len(plan), sweep, specs, plan)

        def mark_running(self, run_id):
            return self._timed(super().mark_running, 1, run_id)

        def set_status(self, run_id, status, error=None, reason=None):
            return self._timed(super().set_status, 1, run_id, status, error=error, reason=reason)

        def add_steps(self, run_id, records):
            return self._timed(super().add_steps, len(records), run_id, records)

        def finish(self, run_id, result, provenance):
            out = self._timed(super().finish, 1, run_id, result, provenance)
            self.committed[run_id] = time.time()
            return out

    ledger = TimedLedger(path)
    ledger.committed = {}
    return ledger


def render_cost(state, repeats: int = 20) -> float:
    """Seconds of one render of the live table (rich, to a string) at this state."""
    from rich.console import Console

    from proxyscale.orchestrator.live import render_table

    console = Console(file=io.StringIO(), width=160, force_terminal=True)
    started = time.perf_counter()
    for _ in range(repeats):
        console.print(render_table(state))
    return (time.perf_counter() - started) / repeats


def proxyscale(runs: list[RunSpec], slots: int, directory: Path) -> dict:
    """One sweep through run_sweep with launch's monitor; the measurements of the issue."""
    from proxyscale.orchestrator.commands.launch import _monitor
    from proxyscale.orchestrator.execution import ClusterSettings, run_sweep
    from proxyscale.orchestrator.sweep import plan_rows

    directory.mkdir(parents=True)
    tracking = {"enabled": False}
    rows = plan_rows(runs)
    ledger = timed_ledger(directory / "ledger.sqlite")
    ledger.register("bench", runs, rows)
    target = 100 * max(r["flops"] for r in rows)
    monitor = _monitor(argparse.Namespace(plain=True), "bench", directory, rows, set(), runs, ledger, None, tracking,
                       target, todo_flops=None, budget_flops=None)
    ended: dict[str, float] = {}
    train_seconds = []

    def on_event(kind, run_id, payload):
        if kind in ("finished", "diverged"):
            ended[run_id] = payload["ended_at"]
            train_seconds.append(payload["result"]["train_seconds"])
        monitor(kind, run_id, payload)

    cpu = time.process_time()
    started = time.perf_counter()
    with PeakMemory() as memory, contextlib.redirect_stdout(io.StringIO()), monitor:
        run_sweep(runs, ledger=ledger, sweep="bench", sweep_dir=str(directory), cluster=ClusterSettings(max_concurrent=slots),
                  tracking=tracking, on_event=on_event)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    assert len(ended) == len(runs), f"{len(ended)} of {len(runs)} runs ended"
    latency = sorted(ledger.committed[run_id] - end for run_id, end in ended.items())
    size = sum(p.stat().st_size for p in directory.glob("ledger.sqlite*"))
    steps = len(ledger.steps())
    out = {
        "runs": len(runs), "wall_s": wall, "train_s": sum(train_seconds),
        "overhead_per_run_ms": 1000 * (wall * slots - sum(train_seconds)) / len(runs),
        "driver_cpu_per_run_ms": 1000 * cpu / len(runs),
        "ledger_rows": ledger.rows, "ledger_rows_per_s": ledger.rows / ledger.seconds, "ledger_write_s": ledger.seconds,
        "ledger_bytes": size, "step_rows": steps,
        "durable_ms_median": 1000 * statistics.median(latency), "durable_ms_p99": 1000 * latency[int(0.99 * (len(latency) - 1))],
        "refits": monitor.state.refits, "render_ms": 1000 * render_cost(monitor.state),
        "peak_rss_mb": memory.peak / 2**20,
    }
    ledger.close()
    return out


def tune_trainable(config):
    from ray import tune

    from proxyscale.models.simulated import simulate_run

    started = time.perf_counter()
    result = simulate_run(RunSpec.from_dict(config["spec"]),
                          on_record=lambda r: tune.report({"step": r.step, "eval_loss": r.eval_loss}))
    tune.report({"final_eval_loss": result.final_eval_loss, "train_seconds": time.perf_counter() - started})


def ray_tune(runs: list[RunSpec], slots: int, directory: Path) -> dict:
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": 1}),
        param_space={"spec": tune.grid_search([spec.to_dict() for spec in runs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots),
        run_config=tune.RunConfig(storage_path=str(directory), name="bench", verbose=0),
    )
    cpu = time.process_time()
    started = time.perf_counter()
    with PeakMemory() as memory:
        results = tuner.fit()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    busy = sum(r.metrics["train_seconds"] for r in results)
    assert len(results) == len(runs) and not results.errors, results.errors
    return {"runs": len(runs), "wall_s": wall, "train_s": busy,
            "overhead_per_run_ms": 1000 * (wall * slots - busy) / len(runs),
            "driver_cpu_per_run_ms": 1000 * cpu / len(runs), "peak_rss_mb": memory.peak / 2**20}


def print_table(rows: list[dict]) -> None:
    print(f"{'runs':>6} {'wall s':>8} {'lost/run ms':>11} {'drv cpu/run ms':>14} {'ledger rows/s':>13} {'ledger MB':>9} "
          f"{'durable ms p50/p99':>18} {'render ms':>9} {'refits':>6} {'peak MB':>8}")
    for r in rows:
        print(f"{r['runs']:>6} {r['wall_s']:>8.1f} {r['overhead_per_run_ms']:>11.1f} {r['driver_cpu_per_run_ms']:>14.1f} "
              f"{r['ledger_rows_per_s']:>13,.0f} {r['ledger_bytes'] / 2**20:>9.2f} "
              f"{r['durable_ms_median']:>8.1f}/{r['durable_ms_p99']:<9.1f} {r['render_ms']:>9.2f} {r['refits']:>6} "
              f"{r['peak_rss_mb']:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated sweep sizes (runs)")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tune-runs", type=int, default=100, help="trials for the Ray Tune reference (0: skip it)")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    import ray

    ray.init(address="local", num_cpus=args.slots, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    ours, tune_row = [], None
    with tempfile.TemporaryDirectory() as tmp:
        proxyscale(simulated_runs(2 * args.slots), args.slots, Path(tmp) / "warmup")  # start the workers outside every size
        for size in sizes:
            row = proxyscale(simulated_runs(size), args.slots, Path(tmp) / f"ours_{size}")
            ours.append(row)
            print(json.dumps({"proxyscale": row}), file=sys.stderr, flush=True)
        if args.tune_runs:
            tune_row = ray_tune(simulated_runs(args.tune_runs), args.slots, Path(tmp) / "tune")
            print(json.dumps({"tune": tune_row}), file=sys.stderr, flush=True)
    print(f"proxyscale on the simulated trainer, {args.slots} slots (peak RSS of the process so far: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    print_table(ours)
    if tune_row:
        print(f"ray tune, {tune_row['runs']} trials: {tune_row['wall_s']:.1f}s wall, {tune_row['overhead_per_run_ms']:.1f} "
              f"slot-ms lost per trial, driver CPU {tune_row['driver_cpu_per_run_ms']:.1f} ms per trial, "
              f"peak {tune_row['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"proxyscale": ours, "tune": tune_row}, indent=2))
    tune_ms = f"{tune_row['overhead_per_run_ms']:.1f}" if tune_row else "nan"
    growth = ours[-1]["overhead_per_run_ms"] / ours[0]["overhead_per_run_ms"]
    print(f"overhead_per_run_ms={ours[-1]['overhead_per_run_ms']:.1f} tune_ms={tune_ms} growth={growth:.2f}")


if __name__ == "__main__":
    main()
