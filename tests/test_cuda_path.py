"""The CUDA path on a real GPU (docs/gpu.md): skipped without CUDA; tests/test_device.py covers what a CPU can run.

Runs under pytest, or as a plain script on a GPU machine that has only torch and numpy
(`python tests/test_cuda_path.py`; scripts/gpu_check.sh picks whichever is there).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxyscale.models import device as device_lib  # noqa: E402
from proxyscale.models.data import load_tokens, train_batch  # noqa: E402
from proxyscale.models.spec import DataSpec, ModelSpec, RunSpec, TrainSpec  # noqa: E402
from proxyscale.models.throughput import peak_flops_for  # noqa: E402
from proxyscale.models.train import train_run  # noqa: E402

try:
    import pytest

    pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                    reason="no CUDA device: the CUDA path's CPU branches are tested in tests/test_device.py")
except ImportError:  # a GPU machine with torch alone: run as a script
    pytest = None


def small_spec(**train) -> RunSpec:
    model = ModelSpec(width=128, depth=2, n_heads=4, seq_len=128)
    defaults = dict(tokens=40 * 4096, batch_tokens=4096, warmup_steps=5, lr=3e-3, eval_interval_tokens=20 * 4096,
                    eval_batches=2, log_interval=10)
    return RunSpec(model=model, train=TrainSpec(**(defaults | train)))


def test_a_run_on_cuda_with_the_defaults():
    """device=auto picks the GPU; bf16, compile, fused AdamW, flash SDPA and device-held tokens all on; tokens/s and
    MFU reported; the curve agrees with the CPU's fp32 run to a few hundredths."""
    result = train_run(small_spec())
    assert result.status == "finished" and result.device_name == torch.cuda.get_device_name()
    assert result.final_eval_loss < result.initial_eval_loss - 0.5
    assert result.tokens_per_second > 0
    peak = peak_flops_for(result.device_name)
    assert (result.mfu is None) == (peak is None)
    if peak is not None:
        assert 0 < result.mfu < 1
    cpu = train_run(small_spec(device="cpu"))
    assert abs(cpu.final_eval_loss - result.final_eval_loss) < 0.1, (cpu.final_eval_loss, result.final_eval_loss)


def test_tokens_held_on_the_gpu_are_train_batch():
    source = load_tokens(DataSpec())
    batches = device_lib.Batches(source, torch.device("cuda"), seed=1, n_seqs=8, seq_len=128)
    assert batches.held, "the stdlib corpus fits on any GPU"
    for step, micro in ((0, 0), (99, 1)):
        x, y = batches.get(step, micro)
        ex, ey = train_batch(source, 1, step, micro, 8, 128)
        assert x.is_cuda and torch.equal(x.cpu(), ex) and torch.equal(y.cpu(), ey)


def test_flash_attention_takes_the_proxys_attention():
    """The attention call of models/gpt.py (causal, an explicit scale) runs on the flash kernel in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(4, 4, 128, 32, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / 32)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_a_nan_on_cuda_is_caught_at_the_next_read():
    result = train_run(small_spec(lr=float("inf"), grad_clip=0.0, warmup_steps=0, compile=False))
    assert result.status == "diverged" and "nan" in result.reason, result.reason


def test_fractional_gpus_pack_runs_through_ray(tmp_path):
    """cluster.gpus_per_run=0.5: two runs train at the same time on one GPU (needs ray; skipped without)."""
    if pytest is not None:
        pytest.importorskip("ray")
    import time

    from proxyscale.orchestrator.execution import ClusterSettings, run_sweep, shutdown_ray
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    specs = [RunSpec(model=ModelSpec(width=width, depth=2, n_heads=4, seq_len=128),
                     train=small_spec(tokens=400 * 4096, eval_interval_tokens=400 * 4096, compile=False).train)
             for width in (64, 128)]
    seen: dict[str, dict[str, float]] = {}
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.register("pair", specs, plan_rows(specs))
    try:
        run_sweep(specs, ledger=ledger, sweep="pair", sweep_dir=str(tmp_path), tracking={"enabled": False},
                  cluster=ClusterSettings(num_cpus=2, gpus_per_run=0.5),
                  on_event=lambda kind, run_id, payload: seen.setdefault(run_id, {}).setdefault(kind, time.time()))
    finally:
        shutdown_ray()
    rows = ledger.runs()
    ledger.close()
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert all(r["device_name"] == torch.cuda.get_device_name() and r["tokens_per_second"] > 0 for r in rows)
    events = list(seen.values())
    assert max(e["started"] for e in events) < min(e["finished"] for e in events), "the runs did not share the GPU"


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("test_cuda_path: no CUDA device; skipped")
        sys.exit(0)
    import tempfile

    failed = 0
    for name, test in [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]:
        try:
            if "tmp_path" in test.__code__.co_varnames[: test.__code__.co_argcount]:
                try:
                    import ray  # noqa: F401
                except ImportError:
                    print(f"SKIP {name}: ray is not installed")
                    continue
                with tempfile.TemporaryDirectory() as folder:
                    test(Path(folder))
            else:
                test()
            print(f"PASS {name}")
        except Exception as error:  # noqa: BLE001 - report every test, then fail
            failed += 1
            print(f"FAIL {name}: {type(error).__name__}: {error}")
    sys.exit(1 if failed else 0)
