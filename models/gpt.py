"""The decoder-only GPT proxy, with the parametrisation applied in one place (`GPT.__init__`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from proxyscale.models.parametrization import Parametrization, make_parametrization
from proxyscale.models.spec import ModelSpec


def make_norm(kind: str, dim: int) -> nn.Module:
    return nn.LayerNorm(dim) if kind == "layernorm" else nn.RMSNorm(dim)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, attn_scale: float) -> None:
        super().__init__()
        self.heads = spec.heads
        self.d_head = spec.d_head
        self.attn_scale = attn_scale
        self.qkv = nn.Linear(spec.width, 3 * spec.width, bias=False)
        self.proj = nn.Linear(spec.width, spec.width, bias=False)
        self.q_norm = make_norm(spec.norm, spec.d_head) if spec.qk_layernorm else None
        self.k_norm = make_norm(spec.norm, spec.d_head) if spec.qk_layernorm else None
        self.record_probes = False
        self.last_max_logit: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q = q.view(batch, seq, self.heads, self.d_head).transpose(1, 2)
        k = k.view(batch, seq, self.heads, self.d_head).transpose(1, 2)
        v = v.view(batch, seq, self.heads, self.d_head).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.record_probes:
            self.last_max_logit = self._max_logit(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.attn_scale)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))

    @torch.no_grad()
    def _max_logit(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Max causal attention logit over the first sequence (cheap, and enough to track growth)."""
        logits = (q[:1].float() @ k[:1].float().transpose(-2, -1)) * self.attn_scale
        seq = logits.shape[-1]
        mask = torch.ones(seq, seq, dtype=torch.bool, device=logits.device).tril()
        return logits.masked_fill(~mask, float("-inf")).amax()


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.fc = nn.Linear(spec.width, spec.mlp_width, bias=False)
        self.proj = nn.Linear(spec.mlp_width, spec.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer_index: int, param: Parametrization) -> None:
        super().__init__()
        self.norm1 = make_norm(spec.norm, spec.width)
        self.attn = Attention(spec, param.attn_scale)
        self.norm2 = make_norm(spec.norm, spec.width)
        self.mlp = MLP(spec)
        self.residual_multiplier = param.residual_multiplier
        # LayerNorm Scaling: deeper layers' pre-norm outputs shrink by 1/sqrt(layer index).
        self.norm_scale = 1.0 / math.sqrt(layer_index) if spec.layernorm_scaling else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.residual_multiplier * self.attn(self.norm1(x) * self.norm_scale)
        return x + self.residual_multiplier * self.mlp(self.norm2(x) * self.norm_scale)


def parameter_group(name: str) -> str:
    """The parametrisation group of a parameter, from its name in `GPT`."""
    if name in ("wte.weight", "wpe.weight"):
        return "embedding"
    if name == "head.weight":
        return "readout"
    if name.startswith("final_norm."):
        return "final_norm"
    if "norm" in name:
        return "block_norm"
    if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
        return "residual_out"
    if name.endswith(("attn.qkv.weight", "mlp.fc.weight")):
        return "hidden"
    raise KeyError(f"parameter {name!r} has no parametrisation group")


class GPT(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.param = make_parametrization(spec)
        self.wte = nn.Embedding(spec.vocab_size, spec.width)
        self.wpe = nn.Embedding(spec.seq_len, spec.width)
        self.blocks = nn.ModuleList(Block(spec, i + 1, self.param) for i in range(spec.depth))
        self.final_norm = make_norm(spec.norm, spec.width)
        self.head = None if spec.tied_embeddings else nn.Linear(spec.width, spec.vocab_size, bias=False)
        self.output_multiplier = self.param.output_multiplier
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            rule = self.param.rules[parameter_group(name)]
            if parameter_group(name) in ("block_norm", "final_norm"):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, rule.init_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (already multiplied by the output multiplier) for every position."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)
        weight = self.wte.weight if self.head is None else self.head.weight
        return F.linear(x, weight) * self.output_multiplier

    def set_probe_recording(self, enabled: bool) -> None:
        for block in self.blocks:
            block.attn.record_probes = enabled

    def max_attention_logits(self) -> list[float]:
        return [float(b.attn.last_max_logit) for b in self.blocks if b.attn.last_max_logit is not None]

    def optimizer_groups(self, lr: float, weight_decay: float, eps: float) -> list[dict]:
        """AdamW parameter groups with the parametrisation's LR, weight-decay and epsilon multipliers."""
        members: dict[str, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            members.setdefault(parameter_group(name), []).append(p)
        groups = []
        for group_name, params in members.items():
            rule = self.param.rules[group_name]
            groups.append(
                {
                    "params": params,
                    "name": group_name,
                    "lr_mult": rule.lr_mult,
                    "lr": lr * rule.lr_mult,
                    "weight_decay": weight_decay * rule.wd_mult if rule.decay else 0.0,
                    "eps": eps * rule.eps_mult,
                }
            )
        return groups
