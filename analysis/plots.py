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
