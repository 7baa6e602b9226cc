"""The deciding planner against the grid: the FLOPs each needs to reach P(best) >= 0.95 on simulated pairs of recipes.

Each recipe is a known Chinchilla law L(N, D) on the demo's ladder (sweeps/demo.yaml: widths 16-128 of the 2-layer
muP GPT x 0.2M-3.2M tokens, 28 cells, N from models.flops), observed with multiplicative Gaussian noise; the
target is 3e13 FLOPs (the demo's), each recipe at its compute-optimal N, D. Two ways to spend:

- planner: planner.objective compare (analysis/compare_planner.py): each recipe's design (`--design`), then one run at a time,
  the one with the highest expected gain in P(best) per FLOP, until P(best) >= 0.95 (the members' share, as the
  closed loop stops) or both grids are spent;
- grid: both recipes' grids, cheapest run first, alternating recipes (a ladder run bottom-up), P(best) checked after
  every pair of runs once both laws can be fitted; its FLOPs are where P(best) first reaches 0.95.

Both use the same fit (analysis/compare.py: fit_recipes with `--ensemble` members, E shared by the AICc, the
backtest's calibration unless --no-calibrate) and the same noise draws per cell, so the ratio is grid FLOPs /
planner FLOPs on the same pair. "right" says whether the called recipe is the truth's best at the target.

    .venv/bin/python tests/benchmarks/bench_compare_planner.py [--replications 2] [--noise 0.005] [--ensemble 64]

The numbers are recorded in docs/compare.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEMO_CELLS = [(16, 204800), (16, 409600), (16, 819200), (16, 1638400), (16, 3276800), (24, 204800), (24, 409600),
              (24, 819200), (24, 1638400), (24, 3276800), (32, 204800), (32, 409600), (32, 819200), (32, 1638400),
              (32, 3276800), (48, 204800), (48, 409600), (48, 819200), (48, 1638400), (64, 204800), (64, 409600),
              (64, 819200), (80, 204800), (80, 409600), (80, 819200), (96, 204800), (96, 409600), (128, 204800)]
TARGET = 3e13
BASE = (1.226, 190.5, 710.4, 0.641, 0.562)
"""The demo's fitted law (README): E, A, B, alpha, beta."""
PAIRS = {
    # b worse everywhere by 2% of the floor
    "gap": (BASE, (1.25, 190.5, 710.4, 0.641, 0.562)),
    # b's data term 15% larger: it costs ~0.05 nats on the ladder, less at the target
    "data": (BASE, (1.226, 190.5, 817.0, 0.641, 0.562)),
    # b: lower floor, larger power terms: worse on the ladder's small runs, better at the target (a crossover)
    "crossover": (BASE, (1.15, 260.0, 900.0, 0.641, 0.562)),
}


def n_params(width: int) -> float:
    from proxyscale.models.flops import count_parameters
    from proxyscale.models.spec import ModelSpec

    model = ModelSpec(depth=2, n_heads=2, seq_len=32, parametrization="mup", base_width=32, width=width)
    return float(count_parameters(model).total)


def truth(law, n, d) -> float:
    e, a, b, alpha, beta = law
    return e + a / n ** alpha + b / d ** beta


def truth_at_target(law) -> float:
    """The law's loss at TARGET at its compute-optimal N (a fine grid in log N)."""
    n = np.geomspace(1e3, 1e9, 20001)
    return float(np.min(truth(law, n, TARGET / (6 * n))))


def main(argv: list[str] | None = None) -> int:
    from proxyscale.analysis.compare_planner import DecideSettings, decision_state, propose_to_decide
    from proxyscale.analysis.planner import Candidate, Observation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.005, help="relative noise of a run's final loss")
    parser.add_argument("--ensemble", type=int, default=64)
    parser.add_argument("--decide-at", type=float, default=0.95)
    parser.add_argument("--no-calibrate", action="store_true", help="skip the backtest's calibration (faster)")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--design", choices=["corner", "spread"], default="corner",
                        help="the planner's first runs per recipe (analysis/compare_planner.DecideSettings.design)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ns = {w: n_params(w) for w, _ in DEMO_CELLS}
    cells = [Candidate(f"{w}-{d}", w, ns[w], float(d), 6 * ns[w] * d, 1e-2) for w, d in DEMO_CELLS]
    grid_flops = sum(c.flops for c in cells)
    settings = DecideSettings(target_flops=TARGET, budget_flops=2 * grid_flops, batch=1, decide_at=args.decide_at,
                              max_run_flops=1e12, ensemble=args.ensemble, calibrate=not args.no_calibrate,
                              design=args.design)
    print(f"pairs of recipes on the demo's 28-cell ladder (one grid {grid_flops:.3g} FLOPs), target {TARGET:.0e}, "
          f"noise {args.noise:.1%}, {args.ensemble} members, calibrate {not args.no_calibrate}, decide at "
          f"{args.decide_at}, planner design {args.design}")
    ratios, rows = [], []
    for pair in args.pairs:
        laws = dict(zip(("a", "b"), PAIRS[pair], strict=True))
        at = {k: truth_at_target(v) for k, v in laws.items()}
        best = min(at, key=at.get)
        largest = min(laws, key=lambda k: truth(laws[k], ns[128], 204800))
        for rep in range(args.replications):
            rng = np.random.default_rng(1000 * rep + len(pair))
            noise = {(k, c.key): args.noise * rng.standard_normal() for k in laws for c in cells}

            def observe(k: str, c: Candidate, noise=noise, laws=laws) -> Observation:
                loss = truth(laws[k], c.n_params, c.tokens) * (1 + noise[(k, c.key)])
                return Observation(f"{k}-{c.key}", c.width, c.n_params, c.tokens, c.flops, c.lr, "finished", loss)

            allowed = {k: [Candidate(f"{k}-{c.key}", *[getattr(c, f) for f in ("width", "n_params", "tokens", "flops",
                                                                                "lr")]) for c in cells] for k in laws}
            by_key = {k: {c.key: c for c in cells} for k in laws}
            # the deciding planner, one run at a time
            seen: dict[str, list[Observation]] = {k: [] for k in laws}
            spent, fits, state = 0.0, 0, None
            while True:
                state = decision_state(seen, settings)
                fits += state.comparison is not None
                if state.decided(args.decide_at):
                    break
                left = DecideSettings(**{**settings.__dict__, "budget_flops": settings.budget_flops - spent})
                picks = propose_to_decide(allowed, seen, left, state=state)
                if not picks:
                    break
                for p in picks:
                    k, key = p.candidate.key.split("-", 1)
                    seen[k].append(observe(k, by_key[k][key]))
                    spent += p.candidate.flops
            planner = (spent if state.decided(args.decide_at) else float("nan"), state.best,
                       sum(len(v) for v in seen.values()), state.p_best)
            # the grid, cheapest first, alternating recipes
            order = sorted(cells, key=lambda c: c.flops)
            seen = {k: [] for k in laws}
            spent, grid = 0.0, (float("nan"), None, 0, float("nan"))
            for c in order:
                for k in laws:
                    seen[k].append(observe(k, c))
                    spent += c.flops
                g = decision_state(seen, settings)
                if g.comparison is not None:
                    grid = (spent, g.best, sum(len(v) for v in seen.values()), g.p_best)
                    if g.decided(args.decide_at):
                        break
            if not np.isfinite(grid[3]) or grid[3] < args.decide_at:
                grid = (float("nan"), *grid[1:])
            ratio = grid[0] / planner[0] if np.isfinite(grid[0]) and np.isfinite(planner[0]) else float("nan")
            ratios.append(ratio)
            rows.append((pair, rep, planner, grid, best))
            print(f"  {pair:<9} rep {rep}: truth best {best} (L {at['a']:.4f} vs {at['b']:.4f}; largest ladder run "
                  f"favours {largest})")
            for name, (flops, called, runs, p) in (("planner", planner), ("grid", grid)):
                shown = f"{flops:.3g} FLOPs" if np.isfinite(flops) else "not reached"
                right = "-" if called is None else ("right" if called == best else "WRONG")
                print(f"    {name:<7}: P(best) >= {args.decide_at} at {shown} ({runs} runs; {called} P {p:.3f}, {right})")
            print(f"    grid / planner FLOPs: {ratio:.2f}" if np.isfinite(ratio) else "    grid / planner: -", flush=True)
    finite = [r for r in ratios if np.isfinite(r)]
    planner_right = sum(row[2][1] == row[4] for row in rows if np.isfinite(row[2][0]))
    planner_called = sum(np.isfinite(row[2][0]) for row in rows)
    grid_right = sum(row[3][1] == row[4] for row in rows if np.isfinite(row[3][0]))
    grid_called = sum(np.isfinite(row[3][0]) for row in rows)
    print(f"grid / planner FLOPs to P(best) >= {args.decide_at}: median {np.median(finite):.2f} (range "
          f"{min(finite):.2f}-{max(finite):.2f}) over {len(finite)} of {len(ratios)} pairs where both decided"
          if finite else "no pair where both decided")
    print(f"decided: planner {planner_called}/{len(rows)} ({planner_right} right), grid {grid_called}/{len(rows)} "
          f"({grid_right} right); {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
