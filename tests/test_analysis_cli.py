"""`proxyscale fit` and `proxyscale fit-schedule` on CSV files, through the real console entry point."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis.laws import chinchilla_loss, schedule_areas, schedule_loss
from proxyscale.orchestrator.cli import main


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def finish_with_law(ledger, specs, rows, truth) -> None:
    """Register the runs in the ledger and finish each with the loss the law `truth` gives it."""
    ledger.register("synthetic", specs, rows)
    for row in rows:
        loss = float(chinchilla_loss(row["n_params"], row["tokens"], **truth))
        ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"],
                                      "flops": row["flops"], "initial_eval_loss": 5.5, "final_eval_loss": loss,
                                      "best_eval_loss": loss, "wall_seconds": 1.0, "train_seconds": 1.0,
                                      "data_hash": "x"}, {"host": "test"})


def test_fit_recovers_a_synthetic_law_with_intervals(tmp_path, capsys):
    truth = {"E": 1.7, "A": 400.0, "B": 1200.0, "alpha": 0.33, "beta": 0.30}
    rng = np.random.default_rng(0)
    n = np.repeat(np.logspace(6, 10, 8), 6)
    d = np.tile(np.logspace(8, 12, 6), 8)
    loss = chinchilla_loss(n, d, **truth) * np.exp(rng.normal(0, 0.003, n.size))
    path = tmp_path / "runs.csv"
    pd.DataFrame({"params": n, "tokens": d, "final_loss": loss}).to_csv(path, index=False)
    out = run_json(capsys, ["fit", "--csv", str(path), "--n", "params", "--d", "tokens", "--loss", "final_loss",
                            "--target-flops", "1e21", "--bootstrap", "100", "--json"])
    params = out["parameters"]
    assert set(params) == {"A", "B", "E", "alpha", "beta"}
    # With 0.3% noise on 48 runs: E within 2%, the exponents within 10%, every interval around its estimate.
    assert params["E"]["value"] == pytest.approx(truth["E"], rel=0.02)
    for name in ("alpha", "beta"):
        assert params[name]["value"] == pytest.approx(truth[name], rel=0.1)
    for name, value in params.items():
        assert value["low"] < value["value"] < value["high"], name
    target = out["target"]
    assert target["flops"] == 1e21 and target["n_opt"]["low"] < target["n_opt"]["value"] < target["n_opt"]["high"]


def test_fit_names_a_missing_column(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    pd.DataFrame({"n": [1.0], "loss": [2.0]}).to_csv(path, index=False)
    assert main(["fit", "--csv", str(path), "--n", "N", "--flops", "n", "--loss", "loss"]) == 2
    assert "--n: column 'N' is not in" in capsys.readouterr().err


def test_fit_schedule_predicts_a_synthetic_schedule(tmp_path, capsys):
    truth = {"L0": 2.5, "A": 0.6, "alpha": 0.5, "C": 0.4}

    def write(name, lrs):
        s1, s2 = schedule_areas(lrs)
        steps = np.arange(50, len(lrs) + 1, 50)
        loss = schedule_loss(s1[steps - 1], s2[steps - 1], **truth)
        pd.DataFrame({"step": steps, "lr": lrs[steps - 1], "loss": loss}).to_csv(tmp_path / name, index=False)
        return str(tmp_path / name)

    total = 4000
    constant = np.full(total, 1e-3)
    cosine = 1e-4 + 0.5 * 9e-4 * (1 + np.cos(np.pi * np.arange(total) / total))
    wsd = np.where(np.arange(total) < 3200, 1e-3, np.linspace(1e-3, 1e-4, total)[np.arange(total)])
    out = run_json(capsys, ["fit-schedule", "--fit", write("constant.csv", constant), write("cosine.csv", cosine),
                            "--predict", write("wsd.csv", wsd), "--law", "schedule", "--json"])
    assert out["parameters"]["L0"] == pytest.approx(truth["L0"], rel=0.02)
    assert out["predict_error"]["wsd"] < 0.002


def test_fit_on_a_sweep_directory_reads_the_ledgers_finished_runs(tmp_path, capsys):
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    truth = {"E": 1.5, "A": 60.0, "B": 300.0, "alpha": 0.35, "beta": 0.3}
    specs = [RunSpec(model=ModelSpec(width=w, n_heads=2), train=TrainSpec(tokens=t, batch_tokens=4096, seed=0))
             for w in (16, 32, 64, 128) for t in (2**18, 2**20, 2**22)]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rows = plan_rows(specs)
    finish_with_law(ledger, specs, rows, truth)
    ledger.set_status(rows[0]["run_id"], "failed", error="not counted")  # only finished runs are fitted
    ledger.close()
    out = run_json(capsys, ["fit", str(tmp_path), "--bootstrap", "50", "--json"])
    assert out["n_points"] == 11
    assert out["parameters"]["alpha"]["value"] == pytest.approx(truth["alpha"], rel=0.02)
    assert out["parameters"]["E"]["value"] == pytest.approx(truth["E"], rel=0.01)
    assert not list(tmp_path.glob("*.csv")), "fitting a sweep directory writes nothing into it"


def test_fit_isoflop_on_a_sweep_directory_groups_runs_by_their_flop_budget(tmp_path, capsys):
    """Runs planned at a FLOP budget train whole steps, so their FLOPs differ from it (and from each
    other); `fit DIR --law isoflop` must still see one parabola per budget."""
    from proxyscale.models.flops import flops_per_token
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    truth = {"E": 1.5, "A": 60.0, "B": 300.0, "alpha": 0.35, "beta": 0.3}
    specs = []
    for budget in (1e13, 5e13, 2.5e14):
        for width in (24, 32, 48, 64, 96, 128, 192):
            model = ModelSpec(width=width, n_heads=2)
            tokens = max(1, round(budget / flops_per_token(model) / 4096)) * 4096
            specs.append(RunSpec(model=model, train=TrainSpec(tokens=tokens, batch_tokens=4096, seed=0)))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rows = plan_rows(specs)
    assert len({row["flops"] for row in rows}) == len(rows), "every run's FLOPs differ from its budget"
    finish_with_law(ledger, specs, rows, truth)
    ledger.close()
    out = run_json(capsys, ["fit", str(tmp_path), "--law", "isoflop", "--bootstrap", "50", "--json"])
    assert out["budgets"] == [1e13, 5e13, 2.5e14]
    # N*(C) ~ C^(beta / (alpha + beta)) for this L(N, D); C here includes attention FLOPs, hence 0.05.
    exponent = out["parameters"]["n_opt_exponent"]
    assert exponent["value"] == pytest.approx(truth["beta"] / (truth["alpha"] + truth["beta"]), abs=0.05)
    assert exponent["low"] <= exponent["value"] <= exponent["high"]


def test_json_output_is_strict_json_without_nan_or_infinity():
    import numpy as np

    from proxyscale.orchestrator.commands.common import strict_json as _strict_json

    payload = {"n_opt": {"value": np.float64(2.0), "low": 0.0, "high": float("inf")}, "e": [float("nan"), np.int64(3)]}
    text = json.dumps(_strict_json(payload), allow_nan=False)  # raises if a NaN or an Infinity is left
    assert json.loads(text) == {"n_opt": {"value": 2.0, "low": 0.0, "high": None}, "e": [None, 3]}
