"""Refits that follow a growing sweep (issue 22, analysis/incremental.py): a warm refit lands where a fit from
scratch does, the online bootstrap keeps each point's weights, and the refit schedule is geometric."""

from __future__ import annotations

import numpy as np
import pytest

from proxyscale.analysis.fit import fit_chinchilla
from proxyscale.analysis.incremental import WarmCurves, geometric_due, online_weights, refit_chinchilla


def chinchilla_points(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(1e5), np.log(1e8), count))
    d = np.exp(rng.uniform(np.log(1e7), np.log(1e10), count))
    loss = (1.8 + 482 / n**0.35 + 2085 / d**0.37) * (1 + 0.003 * rng.standard_normal(count))
    return [f"run{i}" for i in range(count)], n, d, loss


def test_online_weights_keep_each_keys_column_and_draw_only_for_new_keys():
    rng = np.random.default_rng(0)
    keys, n, d, loss = chinchilla_points(40)
    first = refit_chinchilla(keys[:30], n[:30], d[:30], loss[:30], bootstrap=50)
    shuffled = keys[35:] + keys[:30][::-1]  # new keys anywhere, old ones in another order
    weights = online_weights(shuffled, 50, rng, first)
    for j, key in enumerate(shuffled):
        if key in first.keys:
            assert np.array_equal(weights[:, j], first.weights[:, first.keys.index(key)])
    assert weights.shape == (50, len(shuffled)) and (weights >= 0).all() and weights.dtype == float


def test_a_warm_refit_lands_where_a_fit_from_scratch_does():
    keys, n, d, loss = chinchilla_points(80)
    last = refit_chinchilla(keys[:60], n[:60], d[:60], loss[:60], bootstrap=64)
    assert last.full
    warm = refit_chinchilla(keys, n, d, loss, previous=last, bootstrap=64)
    assert not warm.full and warm.grid_points == 60  # the grid again only once the points double
    scratch = fit_chinchilla(n, d, loss)
    for name, value in scratch.params.items():
        assert warm.fit.params[name] == pytest.approx(value, rel=1e-3), name
    # Each member restarted from its own last solution ends where it would from the new optimum (same weights).
    from proxyscale.analysis.fit import refine_batch

    logs = [np.log(v) for v in (n, d, loss)]
    fresh, _ = refine_batch(np.repeat(warm.fit.theta[None], 64, 0), *logs, warm.weights)
    assert np.abs(np.median(fresh[:, 3:], axis=0) - np.median(warm.fit.bootstrap[:, 3:], axis=0)).max() < 2e-3
    intervals = warm.fit.intervals()
    assert intervals["alpha"].low < 0.35 < intervals["alpha"].high and intervals["beta"].low < 0.37 < intervals["beta"].high
    again = refit_chinchilla(keys, n, d, loss, previous=warm, bootstrap=64)  # nothing new: the same fit
    assert again.fit.params["alpha"] == pytest.approx(warm.fit.params["alpha"], rel=1e-6)


def test_the_refit_schedule_is_geometric():
    refits, last = 0, 0
    for finished in range(1, 10_001):
        if geometric_due(finished, last):
            refits, last = refits + 1, finished
    assert all(geometric_due(k, k - 1) for k in range(1, 41))  # every run up to 40
    assert 100 < refits < 200  # ~40 + log(10,000 / 40) / log(1.05): not 10,000


def test_warm_curve_refits_match_a_fit_from_scratch():
    from proxyscale.analysis.curve_law import cosine_shape, fit_curve_law
    from proxyscale.analysis.curve_planner import CurvePlannerSettings
    from tests.benchmarks.bench_fit_scale import simulated_runs

    curves = [c for _, c, _ in simulated_runs(14)]
    settings = CurvePlannerSettings(target_flops=1e17, target_schedule=cosine_shape(), target_batch_tokens=2**20,
                                    budget_flops=1e30, ensemble=16)
    refits = WarmCurves(16)
    refits.fit(curves[:12], settings)
    assert refits.full and refits.last is not None
    weights = dict(refits.weights)
    estimate = refits.fit(curves, settings)
    assert not refits.full and estimate is not None
    assert all(np.array_equal(refits.weights[k], v) for k, v in weights.items())  # members updated, not redrawn
    scratch = fit_curve_law(curves, clock="relative")
    for name in ("alpha", "beta", "E"):
        assert estimate.fit.params[name] == pytest.approx(scratch.params[name], rel=0.02), name


# ------------------------------------------------------------------ the recursive (Gauss-Newton) update


def _settings(ensemble: int = 16):
    from proxyscale.analysis.curve_law import cosine_shape
    from proxyscale.analysis.curve_planner import CurvePlannerSettings

    return CurvePlannerSettings(target_flops=1e17, target_schedule=cosine_shape(), target_batch_tokens=2**20,
                                budget_flops=1e30, ensemble=ensemble)


@pytest.fixture(scope="module")
def sim_curves():
    from tests.benchmarks.bench_fit_scale import simulated_runs

    return [c for _, c, _ in simulated_runs(16)]


def _rows(fit) -> np.ndarray:
    return np.concatenate([fit.theta[None], fit.bootstrap])


def _distance(a, b, curves) -> float:
    """Mean |prediction difference| of the point fit and every member over every point of `curves`."""
    return float(np.mean([np.abs(a.predict(c, members=m) - b.predict(c, members=m)).mean()
                          for c in curves for m in (False, True)]))


def test_a_recursive_update_moves_the_fit_toward_the_full_refit_and_keeps_fixed_parameters(sim_curves):
    import copy

    settings = _settings()
    refits = WarmCurves(16)
    base = refits.fit(sim_curves[:12], settings)
    assert base is not None and refits.recursive
    stepped = copy.deepcopy(refits)
    for k in (12, 13):  # two runs, one at a time: the second steps from the first's update
        updated = stepped.update([sim_curves[k]], settings)
        assert updated is not None
    full = refits.fit(sim_curves[:14], settings)  # a warm refit on the same curves with the same members' weights
    assert not refits.full
    fitted, none, stepped_fit = full.fit, base.fit, updated.fit
    # Closer to the refit than not updating, in what the fit predicts (the point fit and every member) ...
    assert _distance(stepped_fit, fitted, sim_curves[:14]) < 0.5 * _distance(none, fitted, sim_curves[:14])
    # ... and in the point fit's parameters that set the target (E, the exponents, the realisation scale).
    keys = [0, 2, 4, 6]
    assert (np.abs(stepped_fit.theta[keys] - fitted.theta[keys]).sum()
            < np.abs(none.theta[keys] - fitted.theta[keys]).sum())
    assert stepped_fit.n_ref == none.n_ref and stepped_fit.n_curves == 14  # no rescale between refits
    assert stepped_fit.n_points == fitted.n_points
    # A parameter the fit holds fixed stays: every curve here anneals, so fix r by hand in the state.
    from dataclasses import replace

    from proxyscale.analysis.curve_law import recursive_update

    state = refits.state
    held = replace(state, free=state.free & (np.arange(8) != 6))
    moved = recursive_update(held, [sim_curves[14], sim_curves[15]], refits.label_weights(sim_curves[14:16]))
    assert np.array_equal(_rows(moved.fit)[:, 6], _rows(state.fit)[:, 6])
    assert not np.array_equal(_rows(moved.fit)[:, 0], _rows(state.fit)[:, 0])
    assert np.allclose(moved.normals[:, 6, :], 0) and np.allclose(moved.normals[:, :, 6], 0)


def test_a_recursive_update_evaluates_only_the_new_curves_points(sim_curves, monkeypatch):
    import proxyscale.analysis.curve_law as curve_law

    settings = _settings()
    refits = WarmCurves(16)
    refits.fit(sim_curves[:14], settings)
    seen = {"points": [], "curves": []}
    jacobian, points = curve_law._predict_and_jacobian, curve_law._points

    def counting_jacobian(theta, pts, *args):
        seen["points"].append(len(pts.loss))
        return jacobian(theta, pts, *args)

    def counting_points(curves, *args, **kwargs):
        seen["curves"].append(len(curves))
        return points(curves, *args, **kwargs)

    monkeypatch.setattr(curve_law, "_predict_and_jacobian", counting_jacobian)
    monkeypatch.setattr(curve_law, "_points", counting_points)
    new = sim_curves[14:16]
    refits.update(new, settings)
    fitted = sum(int(c.past_start(0.1).sum()) for c in new)
    assert seen["curves"] == [2]  # the S2 tables of the new curves only
    assert seen["points"] and set(seen["points"]) == {fitted}  # every evaluation on the new points, none on old ones
    assert refits.state.fit.n_points == refits.last.n_points == sum(int(c.past_start(0.1).sum())
                                                                    for c in sim_curves[:16])


def test_without_a_tissue_fit_to_continue_update_refits():
    refits = WarmCurves(16)
    assert not refits.recursive
    from tests.benchmarks.bench_fit_scale import simulated_runs

    curves = [c for _, c, _ in simulated_runs(12)]
    estimate = refits.update(curves, _settings())  # nothing to step from: a full fit of every curve seen
    assert estimate is not None and refits.full and refits.recursive and len(refits.curves) == 12


# ------------------------------------------------------------- orchestrator/active.py: the background refit


def _reader(curves, finished: set):
    """read_curves as ActiveLoop gives it: every finished run's curve (None) or those asked for; `finished` is the
    test's set of finished runs, changed in place as the test goes."""
    by_id = {c.name: c for c in curves}
    calls = []

    def read(run_ids):
        calls.append(None if run_ids is None else set(run_ids))
        keys = sorted(finished) if run_ids is None else sorted(run_ids)
        return [(key, by_id[key]) for key in keys]

    return read, calls


def test_a_slow_refit_runs_in_the_background_and_its_estimate_swaps_in(sim_curves, monkeypatch):
    import threading

    import proxyscale.analysis.incremental as incremental
    from proxyscale.orchestrator.active import CurveEstimates

    settings = _settings()
    names = [c.name for c in sim_curves]
    release, started = threading.Event(), threading.Event()
    real = incremental.run_curve_refit

    def held_refit(refit):  # a refit that ends only when the test says
        started.set()
        assert release.wait(30)
        return real(refit)

    loop = CurveEstimates(WarmCurves(16), background_min_points=0)
    reference = CurveEstimates(WarmCurves(16), background_min_points=float("inf"))  # the same steps, all in line
    finished = set(names[:12])
    read, calls = _reader(sim_curves, finished)
    first, unseen = loop.step(set(finished), read, settings)  # no estimate to update yet: in line
    assert loop.in_flight is None and first is not None and not unseen
    reference.step(set(finished), read, settings)

    monkeypatch.setattr(incremental, "run_curve_refit", held_refit)
    finished.add(names[12])
    during, unseen = loop.step(set(finished), read, settings)  # a refit is due: in the background
    assert started.wait(30) and loop.in_flight is not None
    assert not unseen and during.fit.n_curves == 13  # the new run came in by the recursive update
    assert calls[-2:] == [None, {names[12]}]  # every curve for the refit, then the new one alone for the update
    finished.add(names[13])
    during, _ = loop.step(set(finished), read, settings)  # one refit in flight at most: another update
    assert loop.in_flight is not None and during.fit.n_curves == 14
    release.set()
    loop.wait()
    assert loop.in_flight is None
    # Swapped in: the refit of the 13 curves it was given, as the in-line loop refits them.
    finished.discard(names[13])
    expected, _ = reference.step(set(finished), read, settings)
    assert loop.estimate.fit.n_curves == 13 and loop.included == finished
    assert np.allclose(_rows(loop.estimate.fit), _rows(expected.fit))
    assert not np.allclose(_rows(loop.estimate.fit), _rows(during.fit))  # not the estimate of updates alone
    # The next step takes the run that finished while it ran by an update (and starts the next refit: every run
    # up to 40 is due).
    finished.add(names[13])
    after, unseen = loop.step(set(finished), read, settings)
    assert not unseen and after.fit.n_curves == 14 and calls[-1] == {names[13]}
    assert loop.in_flight is not None
    # The loop's last decision waits for the refit in flight and starts none, though one is due: no thread left.
    finished.add(names[14])
    last, unseen = loop.step(set(finished), read, settings, wait=True)
    assert loop.in_flight is None and not unseen and last.fit.n_curves == 15


def test_an_error_in_the_background_refit_surfaces(sim_curves, monkeypatch):
    import proxyscale.analysis.incremental as incremental
    from proxyscale.orchestrator.active import CurveEstimates

    settings = _settings()
    names = [c.name for c in sim_curves]
    loop = CurveEstimates(WarmCurves(16), background_min_points=0)
    finished = set(names[:12])
    read, _ = _reader(sim_curves, finished)
    loop.step(set(finished), read, settings)

    def failing(refit):
        raise FloatingPointError("refit failed")

    monkeypatch.setattr(incremental, "run_curve_refit", failing)
    finished.add(names[12])
    estimate, _ = loop.step(set(finished), read, settings)  # the loop goes on from the update meanwhile
    assert estimate is not None and loop.in_flight is not None
    with pytest.raises(FloatingPointError, match="refit failed"):
        loop.wait()
    assert loop.in_flight is None


def test_the_loop_reads_new_runs_curves_alone_as_ledger_curves_reads_them(tmp_path):
    from proxyscale.models.spec import SimulatedSpec
    from proxyscale.orchestrator.curves import ledger_curves
    from proxyscale.orchestrator.ledger import Ledger
    from tests.test_curve_law import _simulated_ledger, ladder_specs

    specs = ladder_specs(SimulatedSpec(noise=0.002), widths=(64, 96))
    _simulated_ledger(tmp_path, specs)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        every = {c.run_id: c.curve for c in ledger_curves(ledger)}
        forks = {s.run_id() for s in specs if s.train.init_from}
        some = set(sorted(forks)[:2]) | {specs[0].run_id()}
        alone = {c.run_id: c.curve for c in ledger_curves(ledger, some)}
    assert set(alone) == some
    for key, curve in alone.items():  # the same curve, its lineage group (a fork's root) included
        assert curve.group == every[key].group and np.array_equal(curve.steps, every[key].steps)
        assert np.array_equal(curve.losses, every[key].losses) and np.array_equal(curve.lrs, every[key].lrs)
    assert any(alone[key].group != key for key in some & forks)


def test_the_loop_on_curves_updates_between_refits_and_its_end_leaves_no_refit_running(tmp_path):
    import dataclasses

    from proxyscale.models.simulated import simulate_run
    from proxyscale.models.spec import SimulatedSpec
    from proxyscale.orchestrator.active import ActiveLoop, ActiveSettings
    from proxyscale.orchestrator.ledger import Ledger
    from tests.test_curve_law import _simulated_ledger, ladder_specs

    specs = ladder_specs(SimulatedSpec(noise=0.002), widths=(64, 96, 128))
    _simulated_ledger(tmp_path, specs[:12])  # two widths whole, the third's stable and cosine runs
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        loop = ActiveLoop(sweep_name=tmp_path.name, space=specs, ledger=ledger, settings=ActiveSettings(ensemble=16),
                          target_flops=1e15, budget_flops=1e30, say=lambda line: None)
        loop.background_min_points = 0
        picks = loop.propose(1)  # the first refit: in line
        estimates = loop.curve_estimates
        assert len(picks) == 1 and estimates.in_flight is None and estimates.estimate is not None
        result = simulate_run(picks[0])
        ledger.add_steps(picks[0].run_id(), [{"step": s, "tokens": t, "lr": None, "train_loss": None, "eval_loss": loss}
                                             for s, t, loss in result.eval_curve])
        ledger.finish(picks[0].run_id(), dataclasses.asdict(result), {"host": "test"})
        loop.propose(1)  # a refit is due: in the background; the finished run came in by an update meanwhile
        assert loop.stopped is None and estimates.in_flight is not None
        assert picks[0].run_id() in estimates.included and estimates.estimate.fit.n_curves == 13
        loop.close()
        assert estimates.in_flight is None and estimates.estimate.fit.n_curves == 13
