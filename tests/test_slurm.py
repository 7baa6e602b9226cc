"""deploy/slurm/proxyscale.sbatch under a real Slurm: slurmctld and two slurmd (Debian's slurm-wlm) with munge,
all on this machine (two Slurm nodes, n1 and n2, on one host), started from a generated slurm.conf in a
temporary directory.

The script is submitted with `sbatch --wait --nodes=2`: it starts a Ray head on n1 and a Ray worker on n2
through srun, with token authentication, checks that a wrong token is refused, runs `proxyscale launch ...
cluster.address=auto` on the head (a tiny real sweep of 3 runs whose checkpoints go through cluster.storage),
and the test reads the sweep's ledger and checks the runs used both Ray nodes.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "deploy" / "slurm" / "proxyscale.sbatch"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
CPUS_PER_NODE = max(1, (os.cpu_count() or 2) // 2)


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()),
                                      None)


_missing = [name for name in BINARIES if _which(name) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"Slurm is not installed ({', '.join(_missing)} not found); "
                                               "apt-get install slurm-wlm munge (.ci/run does, as root)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs jobs only as root; this test is not root"),
]

TINY = """# @package _global_
model: {depth: 1, n_heads: 2, seq_len: 32}
train: {batch_tokens: 1024, warmup_steps: 2, eval_interval_tokens: 4096, eval_batches: 2, log_interval: 4,
        checkpoint_interval: 4, lr: 1.0e-2}
sweep:
  name: slurmtiny
  axes: {model.width: [16, 24, 32]}
  budget: {tokens: [8192]}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # an ephemeral port: outside Ray's worker port range (10002-19999)
        return sock.getsockname()[1]


NODES = ("n1", "n2")


def _slurm_conf(root: Path, munge_socket: Path, host: str, cpus: int) -> str:
    nodes = "\n".join(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={cpus} "
                      "State=UNKNOWN" for name in NODES)
    return f"""ClusterName=proxyscale-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
{nodes}
PartitionName=test Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged, slurmctld and a slurmd per node on this machine; yields the environment for Slurm's commands."""
    root = tmp_path_factory.mktemp("slurm")
    for name in ("munge", "state", "spool"):
        (root / name).mkdir()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (root / "munge").chmod(0o711)
    munge_socket = root / "munge" / "munge.sock"
    subprocess.run([_which("munged"), f"--key-file={key}", f"--socket={munge_socket}", "--force",
                    f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'munge' / 'munged.log'}",
                    f"--seed-file={root / 'munge' / 'seed'}"], check=True, capture_output=True, timeout=30)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, munge_socket, host, CPUS_PER_NODE))
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [subprocess.Popen([_which("slurmctld"), "-D", "-i"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)]
    daemons += [subprocess.Popen([_which("slurmd"), "-D", "-N", name], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT) for name in NODES]
    try:
        deadline = time.monotonic() + 60
        state = ""
        while state != "idle":
            assert time.monotonic() < deadline, (f"Slurm did not come up: sinfo says {state!r}\n"
                                                 + "".join(p.read_text()[-2000:] for p in root.glob("*.log")))
            time.sleep(0.5)
            state = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True,
                                   timeout=30).stdout.strip()
        yield env
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        pid_file = root / "munge" / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass


def _job_env(slurm_env: dict, tmp_path: Path, **extra: str) -> dict:
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir(exist_ok=True)
    (sweeps / "slurmtiny.yaml").write_text(TINY)
    env = dict(slurm_env, PYTHONPATH=str(ROOT), PROXYSCALE_SWEEP_PATH=str(sweeps), WANDB_MODE="offline",
               RAY_PORT=str(_free_port()), PROXYSCALE_RAY_WAIT_S="120", **extra)
    if sys.prefix != sys.base_prefix:  # the virtual environment this test runs in, for the job's nodes
        env["PROXYSCALE_VENV"] = sys.prefix
    return env


def _sbatch(env: dict, output: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_which("sbatch"), "--wait", f"--nodes={len(NODES)}", f"--cpus-per-task={CPUS_PER_NODE}",
                           f"--output={output}", f"--chdir={ROOT}", str(SCRIPT), *args],
                          env=env, capture_output=True, text=True, timeout=400)


def test_the_sbatch_script_runs_a_sweep_on_a_token_authenticated_ray_it_started(slurm, tmp_path):
    token, wandb_key = secrets.token_hex(16), "wandb-" + secrets.token_hex(16)
    env = _job_env(slurm, tmp_path, RAY_AUTH_TOKEN=token, WANDB_API_KEY=wandb_key)
    sweep_dir, output = tmp_path / "out", tmp_path / "job.out"
    job = _sbatch(env, output, "sweep=slurmtiny", f"sweep_dir={sweep_dir}", f"cluster.storage=file://{tmp_path / 'store'}",
                  "tracking=none")
    log = output.read_text() if output.exists() else ""
    assert job.returncode == 0, job.stdout + job.stderr + log
    with sqlite3.connect(sweep_dir / "ledger.sqlite") as db:
        rows = db.execute("SELECT status, initial_eval_loss, final_eval_loss FROM runs").fetchall()
    assert len(rows) == 3 and {status for status, _, _ in rows} == {"finished"}, rows
    assert all(final < initial for _, initial, final in rows)
    head = re.search(r"ray head on \S+ \(([\d.]+):(\d+)\)", log)
    assert head, log
    address = ipaddress.ip_address(head.group(1))
    assert address.is_private and not address.is_unspecified and not address.is_loopback
    assert "token auth on" in log and "a client with a wrong token was refused" in log, log
    assert "3 finished" in log and f"ray: {len(NODES)} node(s) up" in log
    ray_nodes = set(re.findall(r"^\w+ started on node (\w+) ", log, re.MULTILINE))
    assert len(ray_nodes) == 2, log  # runs went to the head's Ray node and to the worker srun started on n2
    written = log + "".join(p.read_text(errors="replace") for p in sweep_dir.rglob("*") if p.is_file() and p.suffix != ".sqlite")
    assert token not in written and wandb_key not in written  # neither secret reaches the log or the sweep's files
    job_id = re.search(r"Submitted batch job (\d+)", job.stdout).group(1)
    leftovers = subprocess.run(["pgrep", "-f", f"/tmp/ray-{job_id}/"], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"Ray processes of job {job_id} outlived it: {leftovers}"


def test_the_sbatch_script_refuses_to_bind_ray_to_a_public_address(slurm, tmp_path):
    env = _job_env(slurm, tmp_path, PROXYSCALE_HEAD_IP="8.8.8.8")
    output = tmp_path / "job.out"
    job = _sbatch(env, output, "sweep=slurmtiny", f"sweep_dir={tmp_path / 'out'}")
    log = output.read_text()
    assert job.returncode == 2, log
    assert "the head's address 8.8.8.8 is not a private one" in log
    assert "ray head on" not in log and not (tmp_path / "out").exists()
