"""The per-group rules of sp / mup / completep, and their optimizer groups."""

from __future__ import annotations

import math

import pytest

from proxyscale.models.gpt import GPT, parameter_group
from proxyscale.models.parametrization import make_parametrization
from proxyscale.models.spec import ModelSpec


def test_mup_and_completep_equal_sp_multipliers_at_the_base_shape():
    for parametrization in ("mup", "completep"):
        spec = ModelSpec(width=64, depth=2, base_width=64, base_depth=2, parametrization=parametrization)
        rules = make_parametrization(spec)
        sp = make_parametrization(ModelSpec(width=64, depth=2))
        assert rules.output_multiplier == sp.output_multiplier == 1.0
        assert rules.residual_multiplier == 1.0
        assert rules.attn_scale == pytest.approx(sp.attn_scale)
        for group in ("embedding", "hidden", "readout"):
            assert rules.rules[group].lr_mult == 1.0
            assert rules.rules[group].init_std == pytest.approx(sp.rules[group].init_std)


def test_mup_width_rules():
    spec = ModelSpec(width=256, n_heads=4, base_width=64, parametrization="mup")
    rules = make_parametrization(spec)
    m = 4.0
    assert rules.rules["hidden"].lr_mult == pytest.approx(1 / m)
    assert rules.rules["hidden"].init_std == pytest.approx(0.02 / math.sqrt(m))
    assert rules.rules["hidden"].wd_mult == pytest.approx(m)  # lr * wd constant in width
    assert rules.rules["embedding"].lr_mult == 1.0 and rules.rules["embedding"].init_std == 0.02
    assert rules.rules["readout"].lr_mult == 1.0
    assert rules.output_multiplier == pytest.approx(1 / m)
    # 1/d_head attention, equal to 1/sqrt(d_head) at the base head size of 16.
    assert rules.attn_scale == pytest.approx(math.sqrt(16) / 64)


def test_completep_depth_rules():
    spec = ModelSpec(width=64, depth=8, base_depth=2, parametrization="completep", depth_alpha=1.0)
    rules = make_parametrization(spec)
    assert rules.residual_multiplier == pytest.approx(0.25)
    assert rules.rules["hidden"].lr_mult == pytest.approx(1.0)  # m_L^(alpha - 1) = 1 for alpha = 1
    assert rules.rules["hidden"].eps_mult == pytest.approx(0.25)
    depth_mup = make_parametrization(ModelSpec(width=64, depth=8, base_depth=2, parametrization="completep",
                                               depth_alpha=0.5))
    assert depth_mup.residual_multiplier == pytest.approx(0.5)
    assert depth_mup.rules["hidden"].lr_mult == pytest.approx(0.5)  # Depth-muP: LR / sqrt(m_L)
    assert make_parametrization(ModelSpec(depth=8, base_depth=2, parametrization="mup")).residual_multiplier == 1.0


@pytest.mark.parametrize("tied", [True, False])
def test_every_parameter_is_in_exactly_one_optimizer_group(tied):
    model = GPT(ModelSpec(width=128, n_heads=4, parametrization="mup", qk_layernorm=True, tied_embeddings=tied))
    groups = model.optimizer_groups(lr=1e-2, weight_decay=0.1, eps=1e-8)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    by_name = {g["name"]: g for g in groups}
    assert by_name["hidden"]["lr"] == pytest.approx(1e-2 / 2)
    assert by_name["block_norm"]["weight_decay"] == 0.0
    assert ("readout" in by_name) == (not tied)


def test_init_follows_the_rules():
    spec = ModelSpec(width=512, n_heads=4, base_width=64, parametrization="mup", tied_embeddings=False)
    model = GPT(spec)
    rules = make_parametrization(spec).rules
    for name, p in model.named_parameters():
        group = parameter_group(name)
        if group in ("hidden", "embedding", "readout"):
            assert float(p.detach().std()) == pytest.approx(rules[group].init_std, rel=0.05), name
