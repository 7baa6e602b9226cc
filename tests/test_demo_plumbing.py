"""The demo's plumbing, on the SIMULATED trainer (fast): launch -> recommend -> check run -> check.json -> report,
the same commands scripts/demo.sh runs; and what recommend says when the runs do not identify L(N, D)."""

from __future__ import annotations

import json

from tests.test_closed_loop import cli
from tests.test_launch import sweep_env  # noqa: F401 - a fixture

LADDER = """# @package _global_
model: {{depth: 4, n_heads: 4, seq_len: 256, parametrization: mup, base_width: 64}}
train: {{lr: 1.0e-2, batch_tokens: 65536, warmup_steps: 2, eval_interval_tokens: 100000000}}
target_flops: 1.0e18
sweep:
  name: ladder
  axes:
    model.width: [64, 128, 256, 384]
  budget:
    flops: [2.0e14, 6.0e14, 2.0e15]
"""


def test_recommend_check_and_report_on_a_simulated_ladder(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    (sweeps / "ladder.yaml").write_text(LADDER.format())
    sweep_dir = tmp_path / "ladder"
    done = cli(env, "launch", "sweep=ladder", "trainer=simulated", "trainer.noise=0.003", f"sweep_dir={sweep_dir}",
               "cluster.num_cpus=2", "tracking=none")
    assert done.returncode == 0, done.stderr[-3000:]
    # The target defaults to the sweep's target_flops; every knob has a basis and a why.
    done = cli(env, "recommend", str(sweep_dir), "--json", "--bootstrap", "200")
    assert done.returncode == 0, done.stderr[-3000:]
    advice = json.loads(done.stdout)
    assert advice["identifiable"] is True and advice["target_flops"] == 1e18
    for key in ("n_params", "tokens", "width", "depth", "lr", "batch_size", "schedule", "loss"):
        assert advice[key]["basis"] in ("fitted_law", "transfer", "best_run", "not_varied") and advice[key]["why"], key
    assert advice["n_params"]["basis"] == "fitted_law" and advice["depth"]["basis"] == "not_varied"
    assert advice["n_params"]["high"] / advice["n_params"]["low"] < 4
    assert 0.05 < advice["law"]["alpha"]["value"] < 2 and 0.05 < advice["law"]["beta"]["value"] < 2
    # The backtest: the largest width held out (3 of 12 runs), and its calibration of the intervals above.
    assert advice["calibration"]["n_points"] == 3 and advice["backtest"].startswith("backtest (largest sizes")
    # --knobs-from is checked before any fit: not the sweep itself, and a sweep directory.
    for source, message in ((sweep_dir, "is the sweep being recommended"), (tmp_path, "is not a sweep directory")):
        done = cli(env, "recommend", str(sweep_dir), "--knobs-from", str(source))
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]

    done = cli(env, "check", str(sweep_dir), "--factor", "6", "--bootstrap", "200")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    predicted_at = done.stdout.index("predicted loss")
    assert predicted_at < done.stdout.index("measured loss")  # the prediction is printed before the result
    check = json.loads((sweep_dir / "check.json").read_text())
    for key in ("flops", "n_params", "tokens", "predicted", "interval", "measured", "inside"):
        assert check[key] is not None, key
    largest = max(r["flops"] for r in __import__("tests.test_launch", fromlist=["x"]).ledger_rows(sweep_dir))
    assert 4 <= check["flops"] / largest <= 10
    low, high = check["interval"]
    assert low < check["predicted"] < high and check["inside"] == (low <= check["measured"] <= high)
    # With 0.3% noise on a well-specified truth the check lands inside its interval.
    assert check["inside"], check
    # The check run does not join the ladder's ledger.
    assert check["run_id"] not in {r["run_id"] for r in __import__("tests.test_launch", fromlist=["x"]).ledger_rows(sweep_dir)}

    done = cli(env, "report", str(sweep_dir), "--bootstrap", "200", "--no-wandb")
    assert done.returncode == 0, done.stderr[-3000:]
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "## Check run beyond the ladder" in report and "inside" in report and "| basis |" in report


def test_recommend_on_a_ladder_where_n_does_not_matter_says_which_axis_to_widen(tmp_path, sweep_env):  # noqa: F811
    sweeps, env = sweep_env
    (sweeps / "ladder.yaml").write_text(LADDER.format())
    sweep_dir = tmp_path / "flat"
    done = cli(env, "launch", "sweep=ladder", "trainer=simulated", "trainer.alpha=0.001", "trainer.A=1.0",
               f"sweep_dir={sweep_dir}", "cluster.num_cpus=2", "tracking=none")
    assert done.returncode == 0, done.stderr[-3000:]
    done = cli(env, "recommend", str(sweep_dir), "--json", "--bootstrap", "100")
    assert done.returncode == 4, done.stdout + done.stderr
    payload = json.loads(done.stdout)
    assert payload["identifiable"] is False and "barely change with N" in payload["reason"]
    assert "add wider models" in payload["reason"]
    done = cli(env, "check", str(sweep_dir))
    assert done.returncode == 4 and not (sweep_dir / "check.json").exists()
    done = cli(env, "report", str(sweep_dir), "--bootstrap", "100", "--no-wandb")
    assert done.returncode == 0 and "barely change with N" in (sweep_dir / "report" / "report.md").read_text()
