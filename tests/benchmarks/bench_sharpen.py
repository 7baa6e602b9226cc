"""Sharper where the data can tell (issue 31, item 3): the spread model of the distance band, side by side.

    .venv/bin/python tests/benchmarks/bench_sharpen.py            # build the cases (cached), print the table
    .venv/bin/python tests/benchmarks/bench_sharpen.py --rebuild  # recompute the cache

Every case is fitted once (bootstrap, one-step calibration, the distance backtest's held-out points) and cached in
/tmp; the spread models are then applied to the same numbers, so they differ only in how the band is set:

- today: the one-step factor alone (distance=False, the calibration before issue 31);
- ml+uq: the distance model as committed in 83e7c82 (growth by Gaussian likelihood, the prior the upper quartile of
  the sources' growths, 0.0428);
- conformal: the growth set so that `level` of the held-out units' errors lie inside z sigma(x) (each (split, size)
  unit weighing one), the prior the same quantile of every source's units pooled (each source weighing one).

Cases: misfitting_small (the 4, 5, 6 smallest sizes fitted, every larger run predicted; the cell's best run, or the
bowl estimate of analysis/sharpen.cell_optima), and four misspecified simulated truths (bench_distance.py's, the 4,
5, 6 smallest of 8 sizes fitted, every larger run and runs at 30x and 100x predicted). Each source is judged with a
prior measured without it (leave that source out).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

import bench_distance as bd  # noqa: E402

from proxyscale.analysis import predictive  # noqa: E402
from proxyscale.analysis.predictive import (  # noqa: E402
    backtest_calibration,
    distance_backtest,
    fit_law,
    log_residuals,
    predict_loss,
    residual_scale,
)
from proxyscale.analysis.sharpen import cell_optima  # noqa: E402

CACHE = Path("/tmp/bench_sharpen_cache.pkl")
Z = 1.959963984540054


def misfitting_cells(kind: str):
    runs = pd.read_csv(bd.DATA / "misfitting_small" / "scaling_results_last_ckpt_small.csv")
    runs = runs.drop_duplicates(["N", "D", "peak_lr", "loss"])
    cells = cell_optima(runs.N, runs.D, runs.peak_lr, runs.loss)
    return cells.n, cells.d, (cells.best_observed if kind == "best" else cells.loss)


def one_case(n, d, loss, fitted, tests, *, bootstrap: int, seed: int, profile: bool) -> dict:
    tn, td, tl = tests
    fn, fd, fl = n[fitted], d[fitted], loss[fitted]
    fit = fit_law("chinchilla", fn, fd, fl, bootstrap=bootstrap, seed=seed)
    residuals = log_residuals("chinchilla", fit, fn, fd, fl)
    raw = predict_loss("chinchilla", fit, tn, td, residuals, seed=seed)
    one_step = backtest_calibration("chinchilla", fn, fd, fl, seed=seed, distance=False, fit=fit)
    x, e, g, w = distance_backtest("chinchilla", fn, fd, fl)
    out = {"point": np.log(raw.value), "low": np.log(raw.low), "high": np.log(raw.high), "factor": one_step.factor,
           "measured": np.log(tl), "x_test": np.maximum(np.log(tn / fn.max()), 0), "x": x, "e": e, "g": g, "w": w,
           "noise": residual_scale(residuals), "span": max(float(np.log(fn.max() / fn.min())), predictive.MIN_SPAN),
           "sizes": len(np.unique(fn))}
    if profile:
        p = predictive.profile_target("chinchilla", fit, fn, fd, fl, target_n=tn, target_d=td)
        if p is not None:
            lo, hi = p.loss_range()
            out["profile"] = (np.log(lo), np.log(hi))
    return out


def build(seeds: int, bootstrap: int) -> dict:
    start = time.time()
    cache: dict = {"sources": {}, "cases": {}}
    sources = bd.published_ladders()
    for kind in bd.TRUTHS:
        sources[f"simulated_{kind}"] = [bd.simulated_ladder(kind, seed) for seed in range(4)]
    for name, ladders in sources.items():
        cache["sources"][name] = bd.source_points(ladders)
        print(f"  source {name}: {time.time() - start:.0f} s", flush=True)
    for kind in ("best", "bowl"):
        n, d, loss = misfitting_cells(kind)
        sizes = np.unique(n)
        cases = []
        for k in (4, 5, 6):
            fitted = n <= sizes[k - 1]
            cases.append(one_case(n, d, loss, fitted, (n[~fitted], d[~fitted], loss[~fitted]), bootstrap=bootstrap,
                                  seed=0, profile=True))
        cache["cases"][f"misfitting_{kind}"] = ("misfitting_small", cases)
        print(f"  misfitting ({kind}): {time.time() - start:.0f} s", flush=True)
    for kind in bd.TRUTHS:
        cases = []
        for seed in range(seeds):
            n, d, loss = bd.simulated_ladder(kind, 100 + seed)
            sizes = np.unique(n)
            for k in (4, 5, 6):
                fitted = n <= sizes[k - 1]
                far = bd.far_targets(kind, sizes[k - 1], seed)
                tests = tuple(np.concatenate([a[~fitted], b]) for a, b in zip((n, d, loss), far, strict=True))
                cases.append(one_case(n, d, loss, fitted, tests, bootstrap=bootstrap, seed=seed, profile=True))
        cache["cases"][kind] = (f"simulated_{kind}", cases)
        print(f"  simulated {kind}: {time.time() - start:.0f} s", flush=True)
    return cache


# ------------------------------------------------------------------ the growth, two ways


def unit_weights(groups) -> np.ndarray:
    _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / counts[index]


def ml_growth(u, e, g, noise) -> float:
    return predictive.fit_growth(u, e, g, noise)


def conformal_growth(u, e, weights, noise, level: float = 0.95) -> float:
    """predictive.conformal_growth with explicit per-point weights (a pooled source: each source weighs one)."""
    return predictive.conformal_growth(u, e, None, noise, level=level, weights=weights)


def floor_coverage(points, growth: float) -> float:
    """Share of one source's held-out units inside z sigma(x) of `growth` alone (no bootstrap band)."""
    u, e, g, noise = points
    w = unit_weights(g)
    return float(np.sum(w * (np.abs(e) <= Z * np.sqrt(noise**2 + (growth * u) ** 2))) / w.sum())


def priors(sources: dict, leave_out: str) -> dict[str, float]:
    used = {k: v for k, v in sources.items() if k != leave_out and v is not None}
    ml = [ml_growth(*v) for v in used.values()]
    conf = [conformal_growth(v[0], v[1], unit_weights(v[2]), v[3]) for v in used.values()]
    # Pooled: every source weighs one, each of its units equally within it.
    u = np.concatenate([v[0] for v in used.values()])
    e = np.concatenate([v[1] for v in used.values()])
    noise = np.concatenate([v[3] for v in used.values()])
    weights = np.concatenate([unit_weights(v[2]) / len(np.unique(v[2])) for v in used.values()])
    return {"ml_uq": float(np.percentile(ml, 75)), "conf_median": float(np.median(conf)),
            "conf_uq": float(np.percentile(conf, 75)), "conf_pooled": conformal_growth(u, e, weights, noise)}


def growth_of(case: dict, method: str, prior: float) -> float:
    u = case["x"] / np.maximum(case["w"], predictive.MIN_SPAN)
    units = predictive.held_out_sizes(case["g"]) if len(case["g"]) else 0
    if method == "ml":
        own = ml_growth(u, case["e"], case["g"], case["noise"]) if len(u) else np.nan
    else:
        own = conformal_growth(u, case["e"], unit_weights(case["g"]), case["noise"]) if len(u) else np.nan
    if units >= predictive.MIN_GROWTH_UNITS and np.isfinite(own):
        return own
    return prior if not np.isfinite(own) else max(own, prior)


def band(case: dict, growth: float | None, *, profile: bool) -> tuple[np.ndarray, np.ndarray]:
    point, low, high, base = case["point"], case["low"], case["high"], case["factor"]
    if growth is None:
        return point + base * (low - point), point + base * (high - point)
    floor = Z * np.sqrt(case["noise"] ** 2 + (growth * case["x_test"] / case["span"]) ** 2)
    lo, hi = point - np.maximum(base * (point - low), floor), point + np.maximum(base * (high - point), floor)
    if profile and "profile" in case:
        lo, hi = np.minimum(lo, case["profile"][0]), np.maximum(hi, case["profile"][1])
    return lo, hi


METHODS = {"today (one-step, e4648e3)": (None, None), "distance model 83e7c82 (ML, prior UQ)": ("ml", "ml_uq"),
           "conformal, prior pooled": ("conf", "conf_pooled"), "conformal, prior median": ("conf", "conf_median"),
           "after: conformal, prior UQ": ("conf", "conf_uq")}


def evaluate(cache: dict, *, profile: bool = True) -> list[tuple]:
    rows = []
    for label, (source, cases) in cache["cases"].items():
        prior = priors(cache["sources"], source)
        results = {}
        for method, (growth_kind, prior_kind) in METHODS.items():
            cov, half, xs = [], [], []
            for case in cases:
                growth = None if growth_kind is None else growth_of(case, growth_kind, prior[prior_kind])
                lo, hi = band(case, growth, profile=profile and growth_kind is not None)
                cov.append((lo <= case["measured"]) & (case["measured"] <= hi))
                half.append((np.exp(hi) - np.exp(lo)) / 2 / np.exp(case["point"]))
                xs.append(case["x_test"])
            results[method] = (np.concatenate(xs), np.concatenate(cov), np.concatenate(half))
        x = results[next(iter(METHODS))][0]
        for low, high in zip(bd.BINS[:-1], bd.BINS[1:], strict=True):
            mask = (x > low) & (x <= high) if low > 0 else (x >= low) & (x <= high)
            if mask.any():
                rows.append((label, f"{np.exp(low):.2g}x-{np.exp(high):.3g}x", int(mask.sum()),
                             {m: (r[1][mask].mean(), np.median(r[2][mask])) for m, r in results.items()}))
        rows.append((label, "priors", 0, prior))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    if args.rebuild or not CACHE.exists():
        CACHE.write_bytes(pickle.dumps(build(args.seeds, args.bootstrap)))
    cache = pickle.loads(CACHE.read_bytes())
    print("leave-one-source-out: each source's held-out units inside the floor alone (no bootstrap band), prior from "
          "the other sources:")
    for name, points in cache["sources"].items():
        if points is None:
            continue
        prior = priors(cache["sources"], name)
        print(f"  {name:<24} median {prior['conf_median']:.4f}: {floor_coverage(points, prior['conf_median']):.0%}; "
              f"upper quartile {prior['conf_uq']:.4f}: {floor_coverage(points, prior['conf_uq']):.0%}")
    rows = evaluate(cache, profile=not args.no_profile)
    methods = list(METHODS)
    print("| data | distance | points | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for label, where, count, values in rows:
        if where == "priors":
            print(f"| {label} | priors | | " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()) + " |")
            continue
        cells = [f"{values[m][0]:.0%} / {values[m][1]:.2%}" for m in methods]
        print(f"| {label} | {where} | {count} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
