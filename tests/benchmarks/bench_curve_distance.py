"""The curve laws' bands at a larger size, the one-step factor alone beside the distance model (issue 31 item 1, B).

Simulated ladders of whole curves (tests/test_curve_law.ladder_specs: per width a constant run, a cosine run and three
WSD cooldown forks; the trainer of models/simulated.py with 0.3% noise), the Tissue form (relative clock) fitted to
the 2, 4 or 7 smallest widths of 64..2048 by `analysis.predictive.fit_curves` (backtest, one-step factor, distance
model), every point past the first 10% of every larger width's curves predicted. Each cell: coverage of the 95%
measured-loss band / its median half-width in log, for the one-step factor alone (what fit-schedule gave before the
distance model) and with each point's band floored at its distance (the farther of N and tokens in spans; the prior
with fewer than 6 sizes). Truths: the Tissue form itself, the multi-power law with a size-dependent anneal (the form
misspecified).

    .venv/bin/python tests/benchmarks/bench_curve_distance.py            # about 1-2 minutes on 2 loaded cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxyscale.analysis.predictive import curve_band, fit_curves  # noqa: E402
from proxyscale.models.spec import SimulatedSpec  # noqa: E402
from tests.test_curve_law import simulated_curves  # noqa: E402

WIDTHS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
TRUTHS = {"tissue (well specified)": {"curve_form": "tissue"},
          "multi-power, anneal ~ N^0.13 (misspecified)": {"curve_form": "multipower", "anneal_size_exponent": 0.13}}
BINS = ((1.0, 3.0), (3.0, 10.0), (10.0, 40.0), (40.0, 1e9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--fitted", type=int, nargs="+", default=[2, 4, 7])
    args = parser.parse_args()
    print("truth | sizes fitted | N / N_max fitted | points | one-step factor: coverage / median half-width | "
          "distance model: coverage / median half-width | growth source")
    for name, overrides in TRUTHS.items():
        for fitted in args.fitted:
            rows: dict[tuple[float, float], list] = {b: [[], [], [], []] for b in BINS}
            sources = set()
            for seed in range(args.seeds):
                truth = SimulatedSpec(noise=0.003, seed=seed, **overrides)
                curves = simulated_curves(truth, widths=WIDTHS)
                sizes = sorted({c.n_params for c in curves})
                fit_set = [c for c in curves if c.n_params <= sizes[fitted - 1]]
                fit, backtest = fit_curves(fit_set, law="tissue", clock="relative", bootstrap=64, seed=seed)
                calibration = backtest.calibration
                sources.add(calibration.distance.source)
                n_max = sizes[fitted - 1]
                held = [(c, c.steps[c.past_start(0.1)]) for c in curves if c.n_params > n_max]
                measured, point, low, high = curve_band(fit, "tissue", fit_set, held, level=0.95, seed=seed,
                                                        skip_fraction=0.1)
                n = np.concatenate([np.full(len(s), c.n_params) for c, s in held])
                tokens = np.concatenate([s * c.batch_tokens for c, s in held])
                one = calibration.scale(point, low, high)
                far = calibration.distance_band(n, point, low, high, d=tokens)
                ratio = n / n_max
                for b in BINS:
                    inside = (ratio >= b[0]) & (ratio < b[1])
                    for k, (lo, hi) in enumerate((one, far)):
                        rows[b][2 * k].append((lo[inside] <= measured[inside]) & (measured[inside] <= hi[inside]))
                        rows[b][2 * k + 1].append((hi[inside] - lo[inside]) / 2)
            for b, (c1, w1, c2, w2) in rows.items():
                c1, w1, c2, w2 = (np.concatenate(v) for v in (c1, w1, c2, w2))
                if not len(c1):
                    continue
                print(f"{name} | {fitted} | {b[0]:g}x-{b[1]:g}x | {len(c1)} | {c1.mean():.0%} / {np.median(w1):.2%} | "
                      f"{c2.mean():.0%} / {np.median(w2):.2%} | {'/'.join(sorted(sources))}", flush=True)


if __name__ == "__main__":
    main()
