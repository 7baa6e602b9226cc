"""The wild cluster bootstrap of the curve laws (analysis/curve_law.py, analysis/multipower.py): its members are
centred on the point fit, a lineage's residuals are flipped together, and on a simulated few-lineage problem its
interval covers the truth more often than the lineage (pairs cluster) bootstrap's."""

from __future__ import annotations

import numpy as np
import pytest

from proxyscale.analysis.curve_law import (
    BOOTSTRAP_METHODS,
    Curve,
    CurveLawFit,
    fit_curve_law,
    jackknife_residuals,
    wild_multipliers,
    wild_targets,
    wsd_shape,
)
from proxyscale.analysis.fit import percentile_interval

BATCH = 2**15
WEBB = np.sqrt([0.5, 1.0, 1.5])


def truth_fit(sizes, *, alpha: float = 0.3, beta: float = 0.3) -> CurveLawFit:
    """A Tissue-form law with a size term, to simulate curves from (its predict is the truth's mean)."""
    n_ref = float(np.exp(np.mean(np.log(sizes))))
    theta = np.array([1.8, 300.0 * 1e6 ** (alpha - 0.3) / n_ref**alpha, alpha, 60.0 * 1e8 ** (beta - 0.3), beta, 0.4,
                      np.log(0.1), 0.0])
    return CurveLawFit(theta=theta, clock="relative", sizes=True, objective=0.0, n_points=0, n_curves=0, n_ref=n_ref)


def lineage_curves(truth: CurveLawFit, sizes, rng, *, noise: float = 0.003, offset: float = 0.0) -> list[Curve]:
    """Per size one lineage: a WSD run of 20 tokens per parameter and a fork of it cooled down at half its length;
    every point gets its own noise and every lineage one shared relative offset (a seed's, a parent's)."""
    curves = []
    for n in sizes:
        shift = offset * rng.standard_normal()
        full = int(20 * n / BATCH)
        for share, tag in ((1.0, "full"), (0.5, "half")):
            steps = int(full * share)
            lrs = wsd_shape(decay_fraction=0.2)(steps)
            evals = np.unique(np.linspace(0.1 * steps, steps, 9)[1:].round().astype(int))
            shape = Curve(name=f"{n:.0f}-{tag}", lrs=lrs, steps=evals, losses=np.ones(len(evals)), n_params=n,
                          batch_tokens=BATCH, group=f"w{n:.0f}", peak_lr=1.0)
            clean = truth.predict(shape)
            losses = clean * (1 + shift + noise * rng.standard_normal(len(evals)))
            curves.append(Curve(name=shape.name, lrs=lrs, steps=evals, losses=losses, n_params=n, batch_tokens=BATCH,
                                group=shape.group, peak_lr=1.0))
    return curves


def test_wild_flips_whole_lineages_together():
    labels = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 4)
    fitted = np.linspace(2.0, 3.0, len(labels))
    measured = fitted + np.random.default_rng(0).normal(0, 0.01, len(labels))
    targets = wild_targets(fitted, measured, labels, 400, seed=1)
    weights = (targets - fitted) / (measured - fitted)  # each point's multiplier, member by member
    for label in "abc":
        rows = weights[:, labels == label]
        assert np.allclose(rows, rows[:, :1]), f"points of lineage {label} got different weights"
        nearest = np.abs(np.abs(rows[:, 0])[:, None] - WEBB[None]).min(axis=1)
        assert np.all(nearest < 1e-9) and len(np.unique(np.sign(rows[:, 0]))) == 2  # Webb's six points
    assert (np.sign(weights[:, labels == "a"][:, 0]) != np.sign(weights[:, labels == "b"][:, 0])).any()
    # The point-level wild bootstrap does split a lineage: the check above can fail.
    point = (wild_targets(fitted, measured, labels, 400, seed=1, method="wild-point") - fitted) / (measured - fitted)
    assert not np.allclose(point[:, labels == "a"], point[:, labels == "a"][:, :1])
    rademacher = wild_multipliers(labels, 200, seed=2, kind="rademacher")
    assert set(np.unique(rademacher)) == {-1.0, 1.0}


@pytest.mark.parametrize("method", ["wild", "wild-jackknife"])
def test_wild_members_are_centred_on_the_point_fit(method):
    sizes = np.geomspace(2e6, 2e7, 5)
    truth = truth_fit(sizes)
    curves = lineage_curves(truth, sizes, np.random.default_rng(3))
    fit = fit_curve_law(curves, clock="relative", bootstrap=64, seed=0, bootstrap_method=method)
    probe = curves[-1]
    point = fit.predict(probe)
    members = fit.predict(probe, members=True)
    spread = members.std(axis=0)
    assert np.all(spread > 0)
    # The members scatter about the point fit: their median within half their spread of it (3 standard errors) at every point
    assert np.all(np.abs(np.median(members, axis=0) - point) < 0.5 * spread)
    # ... and the data they were refitted to average to the point fit (Webb weights have mean 0)
    pts_fitted = np.concatenate([fit.predict(c, c.steps[c.past_start(0.1)]) for c in curves])
    pts_measured = np.concatenate([c.losses[c.past_start(0.1)] for c in curves])
    labels = np.concatenate([[c.group] * int(c.past_start(0.1).sum()) for c in curves])
    targets = wild_targets(pts_fitted, pts_measured, labels, 4000, seed=0)
    error = np.abs(targets.mean(axis=0) - pts_fitted)
    assert np.all(error < 4 * np.abs(pts_measured - pts_fitted) / np.sqrt(4000) + 1e-12)


def test_jackknife_residuals_are_the_leave_one_lineage_out_residuals_of_a_linear_fit():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(6), 5).astype(str)
    x = rng.normal(size=(30, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + rng.normal(0, 0.1, 30)
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    jack = jackknife_residuals(y - x @ beta, x, labels)
    for label in np.unique(labels):
        out = labels == label
        refit = np.linalg.lstsq(x[~out], y[~out], rcond=None)[0]
        assert np.allclose(jack[out], y[out] - x[out] @ refit, atol=1e-10)


def test_bad_bootstrap_method_is_refused_before_any_work():
    with pytest.raises(ValueError, match="bootstrap_method"):
        fit_curve_law([], bootstrap_method="pairs")
    with pytest.raises(ValueError, match="wild_weights"):
        fit_curve_law([], bootstrap_method="wild", wild_weights="mammen")
    assert "wild" in BOOTSTRAP_METHODS and "lineage" in BOOTSTRAP_METHODS


def coverage(method: str, truth: CurveLawFit, sizes, target: Curve, reps: int, **noise) -> float:
    true_value = truth.predict(target)[0]
    hits = 0
    for rep in range(reps):
        curves = lineage_curves(truth, sizes, np.random.default_rng(100 + rep), **noise)
        fit = fit_curve_law(curves, clock="relative", bootstrap=32, seed=rep, bootstrap_method=method)
        interval = percentile_interval(fit.predict(target)[0], fit.predict(target, members=True)[:, 0], 0.95)
        hits += interval.low <= true_value <= interval.high
    return hits / reps


def test_wild_jackknife_covers_more_often_than_the_lineage_bootstrap_with_few_lineages():
    """Four lineages (sizes), each sharing a relative offset of 0.5% (a seed's) over its points, 0.05% point noise;
    the 95% interval of the loss at 10x the largest size, over 30 simulated ladders. The lineage bootstrap draws 4
    of 4 lineages with replacement (a member has 2.7 distinct sizes on average); the wild bootstrap keeps all four and
    flips each one's leave-one-out residuals. Measured when written: 21 of 30 (lineage) against 24 of 30."""
    sizes = np.geomspace(2e6, 2e7, 4)
    truth = truth_fit(sizes)
    n = 10 * sizes[-1]
    steps = int(20 * n / BATCH)
    target = Curve(name="target", lrs=wsd_shape(decay_fraction=0.2)(steps), steps=np.array([steps]),
                   losses=np.ones(1), n_params=n, batch_tokens=BATCH, peak_lr=1.0)
    noise = {"noise": 0.0005, "offset": 0.005}
    lineage = coverage("lineage", truth, sizes, target, 30, **noise)
    wild = coverage("wild-jackknife", truth, sizes, target, 30, **noise)
    assert wild > lineage
    assert wild >= 0.8


def test_the_planner_final_estimate_takes_a_wild_bootstrap_or_a_basic_interval_and_refuses_others():
    from proxyscale.analysis.curve_law import cosine_shape
    from proxyscale.analysis.curve_planner import CurvePlannerSettings, basic_interval
    from proxyscale.analysis.fit import Interval

    common = {"target_flops": 1e17, "target_schedule": cosine_shape(), "target_batch_tokens": 2**20,
              "budget_flops": 1e15}
    assert CurvePlannerSettings(**common).final_bootstrap == "lineage"
    CurvePlannerSettings(**common, final_bootstrap="wild-jackknife", final_interval="basic")
    with pytest.raises(ValueError, match="bootstrap_method"):
        CurvePlannerSettings(**common, final_bootstrap="pairs")
    with pytest.raises(ValueError, match="final_interval"):
        CurvePlannerSettings(**common, final_interval="bca")
    # Members leaning above the point (percentiles at -1% / +4% of it) put the basic interval below it (-4% / +1%).
    leaning = Interval(100.0, 99.0, 104.0)
    reflected = basic_interval(leaning)
    assert reflected.value == 100.0
    assert np.isclose(np.log(reflected.low / 100), -np.log(1.04)) and np.isclose(np.log(reflected.high / 100), -np.log(0.99))
    unbounded = Interval(1.0, 0.0, 2.0)  # a member without an optimum (N_opt = 0): no log to reflect in
    assert basic_interval(unbounded) == unbounded
