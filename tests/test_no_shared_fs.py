"""No shared filesystem: forks and resumed runs get their checkpoints through cluster.storage, a real S3 server.

The server is moto's (a real HTTP S3 API on localhost). Ray is a real multi-node cluster on this machine
(ray.cluster_utils.Cluster: a head for the driver, with no CPUs, and worker nodes with one CPU each). Every
worker node has its own scratch directory (PROXYSCALE_SCRATCH in its raylet's environment), and a node
whose run must be picked up elsewhere is removed and its directory deleted: the run that continues on the
other node can only find the checkpoint in S3. The ledger stays with the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import threading
import time

import pytest

from proxyscale.models.spec import SpecError
from tests.conftest import tiny_spec

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")

BUCKET = "proxyscale-test"


@pytest.fixture(scope="module")
def s3_uri():
    """s3://BUCKET/ckpt on a moto server on 127.0.0.1; its address and dummy keys in this process's environment,
    which the cluster's nodes (started after this) inherit, as a real cluster's nodes get theirs."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield f"s3://{BUCKET}/ckpt"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


class Nodes:
    """A Ray cluster on this machine whose worker nodes each get a scratch directory of their own."""

    def __init__(self, root) -> None:
        from ray.cluster_utils import Cluster

        self.root = root
        # A removed node is declared dead after 3 refused health checks 0.5 s apart (Ray's default: 5, 3 s apart); a
        # live node still has health_check_timeout_ms (10 s, unchanged) to answer each, so load does not kill it.
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})

    def add(self, name: str):
        scratch = self.root / name
        scratch.mkdir()
        node = self.cluster.add_node(num_cpus=1, env_vars={"PROXYSCALE_SCRATCH": str(scratch)})
        self.cluster.wait_for_nodes()
        return node

    def remove(self, node, name: str, worker_pids: tuple[int, ...] = ()) -> None:
        """The node goes, its processes and then its disk. On a real machine they go together; here the raylet is
        killed first and its workers notice a moment later, so a worker still training could find its scratch
        directory gone under it and fail the run (a race CI met once). Its workers are ended before the disk."""
        self.cluster.remove_node(node, allow_graceful=False)
        for pid in worker_pids:
            _end_process(pid)
        shutil.rmtree(self.root / name)  # whatever the node had on its disk is gone with it


def _end_process(pid: int, grace_s: float = 5.0) -> None:
    """Wait up to grace_s for a removed node's worker to exit on its own, then kill it."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, s3_uri):
    """One head for the module's tests (the driver joins it); each test adds and removes its worker nodes."""
    import ray

    if ray.is_initialized():  # an embedded Ray left by an earlier test in this process
        ray.shutdown()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = Nodes(tmp_path_factory.mktemp("nodes"))
    ray.init(address=cluster.cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.cluster.shutdown()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _sweep(specs, *, driver_dir, storage, keep_steps=None, max_retries=3, events=None):
    """run_sweep as `proxyscale launch` calls it, on the joined cluster; returns the events seen (in order).

    events: a list to append them to as they come (another thread may read it while the sweep runs)."""
    from proxyscale.orchestrator.execution import ClusterSettings, run_sweep
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    events = [] if events is None else events
    with Ledger(driver_dir / "ledger.sqlite") as ledger:
        ledger.register("noshare", specs, plan_rows(specs))
        run_sweep(specs, ledger=ledger, sweep="noshare", sweep_dir=str(driver_dir), tracking={"enabled": False},
                  cluster=ClusterSettings(address="auto", storage=storage, max_retries=max_retries),
                  on_event=lambda kind, run_id, payload: events.append((kind, run_id, payload)),
                  keep_steps=keep_steps)
        rows = {row["run_id"]: row for row in ledger.runs()}
    return events, rows


def _nodes_of(events, run_id) -> list[str]:
    return [payload["node"] for kind, rid, payload in events if kind == "started" and rid == run_id]


def _objects(prefix: str) -> list[str]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.mark.slow
def test_a_fork_on_another_node_starts_from_its_parents_checkpoint_in_s3(nodes, s3_uri, tmp_path):
    """The parent trains on node a, which then goes with its disk; the fork runs on node b from S3. A fork from a
    step nobody kept fails, naming where it looked."""
    parent = tiny_spec(schedule="constant", tokens=16_384)  # 16 steps; the fork continues it from step 8
    fork = dataclasses.replace(parent, train=dataclasses.replace(parent.train, init_from=f"{parent.run_id()}@8"))
    driver_dir = tmp_path / "driver"

    node_a = nodes.add("a")
    events, rows = _sweep([parent], driver_dir=driver_dir, storage=s3_uri, keep_steps={parent.run_id(): (8,)})
    assert rows[parent.run_id()]["status"] == "finished", rows
    assert f"ckpt/noshare/checkpoints/{parent.run_id()}/step_8.pt" in _objects("ckpt/noshare/")
    nodes.remove(node_a, "a")  # the parent's node and its disk are gone

    node_b = nodes.add("b")
    fork_events, rows = _sweep([fork], driver_dir=driver_dir, storage=s3_uri)
    row = rows[fork.run_id()]
    assert row["status"] == "finished", row["error"]
    assert _nodes_of(events, parent.run_id()) == [node_a.node_id]
    assert _nodes_of(fork_events, fork.run_id()) == [node_b.node_id]
    # It continued the parent's state, not a fresh model: same seed and schedule, so on CPU its losses after
    # step 8 are the parent's, bit for bit (a fork from a fresh init would start near ln(vocab)).
    fork_evals = {p["step"]: p["eval_loss"] for kind, _, p in fork_events if kind == "record" and p["eval_loss"] is not None}
    parent_evals = {p["step"]: p["eval_loss"] for kind, _, p in events if kind == "record" and p["eval_loss"] is not None}
    assert sorted(fork_evals) == [12, 16]
    assert fork_evals == {step: loss for step, loss in parent_evals.items() if step > 8}
    assert not (driver_dir / "checkpoints").exists()  # nothing went through the driver's disk
    assert list((nodes.root / "b" / "proxyscale-scratch").iterdir()) == []  # its scratch copy went when it ended
    # Every fork from step 8 has ended and the extension continues the chain: S3 is cleaned as a disk would be.
    assert _objects(f"ckpt/noshare/checkpoints/{parent.run_id()}/") == []

    unkept = dataclasses.replace(parent, train=dataclasses.replace(parent.train, init_from=f"{parent.run_id()}@4"))
    _, rows = _sweep([unkept], driver_dir=driver_dir, storage=s3_uri)
    nodes.remove(node_b, "b")
    assert rows[unkept.run_id()]["status"] == "failed"
    assert (f"no checkpoint of run {parent.run_id()} at step 4 in cluster.storage ({s3_uri}/noshare/checkpoints)"
            in rows[unkept.run_id()]["error"])


@pytest.mark.slow
def test_a_run_whose_node_dies_resumes_on_another_node_from_s3(nodes, s3_uri, tmp_path):
    from proxyscale.orchestrator.storage import CheckpointStore

    # 128 steps, a checkpoint every 4: after the first one reaches S3 the run has ~2 s of training left (measured
    # unloaded), room for the node to go mid-run even under load (32 steps left ~0.5 s, a race with remove_node).
    run = tiny_spec(schedule="cosine", tokens=131_072, checkpoint_interval=4)
    store = CheckpointStore(s3_uri, str(tmp_path / "driver"), "noshare")
    node_c = nodes.add("c")
    outcome: dict = {}
    seen: list = []

    def driver() -> None:  # the launch's driver; Ray nodes can only be added and removed from the main thread
        try:
            outcome["events"], outcome["rows"] = _sweep([run], driver_dir=tmp_path / "driver", storage=s3_uri,
                                                        max_retries=2, events=seen)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread below
            outcome["error"] = error

    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not store.exists(run.run_id(), "checkpoint.pt"):  # the first checkpoint (step 4) reached S3
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.02)
    while not any(kind == "started" for kind, _, _ in list(seen)):  # its worker's pid, sent when it started
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.02)
    pids = tuple(payload["pid"] for kind, _, payload in list(seen) if kind == "started")
    nodes.remove(node_c, "c", worker_pids=pids)  # mid-run: the run is retried, and no node with CPUs is left ...
    node_d = nodes.add("d")  # ... until this one joins, with an empty disk
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in outcome, outcome
    events, rows = outcome["events"], outcome["rows"]
    nodes.remove(node_d, "d")
    row = rows[run.run_id()]
    assert row["status"] == "finished", row["error"]
    assert row["tokens"] == 131_072
    assert _nodes_of(events, run.run_id()) == [node_c.node_id, node_d.node_id]
    # The second attempt started from a checkpoint it found in S3 (step 4 or later): from scratch, its first
    # record would be step 4 again (a record every 4 steps). The first attempt's last records may die with it.
    mine = [(kind, payload) for kind, rid, payload in events if rid == run.run_id()]
    second = [index for index, (kind, _) in enumerate(mine) if kind == "started"][1]
    resumed = [payload["step"] for kind, payload in mine[second:] if kind == "record"]
    assert resumed and min(resumed) > 4, [(kind, payload) for kind, payload in mine if kind != "record"] + resumed


def test_an_unsupported_storage_scheme_is_one_line_naming_the_key_before_any_run(tmp_path, capsys):
    from proxyscale.orchestrator.cli import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["launch", "sweep=demo", "trainer=simulated", f"sweep_dir={tmp_path / 'out'}", "cluster.storage=foo://x"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert lines == ["proxyscale: error: cluster.storage: scheme 'foo' (foo://x) is not supported; use null (the sweep "
                     "directory), a path on a shared mount, file://, s3:// or gs://"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "fragment"), [
    ("s3://", "names no bucket"),
    ("s3://KEY:SECRET@bucket/prefix", "credentials in the URI"),
])
def test_storage_uris_that_cannot_work_are_refused(value, fragment):
    from proxyscale.orchestrator.storage import check_storage

    with pytest.raises(SpecError, match=fragment):
        check_storage(value)


def test_a_plain_storage_path_is_made_absolute_for_workers_in_other_directories(tmp_path, monkeypatch):
    from proxyscale.orchestrator.storage import check_storage

    monkeypatch.chdir(tmp_path)
    assert check_storage("shared/ckpt") == str(tmp_path / "shared" / "ckpt")
    assert check_storage("file:///mnt/shared") == "file:///mnt/shared"
    assert check_storage(None) is None


def test_a_store_on_a_path_round_trips_a_checkpoint_and_lists_it(tmp_path):
    from proxyscale.orchestrator.storage import CheckpointStore

    source = tmp_path / "step_4.pt"
    source.write_bytes(os.urandom(1 << 16))
    store = CheckpointStore(f"file://{tmp_path / 'mount'}", str(tmp_path / "driver"), "s")
    store.upload(source, "r1")
    assert store.names("r1") == ["step_4.pt"] and store.exists("r1", "step_4.pt")
    assert store.download("r1", "step_4.pt", tmp_path / "back" / "step_4.pt")
    assert (tmp_path / "back" / "step_4.pt").read_bytes() == source.read_bytes()
    assert not store.download("r1", "checkpoint.pt", tmp_path / "back" / "checkpoint.pt")
    store.remove("r1", "step_4.pt")
    store.remove_run_if_empty("r1")
    assert store.names("r1") == [] and not (tmp_path / "mount" / "s" / "checkpoints" / "r1").exists()
    with contextlib.suppress(FileNotFoundError):
        assert not list((tmp_path / "mount" / "s" / "checkpoints").iterdir())
