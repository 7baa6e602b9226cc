"""The Python API (proxyscale/api.py): the fits a notebook calls, the same numbers as the commands.

The sweep-directory half (`recommend`, `fit` on a directory, `open_sweep`) is checked against the commands on a
real closed-loop sweep in tests/test_closed_loop.py; here, the table fits and the bad input.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import proxyscale

ROOT = Path(__file__).resolve().parent.parent
CHINCHILLA = ROOT.parent / "shared" / "data" / "chinchilla_epoch" / "svg_extracted_data.csv"
TRUTH = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}


def known_law_table(noise: float = 0.003, seed: int = 0) -> pd.DataFrame:
    """Final losses of a known L(N, D) on a 5 x 5 ladder, with log-normal noise."""
    rng = np.random.default_rng(seed)
    n, d = (v.ravel() for v in np.meshgrid(np.geomspace(1e7, 4e8, 5), np.geomspace(2e8, 2e10, 5)))
    loss = TRUTH["E"] + TRUTH["A"] / n ** TRUTH["alpha"] + TRUTH["B"] / d ** TRUTH["beta"]
    return pd.DataFrame({"params": n, "tokens": d, "loss": loss * np.exp(rng.normal(0, noise, len(n)))})


def test_fit_recovers_a_known_law_and_predicts_it_within_its_interval():
    table = known_law_table()
    fit = proxyscale.fit(table, n="params", d="tokens", loss="loss", bootstrap=100)
    assert abs(fit.parameters["E"].value - TRUTH["E"]) < 0.1
    assert fit.parameters["alpha"].low <= fit.parameters["alpha"].value <= fit.parameters["alpha"].high
    n, d = 2e9, 4e10  # 5x the largest N fitted
    truth = TRUTH["E"] + TRUTH["A"] / n ** TRUTH["alpha"] + TRUTH["B"] / d ** TRUTH["beta"]
    predicted = fit.predict(n=n, d=d)
    assert predicted.low <= truth <= predicted.high and abs(predicted.value / truth - 1) < 0.02
    optimal = fit.compute_optimal(1e21)
    assert optimal["n_opt"].low <= optimal["n_opt"].value <= optimal["n_opt"].high
    assert fit.to_dict(1e21)["calibration"]["split"]  # the backtest that scales the intervals, said


def test_fit_gives_the_same_numbers_as_the_command(tmp_path):
    table = known_law_table(seed=1)
    table.to_csv(tmp_path / "t.csv", index=False)
    cli = subprocess.run([sys.executable, "-m", "proxyscale", "fit", "--csv", str(tmp_path / "t.csv"), "--n", "params",
                          "--d", "tokens", "--loss", "loss", "--bootstrap", "40", "--target-flops", "1e21", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    printed = json.loads(cli.stdout)
    api = proxyscale.fit(tmp_path / "t.csv", n="params", d="tokens", loss="loss", bootstrap=40).to_dict(1e21)
    for key in ("parameters", "target", "calibration", "n_opt_exponent", "objective"):
        assert json.loads(json.dumps(api[key])) == printed[key], key


@pytest.mark.skipif(not CHINCHILLA.exists(), reason=f"published data not here: {CHINCHILLA} (../shared/data)")
def test_fit_reproduces_the_published_chinchilla_refit():
    table = pd.read_csv(CHINCHILLA)
    table["D"] = table["Training FLOP"] / (6 * table["Model Size"])
    fit = proxyscale.fit(table, n="Model Size", d="D", loss="loss", drop_highest_loss=5, bootstrap=0, calibrate=False)
    assert fit.n_points == 240
    assert abs(fit.parameters["E"].value / 1.817 - 1) < 0.01
    assert abs(fit.parameters["alpha"].value - 0.3473) < 0.005 and abs(fit.parameters["beta"].value - 0.3672) < 0.005


def test_isoflop_and_overtraining_through_the_same_call():
    table = known_law_table(seed=2)
    table["flops"] = 6 * table["params"] * table["tokens"]
    over = proxyscale.fit(table, n="params", d="tokens", loss="loss", law="overtraining", bootstrap=20, calibrate=False)
    assert {"E", "eta", "m_opt"} <= set(over.parameters)
    assert over.compute_optimal(1e21)["loss"].value > over.parameters["E"].value
    with pytest.raises(ValueError, match="enough|budgets"):  # approach 2 on a table with no isoFLOP profile
        proxyscale.fit(table, n="params", d="tokens", flops="flops", loss="loss", law="isoflop", bootstrap=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": "params", "d": "tokens", "loss": "nope"}, "no column 'nope'"),
    ({"n": "params", "loss": "loss"}, "give loss= and n= and d="),
    ({"n": "params", "d": "tokens", "loss": "loss", "law": "kaplan"}, "law: 'kaplan' is not one of"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    with pytest.raises((proxyscale.SpecError, ValueError), match=message):
        proxyscale.fit(known_law_table(), bootstrap=0, **kwargs)


def test_open_sweep_refuses_a_directory_without_a_ledger(tmp_path):
    with pytest.raises(proxyscale.SpecError, match="holds no ledger.sqlite"):
        proxyscale.open_sweep(tmp_path)


def test_importing_proxyscale_loads_nothing_heavy():
    """A notebook's `import proxyscale` costs nothing until a function is called: no torch, Ray, W&B or SciPy."""
    code = ("import sys, proxyscale; heavy = {'torch', 'ray', 'wandb', 'scipy', 'hydra'} & set(sys.modules); "
            "print(sorted(heavy)); print(proxyscale.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    heavy, version = out.stdout.splitlines()
    assert heavy == "[]" and version == "0.1.0"
