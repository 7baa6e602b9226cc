"""Stability probes (Wortsman et al. 2023), measured on log steps only so they stay cheap."""

from __future__ import annotations

import torch


def logz_stats(log_z: torch.Tensor) -> dict[str, float]:
    """Statistics of the output softmax's log-partition log Z (output-logit divergence drifts it from 0)."""
    log_z = log_z.detach().float()
    return {
        "logz_mean": float(log_z.mean()),
        "logz_std": float(log_z.std()) if log_z.numel() > 1 else 0.0,
        "logz_abs_max": float(log_z.abs().max()),
    }


def attention_logit_stats(max_logits: list[float]) -> dict[str, float]:
    stats = {f"max_attn_logit/{i}": value for i, value in enumerate(max_logits)}
    if max_logits:
        stats["max_attn_logit"] = max(max_logits)
    return stats


def snapshot_groups(groups: list[dict]) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in group["params"]] for group in groups]


def _rms(tensors: list[torch.Tensor]) -> float:
    total = sum(float(t.float().pow(2).sum()) for t in tensors)
    count = sum(t.numel() for t in tensors)
    return (total / max(count, 1)) ** 0.5


def update_ratios(groups: list[dict], before: list[list[torch.Tensor]]) -> dict[str, float]:
    """RMS of the last update over RMS of the parameters, per optimiser group."""
    ratios = {}
    for group, old in zip(groups, before, strict=True):
        updates = [p.detach() - o for p, o in zip(group["params"], old, strict=True)]
        ratios[f"update_ratio/{group['name']}"] = _rms(updates) / max(_rms(old), 1e-12)
    return ratios


def parameter_norm(groups: list[dict]) -> float:
    return sum(float(p.detach().float().pow(2).sum()) for g in groups for p in g["params"]) ** 0.5
