"""`proxyscale transfer`: LR_opt per width, muP transfer drift and LR sensitivity of a sweep."""

from __future__ import annotations

import argparse
import json

from models.spec import SpecError
from orchestrator.commands.common import open_ledger, print_json


def add_parser(subparsers) -> None:
    transfer = subparsers.add_parser("transfer", help="LR_opt per width, muP transfer drift and LR sensitivity of a sweep")
    transfer.add_argument("dir")
    transfer.add_argument("--bootstrap", type=int, default=1000)
    transfer.add_argument("--target-width", type=float, help="predict the LR at which this width diverges")
    transfer.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Per setting (parametrisation, qk-layernorm, z-loss): LR_opt per width, muP drift, LR sensitivity."""
    from analysis.hyperparams import lr_sensitivity, predict_divergence_lr, transfer_drift

    ledger = open_ledger(args.dir)
    rows = ledger.runs(["finished", "diverged"])
    ledger.close()
    settings: dict[tuple, list[dict]] = {}
    for row in rows:
        spec = json.loads(row["spec_json"])
        key = (spec["model"]["parametrization"], spec["model"]["qk_layernorm"], spec["train"]["z_loss"])
        settings.setdefault(key, []).append(row | {"loss": row["final_eval_loss"] if row["status"] == "finished"
                                                   else float("nan")})
    groups = []
    for (parametrization, qk_layernorm, z_loss), members in sorted(settings.items(), key=str):
        widths = sorted({m["width"] for m in members})
        entry = {"parametrization": parametrization, "qk_layernorm": qk_layernorm, "z_loss": z_loss,
                 "runs": len(members), "sensitivity": {}, "lr_opt": {}, "drift": None}
        for width in widths:
            at_width = [m for m in members if m["width"] == width]
            initial = max(m["initial_eval_loss"] for m in at_width)
            entry["sensitivity"][width] = lr_sensitivity([m["loss"] for m in at_width], initial)
        usable = [m for m in members if m["loss"] == m["loss"]]
        if len(widths) >= 2 and all(sum(m["width"] == w for m in usable) >= 2 for w in widths):
            lr_opt, drift = transfer_drift([m["width"] for m in usable], [m["lr"] for m in usable],
                                           [m["loss"] for m in usable], bootstrap=args.bootstrap)
            entry["lr_opt"], entry["drift"] = lr_opt, drift.as_dict()
        if args.target_width:
            found = predict_divergence_lr([m["width"] for m in members], [m["lr"] for m in members],
                                          [m["status"] == "diverged" for m in members], args.target_width,
                                          bootstrap=args.bootstrap)
            if found is not None:
                entry["divergence_lr"] = found[0]
                entry["divergence_lr_at_target"] = {"width": args.target_width} | found[1].as_dict()
        groups.append(entry)
    if not groups:
        raise SpecError(f"DIR: {args.dir} has no finished or diverged runs")
    if args.json:
        print_json({"groups": groups})
        return 0
    for g in groups:
        print(f"{g['parametrization']}, qk_layernorm={g['qk_layernorm']}, z_loss={g['z_loss']} ({g['runs']} runs)")
        for width, value in g["sensitivity"].items():
            lr = g["lr_opt"].get(width)
            print(f"  width {width:>5}: LR sensitivity {value:.4f}" + (f", LR_opt {lr:.3g}" if lr else ""))
        if g["drift"]:
            d = g["drift"]
            print(f"  drift of log LR_opt vs log width: {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        if "divergence_lr_at_target" in g:
            t = g["divergence_lr_at_target"]
            print(f"  diverges above LR {t['value']:.3g} [{t['low']:.3g}, {t['high']:.3g}] at width {t['width']}"
                  f" (thresholds per width: {', '.join(f'{w}: {v:.3g}' for w, v in g['divergence_lr'].items())})")
    return 0
