"""A sweep as the planner on final losses (analysis.planner) sees it: the allowed runs of a plan as
`Candidate`s, and the ledger's runs as `Observation`s with the planner's statuses. Shared by the closed loop
(`active.py`), `plan` and `recommend` (`advice.py`), the check run (`check.py`) and the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxyscale.analysis.planner import Candidate, Observation

if TYPE_CHECKING:
    from proxyscale.orchestrator.ledger import Ledger

LEDGER_TO_PLANNER_STATUS = {"finished": "finished", "diverged": "diverged", "failed": "failed",
                            "running": "pending", "pending": "pending", "cancelled": "pending", "skipped": "failed"}
SEGMENT = "segment"
"""Planner status of a finished constant-LR run in a sweep that also has annealed runs: a stretch of a
stable run, not an (N, D) cell of L(N, D) (its loss is not annealed); the curve law uses its curve."""


def candidates_from_rows(rows: list[dict[str, Any]]) -> list[Candidate]:
    """One candidate per row of a plan (`orchestrator.sweep.plan_rows`): the runs the planner may choose."""
    return [Candidate(r["run_id"], r["width"], float(r["n_params"]), float(r["tokens"]), float(r["flops"]),
                      float(r["lr"])) for r in rows]


def observations_from_ledger(ledger: Ledger) -> list[Observation]:
    """One observation per run; with annealed runs in the ledger, constant-LR runs are `segment`s (not cells)."""
    runs = ledger.runs()
    annealed = any(r["schedule"] != "constant" for r in runs if r["status"] == "finished")

    def status(r: dict) -> str:
        mapped = LEDGER_TO_PLANNER_STATUS[r["status"]]
        return SEGMENT if annealed and mapped == "finished" and r["schedule"] == "constant" else mapped

    return [Observation(r["run_id"], r["width"], float(r["n_params"]), float(r["tokens"]), float(r["flops"]),
                        float(r["lr"]), status(r), r["final_eval_loss"]) for r in runs]


def committed_flops(observations: list[Observation]) -> float:
    """Compute spent or under way (failed runs count: they used their slot)."""
    return sum(o.flops for o in observations)


def finished_rows(ledger: Ledger) -> list[dict]:
    """The ledger rows of finished runs that have a final eval loss (the points of L(N, D))."""
    return [r for r in ledger.runs(["finished"]) if r["final_eval_loss"] is not None]


def finished_table(ledger: Ledger) -> tuple:
    """(N, D, final eval loss) arrays of `finished_rows`."""
    import numpy as np

    rows = finished_rows(ledger)
    n = np.array([r["n_params"] for r in rows], float)
    d = np.array([r["tokens"] for r in rows], float)
    loss = np.array([r["final_eval_loss"] for r in rows], float)
    return n, d, loss
