"""Coordinate check (Yang et al. 2022): activation scales of every layer over a few training steps.

Under a correct width parametrisation the per-coordinate activation size (mean |x|) of every layer
stays flat as the width grows; under sp the output logits grow with width. CompleteP also keeps
them flat in depth. Training here is deliberately raw (Adam at a fixed LR, no weight decay, no
clipping, no warmup) so that only the parametrisation decides the scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from proxyscale.models.data import load_tokens, train_batch
from proxyscale.models.gpt import GPT
from proxyscale.models.spec import DataSpec, ModelSpec


def _hooked_layers(model: GPT) -> dict[str, torch.nn.Module]:
    layers: dict[str, torch.nn.Module] = {"embedding": model.wte}
    for i, block in enumerate(model.blocks):
        layers[f"block{i}.attn"] = block.attn
        layers[f"block{i}.mlp"] = block.mlp
        layers[f"block{i}.out"] = block
    return layers


def coord_check(
    *,
    parametrization: str,
    widths: list[int],
    depths: list[int] = (2,),
    steps: int = 5,
    lr: float = 1e-2,
    seed: int = 0,
    n_heads: int = 4,
    seq_len: int = 64,
    batch_seqs: int = 8,
    depth_alpha: float = 1.0,
) -> list[dict]:
    """Mean |activation| of every layer at each of `steps` Adam steps, for every (width, depth).

    The base shape is the smallest width and depth, so the multipliers are 1 there. Returns records
    {parametrization, width, depth, step, layer, l1}; layer names are "embedding",
    "block{i}.attn|mlp|out" and "logits", plus "last_block" for the output of the deepest block
    (comparable across depths).
    """
    source = load_tokens(DataSpec())
    records = []
    for depth in depths:
        for width in widths:
            spec = ModelSpec(
                width=width, depth=depth, n_heads=n_heads, seq_len=seq_len, parametrization=parametrization,
                base_width=min(widths), base_depth=min(depths), depth_alpha=depth_alpha,
            )
            torch.manual_seed(seed)
            model = GPT(spec)
            optimizer = torch.optim.AdamW(model.optimizer_groups(lr, 0.0, 1e-8), lr=lr, betas=(0.9, 0.95))
            captured: dict[str, float] = {}

            def hook(name, captured=captured):
                def save(module, inputs, output):
                    captured[name] = float(output.detach().abs().mean())
                return save

            handles = [module.register_forward_hook(hook(name)) for name, module in _hooked_layers(model).items()]
            for step in range(steps):
                x, y = train_batch(source, seed, step, 0, batch_seqs, seq_len)
                logits = model(x)
                captured["logits"] = float(logits.detach().abs().mean())
                captured["last_block"] = captured[f"block{depth - 1}.out"]
                for layer, value in captured.items():
                    records.append(
                        {"parametrization": parametrization, "width": width, "depth": depth, "step": step,
                         "layer": layer, "l1": value}
                    )
                F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for handle in handles:
                handle.remove()
    return records
