"""Parameter and FLOP counts against hand formulas and against the model itself."""

from __future__ import annotations

import pytest

from proxyscale.models.flops import count_parameters, flops_per_token, training_flops
from proxyscale.models.gpt import GPT
from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tied_embeddings": False},
        {"qk_layernorm": True},
        {"norm": "rmsnorm", "qk_layernorm": True, "tied_embeddings": False},
        {"width": 96, "depth": 3, "n_heads": None, "head_size": 32, "mlp_ratio": 2.0},
    ],
)
def test_parameter_count_matches_the_model(kwargs):
    spec = ModelSpec(**({"width": 64, "depth": 2, "n_heads": 4} | kwargs))
    model = GPT(spec)
    counts = count_parameters(spec)
    assert counts.total == sum(p.numel() for p in model.parameters())
    embedding_like = model.wte.weight.numel() + model.wpe.weight.numel()
    if model.head is not None:
        embedding_like += model.head.weight.numel()
    assert counts.non_embedding == counts.total - embedding_like


def test_hand_formula_for_one_shape():
    # width 128, depth 4, vocab 256, seq 128, LayerNorm (weight + bias), MLP 4x, tied.
    d, layers, vocab, seq = 128, 4, 256, 128
    per_block = 12 * d * d + 4 * d  # qkv 3d^2 + proj d^2 + mlp 8d^2, two LayerNorms
    non_embedding = layers * per_block + 2 * d
    spec = ModelSpec(width=d, depth=layers, n_heads=4, vocab_size=vocab, seq_len=seq)
    counts = count_parameters(spec)
    assert counts.non_embedding == non_embedding == 788_736
    assert counts.total == non_embedding + vocab * d + seq * d
    expected = 6 * (non_embedding + vocab * d) + 12 * layers * d * seq
    assert flops_per_token(spec) == expected
    run = RunSpec(model=spec, train=TrainSpec(tokens=1_000_000, batch_tokens=4096))
    assert training_flops(run) == expected * (1_000_000 // 4096) * 4096
