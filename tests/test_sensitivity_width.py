"""LR sensitivity against width (Wortsman et al. 2023; analysis.lr_transfer.sensitivity_slope): a known slope (0 and
positive) recovered from simulated loss bowls with noise, the interval's coverage at its stated rate (the slope
and the difference of two settings' slopes), and `transfer --json` / `report` on a ledger of such runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from proxyscale.analysis.lr_transfer import (
    sensitivity_by_seed,
    sensitivity_slope,
    sensitivity_verdict,
    slope_difference,
)

WIDTHS = (16.0, 32.0, 64.0, 128.0)
GRID = 1e-2 * math.sqrt(10) ** np.arange(-3, 4)  # 7 LRs 3.16x apart around LR_opt = 0.01, as the sweep's
U2 = float(np.mean(np.log(GRID / 1e-2) ** 2))  # mean u^2 over the grid: sensitivity = curvature * U2 (noise-free)


def bowls(rng, growth: float, *, sigma: float, seeds: int = 2, curvature: float = 0.08, seed_levels: float = 0.05):
    """Simulated sweep: loss = 3.0 + c(w) u^2 + level(seed) + noise, u = ln(LR / 0.01), c(w) = curvature +
    growth * log2(w / 16): the noise-free sensitivity grows by growth * U2 per doubling. Each (width, seed) has
    its own level (another init or data order shifts the whole bowl). Returns (width, seed, lr, loss, initial)."""
    width = np.repeat(WIDTHS, len(GRID) * seeds)
    seed = np.tile(np.repeat(np.arange(seeds), len(GRID)), len(WIDTHS))
    lr = np.tile(GRID, len(WIDTHS) * seeds)
    c = curvature + growth * np.log2(width / 16)
    level = seed_levels * rng.standard_normal((len(WIDTHS), seeds))[np.searchsorted(WIDTHS, width), seed]
    loss = 3.0 + c * np.log(lr / 1e-2) ** 2 + level + sigma * rng.standard_normal(len(width))
    return width, seed, lr, loss, np.full(len(width), 99.0)  # L_init far above: the cap never binds


def fit(sweep):
    return sensitivity_slope(sensitivity_by_seed(*sweep))


@pytest.mark.parametrize("growth", [0.0, 0.01])
def test_a_known_slope_is_recovered_from_noisy_bowls(growth):
    found = fit(bowls(np.random.default_rng(3), growth, sigma=0.01))
    truth = growth * U2
    assert found.slope.value == pytest.approx(truth, abs=0.01)
    assert found.slope.low <= truth <= found.slope.high
    assert found.noise_source == "seeds" and found.noise_dof == len(WIDTHS)  # 2 seeds: 1 dof per width
    assert sorted(found.sensitivity) == list(WIDTHS) and all(len(v) == 2 for v in found.sensitivity.values())
    if growth:  # 0.01 * U2 = 0.023 per doubling against a standard error near 0.004: the interval excludes 0
        assert found.slope.low > 0


def test_the_intervals_cover_at_their_stated_rate():
    """300 simulated sweeps of 2 seeds: the 95% interval of the slope, and of the difference of two settings'
    slopes (one growing, one flat, different noise), hold the truth in 92-98.5% of them."""
    rng = np.random.default_rng(11)
    slope_hits = diff_hits = 0
    n = 300
    for _ in range(n):
        growing = fit(bowls(rng, 0.01, sigma=0.01))
        flat = fit(bowls(rng, 0.0, sigma=0.02))
        slope_hits += growing.slope.low <= 0.01 * U2 <= growing.slope.high
        diff = slope_difference(growing, flat)
        diff_hits += diff.low <= 0.01 * U2 <= diff.high
    assert 0.92 <= slope_hits / n <= 0.985
    assert 0.92 <= diff_hits / n <= 0.985


def test_noise_free_sensitivities_give_a_point_and_the_verdicts():
    growing = fit(bowls(np.random.default_rng(0), 0.01, sigma=0.0, seed_levels=0.0))
    flat = fit(bowls(np.random.default_rng(0), 0.0, sigma=0.0, seed_levels=0.3))  # seed levels cancel
    assert growing.slope.value == pytest.approx(0.01 * U2) and growing.slope.high == pytest.approx(0.01 * U2)
    assert flat.slope.value == pytest.approx(0.0, abs=1e-12) and flat.noise == pytest.approx(0.0, abs=1e-12)
    diff = slope_difference(growing, flat)
    assert sensitivity_verdict(growing.slope, diff) == "reproduced"
    assert sensitivity_verdict(flat.slope, slope_difference(flat, growing)) == "refuted"


def test_one_seed_uses_the_residuals_and_a_seed_missing_an_lr_is_left_out():
    width, seed, lr, loss, initial = bowls(np.random.default_rng(5), 0.01, sigma=0.01)
    one = fit(tuple(v[seed == 0] for v in (width, seed, lr, loss, initial)))
    assert one.noise_source == "residuals" and one.noise_dof == len(WIDTHS) - 2
    keep = ~((width == 64) & (seed == 1) & (lr == GRID[0]))  # seed 1 lost one LR at width 64
    partial = sensitivity_by_seed(width[keep], seed[keep], lr[keep], loss[keep], initial[keep])
    assert set(partial[64.0]) == {0} and set(partial[32.0]) == {0, 1}
    # A diverged run counts as L_init (Wortsman's cap): it raises that seed's sensitivity.
    diverged = loss.copy()
    diverged[(width == 32) & (seed == 0) & (lr == GRID[-1])] = float("nan")
    assert sensitivity_by_seed(width, seed, lr, diverged, initial)[32.0][0] > partial[32.0][0] + 10


def test_the_high_side_separates_a_growing_high_lr_side_from_a_shrinking_low_one():
    """Bowls whose high-LR side steepens with width while the low side flattens as much (sp's optimum moving
    down in a short run): the full grid's sensitivity stays flat, the side from LR_opt up grows."""
    rng = np.random.default_rng(2)
    width, seed, lr, _, initial = bowls(rng, 0.0, sigma=0.0)
    u = np.log(lr / 1e-2)
    steep = 0.08 + 0.02 * np.log2(width / 16) * np.sign(u)
    loss = 3.0 + steep * u**2 + 0.005 * rng.standard_normal(len(u))
    full = sensitivity_slope(sensitivity_by_seed(width, seed, lr, loss, initial))
    high = sensitivity_slope(sensitivity_by_seed(width, seed, lr, loss, initial, side="high"))
    assert full.slope.low <= 0.0 <= full.slope.high
    truth = 0.02 * float(np.mean(np.log(GRID[3:] / 1e-2) ** 2))  # 4 LRs from the optimum up, of which one at u=0
    assert high.slope.low > 0 and high.slope.value == pytest.approx(truth, rel=0.2)
    with pytest.raises(ValueError, match="side"):
        sensitivity_by_seed(width, seed, lr, loss, initial, side="low")


def _ledger_of_variants(directory, rng):
    """A ledger of 4 variants (baseline, qk-layernorm, z-loss, both) x widths 32/64/128 x 5 LRs x 2 seeds, whose
    bowls steepen with width without qk-layernorm and stay put with it, with attention-logit and log Z probes."""
    from proxyscale.models.spec import ModelSpec, RunSpec, TrainSpec
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    grid = GRID[1:-1]
    specs = [RunSpec(model=ModelSpec(width=w, n_heads=2, qk_layernorm=qk),
                     train=TrainSpec(lr=float(lr), tokens=2**15, batch_tokens=1024, seed=s, z_loss=z))
             for qk, z in ((False, 0.0), (True, 0.0), (False, 1e-4), (True, 1e-4))
             for w in (32, 64, 128) for lr in grid for s in (0, 1)]
    with Ledger(directory / "ledger.sqlite") as ledger:
        rows = plan_rows(specs)
        ledger.register("lr_sensitivity_width", specs, rows)
        for spec, row in zip(specs, rows, strict=True):
            qk, w = spec.model.qk_layernorm, spec.model.width
            curvature = 0.05 + (0.0 if qk else 0.04 * math.log2(w / 32))
            loss = float(3.0 + curvature * math.log(spec.train.lr / 1e-2) ** 2 + 0.005 * rng.standard_normal())
            logit = (8.0 if qk else 30.0 * w / 32) * spec.train.lr / grid[-1]
            probes = {"max_attn_logit": logit, "logz_abs_max": 5.0 + (0.0 if spec.train.z_loss else 0.01 * w)}
            ledger.add_steps(row["run_id"], [{"step": 32, "tokens": 2**15, "lr": spec.train.lr, "train_loss": loss,
                                              "eval_loss": loss, "probes": probes}])
            ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"],
                                          "flops": row["flops"], "initial_eval_loss": 6.2, "final_eval_loss": loss,
                                          "best_eval_loss": loss, "wall_seconds": 1.0, "train_seconds": 1.0,
                                          "data_hash": "x"}, {})


def test_transfer_and_report_carry_the_sensitivity_slopes(tmp_path, capsys):
    from proxyscale.orchestrator.cli import main
    from proxyscale.orchestrator.report import build_report

    _ledger_of_variants(tmp_path, np.random.default_rng(0))
    assert main(["transfer", str(tmp_path), "--axis", "width", "--bootstrap", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    slopes = {(g["qk_layernorm"], g["z_loss"]): g["sensitivity_slope"] for g in out["groups"]}
    assert all(set(s) == {"value", "low", "high"} for s in slopes.values())
    truth = 0.04 * float(np.mean(np.log(GRID[1:-1] / 1e-2) ** 2))  # steepening 0.04 per doubling x mean u^2
    for z in (0.0, 1e-4):
        assert slopes[(False, z)]["low"] <= truth <= slopes[(False, z)]["high"] and slopes[(False, z)]["low"] > 0
        assert slopes[(True, z)]["low"] <= 0.0 <= slopes[(True, z)]["high"]
    differences = out["sensitivity_slope_differences"]
    assert len(differences) == 2 and {d["verdict"] for d in differences} == {"reproduced"}
    assert all("qk_layernorm=False" in d["a"] and "qk_layernorm=True" in d["b"] for d in differences)
    group = out["groups"][0]
    assert group["sensitivity_noise"]["source"] == "seeds" and group["sensitivity_noise"]["dof"] == 3
    assert set(group["sensitivity_by_seed"]["64.0"]) == {"0", "1"}
    assert main(["transfer", str(tmp_path), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "LR sensitivity per doubling of width" in text and text.count("-> Wortsman's claim") == 4
    assert {d["verdict"] for d in out["sensitivity_high_slope_differences"]} == {"reproduced"}
    assert all(g["sensitivity_high_slope"]["low"] > 0 for g in out["groups"] if not g["qk_layernorm"])

    report, figures, _ = build_report(tmp_path, target_flops=None, bootstrap=50)
    body = report.read_text()
    assert body.count("LR sensitivity per doubling of width") == 4 and body.count("**reproduced**") == 4
    assert body.count("LR sensitivity from LR_opt up per doubling of width") == 4
    assert {"sensitivity_width.png", "logits_width.png"} <= {f.name for f in figures}
