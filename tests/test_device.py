"""The CUDA path's branches that run on a CPU (docs/gpu.md): device selection, bf16 autocast, torch.compile, the
device-held batches, the loop that reads the loss only on log steps, MFU against nanoGPT's formula worked by hand,
the GPU-share rule of cluster.gpus_per_run=auto, throughput in the ledger, and the bad inputs.

torch.compile is tested with the aot_eager backend: inductor's C++ build took 130 s for a one-block model on this
2-core machine (aot_eager: ~30 s under the same load, most of it importing and tracing dynamo). The CUDA-only
checks (inductor, flash SDPA, fused AdamW, MFU of a real GPU) are in tests/test_cuda_path.py.
"""

from __future__ import annotations

import sqlite3
import sys

import pytest
import torch

from proxyscale.models import device as device_lib
from proxyscale.models.data import load_tokens, train_batch
from proxyscale.models.gpt import GPT
from proxyscale.models.spec import DataSpec, ModelSpec, RunSpec, SpecError, TrainSpec
from proxyscale.models.throughput import MAX_RUNS_PER_GPU, gpu_share, model_flops_utilization, peak_flops_for
from proxyscale.models.train import train_run
from proxyscale.orchestrator import gpus
from tests.conftest import tiny_spec
from tests.test_bad_input import TINY_SWEEP, refused  # the same tiny sweep and one-line check

# --- device selection ---------------------------------------------------------------------------------


def test_auto_picks_cuda_only_when_present(monkeypatch):
    monkeypatch.setattr(device_lib, "cuda_available", lambda: False)
    assert device_lib.resolve_device("auto").type == "cpu"
    assert device_lib.resolve_device("cpu").type == "cpu"
    with pytest.raises(SpecError, match=r"^train\.device: 'cuda' but this machine has no CUDA device.*auto or cpu"):
        device_lib.resolve_device("cuda")
    monkeypatch.setattr(device_lib, "cuda_available", lambda: True)
    assert device_lib.resolve_device("auto").type == "cuda"
    assert device_lib.resolve_device("cpu").type == "cpu"


def test_compile_and_precision_follow_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert device_lib.uses_compile("auto", cuda) and not device_lib.uses_compile("auto", cpu)
    assert device_lib.uses_compile(True, cpu) and not device_lib.uses_compile(False, cuda)
    assert not device_lib.uses_bf16(cpu, "auto") and device_lib.uses_bf16(cpu, "bf16")
    assert not device_lib.uses_bf16(cuda, "fp32")
    assert device_lib.syncs_every_step(cpu) and not device_lib.syncs_every_step(cuda)


def test_the_new_keys_leave_run_ids_unchanged():
    """compile=auto hashes as the old default false; precision=auto is left out: recorded sweeps keep their ids."""
    old = RunSpec(train=TrainSpec(compile=False)).run_id()
    assert RunSpec(train=TrainSpec(compile="auto")).run_id() == old == RunSpec().run_id()
    assert RunSpec(train=TrainSpec(precision="auto")).run_id() == old
    assert RunSpec(train=TrainSpec(compile=True)).run_id() != old
    assert RunSpec(train=TrainSpec(precision="bf16")).run_id() != old
    spec = RunSpec.from_dict({"train": {"compile": "auto", "precision": "bf16"}})
    assert RunSpec.from_dict(spec.to_dict()) == spec  # what a worker rebuilds is what the driver sent


# --- bf16 autocast and torch.compile on CPU -------------------------------------------------------------


def test_bf16_autocast_on_cpu():
    model = GPT(ModelSpec(width=32, depth=1, n_heads=2, seq_len=16))
    x = torch.randint(0, 256, (2, 16))
    with device_lib.autocast(torch.device("cpu"), "bf16"):
        assert model(x).dtype == torch.bfloat16
    with device_lib.autocast(torch.device("cpu"), "auto"):
        assert model(x).dtype == torch.float32
    shape = dict(width=16, depth=1, seq_len=32, tokens=2048, batch_tokens=256, eval_batches=1)
    fp32 = train_run(tiny_spec(**shape))
    bf16 = train_run(tiny_spec(**shape, precision="bf16"))
    assert bf16.status == "finished" and bf16.final_eval_loss < bf16.initial_eval_loss
    # Autocast really ran (the curve moved) and changed only rounding (the same curve to a few hundredths).
    assert bf16.final_eval_loss != fp32.final_eval_loss
    assert bf16.final_eval_loss == pytest.approx(fp32.final_eval_loss, abs=0.05)


def test_compile_path_on_cpu(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(device_lib, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    shape = dict(width=16, n_heads=2, seq_len=32, tokens=1024, batch_tokens=256, warmup_steps=1, log_interval=2,
                 eval_interval_tokens=1024, eval_batches=1)
    compiled = train_run(tiny_spec(**shape, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    eager = train_run(tiny_spec(**shape))
    assert compiled.status == "finished" and compiled.steps == 4
    assert compiled.final_eval_loss == pytest.approx(eager.final_eval_loss, abs=1e-4)
    # Probe steps run the eager module: the attention-logit probe still reports.
    assert "max_attn_logit" in compiled.last_probes


# --- batches on the device; the loop that reads the loss only where used ----------------------------------


def test_device_held_batches_equal_train_batch():
    source = load_tokens(DataSpec())
    batches = device_lib.Batches(source, torch.device("cpu"), seed=3, n_seqs=4, seq_len=32, held=True)
    assert batches.tokens is not None and batches.tokens.dtype == torch.uint8
    for step, micro in ((0, 0), (7, 1), (123, 0)):
        x, y = batches.get(step, micro)
        ex, ey = train_batch(source, 3, step, micro, 4, 32)
        assert x.dtype == ex.dtype == torch.int64
        assert torch.equal(x, ex) and torch.equal(y, ey)
    host = device_lib.Batches(source, torch.device("cpu"), seed=3, n_seqs=4, seq_len=32)
    assert not host.held and torch.equal(host.get(5, 0)[0], train_batch(source, 3, 5, 0, 4, 32)[0])


def test_the_cuda_loop_reads_the_loss_only_where_used(monkeypatch):
    """The CUDA loop (no float() of the loss on most steps) gives the same curve, and still catches a NaN: late,
    at the next step that reads the loss. 8 steps, eval every 4, probes every 3: reads after steps 1, 2 (warm-up),
    3, 4, 6 and 8; an infinite LR at the 6th update makes the 7th step's loss NaN, read only at step 8."""
    import proxyscale.models.train as train_module

    spec = tiny_spec(width=16, depth=1, seq_len=32, tokens=2048, batch_tokens=256, eval_interval_tokens=1024,
                     log_interval=3, eval_batches=1)
    every = train_run(spec)
    monkeypatch.setattr(train_module, "syncs_every_step", lambda device: False)
    lazy = train_run(spec)
    assert lazy.eval_curve == every.eval_curve and lazy.last_probes == every.last_probes

    schedule = train_module.lr_multiplier
    monkeypatch.setattr(train_module, "lr_multiplier", lambda step, cfg: float("inf") if step == 5 else schedule(step, cfg))
    blown = train_run(spec)
    assert blown.status == "diverged" and blown.reason == "train loss is nan at step 8", blown.reason


# --- MFU -----------------------------------------------------------------------------------------------


def test_mfu_is_nanogpts_estimate_worked_by_hand():
    """nanoGPT's estimate_mfu: N = get_num_params() (every parameter but wpe; the tied wte counts once, as the
    head's matmul), flops_per_token = 6N + 12 L H Q T, MFU = flops_per_token * tokens/s / peak.

    width 64, depth 2, 4 heads of 16, seq 128, vocab 256, LayerNorm, tied embeddings:
      per block: 2 LayerNorms 2*(64+64) = 256, qkv 3*64*64 = 12,288, proj 64*64 = 4,096, MLP 2*64*256 = 32,768
                 -> 49,408; two blocks 98,816; final LayerNorm 128; wte 256*64 = 16,384  -> N = 115,328
      6N = 691,968; 12 L H Q T = 12*2*4*16*128 = 196,608; flops_per_token = 888,576
      at 1e6 tokens/s on an A100 (312e12): MFU = 8.88576e11 / 3.12e14 = 0.0028480
    """
    model_spec = ModelSpec(width=64, depth=2, n_heads=4, seq_len=128)
    model = GPT(model_spec)
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()  # nanoGPT's get_num_params()
    assert n == 115_328
    assert 6 * n + 12 * 2 * 4 * 16 * 128 == 888_576
    mfu = model_flops_utilization(model_spec, 1e6, peak_flops_for("NVIDIA A100-SXM4-80GB"))
    assert mfu == pytest.approx(888_576 * 1e6 / 312e12, rel=1e-12)
    assert mfu == pytest.approx(0.0028480, abs=1e-7)
    assert model_flops_utilization(model_spec, 1e6, None) is None


def test_peak_table_by_device_name():
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA H200") == 989e12
    assert peak_flops_for("NVIDIA A100 80GB PCIe") == 312e12
    assert peak_flops_for("NVIDIA L4") == 121e12 and peak_flops_for("NVIDIA L40S") == 362e12
    assert peak_flops_for("NVIDIA A10") == 125e12
    assert peak_flops_for("NVIDIA A10G") is None  # published figures disagree: cluster.peak_flops
    assert peak_flops_for("cpu") is None and peak_flops_for("Some Future GPU") is None


def test_tokens_per_second_and_mfu_reach_the_ledger_and_old_ledgers_gain_the_columns(tmp_path):
    from proxyscale.orchestrator.ledger import Ledger

    spec = tiny_spec(width=16, depth=1, seq_len=32, tokens=1024, batch_tokens=256, eval_batches=1)
    plain = train_run(spec)
    assert plain.device_name == "cpu" and plain.tokens_per_second > 0
    assert plain.mfu is None and plain.peak_flops is None  # no peak on CPU
    given = train_run(spec, peak_flops=1e12)  # cluster.peak_flops
    assert given.peak_flops == 1e12
    assert given.mfu == pytest.approx(given.flops_per_token * given.tokens_per_second / 1e12, rel=1e-12)

    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    with sqlite3.connect(path) as db:  # a ledger from before the CUDA path: without the three columns
        for column in ("tokens_per_second", "mfu", "device_name"):
            db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        db.execute("INSERT INTO runs (run_id, sweep, spec_json, status, created_at, updated_at) "
                   "VALUES ('r', 's', '{}', 'running', 1.0, 1.0)")
    db.close()
    with Ledger(path) as ledger:
        ledger.finish("r", given.to_dict(), {})
        row = ledger.run("r")
    assert row["tokens_per_second"] == pytest.approx(given.tokens_per_second)
    assert row["mfu"] == pytest.approx(given.mfu) and row["device_name"] == "cpu"


# --- cluster.gpus_per_run ------------------------------------------------------------------------------


def test_gpu_share_packs_small_proxies_and_gives_big_ones_a_gpu():
    small = gpu_share(ModelSpec(width=64, depth=2), 4096)
    assert small.runs_per_gpu == MAX_RUNS_PER_GPU and small.gpus == 1 / MAX_RUNS_PER_GPU
    big = gpu_share(ModelSpec(width=768, depth=12, n_heads=12, seq_len=1024), 65536)
    assert big.runs_per_gpu == 1 and big.gpus == 1.0
    shares = [gpu_share(ModelSpec(width=w, depth=d, seq_len=512), 16384).gpus for w, d in ((64, 2), (256, 4),
                                                                                          (512, 8), (1024, 16))]
    assert shares == sorted(shares) and shares[0] < shares[-1]  # bigger proxies never get less
    middle = gpu_share(ModelSpec(width=768, depth=12, n_heads=12, seq_len=1024), 4096)
    assert 1 < middle.runs_per_gpu < MAX_RUNS_PER_GPU
    assert middle.runs_per_gpu * middle.gpus <= 1.0  # k requests fit on one GPU in Ray's accounting
    assert middle.runs_per_gpu == int(1 / max(middle.memory_share, middle.compute_share))


def test_gpus_per_run_auto_is_zero_without_gpus_or_on_cpu():
    spec = tiny_spec(device="auto")
    assert gpus.gpus_for_run("auto", spec, 0.0) == 0.0
    assert gpus.gpus_for_run("auto", tiny_spec(device="cpu"), 8.0) == 0.0
    assert gpus.gpus_for_run("auto", spec, 8.0) == gpu_share(spec.model, spec.train.batch_tokens).gpus
    assert gpus.gpus_for_run(0.5, spec, 8.0) == 0.5
    # The driver starts no more runs than the GPUs hold (each node: whole multiples of the request).
    assert gpus.concurrent_runs(0.125, [spec], [1.0, 2.0]) == 24
    assert gpus.concurrent_runs(0.3333, [spec], [1.0]) == 3
    assert gpus.concurrent_runs("auto", [spec], [0.0]) is None  # no GPU asked for: the CPUs decide


@pytest.mark.parametrize("value, words", [
    (0, "cluster.gpus_per_run: 0 is not allowed; give 'auto'"),
    (-1, "cluster.gpus_per_run: -1 is not allowed"),
    (1.5, "cluster.gpus_per_run: 1.5 is not allowed; above 1 Ray schedules whole GPUs only"),
    (2, "cluster.gpus_per_run: 2 GPUs per run cannot be scheduled: its largest node has 1; allowed: 'auto' or a "
        "number in (0, 1]"),
])
def test_gpus_per_run_checked_against_the_largest_node(value, words):
    with pytest.raises(SpecError) as error:
        gpus.check_cluster(value, [tiny_spec()], [1.0, 0.0])
    assert words in str(error.value)
    gpus.check_cluster(1, [tiny_spec()], [1.0, 0.0])
    gpus.check_cluster(0.25, [tiny_spec()], [1.0])
    with pytest.raises(SpecError, match=r"^train\.device: 'cuda' but the Ray cluster has no GPU \(2 nodes\)"):
        gpus.check_cluster("auto", [tiny_spec(device="cuda")], [0.0, 0.0])


# --- bad input at the command line -----------------------------------------------------------------------


@pytest.fixture
def tiny_sweep(tmp_path, monkeypatch):
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "tiny.yaml").write_text(TINY_SWEEP)
    monkeypatch.setenv("PROXYSCALE_SWEEP_PATH", str(sweeps))
    yield ["launch", "sweep=tiny", f"sweep_dir={tmp_path / 'runs'}", "cluster.num_cpus=1", "tracking=none"]
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.mark.parametrize("value", ["0", "-0.5"])
def test_launch_refuses_gpus_per_run_at_or_below_zero_before_ray(tiny_sweep, capsys, value):
    line = refused(capsys, [*tiny_sweep, f"cluster.gpus_per_run={value}"])
    assert f"cluster.gpus_per_run: {value} is not allowed; give 'auto'" in line
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_before_any_run(tiny_sweep, capsys, tmp_path):
    line = refused(capsys, ["train", "train.device=cuda", f"out_dir={tmp_path / 'single'}"])
    assert "train.device: 'cuda' but this machine has no CUDA device" in line and "auto or cpu" in line
    assert not (tmp_path / "single").exists()
    # launch: Ray's nodes are asked before any task is submitted (here: one node, no GPU).
    line = refused(capsys, [*tiny_sweep, "train.device=cuda", "cluster.gpus_per_run=2"])
    assert "cluster.gpus_per_run: 2 GPUs per run cannot be scheduled: the Ray cluster has no GPU (1 node)" in line
    line = refused(capsys, [*tiny_sweep, "train.device=cuda"])
    assert "train.device: 'cuda' but the Ray cluster has no GPU (1 node)" in line
    from proxyscale.orchestrator.ledger import Ledger

    with Ledger(tmp_path / "runs" / "ledger.sqlite") as ledger:
        assert {row["status"] for row in ledger.runs()} == {"pending"}  # registered, never started
