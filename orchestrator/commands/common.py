"""Helpers the commands share: opening a sweep's ledger, reading its finished runs, strict JSON output."""

from __future__ import annotations

import json
import math
from pathlib import Path

from proxyscale.models.spec import SpecError


def open_ledger(directory: str, metric: str | None = None):
    """The sweep's ledger; metric='bpb' reads it in bits per byte (MetricView), None or 'loss' as recorded."""
    from proxyscale.orchestrator.ledger import Ledger

    path = Path(directory) / "ledger.sqlite"
    if not path.exists():
        raise SpecError(f"DIR: {directory} holds no ledger.sqlite; give a sweep directory made by `proxyscale launch`")
    if metric not in (None, *METRICS):
        raise SpecError(f"--metric: {metric!r} is not allowed; choose one of {list(METRICS)}")
    ledger = Ledger(path)
    return MetricView(ledger, directory) if metric == "bpb" else ledger


METRICS = ("loss", "bpb")
"""What the laws are fitted to: loss (nats per token, as recorded) or bpb (bits per byte of the eval split)."""

METRIC_HELP = ("loss: eval loss in nats per token (default); bpb: bits per byte of the eval split, loss / ln 2 / bytes "
               "per token, which compares across tokenizers (docs/corpora.md)")


def metric_label(metric: str | None) -> str:
    return "bits per byte (bpb)" if metric == "bpb" else "loss (nats per token)"


class MetricView:
    """A ledger read in bits per byte: every loss column of runs() and steps() holds bpb instead, so the fits,
    the planner's tables and the recommendation work unchanged. Everything else is the ledger's."""

    def __init__(self, ledger, directory: str) -> None:
        self._ledger = ledger
        self._directory = directory
        self._bytes_per_token: dict[str, float | None] = {}

    def __getattr__(self, name: str):
        return getattr(self._ledger, name)

    def __enter__(self) -> MetricView:
        return self

    def __exit__(self, *exc) -> bool:
        self._ledger.close()
        return False

    def runs(self, statuses=None) -> list[dict]:
        from proxyscale.models.results import bits_per_byte

        rows = self._ledger.runs(statuses)
        missing = [r["run_id"] for r in rows if r["status"] == "finished" and r["final_eval_loss"] is not None
                   and r.get("final_eval_bpb") is None]
        if missing:
            raise SpecError(f"--metric bpb: {len(missing)} finished run(s) of {self._directory} have no bits per byte "
                            f"(e.g. {missing[0]}: recorded before bpb existed, by the simulated trainer, or on a memmap "
                            "file whose bytes per token are unknown); use --metric loss")
        out = []
        for r in rows:
            bpt = r.get("bytes_per_token")
            self._bytes_per_token[r["run_id"]] = bpt
            out.append(r | {"final_eval_loss": r.get("final_eval_bpb"), "best_eval_loss": r.get("best_eval_bpb"),
                            "initial_eval_loss": bits_per_byte(r["initial_eval_loss"], bpt)})
        return out

    def steps(self, run_id: str | None = None) -> list[dict]:
        from proxyscale.models.results import bits_per_byte

        if not self._bytes_per_token:
            self.runs()
        return [r | {"eval_loss": r.get("eval_bpb"),
                     "train_loss": bits_per_byte(r["train_loss"], self._bytes_per_token.get(r["run_id"]))}
                for r in self._ledger.steps(run_id)]


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
