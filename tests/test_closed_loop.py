"""`launch planner=active` with the simulated trainer on real Ray, then `plan`, `recommend` and `report`
on the same sweep directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_launch import ledger_rows, sweep_env  # noqa: F401 - a fixture

LADDER = """# @package _global_
model: {depth: 4, n_heads: 4, seq_len: 256, parametrization: mup, base_width: 64}
train: {lr: 1.0e-2, batch_tokens: 65536, warmup_steps: 2, eval_interval_tokens: 100000000}
sweep:
  name: ladder
  axes:
    model.width: [64, 96, 128, 192, 256, 384]
    train.lr: [3.0e-3, 1.0e-2, 3.0e-2]
  budget:
    flops: [1.0e14, 2.2e14, 4.8e14, 1.0e15, 2.2e15, 4.8e15]
"""
TARGET = 1e18


def cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def active_sweep(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    (sweeps / "ladder.yaml").write_text(LADDER)
    sweep_dir = tmp_path / "ladder"
    # Runs take time in proportion to FLOPs (20 s per 1e15, 2 s for the cheapest) so the loop's scheduling is visible.
    done = cli(env, "launch", "sweep=ladder", "trainer=simulated", "trainer.noise=0.003", "trainer.seconds_per_pflop=20",
               "planner=active", f"target_flops={TARGET}", "budget_flops=3e15", f"sweep_dir={sweep_dir}",
               "cluster.num_cpus=2", "tracking=none")
    assert done.returncode == 0, done.stderr[-3000:]
    return env, sweep_dir, done.stdout


def test_closed_loop_spends_within_budget_and_keeps_slots_busy(active_sweep):
    env, sweep_dir, stdout = active_sweep
    rows = ledger_rows(sweep_dir)
    assert "initial design" in stdout and "cuts the variance" in stdout
    assert 6 < len(rows) < 108  # more than the initial design, far fewer than the grid of 6 x 6 x 3
    assert all(r["status"] == "finished" for r in rows)
    assert sum(r["flops"] for r in rows) <= 3e15
    assert "planner:" in stdout
    # No slot waits for a round: while the loop still submits, both slots are busy almost all the time.
    intervals = sorted((r["started_at"], r["updated_at"]) for r in rows)
    start, last_start = intervals[0][0], intervals[-1][0]
    grid = [start + (last_start - start) * i / 400 for i in range(400)]
    busy = [sum(a <= t < b for a, b in intervals) for t in grid]
    assert sum(b >= 2 for b in busy) / len(busy) > 0.8, busy


def test_plan_recommend_and_report_on_the_same_directory(active_sweep, tmp_path):
    env, sweep_dir, _ = active_sweep
    plan_file = tmp_path / "plan" / "next.yaml"  # plan creates the directory (the README's `-o next/more.yaml`)
    done = cli(env, "plan", str(sweep_dir), "--target-flops", str(TARGET), "--budget-flops", "3e15", "--json",
               "-o", str(plan_file))
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    proposed = [p["run_id"] for p in plan["proposals"]]
    assert proposed and plan["total_flops"] <= 3e15
    assert not set(proposed) & {r["run_id"] for r in ledger_rows(sweep_dir)}
    assert all(p["reason"] for p in plan["proposals"])
    # The sweep file runs exactly the proposed runs, into the same directory.
    env_plan = dict(env, PROXYSCALE_SWEEP_PATH=str(plan_file.parent))
    dry = cli(env_plan, "launch", "sweep=next", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert sorted(proposed) == sorted(line.split()[0] for line in dry.stdout.splitlines() if line.endswith("to run"))

    done = cli(env, "recommend", str(sweep_dir), "--target-flops", str(TARGET), "--json", "--bootstrap", "200")
    assert done.returncode == 0, done.stderr[-3000:]
    advice = json.loads(done.stdout)
    for key in ("n_params", "tokens", "width", "depth", "lr", "batch_size", "loss"):
        assert advice[key]["low"] <= advice[key]["value"] <= advice[key]["high"], key
    assert advice["schedule"]["value"] == "cosine"
    # The width is the ladder's family at N_opt: more parameters than any proxy, fewer than a wildly wrong guess.
    assert 384 < advice["width"]["value"] < 20000
    # The Python API is the same engine: the same recommendation, the same fit, the ledger as tables.
    import proxyscale
    from proxyscale.orchestrator.commands.common import strict_json

    assert json.loads(json.dumps(strict_json(proxyscale.recommend(sweep_dir, target_flops=TARGET, bootstrap=200)))) == advice
    done = cli(env, "fit", str(sweep_dir), "--json", "--bootstrap", "50")
    assert done.returncode == 0, done.stderr[-3000:]
    fitted = proxyscale.fit(sweep_dir, bootstrap=50, calibrate=False).to_dict()
    assert fitted["parameters"] == json.loads(done.stdout)["parameters"]
    sweep = proxyscale.open_sweep(sweep_dir)
    runs, steps = sweep.runs(), sweep.steps()
    assert sorted(runs["run_id"]) == sorted(r["run_id"] for r in ledger_rows(sweep_dir))
    assert set(steps["run_id"]) == set(runs["run_id"]) and steps["eval_loss"].notna().any()
    exported = cli(env, "export", str(sweep_dir))
    assert exported.stdout.splitlines()[0].split(",") == list(runs.columns)

    done = cli(env, "report", str(sweep_dir), "--target-flops", str(TARGET), "--bootstrap", "200", "--no-wandb")
    assert done.returncode == 0, done.stderr[-3000:]
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "## L(N, D)" in report and "Recommended configuration" in report and "SIMULATED" in report
    assert (sweep_dir / "report" / "frontier.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, message", [
    (["planner=active"], "budget_flops"),
    (["planner=active", "budget_flops=-1"], "budget_flops"),
    (["budget_flops=1e15"], "only planner=active"),
    (["planner=active", "budget_flops=1e15", "planner.initial_runs=3"], "planner.initial_runs"),
    (["planner=active", "budget_flops=1e15", "planner.lr_fraction=1.5"], "planner.lr_fraction"),
    (["trainer=simulated", "trainer.alpha=-1"], "trainer.alpha"),
    (["trainer.kind=fake"], "trainer.kind"),
    (["planner=active", "budget_flops=1e14"], "does not cover the initial design"),
])
def test_bad_planner_and_trainer_input_is_refused_before_anything_runs(tmp_path, sweep_env, overrides, message):  # noqa: F811
    sweeps, env = sweep_env
    (sweeps / "ladder.yaml").write_text(LADDER)
    done = cli(env, "launch", "sweep=ladder", "trainer=simulated", f"sweep_dir={tmp_path / 'x'}", "cluster.num_cpus=2",
               "tracking=none", *overrides)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr
    assert not (tmp_path / "x" / "ledger.sqlite").exists() or not ledger_rows(tmp_path / "x")
