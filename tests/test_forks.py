"""Forks (train.init_from): a run started from another run's checkpoint, as data for the laws.

Real training throughout: a fork continues its parent exactly, is charged only its own tokens, waits for
its parent through Ray, survives a driver kill, and is skipped (with the reason) when its parent diverged.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import pytest

from proxyscale.models.flops import flops_per_token, training_flops
from proxyscale.models.spec import SpecError, TrainSpec
from proxyscale.models.train import train_run
from tests.conftest import tiny_spec
from tests.test_launch import _kill_group, _popen, launch, ledger_rows, sweep_env  # noqa: F401 - fixture

FORKS = """# @package _global_
model: {{depth: 1, n_heads: 2, seq_len: 32}}
train: {{batch_tokens: 1024, warmup_steps: 2, eval_interval_tokens: 4096, eval_batches: 2, log_interval: 4,
        checkpoint_interval: 4, lr: {lr}, min_lr_ratio: 0.0 {train_extra}}}
sweep:
  name: {name}
  axes: {{model.width: {widths}}}
  budget: {{tokens: {tokens}}}
  cooldowns: {{fraction: 0.25, shape: sqrt}}
"""


def write_forks(sweeps, name, widths="[16]", tokens="[16384, 32768]", lr="1.0e-2", train_extra=""):
    (sweeps / f"{name}.yaml").write_text(FORKS.format(name=name, widths=widths, tokens=tokens, lr=lr,
                                                      train_extra=train_extra))


def with_train(spec, **changes):
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **changes))


def test_a_fork_with_the_parents_schedule_reproduces_its_later_losses_exactly(tmp_path):
    parent = tiny_spec(schedule="constant", tokens=24_576)
    whole = train_run(parent, checkpoint_dir=tmp_path / "parent", keep_steps=(12,))
    fork = with_train(parent, init_from=f"{parent.run_id()}@12")
    forked = train_run(fork, checkpoint_dir=tmp_path / "fork", init_checkpoint=tmp_path / "parent" / "step_12.pt")
    later = [point for point in whole.eval_curve if point[0] > 12]
    assert len(later) == 3 and list(forked.eval_curve) == later  # bit for bit on CPU, same seed
    assert forked.tokens == whole.tokens  # D for the laws: every token the model has seen
    assert forked.flops == pytest.approx(whole.flops / 2)  # charged only its own 12 of 24 steps


def test_a_cooldown_fork_is_charged_only_its_own_tokens_and_its_schedule_continues_the_parent():
    stable = tiny_spec(schedule="constant", tokens=16_384)
    cooldown = with_train(stable, schedule="wsd", decay_fraction=0.25, decay_shape="sqrt", tokens=32_768,
                          init_from=f"{stable.run_id()}@24")
    assert training_flops(cooldown) == flops_per_token(stable.model) * 8 * 1024
    from proxyscale.models.schedules import lr_multiplier

    assert [lr_multiplier(i, cooldown.train) for i in range(24)] == [lr_multiplier(i, stable.train) for i in range(24)]
    assert lr_multiplier(31, cooldown.train) == pytest.approx(0.1)  # 1 - sqrt decays to min_lr_ratio


def test_bad_forks_are_refused_before_anything_starts():
    with pytest.raises(SpecError, match="train.init_from: 'abc' is not RUN_ID@STEP"):
        TrainSpec(tokens=16_384, batch_tokens=1024, warmup_steps=2, init_from="abc")
    with pytest.raises(SpecError, match="cooldown of 8 steps is longer than the fork's 4 steps"):
        TrainSpec(tokens=16_384, batch_tokens=1024, warmup_steps=2, schedule="wsd", decay_fraction=0.5,
                  init_from="0123456789abcdef@12")
    with pytest.raises(SpecError, match="starts at step 20 but its budget"):
        TrainSpec(tokens=16_384, batch_tokens=1024, warmup_steps=2, init_from="0123456789abcdef@20")


def test_cooldown_sweep_trains_one_stable_run_per_width_and_forks_it(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    write_forks(sweeps, "forks", widths="[16, 24]")
    sweep_dir = tmp_path / "out"
    dry = launch(env, "sweep=forks", f"sweep_dir={sweep_dir}", "tracking=none", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "forks: 4 cooldowns and 2 stable-run extensions" in dry.stdout and "as fresh runs would cost" in dry.stdout
    out = launch(env, "sweep=forks", f"sweep_dir={sweep_dir}", "tracking=none")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = ledger_rows(sweep_dir)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    # Per width: a stable trajectory of two constant-LR segments (the second continues the first) and a
    # cooldown forked from each segment's end.
    stables = {r["run_id"]: r for r in rows if r["schedule"] == "constant"}
    cooldowns = [r for r in rows if r["schedule"] == "wsd"]
    assert len(stables) == 4 and len(cooldowns) == 4
    assert sum(r["parent_id"] is None for r in stables.values()) == 2
    for fork in [*cooldowns, *(r for r in stables.values() if r["parent_id"])]:
        parent = stables[fork["parent_id"]]
        assert fork["width"] == parent["width"] and fork["parent_step"] * 1024 == parent["tokens"]
        own_tokens = fork["tokens"] - fork["parent_step"] * 1024
        per_token = parent["flops"] / (parent["tokens"] - (parent["parent_step"] or 0) * 1024)
        assert fork["flops"] == pytest.approx(own_tokens * per_token)
    # A cooldown ends lower than the stable segment it forked from.
    for fork in cooldowns:
        assert fork["final_eval_loss"] < stables[fork["parent_id"]]["final_eval_loss"]
    # Checkpoints are kept only where a fork may still need them: the end of each stable chain (extendable).
    kept = sorted(p.relative_to(sweep_dir / "checkpoints").as_posix() for p in (sweep_dir / "checkpoints").rglob("*.pt"))
    ends = [run_id for run_id in stables if not any(r["parent_id"] == run_id for r in stables.values())]
    assert len(ends) == 2 and kept == sorted(f"{run_id}/checkpoint.pt" for run_id in ends)


def test_a_fork_of_a_diverged_parent_is_skipped_with_the_reason(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    write_forks(sweeps, "doomed", lr="50.0", train_extra=", grad_clip: 0.0, divergence_patience: 1")
    out = launch(env, "sweep=doomed", f"sweep_dir={tmp_path / 'out'}", "tracking=none")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r["run_id"]: r for r in ledger_rows(tmp_path / "out")}
    [parent] = [r for r in rows.values() if r["parent_id"] is None]
    assert parent["status"] == "diverged"
    forks = [r for r in rows.values() if r["parent_id"] is not None]
    assert len(forks) == 3  # the next stable segment and two cooldowns: all skipped, with the reason
    for fork in forks:
        assert fork["status"] == "skipped", fork
        assert fork["reason"].startswith(f"parent {fork['parent_id']} "), fork
    assert any(f["reason"].startswith(f"parent {parent['run_id']} diverged") for f in forks)


def test_init_from_an_unknown_run_is_refused(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    write_forks(sweeps, "orphan")
    for dry in (["--dry-run"], []):
        out = launch(env, "sweep=orphan", f"sweep_dir={tmp_path / 'out'}", "tracking=none", "sweep.cooldowns=null",
                     "train.init_from=feedfacefeedface@4", *dry)
        assert out.returncode == 2, out.stderr
        assert "run feedfacefeedface does not exist" in out.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_fork_survives_a_driver_kill_and_resumes(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    # A long cooldown (240 steps, a checkpoint every 4), so the driver dies while the fork trains: with a short
    # one a fast machine finished the fork (and released its checkpoint) between two polls.
    write_forks(sweeps, "resume", tokens="[8192, 983040]")
    sweep_dir = tmp_path / "out"
    driver = _popen(env, "sweep=resume", f"sweep_dir={sweep_dir}", "tracking=none")
    try:
        deadline = time.time() + 240
        while True:
            assert time.time() < deadline and driver.poll() is None, "the fork never got a checkpoint"
            forks = [p for p in (sweep_dir / "checkpoints").glob("*/checkpoint.pt")] if sweep_dir.exists() else []
            try:  # the driver may be creating the ledger right now
                rows = ledger_rows(sweep_dir) if (sweep_dir / "ledger.sqlite").exists() else []
            except sqlite3.OperationalError:
                rows = []
            long_fork = [r for r in rows if r["parent_id"] and r["tokens"] == 983040]
            if long_fork and any(p.parent.name == long_fork[0]["run_id"] for p in forks):
                break
            time.sleep(0.05)
    finally:
        _kill_group(driver)
    [fork] = long_fork
    assert ledger_rows(sweep_dir) and fork["status"] in ("running", "pending")
    again = launch(env, "sweep=resume", f"sweep_dir={sweep_dir}", "tracking=none")
    assert again.returncode == 0, again.stdout + again.stderr
    rows = {r["run_id"]: r for r in ledger_rows(sweep_dir)}
    assert {r["status"] for r in rows.values()} == {"finished"}
    # Relaunched from its own checkpoint (training is deterministic on CPU, so the result is the same either
    # way; the first attempt is counted only if the driver heard the fork start before it died).
    assert rows[fork["run_id"]]["attempts"] >= 1 and rows[fork["run_id"]]["final_eval_loss"] is not None
    assert rows[fork["run_id"]]["flops"] == pytest.approx(fork["flops"])


def test_the_shipped_wsd_forks_sweep_is_the_demo_ladder_as_cooldowns():
    from proxyscale.orchestrator.config import compose_config, to_plain
    from proxyscale.orchestrator.sweep import expand, sweep_from_config

    def runs(name):
        return expand(sweep_from_config(to_plain(compose_config([f"sweep={name}"]))))

    forks, grid = runs("wsd_forks"), runs("demo")
    cooldowns = [r for r in forks if r.train.schedule == "wsd"]
    # Filters see each budget's tokens: the same triangle of (width, tokens) cells as the cosine ladder.
    assert sorted((r.model.width, r.train.tokens) for r in cooldowns) == sorted((r.model.width, r.train.tokens)
                                                                                 for r in grid)
    assert all(r.train.init_from for r in cooldowns)
    assert sum(training_flops(r) for r in forks) < 0.75 * sum(training_flops(r) for r in grid)
