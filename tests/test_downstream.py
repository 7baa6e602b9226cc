"""Task metrics (issue 24 item 4): the law Err(L) = eps - k exp(-gamma L), its command-line checks, the
train.evals hook, the ledger's evals table, and the chain launch -> export -> fit -> predict on real runs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis.downstream import DownstreamFit, chain, error_of_loss, fit_downstream
from proxyscale.orchestrator.cli import main
from tests.conftest import ROOT, tiny_spec

TRUTH = (0.85, 2.2, 0.8)


def simulated(seed: int, points: int = 40, noise: float = 0.01, low: float = 1.5, high: float = 4.0):
    rng = np.random.default_rng(seed)
    loss = rng.uniform(low, high, points)
    return loss, error_of_loss(loss, *TRUTH) + rng.normal(0, noise, points)


def test_the_law_recovers_a_simulated_truth_within_its_intervals():
    """Ten independent draws: each parameter's and a prediction's 95% interval holds the truth in >= 8 of them."""
    covered = np.zeros(4)
    for seed in range(10):
        loss, error = simulated(seed)
        fit = fit_downstream(loss, error, bootstrap=200, seed=seed)
        intervals = fit.intervals()
        for i, name in enumerate(("eps", "k", "gamma")):
            covered[i] += intervals[name].low <= TRUTH[i] <= intervals[name].high
        at = fit.predict(2.5)
        covered[3] += at.low <= float(error_of_loss(2.5, *TRUTH)) <= at.high
        assert abs(fit.params["gamma"] - TRUTH[2]) < 0.25 and abs(fit.params["eps"] - TRUTH[0]) < 0.08
    assert (covered >= 8).all(), covered


def test_grouped_bootstrap_and_saved_file_round_trip():
    loss, error = simulated(3, points=30)
    groups = np.arange(30) % 6
    fit = fit_downstream(loss, error, bootstrap=50, seed=0, groups=groups)
    assert fit.n_groups == 6 and fit.bootstrap.shape == (50, 3)
    again = DownstreamFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert np.allclose(again.theta, fit.theta) and np.allclose(again.bootstrap, fit.bootstrap)
    assert again.predict(2.0) == fit.predict(2.0)


def test_a_saved_calibration_round_trips_and_a_bad_factor_is_refused():
    from proxyscale.analysis.downstream import DownstreamInputError

    loss, error = simulated(4, points=40)
    fit = fit_downstream(loss, error, bootstrap=64, seed=0, groups=np.arange(40) % 8, calibrate=True)
    saved = json.loads(json.dumps(fit.to_dict()))
    again = DownstreamFit.from_dict(saved)
    before, after = fit.calibration.as_dict(), again.calibration.as_dict()
    assert after.pop("split") == before.pop("split") and after == pytest.approx(before, nan_ok=True)
    assert again.factor == fit.factor and not again.calibration.log
    assert chain(again, 2.0, [2.0], [2.0]).as_dict() == chain(fit, 2.0, [2.0], [2.0]).as_dict()
    saved["calibration"]["factor"] = -1.0
    with pytest.raises(DownstreamInputError, match="calibration factor -1.0; it must be a positive number"):
        DownstreamFit.from_dict(saved)


def test_chain_carries_the_loss_interval_through():
    """A loss known only to +-0.3 gives a wider error interval than the exact loss, centred where the law puts it."""
    loss, error = simulated(5)
    fit = fit_downstream(loss, error, bootstrap=200, seed=0)
    rng = np.random.default_rng(1)
    exact = chain(fit, 2.5, np.full(200, 2.5), np.full(200, 2.5))
    spread_members = 2.5 + rng.normal(0, 0.15, 200)
    loose = chain(fit, 2.5, spread_members, spread_members + rng.normal(0, 0.05, 200))
    assert exact.mean_low <= exact.value <= exact.mean_high and loose.low <= loose.value <= loose.high
    assert (loose.mean_high - loose.mean_low) > 3 * (exact.mean_high - exact.mean_low)
    # The interval of the mean follows the law at the ends of the loss spread.
    slope = TRUTH[1] * TRUTH[2] * np.exp(-TRUTH[2] * 2.5)
    assert (loose.mean_high - loose.mean_low) == pytest.approx(2 * 1.96 * 0.15 * slope, rel=0.3)
    assert not loose.extrapolated and chain(fit, 6.0, [6.0], [6.0]).extrapolated


def write(tmp_path, **columns) -> str:
    path = tmp_path / "points.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    return str(path)


def fit_cli(csv, *extra):
    return main(["fit", "--law", "downstream", "--csv", csv, "--loss", "loss", "--metric", "acc", "--bootstrap", "20",
                 *extra])


@pytest.mark.parametrize("values, message", [
    ([0.1, 0.2, float("nan"), 0.3, 0.35, 0.4], "column 'acc' (--metric) is empty or NaN at line 4"),
    ([0.1, 0.2, 1.5, 0.3, 0.35, 0.4], "column 'acc' (--metric) has 1.5 at line 4, outside [0, 1]"),
    ([0.1, 0.2, -0.2, 0.3, 0.35, 0.4], "column 'acc' (--metric) has -0.2 at line 4"),
])
def test_metric_columns_with_nan_or_outside_0_1_are_refused(tmp_path, capsys, values, message):
    csv = write(tmp_path, loss=[4.0, 3.5, 3.0, 2.8, 2.6, 2.4], acc=values)
    assert fit_cli(csv, "--accuracy") == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("proxyscale: error: ") and err.count("\n") == 1


def test_too_few_points_missing_columns_and_a_flipped_metric_are_refused(tmp_path, capsys):
    four = write(tmp_path, loss=[4.0, 3.5, 3.0, 2.8], acc=[0.1, 0.2, 0.25, 0.3])
    assert fit_cli(four, "--accuracy") == 2
    assert "has 4 data rows; fitting Err(L) = eps - k exp(-gamma L) needs at least 5" in capsys.readouterr().err
    same = write(tmp_path, loss=[4.0, 4.0, 3.0, 3.0, 2.0, 2.0], acc=[0.1, 0.12, 0.2, 0.21, 0.3, 0.31])
    assert fit_cli(same, "--accuracy") == 2
    assert "loss: 3 distinct losses; the law needs points at 4 or more" in capsys.readouterr().err
    csv = write(tmp_path, loss=[4.0, 3.5, 3.0, 2.8, 2.6, 2.4], acc=[0.1, 0.2, 0.25, 0.3, 0.32, 0.35], run=[1, 1, 1, 2, 2, 2])
    assert main(["fit", "--law", "downstream", "--csv", csv, "--loss", "loss"]) == 2
    assert "give --metric COL" in capsys.readouterr().err
    assert fit_cli(csv, "--accuracy", "--group", "run") == 2
    assert "the points come from 2 group(s); bootstrapping over groups needs at least 3" in capsys.readouterr().err
    assert fit_cli(csv) == 2  # an accuracy read as an error falls with the loss
    assert "looks like an accuracy: add --accuracy" in capsys.readouterr().err
    assert main(["fit", "--law", "downstream", "--csv", csv, "--loss", "loss", "--metric", "accuracy"]) == 2
    assert "--metric: column 'accuracy' is not in" in capsys.readouterr().err


def test_predict_refuses_a_file_that_is_not_a_downstream_fit_before_fitting(tmp_path, capsys):
    bad = tmp_path / "fit.json"
    bad.write_text(json.dumps({"law": "chinchilla"}))
    args = ["predict", "--csv", str(tmp_path / "absent.csv"), "--n", "n", "--d", "d", "--loss", "loss",
            "--target-n", "1e6", "--target-d", "1e8"]
    assert main([*args, "--downstream", str(bad)]) == 2
    assert "not a downstream fit (format None" in capsys.readouterr().err
    assert main([*args, "--downstream", str(tmp_path / "none.json")]) == 2
    assert "--downstream: " in capsys.readouterr().err


# --- the train.evals hook -------------------------------------------------------------------------------------

def mean_logit(model, *, spec, device) -> float:
    """A user metric for the hook test: it sees the run's model, spec and device."""
    import torch

    x = torch.zeros((1, spec.model.seq_len), dtype=torch.long, device=device)
    return float(model(x).float().mean()) + spec.model.width


def not_a_number(model, *, spec, device):
    return "high"


def test_eval_functions_are_called_at_every_eval_and_their_values_reported():
    from proxyscale.models.train import train_run

    spec = tiny_spec(tokens=8192, evals={"logit": "tests.test_downstream:mean_logit",
                                         "acc": "proxyscale.models.evals:next_byte_accuracy"})
    records = []
    result = train_run(spec, on_record=records.append)
    evals = [r for r in records if r.eval_loss is not None]
    assert len(evals) == 3 and all(set(r.evals) == {"logit", "acc"} for r in evals)
    assert all(31 < r.evals["logit"] < 33 and 0 <= r.evals["acc"] <= 1 for r in evals)  # width 32 + a mean logit
    assert not any(r.evals for r in records if r.eval_loss is None)
    assert result.evals == evals[-1].evals
    with pytest.raises(TypeError, match="train.evals: bad returned str 'high'; it must return a float"):
        train_run(tiny_spec(tokens=4096, evals={"bad": "tests.test_downstream:not_a_number"}))


@pytest.mark.parametrize("value, message", [
    ("[nosuch_module_x:f]", "cannot import module 'nosuch_module_x'"),
    ("[proxyscale.models.evals:nope]", "module 'proxyscale.models.evals' has no function 'nope'; its functions include"),
    ("[no_colon]", "'no_colon' is not 'module:function'"),
])
def test_a_bad_eval_function_is_refused_before_any_run(tmp_path, capsys, value, message):
    assert main(["train", f"train.evals={value}", f"out_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert main(["launch", "sweep=demo", "--dry-run", f"train.evals={value}", f"sweep_dir={tmp_path / 'sweep'}"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "sweep").exists()


def test_a_ledger_written_before_task_metrics_opens_and_records_them(tmp_path):
    from proxyscale.orchestrator.ledger import Ledger

    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:  # the schema of a ledger from before the evals table
        db.executescript("CREATE TABLE runs (run_id TEXT PRIMARY KEY, sweep TEXT NOT NULL, spec_json TEXT NOT NULL, "
                         "status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL); "
                         "CREATE TABLE steps (run_id TEXT NOT NULL, step INTEGER NOT NULL, tokens INTEGER NOT NULL, "
                         "lr REAL, train_loss REAL, eval_loss REAL, probes_json TEXT, PRIMARY KEY (run_id, step)); "
                         "INSERT INTO steps VALUES ('old', 0, 0, 0.0, NULL, 5.5, '{}'); PRAGMA user_version=1;")
    with Ledger(path) as ledger:
        assert ledger.evals() == [] and ledger.final_evals() == {} and len(ledger.steps()) == 1
        ledger.add_steps("r", [{"step": s, "tokens": 10 * s, "lr": 0.1, "train_loss": None, "eval_loss": 3.0 - s,
                                "probes": {}, "evals": {"acc": 0.1 * s}} for s in (1, 2)])
        assert [(e["step"], e["value"]) for e in ledger.evals("r")] == [(1, 0.1), (2, 0.2)]
        assert ledger.final_evals() == {"r": {"acc": 0.2}}


# --- end to end on real runs ----------------------------------------------------------------------------------

SWEEP = """# @package _global_
model: {depth: 1, n_heads: 2, seq_len: 32}
train: {batch_tokens: 512, warmup_steps: 2, eval_interval_tokens: 4096, eval_batches: 2, log_interval: 8, lr: 2.0e-2,
        evals: [proxyscale.models.evals:next_byte_accuracy]}
sweep:
  name: tasks
  axes: {model.width: [16, 24, 32]}
  budget: {tokens: [4096, 16384, 65536]}
"""


def test_chain_train_export_fit_predict_on_real_runs(tmp_path, capsys):
    """Nine tiny proxies record next-byte accuracy at every eval (ledger and W&B); the exported eval points fit the
    law, and predict carries a larger run's loss through it."""
    from tests.wandb_offline import run_contents

    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "tasks.yaml").write_text(SWEEP)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PROXYSCALE_SWEEP_PATH=str(sweeps), WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    sweep_dir = tmp_path / "out"
    launched = subprocess.run([sys.executable, "-m", "proxyscale.orchestrator.cli", "launch", "sweep=tasks",
                               f"sweep_dir={sweep_dir}",
                               "cluster.num_cpus=2"], capture_output=True, text=True, env=env, timeout=600)
    assert launched.returncode == 0, launched.stderr[-2000:]

    steps_csv, runs_csv, fit_file = tmp_path / "steps.csv", tmp_path / "runs.csv", tmp_path / "accuracy.json"
    assert main(["export", str(sweep_dir), "--steps", "-o", str(steps_csv)]) == 0
    assert main(["export", str(sweep_dir), "-o", str(runs_csv)]) == 0
    steps, runs = pd.read_csv(steps_csv), pd.read_csv(runs_csv)
    scored = steps[steps["eval.next_byte_accuracy"].notna()]
    assert len(runs) == 9 and (runs.status == "finished").all()
    assert len(scored) == steps.eval_loss.notna().sum() >= 9 * 2  # every eval, step 0 included, is scored
    last = scored.sort_values("step").groupby("run_id")["eval.next_byte_accuracy"].last()
    assert runs.set_index("run_id")["eval.next_byte_accuracy"].to_dict() == pytest.approx(last.to_dict())
    # W&B holds the same values as the ledger.
    run_id = runs.run_id.iloc[0]
    [run_file] = (sweep_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    logged = [h["evals/next_byte_accuracy"] for h in run_contents(run_file)["history"] if "evals/next_byte_accuracy" in h]
    assert logged == pytest.approx(scored[scored.run_id == run_id].sort_values("step")["eval.next_byte_accuracy"].tolist())

    # Step 0 is left out: an untrained model's top-1 byte is whatever its random init favours.
    trained = scored[scored.step > 0]
    trained_csv = tmp_path / "trained.csv"
    trained.to_csv(trained_csv, index=False)
    capsys.readouterr()
    assert main(["fit", "--law", "downstream", "--csv", str(trained_csv), "--loss", "eval_loss", "--metric",
                 "eval.next_byte_accuracy", "--accuracy", "--group", "run_id", "--bootstrap", "200", "-o", str(fit_file),
                 "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    eps, k, gamma = fitted["theta"]
    assert k > 0 and gamma > 0 and fitted["n_groups"] == 9 and fitted["warnings"] == []
    # The same points straight from the ledger give the same fit.
    assert main(["fit", str(sweep_dir), "--law", "downstream", "--metric", "next_byte_accuracy", "--accuracy",
                 "--bootstrap", "200", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["theta"] == pytest.approx(fitted["theta"])
    # The law describes the real points: error within a few points of accuracy everywhere, and it falls with loss.
    error = 1 - trained["eval.next_byte_accuracy"].to_numpy()
    residual = error - error_of_loss(trained.eval_loss.to_numpy(), eps, k, gamma)
    assert np.median(np.abs(residual)) < 0.01 and np.abs(residual).max() < 0.05
    assert error_of_loss(3.0, eps, k, gamma) < error_of_loss(5.0, eps, k, gamma)

    n_max, d_max = runs.n_params.max(), runs.tokens.max()
    assert main(["predict", "--csv", str(runs_csv), "--n", "n_params", "--d", "tokens", "--loss", "final_eval_loss",
                 "--target-n", str(2 * n_max), "--target-d", str(d_max), "--bootstrap", "100", "--downstream",
                 str(fit_file), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    accuracy, loss = predicted["downstream"]["accuracy"], predicted["loss"]["value"]
    assert accuracy["value"] == pytest.approx(1 - float(np.clip(error_of_loss(loss, eps, k, gamma), 0, 1)))
    assert 0 <= accuracy["low"] <= accuracy["mean_low"] <= accuracy["value"] <= accuracy["mean_high"] <= accuracy["high"] <= 1


def test_the_simulated_trainer_refuses_task_metrics_and_a_ledger_without_them_says_how_to_record_them(tmp_path, capsys):
    from proxyscale.models.spec import RunSpec, SpecError
    from proxyscale.orchestrator.ledger import Ledger

    with pytest.raises(SpecError, match="train.evals: the simulated trainer trains no model to evaluate"):
        RunSpec.from_dict({"train": {"evals": ["proxyscale.models.evals:next_byte_accuracy"]}, "simulated": {}})
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_steps("r", [{"step": 1, "tokens": 10, "lr": 0.1, "train_loss": None, "eval_loss": 3.0, "probes": {}}])
    assert main(["fit", str(tmp_path), "--law", "downstream", "--metric", "next_byte_accuracy"]) == 2
    assert "recorded the task metrics none (launch with train.evals=[module:function]" in capsys.readouterr().err


# ------------------------------------------------------------------ calibration by the backtest (issue 24)

def ladder(seed: int, runs: int = 8, per_run: int = 8, offset: float = 0.03, noise: float = 0.002,
           final: tuple[float, float] = (3.0, 1.8)):
    """Runs of a ladder: each run's eval points from loss 4.0 down to its final loss (the larger the run, the lower),
    the truth's error plus the run's own offset (shared by its points) plus pointwise noise."""
    rng = np.random.default_rng(seed)
    loss = np.concatenate([np.linspace(4.0, end, per_run) for end in np.linspace(*final, runs)])
    groups = np.repeat(np.arange(runs), per_run)
    error = error_of_loss(loss, *TRUTH) + offset * rng.normal(size=runs)[groups] + rng.normal(0, noise, len(loss))
    return loss, error, groups


def covered(fit, loss, error) -> float:
    """Share of (loss, error) points inside the fit's measured-error interval at their loss (what `chain` gives)."""
    bands = [chain(fit, at, [at], [at], seed=i) for i, at in enumerate(loss)]
    return float(np.mean([b.low <= e <= b.high for b, e in zip(bands, error, strict=True)]))


def test_run_offsets_widen_the_task_law_interval_and_it_covers_larger_runs_better():
    """Runs with shared offsets (sd 0.03, 15x the pointwise noise): the law absorbs part of the offsets of its few
    runs, so its residuals understate them; the backtest (two lowest-loss runs held out) widens the interval, and
    fresh larger runs (lower losses than any fitted) are covered better by the calibrated interval than the raw."""
    import dataclasses

    factors, raw, calibrated = [], [], []
    for seed in range(8):
        loss, error, groups = ladder(seed)
        fit = fit_downstream(loss, error, bootstrap=64, seed=seed, groups=groups, calibrate=True)
        c = fit.calibration
        assert c.n_points == 16 and "2 independent groups can widen the band, not narrow it" in c.split
        assert c.coverage_after >= c.coverage_before and c.width_after >= c.width_before
        factors.append(fit.factor)
        larger, larger_error, _ = ladder(1000 + seed, runs=4, per_run=4, final=(1.7, 1.6))
        raw.append(covered(dataclasses.replace(fit, calibration=None), larger, larger_error))
        calibrated.append(covered(fit, larger, larger_error))
    factors = np.array(factors)
    assert (factors >= 1).all() and (factors > 1.2).sum() >= 2 and factors.mean() > 1.1, factors
    assert np.mean(calibrated) >= np.mean(raw) + 0.02, (np.mean(raw), np.mean(calibrated))


def test_well_specified_pointwise_noise_gets_a_factor_about_one():
    """600 independent points of the law with Gaussian noise, no groups: the 60 lowest losses held out (enough to
    narrow as well as widen). The raw interval is right there, so the factor is about 1 (the conformal rank, 58th
    of 60 |z|, sits a little above the 95% quantile: a median of 1.0-1.15 is expected)."""
    from proxyscale.analysis.downstream import backtest_calibration

    factors, coverage = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        loss = rng.uniform(1.5, 4.0, 600)
        c = backtest_calibration(loss, error_of_loss(loss, *TRUTH) + rng.normal(0, 0.01, 600), bootstrap=64, seed=seed)
        assert c.n_points == 60 and "can widen" not in c.split and c.split.startswith("the 60 lowest losses held out")
        factors.append(c.factor)
        coverage.append(c.coverage_before)
    assert 0.85 < np.median(factors) < 1.25 and min(factors) > 0.6 and max(factors) < 1.6, factors
    assert 0.9 <= np.mean(coverage) <= 0.99, coverage


def test_a_table_too_small_for_the_backtest_is_calibrated_with_factor_one_and_why(tmp_path, capsys):
    from proxyscale.analysis.downstream import backtest_calibration, lowest_loss_split

    loss, error = simulated(0, points=6)
    c = backtest_calibration(loss, error)
    assert c.factor == 1.0 and c.n_points == 0
    assert "holding out the lowest-loss points cannot fit the law" in c.split and "at least 5" in c.split
    groups = np.repeat([0, 1, 2], 6)
    loss, error = simulated(1, points=18)
    assert lowest_loss_split(loss, groups).sum() == 12  # two whole groups, however few points they hold
    c = backtest_calibration(loss, error, groups=groups)
    assert c.factor == 1.0 and "1 group(s)" in c.split
    csv = write(tmp_path, loss=loss[:6], acc=1 - error[:6])
    assert fit_cli(csv, "--accuracy") == 0
    assert "calibration: none (the rest after holding out the lowest-loss points" in capsys.readouterr().out


def chinchilla_runs(tmp_path) -> str:
    n, d = (v.ravel() for v in np.meshgrid([1e6, 2e6, 4e6], [2e7, 4e7, 8e7]))
    loss = 1.7 + 40 / n ** 0.34 + 41 / d ** 0.28
    path = tmp_path / "runs.csv"
    pd.DataFrame({"n": n, "d": d, "loss": loss * np.exp(np.random.default_rng(0).normal(0, 0.003, 9))}).to_csv(path)
    return str(path)


def test_predict_scales_the_chained_interval_by_the_saved_factor_and_an_old_file_is_uncalibrated(tmp_path, capsys):
    loss, error, groups = ladder(0)
    csv = write(tmp_path, loss=loss, acc=1 - error, run=groups)
    new = tmp_path / "new.json"
    assert fit_cli(csv, "--accuracy", "--group", "run", "-o", str(new)) == 0
    out = capsys.readouterr().out
    saved = json.loads(new.read_text())
    factor = saved["calibration"]["factor"]
    assert factor > 1 and f"calibration factor {factor:.2f}" in out and "at the lowest fitted loss" in out
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in saved.items() if k != "calibration"}))
    args = ["predict", "--csv", chinchilla_runs(tmp_path), "--n", "n", "--d", "d", "--loss", "loss", "--target-n",
            "8e6", "--target-d", "1.6e8", "--bootstrap", "20"]
    predicted = {}
    for name, path in (("new", new), ("old", old)):
        assert main([*args, "--downstream", str(path)]) == 0
        text = capsys.readouterr().out
        assert ("task law: uncalibrated (factor 1" in text) == (name == "old")
        assert main([*args, "--downstream", str(path), "--json"]) == 0
        predicted[name] = json.loads(capsys.readouterr().out)["downstream"]
    new_error, old_error = predicted["new"]["error"], predicted["old"]["error"]
    assert old_error["calibration_factor"] == 1.0 and predicted["old"]["calibration"] is None
    assert new_error["calibration_factor"] == pytest.approx(factor) and new_error["value"] == old_error["value"]
    for end in ("low", "high", "mean_low", "mean_high"):  # the same samples, scaled about the point by the factor
        assert new_error[end] - new_error["value"] == pytest.approx(factor * (old_error[end] - old_error["value"]))
