"""The distance line on a demo-like ladder, before and after D (and C) counted in the distance (issue 31, item 1).

The demo's ladder (sweeps/demo.yaml: widths 16-128 x 0.2M-3.2M tokens, 28 cells, N from the model's parameter count)
with losses from the law the demo fitted (README: L = 1.219 + 179.1/N^0.634 + 668.8/D^0.556) times log-normal noise,
fitted with 200 bootstrap members and calibrated at the compute-optimal (N, D) of 3e13 FLOPs as `recommend` does
(analysis/predictive.backtest_calibration with the target). The target sits inside the ladder in N and beyond its
longest runs in D. Prints the backtest line, the loss interval at the target and the seconds it took.

    .venv/bin/python tests/benchmarks/bench_distance_demo.py               # this checkout's analysis/predictive.py
    .venv/bin/python tests/benchmarks/bench_distance_demo.py --rev 3a232d5  # that commit's, for the "before"
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = [16] * 5 + [24] * 5 + [32] * 5 + [48] * 4 + [64] * 3 + [80] * 3 + [96] * 2 + [128]
TOKENS = ([204800, 409600, 819200, 1638400, 3276800] * 3 + [204800, 409600, 819200, 1638400]
          + [204800, 409600, 819200] * 2 + [204800, 409600] + [204800])
TARGET_FLOPS = 3e13


def parameters(width: int) -> float:
    """All parameters of the demo's 2-layer GPT (vocab 256, seq 32, tied embeddings, layernorm, MLP ratio 4)."""
    return float(24 * width**2 + 298 * width)


def truth(n, d):
    return 1.219 + 179.1 / n**0.634 + 668.8 / d**0.556


def load(rev: str | None):
    if rev is None:
        from proxyscale.analysis import predictive

        return predictive
    text = subprocess.run(["git", "show", f"{rev}:analysis/predictive.py"], capture_output=True, text=True,
                          check=True).stdout
    path = Path(tempfile.mkdtemp()) / "predictive_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("predictive_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["predictive_rev"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a git revision whose analysis/predictive.py to run (default: this checkout's)")
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    predictive = load(args.rev)
    n = np.array([parameters(w) for w in WIDTHS])
    d = np.array(TOKENS, float)
    for seed in range(args.seeds):
        loss = truth(n, d) * np.exp(np.random.default_rng(seed).normal(0, args.noise, len(n)))
        fit = predictive.fit_law("chinchilla", n, d, loss, bootstrap=200, seed=seed)
        raw = fit.compute_optimal(TARGET_FLOPS)
        target = (float(raw["n_opt"].value), float(raw["d_opt"].value))
        start = time.perf_counter()
        calibration = predictive.backtest_calibration("chinchilla", n, d, loss, seed=seed, target=target, fit=fit)
        seconds = time.perf_counter() - start
        loss_interval = calibration.interval(raw["loss"])
        half = (np.log(loss_interval.high) - np.log(loss_interval.low)) / 2
        true_loss = float(truth(*target))
        print(f"seed {seed}: target N {target[0]:.3g} ({target[0] / n.max():.2f}x), D {target[1]:.3g} "
              f"({target[1] / d.max():.2f}x); L {loss_interval.value:.4f} [{loss_interval.low:.4f}, "
              f"{loss_interval.high:.4f}] half-width {half:.2%} in log, law's truth there {true_loss:.4f} "
              f"({'inside' if loss_interval.low <= true_loss <= loss_interval.high else 'OUTSIDE'}); "
              f"backtest {seconds:.2f} s")
        print(f"  {calibration.line()}")


if __name__ == "__main__":
    main()
