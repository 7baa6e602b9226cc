"""The CUDA path against the field's reference, and many small proxies on one GPU (docs/gpu.md).

For proxies of about 10M, 50M and 125M parameters (seq 1024, the stdlib byte corpus), in one process:
  ours:  models.train.train_run on CUDA with its defaults (bf16 autocast, torch.compile, fused AdamW, flash SDPA,
         tokens held on the GPU, probes every 10 steps, the loss read only on log steps); tokens/s as the run
         reports it (its first 2 steps, the compilation, left out);
  plain: a nanoGPT-style loop of the same GPT: bf16 autocast, torch.compile, fused AdamW, batches sampled on the
         GPU, clipping; nothing else (no probes, no evaluation, no schedule);
both with MFU = flops_per_token * tokens/s / peak (models/throughput.py; --peak-flops overrides the table).

Then the packing gain: 8 width-64 proxies (models.train defaults but train.compile=false, so that the gain
measures the GPU's sharing and not 8 compilations done side by side) as 8 processes, each first loading torch,
CUDA and the corpus and then waiting for a start signal; one at a time (the sum of their training walls) divided
by all 8 at once on the one GPU (from the signal to the last one's end). This is what cluster.gpus_per_run=0.125
does through Ray, without Ray's start-up.

Needs torch and numpy only (imports models/, nothing of Ray, Hydra or W&B). Without CUDA it prints one line and
exits 0. Last line: mfu=<ours at the largest size> packing_gain=<one at a time / packed>.

Run: python tests/benchmarks/bench_gpu.py  (about 4 minutes on an H100-class GPU; scripts/gpu_check.sh runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SIZES = (  # (label, width, depth, heads of 64, micro-batch sequences of 1024); few layers keep compiling short
    ("10M", 320, 8, 5, 32),
    ("50M", 640, 10, 10, 32),
    ("125M", 1024, 10, 16, 32),
)
PACK_RUNS = 8
SMOKE_SIZES = (("smoke", 32, 1, 2, 2),)
"""--smoke: the whole script on CPU with a one-block model and 2 packed proxies (checks the code, measures nothing)."""


def run_spec(width: int, depth: int, heads: int, seqs: int, steps: int, seq_len: int = 1024, device: str = "cuda",
             **train):
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec

    batch = seqs * seq_len
    model = ModelSpec(width=width, depth=depth, n_heads=heads, seq_len=seq_len)
    defaults = dict(tokens=steps * batch, batch_tokens=batch, warmup_steps=min(10, steps - 1), lr=1e-3,
                    device=device, eval_interval_tokens=100 * steps * batch, eval_batches=1)
    return RunSpec(model=model, train=TrainSpec(**(defaults | train)))


def plain_tokens_per_second(spec, steps: int, warm: int = 3) -> float:
    """The reference loop (see the module docstring), timed after `warm` steps."""
    import numpy as np

    from proxyscale.models.data import load_tokens
    from proxyscale.models.gpt import GPT

    device = torch.device(spec.train.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = GPT(spec.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)
    compiled = torch.compile(model) if cuda else model
    tokens = torch.from_numpy(np.array(load_tokens(spec.data).train, copy=True)).to(device)
    seq_len, seqs = spec.model.seq_len, spec.train.batch_tokens // spec.model.seq_len
    offsets = torch.arange(seq_len + 1, device=device)
    start = 0.0
    for step in range(warm + steps):
        if step == warm:
            synchronize(device)
            start = time.perf_counter()
        starts = torch.randint(len(tokens) - seq_len - 1, (seqs,), device=device)
        window = tokens[starts[:, None] + offsets].long()
        x, y = window[:, :-1], window[:, 1:]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = compiled(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return steps * spec.train.batch_tokens / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_sizes(steps: int, peak: float | None, smoke: bool) -> float | None:
    from proxyscale.models.device import device_name, peak_flops
    from proxyscale.models.flops import count_parameters
    from proxyscale.models.throughput import model_flops_utilization
    from proxyscale.models.train import train_run

    device = torch.device("cpu" if smoke else "cuda")
    peak = peak_flops(device, peak)
    name = device_name(device)
    print(f"device: {name}, peak {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else
          f"device: {name}: not in the peak table; MFU unknown (give --peak-flops)", flush=True)
    last_mfu = None
    for label, width, depth, heads, seqs in SMOKE_SIZES if smoke else SIZES:
        spec = run_spec(width, depth, heads, seqs, steps, seq_len=64 if smoke else 1024, device=device.type,
                        **({"precision": "bf16"} if smoke else {}))
        n = count_parameters(spec.model).total
        plain = plain_tokens_per_second(spec, steps)
        result = train_run(spec, peak_flops=peak)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        plain_mfu = model_flops_utilization(spec.model, plain, peak)
        ours_mfu = result.mfu
        last_mfu = ours_mfu
        mfu_text = (f"MFU ours {ours_mfu:.1%} plain {plain_mfu:.1%}" if ours_mfu is not None and plain_mfu is not None
                    else "MFU unknown")
        print(f"{label:>5} (N={n / 1e6:.1f}M, width {width}, depth {depth}, {seqs}x{spec.model.seq_len} tokens/step): "
              f"ours {result.tokens_per_second:,.0f} tok/s, plain {plain:,.0f} tok/s, "
              f"ratio {result.tokens_per_second / plain:.3f}; {mfu_text}", flush=True)
    return last_mfu


def pack_worker(steps: int, device: str) -> None:
    """One packed proxy: load everything, say ready, wait for 'go' on stdin, train, print its wall time."""
    from proxyscale.models.data import load_tokens
    from proxyscale.models.train import train_run

    spec = run_spec(64, 2, 4, 32, steps, seq_len=128, device=device, compile=False)
    load_tokens(spec.data)
    torch.zeros(1, device=device)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    result = train_run(spec)
    print(json.dumps({"wall": time.perf_counter() - start, "tokens_per_second": result.tokens_per_second}), flush=True)


def start_workers(count: int, steps: int, device: str) -> list[subprocess.Popen]:
    command = [sys.executable, __file__, "--pack-worker", "--pack-steps", str(steps), "--device", device]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                env=os.environ | {"PYTHONPATH": str(ROOT)}) for _ in range(count)]
    for worker in workers:
        line = worker.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a packed proxy did not start: {line!r}")
    return workers


def finish(worker: subprocess.Popen) -> dict:
    out, _ = worker.communicate()
    if worker.returncode != 0:
        raise RuntimeError(f"a packed proxy failed (exit {worker.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def packing_gain(steps: int, runs: int, device: str) -> float:
    one_at_a_time = 0.0
    for _ in range(runs):
        (worker,) = start_workers(1, steps, device)
        worker.stdin.write("go\n")
        worker.stdin.flush()
        one_at_a_time += finish(worker)["wall"]
    workers = start_workers(runs, steps, device)
    start = time.perf_counter()
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    walls = [finish(worker) for worker in workers]
    packed = time.perf_counter() - start
    each = sum(w["tokens_per_second"] for w in walls) / len(walls)
    print(f"packing: {runs} width-64 proxies ({steps} steps each): one at a time {one_at_a_time:.1f} s, "
          f"packed on one {device.upper()} {packed:.1f} s (each {each:,.0f} tok/s while packed)", flush=True)
    return one_at_a_time / packed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60, help="timed steps per size")
    parser.add_argument("--pack-steps", type=int, default=400, help="steps of each width-64 proxy")
    parser.add_argument("--peak-flops", type=float, default=None, help="the GPU's peak FLOP/s (default: the table)")
    parser.add_argument("--smoke", action="store_true",
                        help="run every step of the script on CPU with tiny shapes (checks the code; measures nothing)")
    parser.add_argument("--pack-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pack_worker:
        pack_worker(args.pack_steps, args.device)
        return
    if not torch.cuda.is_available() and not args.smoke:
        print(f"bench_gpu: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
              "nothing measured")
        return
    if args.smoke:
        print("smoke run on CPU: the figures below check the code and measure nothing")
    mfu = compare_sizes(args.steps, args.peak_flops, args.smoke)
    gain = packing_gain(args.pack_steps, 2 if args.smoke else PACK_RUNS, "cpu" if args.smoke else "cuda")
    print(f"mfu={'unknown' if mfu is None else f'{mfu:.4f}'} packing_gain={gain:.3f}")


if __name__ == "__main__":
    main()
