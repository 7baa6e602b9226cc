"""`proxyscale fit DIR --curves`: the joint curve law fitted to every eval point of a sweep's finished runs
and, beside it, L(N, D) fitted to the final losses of the same runs; what each says at --target-flops,
optionally the error of each on the largest model size held out (--holdout-largest), and how well the
curve law predicts another sweep's runs of the same model family (--score DIR). The curves come from the
ledger through `orchestrator.curves`."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from proxyscale.analysis.fit import Interval, percentile_interval
from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.curves import LedgerCurve, ledger_curves, schedule_label, target_shape


def run_fit_curves(args: argparse.Namespace) -> int:
    """`proxyscale fit DIR --curves`: the joint curve law beside L(N, D) on the same finished runs."""
    from proxyscale.analysis.fit import fit_chinchilla
    from proxyscale.analysis.laws import log_chinchilla_loss
    from proxyscale.analysis.predictive import MIN_MEMBERS, backtest_calibration, carry_to_target, fit_curves
    from proxyscale.orchestrator.commands.common import open_ledger, print_json
    from proxyscale.orchestrator.family import check_same_family, family_values

    with open_ledger(args.dir, metric=args.metric) as ledger:
        runs = ledger_curves(ledger)
        mine = family_values(ledger)
    scored = []
    if args.score:  # checked before any fit: another sweep of the same model family and data
        with open_ledger(args.score, metric=args.metric) as other:
            scored = ledger_curves(other)
            if scored:
                check_same_family(mine, family_values(other), str(args.score), flag="--score")
        if not scored:
            raise SpecError(f"--score: {args.score} has no finished runs with eval losses")
    sizes = sorted({r.curve.n_params for r in runs})
    if len(sizes) < 2:
        raise SpecError(f"DIR: {args.dir} has finished runs of {len(sizes)} model size(s) with eval losses; the curve "
                        "law across sizes needs at least 2")
    if len(runs) < 5:
        raise SpecError(f"DIR: {args.dir} has {len(runs)} finished runs; L(N, D) needs at least 5")
    if args.holdout_largest and len(sizes) < 3:
        raise SpecError("--holdout-largest: needs runs of at least 3 model sizes (2 left to fit)")
    shape_name, shape, batch = target_shape(runs)
    held = [r for r in runs if r.curve.n_params == sizes[-1]] if args.holdout_largest else []
    kept = [r for r in runs if r not in held]
    bootstrap = args.bootstrap
    if bootstrap < MIN_MEMBERS:
        raise SpecError(f"--bootstrap: at least {MIN_MEMBERS} resamples for a 95% interval's ends, got {bootstrap}")
    law = "auto" if args.law == "chinchilla" else args.law
    # The form (and clock) by the backtest, its bootstrap over lineages; every interval below is calibrated by it.
    curve_fit, backtest = fit_curves([r.curve for r in kept], law=law, bootstrap=bootstrap,
                                     mpl_bootstrap=min(bootstrap, MPL_BOOTSTRAP), seed=args.seed)
    # Final losses are (N, D) cells only where a run ends annealed: constant-LR segments are left out.
    cells = [r for r in kept if r.spec.train.schedule != "constant"] or kept
    n_cells, d_cells, loss_cells = ([r.curve.n_params for r in cells], [r.tokens for r in cells],
                                    [r.final_loss for r in cells])
    final_fit = fit_chinchilla(n_cells, d_cells, loss_cells, bootstrap=bootstrap, seed=args.seed,
                               groups=[r.curve.group for r in cells])
    final_target = None
    if args.target_flops:  # the distance model carried to the final-loss law's N_opt
        raw = final_fit.compute_optimal(args.target_flops)
        final_target = (raw["n_opt"].value, raw["d_opt"].value)
    final_calibration = backtest_calibration("chinchilla", n_cells, d_cells, loss_cells, seed=args.seed,
                                             target=final_target, fit=final_fit)
    payload: dict = {
        "metric": args.metric or "loss", "target_schedule": shape_name, "bootstrap": bootstrap,
        "curve_law": {"n_runs": len(kept), "n_points": curve_fit.n_points, "clock": curve_fit.clock,
                      "form": backtest.chosen[0], "bootstrap": len(curve_fit.bootstrap),
                      "parameters": {k: v.as_dict() for k, v in curve_fit.intervals().items()},
                      "backtest": backtest.as_dict(), "calibration": backtest.calibration.as_dict()},
        "final_loss_law": {"n_runs": len(cells), "n_points": len(cells),
                           "parameters": {k: v.as_dict() for k, v in final_fit.intervals().items()},
                           "calibration": final_calibration.as_dict()},
    }
    if args.target_flops:
        # The curve law's intervals carried to its N_opt, D_opt by the distance model (the one mechanism of
        # analysis/predictive.py, as the final-loss law's below); its line and JSON say how far out and how wide.
        curve_calibration, on_curves = carry_to_target(
            backtest.calibration, curve_fit.compute_optimal(args.target_flops, shape, batch_tokens=batch))
        backtest = replace(backtest, calibration=curve_calibration)
        payload["curve_law"]["calibration"] = curve_calibration.as_dict()
        payload["curve_law"]["backtest"] = backtest.as_dict()
        on_finals = {k: final_calibration.interval(v) for k, v in final_fit.compute_optimal(args.target_flops).items()}
        for key, at in (("curve_law", on_curves), ("final_loss_law", on_finals)):
            payload[key]["target"] = {"flops": args.target_flops} | {k: _with_width(v) for k, v in at.items()}
    if held:
        annealed = [r for r in held if r.spec.train.schedule != "constant"] or held
        largest = max(annealed, key=lambda r: (r.tokens, r.flops))
        measured = largest.final_loss
        on_curve = float(curve_fit.predict(largest.curve, largest.curve.steps[-1:])[0])
        on_final = float(np.exp(log_chinchilla_loss(np.log([largest.curve.n_params]), np.log([largest.tokens]),
                                                    final_fit.theta))[0])
        payload["holdout"] = {
            "run_id": largest.run_id, "n_params": largest.curve.n_params, "tokens": largest.tokens,
            "measured": measured, "held_out_runs": len(held),
            "curve_law": {"predicted": on_curve, "relative_error": abs(on_curve - measured) / measured,
                          "curve_mare": curve_fit.mare(largest.curve)},
            "final_loss_law": {"predicted": on_final, "relative_error": abs(on_final - measured) / measured},
        }
    if args.score:
        payload["score"] = score_other_sweep(curve_fit, kept, scored) | {"dir": str(args.score)}
    if args.json:
        print_json(payload)
        return 0
    if payload["metric"] == "bpb":
        print("every loss below is in bits per byte (--metric bpb)")
    _print_side_by_side(payload)
    for line in backtest.lines():
        print(line)
    print("  L(N, D) " + final_calibration.line())
    if "score" in payload:
        _print_score(payload["score"])
    return 0


MPL_BOOTSTRAP = 200
"""The multi-power law's bootstrap stops at this many members (each refit sums every LR drop at every point)."""


def score_other_sweep(curve_fit, fitted: list[LedgerCurve], scored: list[LedgerCurve]) -> dict:
    """How well a curve law fitted on one sweep predicts another's runs, each from its own LR schedule.

    Per schedule: the mean relative error of the final loss and how often the 95% interval holds the
    measurement. Per (N, D) cell run by both sweeps with different schedules: the measured difference
    between them against the predicted one (the test of a schedule ranking made without running both).
    """
    def final(run: LedgerCurve) -> tuple[float, Interval]:
        interval = curve_fit.predict_interval(run.curve, run.curve.steps[-1:])[0]
        return interval.value, interval

    per_run, by_schedule = [], {}
    for run in scored:
        predicted, interval = final(run)
        entry = {"run_id": run.run_id, "schedule": schedule_label(run.spec.train), "n_params": run.curve.n_params,
                 "tokens": run.tokens, "measured": run.final_loss, "predicted": predicted,
                 "low": interval.low, "high": interval.high,
                 "relative_error": (predicted - run.final_loss) / run.final_loss,
                 "covered": bool(interval.low <= run.final_loss <= interval.high)}
        per_run.append(entry)
        by_schedule.setdefault(entry["schedule"], []).append(entry)
    summary = {name: {"runs": len(rows), "mean_abs_relative_error": float(np.mean([abs(r["relative_error"]) for r in rows])),
                      "mean_relative_error": float(np.mean([r["relative_error"] for r in rows])),
                      "coverage": float(np.mean([r["covered"] for r in rows]))}
               for name, rows in sorted(by_schedule.items())}
    # Pairs: the same (N, D) ended annealed in both sweeps under different schedules (every such pair).
    ends: dict[tuple[float, float], list[LedgerCurve]] = {}
    for run in fitted:
        if run.spec.train.schedule != "constant":
            ends.setdefault((run.curve.n_params, run.tokens), []).append(run)
    pairs = []
    for entry, run in zip(per_run, scored, strict=True):
        for mine in ends.get((run.curve.n_params, run.tokens), []):
            if schedule_label(mine.spec.train) == entry["schedule"]:
                continue
            members = (curve_fit.predict(run.curve, run.curve.steps[-1:], members=True)[:, 0]
                       - curve_fit.predict(mine.curve, mine.curve.steps[-1:], members=True)[:, 0])
            point = entry["predicted"] - final(mine)[0]
            interval = percentile_interval(point, members, curve_fit.level) if len(members) else None
            measured = entry["measured"] - mine.final_loss
            pairs.append({"n_params": run.curve.n_params, "tokens": run.tokens, "theirs": entry["schedule"],
                          "ours": schedule_label(mine.spec.train), "measured_difference": measured,
                          "predicted_difference": point,
                          "low": interval.low if interval else float("nan"),
                          "high": interval.high if interval else float("nan"),
                          "covered": bool(interval and interval.low <= measured <= interval.high),
                          "same_sign": bool(np.sign(measured) == np.sign(point))})
    out = {"runs": per_run, "by_schedule": summary, "pairs": pairs, "pairs_summary": []}
    for theirs, ours in sorted({(p["theirs"], p["ours"]) for p in pairs}):
        rows = [p for p in pairs if (p["theirs"], p["ours"]) == (theirs, ours)]
        out["pairs_summary"].append({
            "theirs": theirs, "ours": ours, "cells": len({(p["n_params"], p["tokens"]) for p in rows}), "pairs": len(rows),
            "mean_measured_difference": float(np.mean([p["measured_difference"] for p in rows])),
            "mean_predicted_difference": float(np.mean([p["predicted_difference"] for p in rows])),
            "coverage": float(np.mean([p["covered"] for p in rows])),
            "same_sign": float(np.mean([p["same_sign"] for p in rows])),
        })
    return out


def _print_score(score: dict) -> None:
    print(f"scored on {score['dir']}: each run's final loss predicted from its own LR schedule (95% intervals of the "
          "law's parameters)")
    for name, row in score["by_schedule"].items():
        print(f"  {name:<34} {row['runs']:>3} runs  mean |error| {100 * row['mean_abs_relative_error']:.2f}%"
              f"  (signed {100 * row['mean_relative_error']:+.2f}%)  95% interval holds {100 * row['coverage']:.0f}%")
    for s in score["pairs_summary"]:
        print(f"  {s['cells']} (N, D) cells run by both ({s['theirs']} minus {s['ours']}): measured "
              f"{s['mean_measured_difference']:+.4f} nats on average, predicted {s['mean_predicted_difference']:+.4f};"
              f" same sign in {100 * s['same_sign']:.0f}%, inside the 95% interval (of the law's parameters, not"
              f" a prediction interval for one run) in {100 * s['coverage']:.0f}%")


def _with_width(interval) -> dict:
    value = interval.as_dict()
    value["width"] = interval.high - interval.low
    value["relative_width"] = (interval.high - interval.low) / interval.value if interval.value else float("nan")
    return value


def _print_side_by_side(payload: dict) -> None:
    curve, final = payload["curve_law"], payload["final_loss_law"]
    form = f"{curve['form']} curve law (every eval point)"
    print(f"{'':<22} {form:<36} {'L(N, D) (final losses)':<36}")
    counts = [f"{side['n_runs']} / {side['n_points']}" for side in (curve, final)]
    print(f"{'runs / points':<22} {counts[0]:<36} {counts[1]:<36}")
    # The multi-power law's size term is (A_N, alpha_N) and its data term (A, alpha): beside L(N, D)'s (A, alpha), (B, beta).
    pairs = ((("E", "E"), ("A_N", "A"), ("alpha_N", "alpha"), ("A", "B"), ("alpha", "beta")) if curve["form"] == "mpl"
             else tuple((name, name) for name in ("E", "A", "alpha", "B", "beta")))
    for mine, theirs in pairs:
        left, right = curve["parameters"].get(mine), final["parameters"].get(theirs)
        label = mine if mine == theirs else f"{mine} | {theirs}"
        print(f"{label:<22} {_cell(left):<36} {_cell(right):<36}")
    for name in ("C", "r", "kappa", "beta", "gamma") if curve["form"] == "mpl" else ("C", "r", "kappa"):
        if name in curve["parameters"]:
            print(f"{name:<22} {_cell(curve['parameters'][name]):<36}")
    if "target" in curve:
        print(f"at C = {curve['target']['flops']:.3g} FLOPs (target schedule: {payload['target_schedule']}; "
              f"95% intervals, width / value):")
        for name in ("n_opt", "d_opt", "loss"):
            print(f"{name:<22} {_cell(curve['target'][name], True):<36} {_cell(final['target'][name], True):<36}")
    if "holdout" in payload:
        h = payload["holdout"]
        print(f"held out: the largest size ({h['held_out_runs']} runs); its largest run {h['run_id']} "
              f"(N {h['n_params']:.3g}, D {h['tokens']:.3g}) measured {h['measured']:.4f}")
        print(f"{'final loss predicted':<22} "
              f"{h['curve_law']['predicted']:.4f} (error {100 * h['curve_law']['relative_error']:.2f}%)"
              f"{'':<14}{h['final_loss_law']['predicted']:.4f} (error {100 * h['final_loss_law']['relative_error']:.2f}%)")
        print(f"{'its whole curve (mare)':<22} {100 * h['curve_law']['curve_mare']:.2f}%")


def _cell(value: dict | None, width: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value['value']:.4g} [{value['low']:.4g}, {value['high']:.4g}]"
    if width and value.get("relative_width") is not None and np.isfinite(value["relative_width"]):
        text += f" {100 * value['relative_width']:.0f}%"
    return text
