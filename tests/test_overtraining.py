"""Gadre et al.'s over-training law L(C, M) (analysis/laws.py) and its fit (analysis/overtraining.py)."""

from __future__ import annotations

import numpy as np
import pytest

from proxyscale.analysis.laws import chinchilla_loss, compute_optimal_allocation, overtraining_loss
from proxyscale.analysis.overtraining import fit_overtraining
from proxyscale.analysis.predictive import log_residuals, predict_loss

ETA = 0.15
TRUTH = {"E": 1.8, "a": 400.0 * 6**ETA, "b": 1200.0 * 6**ETA, "eta": ETA}


def overtraining_sweep(noise: float, seed: int = 0):
    """11 sizes from 1e7 to 3e9 parameters, each at M = 5, 10, ..., 640 tokens per parameter."""
    n = np.repeat(np.logspace(7, 9.5, 11), 8)
    m = np.tile(5.0 * 2.0 ** np.arange(8), 11)
    d = m * n
    loss = overtraining_loss(6 * n * d, m, **TRUTH) * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return n, d, loss


def test_the_law_is_chinchillas_with_equal_exponents():
    n, d = np.array([1e8, 3e9, 7e10]), np.array([2e9, 1e11, 1.4e12])
    chinchilla = chinchilla_loss(n, d, E=TRUTH["E"], A=TRUTH["a"] * 6**-ETA, B=TRUTH["b"] * 6**-ETA,
                                 alpha=2 * ETA, beta=2 * ETA)
    assert overtraining_loss(6 * n * d, d / n, **TRUTH) == pytest.approx(chinchilla, rel=1e-12)
    # At fixed compute the loss is lowest at M* = (b / a)^(1 / (2 eta)).
    m = np.geomspace(1, 1000, 2001)
    m_opt = (TRUTH["b"] / TRUTH["a"]) ** (1 / (2 * ETA))
    assert m[np.argmin(overtraining_loss(1e21, m, **TRUTH))] == pytest.approx(m_opt, rel=0.01)


def test_noise_free_runs_give_back_the_law():
    n, d, loss = overtraining_sweep(noise=0.0)
    fit = fit_overtraining(n, d, loss)
    for name, value in TRUTH.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-4), name
    # Its compute-optimal allocation is Chinchilla's with alpha = beta = 2 eta.
    n_opt, d_opt = compute_optimal_allocation(1e22, A=TRUTH["a"] * 6**-ETA, B=TRUTH["b"] * 6**-ETA,
                                              alpha=2 * ETA, beta=2 * ETA)
    at = fit.compute_optimal(1e22)
    assert at["n_opt"].value == pytest.approx(n_opt, rel=1e-3) and at["d_opt"].value == pytest.approx(d_opt, rel=1e-3)


def test_small_runs_predict_larger_over_trained_runs():
    """Fit on the runs of at most 1e19 FLOPs; predict every run of 3e21 FLOPs or more with M >= 20 (300x to
    3,500x the largest fitted run, up to 3.2e9 parameters at M = 640), measured with 0.2% noise."""
    n, d, loss = overtraining_sweep(noise=0.002)
    c, m = 6 * n * d, d / n
    fitted, target = c <= 1e19, (c >= 3e21) & (m >= 20)
    assert fitted.sum() == 44 and target.sum() == 8 and m[target].max() == 640
    fit = fit_overtraining(n[fitted], d[fitted], loss[fitted], bootstrap=200, seed=0)
    intervals = fit.intervals()
    for name, value in TRUTH.items():
        assert intervals[name].low < value < intervals[name].high, (name, intervals[name])
    assert intervals["m_opt"].low < (TRUTH["b"] / TRUTH["a"]) ** (1 / (2 * ETA)) < intervals["m_opt"].high
    truth = overtraining_loss(c[target], m[target], **TRUTH)
    prediction = predict_loss("overtraining", fit, n[target], d[target],
                              log_residuals("overtraining", fit, n[fitted], d[fitted], loss[fitted]))
    error = np.abs(prediction.value / truth - 1)
    print(f"over-training: mean |error| {error.mean():.4%}, max {error.max():.4%} on {target.sum()} runs; "
          f"eta {intervals['eta']}")
    assert error.mean() < 0.015 and error.max() < 0.015
    # The interval for a measured loss is wider than the law's mean's, and holds the truth of the law here.
    assert np.all(prediction.high - prediction.low > prediction.mean_high - prediction.mean_low)
    assert np.all((prediction.low < truth) & (truth < prediction.high))


def test_fit_command_with_the_overtraining_law(tmp_path, capsys):
    import json

    import pandas as pd

    from proxyscale.orchestrator.cli import main

    n, d, loss = overtraining_sweep(noise=0.002)
    path = tmp_path / "runs.csv"
    pd.DataFrame({"params": n, "tokens": d, "loss": loss}).to_csv(path, index=False)
    assert main(["fit", "--csv", str(path), "--n", "params", "--d", "tokens", "--loss", "loss", "--law", "overtraining",
                 "--bootstrap", "50", "--target-flops", "1e22", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    params = out["parameters"]
    assert params["eta"]["value"] == pytest.approx(ETA, rel=0.03)
    assert params["E"]["low"] < TRUTH["E"] < params["E"]["high"]
    assert params["alpha"]["value"] == params["beta"]["value"] == pytest.approx(2 * params["eta"]["value"])
    assert out["target"]["n_opt"]["low"] < out["target"]["n_opt"]["value"] < out["target"]["n_opt"]["high"]


def test_fit_command_isoflop_window_option(tmp_path, capsys):
    import json

    import pandas as pd

    from proxyscale.orchestrator.cli import main

    n = np.tile(np.logspace(7, 9, 9), 3)
    flops = np.repeat([1e18, 1e19, 1e20], 9)
    loss = chinchilla_loss(n, flops / (6 * n), E=1.7, A=400.0, B=1200.0, alpha=0.34, beta=0.28)
    path = tmp_path / "iso.csv"
    pd.DataFrame({"params": n, "flops": flops, "loss": loss}).to_csv(path, index=False)
    argv = ["fit", "--law", "isoflop", "--csv", str(path), "--n", "params", "--flops", "flops", "--loss", "loss",
            "--bootstrap", "20", "--json"]
    assert main(argv) == 0
    windowed = json.loads(capsys.readouterr().out)
    assert windowed["window"] == 5 and [len(b["sizes_used"]) for b in windowed["budget_points"]] == [5, 5, 5]
    assert main(argv + ["--window", "all"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert everything["window"] is None and [len(b["sizes_used"]) for b in everything["budget_points"]] == [9, 9, 9]
    # At 1e18 the optimum (N* ~ 1.4e7) is next to the smallest size (1e7): flagged only if it is the lowest point.
    assert [b["at_edge"] for b in windowed["budget_points"]] == [b["at_edge"] for b in everything["budget_points"]]
