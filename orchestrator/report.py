"""`proxyscale report DIR`: one Markdown report of a sweep directory, with its plots as PNGs beside it.

Each section appears when the sweep's runs support it: the L(N, D) fit and its frontier (runs over
3+ values of N and D), the isoFLOP analysis (3+ FLOP budgets with 3+ sizes each), the recommended
configuration at the target, LR sensitivity / muP transfer / attention-logit and log Z trends
(3+ LRs at a width), loss curves with the schedule law (2+ budgets at the widest width), and a law
for every knob (LR and batch size by Step Law, depth by the aspect ratio at equal N, schedules by the curve
law), each with a figure, where the runs support it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from proxyscale.analysis import plots
from proxyscale.analysis.isoflop import budget_levels, fit_isoflop
from proxyscale.analysis.lr_transfer import (
    drift_of_sweep,
    drift_verdict,
    lr_sensitivity_of_runs,
    seed_adjusted_means,
    sensitivity_by_seed,
    sensitivity_slope,
    sensitivity_verdict,
    slope_difference,
)
from proxyscale.analysis.planner import estimate_target
from proxyscale.models.schedules import lr_multiplier
from proxyscale.models.spec import RunSpec, SpecError
from proxyscale.orchestrator.check import read_check
from proxyscale.orchestrator.ledger import Ledger, cell_flops
from proxyscale.orchestrator.observations import observations_from_ledger


def _interval(v: dict[str, float | None], fmt: str = ".4g") -> str:
    text = {k: "-" if v.get(k) is None else format(v[k], fmt) for k in ("value", "low", "high")}
    return f"{text['value']} [{text['low']}, {text['high']}]"


def _setting(spec: dict[str, Any]) -> str:
    label = spec["model"]["parametrization"]
    # the depth corrections are settings of their own (CompleteP's alpha 1 and Depth-muP's 1/2 share a name)
    if label == "completep" and float(spec["model"].get("depth_alpha", 1.0)) != 1.0:
        label += f" alpha {float(spec['model']['depth_alpha']):g}"
    if spec["model"].get("layernorm_scaling"):
        label += " +LN-scaling"
    if spec["model"]["qk_layernorm"]:
        label += " +qk-ln"
    if spec["train"]["z_loss"]:
        label += " +z-loss"
    return label


def _final_probe(steps: list[dict], name: str) -> float | None:
    values = [json.loads(s["probes_json"] or "{}").get(name) for s in steps]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return values[-1] if values else None


def _section_fit(lines, figures, out, runs, observations, target, bootstrap, directory):
    estimate = estimate_target(observations, target, bootstrap=bootstrap)
    if estimate is None:
        from proxyscale.analysis.planner import identifiability_problem

        reason = identifiability_problem(observations, target) or "the bootstrap gives no finite optimum"
        lines += ["## L(N, D)", "", f"Not identifiable from these runs: {reason}.", ""]
        return estimate
    fit = estimate.fit
    lines += ["## L(N, D) = E + A / N^alpha + B / D^beta (approach 3, Huber on log residuals)", "",
              f"{fit.n_points} (N, D) cells (the best LR of each), {bootstrap} bootstrap refits, 95% intervals.", "",
              "| parameter | value [95% interval] |", "|---|---|"]
    lines += [f"| {name} | {_interval(v.as_dict())} |" for name, v in fit.intervals().items()]
    lines += ["", f"At the target C = {target:.3g} FLOPs: N_opt = {_interval(estimate.n_opt.as_dict())}, "
                  f"D_opt = {_interval(estimate.d_opt.as_dict())}, loss = {_interval(estimate.loss.as_dict())}.", ""]
    finished = [r for r in runs if r["status"] == "finished"]
    check = read_check(directory)
    path = plots.plot_frontier(fit, [r["n_params"] for r in finished], [r["tokens"] for r in finished],
                               [r["final_eval_loss"] for r in finished], target, out / "frontier.png", check=check)
    figures.append(path)
    lines += [f"![frontier]({path.name})", ""]
    _section_distance(lines, figures, out, observations, estimate)
    if check is not None:
        low, high = check["interval"]
        if check["measured"] is None:
            measured = f"not measured ({check['status']})"
        else:
            off = (check["measured"] - check["predicted"]) / check["predicted"]
            measured = (f"measured **{check['measured']:.4f}** ({off:+.2%}), "
                        f"**{'inside' if check['inside'] else 'OUTSIDE'}** the interval")
        lines += ["## Check run beyond the ladder", "",
                  f"{check['flops']:.3g} FLOPs ({check['flops'] / check['ladder_largest_flops']:.1f}x the largest ladder "
                  f"run) at N = {check['n_params']:,} (width {check['width']}), D = {check['tokens']:,}, LR "
                  f"{check['lr']:.3g}: predicted {check['predicted']:.4f}, 95% interval for a measured loss "
                  f"[{low:.4f}, {high:.4f}]; {measured}. (`DIR/check.json`; the check run is the orange square and "
                  "the black cross above.)", ""]
    return estimate


def _section_recipes(lines, figures, out, plain, ledger, target, bootstrap):
    """A recipe sweep's comparison at the target (the winner with its probability, every pair, the figure); returns
    (the winner's runs as a ledger, the verdict of recipes.judge_recipes): the sections below fit that recipe alone."""
    from proxyscale.analysis.compare import plot_comparison
    from proxyscale.orchestrator.recipes import RecipeLedger, judge_recipes, most_finished_recipe

    try:
        comparison, verdict = judge_recipes(plain, ledger, target, bootstrap=bootstrap)
    except SpecError as error:  # e.g. bits per byte asked of runs that record none: said as a line, not a crash
        most = most_finished_recipe(ledger)
        lines += ["## Which recipe wins at the target", "", f"**recipe: no comparison: {error}**", ""]
        if most is None:
            return ledger, None
        lines += [f"The fit, frontier and recommendation below are recipe `{most}`'s (the most finished runs), on its "
                  "runs alone.", ""]
        return RecipeLedger(ledger, most), None
    lines += ["## Which recipe wins at the target", "", f"**{verdict['line']}**", ""]
    if comparison is not None:
        lines += ["```text", *comparison.lines(), "```", ""]
        path = plot_comparison(comparison, out / "compare.png")
        figures.append(path)
        lines += [f"![each recipe's law]({path.name})", ""]
    lines += [f"The fit, frontier and recommendation below are recipe `{verdict['recipe']}`'s, on its runs alone "
              f"(`proxyscale compare DIR --by recipe --metric {verdict['metric']}` compares them).", ""]
    return RecipeLedger(ledger, verdict["recipe"]), verdict


def _section_distance(lines, figures, out, observations, estimate) -> None:
    """The held-out error against extrapolation distance, its fitted growth and the target's distance
    (analysis/predictive.py: the distance model that widens the target's intervals)."""
    from proxyscale.analysis.planner import best_per_cell
    from proxyscale.analysis.predictive import backtest_calibration

    calibration = backtest_calibration("chinchilla", *best_per_cell(observations), fit=estimate.fit,
                                       target=(estimate.n_opt.value, estimate.d_opt.value))
    if calibration.distance is None:
        return
    path = plots.plot_distance(calibration.distance, out / "distance.png", target_distance=calibration.target_distance)
    figures.append(path)
    lines += ["## Error against extrapolation distance", "",
              "The largest 1, 2, 3... sizes held out, the rest fitted: each held-out run's log error against its "
              "distance (N over the largest N fitted), the band the fitted growth gives, carried to the target's "
              "N_opt (docs/trust.md).", "", f"`{calibration.line()}`", "", f"![distance]({path.name})", ""]


def _section_isoflop(lines, figures, out, runs, target, bootstrap):
    finished = [r for r in runs if r["status"] == "finished"]
    budgets: dict[float, list[dict]] = defaultdict(list)
    for r, budget in zip(finished, budget_levels([cell_flops(r) for r in finished]), strict=True):
        budgets[float(budget)].append(r)
    usable = {b: rs for b, rs in budgets.items() if len({r["n_params"] for r in rs}) >= 3}
    if len(usable) < 3:
        return
    members = [(b, r) for b, rs in usable.items() for r in rs]
    flops = np.array([b for b, _ in members])
    n = np.array([r["n_params"] for _, r in members], float)
    loss = np.array([r["final_eval_loss"] for _, r in members], float)
    try:
        fit = fit_isoflop(flops, n, loss, bootstrap=bootstrap)
    except ValueError as error:
        lines += ["## isoFLOP (approach 2)", "", f"Not fitted: {error}", ""]
        return
    path = plots.plot_isoflop(flops, n, loss, fit, out / "isoflop.png")
    figures.append(path)
    at = fit.at(target)
    lines += ["## isoFLOP (approach 2)", "",
              f"Parabola in log N per budget ({len(fit.budgets)} usable budgets); N*(C) = G C^a:"
              f" a = {_interval(fit.n_law.exponent.as_dict(), '.3f')}, D*(C) exponent"
              f" {_interval(fit.d_law.exponent.as_dict(), '.3f')}.",
              f"At C = {target:.3g}: N* = {_interval(at['n_opt'].as_dict())}, L* = {_interval(at['loss'].as_dict())}.",
              "", f"![isoflop]({path.name})", ""]


def _section_recommendation(lines, plain, ledger, target, bootstrap, evidence=None, knob_sources=()):
    from proxyscale.orchestrator.advice import recommendation

    try:
        advice = recommendation(plain, ledger, target_flops=target, bootstrap=bootstrap, evidence=evidence,
                                knob_sources=knob_sources)
    except SpecError:
        return None
    lines += [f"## Recommended configuration at C = {target:.3g} FLOPs", "",
              "| key | value [95% interval] | basis | why |", "|---|---|---|---|"]
    for key in ("n_params", "tokens", "width", "depth", "lr", "batch_size", "schedule", "loss"):
        knob = advice[key]
        value = _interval(knob) if not isinstance(knob["value"], str) else knob["value"]
        flag = " (!)" if knob["basis"] in ("best_run", "not_varied") else ""
        lines.append(f"| {key} | {value} | {knob['basis']}{flag} | {knob['why']} |")
    lines += ["", "(!) not from a fitted law or transfer: the why names the sweep that would fit it.", ""]
    return advice


def _section_knob_laws(lines, figures, out, evidence, advice):
    """A law for every knob: each fitted law with its intervals and a figure (points, fit, band, target);
    then the laws of each `--knobs-from` sweep, at this sweep's target."""
    if not evidence:
        return
    target = {"N": advice["n_params"]["value"], "D": advice["tokens"]["value"]}
    lines += ["## A law for every knob", "",
              f"At the target N_opt = {target['N']:.3g}, D_opt = {target['D']:.3g} (95% intervals; the basis of each "
              "knob is in the table above).", ""]
    _knob_law_blocks(lines, figures, out, evidence, advice, target, stem="law")
    stems: set[str] = set()
    for k, (directory, found) in enumerate(evidence.get("sources", {}).items()):
        lines += [f"### From `{directory}` (`--knobs-from`: its laws at this sweep's N_opt and D_opt)", ""]
        stem = f"law_{Path(directory).name}"
        stem = stem if stem not in stems else f"{stem}_{k}"  # two sources may share a folder name
        stems.add(stem)
        _knob_law_blocks(lines, figures, out, found, advice, target, stem=stem)


def _knob_law_blocks(lines, figures, out, evidence, advice, target, *, stem: str):
    lr_batch = evidence.get("lr_batch")
    if lr_batch is not None:
        for name, law, reason, usable in (
                ("LR", lr_batch.lr_law, lr_batch.lr_reason,
                 [g for g in lr_batch.optima if g.lr_values >= 3 and g.lr_bracketed]),
                ("batch size", lr_batch.batch_law, lr_batch.batch_reason,
                 [g for g in lr_batch.optima if g.batch_values >= 3 and g.batch_bracketed])):
            if law is None:
                lines += [f"- {name}: no law ({reason}).", ""]
                continue
            key = "lr" if name == "LR" else "batch"
            transfer = " The LR law in width is replaced by muP transfer." if key == "lr" and lr_batch.lr_transfer else ""
            lines += [f"- {name}: `{law.formula()}` ({reason}).{transfer}", ""]
            points = [{"N": g.n_params, "D": g.tokens, "y": getattr(g, key)} for g in usable]
            path = plots.plot_knob_power_law(law, points, target, out / f"{stem}_{key}.png",
                                             ylabel="optimal peak LR" if key == "lr" else "optimal batch (tokens)")
            figures.append(path)
            lines += [f"![{name} law]({path.name})", ""]
        if lr_batch.drift is not None:
            per_width, slope = lr_batch.drift
            lines += [f"- muP drift of log LR_opt against log width: {_interval(slope.as_dict(), '+.2f')} (LR_opt per "
                      f"width: {', '.join(f'{w:g}: {v:.3g}' for w, v in per_width.items())}).", ""]
        if lr_batch.trend is not None:
            trend = lr_batch.trend
            lines += [f"- The optimal LR against the batch size: {trend.verdict}: "
                      + ", ".join(f"B = {b:g}: {_interval(i.as_dict(), '.3g')}"
                                  for b, i in zip(trend.batches, trend.lr_opt, strict=True))
                      + f"; slope {_interval(trend.slope.as_dict(), '+.2f')} (parametric bootstrap, relative loss noise "
                      f"{trend.noise:.2%} from the {trend.noise_source}).", ""]
            path = plots.plot_lr_vs_batch(trend, out / f"{stem}_lr_vs_batch.png")
            figures.append(path)
            lines += [f"![LR against batch size]({path.name})", ""]
    depth = evidence.get("depth")
    if depth is not None:
        aspect = depth.aspect
        edge = "" if depth.bracketed else " **At its bound: outside the aspect ratios tried, so only a bound.**"
        lines += [f"- Depth: optimal aspect ratio width/depth = {_interval(aspect.as_dict(), '.3g')} over depths "
                  f"{list(depth.depths)} in {depth.groups} equal-N group(s) (aspect ratios {depth.aspect_range[0]:.3g}-"
                  f"{depth.aspect_range[1]:.3g}); log-loss curvature {_interval(depth.curvature.as_dict(), '.3g')}."
                  + edge, ""]
        shape = advice["width"]["value"] / advice["depth"]["value"] if advice["depth"]["basis"] == "fitted_law" else None
        path = plots.plot_depth_law(depth, shape, out / f"{stem}_depth.png")
        figures.append(path)
        lines += [f"![depth law]({path.name})", ""]
    ranking = evidence.get("schedule")
    if ranking is not None:
        lines += ["- Schedules at the target by the curve law (final loss - cosine's, nats): "
                  + ", ".join(f"{k} {_interval(v.as_dict(), '+.4f')}" for k, v in ranking.vs_cosine.items())
                  + f"; best: **{ranking.best}**.", ""]
        path = plots.plot_schedule_ranking(ranking, out / f"{stem}_schedule.png")
        figures.append(path)
        lines += [f"![schedule ranking]({path.name})", ""]


def _section_lr(lines, figures, out, runs, steps_by_run, bootstrap):
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        if r["status"] in ("finished", "diverged"):
            by_setting[_setting(json.loads(r["spec_json"]))].append(r)
    lr_groups = {s: rs for s, rs in by_setting.items() if len({r["lr"] for r in rs}) >= 3}
    if not lr_groups:
        return
    grouped = [r for rs in lr_groups.values() for r in rs]
    # The shape axis the LR should transfer along: depth for a depth study (one width, several depths), else width.
    axis = "depth" if len({r["width"] for r in grouped}) == 1 and len({r["depth"] for r in grouped}) >= 2 else "width"
    lines += [f"## Learning rate: sensitivity, transfer across {axis}, stability probes", "",
              f"| setting | {axis} | LR sensitivity | LR_opt | max attention logit at the largest LR | |log Z| max there |",
              "|---|---|---|---|---|---|"]
    loss_lines, logit_lines, logz_lines, width_logit = {}, {}, {}, defaultdict(list)
    width_logz, sensitivity_fits, at_budget = defaultdict(list), {"all": {}, "high": {}}, defaultdict(list)
    for setting, rs in sorted(lr_groups.items()):
        widths = sorted({r[axis] for r in rs})
        for width in widths:
            at = [r for r in rs if r[axis] == width]
            # The budget with the most LRs at this width, so losses are comparable.
            tokens = max({r["tokens"] for r in at}, key=lambda t: sum(r["tokens"] == t for r in at))
            at = [r for r in at if r["tokens"] == tokens]
            losses = [r["final_eval_loss"] if r["status"] == "finished" else float("nan") for r in at]
            initial = max(r["initial_eval_loss"] for r in at)
            label = f"{setting}, {axis} {width}"
            loss_lines[label] = [(r["lr"], loss) for r, loss in zip(at, losses, strict=True)]
            logits = [(r["lr"], _final_probe(steps_by_run[r["run_id"]], "max_attn_logit")) for r in at]
            logits = [(lr, v) for lr, v in logits if v is not None]
            logz = [(r["lr"], _final_probe(steps_by_run[r["run_id"]], "logz_abs_max")) for r in at]
            logz = [(lr, v) for lr, v in logz if v is not None]
            if logits:
                logit_lines[label] = logits
                width_logit[setting].append((width, max(logits)[1]))
            if logz:
                logz_lines[label] = logz
                width_logz[setting].append((width, max(logz)[1]))
            at_budget[setting] += at
            # the LR with the lowest loss for an average seed (not the luckiest seed's run), as `transfer` reads it
            means = seed_adjusted_means([r["lr"] for r in at], losses, [r["seed"] for r in at])
            best = min(means, key=means.get) if means else float("nan")
            top_logit = f"{max(logits)[1]:.1f}" if logits else "-"
            top_logz = f"{max(logz)[1]:.2f}" if logz else "-"
            # Each LR's seeds averaged before the minimum is taken (not the luckiest seed's loss).
            sensitivity = lr_sensitivity_of_runs([r["lr"] for r in at], losses, initial)
            lines.append(f"| {setting} | {width} | {sensitivity:.4f} | {best:.3g} | {top_logit} | {top_logz} |")
        usable = [r for r in rs if r["status"] == "finished" and r["final_eval_loss"] is not None]
        found = drift_of_sweep(*([r[key] for r in usable] for key in (axis, "tokens", "batch_size", "lr",
                                                                      "final_eval_loss")),
                               seeds=[r["seed"] for r in usable], bootstrap=bootstrap)
        if found is not None:
            per_width, drift = found
            lines.append(f"| {setting} | drift of log LR_opt vs log {axis} | {_interval(drift.as_dict(), '+.2f')} "
                         f"({drift_verdict(drift)}) | {', '.join(f'{w:g}: {v:.3g}' for w, v in per_width.items())} | | |")
        # Wortsman's sensitivity per (width, seed) at the budget of the table's rows, and its slope in log width.
        # (side "high": the LRs from each width's optimum up, where the instabilities act.)
        columns = [*([r[key] for r in at_budget[setting]] for key in (axis, "seed", "lr")),
                   [r["final_eval_loss"] if r["status"] == "finished" else float("nan") for r in at_budget[setting]],
                   [r["initial_eval_loss"] for r in at_budget[setting]]]
        for side, what in (("all", "LR sensitivity"), ("high", "LR sensitivity from LR_opt up")):
            fit = sensitivity_slope(sensitivity_by_seed(*columns, side=side))
            if len(fit.sensitivity) >= 2:
                sensitivity_fits[side][setting] = fit
                lines.append(f"| {setting} | {what} per doubling of {axis} | {_interval(fit.slope.as_dict(), '+.4f')}"
                             f" (seed noise {fit.noise:.4f} from {fit.noise_source}, {fit.noise_dof} dof) | | | |")
    lines.append("")
    for side, what in (("all", "LR sensitivity"), ("high", "LR sensitivity from LR_opt up")):
        for setting, fit in sensitivity_fits[side].items():  # each setting against itself with qk-layernorm added
            name, _, rest = setting.partition(" ")
            partner = sensitivity_fits[side].get(f"{name} +qk-ln" + (f" {rest}" if rest else ""))
            if "+qk-ln" not in setting and partner is not None:
                diff = slope_difference(fit, partner)
                lines += [f"- {what} slope, {setting} minus {setting} +qk-ln: {_interval(diff.as_dict(), '+.4f')}"
                          f" per doubling; Wortsman's claim (it grows with width, and more than with qk-layernorm): "
                          f"**{sensitivity_verdict(fit.slope, diff)}**.", ""]
    for name, data, probe in (("lr_sensitivity.png", loss_lines, None),
                              ("attention_logits.png", logit_lines, "max_attn_logit"),
                              ("logz.png", logz_lines, "logz_abs_max")):
        if not data:
            continue
        path = (plots.plot_lr_sensitivity(data, out / name) if probe is None
                else plots.plot_probe_trend(data, out / name, probe=probe))
        figures.append(path)
        lines += [f"![{name[:-4]}]({path.name})", ""]
    if any(len(v) >= 2 for v in width_logit.values()):
        path = plots.plot_probe_trend({k: v for k, v in width_logit.items() if len(v) >= 2},
                                      out / "attention_logits_width.png", probe="max_attn_logit (largest LR)",
                                      xlabel=axis)
        figures.append(path)
        lines += [f"![attention logits vs {axis}]({path.name})", ""]
    if sensitivity_fits["all"]:
        panels = {"LR sensitivity, the whole LR grid": sensitivity_fits["all"]}
        if sensitivity_fits["high"]:
            panels["LR sensitivity, the LRs from LR_opt up"] = sensitivity_fits["high"]
        path = plots.plot_sensitivity_width(panels, out / "sensitivity_width.png", xlabel=axis)
        figures.append(path)
        lines += [f"![LR sensitivity vs {axis}]({path.name})", ""]
    if any(len(v) >= 2 for v in width_logit.values()) and any(len(v) >= 2 for v in width_logz.values()):
        path = plots.plot_probes_width({k: v for k, v in width_logit.items() if len(v) >= 2},
                                       {k: v for k, v in width_logz.items() if len(v) >= 2}, out / "logits_width.png",
                                       xlabel=axis)
        figures.append(path)
        lines += [f"![max attention logit and |log Z| vs {axis} at the largest LR]({path.name})", ""]


def _section_curves(lines, figures, out, runs, steps_by_run):
    from proxyscale.analysis.schedule_law import LossCurve, fit_schedule_law

    finished = [r for r in runs if r["status"] == "finished"]
    if not finished:
        return
    width = max(r["width"] for r in finished)
    at = sorted([r for r in finished if r["width"] == width], key=lambda r: r["tokens"])
    best_lr = min(at, key=lambda r: r["final_eval_loss"])["lr"]
    one_per_budget: dict[int, dict] = {}
    for r in at:
        if r["lr"] == best_lr and (r["tokens"] not in one_per_budget
                                   or r["final_eval_loss"] < one_per_budget[r["tokens"]]["final_eval_loss"]):
            one_per_budget[r["tokens"]] = r
    at = [one_per_budget[t] for t in sorted(one_per_budget)]
    curves, law_curves = {}, []
    for r in at:
        spec = RunSpec.from_dict(json.loads(r["spec_json"]))
        points = [s for s in steps_by_run[r["run_id"]] if s["eval_loss"] is not None and s["step"] > 0]
        if len(points) < 2:
            continue
        curves[f"D={r['tokens']:.3g}"] = ([s["tokens"] for s in points], [s["eval_loss"] for s in points])
        lrs = np.array([spec.train.lr * lr_multiplier(step, spec.train) for step in range(spec.train.steps)])
        law_curves.append(LossCurve(name=f"D={r['tokens']:.3g}", lrs=lrs, steps=np.array([s["step"] for s in points]),
                                    losses=np.array([s["eval_loss"] for s in points])))
    if not curves:
        return
    predicted, note = {}, "Schedule law not fitted: it needs 2+ budgets at this width with 3+ evaluations each."
    usable = [c for c in law_curves if len(c.steps) >= 3]
    if len(usable) >= 3:
        fit = fit_schedule_law(usable[:-1])
        held_out = usable[-1]
        for curve in usable:
            tokens = curves[curve.name][0]
            predicted[curve.name] = (tokens, fit.predict(curve))
        note = (f"Schedule law (Tissue et al.) fitted on the {len(usable) - 1} shorter runs, predicting the longest"
                f" ({held_out.name}) with mean |relative error| {100 * fit.relative_error(held_out):.2f}% past its"
                f" first 10%.")
    path = plots.plot_loss_curves(curves, out / "loss_curves.png", predicted,
                                  title=f"eval loss, width {width}, lr {best_lr:g}")
    figures.append(path)
    lines += ["## Loss curves", "", note, "", f"![loss curves]({path.name})", ""]


def build_report(directory: str | Path, *, target_flops: float | None, bootstrap: int = 1000,
                 out: Path | None = None, knob_sources=()) -> tuple[Path, list[Path], dict[str, Any]]:
    """Write report.md and its PNGs into DIR/report (or `out`); returns (report, figures, summary)."""
    directory = Path(directory)
    with Ledger(directory / "ledger.sqlite") as ledger:
        return _write_report(directory, ledger, target_flops=target_flops, bootstrap=bootstrap, out=out,
                             knob_sources=knob_sources)


def _write_report(directory: Path, ledger: Ledger, *, target_flops: float | None, bootstrap: int, out: Path | None,
                  knob_sources) -> tuple[Path, list[Path], dict[str, Any]]:
    from omegaconf import OmegaConf

    config_path = directory / "config.yaml"
    plain = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True) if config_path.exists() else {}
    runs = ledger.runs()
    if not runs:
        raise SpecError(f"DIR: {directory} has no runs yet")
    steps_by_run: dict[str, list[dict]] = defaultdict(list)
    for step in ledger.steps():
        steps_by_run[step["run_id"]].append(step)
    target = target_flops or plain.get("target_flops") or 100 * max(cell_flops(r) for r in runs)
    out = out or directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    statuses = defaultdict(int)
    for r in runs:
        statuses[r["status"]] += 1
    name = runs[0]["sweep"]
    trainer = (plain.get("trainer") or {}).get("kind", "real")
    lines = [f"# proxyscale report: sweep `{name}`", "",
             f"{len(runs)} runs ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}), "
             f"{sum(r['flops'] for r in runs if r['status'] in ('finished', 'diverged')):.3e} FLOPs spent; "
             f"trainer: {trainer}" + (" (SIMULATED losses, nothing trained)" if trainer == "simulated" else "") + ".",
             ""]
    figures: list[Path] = []
    fit_ledger, fit_runs, verdict = ledger, runs, None
    if (plain.get("sweep") or {}).get("recipes"):  # a recipe sweep: the winner first, then its runs' own laws
        fit_ledger, verdict = _section_recipes(lines, figures, out, plain, ledger, target, bootstrap)
        fit_runs = fit_ledger.runs()
    observations = observations_from_ledger(fit_ledger)
    estimate = _section_fit(lines, figures, out, fit_runs, observations, target, bootstrap, directory)
    _section_isoflop(lines, figures, out, fit_runs, target, bootstrap)
    evidence: dict[str, Any] = {}
    advice = (_section_recommendation(lines, plain, ledger, target, bootstrap, evidence, knob_sources)
              if plain and estimate else None)
    if advice is not None:
        _section_knob_laws(lines, figures, out, evidence, advice)
    elif knob_sources:
        lines += ["## A law for every knob", "", f"The laws of {', '.join(f'`{d}`' for d, _, _ in knob_sources)} "
                  "(`--knobs-from`) are not drawn: this sweep gives no N_opt, D_opt to evaluate them at.", ""]
    _section_lr(lines, figures, out, runs, steps_by_run, bootstrap)
    _section_curves(lines, figures, out, runs, steps_by_run)
    lines += ["## Runs", "", "Bits per byte (bpb) = final loss / ln 2 / bytes per token of the eval split: comparable "
              "across tokenizers (docs/corpora.md).", "",
              "| run_id | status | width | N | D | lr | final loss | bpb | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["width"] or 0, r["tokens"] or 0, r["lr"] or 0)):
        loss = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
        bpb = f"{r['final_eval_bpb']:.4f}" if r.get("final_eval_bpb") is not None else "-"
        wall = f"{r['wall_seconds']:.0f}" if r["wall_seconds"] is not None else "-"
        lines.append(f"| {r['run_id']} | {r['status']} | {r['width']} | {r['n_params']:,} | {r['tokens']:,} | "
                     f"{r['lr']:.3g} | {loss} | {bpb} | {wall} |")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    summary: dict[str, Any] = {"runs": len(runs), "target_flops": target}
    if estimate is not None:
        summary |= {"n_opt": estimate.n_opt.value, "loss_at_target": estimate.loss.value}
    if advice is not None:
        summary |= {"recommended_width": advice["width"]["value"], "recommended_lr": advice["lr"]["value"]}
    if verdict is not None:
        summary |= {"recipe": verdict["recipe"], "recipe_p_best": verdict["p_best"], "recipe_decided": verdict["decided"]}
    return report, figures, summary
