"""LR and batch-size laws from a table (issue 22): `proxyscale fit --csv F --law lr_batch` recovers a simulated
Step-Law truth within its intervals, from a table written by hand and from our own `export` round-tripped; the
2,100-run sweep's dry run; and the bad inputs (no group with 3+ LRs, a batch column in mixed units)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from proxyscale.models.flops import count_parameters
from proxyscale.models.simulated import simulate_run
from proxyscale.models.spec import ModelSpec, RunSpec, SimulatedSpec, TrainSpec
from proxyscale.orchestrator.cli import main

TRUTH = SimulatedSpec(noise=0.002, lr_optimal=0.01, lr_penalty=0.05, lr_params_exponent=-0.7, knob_params_ref=1e6,
                      lr_tokens_exponent=0.3, knob_tokens_ref=1e8, batch_penalty=0.02, batch_optimal=8192,
                      batch_tokens_exponent=0.55)
"""Step Law's shape: eta_opt = 0.01 (N / 1e6)^-0.7 (D / 1e8)^0.3, B_opt = 8192 (D / 1e8)^0.55 (no noise scale, so the
loss-optimal batch is the bowl's centre up to warmup effects)."""
WIDTHS = (64, 128, 256)
TOKENS = (2**24, 2**25, 2**26, 2**27)
BATCHES = (1024, 2048, 4096, 8192, 16384, 32768)
LR_STEPS = range(-3, 4)  # a factor sqrt(2) apart around each group's true optimum
COLUMNS = ["--n", "n_params", "--d", "tokens", "--lr", "lr", "--batch", "batch_size", "--loss", "final_eval_loss"]


def grid_specs() -> list[RunSpec]:
    specs = []
    for width in WIDTHS:
        model = ModelSpec(width=width, depth=2, n_heads=2, seq_len=64)
        n = count_parameters(model).total
        for tokens in TOKENS:
            best = 0.01 * (n / 1e6) ** -0.7 * (tokens / 1e8) ** 0.3
            for batch in BATCHES:
                for k in LR_STEPS:
                    specs.append(RunSpec(model=model, simulated=TRUTH,
                                         train=TrainSpec(lr=float(best * 2 ** (k / 2)), tokens=tokens, batch_tokens=batch,
                                                         warmup_steps=5, eval_interval_tokens=tokens)))
    return specs


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    """One row per simulated run, the columns a W&B export or a paper's table would have."""
    rows = []
    for spec in grid_specs():
        result = simulate_run(spec)
        rows.append({"n_params": result.n_params, "tokens": result.tokens, "lr": spec.train.lr,
                     "batch_size": spec.train.batch_tokens, "final_eval_loss": result.final_eval_loss})
    path = tmp_path_factory.mktemp("lr_batch") / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def fit_json(path: str, capsys, *extra: str) -> dict:
    assert main(["fit", "--csv", path, "--law", "lr_batch", *COLUMNS, "--bootstrap", "300", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def assert_recovers_truth(payload: dict) -> None:
    lr, batch = payload["lr"], payload["batch_size"]
    for name, truth in (("N", -0.7), ("D", 0.3)):
        exponent = lr["exponents"][name]
        assert exponent["low"] <= truth <= exponent["high"], (name, exponent)
        assert exponent["high"] - exponent["low"] < 0.15, exponent  # an interval that says something
    # The LR law's coefficient at N = 1e6, D = 1e8 is the truth's 0.01.
    c, e = lr["coefficient"], lr["exponents"]
    at_reference = c["value"] * 1e6 ** e["N"]["value"] * 1e8 ** e["D"]["value"]
    assert at_reference == pytest.approx(0.01, rel=0.1)
    d = batch["exponents"]["D"]
    assert d["low"] <= 0.55 <= d["high"] and d["high"] - d["low"] < 0.2, d
    assert payload["lr_vs_batch"]["verdict"] == "flat"  # the truth's LR optimum does not move with the batch


def test_fit_lr_batch_recovers_a_simulated_step_law_within_its_intervals(table, capsys):
    payload = fit_json(table, capsys)
    assert payload["rows"] == len(WIDTHS) * len(TOKENS) * len(BATCHES) * len(LR_STEPS)
    assert payload["groups"] == len(WIDTHS) * len(TOKENS)
    assert set(payload["lr"]["exponents"]) == {"N", "D"} and set(payload["batch_size"]["exponents"]) == {"D"}
    assert_recovers_truth(payload)
    # The text output names both laws with their intervals and the trend.
    assert main(["fit", "--csv", table, "--law", "lr_batch", *COLUMNS, "--bootstrap", "100"]) == 0
    text = capsys.readouterr().out
    assert "eta_opt(N, D): eta_opt = " in text and " N^-0." in text and "B_opt(D):" in text
    assert "LR vs batch:   flat" in text


def test_our_own_export_round_trips_through_fit_lr_batch(tmp_path, capsys):
    """A ledger of the same simulated runs (plus diverged ones), exported by `proxyscale export`, gives the same law."""
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    specs = grid_specs()
    too_high = [RunSpec(model=specs[0].model, simulated=TRUTH,
                        train=TrainSpec(lr=0.5, tokens=TOKENS[0], batch_tokens=b, warmup_steps=5,
                                        eval_interval_tokens=TOKENS[0])) for b in BATCHES[:2]]
    ledger = Ledger(tmp_path / "sweep" / "ledger.sqlite")
    ledger.register("table", specs + too_high, plan_rows(specs + too_high))
    for spec in specs + too_high:
        result = simulate_run(spec)
        ledger.finish(spec.run_id(), result.to_dict(), {})
    ledger.close()
    csv = tmp_path / "export.csv"
    assert main(["export", str(tmp_path / "sweep"), "-o", str(csv)]) == 0
    exported = pd.read_csv(csv)
    assert (exported["status"] == "diverged").sum() == 2 and exported["final_eval_loss"].isna().sum() == 2
    capsys.readouterr()
    payload = fit_json(str(csv), capsys)
    assert payload["rows_without_loss"] == 2  # the diverged runs: no loss to compare
    assert_recovers_truth(payload)


def test_a_table_of_5000_runs_fits_in_seconds(tmp_path, capsys):
    import time

    rng = np.random.default_rng(0)
    specs = grid_specs()
    base = pd.DataFrame([{"n": count_parameters(s.model).total, "d": s.train.tokens, "lr": s.train.lr,
                          "b": s.train.batch_tokens} for s in specs])
    copies = -(-5000 // len(base))
    big = pd.concat([base] * copies, ignore_index=True).iloc[:5000]
    big["n"] = big["n"] * np.repeat(np.arange(1, copies + 1), len(base))[:5000]  # more (N, D) groups, same shape
    best = 0.01 * (big["n"] / 1e6) ** -0.7 * (big["d"] / 1e8) ** 0.3
    big["loss"] = (2 + 0.05 * np.log(big["lr"] / best) ** 2 + 0.02 * np.log(big["b"] / 4096) ** 2) \
        * (1 + 0.001 * rng.standard_normal(len(big)))
    path = tmp_path / "big.csv"
    big.to_csv(path, index=False)
    started = time.perf_counter()
    assert main(["fit", "--csv", str(path), "--law", "lr_batch", "--n", "n", "--d", "d", "--lr", "lr", "--batch", "b",
                 "--loss", "loss", "--json"]) == 0
    seconds = time.perf_counter() - started
    payload = json.loads(capsys.readouterr().out)
    assert payload["rows"] == 5000 and payload["lr"] is not None
    assert seconds < 20, f"{seconds:.1f}s for 5,000 runs"  # ~1 s here; 70 s before the bootstrap was vectorised


def test_no_group_with_three_lrs_is_one_line(tmp_path, capsys):
    path = tmp_path / "two_lrs.csv"
    pd.DataFrame({"n_params": [1e6] * 4 + [2e6] * 4, "tokens": [1e8] * 8, "lr": [1e-3, 2e-3] * 4,
                  "batch_size": [1024, 1024, 2048, 2048] * 2, "final_eval_loss": np.linspace(3, 3.1, 8)}).to_csv(path)
    assert main(["fit", "--csv", str(path), "--law", "lr_batch", *COLUMNS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("proxyscale: error: ")
    assert "no (N, D) group has 3+ LRs" in err and "at most 2" in err


def test_a_batch_column_in_mixed_units_names_the_rows_that_look_like_sequences(table, tmp_path, capsys):
    frame = pd.read_csv(table)
    seq_len = 64
    rows = [3, 10, 45]  # two runs of the first (N, D) group and one of the second logged their batch in sequences
    frame.loc[rows, "batch_size"] = frame.loc[rows, "batch_size"] // seq_len
    path = tmp_path / "mixed.csv"
    frame.to_csv(path, index=False)
    assert main(["fit", "--csv", str(path), "--law", "lr_batch", *COLUMNS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--batch" in err and "look like sequences rather than tokens" in err
    assert "3 row(s) (lines 5, 12, 47)" in err  # the file's own lines (header = line 1)


def test_missing_columns_are_named(table, capsys):
    assert main(["fit", "--csv", table, "--law", "lr_batch", "--n", "n_params", "--d", "tokens", "--loss",
                 "final_eval_loss"]) == 2
    assert "give --lr COL --batch COL" in capsys.readouterr().err


def test_the_2100_run_sweeps_dry_run(tmp_path, cli_env, python):
    out = subprocess.run([python, "-m", "proxyscale.orchestrator.cli", "launch", "sweep=lr_batch_large", "--dry-run",
                          f"sweep_dir={tmp_path / 's'}"], capture_output=True, text=True, env=cli_env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "trainer: SIMULATED" in out.stdout and "2100 runs, total compute" in out.stdout
    assert "dry run: nothing started" in out.stdout and not (tmp_path / "s").exists()
