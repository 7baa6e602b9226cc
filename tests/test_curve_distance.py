"""The distance model on the curve laws (issue 31 item 1, gap B): `backtest_curve_forms` holds out the largest 1, 2,
3... sizes of the curve set, fits the growth of the held-out error conformally (the prior on a short ladder, said),
and `fit-schedule`, `fit --curves` and the planner's final estimate floor the target's band at its distance, the
farther of N and D in spans of the ladder (analysis/predictive.py: one mechanism with the final-loss laws)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from proxyscale.analysis.curve_law import wsd_shape
from proxyscale.analysis.curve_planner import CurvePlannerSettings, final_estimate
from proxyscale.analysis.predictive import (
    GROWTH_PRIOR,
    MIN_GROWTH_UNITS,
    backtest_curve_forms,
    carry_to_target,
    fit_curves,
)
from proxyscale.models.spec import SimulatedSpec
from proxyscale.orchestrator.cli import main
from tests.test_curve_law import BATCH, schedule_files, simulated_curves

MANY = (64, 96, 128, 192, 256, 384, 512)


@pytest.fixture(scope="module")
def seven_sizes():
    """A multi-power truth fitted with the Tissue form (misspecified), 7 widths: the ladder measures its own growth."""
    curves = simulated_curves(SimulatedSpec(noise=0.003, curve_form="multipower"), widths=MANY)
    fit, backtest = fit_curves(curves, law="tissue", clock="relative", bootstrap=64)
    return curves, fit, backtest


def at(fit, curves, multiple: float):
    """compute_optimal at the compute of a run `multiple` x the largest size with 20 tokens per parameter."""
    n = multiple * max(c.n_params for c in curves)
    return fit.compute_optimal(6 * n * 20 * n, wsd_shape(decay_fraction=0.2), batch_tokens=BATCH)


def test_the_curve_laws_band_at_the_target_grows_with_the_distance(seven_sizes):
    curves, fit, backtest = seven_sizes
    model = backtest.calibration.distance
    assert model is not None and model.source == "measured" and model.units >= MIN_GROWTH_UNITS
    # Held-out points are scored as a target is: the farther of N and D in spans of their split's ladder.
    assert len(model.distances) and (model.distances >= model.n_distances - 1e-12).all()
    floors, halves = [], []
    for multiple in (1.0, 10.0, 100.0):
        raw = at(fit, curves, multiple)
        carried, out = carry_to_target(backtest.calibration, raw)
        floor = model.half_width(carried.target_distance, noise=False)
        loss = out["loss"]
        # Never narrower than the bootstrap's band, and each side at least the floor at the target's distance.
        assert loss.low <= raw["loss"].low * (1 + 1e-12) and loss.high >= raw["loss"].high * (1 - 1e-12)
        assert np.log(loss.high / loss.value) >= floor * (1 - 1e-9)
        assert np.log(loss.value / loss.low) >= floor * (1 - 1e-9)
        for name in ("n_opt", "d_opt"):  # widened by the same ratio, about the same value
            assert out[name].value == raw[name].value and out[name].low <= raw[name].low
        floors.append(floor)
        halves.append(np.log(loss.high / loss.low) / 2)
        line = carried.line()
        assert "distance: measured at" in line and "target at" in line and "(mean)" in line, line
        payload = carried.as_dict()["distance"]
        assert payload["target_band"] == "law's mean" and payload["target_half_width"] == pytest.approx(floor)
    assert floors[0] < floors[1] < floors[2]
    assert halves[0] < halves[2]


def test_two_sizes_use_the_prior_and_say_so():
    curves = simulated_curves(SimulatedSpec(noise=0.003), widths=(64, 256))
    backtest = backtest_curve_forms(curves, forms=[("tissue", "relative")])
    model = backtest.calibration.distance
    assert model.source == "prior" and model.growth == pytest.approx(GROWTH_PRIOR) and model.units == 0
    line = backtest.lines()[-1]
    assert "no held-out size" in line and "prior from tests/benchmarks/bench_distance.py" in line, line
    assert "4 more sizes would let this ladder measure its own" in line
    fit, _ = fit_curves(curves, law="tissue", clock="relative", bootstrap=64)
    near, far = (carry_to_target(backtest.calibration, at(fit, curves, m)) for m in (1.0, 30.0))
    assert far[0].target_distance > near[0].target_distance
    assert far[0].as_dict()["distance"]["source"] == "prior"
    floor = model.half_width(far[0].target_distance, noise=False)
    assert np.log(far[1]["loss"].high / far[1]["loss"].value) >= floor * (1 - 1e-9)


def test_fit_schedule_floors_a_larger_sizes_band_and_says_the_distance(tmp_path, capsys):
    fitting, predicting = schedule_files(tmp_path, SimulatedSpec(noise=0.002))
    argv = ["fit-schedule", "--fit", *fitting, "--predict", *predicting, "--law", "tissue", "--batch-tokens",
            str(BATCH), "--warmup-steps", "20", "--bootstrap", "64"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    distance = out["calibration"]["distance"]
    assert distance["source"] == "prior" and distance["more_sizes_for_own"] == 3  # 3 sizes: no split keeps 3
    assert distance["target_n_ratio"] > 1.5 and distance["target_half_width"] > distance["noise"]
    assert distance["target_band"] == "measured loss"
    assert out["predict_coverage"]["median_width_after"] >= out["predict_coverage"]["median_width_before"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "distance: no held-out size" in text and "target at" in text and "3 more sizes" in text, text


def test_the_planners_final_estimate_is_carried_to_its_target(seven_sizes):
    curves, _, _ = seven_sizes
    n = 30 * max(c.n_params for c in curves)
    settings = CurvePlannerSettings(target_flops=6 * n * 20 * n, target_schedule=wsd_shape(decay_fraction=0.2),
                                    target_batch_tokens=BATCH, budget_flops=0.0, ensemble=64)
    final = final_estimate(curves, settings, law="tissue")
    assert final.raw is not None and final.calibration is not None
    model = final.calibration.distance
    assert final.calibration.target_distance > 0
    floor = model.half_width(final.calibration.target_distance, noise=False)
    loss = final.calibrated.loss
    assert np.log(loss.high / loss.value) >= floor * (1 - 1e-9) and np.log(loss.value / loss.low) >= floor * (1 - 1e-9)
    assert final.calibrated.n_opt.low <= final.raw.n_opt.low and final.calibrated.n_opt.high >= final.raw.n_opt.high
    assert "target at" in final.calibration.line()


def test_fit_curves_carries_the_curve_laws_target_and_says_so(tmp_path, capsys):
    """`fit DIR --curves --target-flops`: the curve law's N_opt, D_opt, L(C*) carried to the target's distance (4
    sizes: one held-out size, so the prior), its line and JSON beside the L(N, D) line's."""
    from tests.test_curve_law import _simulated_ledger, ladder_specs

    _simulated_ledger(tmp_path, ladder_specs(SimulatedSpec(noise=0.002), widths=(64, 96, 128, 192)))
    argv = ["fit", str(tmp_path), "--curves", "--law", "tissue", "--target-flops", "1e17", "--bootstrap", "64"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    distance = out["curve_law"]["calibration"]["distance"]
    assert distance["source"] == "prior" and distance["more_sizes_for_own"] == 2
    assert distance["target_spans"] > 0 and distance["target_band"] == "law's mean"
    loss = out["curve_law"]["target"]["loss"]
    assert np.log(loss["high"] / loss["value"]) >= distance["target_half_width"] * (1 - 1e-9)
    assert out["curve_law"]["backtest"]["calibration"] == out["curve_law"]["calibration"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if "distance:" in line]
    assert len(lines) == 2 and all("target at" in line for line in lines), lines  # the curve law's and L(N, D)'s
    assert "(mean)" in lines[0] and "2 more sizes would let this ladder measure its own" in lines[0]


def test_a_well_pinned_mean_band_does_not_blow_n_opts_interval_up():
    """Review of issue 31: the law's-mean path (noise=False) divided the growth's band at the target by the members'
    L(C*) band alone, so a loss pinned to +-0.01% at 10x on the prior gave the factor cap (100) and N_opt's +-25%
    became [0.2, 5e18]. Its width is now measured against the runs' noise band, as a measured loss's is."""
    from dataclasses import replace

    from proxyscale.analysis.fit import Interval
    from proxyscale.analysis.predictive import MAX_BAND_FACTOR, Calibration, growth_model

    model = growth_model(np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0), noise=0.005, n_max=1e8,
                         span=np.log(4.0), sizes=2, d_max=1e10, span_d=np.log(10.0), c_max=6e18)
    calibration = replace(Calibration.none("two sizes"), distance=model)
    for half in (1e-4, 1e-3):  # members' L(C*) half-widths far inside a run's noise band (2 z 0.005)
        raw = {"loss": Interval(3.0, 3.0 * np.exp(-half), 3.0 * np.exp(half)),
               "n_opt": Interval(1e9, 0.8e9, 1.25e9), "d_opt": Interval(2e10, 1.6e10, 2.5e10)}
        carried, out = carry_to_target(calibration, raw)
        floor = model.half_width(carried.target_distance, noise=False)
        assert carried.factor == pytest.approx(2 * floor / (2 * model.z * model.noise))
        assert carried.factor < MAX_BAND_FACTOR
        assert np.log(out["loss"].high / out["loss"].value) == pytest.approx(floor)  # the loss keeps its floor
        n_opt = out["n_opt"]
        assert n_opt.low <= 0.8e9 and n_opt.high >= 1.25e9 and 1e7 < n_opt.low and n_opt.high < 1e11
