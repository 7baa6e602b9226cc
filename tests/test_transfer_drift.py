"""The LR-transfer drift estimator (analysis.lr_transfer.fit_transfer): a known drift recovered from simulated
noisy bowls, its interval's coverage over many simulated sweeps, the grid advice, and `transfer --json`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from proxyscale.analysis.lr_transfer import GRID_STEP, fit_transfer

WIDTHS = (32.0, 64.0, 128.0, 256.0)
FINE_GRID = 1e-2 * 1.41 ** np.arange(-7, 8)  # neighbours 1.41x apart, 0.9e-3 .. 0.11


def bowls(rng, drift: float, *, sigma: float, seeds: int = 1, grid=FINE_GRID, curvature: float = 0.05,
          skew: float = 0.0, seed_levels: float = 0.0):
    """Simulated sweep: loss = 2.3 + curvature u^2 + skew u^3 (u = ln(LR / LR_opt)), LR_opt = 0.01 (w / 64)^drift,
    plus Gaussian noise of `sigma` per run; `seeds` runs per (width, LR), each seed of a width shifted by its own
    level (normal, sd `seed_levels`: another data order or init). Returns (width, lr, loss, seed)."""
    width = np.repeat(WIDTHS, len(grid) * seeds)
    lr = np.tile(np.repeat(grid, seeds), len(WIDTHS))
    seed = np.tile(np.arange(seeds), len(grid) * len(WIDTHS))
    u = np.log(lr / (1e-2 * (width / 64) ** drift))
    level = seed_levels * rng.standard_normal((len(WIDTHS), seeds))[np.searchsorted(WIDTHS, width), seed]
    loss = 2.3 + curvature * u**2 + skew * u**3 + level + sigma * rng.standard_normal(len(width))
    return width, lr, loss, seed


def fit_sweep(sweep, **kwargs):
    width, lr, loss, seed = sweep
    return fit_transfer(width, lr, loss, seeds=seed, **kwargs)


@pytest.mark.parametrize("drift", [0.0, -1.0])
@pytest.mark.parametrize("seeds", [1, 3])
def test_a_known_drift_is_recovered_from_noisy_bowls(drift, seeds):
    fit = fit_sweep(bowls(np.random.default_rng(7), drift, sigma=0.004, seeds=seeds), bootstrap=400)
    assert fit.drift.value == pytest.approx(drift, abs=0.1)
    assert fit.drift.low <= drift <= fit.drift.high
    assert fit.drift.high - fit.drift.low < 0.4
    # Each width's optimum where the truth puts it (within 15%).
    for width, lr in fit.lr_opt.items():
        assert lr == pytest.approx(1e-2 * (width / 64) ** drift, rel=0.15)
    # The noise: from the seeds' spread when there are repeats, else the fits' residuals; near the truth (0.004).
    assert fit.noise == pytest.approx(0.004, rel=0.5)
    assert fit.noise_source == ("repeated seeds (each seed's own level removed)" if seeds > 1
                                else "residuals of the local fits (no repeated seeds)")
    assert fit.seeds == seeds


def test_a_skewed_bowl_is_read_near_its_minimum_not_balanced_across_a_wide_grid():
    """A bowl steeper on the high-LR side (as real ones are): a parabola through all 15 LRs (100x apart) would put
    the vertex low; the local fit stays near the true minimum at every width."""
    fit = fit_sweep(bowls(np.random.default_rng(3), 0.0, sigma=0.0, skew=0.01), bootstrap=50)
    truth_minimum = 1e-2  # d/du (0.05 u^2 + 0.01 u^3) = 0 at u = 0
    for lr in fit.lr_opt.values():
        assert lr == pytest.approx(truth_minimum, rel=0.1)
    assert abs(fit.drift.value) < 0.02


def test_the_interval_covers_at_its_stated_rate():
    """200 simulated sweeps per case (drift 0 and -1; one seed and two): the 95% interval holds the truth in
    90-99% of them (the binomial spread at 95% over 200 is +-1.5%)."""
    for drift, seeds in ((0.0, 1), (-1.0, 1), (0.0, 2)):
        rng = np.random.default_rng(11 if seeds == 1 else 12)
        hits = []
        for replication in range(200):
            fit = fit_sweep(bowls(rng, drift, sigma=0.006, seeds=seeds), bootstrap=200, seed=replication)
            hits.append(fit.drift.low <= drift <= fit.drift.high)
        assert 0.90 <= np.mean(hits) <= 0.99, (drift, seeds, np.mean(hits))


def test_a_seed_that_shifts_its_whole_bowl_is_not_noise_of_the_optimum():
    """Each seed of a width shifted by its own level (sd 0.3, 50x the noise: another data order or init): the
    noise is read with the levels removed, and the interval is as narrow as without them."""
    shifted = fit_sweep(bowls(np.random.default_rng(4), 0.0, sigma=0.006, seeds=2, seed_levels=0.3), bootstrap=300)
    plain = fit_sweep(bowls(np.random.default_rng(4), 0.0, sigma=0.006, seeds=2), bootstrap=300)
    assert shifted.noise == pytest.approx(0.006, rel=0.4)
    assert shifted.drift.high - shifted.drift.low < 1.5 * (plain.drift.high - plain.drift.low)
    assert shifted.drift.low <= 0.0 <= shifted.drift.high


def test_seeds_added_near_the_optimum_do_not_move_it_by_their_own_level():
    """Two seeds at every LR, four more at the 5 LRs nearest the optimum only (what `transfer` asks for), the
    added seeds 0.15 nats worse at every width (a seed's data order is shared across widths): a plain mean per
    LR would rank the edge LRs, which lack the worse seeds, best (runs/transfer_depth did); the seed-adjusted
    level keeps each width's optimum where the truth puts it and the drift at 0."""
    grid = 1e-2 * 1.41 ** np.arange(-3, 4)
    width, lr, loss, seed = bowls(np.random.default_rng(11), 0.0, sigma=0.0, seeds=6, grid=grid, curvature=0.03)
    keep = (seed < 2) | (np.abs(np.log(lr / 1e-2)) < 2.5 * np.log(1.41))
    loss = loss + 0.15 * (seed >= 2)
    sweep = (width[keep], lr[keep], loss[keep], seed[keep])
    fit = fit_sweep(sweep, bootstrap=50)
    for lr_opt in fit.lr_opt.values():
        assert lr_opt == pytest.approx(1e-2, rel=0.05)
    assert abs(fit.drift.value) < 0.02
    assert not any("grid's highest LR" in a or "grid's lowest LR" in a for a in fit.advice)


def test_noise_free_bowls_give_a_point_and_no_advice():
    fit = fit_sweep(bowls(np.random.default_rng(0), -1.0, sigma=0.0, seeds=2), bootstrap=50)
    assert fit.drift.high - fit.drift.low < 1e-9 and fit.drift.value == pytest.approx(-1.0, abs=0.02)
    assert fit.noise == pytest.approx(0.0, abs=1e-12) and fit.advice == ()


def test_a_coarse_grid_gets_the_lrs_to_add():
    """LRs 3.16x apart (the old mup_transfer grid): the advice names the LRs that split the gaps next to each
    optimum into steps of at most 1.5x; an optimum at the grid's edge gets the LRs beyond it."""
    coarse = np.array([1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1])
    fit = fit_sweep(bowls(np.random.default_rng(1), 0.0, sigma=0.002, grid=coarse), bootstrap=100)
    coarse_lines = [line for line in fit.advice if "too coarse" in line]
    assert len(coarse_lines) == len(WIDTHS)
    line = coarse_lines[0]
    assert line.startswith("width 32:") and "add LRs" in line
    added = [float(v) for v in line.split("add LRs ")[1].split(", ")]
    # Around the best LR 0.01: 3.16x = 1.47^3 on each side, so two LRs in each gap, all steps <= 1.5x.
    assert len(added) == 4
    merged = np.sort(np.concatenate([coarse, added]))
    near = merged[(merged >= 3.16e-3 * 0.999) & (merged <= 3.16e-2 * 1.001)]
    assert np.all(near[1:] / near[:-1] <= GRID_STEP * 1.01)
    # An optimum below the grid: the LRs beyond its lowest point.
    edge = fit_sweep(bowls(np.random.default_rng(1), -1.0, sigma=0.002, grid=FINE_GRID[6:]), bootstrap=50)
    below = [line for line in edge.advice if "grid's lowest LR" in line]
    assert below and below[-1].startswith("width 256:")
    lowest = FINE_GRID[6]
    added = [float(v) for v in below[-1].split("add LRs ")[1].split(", ")]
    assert all(v < lowest for v in added) and max(added) == pytest.approx(lowest / 1.41, rel=0.01)
    # A fine grid around every optimum: no grid advice.
    fine = fit_sweep(bowls(np.random.default_rng(1), 0.0, sigma=0.002, seeds=2), bootstrap=50)
    assert not [line for line in fine.advice if "add LRs" in line]


def test_a_wide_interval_says_how_many_seeds_would_narrow_it():
    fit = fit_sweep(bowls(np.random.default_rng(5), 0.0, sigma=0.03, seeds=2), bootstrap=200)
    half = (fit.drift.high - fit.drift.low) / 2
    assert half > 0.15
    line = next(line for line in fit.advice if "seeds per LR" in line)
    assert f"+-{half:.2f}" in line and "(now 2)" in line


def test_transfer_json_carries_the_drift_per_parametrization(tmp_path, capsys):
    """`proxyscale transfer DIR --json`: {"parametrizations": {name: {"drift": {value, low, high}, ...}}}, from a
    ledger of simulated sp (LR_opt ~ 1/width) and mup (flat) runs with two seeds each."""
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.cli import main
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    grid = 1e-2 * 1.41 ** np.arange(-6, 5)
    specs = [RunSpec(model=ModelSpec(width=w, n_heads=2, parametrization=p, base_width=32),
                     train=TrainSpec(lr=float(lr), tokens=2**17, batch_tokens=4096, seed=s))
             for p in ("sp", "mup") for w in (32, 64, 128) for lr in grid for s in (0, 1)]
    rng = np.random.default_rng(0)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        rows = plan_rows(specs)
        ledger.register("transfer", specs, rows)
        for spec, row in zip(specs, rows, strict=True):
            lr_opt = 1e-2 * 32 / spec.model.width if spec.model.parametrization == "sp" else 5e-3
            loss = float(2.3 + 0.05 * np.log(spec.train.lr / lr_opt) ** 2 + 0.003 * rng.standard_normal())
            ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"],
                                          "flops": row["flops"], "initial_eval_loss": 5.5, "final_eval_loss": loss,
                                          "best_eval_loss": loss, "wall_seconds": 1.0, "train_seconds": 1.0,
                                          "data_hash": "x"}, {})
    assert main(["transfer", str(tmp_path), "--bootstrap", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = out["parametrizations"]
    assert set(by_name) == {"sp", "mup"}
    sp, mup = by_name["sp"]["drift"], by_name["mup"]["drift"]
    assert set(sp) == {"value", "low", "high"}
    assert sp["high"] < 0 and sp["low"] <= -1.0 <= sp["high"]
    assert mup["low"] <= 0.0 <= mup["high"] and by_name["mup"]["verdict"] == "transfers"
    assert by_name["sp"]["noise"]["source"].startswith("repeated seeds") and by_name["sp"]["seeds"] == 2
    assert main(["transfer", str(tmp_path), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "loss noise" in text and "from repeated seeds" in text


def test_lr_sensitivity_averages_the_seeds_of_an_lr_first():
    from proxyscale.analysis.lr_transfer import lr_sensitivity_of_runs

    # Two seeds at each of 3 LRs; one seed of the largest LR diverged (counts as L_init = 5.0).
    lrs = [1e-3, 1e-3, 1e-2, 1e-2, 1e-1, 1e-1]
    losses = [2.2, 2.4, 2.0, 2.2, 3.0, float("nan")]
    means = np.array([2.3, 2.1, 4.0])
    assert lr_sensitivity_of_runs(lrs, losses, 5.0) == pytest.approx(np.mean(means - means.min()))


def test_a_seed_per_run_does_not_collapse_the_interval():
    """Every run with its own seed (seeds = arange(n), not crossed with the LRs): a level per seed would fit
    every run exactly and leave no quadratic, so such seeds share the common level; the interval is about as
    wide as with no seeds at all (and still holds the truth)."""
    width, lr, loss, _ = bowls(np.random.default_rng(9), 0.0, sigma=0.006)
    plain = fit_transfer(width, lr, loss, bootstrap=300)
    distinct = fit_transfer(width, lr, loss, seeds=np.arange(len(loss)), bootstrap=300)
    plain_width = plain.drift.high - plain.drift.low
    distinct_width = distinct.drift.high - distinct.drift.low
    assert plain_width > 0.01
    assert 0.5 * plain_width <= distinct_width <= 2.0 * plain_width, (plain.drift, distinct.drift)
    assert distinct.noise == pytest.approx(plain.noise, rel=0.5)
    assert distinct.drift.low <= 0.0 <= distinct.drift.high


def test_report_reads_a_depth_study_along_depth_with_each_depth_correction_its_own_setting(tmp_path):
    """A ledger of CompleteP (alpha 1, LR_opt fixed) and Depth-muP (alpha 1/2, LR_opt doubling per doubling of depth)
    at one width, depths 2 / 4 / 8, 5 LRs, 2 seeds: `report` tables and fits them along depth, the two alphas apart
    (they share the name completep), and finds the drift where it is."""
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.report import build_report
    from proxyscale.orchestrator.sweep import plan_rows

    rng = np.random.default_rng(5)
    grid = 1e-2 * 1.41 ** np.arange(-4, 7)
    specs = [RunSpec(model=ModelSpec(width=32, depth=depth, n_heads=2, parametrization="completep", depth_alpha=alpha),
                     train=TrainSpec(lr=float(lr), tokens=2**15, batch_tokens=1024, seed=s))
             for alpha in (1.0, 0.5) for depth in (2, 4, 8) for lr in grid for s in (0, 1)]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        rows = plan_rows(specs)
        ledger.register("transfer_depth", specs, rows)
        for spec, row in zip(specs, rows, strict=True):
            lr_opt = 1e-2 * (spec.model.depth / 2) ** (0.0 if spec.model.depth_alpha == 1.0 else 1.0)
            loss = float(3.0 + 0.05 * math.log(spec.train.lr / lr_opt) ** 2 + 0.002 * rng.standard_normal())
            ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"],
                                          "flops": row["flops"], "initial_eval_loss": 6.2, "final_eval_loss": loss,
                                          "best_eval_loss": loss, "wall_seconds": 1.0, "train_seconds": 1.0,
                                          "data_hash": "x"}, {})
    report, _, _ = build_report(tmp_path, target_flops=None, bootstrap=100)
    body = report.read_text()
    assert "transfer across depth" in body and "| setting | depth |" in body
    drifts = {line.split(" | ")[0].lstrip("| "): line for line in body.splitlines() if "drift of log LR_opt vs log depth" in line}
    assert set(drifts) == {"completep", "completep alpha 0.5"}
    assert "(transfers)" in drifts["completep"] and "(drifts)" in drifts["completep alpha 0.5"]


def _ledger_of(path, runs):
    """A ledger of finished runs: runs = [(RunSpec, loss)], initial eval loss 5.5."""
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    specs = [spec for spec, _ in runs]
    with Ledger(path / "ledger.sqlite") as ledger:
        rows = plan_rows(specs)
        ledger.register("transfer", specs, rows)
        for (_, loss), row in zip(runs, rows, strict=True):
            ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"],
                                          "flops": row["flops"], "initial_eval_loss": 5.5, "final_eval_loss": loss,
                                          "best_eval_loss": loss, "wall_seconds": 1.0, "train_seconds": 1.0,
                                          "data_hash": "x"}, {})


def test_sensitivity_and_best_loss_are_read_at_the_drifts_budget_not_pooled_over_budgets(tmp_path, capsys):
    """A sweep with a full LR grid at one budget and a few runs at a shorter one: the LR sensitivity, its slope
    and the best loss per width are those of the full budget alone (pooled, the short runs' higher losses at two
    LRs would widen every width's bowl), and the output says which budget it read and how many runs it left out."""
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.cli import main

    grid = 1e-2 * 1.41 ** np.arange(-3, 4)
    rng = np.random.default_rng(1)

    def run(width, lr, seed, tokens, extra=0.0):
        spec = RunSpec(model=ModelSpec(width=width, n_heads=2, parametrization="mup", base_width=32),
                       train=TrainSpec(lr=float(lr), tokens=tokens, batch_tokens=4096, seed=seed))
        return spec, float(2.3 + extra + 0.05 * np.log(lr / 5e-3) ** 2 + 0.002 * rng.standard_normal())

    full = [run(w, lr, s, 2**18) for w in (32, 64, 128) for lr in grid for s in (0, 1)]
    short = [run(w, lr, s, 2**17, extra=0.4) for w in (32, 64, 128) for lr in grid[[0, -1]] for s in (0, 1)]
    (tmp_path / "full").mkdir()
    (tmp_path / "mixed").mkdir()
    _ledger_of(tmp_path / "full", full)
    _ledger_of(tmp_path / "mixed", full + short)
    outs = {}
    for name in ("full", "mixed"):
        assert main(["transfer", str(tmp_path / name), "--bootstrap", "50", "--json"]) == 0
        outs[name] = json.loads(capsys.readouterr().out)["groups"][0]
    for key in ("sensitivity", "best_loss", "sensitivity_slope", "lr_opt"):
        assert outs["mixed"][key] == outs["full"][key], key
    assert outs["mixed"]["read_at"] == {"tokens": 2**18, "batch_size": outs["mixed"]["read_at"]["batch_size"],
                                        "runs": len(full), "other_runs": len(short)}
    assert outs["full"]["read_at"]["other_runs"] == 0
    assert main(["transfer", str(tmp_path / "mixed"), "--bootstrap", "50"]) == 0
    assert f"{len(short)} at other budgets or batch sizes left out" in capsys.readouterr().out
