"""What a person sees while `proxyscale launch` runs, and what the sweep's W&B analysis run shows.

`LaunchMonitor` is run_sweep's `on_event`. It keeps the sweep's state (runs done / running / waiting /
failed / diverged / skipped, FLOPs spent), refits L(N, D) after each finished run (one fit, shared by
the terminal and W&B) and hands both to

- a view: one rich `Live` table on a terminal (`RichView`), or plain lines, one per event, for a pipe,
  a log file or `launch --plain` (`PlainView`, the format `launch` has always printed);
- the sweep's W&B analysis run (`tracking.LiveAnalysisRun`): N_opt(C*), L(C*) and their interval ends,
  the fitted parameters and the run counts against FLOPs spent, the planner's proposals with their
  reasons as a table, and the isoFLOP and frontier figures every `figure_every` refits and at the end.

The driver shares the CPUs with the runs, so the work here is small: a bootstrap-100 fit after each finished
run up to 40, then after every 5% more (`refit_due`: O(log runs) refits, so a sweep of 10,000 runs does not
spend its driver refitting), a table render at most twice a second, figures only every few refits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxyscale.analysis.fit import ChinchillaFit, Interval

FIGURE_EVERY = 5
"""Refresh the W&B figures on every 5th refit (and at the end): a figure costs ~0.5 s of driver CPU."""
SHOWN_PROPOSALS = 5
REFIT_GROWTH = 0.05
"""Refit L(N, D) once the finished runs have grown by this fraction since the last refit (at least one run): every
run up to 40, then every 5%. A refit per run cost O(runs) each, O(runs^2) in all: at 1,000 runs the driver spent
its time refitting and results waited to be written (bench_scale)."""


FULL_GRID_MAX_RUNS = 1000
"""Above this many finished runs, `refit` (launch's final fit) screens Epoch's grid on a subsample and draws an
online bootstrap (analysis.incremental): from scratch on every point it took ~3 minutes at 3,000 runs with 100
resamples on this 2-core machine (bench_fit.py --scale), and grows with runs x resamples."""


def refit_due(finished: int, last: int, growth: float = REFIT_GROWTH) -> bool:
    """Whether `finished` runs warrant a refit when the last one saw `last` (a geometric schedule: O(log runs) refits)."""
    from proxyscale.analysis.incremental import geometric_due

    return geometric_due(finished, last, growth)


@dataclass(frozen=True)
class Estimate:
    """One refit of L(N, D) on the finished runs, and what it says at the target compute."""

    runs: int
    bootstrap: int
    target_flops: float
    fit: ChinchillaFit
    problem: str | None = None
    """Why the fit gives no optimum yet (an exponent at its bound); n_opt, d_opt, loss are then None."""
    n_opt: Interval | None = None
    d_opt: Interval | None = None
    loss: Interval | None = None

    @property
    def params(self) -> dict[str, float]:
        return self.fit.params

    def line(self) -> str:
        if self.problem:
            return f"  fit on {self.runs} runs: not identifiable yet ({self.problem}); L(N, D) needs runs spread over both"
        p = self.params
        assert self.n_opt and self.d_opt and self.loss
        return (f"  fit on {self.runs} runs: L = {p['E']:.3f} + {p['A']:.3g}/N^{p['alpha']:.3f} + "
                f"{p['B']:.3g}/D^{p['beta']:.3f}; at C={self.target_flops:.2e}: N_opt {self.n_opt.value:.3g} "
                f"[{self.n_opt.low:.3g}, {self.n_opt.high:.3g}], D_opt {self.d_opt.value:.3g}, loss "
                f"{self.loss.value:.4f} [{self.loss.low:.4f}, {self.loss.high:.4f}] ({self.bootstrap} bootstraps)")


def refit(ledger, target_flops: float, bootstrap: int) -> Estimate | None:
    """Refit L(N, D) on the ledger's finished runs (None: too few runs spread over N and D to try)."""
    from proxyscale.analysis.fit import fit_chinchilla
    from proxyscale.orchestrator.observations import finished_rows, finished_table

    if _mixes_recipes(finished_rows(ledger)):
        return None  # one L(N, D) across recipes means nothing; the deciding planner reports per recipe
    n, d, loss = finished_table(ledger)
    if len(loss) < 6 or len(set(n)) < 3 or len(set(d)) < 3:
        return None  # five parameters need more than a handful of runs spread over N and D
    if len(loss) > FULL_GRID_MAX_RUNS:  # the grid on every point would take minutes (bench_fit.py --scale)
        return Refitter(ledger, target_flops, bootstrap)()
    return estimate_of(fit_chinchilla(n, d, loss, bootstrap=bootstrap, seed=0), target_flops, bootstrap)


class Refitter:
    """launch's live refit: L(N, D) on the finished runs, warm-started from the previous refit with its bootstrap
    members updated (analysis.incremental), so each refit costs about the same at 10 runs or 10,000."""

    def __init__(self, ledger, target_flops: float, bootstrap: int) -> None:
        self.ledger, self.target_flops, self.bootstrap = ledger, target_flops, bootstrap
        self.last = None  # analysis.incremental.IncrementalFit

    def __call__(self) -> Estimate | None:
        import numpy as np

        from proxyscale.analysis.incremental import refit_chinchilla
        from proxyscale.orchestrator.observations import finished_rows

        rows = finished_rows(self.ledger)
        if _mixes_recipes(rows):
            return None
        n, d = (np.array([r[k] for r in rows], float) for k in ("n_params", "tokens"))
        if len(rows) < 6 or len(set(n)) < 3 or len(set(d)) < 3:
            return None
        loss = np.array([r["final_eval_loss"] for r in rows], float)
        self.last = refit_chinchilla([r["run_id"] for r in rows], n, d, loss, previous=self.last, bootstrap=self.bootstrap)
        return estimate_of(self.last.fit, self.target_flops, self.bootstrap)


def _mixes_recipes(rows: list[dict]) -> bool:
    """Whether the runs belong to two or more recipes of a `sweep.recipes` sweep."""
    from proxyscale.orchestrator.recipes import recipe_names

    return len(recipe_names(rows)) > 1


def estimate_of(fit: ChinchillaFit, target_flops: float, bootstrap: int) -> Estimate:
    """The Estimate of a fit at the target (or why it gives no optimum yet)."""
    at_bound = [name for name in ("alpha", "beta") if not 1e-3 < fit.params[name] < 3 - 1e-3]
    if at_bound:
        return Estimate(runs=fit.n_points, bootstrap=bootstrap, target_flops=target_flops, fit=fit,
                        problem=f"{' and '.join(at_bound)} at the bound of [0, 3]: the runs do not yet separate "
                                "the N and D terms")
    at = fit.compute_optimal(target_flops)
    return Estimate(runs=fit.n_points, bootstrap=bootstrap, target_flops=target_flops, fit=fit, n_opt=at["n_opt"],
                    d_opt=at["d_opt"], loss=at["loss"])


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class SweepState:
    """The sweep as run_sweep's events tell it. `apply` returns the event's line (None: no line); the plain
    view appends `line()`, the counts so far, to a run's end."""

    ENDED = ("finished", "diverged", "failed", "skipped", "cancelled")

    def __init__(self, rows: list[dict], already_done: set[str], *, todo: list[str] | None = None,
                 todo_flops: float | None = None, budget_flops: float | None = None, clock=time.perf_counter) -> None:
        self.flops = {r["run_id"]: r["flops"] for r in rows}
        # The grid runs every row; the active planner at most its budget.
        grid_todo = sum(f for run_id, f in self.flops.items() if run_id not in already_done)
        self.todo = grid_todo if todo_flops is None else min(grid_todo, todo_flops)
        self.budget_flops = budget_flops
        self.spent_before = sum(self.flops.get(run_id, 0.0) for run_id in already_done)
        self.already_done = len(already_done)
        self.spent = 0.0  # compute this launch's ended runs used (failed ones too: they held their slot)
        self.settled = 0.0  # FLOPs no longer ahead: spent, plus runs skipped without running
        self.counts = dict.fromkeys(self.ENDED, 0)
        self.running: set[str] = set()
        self.blocked: set[str] = set()  # forks queued behind their running parent
        self.seen: set[str] = set()  # runs with an event so far
        self.queued: set[str] = set(todo if todo is not None else (r for r in self.flops if r not in already_done))
        self.best: float | None = None
        self.estimate: Estimate | None = None
        self.refits = 0
        self.proposals: list = []  # analysis.planner.Proposal, oldest first
        self.planner_note: str | None = None  # why the closed loop stopped proposing, once it has
        self.clock = clock
        self.started = clock()

    @property
    def waiting(self) -> int:
        return len(self.queued) + len(self.blocked)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def eta(self) -> float:
        if self.spent and not self.running and not self.waiting:
            return 0.0  # nothing left under way
        return self.elapsed * (self.todo - self.settled) / self.spent if self.spent else float("nan")

    @property
    def flops_spent(self) -> float:
        """All compute the sweep's ended runs used, earlier launches included: the W&B x-axis."""
        return self.spent_before + self.spent

    def line(self) -> str:
        best = f"{self.best:.4f}" if self.best is not None else "-"
        return (f"[{self.counts['finished']} done, {len(self.running)} running, {self.counts['failed']} failed, "
                f"{self.counts['diverged']} diverged | {self.elapsed:5.0f}s elapsed, ETA {self.eta:5.0f}s | "
                f"best loss {best}]")

    def apply(self, kind: str, run_id: str, payload: Any) -> str | None:
        if kind != "record":
            self.seen.add(run_id)
        if kind == "submitted":
            self.queued.discard(run_id)
            self.running.add(run_id)
            return None
        if kind == "waiting":  # a fork queued behind its running parent: it holds no slot yet
            self.queued.discard(run_id)
            self.blocked.add(run_id)
            return None
        if kind == "started":
            self.blocked.discard(run_id)
            self.running.add(run_id)
            return f"{run_id} started on node {payload['node'][:12]} pid {payload['pid']}"
        if kind not in self.ENDED:  # "record": a step, for the ledger
            return None
        self.running.discard(run_id)
        self.blocked.discard(run_id)
        self.queued.discard(run_id)
        if kind != "cancelled":  # a cancelled run resumes later; its compute still lies ahead
            self.settled += self.flops.get(run_id, 0.0)
        if kind in ("finished", "diverged", "failed"):
            self.spent += self.flops.get(run_id, 0.0)
        self.counts[kind] += 1
        if kind == "cancelled":
            return None
        detail = ""
        if kind in ("finished", "diverged"):
            result = payload["result"]
            loss = result["final_eval_loss"]
            if kind == "finished" and (self.best is None or loss < self.best):
                self.best = loss
            detail = f"eval loss {loss:.4f} in {result['wall_seconds']:.0f}s"
            if result.get("reason"):
                detail += f" ({result['reason']})"
        elif kind == "failed":
            detail = payload["error"].splitlines()[0]
        elif kind == "skipped":
            detail = payload["reason"]
        return f"{run_id} {kind}: {detail}"

    def metrics(self) -> dict[str, float]:
        """One point of the W&B analysis run's time series (non-finite values are dropped there)."""
        metrics: dict[str, float] = {"flops_spent": self.flops_spent, "runs/finished": self.counts["finished"],
                                     "runs/running": len(self.running), "runs/waiting": self.waiting,
                                     "runs/failed": self.counts["failed"], "runs/diverged": self.counts["diverged"],
                                     "runs/skipped": self.counts["skipped"], "runs/refits": self.refits}
        if self.best is not None:
            metrics["runs/best_loss"] = self.best
        estimate = self.estimate
        if estimate is not None:
            metrics |= {f"fit/{name}": value for name, value in estimate.params.items()}
            metrics["fit/runs"] = estimate.runs
            for name, interval in (("n_opt", estimate.n_opt), ("d_opt", estimate.d_opt), ("loss", estimate.loss)):
                if interval is not None:
                    metrics |= {f"target/{name}": interval.value, f"target/{name}_low": interval.low,
                                f"target/{name}_high": interval.high}
        return metrics


def proposal_rows(proposals: list) -> list[dict[str, Any]]:
    """The planner's proposals as table rows (W&B), oldest first."""
    return [{"order": i + 1, "run_id": p.candidate.key, "width": p.candidate.width, "N": p.candidate.n_params,
             "D": p.candidate.tokens, "lr": p.candidate.lr, "FLOPs": p.candidate.flops, "score": p.score,
             "reason": p.reason} for i, p in enumerate(proposals)]


def _interval_text(interval: Interval | None, fmt: str) -> str:
    if interval is None:
        return "-"
    return f"{format(interval.value, fmt)} [{format(interval.low, fmt)}, {format(interval.high, fmt)}]"


def render_table(state: SweepState, title: str = "proxyscale launch"):
    """The live view: one rich Table of the sweep's state (the same object a test renders to a string)."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", expand=False, pad_edge=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")
    c = state.counts
    table.add_row("runs", f"[green]{c['finished']} done[/] · {len(state.running)} running · {state.waiting} waiting · "
                          f"[red]{c['failed']} failed[/] · [yellow]{c['diverged']} diverged[/] · {c['skipped']} skipped"
                  + (f" · {c['cancelled']} cancelled" if c["cancelled"] else "")
                  + (f" ({state.already_done} done before)" if state.already_done else ""))
    whole = state.spent_before + state.todo  # the grid's total, or the planner's budget (at most the grid)
    share = f" ({state.flops_spent / whole:.0%})" if whole else ""
    of = f"the {whole:.3e} budget" if state.budget_flops is not None else f"{whole:.3e} planned"
    best = f" · best loss {state.best:.4f}" if state.best is not None else ""
    table.add_row("FLOPs", f"{state.flops_spent:.3e} of {of}{share} · {_duration(state.elapsed)} elapsed"
                           f" · ETA {_duration(state.eta)}{best}")
    estimate = state.estimate
    if estimate is None:
        table.add_row("estimate", "[dim]waiting for 6+ finished runs over 3+ sizes and 3+ token counts[/]")
    elif estimate.problem:
        table.add_row("estimate", f"[dim]fit on {estimate.runs} runs: not identifiable yet ({estimate.problem})[/]")
    else:
        p = estimate.params
        table.add_row(f"at C*={estimate.target_flops:.2g}",
                      f"N_opt [bold]{_interval_text(estimate.n_opt, '.3g')}[/] · "
                      f"L(C*) [bold]{_interval_text(estimate.loss, '.4f')}[/] · D_opt {estimate.d_opt.value:.3g}")
        table.add_row("fit", f"L = {p['E']:.3f} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f}"
                             f" on {estimate.runs} runs ({estimate.bootstrap} bootstraps, 95% intervals)")
    if state.proposals:
        shown = state.proposals[-SHOWN_PROPOSALS:]
        proposals = Table(show_header=True, header_style="dim", box=None, pad_edge=False)
        for column in ("run_id", "width", "N", "D", "lr", "FLOPs", "reason"):
            proposals.add_column(column, no_wrap=column != "reason",
                                 justify="left" if column in ("run_id", "reason") else "right")
        for p in shown:
            k = p.candidate
            proposals.add_row(k.key, str(k.width), f"{k.n_params:.3g}", f"{k.tokens:.3g}", f"{k.lr:.2g}",
                              f"{k.flops:.2e}", p.reason)
        table.add_row(f"proposals\n(last {len(shown)} of {len(state.proposals)})", proposals)
    if state.planner_note:
        table.add_row("planner", state.planner_note)
    return table


class PlainView:
    """Plain lines, one per event (stdout is not a terminal, or `launch --plain`): what launch always printed."""

    def __init__(self, state: SweepState, say: Callable[[str], None] | None = None) -> None:
        self.state = state
        self.say = say or (lambda text: print(text, flush=True))

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def event(self, line: str | None, kind: str) -> None:
        if line is not None:
            self.say(line if kind == "started" else f"{line}  {self.state.line()}")

    def estimate(self, estimate: Estimate | None) -> None:
        if estimate is not None:
            self.say(estimate.line())

    def refresh(self) -> None:
        return None


class RichView:
    """One rich `Live` table, redrawn in place; ended runs scroll above it as lines (a terminal's log)."""

    def __init__(self, state: SweepState, *, title: str, console=None, refresh_per_second: float = 2.0) -> None:
        from rich.console import Console
        from rich.live import Live

        self.state, self.title = state, title
        self.console = console or Console()
        self.live = Live(console=self.console, get_renderable=lambda: render_table(self.state, self.title),
                         refresh_per_second=refresh_per_second, transient=False, redirect_stdout=True,
                         redirect_stderr=True)

    def __enter__(self) -> RichView:
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.refresh()
        self.live.stop()

    def event(self, line: str | None, kind: str) -> None:
        if line is not None and kind != "started":  # starts show in the table's running count
            self.console.print(line, markup=False, highlight=False)
        self.refresh()

    def estimate(self, estimate: Estimate | None) -> None:
        self.refresh()  # the table shows it

    def refresh(self) -> None:
        self.live.refresh()


def make_view(state: SweepState, *, plain: bool, title: str) -> PlainView | RichView:
    """A rich Live table on a terminal, plain lines otherwise (or when asked: `launch --plain`)."""
    import os
    import sys

    if plain or not sys.stdout.isatty() or os.environ.get("TERM") == "dumb":
        return PlainView(state)
    try:
        return RichView(state, title=title)
    except ImportError:  # rich missing from an old environment: the lines still work
        return PlainView(state)


class LaunchMonitor:
    """run_sweep's `on_event`: updates the state, the view, and after each refit the W&B analysis run.

    refit: called after each finished run, returns the new estimate (launch's bootstrap-100 refit);
    planner: the closed loop (`ActiveLoop`: its `proposals` with reasons and why it `stopped`), None for
    a grid; analysis: a LiveAnalysisRun or None; ledger: for the figures' points; figures_dir: where the
    figures' PNGs go.
    """

    def __init__(self, state: SweepState, view, *, refit: Callable[[], Estimate | None], planner=None,
                 analysis=None, ledger=None, figures_dir: Path | None = None, figure_every: int = FIGURE_EVERY) -> None:
        self.state, self.view, self.refit_fn, self.planner = state, view, refit, planner
        self.analysis, self.ledger, self.figures_dir, self.figure_every = analysis, ledger, figures_dir, figure_every
        self._logged_proposals = 0
        self._finished = False
        self._refit_at = 0  # finished runs at the last refit

    def _sync_planner(self) -> None:
        if self.planner is None:
            return
        state, proposals = self.state, list(self.planner.proposals)
        for p in proposals[len(state.proposals):]:  # new proposals wait for a slot until submitted
            if p.candidate.key not in state.seen:
                state.queued.add(p.candidate.key)
        state.proposals, state.planner_note = proposals, self.planner.stopped

    def __enter__(self) -> LaunchMonitor:
        self._sync_planner()
        self.view.__enter__()
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self._sync_planner()  # the loop's last word (why it stopped) for the table's final frame
        self.view.__exit__(exc_type, *rest)
        if exc_type is not None:
            self.finish(None)

    def __call__(self, kind: str, run_id: str, payload: Any) -> None:
        line = self.state.apply(kind, run_id, payload)
        self._sync_planner()
        self.view.event(line, kind)
        if kind == "finished" and refit_due(self.state.counts["finished"], self._refit_at):
            self._refit_at = self.state.counts["finished"]
            self.update(self.refit_fn())

    def update(self, estimate: Estimate | None) -> None:
        """After a refit: show the estimate and log a point to the analysis run."""
        if estimate is not None:
            self.state.estimate = estimate
            self.state.refits += 1
        self.view.estimate(estimate)
        self._log(figures=estimate is not None and self.state.refits % self.figure_every == 0)

    def _log(self, *, figures: bool) -> None:
        """One point of the analysis run: the state's metrics, the proposals table when it grew, and the
        figures when asked."""
        if self.analysis is None or not self.analysis.active:
            return
        state = self.state
        tables = {}
        if len(state.proposals) > self._logged_proposals:
            tables["proposals"] = proposal_rows(state.proposals)
            self._logged_proposals = len(state.proposals)
        self.analysis.log(state.metrics(), tables=tables, figures=self.figures() if figures else {})

    def figures(self) -> dict[str, Path]:
        """The frontier with its band (the current fit) and, once 3+ budgets have 3+ sizes, the isoFLOP curves."""
        if self.ledger is None or self.figures_dir is None or self.state.estimate is None or self.state.estimate.problem:
            return {}
        import warnings

        import numpy as np

        from proxyscale.analysis import plots
        from proxyscale.analysis.isoflop import budget_levels, fit_isoflop
        from proxyscale.orchestrator.observations import finished_rows

        rows = finished_rows(self.ledger)
        out: dict[str, Path] = {}
        try:
            estimate = self.state.estimate
            with np.errstate(all="ignore"):
                out["frontier"] = plots.plot_frontier(
                    estimate.fit, [r["n_params"] for r in rows], [r["tokens"] for r in rows],
                    [r["final_eval_loss"] for r in rows], estimate.target_flops, self.figures_dir / "frontier.png")
            budgets = budget_levels([r["flops"] for r in rows])
            sizes: dict[float, set] = {}
            for row, budget in zip(rows, budgets, strict=True):
                sizes.setdefault(float(budget), set()).add(row["n_params"])
            usable = {b for b, n in sizes.items() if len(n) >= 3}
            if len(usable) >= 3:
                members = [(float(b), r) for r, b in zip(rows, budgets, strict=True) if float(b) in usable]
                flops = np.array([b for b, _ in members])
                n = np.array([r["n_params"] for _, r in members], float)
                loss = np.array([r["final_eval_loss"] for _, r in members], float)
                isoflop = fit_isoflop(flops, n, loss, bootstrap=0)
                out["isoflop"] = plots.plot_isoflop(flops, n, loss, isoflop, self.figures_dir / "isoflop.png")
        except Exception as error:  # noqa: BLE001 - a figure is a view: a degenerate fit or a plotting error skips it
            warnings.warn(f"live figure skipped: {error}", stacklevel=2)
        return out

    def finish(self, final: Estimate | None) -> None:
        """Log the final estimate (with figures), the summary, and close the analysis run (once)."""
        if self._finished:
            return
        self._finished = True
        if self.analysis is None or not self.analysis.active:
            return
        if final is None and self.analysis.run_dir is None:
            return  # interrupted before anything was logged: no run to close
        if final is not None:
            self.state.estimate = final
            self.state.refits += 1
        self._sync_planner()
        self._log(figures=final is not None)  # interrupted: close quickly, no figures
        summary: dict[str, Any] = {"flops_spent": self.state.flops_spent, "runs_finished": self.state.counts["finished"]}
        estimate = self.state.estimate
        if estimate is not None and estimate.n_opt is not None:
            summary |= {"target_flops": estimate.target_flops, "n_opt": estimate.n_opt.value,
                        "loss_at_target": estimate.loss.value, "fit_bootstrap": estimate.bootstrap}
        self.analysis.finish(summary)
