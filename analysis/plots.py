"""Plots as PNG files. matplotlib's Agg backend is chosen inside each function, never at import."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_coord_check(records: list[dict], path: str | Path, axis: str = "width") -> Path:
    """Mean |activation| against width (or depth), one panel per (parametrisation, step), one line per layer."""
    plt = _pyplot()
    parametrizations = sorted({r["parametrization"] for r in records}, key=["sp", "mup", "completep"].index)
    steps = sorted({r["step"] for r in records})
    shown_steps = sorted({steps[0], steps[len(steps) // 2], steps[-1]})
    layers = sorted({r["layer"] for r in records if not r["layer"].startswith("block") or r["layer"].endswith(".out")})
    if axis == "width":
        layers.remove("last_block")  # the same curve as the deepest block's output when depth is fixed
    fig, axes = plt.subplots(
        len(parametrizations), len(shown_steps), figsize=(4 * len(shown_steps), 3.2 * len(parametrizations)),
        squeeze=False, sharey="row",
    )
    for row, parametrization in enumerate(parametrizations):
        for col, step in enumerate(shown_steps):
            ax = axes[row][col]
            for layer in layers:
                points = sorted(
                    (r[axis], r["l1"]) for r in records
                    if r["parametrization"] == parametrization and r["step"] == step and r["layer"] == layer
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", label=layer)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{parametrization}, step {step}")
            ax.set_xlabel(axis)
            if col == 0:
                ax.set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_isoflop(flops, n_params, loss, fit, path: str | Path) -> Path:
    """Loss against N per FLOP budget, the fitted parabola in log N and its minimum (approach 2)."""
    import numpy as np

    plt = _pyplot()
    flops, n_params, loss = (np.asarray(v, float) for v in (flops, n_params, loss))
    fig, ax = plt.subplots(figsize=(6, 4))
    for budget in np.unique(flops):
        members = flops == budget
        order = np.argsort(n_params[members])
        x, y = n_params[members][order], loss[members][order]
        line, = ax.plot(x, y, "o", label=f"C = {budget:.2g}")
        if len(x) >= 3:
            coefficients = np.polyfit(np.log(x), y, 2)
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(grid, np.polyval(coefficients, np.log(grid)), "-", color=line.get_color(), alpha=0.6)
    if fit is not None:
        ax.plot(fit.optimal_n, fit.optimal_loss, "k*", markersize=12, label="minima")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final eval loss")
    ax.set_title("isoFLOP curves")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_frontier(fit, n_params, tokens, loss, target_flops: float, path: str | Path, check: dict | None = None) -> Path:
    """The compute-optimal loss L(N_opt(C), D_opt(C)) of a fitted L(N, D) with its bootstrap band, from the
    runs' compute up to the target, the runs themselves, and (optionally) the check run: its predicted
    loss with the 95% interval for a measured loss, and what it measured."""
    import numpy as np

    plt = _pyplot()
    n_params, tokens, loss = (np.asarray(v, float) for v in (n_params, tokens, loss))
    compute = 6 * n_params * tokens
    grid = np.geomspace(compute.min(), target_flops, 40)
    bands = [fit.compute_optimal(c)["loss"] for c in grid]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(grid, [b.low for b in bands], [b.high for b in bands], alpha=0.25, label="95% interval")
    ax.plot(grid, [b.value for b in bands], "-", label="L at N_opt(C), D_opt(C)")
    ax.scatter(compute, loss, c=np.log10(n_params), s=18, cmap="viridis", label="runs (colour: log10 N)")
    target = fit.compute_optimal(target_flops)["loss"]
    ax.errorbar([target_flops], [target.value], yerr=[[target.value - target.low], [target.high - target.value]],
                fmt="r*", markersize=10, label=f"target {target_flops:.2g}: {target.value:.3f}")
    if check is not None:
        c = 6 * check["n_params"] * check["tokens"]
        low, high = check["interval"]
        ax.errorbar([c], [check["predicted"]], yerr=[[check["predicted"] - low], [high - check["predicted"]]],
                    fmt="s", color="tab:orange", mfc="none", markersize=7, capsize=4,
                    label=f"check run predicted {check['predicted']:.3f} [{low:.3f}, {high:.3f}]")
        if check.get("measured") is not None:
            ax.plot([c], [check["measured"]], "X", color="black", markersize=9,
                    label=f"check run measured {check['measured']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("loss")
    ax.set_title("L(N, D) frontier")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_loss_curves(curves: dict[str, tuple], path: str | Path, predicted: dict[str, tuple] | None = None,
                     title: str = "loss curves") -> Path:
    """Eval loss against tokens per run ({label: (tokens, losses)}), and schedule-law predictions dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in curves.items():
        line, = ax.plot(x, y, "o-", markersize=3, label=label)
        if predicted and label in predicted:
            px, py = predicted[label]
            ax.plot(px, py, "--", color=line.get_color(), label=f"{label}: schedule law")
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("eval loss")
    ax.set_title(title)
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_lr_sensitivity(groups: dict[str, list[tuple[float, float]]], path: str | Path,
                        title: str = "final loss against LR") -> Path:
    """Final loss against LR, one line per setting ({label: [(lr, loss or nan when diverged)]})."""
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in groups.items():
        points = sorted(points)
        xs = [lr for lr, _ in points]
        ys = [loss for _, loss in points]
        line, = ax.plot(xs, ys, "o-", label=label)
        diverged = [lr for lr, loss in points if not math.isfinite(loss)]
        if diverged:
            top = max((y for y in ys if math.isfinite(y)), default=1.0)
            ax.plot(diverged, [top] * len(diverged), "x", color=line.get_color(), markersize=9)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final eval loss (x: diverged)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_transfer(panels: dict[str, dict[float, list[tuple[float, float]]]], path: str | Path, *, axis: str,
                  lr_opt: dict[str, dict[float, float]] | None = None) -> Path:
    """One panel per setting (e.g. a depth parametrisation): final loss against LR, a line per width or
    depth ({label: {axis value: [(lr, loss)]}}), each line's LR_opt marked; shared y so panels compare."""
    import math

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), sharey=True, squeeze=False)
    for ax, (label, lines) in zip(axes[0], panels.items(), strict=True):
        cmap = plt.get_cmap("viridis")
        for k, (value, points) in enumerate(sorted(lines.items())):
            points = sorted((lr, loss) for lr, loss in points if math.isfinite(loss))
            color = cmap(k / max(1, len(lines) - 1))
            ax.plot([lr for lr, _ in points], [loss for _, loss in points], "o-", color=color,
                    label=f"{axis} {value:g}")
            best = (lr_opt or {}).get(label, {}).get(value)
            if best:
                ax.axvline(best, color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels overlap on a decade or two
        ax.set_xlabel("learning rate (dotted: LR_opt)")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("final eval loss")
    return _save(fig, path)


def plot_probe_trend(groups: dict[str, list[tuple[float, float]]], path: str | Path, *, probe: str,
                     xlabel: str = "learning rate") -> Path:
    """A probe's final value (e.g. the max attention logit) against LR or width, one line per setting."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in groups.items():
        points = sorted(points)
        ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"final {probe}")
    ax.set_title(f"{probe} against {xlabel}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_sensitivity_width(panels: dict[str, dict], path: str | Path, *, level: float = 0.95,
                           xlabel: str = "width") -> Path:
    """LR sensitivity against width, a panel per measure ({title: {label: analysis.lr_transfer.SensitivitySlope}},
    e.g. the full LR grid and the LRs from LR_opt up) and a colour per setting: each seed's sensitivity (dots),
    each width's mean over seeds with its `level` t interval from the pooled seed-to-seed noise (error bars), the
    least-squares line, and the slope per doubling with its interval in the legend."""
    import math

    import numpy as np
    from scipy import stats

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for ax, (title, fits) in zip(axes[0], panels.items(), strict=True):
        for k, (label, fit) in enumerate(fits.items()):
            color, nudge = f"C{k}", 1 + 0.015 * (k - 1.5)  # settings' points side by side at each width
            widths = sorted(fit.sensitivity)
            x = np.array([w for w in widths for _ in fit.sensitivity[w]], float)
            y = np.array([v for w in widths for v in fit.sensitivity[w].values()], float)
            ax.plot(x * nudge, y, ".", color=color, alpha=0.5)
            means = [float(np.mean(list(fit.sensitivity[w].values()))) for w in widths]
            t = stats.t.ppf(0.5 + level / 2, fit.noise_dof) if fit.noise_dof > 0 else float("nan")
            half = [t * fit.noise / math.sqrt(len(fit.sensitivity[w])) for w in widths]
            s = fit.slope
            ax.errorbar(np.array(widths) * nudge, means, yerr=half if math.isfinite(fit.noise) else None, fmt="o",
                        color=color, capsize=3, label=f"{label}: {s.value:+.3f} [{s.low:+.3f}, {s.high:+.3f}]/doubling")
            if math.isfinite(s.value):
                grid = np.geomspace(min(widths), max(widths), 20)
                ax.plot(grid, y.mean() + s.value * (np.log2(grid) - np.log2(x).mean()), "--", color=color,
                        linewidth=1)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plt.ScalarFormatter())  # 16, 32, ... rather than 2^4, 2^5
        ax.set_xlabel(xlabel)
        ax.set_ylabel("LR sensitivity (nats)")
        ax.set_title(f"{title} (dots: seeds; bars: {level:.0%} interval of the mean)", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_probes_width(logits: dict[str, list[tuple[float, float]]], logz: dict[str, list[tuple[float, float]]],
                      path: str | Path, *, xlabel: str = "width") -> Path:
    """Two panels against width, a line per setting ({label: [(width, value)]}): the max attention logit and the
    max |log Z| at the sweep's largest LR (log y: the logits span orders of magnitude between settings)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, groups, name in ((axes[0], logits, "max attention logit"), (axes[1], logz, "max |log Z|")):
        for label, points in groups.items():
            points = sorted(points)
            ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plt.ScalarFormatter())
        if name.endswith("logit"):  # log Z stays within a few nats; the logits differ by orders of magnitude
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"final {name}")
        ax.set_title(f"{name} at the largest LR", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------- a law for every knob (issue 14)


def plot_knob_power_law(law, points: list[dict], target: dict, path: str | Path, *, ylabel: str,
                        title: str = "") -> Path:
    """A power law of analysis.lr_batch_law (e.g. eta_opt(N, D), B_opt(D)) against D: the group optima as
    points (one colour per N when the law has N), the fit with its bootstrap band over D from the points
    to the target, and the target marked with its interval. points: dicts with the law's features and y."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    d_points = np.array([p["D"] for p in points], float)
    grid = np.geomspace(min(d_points.min(), target["D"]) / 1.5, max(d_points.max(), target["D"]) * 1.5, 60)
    with_n = "N" in law.features
    # One line per N of the points (and the target's N) when the law has N; one line otherwise.
    lines = [(n, False) for n in sorted({p["N"] for p in points})] + [(target.get("N"), True)] if with_n else [(None, False)]
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(lines)))
    for colour, (n, is_target) in zip(colours, lines, strict=True):
        features = {"D": grid} | ({"N": np.full(len(grid), n)} if with_n else {})
        x = np.column_stack([np.ones(len(grid))] + [np.log(features[name]) for name in law.features])
        label = "fit" if not with_n else f"fit at N = {n:.3g}" + (" (target)" if is_target else "")
        ax.plot(grid, np.exp(x @ law.theta), "--" if is_target else "-", color=colour, label=label)
        if len(law.members):
            low, high = np.percentile(np.exp(law.members @ x.T), [2.5, 97.5], axis=0)
            ax.fill_between(grid, low, high, color=colour, alpha=0.15)
        if not is_target:
            mine = [p for p in points if not with_n or p["N"] == n]
            ax.plot([p["D"] for p in mine], [p["y"] for p in mine], "o", color=colour,
                    label="group optima" if not with_n else None)
    at = law.predict(**{k: target[k] for k in law.features})
    ax.errorbar([target["D"]], [at.value], yerr=[[at.value - at.low], [at.high - at.value]], fmt="r*", markersize=11,
                capsize=4, label=f"target: {at.value:.3g} [{at.low:.3g}, {at.high:.3g}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens D")
    ax.set_ylabel(ylabel)
    ax.set_title(title or law.formula(".2g"), fontsize=7)
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_lr_vs_batch(trend, path: str | Path) -> Path:
    """The optimal LR per batch size with its interval, and the verdict (rises / falls / flat / surge)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = [i.value for i in trend.lr_opt]
    ax.errorbar(trend.batches, values, yerr=[[v - i.low for v, i in zip(values, trend.lr_opt, strict=True)],
                                             [i.high - v for v, i in zip(values, trend.lr_opt, strict=True)]],
                fmt="o-", capsize=4, label=f"LR_opt (geometric mean over {trend.groups} group(s))")
    if trend.surge:
        ax.axvline(trend.surge, color="tab:red", linestyle="--", label=f"surge near B = {trend.surge:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B (tokens)")
    ax.set_ylabel("optimal peak LR")
    ax.set_title(f"optimal LR against batch size: {trend.verdict} (slope {trend.slope.value:+.2f} "
                 f"[{trend.slope.low:+.2f}, {trend.slope.high:+.2f}])", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_depth_law(law, target_aspect: float | None, path: str | Path) -> Path:
    """Loss at equal N against the aspect ratio width / depth: each (group, depth) point relative to its
    group (the law's k (ln a - ln a*)^2 plus its residual), the fitted parabola with its band, the optimum
    with its interval and the target's shape marked."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for group in sorted({p["group"] for p in law.points}):
        mine = sorted((p for p in law.points if p["group"] == group), key=lambda p: p["aspect"])
        n = np.exp(np.mean(np.log([p["n_params"] for p in mine])))
        ax.plot([p["aspect"] for p in mine], [np.exp(p["relative"]) for p in mine], "o:",
                label=f"N ~ {n:.3g}, D = {mine[0]['tokens']:.3g}")
    low, high = law.aspect_range
    grid = np.geomspace(min(low, target_aspect or low) / 1.5, max(high, target_aspect or high) * 1.5, 80)
    u = np.log(grid)
    ax.plot(grid, np.exp(law.curvature.value * (u - np.log(law.aspect.value)) ** 2), "k-", label="fit")
    if len(law.members):
        finite = np.isfinite(law.members[:, 0])
        curves = np.exp(law.members[finite, 1, None] * (u[None, :] - law.members[finite, 0, None]) ** 2)
        ax.fill_between(grid, *np.percentile(curves, [2.5, 97.5], axis=0), color="k", alpha=0.12, label="95% band")
    ax.axvspan(law.aspect.low, law.aspect.high, color="tab:green", alpha=0.15,
               label=f"optimum {law.aspect.value:.3g} [{law.aspect.low:.3g}, {law.aspect.high:.3g}]")
    if target_aspect:
        ax.axvline(target_aspect, color="tab:red", linestyle="--", label=f"target shape: {target_aspect:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("aspect ratio width / depth")
    ax.set_ylabel("loss / loss at the optimal aspect (equal N, D)")
    ax.set_title("depth at equal N")
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_schedule_ranking(ranking, path: str | Path) -> Path:
    """Each schedule's predicted final loss minus cosine's at the target, with its 95% interval."""
    plt = _pyplot()
    names = list(ranking.vs_cosine)
    values = [ranking.vs_cosine[k].value for k in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh(range(len(names)), values, xerr=[[v - ranking.vs_cosine[k].low for k, v in zip(names, values, strict=True)],
                                             [ranking.vs_cosine[k].high - v for k, v in zip(names, values, strict=True)]],
            color=["tab:green" if k == ranking.best else "tab:gray" for k in names], capsize=4)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("predicted final loss - cosine's (nats)")
    ax.set_title(f"schedules at the target (N = {ranking.n_params:.3g}, D = {ranking.tokens:.3g}): curve law", fontsize=8)
    return _save(fig, path)


def plot_distance(model, path: str | Path, *, target_distance: float | None = None, title: str = "") -> Path:
    """Held-out log error against extrapolation distance (N / largest fitted N) with the fitted growth's band
    +- z sigma(x) carried to the target's distance, marked (model: analysis.predictive.DistanceModel)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # Held-out points at the distance where the full ladder would be as far out (their split fitted fewer sizes).
    x, errors = np.asarray(model.equivalent_distances, float), np.asarray(model.errors, float)
    far = max([float(x.max()) if len(x) else 0.0, target_distance or 0.0, np.log(2.0)])
    grid = np.linspace(0.0, far * 1.15, 200)
    band = 100 * np.asarray(model.half_width(grid))
    label = f"{model.level:.0%} band: growth {100 * model.per_doubling:.2f}% per doubling ({model.source})"
    ax.fill_between(np.exp(grid), -band, band, color="tab:blue", alpha=0.15, label=label)
    ax.plot(np.exp(grid), band, color="tab:blue", lw=1)
    ax.plot(np.exp(grid), -band, color="tab:blue", lw=1)
    if len(x):
        ax.scatter(np.exp(x), 100 * errors, s=14, color="black", zorder=3,
                   label=f"held-out runs ({model.units} size{'s' if model.units != 1 else ''} held out)")
    if target_distance is not None and np.isfinite(target_distance):
        ax.axvline(np.exp(target_distance), color="tab:red", ls="--",
                   label=f"target at {np.exp(target_distance):.3g}x: +-{100 * model.half_width(target_distance):.2f}%")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel(f"extrapolation distance: {model.axis} / largest fitted {model.axis} (held-out points rescaled to "
                  "this ladder's span; a point or target farther out in D is drawn at the N ratio of as many spans)",
                  fontsize=7)
    ax.set_ylabel("log error, measured - predicted (%)")
    ax.set_title(title or "held-out error against extrapolation distance")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)
