"""Optimal LR / batch laws, muP transfer drift and LR sensitivity: on synthetic truths and a real ledger."""

from __future__ import annotations

import json

import numpy as np
import pytest

from proxyscale.analysis.lr_batch_law import fit_log_linear, near_optimal_mask
from proxyscale.analysis.lr_grid import optimal_lr
from proxyscale.analysis.lr_transfer import lr_sensitivity, transfer_drift

LR_GRID = np.logspace(-4, -1, 13)


def bowl(lrs, lr_opt, floor=2.0, curvature=0.05):
    """A loss convex in log LR with its minimum at lr_opt."""
    return floor + curvature * np.log(np.asarray(lrs) / lr_opt) ** 2


def test_optimal_lr_interpolates_between_grid_points():
    assert optimal_lr(LR_GRID, bowl(LR_GRID, 2.2e-3)) == pytest.approx(2.2e-3, rel=0.02)
    # At the grid's edge the vertex is not bracketed: the argmin is returned.
    assert optimal_lr(LR_GRID, bowl(LR_GRID, 1.0)) == pytest.approx(LR_GRID[-1])


def test_step_law_exponents_are_recovered_from_near_optimal_runs():
    rng = np.random.default_rng(0)
    rows = []
    for n in (1e7, 3e7, 1e8, 3e8):
        for d in (1e9, 4e9, 1.6e10):
            lr_true = 1.79 * n**-0.713 * d**0.307
            losses = bowl(LR_GRID, lr_true) * (1 + rng.normal(0, 2e-4, LR_GRID.size))
            rows.append((n, d, optimal_lr(LR_GRID, losses)))
    n, d, lr = map(np.array, zip(*rows, strict=True))
    fit = fit_log_linear(np.column_stack([n, d]), lr, bootstrap=200)
    assert fit.exponents[0].value == pytest.approx(-0.713, abs=0.03)
    assert fit.exponents[1].value == pytest.approx(0.307, abs=0.03)
    assert fit.exponents[0].low < fit.exponents[0].value < fit.exponents[0].high


def test_near_optimal_keeps_runs_within_a_quarter_percent_of_their_group():
    groups = np.array(["a", "a", "a", "b", "b"])
    loss = np.array([2.000, 2.004, 2.010, 3.0, 3.01])
    assert near_optimal_mask(groups, loss).tolist() == [True, True, False, True, False]


def test_drift_is_minus_one_when_lr_opt_scales_as_one_over_width_and_zero_when_it_transfers():
    widths = np.repeat([32, 64, 128, 256], LR_GRID.size)
    lrs = np.tile(LR_GRID, 4)
    sp_like = bowl(lrs, 3e-2 * 32 / widths)
    mup_like = bowl(lrs, np.full(lrs.shape, 3e-3))
    _, sp_drift = transfer_drift(widths, lrs, sp_like, bootstrap=50)
    _, mup_drift = transfer_drift(widths, lrs, mup_like, bootstrap=50)
    assert sp_drift.value == pytest.approx(-1.0, abs=0.05)
    assert abs(mup_drift.value) < 0.05


def test_lr_sensitivity_counts_divergence_as_the_initial_loss():
    robust = lr_sensitivity([2.0, 2.0, 2.01, 2.02], initial_loss=5.5)
    fragile = lr_sensitivity([2.0, 2.3, float("nan"), float("nan")], initial_loss=5.5)
    assert robust == pytest.approx(0.0075)
    assert fragile == pytest.approx((0 + 0.3 + 3.5 + 3.5) / 4)


def test_transfer_command_on_a_ledger(tmp_path, capsys):
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.cli import main
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    specs = [RunSpec(model=ModelSpec(width=w, n_heads=2, parametrization=p, base_width=32),
                     train=TrainSpec(lr=float(lr), tokens=2**17, batch_tokens=4096))
             for p in ("sp", "mup") for w in (32, 64, 128) for lr in LR_GRID[4:11]]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rows = plan_rows(specs)
    ledger.register("transfer", specs, rows)
    for spec, row in zip(specs, rows, strict=True):
        lr_opt = 1e-2 * 32 / spec.model.width if spec.model.parametrization == "sp" else 3e-3
        loss = float(bowl(spec.train.lr, lr_opt))
        status = "diverged" if spec.train.lr > 3 * lr_opt else "finished"
        ledger.finish(row["run_id"], {"status": status, "reason": None, "tokens": row["tokens"], "flops": row["flops"],
                                      "initial_eval_loss": 5.5, "final_eval_loss": loss, "best_eval_loss": loss,
                                      "wall_seconds": 1.0, "train_seconds": 1.0, "data_hash": "x"}, {})
    ledger.close()
    assert main(["transfer", str(tmp_path), "--bootstrap", "50", "--target-width", "512", "--json"]) == 0
    groups = {g["parametrization"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert groups["sp"]["drift"]["value"] == pytest.approx(-1.0, abs=0.1)
    assert abs(groups["mup"]["drift"]["value"]) < 0.1
    # sp runs diverge above 3 x LR_opt ~ 1/width: the prediction at width 512 sits below the widths seen.
    sp_at_512 = groups["sp"]["divergence_lr_at_target"]
    assert sp_at_512["value"] < min(groups["sp"]["divergence_lr"].values())


def test_divergence_lr_is_extrapolated_to_a_wider_model():
    from proxyscale.analysis.divergence import divergence_threshold, predict_divergence_lr

    assert divergence_threshold([1e-3, 1e-2, 1e-1], [False, False, True]) == pytest.approx(np.sqrt(1e-3))
    assert divergence_threshold([1e-3, 1e-2], [False, False]) is None
    # Truth: runs diverge above 0.3 * (32 / width); a grid of LRs at four widths.
    grid = np.logspace(-3, 0, 16)
    widths = np.repeat([32, 64, 128, 256], grid.size)
    lrs = np.tile(grid, 4)
    diverged = lrs > 0.3 * 32 / widths
    per_width, at_1024 = predict_divergence_lr(widths, lrs, diverged, target_width=1024, bootstrap=100)
    assert set(per_width) == {32.0, 64.0, 128.0, 256.0}
    truth = 0.3 * 32 / 1024
    assert at_1024.value == pytest.approx(truth, rel=0.35)  # the grid spacing (x1.58) bounds the precision
    assert at_1024.low <= at_1024.value <= at_1024.high


def test_transfer_along_depth_separates_the_depth_parametrisations(tmp_path, capsys):
    """`transfer --axis depth`: one group per depth setting, the drift in depth, and the best loss per depth."""
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.cli import main
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    variants = [("completep", 1.0, False), ("completep", 0.5, False), ("mup", 1.0, True)]
    specs = [RunSpec(model=ModelSpec(width=32, depth=d, n_heads=2, parametrization=p, depth_alpha=a,
                                     layernorm_scaling=ln, base_width=32, base_depth=2),
                     train=TrainSpec(lr=float(lr), tokens=2**17, batch_tokens=4096))
             for p, a, ln in variants for d in (2, 4, 8) for lr in LR_GRID[2:11]]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rows = plan_rows(specs)
    ledger.register("depth_transfer", specs, rows)
    for spec, row in zip(specs, rows, strict=True):
        m = spec.model
        # Truth: CompleteP transfers; Depth-muP's LR_opt falls as depth^-1/2; LN scaling's as depth^-1.
        exponent = {("completep", 1.0): 0.0, ("completep", 0.5): -0.5}.get((m.parametrization, m.depth_alpha), -1.0)
        loss = float(bowl(spec.train.lr, 3e-3 * (m.depth / 2) ** exponent)) - 0.01 * m.depth
        ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"], "flops": row["flops"],
                                      "initial_eval_loss": 5.5, "final_eval_loss": loss, "best_eval_loss": loss,
                                      "wall_seconds": 1.0, "train_seconds": 1.0, "data_hash": "x"}, {})
    ledger.close()
    assert main(["transfer", str(tmp_path), "--axis", "depth", "--bootstrap", "50", "--json",
                 "--plot", str(tmp_path / "depth.png")]) == 0
    assert (tmp_path / "depth.png").stat().st_size > 10_000
    out = json.loads(capsys.readouterr().out)
    assert out["axis"] == "depth"
    groups = {g["label"].split(";")[0]: g for g in out["groups"]}
    assert set(groups) == {"completep (CompleteP, alpha 1)", "completep (Depth-muP, alpha 1/2)",
                           "mup + LayerNorm scaling"}
    assert abs(groups["completep (CompleteP, alpha 1)"]["drift"]["value"]) < 0.1
    assert groups["completep (Depth-muP, alpha 1/2)"]["drift"]["value"] == pytest.approx(-0.5, abs=0.1)
    assert groups["mup + LayerNorm scaling"]["drift"]["value"] == pytest.approx(-1.0, abs=0.1)
    assert groups["completep (CompleteP, alpha 1)"]["drift"]["verdict"] == "transfers"
    assert groups["mup + LayerNorm scaling"]["drift"]["verdict"] == "drifts"
    best = groups["completep (CompleteP, alpha 1)"]["best_loss"]
    assert best["8.0"] < best["4.0"] < best["2.0"]  # deeper is better in this truth
    assert main(["transfer", str(tmp_path), "--axis", "depth", "--bootstrap", "20"]) == 0
    text = capsys.readouterr().out
    assert "drift of log LR_opt vs log depth" in text and "-> the LR transfers" in text and "-> the LR drifts" in text
    assert main(["transfer", str(tmp_path), "--axis", "depth", "--target-width", "512"]) == 2
    assert "--target-width" in capsys.readouterr().err


def test_the_drift_interval_comes_from_the_noise_not_from_dropping_grid_points():
    """Noisy bowls with LR_opt ~ width^-0.5 on a factor-2 grid: the parametric interval holds the truth and
    is not stepped by the grid; noise-free bowls give a point; the verdict reads the interval three ways."""
    from proxyscale.analysis.fit import Interval
    from proxyscale.analysis.lr_transfer import drift_verdict, transfer_drift

    rng = np.random.default_rng(0)
    widths = np.repeat([32.0, 64.0, 128.0, 256.0], 5)
    lrs = np.tile(1e-2 * 2.0 ** np.arange(-2, 3), 4)
    clean = bowl(lrs, 1e-2 * (widths / 64) ** -0.5)
    noisy = clean * (1 + 0.003 * rng.standard_normal(len(clean)))
    _, drift = transfer_drift(widths, lrs, noisy, bootstrap=300)
    assert drift.low < -0.5 < drift.high and drift.high - drift.low < 0.5
    _, exact = transfer_drift(widths, lrs, clean, bootstrap=50)
    assert exact.high - exact.low < 1e-6 and exact.value == pytest.approx(-0.5, abs=0.05)
    assert drift_verdict(drift) == "drifts"
    assert drift_verdict(Interval(0.02, -0.1, 0.2)) == "transfers"
    assert drift_verdict(Interval(0.02, -0.5, 0.4)) == "inconclusive"


def test_transfer_along_depth_reads_each_width_on_its_own(tmp_path, capsys):
    """A sweep over width and depth: `--axis depth` gives one group per width (never pools widths)."""
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.cli import main
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    specs = [RunSpec(model=ModelSpec(width=w, depth=d, n_heads=2, parametrization="mup", base_width=32),
                     train=TrainSpec(lr=float(lr), tokens=2**17, batch_tokens=4096))
             for w in (32, 64) for d in (2, 4) for lr in LR_GRID[4:11]]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        rows = plan_rows(specs)
        ledger.register("grid", specs, rows)
        for spec, row in zip(specs, rows, strict=True):
            # LR_opt halves with depth at width 32 only: pooling the widths would hide half of it.
            lr_opt = 3e-3 * (2 / spec.model.depth if spec.model.width == 32 else 1.0)
            loss = float(bowl(spec.train.lr, lr_opt))
            ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"],
                                          "flops": row["flops"], "initial_eval_loss": 5.5, "final_eval_loss": loss,
                                          "best_eval_loss": loss, "wall_seconds": 1.0, "train_seconds": 1.0,
                                          "data_hash": "x"}, {})
    assert main(["transfer", str(tmp_path), "--axis", "depth", "--bootstrap", "20", "--json"]) == 0
    groups = {g["width"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert set(groups) == {32, 64} and "at width 32" in groups[32]["label"]
    assert groups[32]["drift"]["value"] == pytest.approx(-1.0, abs=0.1)
    assert abs(groups[64]["drift"]["value"]) < 0.1
