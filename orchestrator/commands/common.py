"""Helpers the commands share: opening a sweep's ledger, reading its finished runs, strict JSON output."""

from __future__ import annotations

import json
import math
from pathlib import Path

from models.spec import SpecError


def open_ledger(directory: str):
    from orchestrator.ledger import Ledger

    path = Path(directory) / "ledger.sqlite"
    if not path.exists():
        raise SpecError(f"DIR: {directory} holds no ledger.sqlite; give a sweep directory made by `proxyscale launch`")
    return Ledger(path)


def finished_rows(ledger) -> list[dict]:
    return [r for r in ledger.runs(["finished"]) if r["final_eval_loss"] is not None]


def finished_table(ledger) -> tuple:
    import numpy as np

    rows = finished_rows(ledger)
    n = np.array([r["n_params"] for r in rows], float)
    d = np.array([r["tokens"] for r in rows], float)
    loss = np.array([r["final_eval_loss"] for r in rows], float)
    return n, d, loss


def strict_json(value):
    """Standard JSON has no NaN or Infinity: an undefined or unbounded interval end becomes null."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "dtype"):  # a numpy scalar: its Python value
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(payload: dict) -> None:
    print(json.dumps(strict_json(payload), indent=2, allow_nan=False))


def print_summary(runs: list[dict]) -> None:
    print(f"\n{'run_id':<17} {'status':<9} {'width':>5} {'N':>10} {'D':>11} {'final loss':>10} {'best loss':>10} {'s':>6}")
    for r in runs:
        final = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
        best = f"{r['best_eval_loss']:.4f}" if r["best_eval_loss"] is not None else "-"
        wall = f"{r['wall_seconds']:.0f}" if r["wall_seconds"] is not None else "-"
        print(f"{r['run_id']:<17} {r['status']:<9} {r['width']:>5} {r['n_params']:>10,} {r['tokens']:>11,} "
              f"{final:>10} {best:>10} {wall:>6}")
    statuses = {}
    for r in runs:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
