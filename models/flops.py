"""The one place that counts parameters and training FLOPs.

Conventions (say which N every table uses):
- `total`: every parameter, embeddings included (Chinchilla's N).
- `non_embedding`: total minus the token and position embeddings and, when untied, the output
  head (Kaplan's and DeepSeek's N).
- FLOPs per training token: 6 * (non-embedding parameters + the head's vocab x width matmul)
  + 12 * depth * width * seq_len for the attention scores and values (PaLM / nanoGPT's MFU
  formula). The head's matmul is real compute even when its weights are tied to the embedding,
  while the embedding lookup costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyscale.models.spec import ModelSpec, RunSpec


@dataclass(frozen=True)
class ParameterCount:
    total: int
    non_embedding: int
    embedding: int
    head: int
    """Output-head weights (0 when tied to the embedding)."""


def norm_parameters(kind: str, dim: int) -> int:
    return 2 * dim if kind == "layernorm" else dim


def count_parameters(spec: ModelSpec) -> ParameterCount:
    d, f = spec.width, spec.mlp_width
    per_block = (
        2 * norm_parameters(spec.norm, d)
        + 3 * d * d  # qkv
        + d * d  # attention output projection
        + 2 * d * f  # MLP in and out
    )
    if spec.qk_layernorm:
        per_block += 2 * norm_parameters(spec.norm, spec.d_head)
    embedding = spec.vocab_size * d + spec.seq_len * d
    head = 0 if spec.tied_embeddings else spec.vocab_size * d
    non_embedding = spec.depth * per_block + norm_parameters(spec.norm, d)
    return ParameterCount(
        total=embedding + head + non_embedding,
        non_embedding=non_embedding,
        embedding=embedding,
        head=head,
    )


def flops_per_token(spec: ModelSpec) -> float:
    """Training FLOPs per token: 6 N_matmul + 12 L d T."""
    counts = count_parameters(spec)
    matmul_params = counts.non_embedding + spec.vocab_size * spec.width
    return 6.0 * matmul_params + 12.0 * spec.depth * spec.width * spec.seq_len


def training_flops(spec: RunSpec) -> float:
    """FLOPs the run spends: FLOPs per token times the tokens it trains (whole steps).

    A fork (train.init_from) is charged only its own new tokens, after its parent's step.
    """
    return flops_per_token(spec.model) * (spec.train.steps - spec.train.fork_step) * spec.train.batch_tokens
