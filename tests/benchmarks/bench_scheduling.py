"""Scheduling efficiency = sum of run training seconds / (slots x wall seconds), for the same short
real training runs executed by proxyscale on Ray, by a sequential loop, and by Ray Tune running the
same training function, in one script.

Run: .venv/bin/python tests/benchmarks/bench_scheduling.py [--runs 16] [--slots 2]
Last line: scheduling_efficiency=<ours> tune=<tune's>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
from proxyscale.models.train import train_run


def short_runs(count: int) -> list[RunSpec]:
    return [
        RunSpec(model=ModelSpec(width=32, depth=1, n_heads=2, seq_len=32),
                train=TrainSpec(tokens=600 * 1024, batch_tokens=1024, warmup_steps=2, eval_interval_tokens=600 * 1024,
                                eval_batches=2, seed=seed, device="cpu"))
        for seed in range(count)
    ]


def sequential(runs: list[RunSpec]) -> tuple[float, float]:
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    busy = sum(train_run(spec).train_seconds for spec in runs)
    return busy, time.perf_counter() - started


def proxyscale(runs: list[RunSpec], slots: int, directory: Path) -> tuple[float, float]:
    from proxyscale.orchestrator.execution import ClusterSettings, run_sweep
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    ledger = Ledger(directory / "ledger.sqlite")
    ledger.register("bench", runs, plan_rows(runs))
    busy = []

    def collect(kind, run_id, payload):
        if kind == "finished":
            busy.append(payload["result"]["train_seconds"])

    started = time.perf_counter()
    run_sweep(runs, ledger=ledger, sweep="bench", sweep_dir=str(directory), tracking={"enabled": False},
              cluster=ClusterSettings(max_concurrent=slots), on_event=collect)
    wall = time.perf_counter() - started
    assert len(busy) == len(runs)
    return sum(busy), wall


def tune_trainable(config):
    import torch
    from ray import tune

    torch.set_num_threads(1)
    result = train_run(RunSpec.from_dict(config["spec"]))
    tune.report({"train_seconds": result.train_seconds, "final_eval_loss": result.final_eval_loss})


def ray_tune(runs: list[RunSpec], slots: int, directory: Path) -> tuple[float, float]:
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": 1}),
        param_space={"spec": tune.grid_search([spec.to_dict() for spec in runs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots),
        run_config=tune.RunConfig(storage_path=str(directory), name="bench", verbose=0),
    )
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    busy = [r.metrics["train_seconds"] for r in results]
    assert len(busy) == len(runs)
    return sum(busy), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    import ray

    runs = short_runs(args.runs)
    train_run(runs[0])  # build the corpus cache outside every measurement
    ray.init(num_cpus=args.slots, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        busy, wall = sequential(runs)
        seq = busy / wall
        print(f"sequential: {args.runs} runs, {busy:.1f}s training in {wall:.1f}s wall, 1 slot: efficiency {seq:.3f}")
        busy, wall = proxyscale(runs, args.slots, Path(tmp) / "ours")
        ours = busy / (args.slots * wall)
        print(f"proxyscale: {busy:.1f}s training in {wall:.1f}s wall, {args.slots} slots: efficiency {ours:.3f}")
        busy, wall = ray_tune(runs, args.slots, Path(tmp) / "tune")
        tune_eff = busy / (args.slots * wall)
        print(f"ray tune:   {busy:.1f}s training in {wall:.1f}s wall, {args.slots} slots: efficiency {tune_eff:.3f}")
    print(f"scheduling_efficiency={ours:.3f} tune={tune_eff:.3f}")


if __name__ == "__main__":
    main()
