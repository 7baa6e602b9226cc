"""Coverage of the LR-transfer drift interval (analysis.lr_transfer.fit_transfer) over simulated sweeps.

Each case simulates many sweeps of bowls in log LR (widths 32-256, 15 LRs 1.41x apart, LR_opt = 0.01
(width / 64)^drift, Gaussian noise per run, optionally a level per seed) and counts how often the 95%
interval holds the true drift; beside it, the estimates' spread against the interval's half-width / 1.96
(the spread the interval implies). A ratio above 1 is a conservative interval.

Run: .venv/bin/python tests/benchmarks/bench_transfer_coverage.py [--replications 300] [--bootstrap 200]
Last line: transfer_coverage=<the lowest coverage over the cases>.
"""

from __future__ import annotations

import argparse

import numpy as np

from proxyscale.analysis.lr_transfer import fit_transfer

WIDTHS = np.array([32.0, 64.0, 128.0, 256.0])
GRID = 1e-2 * 1.41 ** np.arange(-7, 8)


def simulate(rng, drift: float, sigma: float, seeds: int, seed_levels: float):
    """One simulated sweep: (width, lr, loss, seed) per run."""
    width = np.repeat(WIDTHS, len(GRID) * seeds)
    lr = np.tile(np.repeat(GRID, seeds), len(WIDTHS))
    seed = np.tile(np.arange(seeds), len(GRID) * len(WIDTHS))
    u = np.log(lr / (1e-2 * (width / 64) ** drift))
    level = seed_levels * rng.standard_normal((len(WIDTHS), seeds))[np.searchsorted(WIDTHS, width), seed]
    return width, lr, 2.3 + 0.05 * u**2 + level + sigma * rng.standard_normal(len(width)), seed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replications", type=int, default=300)
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    cases = [(0.0, 1, 0.0), (-1.0, 1, 0.0), (0.0, 2, 0.0), (-1.0, 2, 0.3), (0.0, 3, 0.1)]
    coverages = []
    print("drift  seeds  seed-levels  coverage  half-width  spread  implied/actual")
    for drift, seeds, levels in cases:
        rng = np.random.default_rng(21)
        hits, halves, values = [], [], []
        for replication in range(args.replications):
            width, lr, loss, seed = simulate(rng, drift, 0.006, seeds, levels)
            fit = fit_transfer(width, lr, loss, seeds=seed, bootstrap=args.bootstrap, seed=replication)
            hits.append(fit.drift.low <= drift <= fit.drift.high)
            halves.append((fit.drift.high - fit.drift.low) / 2)
            values.append(fit.drift.value)
        coverages.append(float(np.mean(hits)))
        ratio = np.mean(halves) / 1.96 / np.std(values)
        print(f"{drift:+5.1f}  {seeds:5d}  {levels:11.1f}  {coverages[-1]:8.3f}  {np.mean(halves):10.3f}  "
              f"{np.std(values):6.3f}  {ratio:14.2f}")
    print(f"transfer_coverage={min(coverages):.3f}")


if __name__ == "__main__":
    main()
