"""Bad specs fail with an error naming the field and the allowed values, before any training."""

from __future__ import annotations

import subprocess

import pytest

from proxyscale.models.spec import DataSpec, ModelSpec, RunSpec, SpecError, TrainSpec

BAD_SPECS = [
    (lambda: ModelSpec(width=65, n_heads=4), "model.width", "multiples of 4"),
    (lambda: ModelSpec(width=64, n_heads=None, head_size=24), "model.width", "multiples of 24"),
    (lambda: ModelSpec(width=0), "model.width", "positive integer"),
    (lambda: ModelSpec(depth=-1), "model.depth", "positive integer"),
    (lambda: ModelSpec(seq_len=0), "model.seq_len", "positive integer"),
    (lambda: ModelSpec(n_heads=4, head_size=16), "model.n_heads", "exactly one"),
    (lambda: ModelSpec(parametrization="mu-p"), "model.parametrization", "'sp', 'mup', 'completep'"),
    (lambda: ModelSpec(norm="batchnorm"), "model.norm", "'layernorm', 'rmsnorm'"),
    (lambda: ModelSpec(depth_alpha=2.0), "model.depth_alpha", "[0, 1]"),
    (lambda: TrainSpec(schedule="cosin"), "train.schedule", "did you mean 'cosine'"),
    (lambda: TrainSpec(tokens=0), "train.tokens", "positive integer"),
    (lambda: TrainSpec(tokens=1000, batch_tokens=4096), "train.tokens", "shorter than one step"),
    (lambda: TrainSpec(lr=-1.0), "train.lr", "> 0"),
    (lambda: TrainSpec(batch_tokens=4096, micro_batch_tokens=3000), "train.micro_batch_tokens", "divide"),
    (lambda: TrainSpec(tokens=40960, batch_tokens=4096, warmup_steps=10), "train.warmup_steps", "0 to 9"),
    (lambda: TrainSpec(device="tpu"), "train.device", "'auto', 'cpu', 'cuda'"),
    (lambda: DataSpec(kind="memmap"), "data.train_path", "required"),
    (lambda: RunSpec(model=ModelSpec(seq_len=100)), "train.batch_tokens", "multiple of model.seq_len"),
    (lambda: RunSpec(model=ModelSpec(vocab_size=512)), "model.vocab_size", "does not match"),
    (lambda: RunSpec.from_dict({"model": {"widht": 64}}), "model.widht", "did you mean 'width'"),
    (lambda: RunSpec.from_dict({"trian": {}}), "trian", "unknown key"),
    (lambda: RunSpec.from_dict({"train": {"tokens": "many"}}), "train.tokens", "integer"),
    (lambda: RunSpec.from_dict({"model": {"qk_layernorm": "yes"}}), "model.qk_layernorm", "true or false"),
]


@pytest.mark.parametrize("build, field, allowed", BAD_SPECS, ids=[b[1] + ":" + b[2] for b in BAD_SPECS])
def test_bad_spec_names_field_and_allowed_values(build, field, allowed):
    with pytest.raises(SpecError) as error:
        build()
    assert field in str(error.value)
    assert allowed in str(error.value)


def test_token_counts_written_as_floats_are_accepted():
    spec = RunSpec.from_dict({"train": {"tokens": 2e6, "batch_tokens": 4096.0}})
    assert spec.train.tokens == 2_000_000 and spec.train.steps == 2_000_000 // 4096


def test_run_id_depends_on_every_field():
    base = RunSpec()
    assert base.run_id() == RunSpec().run_id()
    assert base.run_id() != RunSpec(train=TrainSpec(seed=1)).run_id()
    assert base.run_id() != RunSpec(model=ModelSpec(qk_layernorm=True)).run_id()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.width=65", "model.width"),
        ("train.schedule=cosin", "did you mean 'cosine'"),
        ("model.widht=64", "widht"),
        ("data=memmap", "data.train_path"),
        ("train.tokens=10", "shorter than one step"),
    ],
)
def test_cli_refuses_bad_overrides_before_training(tmp_path, cli_env, python, override, message):
    out = subprocess.run(
        [python, "-m", "proxyscale.orchestrator.cli", "train", override, f"out_dir={tmp_path}"],
        capture_output=True, text=True, env=cli_env, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the spec is valid"
