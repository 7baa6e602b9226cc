"""Compute needed to pin down N_opt(C*) and L(C*): the active planner vs the full isoFLOP grid vs random
sampling, on the SIMULATED trainer's ground truths (models/simulated.py), in one script.

The ladder: a depth-4 GPT at widths 64..512 (N from models/flops.py), FLOP budgets 1e14..3e16, with
tokens per parameter kept within [2, 400]; the target C* is 100x the largest allowed run. Every
method draws runs from the same cells (one LR, at the truth's optimum, so the comparison is about
where to spend compute) and refits L(N, D) (Huber, the same fitter for all) after each new result:
- active: the planner's initial design, then one proposal at a time (analysis/planner.py);
- grid: the isoFLOP grid one budget level at a time, cheapest level first, refit after each level;
- random: the cells in a random order.
A method "reaches" the target when its point estimate has N_opt within 10% and L(C*) within 0.5% of
the truth; the FLOPs it spent up to then are its cost. A run of a method that never reaches it
(the whole space spent) is a failure. Medians are over the seeds that did not fail.

Run: .venv/bin/python tests/benchmarks/bench_planner.py [--seeds 10]
Last line: compute_saving_vs_grid=<median grid FLOPs / median planner FLOPs>
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from analysis.laws import compute_optimal_allocation
from analysis.planner import (COARSE_STARTS, Candidate, Observation, PlannerSettings, TargetEstimate, estimate_target,
                              initial_design, propose)
from models.flops import count_parameters, flops_per_token
from models.simulated import true_loss
from models.spec import ModelSpec, SimulatedSpec

N_TOLERANCE, LOSS_TOLERANCE = 0.10, 0.005
TRUTHS = {
    "chinchilla": SimulatedSpec(noise=0.002),
    "chinchilla-noisy": SimulatedSpec(noise=0.01),
    "n-heavy (a=.5 b=.25)": SimulatedSpec(alpha=0.5, beta=0.25, A=2000.0, B=300.0, noise=0.003),
    "d-heavy (a=.22 b=.45)": SimulatedSpec(alpha=0.22, beta=0.45, A=120.0, B=6000.0, noise=0.003),
    "low-E noisy": SimulatedSpec(E=0.6, A=300.0, B=900.0, alpha=0.3, beta=0.3, noise=0.006),
}
# A coarser start grid than Epoch's 4,500 (the same for every method) keeps the ~5,000 refits quick.
START_GRID = COARSE_STARTS


def ladder() -> list[Candidate]:
    cells = []
    for width in (64, 96, 128, 192, 256, 384, 512):
        model = ModelSpec(width=width, depth=4, n_heads=4, seq_len=256)
        n, per_token = count_parameters(model).total, flops_per_token(model)
        for flops in np.geomspace(1e14, 3e16, 8):
            tokens = flops / per_token
            if 2 <= tokens / n <= 400:
                cells.append(Candidate(f"w{width}-c{flops:.2g}", width, float(n), float(tokens), float(flops), 1e-2))
    return cells


class Oracle:
    def __init__(self, truth: SimulatedSpec, target_flops: float, seed: int) -> None:
        self.truth, self.target = truth, target_flops
        self.rng = np.random.default_rng(seed)
        n, d = compute_optimal_allocation(target_flops, A=truth.A, B=truth.B, alpha=truth.alpha, beta=truth.beta)
        self.n_opt = float(n)
        self.loss = float(true_loss(replace(truth, lr_penalty=0.0), n, d, truth.lr_optimal, truth.lr_base_width))

    def observe(self, c: Candidate) -> Observation:
        clean = float(true_loss(self.truth, c.n_params, c.tokens, c.lr, c.width))
        loss = clean * (1 + self.truth.noise * self.rng.standard_normal())
        return Observation(c.key, c.width, c.n_params, c.tokens, c.flops, c.lr, "finished", loss)

    def estimate(self, observations: list[Observation], bootstrap: int = 0, seed: int = 0) -> TargetEstimate | None:
        return estimate_target(observations, self.target, bootstrap=bootstrap, seed=seed, starts=START_GRID)

    def accurate(self, estimate: TargetEstimate | None) -> bool:
        return (estimate is not None and abs(estimate.n_opt.value / self.n_opt - 1) <= N_TOLERANCE
                and abs(estimate.loss.value / self.loss - 1) <= LOSS_TOLERANCE)


def spent(observations: list[Observation]) -> float:
    return sum(o.flops for o in observations)


def run_active(cells, oracle: Oracle, seed: int) -> float | None:
    observations = [oracle.observe(c) for c in initial_design(cells, 6)]
    budget = sum(c.flops for c in cells)
    while True:
        estimate = oracle.estimate(observations, bootstrap=48, seed=seed)
        if oracle.accurate(estimate):
            return spent(observations)
        settings = PlannerSettings(target_flops=oracle.target, budget_flops=budget - spent(observations), seed=seed)
        proposals = propose(cells, observations, settings, estimate=estimate)
        if not proposals:
            return None
        observations += [oracle.observe(p.candidate) for p in proposals]


def run_grid(cells, oracle: Oracle, seed: int) -> float | None:
    observations: list[Observation] = []
    for level in sorted({c.flops for c in cells}):
        observations += [oracle.observe(c) for c in cells if c.flops == level]
        if oracle.accurate(oracle.estimate(observations)):
            return spent(observations)
    return None


def run_random(cells, oracle: Oracle, seed: int) -> float | None:
    order = np.random.default_rng(1000 + seed).permutation(len(cells))
    observations: list[Observation] = []
    for index in order:
        observations.append(oracle.observe(cells[index]))
        if oracle.accurate(oracle.estimate(observations)):
            return spent(observations)
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    cells = ladder()
    target = 100 * max(c.flops for c in cells)
    grid_total = sum(c.flops for c in cells)
    print(f"ladder: {len(cells)} cells, {len({c.width for c in cells})} widths, full grid {grid_total:.3e} FLOPs;"
          f" target C* = {target:.2e} (100x the largest run)")
    methods = {"active": run_active, "grid": run_grid, "random": run_random}
    costs: dict[str, list[float]] = {m: [] for m in methods}
    failures: dict[str, int] = {m: 0 for m in methods}
    started = time.perf_counter()
    for name, truth in TRUTHS.items():
        line = []
        for method, run in methods.items():
            reached = []
            for seed in range(args.seeds):
                cost = run(cells, Oracle(truth, target, seed), seed)
                if cost is None:
                    failures[method] += 1
                else:
                    reached.append(cost)
            costs[method] += reached
            median = f"{np.median(reached):.2e}" if reached else "-"
            line.append(f"{method} {median} ({args.seeds - len(reached)} failed)")
        print(f"{name:<24} median FLOPs to reach: " + ", ".join(line), flush=True)
    total = len(TRUTHS) * args.seeds
    for method in methods:
        median = np.median(costs[method]) if costs[method] else float("nan")
        print(f"{method:>7}: median {median:.3e} FLOPs ({median / grid_total:.1%} of the full grid), "
              f"failure rate {failures[method]}/{total} = {failures[method] / total:.0%}")
    print(f"({time.perf_counter() - started:.0f}s)")
    saving = np.median(costs["grid"]) / np.median(costs["active"])
    print(f"compute_saving_vs_grid={saving:.2f}")


if __name__ == "__main__":
    main()
