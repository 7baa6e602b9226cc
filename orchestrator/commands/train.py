"""`proxyscale train`: compose the config and train one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train ONE proxy from the Hydra config (conf/); arguments are Hydra overrides",
        description="Train one run. Arguments are Hydra overrides, e.g. model=proxy_1m train.tokens=3e6 train.lr=1e-2.",
    )
    train.add_argument("overrides", nargs="*", help="Hydra overrides (key=value, group=option)")


def _format_record(record) -> str:
    parts = [f"step {record.step:>6}", f"tokens {record.tokens:>10,}", f"lr {record.lr:.2e}"]
    if record.train_loss is not None:
        parts.append(f"train {record.train_loss:.4f}")
    if record.eval_loss is not None:
        parts.append(f"eval {record.eval_loss:.4f}")
        if record.eval_bpb is not None:
            parts.append(f"bpb {record.eval_bpb:.4f}")
    parts += [f"{name} {value:.4f}" for name, value in record.evals.items()]
    if "max_attn_logit" in record.probes:
        parts.append(f"max-attn-logit {record.probes['max_attn_logit']:.2f}")
    if "grad_norm" in record.probes:
        parts.append(f"grad-norm {record.probes['grad_norm']:.3f}")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Compose the config, train ONE run, write its result; relaunching resumes from the checkpoint."""
    from proxyscale.models.data import load_tokens, unigram_entropy
    from proxyscale.models.flops import count_parameters, training_flops
    from proxyscale.models.train import train_run
    from proxyscale.orchestrator.commands.downstream import check_evals
    from proxyscale.orchestrator.config import compose_config, run_spec_from_config

    cfg = compose_config(args.overrides)
    spec = run_spec_from_config(cfg)
    check_evals([spec])
    from proxyscale.models.device import resolve_device

    resolve_device(spec.train.device)  # train.device=cuda without CUDA: one line, before anything
    peak_flops = _peak_flops(cfg.cluster.get("peak_flops"))
    out_dir = Path(cfg.out_dir) / spec.run_id()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = count_parameters(spec.model)
    source = load_tokens(spec.data)
    entropy = unigram_entropy(source.train, source.vocab_size)
    print(f"run {spec.run_id()}  N={counts.total:,} (non-embedding {counts.non_embedding:,})  "
          f"D={spec.train.steps * spec.train.batch_tokens:,} tokens  steps={spec.train.steps}  "
          f"C={training_flops(spec):.3e} FLOPs")
    print(f"data: {source.description}, hash {source.data_hash[:12]}, unigram entropy {entropy:.4f} nats/token")
    (out_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
    with open(out_dir / "records.jsonl", "a") as records:
        def on_record(record) -> None:
            records.write(json.dumps(record.__dict__) + "\n")
            records.flush()
            print(_format_record(record), flush=True)

        result = train_run(spec, on_record=on_record, checkpoint_dir=out_dir, peak_flops=peak_flops)
    summary = result.to_dict() | {"unigram_entropy": entropy}
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2))
    bpb = ("" if result.final_eval_bpb is None or result.best_eval_bpb is None else
           f", {result.final_eval_bpb:.4f} bpb (best {result.best_eval_bpb:.4f})")
    print(f"{result.status}: final eval loss {result.final_eval_loss:.4f} (best {result.best_eval_loss:.4f}, "
          f"unigram entropy {entropy:.4f}){bpb} in {result.wall_seconds:.1f}s; result in {out_dir}/result.json")
    if result.tokens_per_second is not None:
        mfu = (f"MFU {100 * result.mfu:.3g}%" if result.mfu is not None
               else "MFU unknown (no peak for this device: set cluster.peak_flops)")
        print(f"throughput on {result.device_name}: {result.tokens_per_second:,.0f} tokens/s, {mfu}")
    if result.reason:
        print(f"reason: {result.reason}")
    return 0


def _peak_flops(raw) -> float | None:
    from proxyscale.models.spec import SpecError

    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw > 0:
        raise SpecError(f"cluster.peak_flops: must be a positive number of FLOP/s (e.g. 989e12) or null, got {raw!r}")
    return float(raw)
