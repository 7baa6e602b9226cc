"""The sweep grammar: expansion, budgets, zips, filters; bad input refused before anything starts."""

from __future__ import annotations

import subprocess

import pytest

from proxyscale.models.flops import count_parameters, flops_per_token
from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.config import compose_config, to_plain
from proxyscale.orchestrator.sweep import expand, sweep_from_config


def sweep_of(block: dict, **sections) -> list:
    plain = to_plain(compose_config([]))
    for section, values in sections.items():
        plain[section].update(values)
    plain["sweep"] = {"name": "t"} | block
    return expand(sweep_from_config(plain))


def test_axes_form_a_cartesian_product_and_seeds_an_axis():
    runs = sweep_of({"axes": {"model.width": [32, 64], "train.lr": [1e-3, 1e-2, 3e-2]}, "seeds": [0, 1]})
    assert len(runs) == 12
    assert {(r.model.width, r.train.lr, r.train.seed) for r in runs} == {
        (w, lr, s) for w in (32, 64) for lr in (1e-3, 1e-2, 3e-2) for s in (0, 1)}


def test_zipped_axes_vary_together():
    runs = sweep_of({"zip": [{"model.width": [32, 64, 128], "model.n_heads": [2, 4, 8]}], "axes": {"train.lr": [1e-2]}})
    assert [(r.model.width, r.model.n_heads) for r in runs] == [(32, 2), (64, 4), (128, 8)]


def test_budgets_as_tokens_per_parameter_and_as_flops():
    per_param = sweep_of({"axes": {"model.width": [32, 64]}, "budget": {"tokens_per_param": [20]}})
    for run in per_param:
        target = 20 * count_parameters(run.model).total
        assert abs(run.train.tokens - target) <= run.train.batch_tokens / 2
    flops = sweep_of({"axes": {"model.width": [32, 64, 96]}, "budget": {"flops": [1e12]}})
    for run in flops:
        spent = flops_per_token(run.model) * run.train.tokens
        assert spent == pytest.approx(1e12, rel=0.05)
    assert len({r.train.tokens for r in flops}) == 3  # D = C / (6N + attention): smaller models see more tokens


def test_filters_drop_combinations():
    runs = sweep_of({"axes": {"model.width": [32, 64, 128], "model.depth": [1, 2, 4]},
                     "filters": ["model.width >= 32 * model.depth"]})
    assert {(r.model.width, r.model.depth) for r in runs} == {(32, 1), (64, 1), (64, 2), (128, 1), (128, 2), (128, 4)}


def test_every_shipped_sweep_composes_and_expands():
    from proxyscale.orchestrator.config import SWEEPS_DIR

    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        plain = to_plain(compose_config([f"sweep={path.stem}"]))
        runs = expand(sweep_from_config(plain))
        assert runs, path


BAD = [
    ({"axes": {"model.widht": [32]}}, "did you mean 'model.width'"),
    ({"axes": {"modle.width": [32]}}, "did you mean 'model.width'"),
    ({"axes": {"model.width": []}}, "is empty"),
    ({"axes": {"model.width": 32}}, "must be a list"),
    ({"axes": {"model.width": [30]}}, "not divisible by model.n_heads"),
    ({"axes": {"model.width": [32, "wide"]}}, "model.width: must be an integer"),
    ({"axes": {"train.schedule": ["cosine", "cosin"]}}, "did you mean 'cosine'"),
    ({"axes": {"model.parametrization": ["mup", "ntk"]}}, "'sp', 'mup', 'completep'"),
    ({"axes": {"train.lr": [-1e-3]}}, "train.lr: must be > 0"),
    ({"axes": {"train.tokens": [100]}}, "shorter than one step"),
    ({"zip": [{"model.width": [32, 64], "model.n_heads": [2]}]}, "equal lengths"),
    ({"zip": [{}]}, "non-empty mapping"),
    ({"axes": {"model.width": [32]}, "zip": [{"model.width": [64], "model.depth": [2]}]}, "varied twice"),
    ({"budget": {"tokens_per_parm": [20]}}, "did you mean 'tokens_per_param'"),
    ({"budget": {"flops": [-1e12]}}, "positive numbers"),
    ({"budget": {"flops": [1e12], "tokens": [1e6]}}, "exactly one of"),
    ({"budget": {"tokens": [1e6]}, "axes": {"train.tokens": [1e6]}}, "set the token budget one way"),
    ({"filters": ["model.width >"]}, "not a valid expression"),
    ({"filters": ["__import__('os').system('true')"]}, "uses Call"),
    ({"filters": ["model.widht > 3"]}, "did you mean 'model.width'"),
    ({"filters": ["width > 3"]}, "use dotted keys"),
    ({"filters": ["model.width > 10000"]}, "drop every combination"),
    ({"axs": {"model.width": [32]}}, "did you mean 'sweep.axes'"),
    ({"name": "has space"}, "sweep.name"),
    ({"seeds": [0, 1], "axes": {"train.seed": [3]}}, "one way"),
    ({"budget": {"flops": [1e3]}}, "shorter than one step"),
]


@pytest.mark.parametrize("block, message", BAD, ids=[m for _, m in BAD])
def test_bad_sweeps_are_refused_with_the_key_and_the_allowed_values(block, message):
    with pytest.raises(SpecError, match=None) as error:
        sweep_of(block)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep=demoo"], "sweep"),
        (["sweep=demo", "model.n_heads=5"], "not divisible by model.n_heads=5"),
        (["sweep=demo", "cluster.cpus_per_run=0"], "cluster.cpus_per_run"),
        (["sweep=demo", "cluster.address=somewhere"], "cluster.address"),
        (["sweep=demo", "cluster.max_concurrent=0"], "cluster.max_concurrent"),
        (["sweep=demo", "tracking.mode=loud"], "tracking.mode"),
        ([], "no sweep selected"),
    ],
)
def test_launch_refuses_bad_input_and_starts_nothing(tmp_path, cli_env, python, overrides, message):
    out = subprocess.run([python, "-m", "proxyscale.orchestrator.cli", "launch", *overrides, f"sweep_dir={tmp_path / 's'}"],
                         capture_output=True, text=True, env=cli_env, timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert not (tmp_path / "s").exists()


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, cli_env, python):
    out = subprocess.run([python, "-m", "proxyscale.orchestrator.cli", "launch", "sweep=demo", "--dry-run",
                          f"sweep_dir={tmp_path / 's'}"], capture_output=True, text=True, env=cli_env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "28 runs, total compute" in out.stdout and "dry run: nothing started" in out.stdout
    assert "planner=active: the 28 runs above are the allowed space" in out.stdout
    assert not (tmp_path / "s").exists()
