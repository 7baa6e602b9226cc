"""Replay of a sweep as a pool of finished runs (analysis/replay.py) and `proxyscale replay` / `predict`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis.laws import chinchilla_loss, overtraining_loss
from proxyscale.analysis.planner import COARSE_STARTS
from proxyscale.analysis.predictive import backtest_errors
from proxyscale.analysis.replay import Runs, buy_in_order, cheapest_order, evaluate, planner_order, random_order, replay, split_at
from proxyscale.models.spec import SpecError
from tests.conftest import SHARED_DATA

TRUTH = {"E": 1.7, "A": 400.0, "B": 1200.0, "alpha": 0.34, "beta": 0.28}
TEST_ABOVE = 5e20
LLAMA3 = SHARED_DATA / "llama3_isoflops" / "isoflops_points.csv"


def synthetic_runs(noise: float = 0.01, seed: int = 0) -> Runs:
    """8 sizes from 1e7 to 3e9 parameters x 6 token budgets of 3 to 300 tokens per parameter, from TRUTH with
    `noise` relative noise: 40 runs up to 5e20 FLOPs (the pool) and the 8 largest above it (the test set)."""
    n = np.repeat(np.logspace(7, 9.5, 8), 6)
    d = n * np.tile(np.logspace(0.5, 2.5, 6), 8)
    loss = chinchilla_loss(n, d, **TRUTH) * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return Runs.of(n, d, loss)


@pytest.fixture(scope="module")
def replayed():
    return replay(synthetic_runs(), test_above_flops=TEST_ABOVE, fractions=[0.05, 0.2, 1.0], seeds=2, bootstrap=30,
                  grid=COARSE_STARTS, ensemble=32)


def test_every_method_stays_within_its_fraction_of_the_pool(replayed):
    assert (replayed.pool_size, replayed.test_size) == (40, 8)
    for case in replayed.cases:
        assert case.flops <= case.fraction * replayed.pool_flops * (1 + 1e-9), (case.method, case.fraction)
        assert len(set(case.bought.tolist())) == len(case.bought)
    rows = {(r["method"], r["fraction"]): r for r in replayed.results()}
    assert set(rows) == {(m, f) for m in ("planner", "random", "cheapest_first") for f in (0.05, 0.2, 1.0)}
    for method in ("planner", "random", "cheapest_first"):
        assert rows[(method, 0.05)]["flops"] < rows[(method, 0.2)]["flops"] < rows[(method, 1.0)]["flops"]
        assert rows[(method, 1.0)]["flops"] == pytest.approx(replayed.pool_flops)
    # Cheapest-first at 5% buys exactly the cheapest runs that fit, in order.
    pool, _ = split_at(synthetic_runs(), TEST_ABOVE)
    cost = synthetic_runs().flops[pool]
    cheapest = [c for c in replayed.cases if c.method == "cheapest_first" and c.fraction == 0.05][0]
    order = np.sort(cost)
    expected = int(np.searchsorted(np.cumsum(order), 0.05 * cost.sum(), side="right"))
    assert len(cheapest.bought) >= expected and cost[cheapest.bought].max() <= order[len(cheapest.bought) - 1]


def test_buy_in_order_skips_a_run_that_does_not_fit_and_goes_on():
    cost = np.array([5.0, 4.0, 1.0, 1.0])
    assert buy_in_order([0, 1, 2, 3], cost, 7.0).tolist() == [0, 2, 3]
    assert buy_in_order(cheapest_order(cost), cost, 2.5).tolist() == [2, 3]


def test_the_same_seed_makes_the_same_picks(replayed):
    runs = synthetic_runs()
    pool_index, test_index = split_at(runs, TEST_ABOVE)
    pool, test = runs.take(pool_index), runs.take(test_index)
    limit = 0.2 * pool.flops.sum()  # the replay's largest fraction below 1
    order = planner_order(pool, test, law="chinchilla", seed=1, spend_limit=limit, ensemble=32)
    assert pool.flops[order].sum() <= limit
    for fraction in (0.05, 0.2):
        again = buy_in_order(order, pool.flops, fraction * pool.flops.sum())
        [case] = [c for c in replayed.cases if (c.method, c.fraction, c.seed) == ("planner", fraction, 1)]
        assert again.tolist() == case.bought.tolist()
    assert random_order(40, 3).tolist() == random_order(40, 3).tolist() != random_order(40, 4).tolist()


def test_a_pool_drawn_from_a_known_law_recovers_it(replayed):
    runs = synthetic_runs(noise=0.002)
    pool_index, test_index = split_at(runs, TEST_ABOVE)
    pool, test = runs.take(pool_index), runs.take(test_index)
    case = evaluate("chinchilla", pool, test, np.arange(len(pool_index)), bootstrap=100, grid=COARSE_STARTS)
    truth = chinchilla_loss(test.n, test.d, **TRUTH)
    assert np.max(np.abs(case.prediction / truth - 1)) < 0.01  # 7x beyond the pool's largest run, 0.2% noise
    assert case.covered.mean() >= 7 / 8
    # ... and the replay at 1% noise predicts within ~1% from the whole pool and from a fifth of it.
    full = replayed.full_pool()
    assert full["median_abs_rel_error"] < 0.02 and full["not_fitted"] == 0
    assert replayed.summary("planner", 0.2)["median_abs_rel_error"] < 0.03


def test_prediction_intervals_cover_measured_losses_about_95_percent():
    """12 independent noisy pools (1% noise) x 8 test runs: the share of intervals holding the MEASURED loss is
    near 0.95; an interval for the law's mean alone (no run noise) covers visibly less."""
    covered, mean_covered = [], []
    for k in range(12):
        runs = synthetic_runs(noise=0.01, seed=100 + k)
        pool_index, test_index = split_at(runs, TEST_ABOVE)
        case = evaluate("chinchilla", runs.take(pool_index), runs.take(test_index), np.arange(len(pool_index)),
                        bootstrap=60, grid=COARSE_STARTS, seed=k)
        covered.append(case.covered)
        mean_covered.append(case.mean_covered)
    coverage, mean_coverage = np.concatenate(covered).mean(), np.concatenate(mean_covered).mean()
    print(f"coverage over 96 pairs: prediction interval {coverage:.3f}, law's mean alone {mean_coverage:.3f}")
    assert 0.85 <= coverage <= 1.0
    assert mean_coverage < coverage - 0.05


# --- the commands, through their own parsers (orchestrator/commands/replay.py and predict.py) ---

def run_command(argv: list[str]) -> int:
    from proxyscale.orchestrator.commands import predict as predict_command
    from proxyscale.orchestrator.commands import replay as replay_command

    parser = argparse.ArgumentParser(prog="proxyscale")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {"replay": replay_command, "predict": predict_command}
    for module in modules.values():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except SpecError as error:
        print(f"proxyscale: error: {error}", flush=True, file=__import__("sys").stderr)
        return 2


def write_csv(tmp_path, runs: Runs, name: str = "runs.csv") -> str:
    path = tmp_path / name
    pd.DataFrame({"params": runs.n, "flops": runs.flops, "tokens": runs.d, "final": runs.loss}).to_csv(path, index=False)
    return str(path)


def test_the_replay_command_prints_the_tables_as_json(tmp_path, capsys):
    path = write_csv(tmp_path, synthetic_runs())
    assert run_command(["replay", "--csv", path, "--n", "params", "--flops", "flops", "--loss", "final",
                        "--test-above-flops", "5e20", "--fractions", "0.1", "1", "--seeds", "1", "--bootstrap", "20",
                        "--methods", "random", "cheapest_first", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["pool_rows"], out["test_rows"]) == (40, 8)
    assert set(out["full_pool"]) >= {"median_abs_rel_error", "coverage"}
    assert [(r["method"], r["fraction"]) for r in out["results"]] == [
        ("random", 0.1), ("random", 1.0), ("cheapest_first", 0.1), ("cheapest_first", 1.0)]
    for row in out["results"]:
        assert set(row) >= {"method", "fraction", "median_abs_rel_error", "coverage", "flops", "n_rows"}
        assert row["flops"] <= row["fraction"] * out["pool_flops"] * (1 + 1e-9)


@pytest.mark.parametrize(("edit", "argv_extra", "message"), [
    (None, ["--n", "N"], "--n: column 'N' is not in"),
    ("text", [], "has the text 'abc'"),
    ("negative", [], "must be > 0"),
    (None, ["--test-above-flops", "1e30"], "no row of"),
    (None, ["--test-above-flops", "1e16"], "only 3 rows"),
    (None, ["--fractions", "0", "0.5"], "--fractions: each must be in (0, 1]"),
])
def test_the_replay_command_names_what_is_wrong_with_a_table(tmp_path, capsys, edit, argv_extra, message):
    runs = synthetic_runs()
    path = write_csv(tmp_path, runs)
    if edit is not None:
        table = pd.read_csv(path).astype({"final": object})
        table.loc[3, "final"] = "abc" if edit == "text" else -1.0
        table.to_csv(path, index=False)
    base = ["replay", "--csv", path, "--n", "params", "--flops", "flops", "--loss", "final", "--test-above-flops", "5e20"]
    assert run_command(base + argv_extra) == 2  # a repeated option: the last one counts
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    if "is not in" in message:
        assert "'params', 'flops', 'tokens', 'final'" in err  # the columns that exist


def test_the_constants_the_parser_repeats_agree_with_the_analysis():
    from proxyscale.analysis import predictive
    from proxyscale.analysis import replay as analysis_replay
    from proxyscale.orchestrator.commands import replay as replay_command

    assert replay_command.LAWS == predictive.LAWS
    assert replay_command.METHODS == analysis_replay.METHODS
    assert replay_command.DEFAULT_FRACTIONS == analysis_replay.DEFAULT_FRACTIONS
    assert replay_command.INTERVALS == analysis_replay.INTERVALS


def test_backtest_errors_hold_out_the_largest_runs_and_keep_their_bias():
    runs = synthetic_runs(noise=0.0)
    biased = runs.loss * np.where(runs.flops > np.quantile(runs.flops, 0.75), 1.02, 1.0)  # the largest runs 2% up
    errors = backtest_errors("chinchilla", runs.n, runs.d, biased, runs.flops, share=0.25, grid=COARSE_STARTS)
    assert len(errors) == 12 and np.median(errors) == pytest.approx(np.log(1.02), abs=0.004)
    assert backtest_errors("chinchilla", runs.n[:7], runs.d[:7], runs.loss[:7], runs.flops[:7], share=0.25) is None


def test_predict_an_over_trained_run_from_a_csv(tmp_path, capsys):
    eta = 0.15
    law = {"E": 1.8, "a": 400.0 * 6**eta, "b": 1200.0 * 6**eta, "eta": eta}
    n = np.repeat(np.logspace(7, 8.5, 7), 6)
    d = n * np.tile(5.0 * 2.0 ** np.arange(6), 7)  # M = 5 .. 160
    loss = overtraining_loss(6 * n * d, d / n, **law) * np.exp(np.random.default_rng(0).normal(0, 0.002, n.size))
    path = write_csv(tmp_path, Runs.of(n, d, loss))
    assert run_command(["predict", "--csv", path, "--n", "params", "--d", "tokens", "--loss", "final",
                        "--law", "overtraining", "--target-n", "1.4e9", "--target-m", "640", "--bootstrap", "100",
                        "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"]["d"] == pytest.approx(1.4e9 * 640)
    truth = float(overtraining_loss(6 * 1.4e9 * 1.4e9 * 640, 640, **law))
    assert out["loss"]["value"] == pytest.approx(truth, rel=0.015)
    assert out["loss"]["low"] < truth < out["loss"]["high"]
    loss = out["loss"]
    assert loss["high"] - loss["low"] > loss["mean_high"] - loss["mean_low"] > 0  # run noise widens it
    assert out["extrapolation"]["flops_over_largest_fitted"] > 50


def test_predict_needs_two_target_coordinates(tmp_path, capsys):
    path = write_csv(tmp_path, synthetic_runs())
    assert run_command(["predict", "--csv", path, "--n", "params", "--d", "tokens", "--loss", "final",
                        "--target-n", "1e9"]) == 2
    assert "give exactly two of --target-n" in capsys.readouterr().err


def test_replay_of_the_llama3_isoflop_points_predicts_the_two_largest_budgets():
    """A quick replay on real data (one seed, one method). The error is small, but the coverage is not asserted:
    the 3e21 budget sits ~1% below the law as a whole (an offset shared by its points, not per-point noise), so
    per-point intervals miss it (docs/results.md, "Replay on published sweeps")."""
    if not LLAMA3.exists():
        pytest.skip(f"reference data {LLAMA3} is absent (it lives in ../shared/data beside the checkout)")
    table = pd.read_csv(LLAMA3)
    c, d = table["compute_budget"].to_numpy(), table["training_tokens"].to_numpy()
    runs = Runs.of(c / (6 * d), d, table["validation_loss"], c)
    result = replay(runs, test_above_flops=2e21, fractions=[0.5, 1.0], seeds=1, methods=["cheapest_first"],
                    bootstrap=50, grid=COARSE_STARTS)
    assert (result.pool_size, result.test_size) == (121, 12)
    full = result.full_pool()
    assert full["median_abs_rel_error"] < 0.015 and full["not_fitted"] == 0
    assert result.summary("cheapest_first", 0.5)["median_abs_rel_error"] < 0.02
