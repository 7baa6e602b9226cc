"""Task metrics on a real ladder: does Err(L) fitted on the smaller sizes predict the largest size's task error?

Usage (after `proxyscale launch sweep=tasks sweep_dir=DIR`, about 10 minutes on 2 CPU cores):
    .venv/bin/python tests/benchmarks/bench_downstream.py DIR [--metric next_byte_accuracy] [--bootstrap 400]

Two held-out checks, both fitted on every run but those of the largest width:
1. the task law alone: Err(L) from the smaller widths' eval points (step 0 left out, bootstrap over runs),
   calibrated by its own backtest (analysis.downstream.backtest_calibration: the smaller widths' lowest-loss runs
   held out), asked for the error at each of the largest width's measured eval losses (its measured-error
   interval, which holds the law's members and its residual noise): coverage and median width before (the
   bootstrap's interval) and after the calibration, mean absolute error; beside them, the coverage a noise model
   of run offsets would give (a diagnostic: each draw a fitted run's mean residual, inflated by sqrt(G / (G - 3)),
   plus a within-run residual), and the factor the backtest of all the runs gives (what `fit` saves);
2. the whole chain: L(N, D) (Chinchilla) from the smaller widths' final losses, predicting each largest-width
   run's final loss, carried through the calibrated task law (orchestrator.commands.downstream.loss_draws +
   analysis.downstream.chain): the predicted accuracy with its intervals beside the measured one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from proxyscale.analysis.downstream import DownstreamFit, chain, fit_downstream  # noqa: E402
from proxyscale.analysis.predictive import fit_law, log_loss, log_residuals  # noqa: E402
from proxyscale.orchestrator.commands.downstream import loss_draws  # noqa: E402
from proxyscale.orchestrator.ledger import Ledger  # noqa: E402


def points(ledger: Ledger, metric: str):
    """(run_id, width, step, eval loss, accuracy) of every eval after step 0 that recorded the metric."""
    width = {r["run_id"]: r["width"] for r in ledger.runs(["finished"])}
    loss = {(s["run_id"], s["step"]): s["eval_loss"] for s in ledger.steps() if s["eval_loss"] is not None}
    return [(e["run_id"], width[e["run_id"]], e["step"], loss[e["run_id"], e["step"]], e["value"])
            for e in ledger.evals() if e["name"] == metric and e["step"] > 0 and e["run_id"] in width
            and (e["run_id"], e["step"]) in loss]


def coverage(law: DownstreamFit, loss, error) -> tuple[float, float, np.ndarray]:
    """Share of the points inside the law's measured-error interval at their loss, its median width, the misses."""
    bands = [chain(law, at, [at], [at], seed=0) for at in loss]
    inside = [b.low <= e <= b.high for b, e in zip(bands, error, strict=True)]
    return (float(np.mean(inside)), float(np.median([b.high - b.low for b in bands])),
            np.array([b.value - e for b, e in zip(bands, error, strict=True)]))


def offset_noise_coverage(law: DownstreamFit, groups, loss, error) -> float:
    """A diagnostic only: the coverage when the law's noise is drawn as a run's offset plus a within-run residual."""
    names = np.unique(groups)
    offsets = np.array([law.residuals[groups == g].mean() for g in names])
    within = np.concatenate([law.residuals[groups == g] - law.residuals[groups == g].mean() for g in names])
    rng = np.random.default_rng(0)
    inflate = np.sqrt(len(names) / (len(names) - 3))
    draws = offsets[rng.integers(0, len(names), 20000)] * inflate + within[rng.integers(0, len(within), 20000)]

    class OffsetNoise(DownstreamFit):
        def noise(self) -> np.ndarray:
            return draws

    return coverage(OffsetNoise(**{f.name: getattr(law, f.name) for f in dataclasses.fields(law)}), loss, error)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--metric", default="next_byte_accuracy")
    parser.add_argument("--bootstrap", type=int, default=400)
    args = parser.parse_args()
    with Ledger(Path(args.dir) / "ledger.sqlite") as ledger:
        rows = points(ledger, args.metric)
        runs = ledger.runs(["finished"])
        final = ledger.final_evals()
    widths = sorted({r["width"] for r in runs})
    largest = widths[-1]
    run_id, width, _, loss, accuracy = (np.array(c) for c in zip(*rows, strict=True))
    fitted, held = width < largest, width == largest
    error = 1 - accuracy.astype(float)
    loss = loss.astype(float)
    law = fit_downstream(loss[fitted], error[fitted], bootstrap=args.bootstrap, groups=run_id[fitted], calibrate=True)
    eps, k, gamma = law.theta
    print(f"{len(runs)} runs, widths {widths}; Err(L) fitted on {fitted.sum()} eval points of widths {widths[:-1]}: "
          f"eps {eps:.6g}, k {k:.6g}, gamma {gamma:.4g} (losses {law.loss_range[0]:.3f}..{law.loss_range[1]:.3f}, "
          f"accuracy {accuracy[fitted].min():.3f}..{accuracy[fitted].max():.3f})")
    if gamma <= 1.01e-3:
        print("   (gamma at its lower bound: over these losses the accuracy is a straight line in the loss, the law's "
              "gamma -> 0 limit)")
    raw = dataclasses.replace(law, calibration=None)
    before, width_before, misses = coverage(raw, loss[held], error[held])
    after, width_after, _ = coverage(law, loss[held], error[held])
    print(f"1. the task law alone on the {held.sum()} eval points of width {largest} (losses "
          f"{loss[held].min():.3f}..{loss[held].max():.3f}): mean |error| {np.mean(np.abs(misses)):.4f}, max "
          f"{np.max(np.abs(misses)):.4f}, mean signed (measured accuracy - predicted) {np.mean(misses):+.4f}; the "
          f"law's residual scale on the fitted points {1.4826 * np.median(np.abs(law.noise())):.4f}")
    print(f"   its own {law.calibration.line()}")
    print(f"   95% measured-error interval on width {largest}: coverage {before:.0%} -> {after:.0%} calibrated (factor "
          f"{law.factor:.2f}), median width {width_before:.4f} -> {width_after:.4f}; with run-offset noise draws "
          f"instead (diagnostic, uncalibrated): {offset_noise_coverage(law, run_id[fitted], loss[held], error[held]):.0%}")
    every = fit_downstream(loss, error, bootstrap=args.bootstrap, groups=run_id, calibrate=True)
    print(f"   all {len(runs)} runs (what `fit DIR --law downstream` saves): {every.calibration.line()}")

    small = [r for r in runs if r["width"] < largest]
    n, d, final_loss = (np.array([r[key] for r in small], float) for key in ("n_params", "tokens", "final_eval_loss"))
    loss_law = fit_law("chinchilla", n, d, final_loss, bootstrap=args.bootstrap, seed=0)
    residuals = log_residuals("chinchilla", loss_law, n, d, final_loss)
    print(f"2. the chain: L(N, D) on the final losses of the {len(small)} smaller runs, then Err(L):")
    print(f"   {'N':>8} {'D':>9} {'loss pred':>9} {'measured':>8}   {'accuracy pred [calibrated measured interval]':<46} "
          f"{'(bootstrap alone)':<18} {'measured':>8}")
    for r in sorted((r for r in runs if r["width"] == largest), key=lambda r: r["tokens"]):
        members, samples = loss_draws("chinchilla", loss_law, r["n_params"], r["tokens"], residuals, seed=0)
        point = float(np.exp(log_loss("chinchilla", [r["n_params"]], [r["tokens"]], loss_law.theta)[0, 0]))
        at = chain(law, point, np.exp(members), np.exp(samples), seed=0)
        bare = chain(raw, point, np.exp(members), np.exp(samples), seed=0)
        measured = final[r["run_id"]][args.metric]
        inside = "inside" if 1 - at.high <= measured <= 1 - at.low else "OUTSIDE"
        print(f"   {r['n_params']:>8,} {r['tokens']:>9,} {point:>9.4f} {r['final_eval_loss']:>8.4f}   "
              f"{1 - at.value:.4f} [{1 - at.high:.4f}, {1 - at.low:.4f}]{'':>18} [{1 - bare.high:.4f}, {1 - bare.low:.4f}]"
              f" {measured:>8.4f} {inside}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
