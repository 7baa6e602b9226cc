"""The Python API: what a notebook needs, on the same engines as the commands.

    import proxyscale
    f = proxyscale.fit(table, n="N", d="D", loss="loss")          # proxyscale fit --csv ...
    f.parameters["E"], f.predict(n=1e9, d=2e10), f.compute_optimal(1e21)
    sweep = proxyscale.open_sweep("runs/demo")                      # proxyscale export runs/demo
    sweep.runs(), sweep.steps(), sweep.evals()
    proxyscale.recommend("runs/demo")                               # proxyscale recommend runs/demo --json
    fit, backtest = proxyscale.fit_curves("runs/demo")              # proxyscale fit runs/demo --curves
    proxyscale.compare(["runs/a", "runs/b"], target_flops=1e21)     # proxyscale compare runs/a runs/b --json

Every function here calls what the matching command calls (analysis/table_fit.py for `fit`,
orchestrator/frames.py for `export`, orchestrator/advice.py for `recommend`), so a notebook and the shell get
the same numbers from the same input. Bad input raises `proxyscale.SpecError` with the message the
command prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy imports wait for the first call: `import proxyscale` stays quick
    import pandas as pd

    from proxyscale.analysis.compare import Comparison
    from proxyscale.analysis.table_fit import TableFit


def _is_sweep_dir(data) -> bool:
    return isinstance(data, (str, Path)) and (Path(data) / "ledger.sqlite").exists()


def fit(data: pd.DataFrame | str | Path, *, n: str | None = None, d: str | None = None, loss: str | None = None,
        flops: str | None = None, law: str = "chinchilla", bootstrap: int = 1000, seed: int = 0, window: int | None = 5,
        drop_highest_loss: int = 0, calibrate: bool = True, metric: str = "loss") -> TableFit:
    """Fit a scaling law to final losses, with bootstrap intervals: `proxyscale fit` as a function.

    Args:
        data: a pandas DataFrame, a CSV path, or a sweep directory (its finished runs; N = all parameters).
        n: the column of parameter counts (a table; a sweep directory: all parameters).
        d: the column of training tokens. With only one of n / d, flops gives the other (C = 6 N D).
        loss: the column of final losses.
        flops: the column of training FLOPs (isoflop: the budgets the runs are grouped by).
        law: "chinchilla" (L(N, D), approach 3), "overtraining" (Gadre et al.'s L(C, M)) or "isoflop" (approach 2,
            runs grouped by their FLOP budget).
        bootstrap: resamples for the intervals (0: point estimate only).
        window: isoflop: the sizes around each budget's lowest point the parabola uses (None: all).
        drop_highest_loss: drop this many highest-loss rows first (Besiroglu et al. drop 5 of Chinchilla's).
        calibrate: measure the backtest calibration (largest sizes held out) that scales `predict` and
            `compute_optimal` (chinchilla, overtraining).
        metric: a sweep directory: "loss" (nats per token) or "bpb" (bits per byte).

    Returns:
        A `TableFit`: `.parameters`, `.predict(n, d)`, `.compute_optimal(C)`, `.plot(path, C)`, `.to_dict(C)`.
    """
    import numpy as np
    import pandas as pd

    from proxyscale.analysis.table_fit import fit_table
    from proxyscale.models.spec import SpecError

    if _is_sweep_dir(data):
        from proxyscale.analysis.isoflop import budget_levels
        from proxyscale.orchestrator.commands.common import open_ledger
        from proxyscale.orchestrator.observations import finished_rows

        ledger = open_ledger(str(data), metric=metric)
        rows = finished_rows(ledger)
        ledger.close()
        table = pd.DataFrame({"n_params": [r["n_params"] for r in rows], "tokens": [r["tokens"] for r in rows],
                              "final_eval_loss": [r["final_eval_loss"] for r in rows],
                              "flop_budget": budget_levels([r["flops"] for r in rows])})
        n, d, loss, flops = "n_params", "tokens", "final_eval_loss", "flop_budget" if law == "isoflop" else None
    else:
        table = data if isinstance(data, pd.DataFrame) else pd.read_csv(data)
    if loss is None or (n is None and d is None) or ((n is None or d is None) and flops is None):
        raise SpecError("fit: give loss= and n= and d= (or one of them with flops=) naming columns of the table")
    missing = [c for c in (n, d, loss, flops) if c is not None and c not in table.columns]
    if missing:
        raise SpecError(f"fit: no column {missing[0]!r} in the table; its columns are {list(table.columns)}")
    if drop_highest_loss:
        table = table.sort_values(loss).iloc[:-drop_highest_loss]
    c = table[flops].to_numpy(float) if flops else None
    n_values = table[n].to_numpy(float) if n else c / (6 * table[d].to_numpy(float))
    d_values = table[d].to_numpy(float) if d else c / (6 * n_values)
    return fit_table(n_values, d_values, np.asarray(table[loss], float), law=law,
                     flops=c if c is not None else 6 * n_values * d_values, x_is_tokens=n is None,
                     bootstrap=bootstrap, seed=seed, window=window, calibrate=calibrate)


def fit_curves(sweep_dir: str | Path, *, law: str = "auto", bootstrap: int = 40, seed: int = 0):
    """The joint loss-curve law fitted to every eval point of a sweep's finished runs (`proxyscale fit DIR --curves`).

    Returns (fit, backtest): the curve form the backtest chose (law "auto"; or "tissue", "mpl") fitted with its
    bootstrap, and the `CurveBacktest` whose calibration scales its intervals.
    """
    from proxyscale.analysis.predictive import check_curve_law
    from proxyscale.analysis.predictive import fit_curves as fit_curve_law
    from proxyscale.orchestrator.commands.common import open_ledger
    from proxyscale.orchestrator.curves import ledger_curves

    check_curve_law(law)
    with open_ledger(str(sweep_dir)) as ledger:
        runs = ledger_curves(ledger)
    return fit_curve_law([r.curve for r in runs], law=law, bootstrap=bootstrap, seed=seed)


def recommend(sweep_dir: str | Path, *, target_flops: float | None = None, metric: str = "loss",
              bootstrap: int = 1000, seed: int = 0, knobs_from: tuple[str, ...] = ()) -> dict:
    """The recommended configuration at the target compute, with intervals: `proxyscale recommend DIR --json`.

    target_flops: default, the sweep's own `target_flops`. knobs_from: other sweep directories whose laws give
    the knobs this sweep did not vary. Raises `NotIdentifiable` (proxyscale.orchestrator.advice) when the runs
    cannot identify the law yet, with what to run.
    """
    from contextlib import ExitStack

    from proxyscale.orchestrator.advice import load_sweep, open_knob_sources, recommendation, target_flops_of
    from proxyscale.orchestrator.commands.common import open_ledger

    plain, _, _ = load_sweep(sweep_dir)
    with ExitStack() as stack:
        ledger = stack.enter_context(open_ledger(str(sweep_dir), metric=metric))
        sources = open_knob_sources(list(knobs_from), str(sweep_dir), stack)
        target = target_flops_of(plain, ledger, target_flops)
        advice = recommendation(plain, ledger, target_flops=target, bootstrap=bootstrap, seed=seed,
                                knob_sources=sources)
    return {"metric": metric} | advice


def compare(data: pd.DataFrame | str | Path | list[str | Path], *, by: str | None = None, n: str | None = None,
            d: str | None = None, loss: str | None = None, flops: str | None = None,
            where: dict[str, str] | None = None, eval_set: str | None = None, tokenizer: str | None = None,
            target_flops: float | None = None, target_n: float | None = None, target_d: float | None = None,
            metric: str = "loss", task: str | None = None, accuracy: bool = False, law: str = "chinchilla",
            share: str = "auto", decide_at: float = 0.9, bootstrap: int = 1000, seed: int = 0) -> Comparison:
    """Compare recipes by their fitted laws at a target: `proxyscale compare` as a function (docs/compare.md).

    Args:
        data: a list of sweep directories (one recipe each), one sweep directory with `by` a config key that varies
            across its runs (e.g. "data.path"), or a pandas DataFrame / CSV path with `by` its recipe column.
        by: the recipe column of a table, or the config key of one sweep directory.
        n: a table's column of parameter counts.
        d: a table's column of training tokens (with only one of n / d, flops gives the other: C = 6 N D).
        loss: a table's column of final losses (nats per token; bits per byte with metric="bpb").
        flops: a table's column of training FLOPs.
        where: a table: keep only the rows whose column equals the value ({"eval": "c4_val"}).
        eval_set: a table's column naming each run's evaluation set (checked: one per recipe; in nats, one for all).
        tokenizer: a table's column naming each run's tokenizer (checked as eval_set).
        target_flops: compare at this compute, each recipe at its compute-optimal N and D.
        target_n: compare at this N (with target_d; instead of target_flops).
        target_d: compare at this D (with target_n).
        metric: "loss" (nats per token; recipes must share tokenizer and evaluation set) or "bpb" (bits per byte).
        task: compare on this task metric (a column, or a sweep's train.evals name) through each recipe's task law;
            an error in [0, 1] unless accuracy=True.
        accuracy: the task metric is an accuracy (higher is better).
        law: "chinchilla" or "overtraining", one per recipe.
        share: "auto" (one E when the AICc says the data cannot tell the recipes' floors apart), "E" or "none".
        decide_at: the probability that makes a decision (below it: no clear winner).
        bootstrap: bootstrap members per recipe.
        seed: the bootstrap's seed.

    Returns:
        A `Comparison` (analysis/compare.py): `.groups`, `.pairs` (difference, `p_a_lower`, `crossover`), `.best`,
        `.p_best`, `.winner`, `.to_dict()` (= `compare --json`), `.lines()`; `plot_comparison(result, path)` draws it.
    """
    import pandas as pd

    from proxyscale.orchestrator.commands.compare import comparison

    where_pairs = list((where or {}).items())
    options = dict(by=by, metric=metric, task=task, accuracy=accuracy, law=law, share=share, target_flops=target_flops,
                   target_n=target_n, target_d=target_d, decide_at=decide_at, bootstrap=bootstrap, seed=seed)
    table_options = dict(n=n, d=d, loss=loss, flops=flops, where=where_pairs, eval_set=eval_set, tokenizer=tokenizer)
    if isinstance(data, pd.DataFrame):
        result, _ = comparison(table=data, **table_options, **options)
    elif _is_sweep_dir(data) or (isinstance(data, (list, tuple)) and data):
        result, _ = comparison(dirs=[str(x) for x in ([data] if _is_sweep_dir(data) else data)], **options)
    else:
        result, _ = comparison(csv=str(data), **table_options, **options)
    return result


@dataclass(frozen=True)
class Sweep:
    """A sweep directory read as pandas tables (like Ray Tune's `ResultGrid.get_dataframe()`): each call reads
    the ledger afresh, so a notebook sees runs that finished since."""

    path: Path

    def _read(self, frame):
        from proxyscale.orchestrator.commands.common import open_ledger

        with open_ledger(str(self.path)) as ledger:
            return frame(ledger)

    def runs(self) -> pd.DataFrame:
        """One row per run: spec, status, N, D, FLOPs, final and best eval loss (and bpb), wall time, error."""
        from proxyscale.orchestrator.frames import runs_frame

        return self._read(runs_frame)

    def steps(self) -> pd.DataFrame:
        """One row per logged step of every run: tokens, lr, train and eval loss, probe.<name> columns."""
        from proxyscale.orchestrator.frames import steps_frame

        return self._read(steps_frame)

    def evals(self) -> pd.DataFrame:
        """One row per task-metric evaluation (train.evals): run_id, step, name, value."""
        from proxyscale.orchestrator.frames import evals_frame

        return self._read(evals_frame)


def open_sweep(sweep_dir: str | Path) -> Sweep:
    """A sweep directory made by `proxyscale launch`; raises SpecError when it holds no ledger."""
    from proxyscale.models.spec import SpecError

    if not _is_sweep_dir(sweep_dir):
        raise SpecError(f"open_sweep: {sweep_dir} holds no ledger.sqlite; give a sweep directory made by "
                        "`proxyscale launch`")
    return Sweep(Path(sweep_dir))
