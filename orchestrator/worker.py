"""What runs inside a worker: one proxy, its checkpoints in the sweep directory, progress sent back.

Imports no Ray: the progress sink is handed in (execution.ProgressChannel in production): put(item)
may send asynchronously, flush() returns once everything put has arrived.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path
from typing import Any

from proxyscale.models.spec import RunSpec, parse_init_from
from proxyscale.orchestrator.storage import CheckpointStore, scratch_dir
from proxyscale.orchestrator.tracking import make_tracker

FAIL_ENV = "PROXYSCALE_TEST_FAIL_RUN"
"""Test hook: a run whose id starts with this value raises, to exercise the `failed` path."""


def execute_run(spec_dict: dict[str, Any], *, sweep: str, sweep_dir: str, tracking: dict[str, Any],
                threads: int, progress, node: str = "local", keep_steps: tuple[int, ...] = (),
                parent: dict[str, Any] | None = None, storage: str | None = None,
                peak_flops: float | None = None) -> dict[str, Any]:
    """Train one run and return {'status', 'result' | 'error' | 'reason'}. Application errors become 'failed'.

    A spec with a `simulated` ground truth is reported by the simulated trainer (no torch needed);
    everything after that (progress, W&B, the result) is the same path as real training.
    keep_steps: steps to keep a checkpoint at for forks. parent: for a fork whose parent ran in this
    launch, the parent's outcome (the driver passes the parent's task as a Ray dependency, so this
    run starts only once the parent has ended); a fork of a parent that did not finish is 'skipped'.
    storage: cluster.storage; when set, checkpoints travel through it (orchestrator.storage), not the sweep directory.
    peak_flops: cluster.peak_flops, the peak the run's MFU divides by (None: models.throughput's table).
    """
    spec = RunSpec.from_dict(spec_dict)
    run_id = spec.run_id()
    if parent is not None and parent["status"] != "finished":
        parent_id = parse_init_from(spec.train.init_from)[0]
        why = parent.get("reason") or (parent.get("result") or {}).get("reason") or (parent.get("error") or "").split("\n")[0]
        return {"status": "skipped", "reason": f"parent {parent_id} {parent['status']}" + (f": {why}" if why else "")}
    tracker = make_tracker(tracking, sweep=sweep, run_id=run_id, config=spec.to_dict(),
                           directory=Path(sweep_dir))
    progress.put(("started", run_id, {"pid": os.getpid(), "node": node}))

    def on_record(record) -> None:
        payload = dataclasses.asdict(record)
        progress.put(("record", run_id, payload))
        tracker.log(payload)

    try:
        marker = os.environ.get(FAIL_ENV)
        if marker and run_id.startswith(marker):
            raise RuntimeError(f"injected failure for run {run_id} ({FAIL_ENV})")
        if spec.simulated is not None:
            from proxyscale.models.simulated import simulate_run

            result = simulate_run(spec, on_record=on_record)
        else:
            import torch

            from proxyscale.models.train import CHECKPOINT_NAME, step_checkpoint_name, train_run

            torch.set_num_threads(max(1, threads))
            store = CheckpointStore(storage, sweep_dir, sweep)
            if store.remote:  # no shared disk assumed: a scratch copy on this node, synced with the store
                with scratch_dir(run_id) as scratch:
                    own, inherited = scratch / "own", scratch / "parent"
                    store.download(run_id, CHECKPOINT_NAME, own / CHECKPOINT_NAME)  # resume, when there is one
                    init_checkpoint = _fetch_parent_checkpoint(spec, store, inherited)
                    result = train_run(spec, on_record=on_record, checkpoint_dir=own, keep_steps=keep_steps,
                                       init_checkpoint=init_checkpoint,
                                       on_checkpoint=lambda path: store.upload(path, run_id), peak_flops=peak_flops)
            else:
                init_checkpoint = None
                if spec.train.init_from is not None:
                    parent_id, step = parse_init_from(spec.train.init_from)
                    init_checkpoint = store.local_dir(parent_id) / step_checkpoint_name(step)
                    if not init_checkpoint.exists():  # a fork at the parent's last step: its final checkpoint
                        init_checkpoint = init_checkpoint.parent / CHECKPOINT_NAME
                result = train_run(spec, on_record=on_record, checkpoint_dir=store.local_dir(run_id),
                                   keep_steps=keep_steps, init_checkpoint=init_checkpoint, peak_flops=peak_flops)
    except KeyboardInterrupt:  # the driver cancelled this run (a stop signal): close its W&B run, then end
        tracker.finish({"status": "cancelled"})
        raise
    except Exception as error:  # noqa: BLE001 - an application error is a result: 'failed'
        tracker.finish({"status": "failed"})
        progress.flush()
        return {"status": "failed", "error": f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}"}
    summary = {k: v for k, v in result.to_dict().items() if k not in ("eval_curve", "last_probes")}
    tracker.finish(summary)
    progress.flush()
    # ended_at: when the run ended in its worker (wall clock), so the time until its row is durable can be measured.
    return {"status": result.status, "result": result.to_dict(), "ended_at": time.time()}


def _fetch_parent_checkpoint(spec: RunSpec, store: CheckpointStore, folder: Path) -> Path | None:
    """A fork's parent checkpoint, copied from the store: step_<S>.pt, or checkpoint.pt for a fork at its last step."""
    from proxyscale.models.train import CHECKPOINT_NAME, step_checkpoint_name

    if spec.train.init_from is None:
        return None
    parent_id, step = parse_init_from(spec.train.init_from)
    for name in (step_checkpoint_name(step), CHECKPOINT_NAME):
        if store.download(parent_id, name, folder / name):
            return folder / name
    raise RuntimeError(f"train.init_from={spec.train.init_from}: no checkpoint of run {parent_id} at step {step} in "
                       f"cluster.storage ({store.location}); the parent must be trained with that step kept")
