"""`proxyscale transfer`: LR_opt per width (or depth), the transfer drift and LR sensitivity of a sweep."""

from __future__ import annotations

import argparse
import json

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import open_ledger, print_json


def add_parser(subparsers) -> None:
    transfer = subparsers.add_parser("transfer", help="LR_opt per width or depth, transfer drift and LR sensitivity of a sweep")
    transfer.add_argument("dir")
    transfer.add_argument("--axis", choices=("width", "depth"), default="width",
                          help="the shape axis the LR should transfer along (default: width)")
    transfer.add_argument("--bootstrap", type=int, default=1000)
    transfer.add_argument("--target-width", type=float, help="predict the LR at which this width diverges")
    transfer.add_argument("--plot", metavar="PNG", help="draw loss against LR per width (or depth), a panel per setting")
    transfer.add_argument("--json", action="store_true")


def _setting(spec: dict) -> dict:
    """What a run's LR transfer depends on besides its shape: the parametrisation and the stability knobs."""
    model, train = spec["model"], spec["train"]
    setting = {"parametrization": model["parametrization"]}
    if model["parametrization"] == "completep":
        setting["depth_alpha"] = model.get("depth_alpha", 1.0)
    setting |= {"layernorm_scaling": model.get("layernorm_scaling", False), "qk_layernorm": model["qk_layernorm"],
                "z_loss": train["z_loss"]}
    return setting


def _label(setting: dict) -> str:
    name = setting["parametrization"]
    if "depth_alpha" in setting:
        name += {1.0: " (CompleteP, alpha 1)", 0.5: " (Depth-muP, alpha 1/2)"}.get(
            setting["depth_alpha"], f" (alpha {setting['depth_alpha']:g})")
    if setting["layernorm_scaling"]:
        name += " + LayerNorm scaling"
    for shape in ("width", "depth"):
        if shape in setting:
            name += f" at {shape} {setting[shape]}"
    return f"{name}; qk_layernorm={setting['qk_layernorm']}; z_loss={setting['z_loss']}"


def _by_parametrization(groups: list[dict]) -> dict[str, dict]:
    """The groups keyed by their parametrisation's name (e.g. "sp", "mup", "completep (CompleteP, alpha 1)"),
    the full label where two groups share it (other stability knobs, or one group per width along depth), each
    with its drift {value, low, high}, verdict, LR_opt per shape, noise and advice: what a script checks."""
    short = [g["label"].split("; ", 1)[0] for g in groups]
    out = {}
    for name, g in zip(short, groups, strict=True):
        key = name if short.count(name) == 1 else g["label"]
        drift = g["drift"]
        out[key] = {"drift": {k: drift[k] for k in ("value", "low", "high")} if drift else None,
                    "verdict": drift["verdict"] if drift else None, "lr_opt": g["lr_opt"],
                    "noise": g.get("noise"), "seeds": g.get("seeds"), "advice": g.get("advice", []),
                    "sensitivity_slope": g.get("sensitivity_slope")}
    return out


def run(args: argparse.Namespace) -> int:
    """Per setting: LR_opt and the best loss per width (or depth), the drift of log LR_opt, LR sensitivity.

    The drift (analysis.lr_transfer.fit_transfer: each shape's optimum from a local quadratic in log LR around
    its lowest loss; the interval from the seed-to-seed noise, or the fits' residuals without seeds) is read
    at one (budget, batch) setting and judged by `drift_verdict`: `transfers` when its interval is inside
    +-0.25 (the LR tuned at one shape is optimal at the others), `drifts` when it excludes 0, else
    `inconclusive`. Advice names the LRs to add where the grid is too coarse near an optimum (or the
    optimum is at its edge) and the seeds that would narrow the interval to +-0.15.
    """
    from proxyscale.analysis.divergence import predict_divergence_lr
    from proxyscale.analysis.lr_transfer import (
        drift_verdict,
        lr_sensitivity_of_runs,
        reading_setting,
        sensitivity_by_seed,
        sensitivity_slope,
        transfer_of_sweep,
    )

    axis = args.axis
    if args.target_width and axis != "width":
        raise SpecError("--target-width: predicts the divergence LR along width; it goes with --axis width")
    ledger = open_ledger(args.dir)
    rows = ledger.runs(["finished", "diverged"])
    ledger.close()
    if not rows:
        raise SpecError(f"DIR: {args.dir} has no finished or diverged runs")
    # The other shape axis, when the sweep varies it too, is part of the setting: LR_opt along depth is
    # read at one width at a time (and along width at one depth).
    other = "depth" if axis == "width" else "width"
    split_by_other = len({row[other] for row in rows}) > 1
    settings: dict[str, tuple[dict, list[dict]]] = {}
    for row in rows:
        setting = _setting(json.loads(row["spec_json"])) | ({other: row[other]} if split_by_other else {})
        key = json.dumps(setting, sort_keys=True)
        loss = row["final_eval_loss"] if row["status"] == "finished" else float("nan")
        settings.setdefault(key, (setting, []))[1].append(row | {"loss": loss})
    groups, slopes, slopes_high, read_runs = [], {}, {}, {}
    for key, (setting, members) in sorted(settings.items()):
        # Everything below is read at one (budget, batch) setting, the drift's: a sensitivity or a best loss over
        # several budgets would mix runs that differ in more than their LR.
        reading = reading_setting(*([m[k] for m in members] for k in (axis, "tokens", "batch_size", "lr", "loss")))
        read = [m for m in members if reading is None or (m["tokens"], m["batch_size"]) == reading]
        read_runs[key] = read
        values = sorted({m[axis] for m in read})
        entry = setting | {"label": _label(setting), "axis": axis, "runs": len(members), "sensitivity": {},
                           "lr_opt": {}, "best_loss": {}, "drift": None,
                           "read_at": None if reading is None else
                           {"tokens": reading[0], "batch_size": reading[1], "runs": len(read),
                            "other_runs": len(members) - len(read)}}
        for value in map(float, values):
            at_value = [m for m in read if m[axis] == value]
            initial = max(m["initial_eval_loss"] for m in at_value)
            entry["sensitivity"][value] = lr_sensitivity_of_runs([m["lr"] for m in at_value],
                                                                 [m["loss"] for m in at_value], initial)
            # The best LR's mean over seeds (one run each without seeds), not the luckiest seed.
            by_lr: dict[float, list[float]] = {}
            for m in at_value:
                if m["loss"] == m["loss"]:
                    by_lr.setdefault(m["lr"], []).append(m["loss"])
            if by_lr:
                entry["best_loss"][value] = min(sum(v) / len(v) for v in by_lr.values())
        # Wortsman's LR sensitivity per (shape, seed) and its slope per doubling, with the seeds' spread as noise.
        # side "high": the LRs from each shape's optimum up, where the instabilities act.
        columns = [*([m[k] for m in read] for k in (axis, "seed", "lr", "loss")),
                   [m["initial_eval_loss"] if m["initial_eval_loss"] is not None else float("nan") for m in read]]
        slope = sensitivity_slope(sensitivity_by_seed(*columns))
        high = sensitivity_slope(sensitivity_by_seed(*columns, side="high"))
        slopes[entry["label"]], slopes_high[entry["label"]] = slope, high
        entry |= {"sensitivity_by_seed": slope.sensitivity, "sensitivity_slope": slope.slope.as_dict(),
                  "sensitivity_noise": slope.as_dict()["noise"], "sensitivity_high_by_seed": high.sensitivity,
                  "sensitivity_high_slope": high.slope.as_dict(), "sensitivity_high_noise": high.as_dict()["noise"]}
        found = transfer_of_sweep(*([m[key] for m in members] for key in (axis, "tokens", "batch_size", "lr", "loss")),
                                  seeds=[m["seed"] for m in members], bootstrap=args.bootstrap, axis=axis)
        if found is not None:  # read at one (budget, batch) setting: the one where most shapes have 3+ LRs
            entry["lr_opt"] = {float(k): v for k, v in found.lr_opt.items()}
            entry["drift"] = found.drift.as_dict() | {"verdict": drift_verdict(found.drift)}
            entry |= {"noise": found.as_dict()["noise"], "seeds": found.seeds, "advice": list(found.advice)}
        if args.target_width and axis == "width":
            found = predict_divergence_lr([m["width"] for m in members], [m["lr"] for m in members],
                                          [m["status"] == "diverged" for m in members], args.target_width,
                                          bootstrap=args.bootstrap)
            if found is not None:
                entry["divergence_lr"] = found[0]
                entry["divergence_lr_at_target"] = {"width": args.target_width} | found[1].as_dict()
        groups.append(entry)
    if args.plot:
        from proxyscale.analysis.lr_transfer import seed_adjusted_means
        from proxyscale.analysis.plots import plot_transfer

        shared = {g["label"].split("; ", 1)[1] for g in groups}
        short = len(shared) == 1  # every setting has the same qk_layernorm and z_loss: leave them out of titles

        def title(label: str) -> str:
            return label.split("; ", 1)[0] if short else label

        panels = {title(g["label"]): {} for g in groups}
        for key, (setting, _) in sorted(settings.items()):
            members = read_runs[key]
            lines = panels[title(_label(setting))]
            # One point per LR, its loss for an average seed (a line through every seed zigzags between them; a
            # plain mean would draw LRs that lack the worse seeds too low where seeds were added near an optimum).
            for value in sorted({float(m[axis]) for m in members}):
                at = [m for m in members if float(m[axis]) == value]
                means = seed_adjusted_means([m["lr"] for m in at], [m["loss"] for m in at], [m["seed"] for m in at])
                lines[value] = sorted(means.items())
        plot_transfer(panels, args.plot, axis=axis, lr_opt={title(g["label"]): g["lr_opt"] for g in groups})
    differences = _sensitivity_differences(groups, slopes)
    differences_high = _sensitivity_differences(groups, slopes_high)
    if args.json:
        print_json({"axis": axis, "groups": groups, "parametrizations": _by_parametrization(groups),
                    "sensitivity_slope_differences": differences,
                    "sensitivity_high_slope_differences": differences_high}
                   | ({"plot": args.plot} if args.plot else {}))
        return 0
    for g in groups:
        print(f"{g['label']} ({g['runs']} runs)")
        if g["read_at"] and g["read_at"]["other_runs"]:
            r = g["read_at"]
            print(f"  read at D={r['tokens']:.3g} tokens, batch {r['batch_size']:g} ({r['runs']} runs; "
                  f"{r['other_runs']} at other budgets or batch sizes left out)")
        for value, sensitivity in g["sensitivity"].items():
            lr = g["lr_opt"].get(value)
            best = g["best_loss"].get(value)
            print(f"  {axis} {value:>5g}: LR sensitivity {sensitivity:.4f}" + (f", LR_opt {lr:.3g}" if lr else "")
                  + (f", best loss {best:.4f}" if best is not None else ""))
        for key, what in (("sensitivity", "LR sensitivity"), ("sensitivity_high", "LR sensitivity from LR_opt up")):
            s = g[f"{key}_slope"]
            if s["low"] == s["low"]:  # not NaN: 2+ shapes and a noise to judge the slope by
                n = g[f"{key}_noise"]
                print(f"  {what} per doubling of {axis}: {s['value']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]"
                      f" (noise {n['sigma']:.4f} per seed from {n['source']}, {n['dof']} dof)")
        if g["drift"]:
            d = g["drift"]
            meaning = {"transfers": "the LR transfers (the interval is inside +-0.25)",
                       "drifts": "the LR drifts (the interval excludes 0)",
                       "inconclusive": "inconclusive (no drift shown, but the interval reaches past +-0.25)"}
            print(f"  drift of log LR_opt vs log {axis} (per doubling): {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                  f" -> {meaning[d['verdict']]}")
            noise = g["noise"]
            print(f"  loss noise {noise['sigma']:.4f} ({noise['dof']} dof) from {noise['source']}")
            for line in g["advice"]:
                print(f"  ! {line}")
        if "divergence_lr_at_target" in g:
            t = g["divergence_lr_at_target"]
            print(f"  diverges above LR {t['value']:.3g} [{t['low']:.3g}, {t['high']:.3g}] at width {t['width']}"
                  f" (thresholds per width: {', '.join(f'{w}: {v:.3g}' for w, v in g['divergence_lr'].items())})")
    for what, found in (("LR sensitivity", differences), ("LR sensitivity from LR_opt up", differences_high)):
        for d in found:
            print(f"{what} slope, {d['a']} minus {d['b']}: {d['value']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                  f" -> Wortsman's claim (the first grows with {axis}, and more than the second): {d['verdict']}")
    if args.plot:
        print(f"figure: {args.plot}")
    return 0


def _sensitivity_differences(groups: list[dict], slopes: dict) -> list[dict]:
    """Each setting without qk-layernorm against the same setting with it (baseline - qk-layernorm, z-loss -
    both): the difference of their LR-sensitivity slopes with its interval and `sensitivity_verdict`."""
    from proxyscale.analysis.lr_transfer import sensitivity_verdict, slope_difference

    keyed = {json.dumps({k: v for k, v in g.items() if k in _SETTING_KEYS}, sort_keys=True): g for g in groups}
    out = []
    for g in groups:
        if g.get("qk_layernorm") is not False:
            continue
        partner = keyed.get(json.dumps({k: v for k, v in g.items() if k in _SETTING_KEYS} | {"qk_layernorm": True},
                                       sort_keys=True))
        if partner is None:
            continue
        a, b = slopes[g["label"]], slopes[partner["label"]]
        diff = slope_difference(a, b)
        out.append({"a": g["label"], "b": partner["label"]} | diff.as_dict()
                   | {"verdict": sensitivity_verdict(a.slope, diff)})
    return out


_SETTING_KEYS = ("parametrization", "depth_alpha", "layernorm_scaling", "qk_layernorm", "z_loss", "width", "depth")
