"""The Chinchilla fit (Epoch's full starting grid plus 1,000 bootstrap resamples): proxyscale's
vectorised fit against a plain loop of scipy.optimize.minimize calls doing the same work, in one script.

The plain loop is what a notebook does: for every grid start, L-BFGS-B on the Huber objective with
scipy's finite-difference gradient, keep the best; then for every resample, the same from the
same two starts proxyscale uses (the full-data optimum and the runner-up basin).

Run: .venv/bin/python tests/benchmarks/bench_fit.py [--plain-fraction 0.25]
With --plain-fraction f < 1 the plain loop runs a random f of its minimisations and its time is
scaled by 1/f (said in the output). Last line: fit_speedup=<plain/ours> seconds=<ours>.

--scale (issue 22): the analysis as a sweep grows, on the simulated trainer's curves (33 eval points a run):
one refit of L(N, D) with its 100-member bootstrap at 30-3,000 runs, from scratch and warm-started
(analysis.incremental: one run added to the last fit); one refit of the curve law with its 64-member ensemble
at 1e3-1e5 curve points; and one planner step (the curve law's refit, the target's members, the scoring of 40
open actions) at the same sizes: from scratch, warm-started, between refits (new runs conditioned on as
observed, their values ignored), and with the recursive update (analysis.incremental.WarmCurves.update: one
Gauss-Newton step of every member from the new run's points only, then the scoring). The last 3 runs are taken in
one at a time by the update and each compared with a warm refit on the same curves: |log N_opt| and |L(C*)| apart,
beside the same for the estimate not updated and the refit's interval half-width. Prints each time and its log-log
slope against the points; last line: planner_step_ratio=<a step between refits, largest / smallest size>
update_step=<the same for a step with the recursive update> refit_step=<for a warm refit> scratch=<from scratch>.
    .venv/bin/python tests/benchmarks/bench_fit.py --scale [--runs 30,300,3000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from proxyscale.analysis.fit import HUBER_DELTA, bootstrap_weights, default_grid, fit_chinchilla

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chinchilla_epoch" / "svg_extracted_data.csv"


def plain_objective(params, log_n, log_d, log_l):
    a, b, e, alpha, beta = params
    predicted = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
    return huber(HUBER_DELTA, log_l - predicted).sum()


def plain_fit(start, log_n, log_d, log_l):
    return minimize(plain_objective, start, args=(log_n, log_d, log_l), method="L-BFGS-B")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--plain-fraction", type=float, default=0.2)
    parser.add_argument("--scale", action="store_true", help="time the analysis against the number of runs and points")
    parser.add_argument("--runs", default="30,300,3000", help="--scale: sweep sizes (runs; 33 curve points each)")
    parser.add_argument("--skip-scratch", action="store_true", help="--scale: time only the warm and between-refit steps")
    args = parser.parse_args()
    if args.scale:
        from bench_fit_scale import main as scale_main

        scale_main([int(r) for r in args.runs.split(",")], scratch=not args.skip_scratch)
        return
    if not DATA.exists():
        sys.exit(f"reference data {DATA} is absent")
    table = pd.read_csv(DATA).sort_values("loss").iloc[:-5]
    n = table["Model Size"].to_numpy()
    d = table["Training FLOP"].to_numpy() / (6 * n)
    loss = table["loss"].to_numpy()
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)

    started = time.perf_counter()
    ours = fit_chinchilla(n, d, loss, bootstrap=args.bootstrap, seed=0)
    ours_seconds = time.perf_counter() - started
    print(f"ours: {ours_seconds:.2f}s, objective {ours.objective:.6e}, params {ours.params}")

    rng = np.random.default_rng(1)
    grid = default_grid()
    grid_sample = grid[rng.random(len(grid)) < args.plain_fraction]
    started = time.perf_counter()
    grid_results = [plain_fit(start, log_n, log_d, log_l) for start in grid_sample]
    best = min(grid_results, key=lambda r: r.fun)
    runner_up = sorted(grid_results, key=lambda r: r.fun)[1]
    weights = bootstrap_weights(len(loss), args.bootstrap, 0)
    boot_rows = np.flatnonzero(rng.random(args.bootstrap) < args.plain_fraction)
    for row in boot_rows:
        index = np.repeat(np.arange(len(loss)), weights[row].astype(int))
        for start in (best.x, runner_up.x):
            plain_fit(start, log_n[index], log_d[index], log_l[index])
    plain_measured = time.perf_counter() - started
    plain_seconds = plain_measured / args.plain_fraction
    print(f"plain loop: {len(grid_sample)} grid starts + {2 * len(boot_rows)} bootstrap fits in {plain_measured:.1f}s"
          + (f", scaled by 1/{args.plain_fraction} to {plain_seconds:.1f}s" if args.plain_fraction < 1 else ""))
    print(f"plain best objective {best.fun:.6e} (ours {ours.objective:.6e})")
    print(f"fit_speedup={plain_seconds / ours_seconds:.1f} seconds={ours_seconds:.2f}")


if __name__ == "__main__":
    main()
