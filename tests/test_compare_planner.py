"""The deciding planner (issue 32 item 2): `sweep.recipes` checked and expanded, runs scored by the expected gain in
P(best) per FLOP, the stop at decide_at, and a tiny closed loop with the simulated trainer on real Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from proxyscale.analysis.compare_planner import (
    DecideSettings,
    best_probability,
    decision_state,
    expected_best_probability,
    propose_to_decide,
)
from proxyscale.analysis.planner import Candidate, Observation
from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.active import planner_settings
from proxyscale.orchestrator.config import compose_config, to_plain
from proxyscale.orchestrator.sweep import expand, sweep_from_config
from tests.test_launch import ledger_rows, sweep_env  # noqa: F401 - a fixture

AXES = {"model.width": [32, 64]}


def plain_with(block: dict, *, trainer: bool = True, planner: dict | None = None) -> dict:
    plain = to_plain(compose_config(["trainer=simulated"] if trainer else []))
    plain["sweep"] = {"name": "t", "axes": AXES, "budget": {"tokens": [204800, 409600]}} | block
    if planner is not None:
        plain["planner"] = {"kind": "active"} | planner
    return plain


BAD = [
    ({"recipes": {"a": {}}}, {}, "give two or more recipes to compare, got 1 (a)"),
    ({"recipes": ["a", "b"]}, {}, "sweep.recipes: must be a mapping"),
    ({"recipes": {"a": {}, "b": {"model.widht": 48}}}, {}, "sweep.recipes.b.model.widht: unknown key; did you mean"),
    ({"recipes": {"a": {}, "b": {"model.width": 48}}}, {}, "sweep.recipes.b.model.width: the sweep also varies"),
    ({"recipes": {"a": {}, "b": {"train.tokens": 9000}}}, {}, "sweep.recipes.b.train.tokens: the sweep also varies"),
    ({"recipes": {"a": {"trainer.E": 2.0}, "b": {"trainer.E": 2.0}}}, {}, "has the same overrides as 'a'"),
    ({"recipes": {"a": {}, "b": {"trainer.EE": 2.0}}}, {}, "sweep.recipes.b.trainer.EE: unknown key"),
    ({"recipes": {"a b": {}, "c": {"trainer.E": 2.0}}}, {}, "is not a recipe name"),
    ({"recipes": {"a": {}, "b": 3}}, {}, "sweep.recipes.b: must be a mapping"),
    ({}, {"objective": "compare"}, "planner.objective: compare decides between recipes; the sweep has no sweep.recipes"),
    ({"recipes": {"a": {}, "b": {"data.val_every": 10}}}, {"objective": "compare"},
     "planner.metric: loss (nats per token) cannot compare recipes that set data.val_every"),
    ({"recipes": {"a": {}, "b": {"trainer.E": 2.0}}, "cooldowns": {"fraction": 0.2}}, {},
     "sweep.recipes: cannot be combined with sweep.cooldowns"),
]


@pytest.mark.parametrize("block, planner, message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_recipes_are_refused_naming_the_key(block, planner, message):
    with pytest.raises(SpecError) as error:
        sweep_from_config(plain_with(block, planner=planner))
    assert message in str(error.value)


def test_trainer_keys_need_the_simulated_trainer():
    with pytest.raises(SpecError, match="sweep.recipes.b.trainer.E: sets the simulated trainer's truth"):
        sweep_from_config(plain_with({"recipes": {"a": {}, "b": {"trainer.E": 2.0}}}, trainer=False))


@pytest.mark.parametrize("raw, message", [({"objective": "decide"}, "planner.objective: 'decide' is not allowed"),
                                          ({"decide_at": 1.0}, "planner.decide_at: must lie in (0.5, 1)"),
                                          ({"metric": "bits"}, "planner.metric: 'bits' is not allowed")])
def test_bad_planner_settings_are_refused(raw, message):
    with pytest.raises(SpecError) as error:
        planner_settings({"kind": "active"} | raw)
    assert message in str(error.value)


def test_recipes_expand_once_each_and_record_their_name():
    sweep = sweep_from_config(plain_with({"recipes": {"low": {"trainer.E": 1.5}, "high": {"trainer": {"E": 2.5}}}}))
    runs = expand(sweep)
    assert sweep.recipe_names == ("low", "high")
    assert [r.recipe for r in runs] == ["low"] * 4 + ["high"] * 4
    assert {r.simulated.E for r in runs if r.recipe == "low"} == {1.5}
    assert {r.simulated.E for r in runs if r.recipe == "high"} == {2.5}
    assert len({r.run_id() for r in runs}) == 8
    assert all(r.to_dict()["recipe"] == r.recipe for r in runs)
    # A run outside a recipe sweep keeps its id (the recipe is left out of it when None).
    plain = expand(sweep_from_config(plain_with({})))
    assert "recipe" not in plain[0].to_dict()


def test_a_recipe_corpus_is_prepared_and_resolved_into_its_overrides(tmp_path):
    corpus = tmp_path / "texts"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 40)
    plain = to_plain(compose_config([]))
    plain["sweep"] = {"name": "t", "axes": AXES, "budget": {"tokens": [204800]},
                      "recipes": {"bytes": {}, "text": {"data.kind": "prepared", "data.path": str(tmp_path / "prep"),
                                                        "data.build": {"inputs": [str(corpus)], "tokenizer": "byte",
                                                                       "val_fraction": 0.4}}}}
    from proxyscale.orchestrator.config import resolve_recipes

    resolved = resolve_recipes(plain)["sweep"]["recipes"]["text"]
    assert "data.build" not in resolved and resolved["data.kind"] == "prepared"
    assert resolved["data.path"] == str(tmp_path / "prep") and len(resolved["data.manifest_hash"]) > 8
    assert (tmp_path / "prep" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------- the planner

WIDTHS = (16, 24, 32, 48, 64, 96)
TOKENS = (2.0e5, 4.0e5, 8.0e5, 1.6e6, 3.2e6)


def n_of(width: int) -> float:
    return 24.0 * width * width + 512.0 * width


def truth_loss(n, d, e, a, b, alpha=0.6, beta=0.55):
    return e + a / n ** alpha + b / d ** beta


def candidates(name: str) -> list[Candidate]:
    return [Candidate(f"{name}-{w}-{d:g}", w, n_of(w), d, 6 * n_of(w) * d, 1e-2) for w in WIDTHS for d in TOKENS]


def observe(name: str, cells, law, noise: float, rng) -> list[Observation]:
    out = []
    for w, d in cells:
        n = n_of(w)
        loss = truth_loss(n, d, *law) * (1 + noise * rng.standard_normal())
        out.append(Observation(f"{name}-{w}-{d:g}", w, n, d, 6 * n * d, 1e-2, "finished", float(loss)))
    return out


def test_best_probability_and_its_expectation():
    mean, cov = np.array([0.0, 0.1]), np.array([[0.01, 0.0], [0.0, 0.01]])
    p = best_probability(mean, cov)
    from scipy.stats import norm

    assert p == pytest.approx(norm.cdf(0.1 / np.sqrt(0.02)))
    # Three recipes by draws, two of them far behind: the same as the pair
    mean3, cov3 = np.array([0.0, 0.1, 5.0]), np.diag([0.01, 0.01, 0.01])
    assert best_probability(mean3, cov3) == pytest.approx(p, abs=0.02)
    # A measurement that removes half the variance of recipe 0 raises the expected certainty (never lowers it)
    shift = np.array([np.sqrt(0.005), 0.0])
    after = cov - np.outer(shift, shift)
    assert expected_best_probability(mean, after, shift) > p + 0.01
    assert expected_best_probability(mean, cov, np.zeros(2)) == pytest.approx(p)


def test_the_planner_spends_on_the_recipe_whose_uncertainty_matters():
    rng = np.random.default_rng(1)
    grid = [(w, d) for w in WIDTHS for d in TOKENS]
    sparse = [(16, 2e5), (16, 8e5), (24, 4e5), (32, 2e5), (32, 8e5), (48, 4e5), (16, 3.2e6)]
    observations = {"pinned": observe("pinned", grid[:-3], (1.2, 250.0, 600.0), 0.002, rng),
                    "loose": observe("loose", sparse, (1.2, 240.0, 620.0), 0.03, rng)}
    settings = DecideSettings(target_flops=3e13, budget_flops=5e12, batch=3, ensemble=64, calibrate=False)
    state = decision_state(observations, settings)
    assert state.comparison is not None and not state.decided(0.95), state.line()
    proposals = propose_to_decide({"pinned": candidates("pinned"), "loose": candidates("loose")}, observations,
                                  settings, state=state)
    assert proposals and proposals[0].reason.startswith("loose:"), [p.reason for p in proposals]
    assert sum(p.reason.startswith("loose:") for p in proposals) >= 2
    assert all(p.score >= 0 for p in proposals) and sum(p.candidate.flops for p in proposals) <= 5e12


def test_it_designs_each_recipe_first_and_stops_at_decide_at():
    rng = np.random.default_rng(2)
    settings = DecideSettings(target_flops=3e13, budget_flops=5e12, batch=20, ensemble=64, calibrate=False)
    allowed = {"a": candidates("a"), "b": candidates("b")}
    design = propose_to_decide(allowed, {"a": [], "b": []}, settings)
    by = {name: [p for p in design if p.reason.startswith(f"{name}:")] for name in allowed}
    assert all(len(v) >= 7 for v in by.values()), [p.reason for p in design]
    # Two laws far apart on a full design: decided, nothing more is proposed
    cells = [(w, d) for w in WIDTHS[:4] for d in TOKENS[:3]]
    observations = {"a": observe("a", cells, (1.2, 250.0, 600.0), 0.003, rng),
                    "b": observe("b", cells, (1.5, 250.0, 600.0), 0.003, rng)}
    state = decision_state(observations, settings)
    assert state.best == "a" and state.decided(0.95), state.line()
    assert propose_to_decide(allowed, observations, settings, state=state) == []
    # The same state with a stricter threshold than its P(best): it keeps going
    strict = DecideSettings(**{**settings.__dict__, "decide_at": 0.999999})
    if state.p_best < 0.999999:
        assert propose_to_decide(allowed, observations, strict, state=state)


# ------------------------------------------------------------------------------------------ the closed loop

LADDER = """# @package _global_
defaults:
  - override /planner: active
  - override /trainer: simulated
model: {depth: 2, n_heads: 2, seq_len: 32, parametrization: mup, base_width: 32}
train: {lr: 1.0e-2, batch_tokens: 512, warmup_steps: 2, eval_interval_tokens: 100000000}
trainer: {noise: 0.003, A: 50.0, B: 100.0}
planner: {objective: compare, decide_at: 0.95, ensemble: 32}
target_flops: 3.0e13
budget_flops: 6.0e12
sweep:
  name: pair
  recipes:
    plain: {}
    better: {trainer.E: 1.4}
  axes:
    model.width: [16, 24, 32, 48, 64]
  budget:
    tokens: [204800, 409600, 819200, 1638400]
"""


def _launch(sweeps, env, tmp_path, name: str, text: str):
    """Write sweep NAME, launch it into tmp_path/NAME on 2 CPUs without W&B; (its directory, the finished launch)."""
    (sweeps / f"{name}.yaml").write_text(text)
    sweep_dir = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", "launch", f"sweep={name}",
                           f"sweep_dir={sweep_dir}", "cluster.num_cpus=2", "tracking=none"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir, done


def test_closed_loop_decides_and_compare_agrees(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    sweep_dir, done = _launch(sweeps, env, tmp_path, "pair", LADDER)
    assert "initial design" in done.stdout and "decided: better is best" in done.stdout, done.stdout[-3000:]
    rows = ledger_rows(sweep_dir)
    recipes = [json.loads(r["spec_json"])["recipe"] for r in rows]
    assert recipes.count("plain") >= 7 and recipes.count("better") >= 7
    assert len(rows) < 40 and sum(r["flops"] for r in rows) <= 6e12
    out = subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", "compare", str(sweep_dir), "--by",
                          "recipe", "--target-flops", "3e13", "--bootstrap", "200", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["best"] == "better" and result["p_best"] >= 0.9
    # recommend and report name the winner with its probability, and recommend for its runs alone
    out = subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", "recommend", str(sweep_dir),
                          "--bootstrap", "100", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    advice = json.loads(out.stdout)
    assert advice["recipes"]["recipe"] == "better" and advice["recipes"]["p_best"] >= 0.9
    assert advice["recipes"]["line"].startswith("recipe: better wins at C = 3e+13 FLOPs with P(best)")
    out = subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", "report", str(sweep_dir),
                          "--bootstrap", "100", "--no-wandb"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = (sweep_dir / "report" / "report.md").read_text()
    assert "## Which recipe wins at the target" in text and "**recipe: better wins at" in text
    assert (sweep_dir / "report" / "compare.png").exists()


# ------------------------------------------------------------------------------ bits per byte that no run records

NO_BYTES = [
    # The simulated trainer records no bytes per token: refused before any run, not after the initial design.
    (True, {"b": {"data.val_every": 10}}, "planner.metric: bpb needs bytes per token, which runs with trainer.kind: "
                                          "simulated do not record"),
    (True, {"b": {"trainer.E": 2.0}}, "which runs with trainer.kind: simulated do not record"),
    # A memmap token file carries no text: the recipe's key is named.
    (False, {"b": {"data.kind": "memmap", "data.train_path": "t.bin", "data.val_path": "v.bin",
                   "data.vocab_size": 256}}, "which runs with sweep.recipes.b.data.kind: memmap do not record"),
]


@pytest.mark.parametrize("simulated, recipes, message", NO_BYTES, ids=["simulated-data", "simulated", "memmap"])
def test_bpb_on_runs_that_record_no_bytes_is_refused_at_config_time(simulated, recipes, message):
    plain = plain_with({"recipes": {"a": {}} | recipes}, trainer=simulated,
                       planner={"objective": "compare", "metric": "bpb"})
    with pytest.raises(SpecError) as error:
        sweep_from_config(plain)
    assert message in str(error.value) and "use data.kind stdlib or prepared" in str(error.value)


def test_bpb_on_recorded_bytes_is_accepted_and_loss_names_the_way_out():
    # stdlib (one byte per token) on the real trainer records bits per byte: bpb compares its recipes.
    plain = plain_with({"recipes": {"a": {}, "b": {"data.val_every": 10}}}, trainer=False,
                       planner={"objective": "compare", "metric": "bpb"})
    assert sweep_from_config(plain).recipe_names == ("a", "b")
    # Loss on the simulated trainer with data recipes: the refusal does not send the user to bpb, which would fail.
    plain = plain_with({"recipes": {"a": {}, "b": {"data.val_every": 10}}}, planner={"objective": "compare"})
    with pytest.raises(SpecError) as error:
        sweep_from_config(plain)
    assert "set planner.metric: bpb" not in str(error.value)
    assert "bpb would need bytes per token, which runs with trainer.kind: simulated do not record" in str(error.value)


NO_BYTES_SWEEP = """# @package _global_
defaults:
  - override /trainer: simulated
model: {depth: 2, n_heads: 2, seq_len: 32, parametrization: mup, base_width: 32}
train: {lr: 1.0e-2, batch_tokens: 512, warmup_steps: 2, eval_interval_tokens: 100000000}
trainer: {noise: 0.003}
sweep:
  name: nobytes
  recipes:
    plain: {}
    other: {data.val_every: 10}
  axes:
    model.width: [16, 32, 64]
  budget:
    tokens: [204800]
"""


def test_report_says_why_a_recipe_sweep_without_bytes_has_no_comparison(tmp_path, sweep_env):  # noqa: F811
    """Recipes that set data keys are compared in bpb, which the simulated trainer records none of: the report's
    recipe section says so in a line (and fits the recipe with the most runs) instead of crashing."""
    sweeps, env = sweep_env
    sweep_dir, done = _launch(sweeps, env, tmp_path, "nobytes", NO_BYTES_SWEEP)
    out = subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", "report", str(sweep_dir),
                          "--bootstrap", "50", "--no-wandb"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = (sweep_dir / "report" / "report.md").read_text()
    assert "**recipe: no comparison: metric bpb: run " in text and "recorded no bits per byte" in text
