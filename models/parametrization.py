"""sp, mup and completep expressed once, as per-group rules.

Every parameter of the GPT belongs to one group. A parametrisation gives each group an init std,
and multipliers of the base LR, weight decay and Adam epsilon; plus three forward multipliers
(output logits, residual branches, attention scores). Everything is relative to a base shape
(`base_width`, `base_depth`) at which mup/completep coincide with sp, so hyperparameters tuned
on the base proxy carry over.

Sources (Adam versions):
- muP, Yang et al. 2022 (Tensor Programs V, Table 3) and microsoft/mup: hidden weights have
  init variance ~ 1/fan_in and LR / m_N; the readout gets a 1/m_N output multiplier (mup's
  `MuReadout`), so its LR and init stay those of the base; attention uses 1/d_head.
- CompleteP, Dey et al. 2025 (Table 1): residual branches scaled by m_L^-alpha; hidden-weight and
  block-norm LR times m_L^(alpha-1); Adam epsilon of hidden weights times m_N^-1 m_L^-alpha.
  alpha = 1 is CompleteP, alpha = 1/2 Depth-muP.
- Weight decay is "independent" for mup/completep (times m_N on hidden weights): torch's AdamW
  decays by lr * wd, so lr * wd stays constant across width (Dey et al. 2025; Wortsman et al. 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxyscale.models.spec import ModelSpec

GROUPS = ("embedding", "hidden", "residual_out", "readout", "block_norm", "final_norm")


@dataclass(frozen=True)
class GroupRule:
    init_std: float
    lr_mult: float
    wd_mult: float
    eps_mult: float
    decay: bool
    """Whether weight decay applies at all (not to norm gains)."""


@dataclass(frozen=True)
class Parametrization:
    rules: dict[str, GroupRule]
    output_multiplier: float
    """Multiplies the logits (mup's 1/m_N readout multiplier)."""
    residual_multiplier: float
    """Multiplies every residual branch (attention and MLP) before it is added."""
    attn_scale: float
    """Multiplies q.k before the softmax."""


def width_multiplier(spec: ModelSpec) -> float:
    return spec.width / spec.base_width


def depth_multiplier(spec: ModelSpec) -> float:
    return spec.depth / spec.base_depth


def base_d_head(spec: ModelSpec) -> float:
    """Head size of the base model: it shrinks with the base width only when the head count is fixed."""
    if spec.n_heads is not None:
        return spec.base_width / spec.n_heads
    return float(spec.head_size)


def make_parametrization(spec: ModelSpec) -> Parametrization:
    sigma = spec.init_std
    m_n = width_multiplier(spec)
    m_l = depth_multiplier(spec)
    if spec.parametrization == "sp":
        # GPT-2 style: one std everywhere, residual output projections shrunk by sqrt(2 * depth).
        hidden = GroupRule(sigma, 1.0, 1.0, 1.0, True)
        return Parametrization(
            rules={
                "embedding": GroupRule(sigma, 1.0, 1.0, 1.0, True),
                "hidden": hidden,
                "residual_out": GroupRule(sigma / math.sqrt(2 * spec.depth), 1.0, 1.0, 1.0, True),
                "readout": GroupRule(sigma, 1.0, 1.0, 1.0, True),
                "block_norm": GroupRule(1.0, 1.0, 0.0, 1.0, False),
                "final_norm": GroupRule(1.0, 1.0, 0.0, 1.0, False),
            },
            output_multiplier=1.0,
            residual_multiplier=1.0,
            attn_scale=1.0 / math.sqrt(spec.d_head),
        )

    alpha = spec.depth_alpha if spec.parametrization == "completep" else 0.0
    # mup is completep with alpha = 0 in depth, but keeps sp's depth-dependent residual init.
    depth_lr = m_l ** (alpha - 1.0) if spec.parametrization == "completep" else 1.0
    depth_eps = m_l ** (-alpha) if spec.parametrization == "completep" else 1.0
    residual_init_depth = spec.base_depth if spec.parametrization == "completep" else spec.depth
    hidden_std = sigma / math.sqrt(m_n)
    hidden_lr = depth_lr / m_n
    hidden_eps = depth_eps / m_n
    return Parametrization(
        rules={
            "embedding": GroupRule(sigma, 1.0, 1.0, 1.0, True),
            "hidden": GroupRule(hidden_std, hidden_lr, m_n, hidden_eps, True),
            "residual_out": GroupRule(
                hidden_std / math.sqrt(2 * residual_init_depth), hidden_lr, m_n, hidden_eps, True
            ),
            "readout": GroupRule(sigma, 1.0, 1.0, 1.0, True),
            "block_norm": GroupRule(1.0, depth_lr, 0.0, depth_eps, False),
            "final_norm": GroupRule(1.0, 1.0, 0.0, 1.0, False),
        },
        output_multiplier=1.0 / m_n,
        residual_multiplier=m_l ** (-alpha) if spec.parametrization == "completep" else 1.0,
        # 1/d_head scaling, equal to sp's 1/sqrt(d_head) at the base head size.
        attn_scale=math.sqrt(base_d_head(spec)) / spec.d_head,
    )
