"""Tokens per second of proxyscale's training step (probes on, default interval) against a plain
PyTorch loop of the same architecture on the same data, in one process, for several model sizes.

Run: .venv/bin/python tests/benchmarks/bench_train_step.py [--data-path DIR]  (DIR: a prepare-data corpus)
Last line: train_step_ratio=<ours/plain> (the geometric mean over sizes).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from proxyscale.models.data import load_tokens, train_batch
from proxyscale.models.gpt import GPT
from proxyscale.models.spec import DataSpec, ModelSpec, RunSpec, TrainSpec
from proxyscale.models.train import train_run


def plain_loop_tokens_per_second(spec: RunSpec) -> float:
    """The reference: the same GPT, AdamW, the same batches, clipping; nothing else."""
    source = load_tokens(spec.data, batch_sequences=spec.train.batch_tokens // spec.model.seq_len)
    torch.manual_seed(spec.train.seed)
    model = GPT(spec.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr, betas=(0.9, 0.95), weight_decay=0.1)
    n_seqs = spec.train.batch_tokens // spec.model.seq_len
    start = time.perf_counter()
    for step in range(spec.train.steps):
        x, y = train_batch(source, spec.train.seed, step, 0, n_seqs, spec.model.seq_len)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return spec.train.steps * spec.train.batch_tokens / (time.perf_counter() - start)


def ours_tokens_per_second(spec: RunSpec) -> float:
    result = train_run(spec)
    return result.tokens / result.train_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-path", help="a prepare-data directory: both loops read it (data=prepared) instead of "
                                            "the stdlib bytes")
    args = parser.parse_args()
    data = DataSpec()
    if args.data_path:
        from proxyscale.orchestrator.prepare import resolve_prepared_data

        data = DataSpec(**resolve_prepared_data({"model": {}, "data": {"kind": "prepared", "path": args.data_path}})["data"])
    sizes = [ModelSpec(width=64, depth=2, n_heads=4), ModelSpec(width=128, depth=4, n_heads=4),
             ModelSpec(width=192, depth=6, n_heads=6)]
    ratios = []
    for model in sizes:
        batch = 4096
        train = TrainSpec(tokens=args.steps * batch, batch_tokens=batch, warmup_steps=5, device="cpu",
                          # Evaluate only at the start and end: the plain loop does not evaluate.
                          eval_interval_tokens=10 * args.steps * batch, eval_batches=1)
        model = dataclasses.replace(model, vocab_size=data.vocab_size or 256)
        spec = RunSpec(model=model, train=train, data=data)
        assert train.log_interval == TrainSpec().log_interval  # probes at the default interval
        plain_loop_tokens_per_second(spec)  # warm up allocator and caches
        plain, ours = [], []
        for _ in range(args.repeats):  # interleaved so drift affects both alike
            plain.append(plain_loop_tokens_per_second(spec))
            ours.append(ours_tokens_per_second(spec))
        ratio = max(ours) / max(plain)
        ratios.append(ratio)
        print(f"width={model.width} depth={model.depth}: ours {max(ours):,.0f} tok/s, plain {max(plain):,.0f} tok/s,"
              f" ratio {ratio:.3f}")
    print(f"train_step_ratio={math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f}")


if __name__ == "__main__":
    main()
