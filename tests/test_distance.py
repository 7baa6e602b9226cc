"""Error against extrapolation distance (issue 31, items 1, 2 and 5): the held-out error's spread grows with the
distance, is carried to the target, falls back on the measured prior on a short ladder and says so, and a bootstrap
collapsed onto E = 0 gives the target's interval from the profile of the objective, with what to run next."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis import predictive
from proxyscale.analysis.predictive import (
    GROWTH_PRIOR,
    backtest_calibration,
    distance_model,
    fit_law,
    log_loss,
    log_residuals,
    predict_loss,
    profile_target,
)
from proxyscale.orchestrator.cli import main

SIZES = np.geomspace(1e7, 1.28e9, 8)
TOKENS_PER_PARAM = np.array([5.0, 10.0, 20.0, 40.0, 80.0])


def overtrained(n, d):
    """A misspecified truth: Gadre et al.'s L(C, M) (the N and D exponents tied through M), fitted as chinchilla."""
    c, m = 6 * n * d, d / n
    return 1.2 + (60 * m**0.15 + 400 * m**-0.15) * c**-0.15


def ladder(sizes=SIZES, *, seed: int = 0, truth=overtrained, noise: float = 0.005):
    n, m = (v.ravel() for v in np.meshgrid(sizes, TOKENS_PER_PARAM))
    d = n * m
    return n, d, truth(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))


def test_the_predicted_spread_at_10x_matches_the_measured_one():
    """On a misspecified truth the ladder of 8 sizes measures its own growth (5 held-out sizes, up to 32x); carried
    to 10x the largest size, sigma(log 10) is within a factor 1.5 of the RMS log error the full fit makes there."""
    predicted, errors = [], []
    for seed in range(3):
        n, d, loss = ladder(seed=seed)
        fit = fit_law("chinchilla", n, d, loss)
        model = distance_model("chinchilla", n, d, loss, fit=fit)
        assert model.source == "measured" and model.units >= predictive.MIN_GROWTH_UNITS
        predicted.append(model.sigma(np.log(10.0)))
        far_n = np.full(len(TOKENS_PER_PARAM), 10 * n.max())
        far_d = far_n * TOKENS_PER_PARAM
        measured = overtrained(far_n, far_d) * np.exp(np.random.default_rng(50 + seed).normal(0, 0.005, len(far_n)))
        errors.append(np.log(measured) - log_loss("chinchilla", far_n, far_d, fit.theta)[0])
    measured_spread = float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    ratio = float(np.mean(predicted)) / measured_spread
    assert 1 / 1.5 <= ratio <= 1.5, (np.mean(predicted), measured_spread)


def test_two_sizes_use_the_prior_and_say_so():
    n, d, loss = ladder(SIZES[[0, 3]])
    calibration = backtest_calibration("chinchilla", n, d, loss, target=(30 * n.max(), 600 * n.max()))
    model = calibration.distance
    assert model.source == "prior" and model.growth == pytest.approx(GROWTH_PRIOR)
    assert model.more_sizes == 4  # 6 sizes: the largest 1, 2, 3 held out, 3 kept to fit
    line = calibration.line()
    assert "prior from tests/benchmarks/bench_distance.py" in line and "4 more sizes would let this ladder" in line
    assert "target at 30x N" in line
    # The target's band is the prior's spread there, not the bootstrap's: wider than the bootstrap's own.
    assert calibration.factor > 1
    payload = calibration.as_dict()["distance"]
    assert payload["source"] == "prior" and payload["target_ratio"] == pytest.approx(30)


def test_the_band_grows_with_distance_and_never_narrows_the_bootstrap():
    n, d, loss = ladder(SIZES[:5], seed=1)
    fit = fit_law("chinchilla", n, d, loss, bootstrap=64)
    residuals = log_residuals("chinchilla", fit, n, d, loss)
    tn = n.max() * np.array([1.0, 3.0, 30.0])
    td = 20 * tn
    raw = predict_loss("chinchilla", fit, tn, td, residuals)
    calibration = backtest_calibration("chinchilla", n, d, loss, fit=fit, distance=True)
    band = predict_loss("chinchilla", fit, tn, td, residuals, calibration=calibration)
    half = (np.log(band.high) - np.log(band.low)) / 2
    assert half[0] < half[1] < half[2]
    assert (band.low <= raw.low * (1 + 1e-12)).all() and (band.high >= raw.high * (1 - 1e-12)).all()
    assert "distance: measured at" in calibration.line() and "per doubling" in calibration.line()


def test_e_pinned_at_zero_gives_the_profile_and_what_to_run(tmp_path, capsys):
    """A truth with no floor: the bootstrap puts E at 0 in (nearly) every member; `fit` gives the target's interval
    from the profile of the objective over E (containing what every admitted E predicts), names a larger size to
    run, and draws the distance figure."""
    n, d = (v.ravel() for v in np.meshgrid(np.geomspace(1e7, 4e8, 5), np.geomspace(2e8, 2e10, 5)))
    loss = (400 / n**0.34 + 1500 / d**0.30) * np.exp(np.random.default_rng(0).normal(0, 0.003, len(n)))
    pd.DataFrame({"N": n, "D": d, "loss": loss}).to_csv(tmp_path / "t.csv", index=False)
    args = ["fit", "--csv", str(tmp_path / "t.csv"), "--n", "N", "--d", "D", "--loss", "loss", "--bootstrap", "40",
            "--target-flops", "1.9e21", "--plot-distance", str(tmp_path / "distance.png"), "--json"]
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    profile = payload["profile"]
    assert profile["share_at_bound"] >= predictive.COLLAPSE_SHARE
    assert profile["e_admitted"][0] == 0 and profile["e_admitted"][1] > 0
    assert "at its bound 0" in profile["line"] and "run next: a size above the ladder's largest" in profile["line"]
    target = payload["target"]["loss"]
    assert target["low"] <= profile["loss_range"][0] and target["high"] >= profile["loss_range"][1]
    assert payload["calibration"]["distance"]["target_ratio"] > 1
    assert (tmp_path / "distance.png").stat().st_size > 1000


def test_the_profile_and_the_flag_agree_on_where_e_is_at_its_bound():
    from proxyscale.analysis.table_fit import E_AT_ZERO

    assert predictive.E_AT_BOUND == E_AT_ZERO


def test_a_floor_the_ladder_sees_gets_no_profile():
    n, d, loss = ladder(SIZES[:5], seed=2)
    fit = fit_law("chinchilla", n, d, loss, bootstrap=30)
    assert profile_target("chinchilla", fit, n, d, loss, target_n=[1e10], target_d=[2e11]) is None


def test_a_noise_free_ladder_gives_a_bounded_factor_and_ordered_intervals_far_out():
    """Noise-free runs (SimulatedSpec.noise defaults to 0) collapse the bootstrap: the loss band at a target 100x
    the largest size is ~1e-13 in log. Dividing by it once gave a band factor of 5e6 and an N_opt interval whose
    high fell below its value; the factor is bounded and every interval stays finite and ordered."""
    import proxyscale
    from proxyscale.models.spec import SimulatedSpec

    truth = SimulatedSpec()
    assert truth.noise == 0

    def chinchilla(n, d):
        return truth.E + truth.A / n**truth.alpha + truth.B / d**truth.beta

    n, d, loss = ladder(np.geomspace(1e7, 1e9, 6), truth=chinchilla, noise=0.0)
    table = pd.DataFrame({"N": n, "D": d, "loss": loss})
    fitted = proxyscale.fit(table, n="N", d="D", loss="loss", bootstrap=64)
    flops = 6 * (100 * n.max()) * (20 * 100 * n.max())
    target = fitted.compute_optimal(flops)
    calibration, _ = fitted.at_target(flops)
    assert calibration.target_distance > np.log(10)
    for name in ("n_opt", "d_opt", "loss"):
        interval = target[name]
        assert np.isfinite([interval.low, interval.value, interval.high]).all(), (name, interval)
        assert interval.low <= interval.value <= interval.high, (name, interval)
    assert np.isfinite(calibration.factor) and 1 <= calibration.factor <= 100  # MAX_BAND_FACTOR
    assert calibration.factor <= predictive.MAX_BAND_FACTOR
    # A bootstrap end a rounding error past the value (as the collapsed bootstrap gives) stays on its side.
    from proxyscale.analysis.fit import Interval

    scaled = replace(calibration, factor=50.0).interval(Interval(4.0e10, 4.0e10 * (1 - 1e-9), 4.0e10 * (1 - 1e-15)))
    assert scaled.low <= scaled.value <= scaled.high
    # predict at a far run carries the distance model's floor, as `proxyscale predict` does for the mean band.
    far = fitted.predict(100 * n.max(), 2000 * n.max())
    assert far.low <= far.value <= far.high
    model = calibration.distance
    half = model.half_width(model.distance_of(100 * n.max()), noise=False)
    assert np.log(far.high / far.value) >= half * (1 - 1e-9) and np.log(far.value / far.low) >= half * (1 - 1e-9)


def test_a_target_past_the_longest_runs_in_d_only_gets_a_wider_band():
    """Distance counts every direction the ladder is extrapolated in (issue 31 item 1, gap A): a target at the
    ladder's largest N but 10x its largest D is as far out as its D makes it (max of the two in spans), so its band
    is wider than at distance 0, and the line and the JSON say it was farthest in D."""
    n, d, loss = ladder(SIZES[:6], seed=3)
    fit = fit_law("chinchilla", n, d, loss, bootstrap=64)
    inside = backtest_calibration("chinchilla", n, d, loss, fit=fit, target=(n.max(), float(np.median(d))))
    beyond = backtest_calibration("chinchilla", n, d, loss, fit=fit, target=(n.max(), 10 * d.max()))
    model = beyond.distance
    assert inside.target_distance == 0
    spans_d = np.log(10) / np.log(d.max() / d.min())
    assert beyond.target_distance == pytest.approx(model.span * spans_d)
    assert model.half_width(beyond.target_distance) > model.half_width(0.0) * 1.5
    assert beyond.factor >= inside.factor
    # predict_loss floors a run's band at its own distance, D included: far in D alone is wider than inside.
    residuals = log_residuals("chinchilla", fit, n, d, loss)
    band = predict_loss("chinchilla", fit, [n.max(), n.max()], [float(np.median(d)), 10 * d.max()], residuals,
                        calibration=beyond)
    half = (np.log(band.high) - np.log(band.low)) / 2
    assert half[1] > half[0]
    line = beyond.line()
    assert "target at 1x N, 10x D" in line and "farthest in D" in line, line
    payload = beyond.as_dict()["distance"]
    assert payload["target_n_ratio"] == pytest.approx(1) and payload["target_d_ratio"] == pytest.approx(10)
    assert payload["target_spans"] == pytest.approx(spans_d) and payload["directions"] == "max(N, D) in spans"
    assert "target_ratio" in payload and "target_distance" in payload  # the keys before D was counted are kept
    # Without D a distance is N's alone, as before.
    assert model.distance_of(3 * n.max()) == pytest.approx(np.log(3))


def test_a_d_range_that_is_not_finite_still_counts_d():
    """Review of issue 31: count_spans divided by max(span_d, MIN_SPAN), which is nan for a nan span_d (a D_min of
    0 in the ladder), so a target 100x past the longest runs counted as inside in D while the JSON said
    'max(N, D) in spans'. A span that is not finite now counts as MIN_SPAN, and growth_model keeps D counted."""
    from proxyscale.analysis.predictive import MIN_SPAN, count_spans, growth_model

    for span_d in (float("nan"), float("inf")):
        spans = count_spans(1e8, 1e12, n_max=1e8, span=np.log(10), d_max=1e10, span_d=span_d)
        assert spans == pytest.approx(np.log(100) / MIN_SPAN)
    model = growth_model(np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0), noise=0.01, n_max=1e8,
                         span=np.log(10), sizes=4, d_max=1e10, span_d=float("inf"))
    assert model.span_d == MIN_SPAN and model.directions == "max(N, D) in spans"
    assert model.spans_of(1e8, 1e12) == pytest.approx(np.log(100) / MIN_SPAN)
    # Inside in N, below the ladder in D, and D unknown: never a negative distance, N still counted.
    assert count_spans(1e7, 1e8, n_max=1e8, span=np.log(10), d_max=1e10, span_d=np.log(10)) == 0.0
    assert count_spans(1e9, float("nan"), n_max=1e8, span=np.log(10), d_max=1e10, span_d=np.log(10)) == 1.0


def test_a_one_d_ladder_far_in_d_is_told_to_run_larger_d_not_more_sizes():
    """A ladder whose runs all share one D cannot measure how the error grows in D: more sizes at that D do not
    help. A target farthest in D is told which runs would (2x and 4x its largest D); a ladder spanning 8x in D
    is not, and the JSON carries the ladder's D range as it is (0: one D)."""
    from proxyscale.analysis.predictive import growth_model

    def model(span_d: float):
        return growth_model([0.5, 1.0], [0.01, -0.02], [1000, 1001], [1.4, 1.4], noise=0.005, n_max=1e8,
                            span=np.log(8), sizes=4, d_max=2e9, span_d=span_d, c_max=6 * 1e8 * 2e9)

    for span_d, told in ((0.0, True), (np.log(8), False)):
        m = model(span_d)
        x = m.distance_of(1e8, 5 * 2e9)
        assert x > 0
        line = m.summary(x, 1.0, target={"n": 1.0, "d": 5.0, "c": 5.0})
        assert "farthest in D" in line, line
        assert ("runs at 2x and 4x its largest D" in line) is told, line
        assert m.as_dict()["d_range"] == pytest.approx(span_d)
