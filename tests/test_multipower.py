"""The multi-power law as a fitted curve form (analysis/multipower.py), the backtest that chooses between it and
the Tissue form (analysis/predictive.py), and `proxyscale fit-schedule --law mpl|tissue|auto`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from proxyscale.analysis.curve_law import Curve, curve_from_table
from proxyscale.analysis.multipower import _points, authors_units, fit_multipower, loss_drop_terms
from proxyscale.analysis.predictive import backtest_curve_forms
from proxyscale.models.simulated import _multipower_annealing
from proxyscale.models.spec import SimulatedSpec
from proxyscale.orchestrator.cli import main
from tests.conftest import SHARED_DATA
from tests.test_curve_law import BATCH, simulated_curves, write_curve

CURVES_25M = SHARED_DATA / "lr_schedules_25m"
AUTHORS_25M = {"L0": 3.040, "A": 0.525, "alpha": 0.508, "B": 363.79, "C": 2.066, "beta": 0.583, "gamma": 0.641}
FITTED = ("cosine_24000", "constant_24000", "wsdcon_9")
HELD_OUT = ("cosine_72000", "constant_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_18")
WIDTHS = (64, 96, 128, 192, 256)


def load_25m(name: str) -> Curve:
    table = pd.read_csv(CURVES_25M / f"{name}.csv")
    return curve_from_table(name, table["step"], table["lr"], table["loss"], warmup_steps=2160, peak_lr=3e-4)


def truth_in_fitted_units(truth: SimulatedSpec) -> dict[str, float]:
    """The multipower truth of models/simulated.py in the fitted parametrisation."""
    f = truth.reference_min_lr_ratio
    return {"E": truth.E + truth.anneal * (1 - f), "A_N": truth.A, "alpha_N": truth.alpha,
            "A": truth.B * ((1 + f) / 2) ** truth.beta, "alpha": truth.beta, "B": truth.anneal, "C": truth.multipower_c,
            "beta": truth.multipower_beta, "gamma": truth.multipower_gamma, "kappa": truth.anneal_size_exponent}


def test_the_loss_drop_sums_every_drop_with_its_power_law_tail():
    steps_total = 3000
    u = np.ones(steps_total)
    u[:100] = np.arange(1, 101) / 100  # warmup is not annealing
    u[2000:] = np.linspace(1.0, 0.1, 1000)
    steps = np.arange(100, steps_total + 1, 100)
    truth = SimulatedSpec(curve_form="multipower")
    pts = _points([Curve("x", u, steps, np.ones(len(steps)), peak_lr=1.0)], 0.0)
    ld = loss_drop_terms(pts, np.log(truth.multipower_c), truth.multipower_beta, truth.multipower_gamma)[0]
    area = np.concatenate([[0.0], np.cumsum(u)])
    drops = np.zeros(steps_total)
    drops[1:] = u[:-1] - u[1:]
    drops[:100] = 0.0
    exact = []
    for s in steps:  # the definition, one drop at a time
        j = np.arange(s)
        x = truth.multipower_c * np.maximum(u[j], 1e-3) ** -truth.multipower_gamma * (area[s] - area[j])
        exact.append(float((drops[j] * (1 - (1 + x) ** -truth.multipower_beta)).sum()))
    assert np.max(np.abs(ld - exact)) < 2e-3 * max(exact)
    assert ld[:20] == pytest.approx(0.0)  # nothing before the first drop
    # The simulated truth's own (block-pooled) sum agrees.
    assert np.max(np.abs(ld - _multipower_annealing(truth, u, steps))) < 2e-3


def test_the_authors_25m_fit_is_reproduced_by_fitting_their_three_curves():
    if not CURVES_25M.exists():
        pytest.skip(f"{CURVES_25M} is absent (the shared published data)")
    fit = fit_multipower([load_25m(name) for name in FITTED], skip_fraction=0.0)
    ours = authors_units(fit.params, 3e-4)
    held = [load_25m(name) for name in HELD_OUT]
    measured = np.concatenate([c.losses for c in held])
    predicted = np.concatenate([fit.predict(c) for c in held])
    r2 = 1 - np.sum((measured - predicted) ** 2) / np.sum((measured - measured.mean()) ** 2)
    assert r2 > 0.997, r2  # the authors: 0.9988
    # The power law of the forward area is theirs; L0 sits 0.12 nats higher on these files (their own parameters
    # under-predict every point of every 25M file by 0.11 nats: docs/trust.md), and (B, C, beta, gamma) lie on a
    # ridge three curves do not pin down.
    assert ours["alpha"] == pytest.approx(AUTHORS_25M["alpha"], abs=0.02)
    assert ours["A"] == pytest.approx(AUTHORS_25M["A"], rel=0.05)
    assert ours["L0"] == pytest.approx(AUTHORS_25M["L0"], abs=0.15)
    assert max(fit.mare(c, 0.0) for c in held) < 0.004


@pytest.fixture(scope="module")
def multipower_curves():
    truth = SimulatedSpec(noise=0.003, curve_form="multipower")
    return truth, simulated_curves(truth, widths=WIDTHS)


def test_the_multipower_form_recovers_a_simulated_truth_within_its_intervals(multipower_curves):
    truth, curves = multipower_curves
    fit = fit_multipower(curves, bootstrap=64, seed=0)
    intervals = fit.intervals()
    for name, value in truth_in_fitted_units(truth).items():
        assert intervals[name].low <= value <= intervals[name].high, (name, value, intervals[name])
    assert max(fit.mare(c) for c in curves) < 0.006  # noise 0.3%


@pytest.mark.parametrize("form", ["tissue", "multipower"])
def test_auto_keeps_the_form_the_curves_were_drawn_from(form, multipower_curves):
    curves = multipower_curves[1] if form == "multipower" else simulated_curves(SimulatedSpec(noise=0.003), widths=WIDTHS)
    backtest = backtest_curve_forms(curves, calibrate=False)
    assert backtest.chosen[0] == ("mpl" if form == "multipower" else "tissue"), backtest.lines()
    assert {row["split"].split(" (")[0] for row in backtest.rows} == {"largest size", "longest runs"}


def test_fit_schedule_law_mpl_prints_the_backtest_and_calibrated_coverage(tmp_path, capsys, multipower_curves):
    truth, curves = multipower_curves
    fitting, predicting = [], []
    sizes = sorted({c.n_params for c in curves})
    for i, curve in enumerate(curves):  # fit three sizes, predict the largest (one split: the longest runs)
        if curve.n_params in sizes[:3] or curve.n_params == sizes[-1]:
            path = write_curve(tmp_path / f"c{i}.csv", curve)
            (predicting if curve.n_params == sizes[-1] else fitting).append(f"{path}:{curve.n_params:g}")
    assert main(["fit-schedule", "--fit", *fitting, "--predict", *predicting, "--law", "mpl", "--batch-tokens",
                 str(BATCH), "--warmup-steps", "20", "--bootstrap", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["law"] == "mpl" and out["clock"] == "power" and len(out["sizes"]) == 3
    assert set(out["parameters"]) == {"E", "A_N", "alpha_N", "A", "alpha", "B", "C", "beta", "gamma", "kappa"}
    assert out["backtest"]["chosen"] == {"form": "mpl", "clock": "power"}
    assert out["calibration"]["factor"] > 0 and out["predict_coverage"]["points"] > 0
    assert out["mare_max"] < 0.02  # N 2.3x beyond the largest fitted, from three sizes (noise 0.3%)
    assert main(["fit-schedule", "--fit", *fitting, "--law", "mpl", "--bootstrap", "10"]) == 2
    assert "--bootstrap: at least 64" in capsys.readouterr().err
