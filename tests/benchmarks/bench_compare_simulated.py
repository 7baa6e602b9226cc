"""Simulated pairs of laws: how often the crossover interval holds the true crossover, and how often equal laws
get a confident (wrong) call, over many noise draws.

Two known Chinchilla laws (tests/test_compare.py's LAW_A and LAW_B, whose frontiers cross beyond the ladder) are
sampled on 5 sizes x 5 tokens per parameter with 0.5% noise; `fit_recipes` + `compare_at` at 1e21 FLOPs. Equal
laws: LAW_A twice with independent noise.

    .venv/bin/python tests/benchmarks/bench_compare_simulated.py [--replications 20] [--bootstrap 200]

The numbers are recorded in docs/compare.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_compare import LAW_A, LAW_B, ladder, true_crossover  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from proxyscale.analysis.compare import Recipe, Target, compare_at, fit_recipes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--decide-at", type=float, default=0.9)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    truth = true_crossover(LAW_A, LAW_B)
    covered, found, errors, called_right = 0, 0, [], 0
    for seed in range(args.replications):
        fits = fit_recipes([Recipe.of("a", *ladder(LAW_A, seed=100 + seed)),
                            Recipe.of("b", *ladder(LAW_B, seed=200 + seed))], bootstrap=args.bootstrap)
        result = compare_at(fits, Target(flops=1e21), decide_at=args.decide_at)
        cross = result.pairs[0].crossover
        called_right += result.winner == "b"
        if cross.flops is not None:
            found += 1
            covered += cross.flops.low <= truth <= cross.flops.high
            errors.append(abs(np.log10(cross.flops.value / truth)))
    print(f"known crossover at {truth:.3g} FLOPs (the largest run: {6 * 6e7 * 6e7 * 80:.3g}); "
          f"{args.replications} replications, {args.bootstrap} members")
    print(f"  crossover found in {found}/{args.replications}; its 95% interval holds the truth in {covered}/{found}; "
          f"median |log10 error| {np.median(errors):.3f}")
    print(f"  at 1e21 FLOPs the right recipe (b) called with P(best) >= {args.decide_at}: {called_right}/"
          f"{args.replications}")
    ps = []
    for seed in range(args.replications):
        fits = fit_recipes([Recipe.of("a", *ladder(LAW_A, seed=300 + seed)),
                            Recipe.of("b", *ladder(LAW_A, seed=400 + seed))], bootstrap=args.bootstrap)
        ps.append(compare_at(fits, Target(flops=1e21), decide_at=args.decide_at).pairs[0].p_a_lower)
    ps = np.array(ps)
    confident = (ps >= args.decide_at) | (ps <= 1 - args.decide_at)
    print(f"equal laws: P(a lower) mean {ps.mean():.3f}, quartiles {np.percentile(ps, 25):.3f} / "
          f"{np.percentile(ps, 75):.3f}; a call at {args.decide_at}: {int(confident.sum())}/{len(ps)} "
          f"(a calibrated P is uniform here: {2 * (1 - args.decide_at):.0%} expected); 'no clear winner': "
          f"{int((~confident).sum())}/{len(ps)}")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
