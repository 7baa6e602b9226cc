"""Compare by laws against ranking at the largest proxy, on Gadre et al.'s three data sets and eight evaluation sets.

For each evaluation set, a law per data set (c4_original, rpj, rw_original) is fitted to the models below 400M
(10.6M, 78.9M, 153.7M; 5 to 640 tokens per parameter) with `analysis.compare.fit_recipes`, and each pair of data
sets is compared at every held-out 411.6M cell (its N and tokens per parameter) with `compare_at`. Scored against
the measured 400M losses: how many pairwise orderings are right, a reliability table of the stated probability
of the predicted ordering against how often it was right, and the Brier score of P(a lower). Beside it, the
single-scale ranking: the measured order at 153.7M at the same tokens per parameter, taken as the order at 400M.

    .venv/bin/python tests/benchmarks/bench_compare_gadre.py [--law overtraining|chinchilla] [--bootstrap 400]

The numbers are recorded in docs/compare.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "gadre_small" / "gadre_small_evals.csv"
HELD_OUT_ABOVE = 4e8
BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001)


def evaluate(table: pd.DataFrame, *, law: str, bootstrap: int, share: str, decide_at: float, seed: int) -> pd.DataFrame:
    """One row per (evaluation set, held-out 400M cell, pair of data sets): P(a lower), truth, single-scale call."""
    from proxyscale.analysis.compare import Recipe, Target, compare_at, fit_recipes

    rows = []
    for eval_name, block in table.groupby("eval", sort=True):
        small = block[block["N_params"] < HELD_OUT_ABOVE]
        large = block[block["N_params"] > HELD_OUT_ABOVE]
        largest_fitted = small["N_params"].max()
        recipes = [Recipe.of(name, g["N_params"], g["D_tokens"], g["loss"]) for name, g in small.groupby("dataset")]
        fits = fit_recipes(recipes, law=law, share=share, bootstrap=bootstrap, seed=seed)
        n_big = float(large["N_params"].iloc[0])
        for m, cell in large.groupby("tokens_per_param_M"):
            measured = dict(zip(cell["dataset"], cell["loss"], strict=True))
            proxy = small[(small["N_params"] == largest_fitted) & (small["tokens_per_param_M"] == m)]
            at_proxy = dict(zip(proxy["dataset"], proxy["loss"], strict=True))
            result = compare_at(fits, Target(n=n_big, d=m * n_big), decide_at=decide_at)
            for pair in result.pairs:
                if pair.a not in measured or pair.b not in measured:
                    continue  # c4_original has no 411.6M run at 640 tokens per parameter
                rows.append({"eval": eval_name, "M": m, "a": pair.a, "b": pair.b, "p_a_lower": pair.p_a_lower,
                             "difference": pair.difference.value, "verdict": pair.verdict,
                             "a_lower": measured[pair.a] < measured[pair.b],
                             "measured_difference": measured[pair.a] - measured[pair.b],
                             "proxy_a_lower": at_proxy[pair.a] < at_proxy[pair.b],
                             "shared": ",".join(fits.sharing.shared) or "-",
                             "crossover": pair.crossover.flops.value if pair.crossover.flops is not None else np.nan})
    return pd.DataFrame(rows)


def reliability(rows: pd.DataFrame) -> pd.DataFrame:
    """Stated probability of the predicted ordering (max(p, 1 - p)) in bins, against the share that was right."""
    stated = np.maximum(rows["p_a_lower"], 1 - rows["p_a_lower"])
    right = (rows["p_a_lower"] > 0.5) == rows["a_lower"]
    out = []
    for low, high in zip(BINS[:-1], BINS[1:], strict=True):
        inside = (stated >= low) & (stated < high)
        if inside.any():
            out.append({"stated": f"[{low:.2f}, {min(high, 1):.2f}]", "pairs": int(inside.sum()),
                        "mean stated": float(stated[inside].mean()), "right": float(right[inside].mean())})
    return pd.DataFrame(out)


def summary(rows: pd.DataFrame, decide_at: float) -> list[str]:
    """The headline numbers: orderings right (laws, single scale), Brier scores, decided calls."""
    y = rows["a_lower"].astype(float)
    law_right = ((rows["p_a_lower"] > 0.5) == rows["a_lower"])
    point_right = ((rows["difference"] < 0) == rows["a_lower"])
    proxy_right = (rows["proxy_a_lower"] == rows["a_lower"])
    brier = float(np.mean((rows["p_a_lower"] - y) ** 2))
    decided = (rows["p_a_lower"] >= decide_at) | (rows["p_a_lower"] <= 1 - decide_at)
    lines = [f"pairs scored: {len(rows)} ({rows['eval'].nunique()} evaluation sets x held-out 400M cells x 3 pairs)",
             f"orderings right, laws (P(a lower) > 0.5): {int(law_right.sum())}/{len(rows)} ({law_right.mean():.1%});"
             f" by the point difference: {int(point_right.sum())}/{len(rows)}",
             f"orderings right, single scale (153.7M at the same tokens per parameter): {int(proxy_right.sum())}/"
             f"{len(rows)} ({proxy_right.mean():.1%})",
             f"Brier score of P(a lower): {brier:.4f} (single scale as a 0/1 forecast: {1 - proxy_right.mean():.4f}; "
             f"always 0.5: 0.2500)",
             f"decided at {decide_at}: {int(decided.sum())}/{len(rows)} pairs, right {int(law_right[decided].sum())}/"
             f"{int(decided.sum())}; 'no clear winner': {int((~decided).sum())} (of which the laws' lean was right "
             f"{int(law_right[~decided].sum())}, single scale right {int(proxy_right[~decided].sum())})",
             f"where the laws and the single scale disagree: {int((law_right != proxy_right).sum())} pairs; laws right "
             f"in {int((law_right & ~proxy_right).sum())}, single scale right in {int((proxy_right & ~law_right).sum())}",
             f"E shared on {rows.groupby('eval')['shared'].first().eq('E').sum()} of {rows['eval'].nunique()} "
             "evaluation sets"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--law", choices=["overtraining", "chinchilla"], default="overtraining")
    parser.add_argument("--bootstrap", type=int, default=400)
    parser.add_argument("--share", choices=["auto", "E", "none"], default="auto")
    parser.add_argument("--decide-at", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", metavar="CSV", help="also write every scored pair to this CSV")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"{DATA} is absent (published data, ../shared/data): nothing to measure", file=sys.stderr)
        return 1
    start = time.perf_counter()
    rows = evaluate(pd.read_csv(DATA), law=args.law, bootstrap=args.bootstrap, share=args.share,
                    decide_at=args.decide_at, seed=args.seed)
    print(f"law {args.law}, share {args.share}, {args.bootstrap} members, fitted below 400M, scored at 411.6M "
          f"({time.perf_counter() - start:.0f} s)")
    for line in summary(rows, args.decide_at):
        print(line)
    print("\nreliability (stated probability of the predicted ordering vs how often it was right):")
    print(reliability(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nper evaluation set (orderings right of the pairs scored: laws / single scale; Brier):")
    for eval_name, block in rows.groupby("eval"):
        law_right = ((block["p_a_lower"] > 0.5) == block["a_lower"]).sum()
        proxy_right = (block["proxy_a_lower"] == block["a_lower"]).sum()
        brier = float(np.mean((block["p_a_lower"] - block["a_lower"].astype(float)) ** 2))
        print(f"  {eval_name:<40} {law_right:>3}/{len(block):<3} {proxy_right:>3}/{len(block):<3} {brier:.3f}  "
              f"shared: {block['shared'].iloc[0]}")
    if args.rows:
        rows.to_csv(args.rows, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
