"""The live view of `proxyscale launch` (a rich Live table on a terminal, plain lines otherwise) and the
sweep's W&B analysis run it updates after every refit (read back from the offline run file)."""

from __future__ import annotations

import io
import json
import sys
import warnings

import numpy as np
import pytest
from rich.console import Console

from proxyscale.analysis.fit import fit_chinchilla
from proxyscale.analysis.planner import Candidate, Proposal
from proxyscale.orchestrator.live import Estimate, LaunchMonitor, PlainView, RichView, SweepState, make_view, render_table
from tests.test_closed_loop import cli
from tests.test_launch import sweep_env  # noqa: F401 - a fixture
from tests.wandb_offline import read_records, run_contents

ROWS = [{"run_id": f"run{i}", "flops": 1e14 * (i + 1)} for i in range(8)]
REASON = "cuts the variance of log N_opt(C*) by 85% and of log L(C*) by 61% for 2.20e+14 FLOPs"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Planner:
    """What the monitor reads of an ActiveLoop: its proposals with reasons and why it stopped."""

    def __init__(self) -> None:
        self.proposals = [Proposal(Candidate(f"run{i}", 64 * (i + 1), 2e5 * (i + 1), 5e7, 1e14 * (i + 1), 1e-2), 0.0,
                                   "initial design: spread over N and D, cheapest first") for i in range(3)]
        self.stopped = None

    def propose_one(self) -> None:
        self.proposals.append(Proposal(Candidate("run3", 192, 1.87e6, 1.66e7, 2.2e14, 1e-2), 0.3, REASON))


def estimate() -> Estimate:
    n, d = np.repeat([1e6, 3e6, 1e7], 3), np.tile([1e8, 3e8, 1e9], 3)
    loss = (1.7 + 400 / n**0.34 + 400 / d**0.28) * (1 + 0.003 * np.random.default_rng(0).standard_normal(9))
    fit = fit_chinchilla(n, d, loss, bootstrap=20, seed=0)
    at = fit.compute_optimal(1e18)
    return Estimate(runs=9, bootstrap=20, target_flops=1e18, fit=fit, n_opt=at["n_opt"], d_opt=at["d_opt"],
                    loss=at["loss"])


def result(loss: float, reason: str | None = None) -> dict:
    return {"status": "finished", "result": {"final_eval_loss": loss, "wall_seconds": 12.0, "reason": reason}}


def play(monitor: LaunchMonitor, clock: Clock, planner: Planner) -> None:
    """A sweep in events: two runs start, a fork waits behind one, runs end in every way a run can."""
    monitor("submitted", "run0", None)
    monitor("submitted", "run1", None)
    monitor("waiting", "run2", None)
    monitor("started", "run0", {"node": "8dc8930d26de0000", "pid": 101})
    clock.now = 30.0
    monitor("finished", "run0", result(3.21))
    planner.propose_one()
    monitor("diverged", "run1", {"status": "diverged", "result": {"final_eval_loss": 9.9, "wall_seconds": 3.0,
                                                                   "reason": "loss is NaN"}})
    monitor("skipped", "run2", {"status": "skipped", "reason": "parent run1 diverged"})
    monitor("submitted", "run3", None)
    monitor("failed", "run3", {"status": "failed", "error": "RuntimeError: boom\nTraceback ..."})
    monitor("submitted", "run4", None)


def test_rich_table_shows_runs_flops_eta_estimate_and_the_last_proposals_with_reasons():
    clock, planner, fitted = Clock(), Planner(), estimate()
    state = SweepState(ROWS, {"run7"}, todo_flops=2.2e15, budget_flops=3e15, clock=clock)
    refits = iter([None, fitted])
    monitor = LaunchMonitor(state, PlainView(state, say=lambda line: None), refit=lambda: next(refits), planner=planner)
    with monitor:
        play(monitor, clock, planner)
        monitor("finished", "run4", result(3.05))
    planner.stopped = "budget spent: 2.2e+15 of 3.0e+15 FLOPs committed"
    monitor._sync_planner()

    console = Console(file=io.StringIO(), force_terminal=True, width=150,
                                                         record=True)
    console.print(render_table(state, "proxyscale launch: ladder"))
    text = console.export_text()
    assert "proxyscale launch: ladder" in text
    assert "2 done · 0 running · 2 waiting · 1 failed · 1 diverged · 1 skipped (1 done before)" in text
    # FLOPs: the runs that ran (1+2+4+5 x 1e14: not the skipped one) and the one done before (8e14), of the budget.
    assert "2.000e+15 of the 3.000e+15 budget (67%)" in text and "0m30s elapsed" in text and "best loss 3.0500" in text
    assert f"N_opt {fitted.n_opt.value:.3g} [{fitted.n_opt.low:.3g}, {fitted.n_opt.high:.3g}]" in text
    assert f"L(C*) {fitted.loss.value:.4f} [{fitted.loss.low:.4f}, {fitted.loss.high:.4f}]" in text
    assert "on 9 runs (20 bootstraps, 95% intervals)" in text
    assert "(last 4 of 4)" in text and "initial design: spread over N and D" in text
    assert "cuts the variance of log N_opt(C*) by 85%" in text
    assert "planner" in text and "budget spent" in text


def test_rich_table_before_the_fit_says_what_it_waits_for():
    state = SweepState(ROWS, set())
    console = Console(file=io.StringIO(), force_terminal=True, width=120,
                                                         record=True)
    console.print(render_table(state))
    text = console.export_text()
    assert "0 done · 0 running · 8 waiting" in text and "planned" in text and "ETA -" in text
    assert "waiting for 6+ finished runs" in text


def test_plain_lines_are_what_launch_always_printed():
    clock, planner, fitted = Clock(), Planner(), estimate()
    state = SweepState(ROWS, set(), clock=clock)
    lines: list[str] = []
    monitor = LaunchMonitor(state, PlainView(state, say=lines.append), refit=lambda: fitted, planner=planner)
    with monitor:
        play(monitor, clock, planner)
    assert lines[0] == "run0 started on node 8dc8930d26de pid 101"
    assert lines[1].startswith("run0 finished: eval loss 3.2100 in 12s  [1 done, 1 running, 0 failed, 0 diverged |")
    assert "ETA" in lines[1] and lines[1].endswith("best loss 3.2100]")
    assert lines[2] == fitted.line() and lines[2].startswith("  fit on 9 runs: L = ") and "(20 bootstraps)" in lines[2]
    assert lines[3].startswith("run1 diverged: eval loss 9.9000 in 3s (loss is NaN)  [1 done, 0 running, 0 failed, 1 diverged")
    assert lines[4].startswith("run2 skipped: parent run1 diverged  [")
    assert lines[5].startswith("run3 failed: RuntimeError: boom  [1 done, 0 running, 1 failed, 1 diverged")
    assert len(lines) == 6


def test_rich_view_draws_the_table_live_and_logs_ended_runs_above_it():
    clock, planner = Clock(), Planner()
    state = SweepState(ROWS, set(), clock=clock)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140)
    view = RichView(state, title="proxyscale launch: live", console=console, refresh_per_second=20)
    with LaunchMonitor(state, view, refit=lambda: None, planner=planner) as monitor:
        play(monitor, clock, planner)
    text = out.getvalue()
    assert "run0 finished: eval loss 3.2100 in 12s" in text and "run3 failed: RuntimeError: boom" in text
    assert "started on node" not in text  # starts show as the running count
    assert "proxyscale launch: live" in text and "1 running" in text and "\x1b[" in text  # redrawn in place


def test_the_view_is_plain_off_a_terminal_or_when_asked(monkeypatch):
    state = SweepState(ROWS, set())
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert isinstance(make_view(state, plain=False, title="t"), PlainView)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(make_view(state, plain=True, title="t"), PlainView)
    assert isinstance(make_view(state, plain=False, title="t"), RichView)


def test_a_wandb_failure_is_one_warning_and_the_sweep_goes_on(monkeypatch, tmp_path):
    import wandb

    from proxyscale.orchestrator.tracking import LiveAnalysisRun

    def broken(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken)
    analysis = LiveAnalysisRun({"mode": "offline"}, sweep="s", directory=tmp_path)
    clock, planner = Clock(), Planner()
    state = SweepState(ROWS, set(), clock=clock)
    monitor = LaunchMonitor(state, PlainView(state, say=lambda line: None), refit=estimate, planner=planner,
                            analysis=analysis)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with monitor:
            play(monitor, clock, planner)
            monitor("finished", "run4", result(3.0))
        monitor.finish(None)
    assert [str(w.message) for w in caught] == ["W&B live analysis failed (W&B is down); the sweep goes on without it"]
    assert not analysis.active and state.counts["finished"] == 2 and state.refits == 2
    assert not LiveAnalysisRun({"enabled": False}, sweep="s", directory=tmp_path).active


SWEEP = """# @package _global_
model: {depth: 4, n_heads: 4, seq_len: 256, parametrization: mup, base_width: 64}
train: {lr: 1.0e-2, batch_tokens: 65536, warmup_steps: 2, eval_interval_tokens: 100000000}
sweep:
  name: live
  axes:
    model.width: [64, 96, 128, 192, 256]
  budget:
    flops: [1.0e14, 2.2e14, 4.8e14, 1.0e15]
"""
SERIES = {f"target/{name}{end}" for name in ("n_opt", "loss", "d_opt") for end in ("", "_low", "_high")}
PARAMS = {f"fit/{name}" for name in ("E", "A", "B", "alpha", "beta")}
COUNTS = {f"runs/{kind}" for kind in ("finished", "running", "waiting", "failed", "diverged", "skipped", "refits")}


def test_an_offline_launch_updates_the_sweeps_analysis_run_after_every_refit(tmp_path, sweep_env):  # noqa: F811
    """A closed loop on the simulated trainer, W&B offline: the analysis run (group = sweep, job type
    'analysis') holds N_opt(C*), L(C*) and their interval ends, the fitted parameters and the counts
    against flops_spent, the proposals with their reasons as a table, and the figures."""
    sweeps, env = sweep_env
    (sweeps / "live.yaml").write_text(SWEEP)
    sweep_dir = tmp_path / "live"
    done = cli(env, "launch", "sweep=live", "trainer=simulated", "trainer.noise=0.003", "planner=active",
               "target_flops=1e18", "budget_flops=1e15", f"sweep_dir={sweep_dir}", "cluster.num_cpus=2")
    assert done.returncode == 0, done.stderr[-3000:]
    # stdout is a pipe here: plain lines, no table.
    assert " finished: eval loss " in done.stdout and "┌" not in done.stdout
    assert "live analysis: W&B run live-analysis" in done.stdout

    [run_file] = (sweep_dir / "wandb").glob("offline-run-*-live-analysis/run-live-analysis.wandb")
    [run] = [r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.run_group, run.job_type) == ("live-analysis", "live", "analysis")
    history = run_contents(run_file)["history"]
    keys = set().union(*history)
    assert {"flops_spent", *SERIES, *PARAMS, *COUNTS} <= keys
    assert {"proposals/_type", "figures/frontier/_type"} <= keys
    finished = sum(" finished: eval loss " in line for line in done.stdout.splitlines())
    assert len(history) == finished + 1  # one point per finished run (a refit), and the final 1000-bootstrap fit
    spent = [h["flops_spent"] for h in history]
    assert spent == sorted(spent) and spent[-1] <= 1e15
    last = history[-1]
    assert last["target/n_opt_low"] <= last["target/n_opt"] <= last["target/n_opt_high"]
    assert last["target/loss_low"] <= last["target/loss"] <= last["target/loss_high"]
    assert last["figures/frontier/_type"] == "image-file"
    assert last["runs/finished"] == finished
    # The proposals table: every run the loop proposed, with its reason.
    table = [h for h in history if "proposals/_type" in h][-1]
    contents = json.loads((run_file.parent / "files" / table["proposals/path"]).read_text())
    reasons = [row[contents["columns"].index("reason")] for row in contents["data"]]
    assert len(reasons) == finished and all(reasons)
    assert any(r.startswith("initial design") for r in reasons)


@pytest.mark.parametrize("argv", [["launch", "--help"]])
def test_launch_has_a_plain_option(argv, capsys):
    from proxyscale.orchestrator.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    assert "--plain" in capsys.readouterr().out
