"""bench_curve_forms: the two curve forms (Tissue with a size term, the multi-power law) on what they did not see.

1. Luo et al.'s 25M fit reproduced: the multi-power law fitted on cosine_24000, constant_24000, wsdcon_9 (all
   points), its parameters in the authors' units and R^2 on the other six curves.
2. The published 25M and 100M curves: a joint law fitted on three 25M curves (cosine_24000, constant_24000,
   wsdcon_9) and two 100M curves (cosine_24000, constant_24000) predicts the other seven 100M curves; per form
   (Tissue under each clock, the multi-power law, and what `auto` keeps by the backtest) the worst and mean
   per-curve mean |relative error| (past the first 10%), and the calibrated band's coverage of those points.
   Beside it, the naive per-size fits on the two 100M curves alone (Tissue's six-parameter fit in the issue).
3. The size term's extrapolation on simulated three-size data of each form (models/simulated.py): each form
   fitted on the two smaller sizes predicts the curves of the third, larger one.

Needs ../shared/data for 1 and 2 (skipped with a line when absent). About 2-4 minutes on 2 cores.
Run: .venv/bin/python tests/benchmarks/bench_curve_forms.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from proxyscale.analysis.curve_law import Curve, curve_from_table
from proxyscale.analysis.multipower import authors_units, fit_multipower
from proxyscale.analysis.predictive import (
    CURVE_FORMS,
    MIN_MEMBERS,
    backtest_curve_forms,
    curve_band,
    fit_curve_form,
)
from proxyscale.models.spec import SimulatedSpec

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NAMES = ("cosine_24000", "constant_24000", "wsdcon_9", "cosine_72000", "constant_72000", "wsd_20000_24000",
         "wsdld_20000_24000", "wsdcon_3", "wsdcon_18")
FIT_25M = ("cosine_24000", "constant_24000", "wsdcon_9")
FIT_100M = ("cosine_24000", "constant_24000")
SKIP = 0.1


def load(size: str, name: str, n_params: float = float("nan")) -> Curve:
    table = pd.read_csv(DATA / f"lr_schedules_{size}" / f"{name}.csv")
    return curve_from_table(f"{size}/{name}", table["step"], table["lr"], table["loss"], warmup_steps=2160,
                            peak_lr=3e-4, n_params=n_params)


def authors_fit() -> None:
    fit = fit_multipower([load("25m", n) for n in FIT_25M], skip_fraction=0.0)
    held = [load("25m", n) for n in NAMES if n not in FIT_25M]
    measured = np.concatenate([c.losses for c in held])
    predicted = np.concatenate([fit.predict(c) for c in held])
    r2 = 1 - np.sum((measured - predicted) ** 2) / np.sum((measured - measured.mean()) ** 2)
    ours = authors_units(fit.params, 3e-4)
    print("1. Luo et al.'s 25M fit (L0, A, alpha, B, C, beta, gamma; R^2 on the six held-out curves)")
    print("   authors: 3.040, 0.525, 0.508, 363.79, 2.066, 0.583, 0.641; R^2 0.9988")
    print("   ours:    " + ", ".join(f"{ours[k]:.4g}" for k in ("L0", "A", "alpha", "B", "C", "beta", "gamma"))
          + f"; R^2 {r2:.4f}; worst held-out curve {100 * max(fit.mare(c, 0.0) for c in held):.3f}%")


def published_joint() -> None:
    fitting = [load("25m", n, 2.5e7) for n in FIT_25M] + [load("100m", n, 1e8) for n in FIT_100M]
    predicted = [load("100m", n, 1e8) for n in NAMES if n not in FIT_100M]
    print("2. joint law on 3 x 25M + 2 x 100M curves, predicting the other seven 100M curves "
          "(mean |relative error| per curve past the first 10%)")
    started = time.perf_counter()
    backtest = backtest_curve_forms(fitting, skip_fraction=SKIP, bootstrap=MIN_MEMBERS)
    for line in backtest.lines():
        print("   " + line)
    for form, clock in CURVE_FORMS:
        fit = fit_curve_form(form, clock, fitting, skip_fraction=SKIP, bootstrap=MIN_MEMBERS if (form, clock)
                             == backtest.chosen else 0)
        errors = {c.name: fit.mare(c, SKIP) for c in predicted}
        worst = max(errors, key=errors.get)
        line = (f"   {form:>6} {clock:<8} worst {100 * errors[worst]:.3f}% ({worst}), mean "
                f"{100 * np.mean(list(errors.values())):.3f}%")
        if (form, clock) == backtest.chosen:
            held = [(c, c.steps[c.past_start(SKIP)]) for c in predicted]
            measured, point, low, high = curve_band(fit, form, fitting, held, level=0.95, seed=0, skip_fraction=SKIP)
            c_low, c_high = backtest.calibration.scale(point, low, high)
            before = np.mean((low <= measured) & (measured <= high))
            after = np.mean((c_low <= measured) & (measured <= c_high))
            width = np.median(np.exp(high) - np.exp(low)) / np.median(np.exp(point))
            c_width = np.median(np.exp(c_high) - np.exp(c_low)) / np.median(np.exp(point))
            line += (f"  <- auto; 95% band covers {before:.0%} of the {len(measured)} points -> {after:.0%} calibrated "
                     f"(median width {width:.2%} -> {c_width:.2%})")
        print(line)
    for form, clock in CURVE_FORMS:  # naive: the two 100M curves alone, one size
        alone = [load("100m", n) for n in FIT_100M]
        fit = fit_curve_form(form, clock, alone, skip_fraction=SKIP)
        errors = [fit.mare(load("100m", n), SKIP) for n in NAMES if n not in FIT_100M]
        print(f"   naive (the two 100M curves alone) {form:>6} {clock:<8} worst {100 * max(errors):.3f}%, mean "
              f"{100 * np.mean(errors):.3f}%")
    print(f"   ({time.perf_counter() - started:.0f}s)")


def simulated_three_sizes() -> None:
    from tests.test_curve_law import simulated_curves

    print("3. the size term on simulated three-size data (widths 64, 128, 256; fit 64 and 128, predict 256's curves)")
    for truth_form in ("tissue", "multipower"):
        curves = simulated_curves(SimulatedSpec(noise=0.003, curve_form=truth_form), widths=(64, 128, 256))
        largest = max(c.n_params for c in curves)
        fitted = [c for c in curves if c.n_params < largest]
        held = [c for c in curves if c.n_params == largest]
        for form, clock in CURVE_FORMS:
            fit = fit_curve_form(form, clock, fitted, skip_fraction=SKIP)
            errors = [fit.mare(c, SKIP) for c in held]
            print(f"   truth {truth_form:<10} form {form:>6} {clock:<8} worst {100 * max(errors):.3f}%, mean "
                  f"{100 * np.mean(errors):.3f}% on {len(held)} curves")


def main() -> None:
    if (DATA / "lr_schedules_100m").exists():
        authors_fit()
        published_joint()
    else:
        print(f"1-2 skipped: {DATA} has no lr_schedules_25m / lr_schedules_100m (the shared published data)")
    simulated_three_sizes()


if __name__ == "__main__":
    main()
