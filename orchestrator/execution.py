"""Execution on Ray: the only module that imports Ray.

Each run is a Ray task with its own CPU/GPU request (GPUs may be fractional so small proxies share
one). Progress streams back through a Ray queue while runs train; the driver alone writes the
ledger. A worker or node that dies is a system failure: Ray retries the task, which resumes from
the run's checkpoint in the sweep directory (or in cluster.storage, when nodes share no disk). An
exception inside training is an application error: the run is recorded `failed` with the message
and the sweep goes on. Ctrl-C cancels the running tasks and marks them `cancelled`; relaunching
resumes them from their checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from proxyscale.models.spec import RunSpec, parse_init_from
from proxyscale.orchestrator import gpus, stopping
from proxyscale.orchestrator.ledger import DONE_STATUSES, Ledger
from proxyscale.orchestrator.storage import CheckpointStore
from proxyscale.orchestrator.worker import execute_run

CANCEL_GRACE_S = 3.0
"""How long cancelled runs get to close their W&B runs before their workers are killed (Slurm and
Kubernetes send SIGKILL about 30 s after SIGTERM; the whole stop must fit well inside that)."""


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    address: str | None = None
    """None: an embedded local Ray; 'auto' or 'ray://host:10001' joins an existing cluster."""
    num_cpus: int | None = None
    """CPUs of the embedded instance (None: the machine's)."""
    cpus_per_run: float = 1.0
    gpus_per_run: float | Literal["auto"] = "auto"
    """GPUs each run asks Ray for; fractions pack runs on one GPU. auto: a share from the proxy's size
    (orchestrator.gpus, docs/gpu.md), 0 on a cluster without GPUs."""
    peak_flops: float | None = None
    """The GPUs' peak FLOP/s for MFU (None: the table of known GPUs by name; on CPU, no MFU)."""
    max_concurrent: int | None = None
    """At most this many runs at once (None: as many as the resources allow)."""
    max_retries: int = 3
    """Retries of a run after a system failure (worker or node death)."""
    dashboard: bool = False
    log_to_driver: bool = False
    """Show Ray's own start-up warnings and the workers' logs in the launch's output (off: the live table
    and the results only)."""
    storage: str | None = None
    """Where checkpoints live: None, the sweep directory (one machine, or a filesystem every node shares);
    a URI (s3://, gs://, file://) or shared path when nodes share no disk (orchestrator.storage)."""


def provenance() -> dict[str, Any]:
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def package_version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {
        "git_sha": sha,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in ("proxyscale", "torch", "numpy", "ray", "wandb")},
    }


class ProgressChannel:
    """A worker's side of the progress queue, found by the queue actor's name.

    By name because the driver creates the queue only after submitting the first runs: created first,
    its actor process took the worker start-up the first runs were waiting for (~1 s per sweep here).
    Puts are fire-and-forget, so training never waits for a round trip to the driver (a blocking put
    per record cost ~4% of the slots' time in bench_scheduling); flush() waits for all of them, and the
    worker calls it before returning its result, so the driver's drain after a result sees every
    record of that run.
    """

    def __init__(self, actor_name: str) -> None:
        self.actor_name = actor_name
        self._actor: Any = None
        self._sent: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"actor_name": self.actor_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["actor_name"])

    def put(self, item: tuple[str, str, Any]) -> None:
        self._sent.append(self._queue_actor().put_nowait.remote(item))

    def _queue_actor(self) -> Any:
        import time

        import ray

        # The driver names the queue right after submitting the first runs; a worker can get here first.
        deadline = time.monotonic() + 60.0
        while self._actor is None:
            try:
                self._actor = ray.get_actor(self.actor_name)
            except ValueError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return self._actor

    def flush(self) -> None:
        import ray

        sent, self._sent = self._sent, []
        ray.get(sent)


def _parent_not_finished(parent_id: str, row: dict[str, Any] | None) -> str:
    """Why a fork is skipped: its parent's state and, where recorded, its reason or first error line."""
    status = row["status"] if row else "unknown"
    why = (row or {}).get("reason") or ((row or {}).get("error") or "").split("\n")[0]
    return f"parent {parent_id} {status}" + (f": {why}" if why else "")


def _run_on_node(spec_dict: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The Ray task: tell the run which node it is on (for progress lines), then train it."""
    import ray

    return execute_run(spec_dict, node=ray.get_runtime_context().get_node_id(), **kwargs)


def _init_ray(cluster: ClusterSettings) -> None:
    import ray

    if ray.is_initialized():
        return
    if not cluster.log_to_driver:
        import logging

        # Ray's start-up warnings (e.g. the token-authentication notice) reach stderr through Python's
        # last-resort handler since configure_logging=False; keep only its errors.
        logging.getLogger("ray").setLevel(logging.ERROR)
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=cluster.log_to_driver)
        return
    # Embedded: listens on localhost only, no dashboard unless asked. address="local" always starts a new
    # instance: without it ray.init() joins any cluster that `ray start` left running on this machine.
    ray.init(address="local", num_cpus=cluster.num_cpus, include_dashboard=cluster.dashboard, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", log_to_driver=cluster.log_to_driver, configure_logging=False)


def run_sweep(
    runs: list[RunSpec],
    *,
    ledger: Ledger,
    sweep: str,
    sweep_dir: str,
    cluster: ClusterSettings,
    tracking: dict[str, Any],
    on_event: Callable[[str, str, Any], None] = lambda kind, run_id, payload: None,
    propose: Callable[[int], list[RunSpec]] | None = None,
    keep_steps: dict[str, tuple[int, ...]] | None = None,
    release_checkpoints: bool = True,
) -> None:
    """Run every spec to a final state, writing the ledger as results stream in.

    propose: the closed loop's source of new runs. At the start and after every run that ends it is
    asked for enough runs to fill the free slots plus one in reserve, so slots refill one run at a
    time instead of in rounds; [] means none for now. The sweep ends when nothing runs, nothing
    waits and the last call proposed nothing.

    Forks (train.init_from): a fork is submitted once its parent is, with the parent's task as a Ray
    dependency, so Ray starts it when the parent ends (no polling) and it holds no slot meanwhile; a
    parent finished in an earlier launch is read from its checkpoint file. A fork of a parent that
    failed, diverged or was skipped is recorded `skipped` with the reason. keep_steps: per run, the
    steps its forks start from (a checkpoint is kept there); with release_checkpoints, a step's
    checkpoint is deleted once every fork from it has ended, and a finished run's own checkpoint
    unless it is a constant-LR run that may be extended.
    """
    import ray
    from ray.exceptions import RayError
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    _init_ray(cluster)
    stopping.install()  # after ray.init: Ray's driver handler would abort on SIGTERM with a crash dump
    live_nodes = [node for node in ray.nodes() if node["Alive"]]
    alive_nodes = len(live_nodes)
    if cluster.storage is None and alive_nodes > 1:  # nothing says the nodes share a disk
        import sys

        print(f"proxyscale: note: {alive_nodes} Ray nodes and cluster.storage=null: "
              f"checkpoints go to {sweep_dir}/checkpoints on the disk of the node a run is on; unless every node "
              "shares that path, set cluster.storage (s3://, gs://, file://) so forks and retried runs find them "
              "(docs/cluster.md)", file=sys.stderr, flush=True)
    # The queue lives on the driver's node, so losing a worker node never loses the progress channel.
    driver_node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    queue_name = f"proxyscale-progress-{uuid.uuid4().hex[:12]}"
    channel = ProgressChannel(queue_name)
    progress: Queue | None = None  # created just after the first runs are submitted (see the loop)
    task = ray.remote(_run_on_node)
    task_options = {"num_cpus": cluster.cpus_per_run, "max_retries": cluster.max_retries, "retry_exceptions": False}
    node_gpus = [node["Resources"].get("GPU", 0.0) for node in live_nodes]
    gpus.check_cluster(cluster.gpus_per_run, runs, node_gpus)  # before any task: one line naming the key
    total_cpus = ray.cluster_resources().get("CPU", 1)
    concurrency = cluster.max_concurrent or max(1, int(total_cpus // max(cluster.cpus_per_run, 1e-9)))
    # GPUs bound it too: runs past what the GPUs hold would wait inside Ray while the ledger called them running.
    concurrency = min(concurrency, gpus.concurrent_runs(cluster.gpus_per_run, runs, node_gpus) or concurrency)
    threads = max(1, int(cluster.cpus_per_run))
    info: dict[str, Any] = {}
    waiting = list(runs)
    # Kept in step with `waiting`: each run is hashed once, not once per fill (a fill per event made a sweep
    # of 10,000 runs hash ~10^8 specs; bench_scale).
    waiting_ids = {spec.run_id() for spec in waiting}
    running: dict[Any, str] = {}
    blocked: dict[Any, str] = {}  # forks submitted behind a parent that is still running (hold no slot)
    refs_by_run: dict[str, Any] = {}
    unstarted: set[str] = set()
    specs: dict[str, RunSpec] = {}
    keep_steps = dict(keep_steps or {})
    store = CheckpointStore(cluster.storage, sweep_dir, sweep)  # the sweep directory, or cluster.storage
    ask = propose is not None

    def drain() -> None:
        if progress is None:
            return
        batches: dict[str, list[dict]] = {}
        # One round trip for everything queued, not one per record: the driver shares the CPUs with runs.
        while queued := progress.qsize():
            for kind, run_id, payload in progress.get_nowait_batch(queued):
                if kind == "record":
                    batches.setdefault(run_id, []).append(payload)
                elif kind == "started" and run_id in unstarted:
                    unstarted.discard(run_id)  # a fork that waited on its parent: running from now on
                    ledger.mark_running(run_id)
                on_event(kind, run_id, payload)
        for run_id, records in batches.items():
            ledger.add_steps(run_id, records)

    def submit(spec: RunSpec, parent_ref: Any = None) -> Any:
        run_id = spec.run_id()
        specs[run_id] = spec
        steps = keep_steps.get(run_id, ())
        request = task.options(**task_options,
                               num_gpus=gpus.gpus_for_run(cluster.gpus_per_run, spec, max(node_gpus, default=0.0)))
        ref = request.remote(spec.to_dict(), sweep=sweep, sweep_dir=sweep_dir, tracking=tracking, threads=threads,
                             progress=channel, keep_steps=steps, parent=parent_ref, storage=cluster.storage,
                             peak_flops=cluster.peak_flops)
        refs_by_run[run_id] = ref
        on_event("submitted" if parent_ref is None else "waiting", run_id, None)
        return ref

    def skip(run_id: str, reason: str) -> None:
        ledger.set_status(run_id, "skipped", reason=reason)
        on_event("skipped", run_id, {"status": "skipped", "reason": reason})

    def fill() -> None:
        index = 0
        while index < len(waiting) and len(running) < concurrency:
            spec = waiting[index]
            run_id = spec.run_id()
            if spec.train.init_from is None:
                waiting.pop(index)
                waiting_ids.discard(run_id)
                ledger.mark_running(run_id)
                running[submit(spec)] = run_id
                continue
            parent_id, _ = parse_init_from(spec.train.init_from)
            if parent_id in waiting_ids:
                index += 1  # its parent has not been submitted yet
                continue
            waiting.pop(index)
            waiting_ids.discard(run_id)
            parent_ref = refs_by_run.get(parent_id)
            if parent_ref is not None and (parent_ref in running or parent_ref in blocked):
                blocked[submit(spec, parent_ref)] = run_id  # Ray starts it when the parent ends
                continue
            parent_row = ledger.run(parent_id)
            if parent_row is None or parent_row["status"] != "finished":
                skip(run_id, _parent_not_finished(parent_id, parent_row))
                continue
            ledger.mark_running(run_id)
            running[submit(spec)] = run_id

    def release(run_id: str, status: str) -> None:
        """Delete checkpoints no run of this sweep will start from any more (disk stays bounded).

        Only results are final: a failed or skipped run is retried by a relaunch, so what it (or the
        forks of its parent) would start from is kept.
        """
        spec = specs.get(run_id)
        if not release_checkpoints or spec is None or status not in DONE_STATUSES:
            return
        if spec.train.schedule != "constant" and not keep_steps.get(run_id):
            store.remove(run_id, "checkpoint.pt")  # and the run's folder with its last checkpoint
        if spec.train.init_from is not None:
            parent_id, step = parse_init_from(spec.train.init_from)
            if spec.train.schedule == "constant":  # an extension: its parent is no longer a chain's end
                store.remove(parent_id, "checkpoint.pt")
            siblings = ledger.forks_of(parent_id, step)  # indexed: not a scan of the ledger per ended fork
            if all(r["status"] in DONE_STATUSES for r in siblings):
                store.remove(parent_id, f"step_{step}.pt")

    ended: list[tuple[Any, str, dict]] = []  # results taken from Ray in this pass, their rows not all written yet
    written: set[str] = set()

    def record(run_id: str, outcome: dict) -> None:
        if outcome["status"] == "failed":
            ledger.set_status(run_id, "failed", error=outcome["error"])
        elif outcome["status"] == "skipped":
            ledger.set_status(run_id, "skipped", reason=outcome["reason"])
        else:
            ledger.finish(run_id, outcome["result"], info)
        written.add(run_id)

    try:
        while True:
            fill()
            if progress is None:
                # After the first submissions: the queue actor's process would otherwise take the
                # worker start-up slot the first runs wait for (~1 s); workers find it by name.
                progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": driver_node, "name": queue_name})
                info.update(provenance())
            # One proposal waits ready beyond the free slots, so a slot that frees starts its next run at
            # once and the refit for the one after happens while runs train.
            if ask and len(running) + len(waiting) <= concurrency:
                ask = False
                proposed = propose(concurrency + 1 - len(running) - len(waiting))
                waiting += proposed
                waiting_ids.update(spec.run_id() for spec in proposed)
                if waiting and len(running) < concurrency:
                    continue
            if not running and not waiting:
                break
            pending_refs = list(running) + list(blocked)
            ready, rest = ray.wait(pending_refs, num_returns=1, timeout=0.25)
            if ready and rest:  # every result already in, not one per pass: rows wait for no event handler (refits)
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            drain()
            ended, written = [], set()
            for ref in ready:  # first every ended run's row, durable before the slow handlers below
                run_id = running.pop(ref) if ref in running else blocked.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayError as error:  # retries exhausted: a system failure (or the parent's, for a fork)
                    parent_id = parse_init_from(specs[run_id].train.init_from)[0] if specs[run_id].train.init_from else None
                    parent_row = ledger.run(parent_id) if parent_id else None
                    if parent_row is not None and parent_row["status"] != "finished":
                        outcome = {"status": "skipped", "reason": _parent_not_finished(parent_id, parent_row)}
                    else:
                        outcome = {"status": "failed",
                                   "error": f"system failure after {cluster.max_retries} retries: {error}"}
                ended.append((ref, run_id, outcome))
            drain()
            for _ref, run_id, outcome in ended:
                record(run_id, outcome)
            for ref, run_id, _outcome in ended:
                # Forks waiting on this run now start (or are skipped by their task): they take slots.
                for fork_ref, fork_id in list(blocked.items()):
                    if refs_by_run.get(parse_init_from(specs[fork_id].train.init_from)[0]) == ref:
                        # It holds a slot now; Ray starts it when one is free (marked running then).
                        running[fork_ref] = blocked.pop(fork_ref)
                        unstarted.add(fork_id)
                # An ended run's ref is needed no more (a later fork reads its parent's state from the ledger);
                # held, every run's result stayed referenced by the driver for the whole sweep.
                refs_by_run.pop(run_id, None)
            fill()  # the freed slots start their next runs before the (slow) event handlers
            for _ref, run_id, outcome in ended:
                release(run_id, outcome["status"])
                on_event(outcome["status"], run_id, outcome)
            if ended:
                ask = propose is not None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGINT through orchestrator.stopping
        for _ref, run_id, outcome in ended:  # results already taken from Ray: their rows, or they would be lost
            if run_id not in written:
                with contextlib.suppress(Exception):
                    record(run_id, outcome)
        live = list(running.items()) + list(blocked.items())
        for _ref, run_id in live:  # the record first: durable before anything that can hang
            ledger.set_status(run_id, "cancelled")
        for ref, _ in live:  # a gentle cancel lets each worker close its W&B run ...
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)
        _, stuck = ray.wait([ref for ref, _ in live], num_returns=len(live), timeout=CANCEL_GRACE_S) if live else ([], [])
        for ref in stuck:  # ... and what has not ended within the grace is killed
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        for _, run_id in live:
            with contextlib.suppress(Exception):
                on_event("cancelled", run_id, None)
        raise
    finally:
        try:
            drain()
        except Exception:  # noqa: BLE001 - the queue actor may be gone after Ctrl-C
            pass


def shutdown_ray() -> None:
    """Stop the embedded Ray (or leave a joined cluster) so that no Ray process outlives a stopped launch."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
