"""The loss-curve law across model sizes (analysis/curve_law.py), the simulated trainer's schedule-aware
curves (models/simulated.py), `proxyscale fit-schedule` with FILE:N and `proxyscale fit DIR --curves`."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis.curve_law import Curve, cosine_shape, fit_curve_law, reduce_to_chinchilla, wsd_shape
from proxyscale.analysis.laws import compute_optimal_allocation
from proxyscale.models.flops import count_parameters
from proxyscale.models.simulated import (
    schedule_multipliers,
    simulate_run,
    true_compute_optimal,
    true_final_loss,
    true_loss,
    true_reduced_law,
)
from proxyscale.models.spec import ModelSpec, RunSpec, SimulatedSpec, TrainSpec
from proxyscale.orchestrator.cli import main
from tests.conftest import SHARED_DATA

BATCH = 2**14
WIDTHS = (64, 96, 128, 192, 256)
CURVES_25M = SHARED_DATA / "lr_schedules_25m"


def model(width: int) -> ModelSpec:
    return ModelSpec(width=width, depth=4, n_heads=4, seq_len=256)


def train(**overrides) -> TrainSpec:
    return TrainSpec(**({"batch_tokens": BATCH, "warmup_steps": 20, "eval_interval_tokens": BATCH * 40, "lr": 1e-2,
                         "schedule": "constant", "tokens": BATCH * 2000} | overrides))


def ladder_specs(truth: SimulatedSpec, widths=WIDTHS) -> list[RunSpec]:
    """Per width: a constant-LR stable run, WSD cooldown forks of it at 3 budgets, and a cosine run."""
    specs = []
    for width in widths:
        stable = RunSpec(model=model(width), train=train(), simulated=truth)
        specs += [stable, RunSpec(model=model(width), train=train(schedule="cosine", tokens=BATCH * 1000), simulated=truth)]
        for steps in (500, 1000, 2000):
            specs.append(RunSpec(model=model(width), simulated=truth, train=train(
                schedule="wsd", decay_fraction=0.2, decay_shape="sqrt", min_lr_ratio=0.0, tokens=BATCH * steps,
                init_from=f"{stable.run_id()}@{int(0.8 * steps)}")))
    return specs


def as_curve(spec: RunSpec, result) -> Curve:
    points = [(step, loss) for step, _, loss in result.eval_curve if step > 0]
    root = spec.train.init_from.split("@")[0] if spec.train.init_from else spec.run_id()
    return Curve(name=spec.run_id(), lrs=spec.train.lr * schedule_multipliers(spec.train),
                 steps=[s for s, _ in points], losses=[loss for _, loss in points],
                 n_params=count_parameters(spec.model).total, batch_tokens=spec.train.batch_tokens, group=root)


def simulated_curves(truth: SimulatedSpec, widths=WIDTHS) -> list[Curve]:
    return [as_curve(spec, simulate_run(spec)) for spec in ladder_specs(truth, widths)]


@pytest.fixture(scope="module")
def tissue_fit():
    truth = SimulatedSpec(noise=0.003)
    curves = simulated_curves(truth)
    started = time.perf_counter()
    fit = fit_curve_law(curves, bootstrap=200, seed=0)
    return truth, curves, fit, time.perf_counter() - started


# ------------------------------------------------------------------------------ the simulator


def test_a_fork_continues_its_parent_exactly_and_reports_only_its_own_points():
    truth = SimulatedSpec(noise=0.01)
    parent = RunSpec(model=model(64), train=train(), simulated=truth)
    result = simulate_run(parent)
    measured = {step: loss for step, _, loss in result.eval_curve}
    same = RunSpec(model=model(64), simulated=truth, train=train(init_from=f"{parent.run_id()}@1000"))
    forked = simulate_run(same)
    assert [step for step, _, _ in forked.eval_curve] == [s for s in measured if s > 1000]
    assert all(measured[step] == loss for step, _, loss in forked.eval_curve)  # same schedule: same losses
    assert forked.tokens == result.tokens and forked.flops == pytest.approx(result.flops / 2)
    cooldown = simulate_run(RunSpec(model=model(64), simulated=truth, train=train(
        schedule="wsd", decay_fraction=0.25, tokens=BATCH * 1600, init_from=f"{parent.run_id()}@1000")))
    first_step, _, first = cooldown.eval_curve[0]
    assert first_step == 1040 and first == measured[1040]  # the cooldown starts at 1200
    assert cooldown.eval_curve[-1][2] < measured[1600] - 0.05  # the cooldown pays


def test_a_cooldown_gain_depends_on_its_length_and_cosine_runs_end_on_l_n_d():
    truth = SimulatedSpec()
    n = count_parameters(model(128)).total
    finals = {fraction: true_final_loss(truth, n, BATCH * 2000, train(schedule="wsd", decay_fraction=fraction,
                                                                     min_lr_ratio=0.0, decay_shape="sqrt"))
              for fraction in (0.02, 0.05, 0.2)}
    constant = true_final_loss(truth, n, BATCH * 2000, train())
    assert constant > finals[0.02] > finals[0.05] > finals[0.2]
    cosine = RunSpec(model=model(128), train=train(schedule="cosine", tokens=BATCH * 777), simulated=truth)
    assert simulate_run(cosine).final_eval_loss == pytest.approx(float(true_loss(truth, n, BATCH * 777, 1e-2, 128)),
                                                                 rel=1e-9)
    # The truth's optimum for cosine runs is L(N, D)'s, found numerically from the curves.
    law = true_reduced_law(truth, train(schedule="cosine"))
    assert law["E"] == pytest.approx(truth.E) and law["B"] == pytest.approx(truth.B)
    n_opt, _ = compute_optimal_allocation(1e18, A=truth.A, B=truth.B, alpha=truth.alpha, beta=truth.beta)
    assert true_compute_optimal(truth, 1e18, train(schedule="cosine"))["n_opt"] == pytest.approx(n_opt, rel=0.01)


def test_the_multipower_truth_differs_from_the_tissue_form():
    n = count_parameters(model(128)).total
    tissue, multipower = SimulatedSpec(), SimulatedSpec(curve_form="multipower", anneal_size_exponent=0.13)
    cosine = train(schedule="cosine")
    assert true_final_loss(tissue, n, BATCH * 2000, cosine) != pytest.approx(true_final_loss(multipower, n, BATCH * 2000,
                                                                                              cosine), rel=1e-3)
    law = true_reduced_law(multipower, cosine)
    assert law["E"] != pytest.approx(multipower.E, rel=1e-3)


# ------------------------------------------------------------------------------- the curve law


def test_the_joint_law_recovers_a_simulated_truth_within_its_intervals(tissue_fit):
    truth, curves, fit, seconds = tissue_fit
    assert seconds < 10, "a bootstrap of 200 over 25 curves must stay fast (it runs inside the planner loop)"
    intervals = fit.intervals()
    # The truth in the fitted parametrisation: B k^beta with k = the cosine's mean multiplier, C = anneal.
    expected = {"alpha": truth.alpha, "beta": truth.beta, "A": truth.A, "C": truth.anneal, "r": truth.anneal_time,
                "B": truth.B * ((1 + truth.reference_min_lr_ratio) / 2) ** truth.beta, "kappa": 0.0}
    for name, value in expected.items():
        assert intervals[name].low <= value <= intervals[name].high, (name, value, intervals[name])
    # What the planner needs: the optimum at a target, for cosine runs, contains the truth's.
    target = 1e18
    shape = cosine_shape(min_lr_ratio=truth.reference_min_lr_ratio, warmup_fraction=0.0)
    at = fit.compute_optimal(target, shape, batch_tokens=BATCH)
    true_opt = true_compute_optimal(truth, target, train(schedule="cosine", warmup_steps=0))
    assert at["n_opt"].low <= true_opt["n_opt"] <= at["n_opt"].high
    assert at["loss"].low <= true_opt["loss"] <= at["loss"].high
    # The largest size predicted from the others: under 0.5% (the noise is 0.3%).
    largest = max(c.n_params for c in curves)
    held_out = fit_curve_law([c for c in curves if c.n_params < largest])
    assert max(held_out.mare(c) for c in curves if c.n_params == largest) < 0.005


def test_the_reduction_to_l_n_d_equals_the_curve_law_at_the_end_of_annealed_runs(tissue_fit):
    _, _, fit, _ = tissue_fit
    n = 3e6
    for shape in (cosine_shape(min_lr_ratio=0.1, warmup_fraction=0.01), wsd_shape(decay_fraction=0.2)):
        for steps, tolerance in ((1500, 1e-10), (40_000, 1e-6)):  # long runs pool their drops: ~1e-7
            law = reduce_to_chinchilla(fit, shape, steps, batch_tokens=BATCH)
            reduced = law["E"] + law["A"] / n ** law["alpha"] + law["B"] / (steps * BATCH) ** law["beta"]
            curve = Curve(name="end", lrs=shape(steps), steps=[steps], losses=[1.0], n_params=n, batch_tokens=BATCH)
            if fit.kappa_on:  # the reduction's E is at n_ref; the curve law's at N
                reduced += fit.reduced(shape(steps), batch_tokens=BATCH, n_params=n)["E"][0] - law["E"]
            assert reduced == pytest.approx(float(fit.predict(curve)[0]), rel=tolerance)
    # Under the relative clock the reduction does not depend on the run's length.
    short = reduce_to_chinchilla(fit, cosine_shape(), 1000, batch_tokens=BATCH)
    long = reduce_to_chinchilla(fit, cosine_shape(), 16_000, batch_tokens=BATCH)
    assert all(short[k] == pytest.approx(long[k], rel=1e-3) for k in short)
    # Without a size-dependent gain, the numeric optimum is the reduced law's closed form.
    plain = fit_curve_law(tissue_fit[1], anneal_size_exponent=False)
    law = reduce_to_chinchilla(plain, cosine_shape(), 5000, batch_tokens=BATCH)
    n_opt, _ = compute_optimal_allocation(1e18, A=law["A"], B=law["B"], alpha=law["alpha"], beta=law["beta"])
    at = plain.compute_optimal(1e18, cosine_shape(), batch_tokens=BATCH)
    assert at["n_opt"].value == pytest.approx(float(n_opt), rel=2e-3)


def test_the_bootstrap_draws_whole_lineages_not_points():
    curves = simulated_curves(SimulatedSpec(noise=0.003), widths=(64, 128, 256))
    one_lineage = fit_curve_law(curves, bootstrap=20, groups=["all"] * len(curves))
    # Drawing the only lineage gives back the whole data every time: no spread at all.
    assert np.allclose(one_lineage.bootstrap, one_lineage.theta, rtol=1e-6, atol=1e-9)
    per_lineage = fit_curve_law(curves, bootstrap=40)
    assert len({c.group for c in curves}) == 3 + 3  # a stable run and its forks share a lineage; cosines alone
    interval = per_lineage.intervals()["alpha"]
    assert interval.high - interval.low > 0


def test_the_single_size_law_predicts_the_published_25m_curves():
    if not CURVES_25M.exists():
        pytest.skip(f"{CURVES_25M} is absent (the shared published data)")
    from proxyscale.analysis.curve_law import curve_from_table

    def load(name: str) -> Curve:
        table = pd.read_csv(CURVES_25M / f"{name}.csv")
        return curve_from_table(name, table["step"], table["lr"], table["loss"], warmup_steps=2160, peak_lr=3e-4)

    fit = fit_curve_law([load("constant_24000"), load("cosine_24000")])
    others = ("constant_72000", "cosine_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_9",
              "wsdcon_18")
    errors = {name: fit.mare(load(name)) for name in others}
    assert max(errors.values()) < 0.004, errors


# ------------------------------------------------------------------------------------- the CLI


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def write_curve(path, curve: Curve) -> str:
    pd.DataFrame({"step": curve.steps, "lr": curve.lrs[curve.steps - 1], "loss": curve.losses}).to_csv(path, index=False)
    return str(path)


def schedule_files(directory, truth: SimulatedSpec) -> tuple[list[str], list[str]]:
    """`fit-schedule` arguments (CSV:N) of simulated WSD and cosine curves: widths 64-128 to fit, 256 to predict."""
    fitting, predicting = [], []
    for width in (64, 96, 128, 256):
        for spec in (RunSpec(model=model(width), train=train(schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0),
                             simulated=truth),
                     RunSpec(model=model(width), train=train(schedule="cosine", tokens=BATCH * 1000), simulated=truth)):
            curve = as_curve(spec, simulate_run(spec))
            path = write_curve(directory / f"w{width}-{spec.train.schedule}.csv", curve)
            (predicting if width == 256 else fitting).append(f"{path}:{curve.n_params:g}")
    return fitting, predicting


def test_fit_schedule_fits_the_joint_law_when_curves_carry_their_n(tmp_path, capsys):
    truth = SimulatedSpec(noise=0.002)
    fitting, predicting = schedule_files(tmp_path, truth)
    out = run_json(capsys, ["fit-schedule", "--fit", *fitting, "--predict", *predicting, "--law", "tissue",
                            "--batch-tokens", str(BATCH), "--warmup-steps", "20", "--bootstrap", "64", "--json"])
    assert out["law"] == "tissue" and len(out["sizes"]) == 3
    assert set(out["parameters"]) >= {"E", "A", "alpha", "B", "beta", "C", "r"}
    assert all(v["low"] <= v["value"] <= v["high"] for v in out["parameters"].values())
    assert set(out["mare"]) == {"w256-wsd", "w256-cosine"}
    assert out["mare_max"] == max(out["mare"].values()) < 0.01


def test_fit_schedule_on_the_published_25m_curves(capsys):
    if not CURVES_25M.exists():
        pytest.skip(f"{CURVES_25M} is absent (the shared published data)")
    files = {name: str(CURVES_25M / f"{name}.csv") for name in ("constant_24000", "cosine_24000", "wsd_20000_24000",
                                                                  "cosine_72000")}
    out = run_json(capsys, ["fit-schedule", "--fit", files["constant_24000"], files["cosine_24000"],
                            "--predict", files["wsd_20000_24000"], files["cosine_72000"],
                            "--warmup-steps", "2160", "--peak-lr", "3e-4", "--json"])
    # auto: the form and clock with the lowest held-out error (the latest quarter of both curves held out).
    assert out["law"] in ("tissue", "mpl") and out["mare_max"] == max(out["mare"].values()) < 0.004
    chosen = out["backtest"]["chosen"]
    assert out["backtest"]["scores"][f"{chosen['form']}/{chosen['clock']}"] == min(out["backtest"]["scores"].values())
    same_n = run_json(capsys, ["fit-schedule", "--fit", files["constant_24000"] + ":2.5e7",
                               files["cosine_24000"] + ":25000000", "--predict", files["wsd_20000_24000"] + ":2.5e7",
                               "--warmup-steps", "2160", "--peak-lr", "3e-4", "--law", "schedule", "--json"])
    assert same_n["law"] == "schedule" and same_n["mare_max"] < 0.004  # Tissue's single-curve law, on request


@pytest.mark.parametrize("argument, message", [
    ("{curve}:25M", "'25M' after ':' is not a parameter count"),
    ("{curve}:-3", "'-3' after ':' is not a parameter count"),
    ("{bad}:2.5e7", "column 'lr' is not in"),
])
def test_fit_schedule_refuses_bad_curves_before_fitting(tmp_path, capsys, argument, message):
    curve = tmp_path / "curve.csv"
    pd.DataFrame({"step": [10, 20, 30], "lr": [1e-3, 1e-3, 5e-4], "loss": [3.0, 2.9, 2.8]}).to_csv(curve, index=False)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"step": [10, 20, 30], "learning_rate": [1e-3] * 3, "loss": [3.0, 2.9, 2.8]}).to_csv(bad, index=False)
    argv = ["fit-schedule", "--fit", f"{curve}:1e6", argument.format(curve=curve, bad=bad), "--json"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and not captured.out
    assert len(captured.err.strip().splitlines()) == 1
    if "column" in message:
        assert "['step', 'learning_rate', 'loss']" in captured.err


def test_fit_schedule_wants_n_for_every_curve_of_the_joint_law(tmp_path, capsys):
    paths = []
    for name in ("a", "b", "c"):
        paths.append(tmp_path / f"{name}.csv")
        pd.DataFrame({"step": [10, 20, 30], "lr": [1e-3] * 3, "loss": [3.0, 2.9, 2.8]}).to_csv(paths[-1], index=False)
    assert main(["fit-schedule", "--fit", f"{paths[0]}:1e6", f"{paths[1]}:2e6", "--predict", str(paths[2])]) == 2
    assert "give its parameter count" in capsys.readouterr().err


def _simulated_ledger(path, specs):
    """A ledger in `path` of the simulated runs of `specs`, with every eval point as a step."""
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    ledger = Ledger(path / "ledger.sqlite")
    ledger.register(path.name, specs, plan_rows(specs))
    for spec in specs:
        result = simulate_run(spec)
        ledger.add_steps(spec.run_id(), [{"step": s, "tokens": t, "lr": None, "train_loss": None, "eval_loss": loss}
                                         for s, t, loss in result.eval_curve])
        ledger.finish(spec.run_id(), dataclasses.asdict(result), {"host": "test"})
    ledger.close()


def test_fit_dir_curves_puts_the_curve_law_beside_l_n_d(tmp_path, capsys):
    truth = SimulatedSpec(noise=0.002)
    specs = ladder_specs(truth, widths=(64, 96, 128, 192))
    _simulated_ledger(tmp_path, specs)
    out = run_json(capsys, ["fit", str(tmp_path), "--curves", "--holdout-largest", "--target-flops", "1e17",
                            "--bootstrap", "64", "--json"])
    # 3 sizes kept of 4; L(N, D) takes only the runs that end annealed (a constant-LR run's loss is not a cell).
    annealed = sum(1 for spec in specs if spec.model.width != 192 and spec.train.schedule != "constant")
    assert out["curve_law"]["n_runs"] == 15 and out["final_loss_law"]["n_runs"] == annealed
    assert out["curve_law"]["n_points"] > 10 * out["final_loss_law"]["n_points"]
    for side in ("curve_law", "final_loss_law"):
        for name in ("n_opt", "loss"):
            value = out[side]["target"][name]
            assert value["width"] == pytest.approx(value["high"] - value["low"])
    # auto: the form with the lowest held-out error (the truth's), its backtest and calibration beside it.
    backtest = out["curve_law"]["backtest"]
    assert out["curve_law"]["form"] == backtest["chosen"]["form"] == "tissue"
    assert backtest["rows"] and out["curve_law"]["calibration"]["factor"] > 0
    held = out["holdout"]
    assert held["n_params"] == count_parameters(model(192)).total
    assert held["curve_law"]["relative_error"] < 0.01 and held["curve_law"]["curve_mare"] < 0.01
    assert main(["fit", "--csv", "x.csv", "--curves"]) == 2
    assert "give a sweep directory" in capsys.readouterr().err


def test_fit_dir_curves_scores_cosine_runs_it_never_saw(tmp_path, capsys):
    """A law fitted on WSD forks predicts cosine runs of the same cells, and the cosine-minus-WSD gap per cell."""
    truth = SimulatedSpec(noise=0.002)
    forks = [s for s in ladder_specs(truth, widths=(64, 96, 128, 192)) if s.train.schedule != "cosine"]
    cosine = [RunSpec(model=s.model, simulated=truth, train=train(schedule="cosine", tokens=s.train.tokens))
              for s in forks if s.train.schedule == "wsd"]
    (tmp_path / "forks").mkdir()
    (tmp_path / "cosine").mkdir()
    _simulated_ledger(tmp_path / "forks", forks)
    _simulated_ledger(tmp_path / "cosine", cosine)
    out = run_json(capsys, ["fit", str(tmp_path / "forks"), "--curves", "--score", str(tmp_path / "cosine"),
                            "--law", "tissue", "--bootstrap", "64", "--json"])
    score = out["score"]
    assert set(score["by_schedule"]) == {"cosine to 0.1"} and len(score["runs"]) == len(cosine)
    assert score["by_schedule"]["cosine to 0.1"]["mean_abs_relative_error"] < 0.01
    [pairs] = score["pairs_summary"]
    assert pairs["cells"] == len(cosine) and pairs["same_sign"] >= 0.9 and pairs["theirs"] == "cosine to 0.1"
    # The truth's cosine-minus-WSD gap, and the prediction's, per cell.
    measured = np.array([p["measured_difference"] for p in score["pairs"]])
    predicted = np.array([p["predicted_difference"] for p in score["pairs"]])
    assert np.all(np.abs(predicted - measured) < 0.25 * np.abs(measured) + 0.01), (predicted, measured)
    assert main(["fit", str(tmp_path / "forks"), "--score", str(tmp_path / "cosine")]) == 2
    assert "--score: goes with --curves" in capsys.readouterr().err
    # Another model family is refused before any fit, naming the key.
    (tmp_path / "other").mkdir()
    _simulated_ledger(tmp_path / "other", [dataclasses.replace(s, model=dataclasses.replace(s.model, seq_len=128))
                                           for s in cosine[:2]])
    assert main(["fit", str(tmp_path / "forks"), "--curves", "--score", str(tmp_path / "other")]) == 2
    assert "--score: " in (err := capsys.readouterr().err) and "model.seq_len = 128 there, 256 here" in err


def test_clock_auto_keeps_the_clock_that_fits_better_and_refuses_a_fixed_r():
    curves = simulated_curves(SimulatedSpec(noise=0.003), widths=(64, 128, 256))
    named = {clock: fit_curve_law(curves, clock=clock) for clock in ("relative", "step")}
    auto = fit_curve_law(curves, clock="auto")
    better = min(named, key=lambda clock: named[clock].objective)
    assert auto.clock == better and auto.objective == named[better].objective
    assert fit_curve_law(curves, clock="auto", bootstrap=10).clock == better  # the bootstrap uses the choice
    with pytest.raises(ValueError, match="a fixed r needs a named clock"):
        fit_curve_law(curves, clock="auto", r=0.1)
