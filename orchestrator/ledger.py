"""The ledger: the system of record of a sweep directory, in SQLite.

One row per run (keyed by the hash of its resolved spec) and one row per logged step. Only the
driver writes, every write is a transaction, and WAL mode keeps readers (`proxyscale status`)
from blocking it. A crash loses at most step rows not yet written, never a finished result.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from proxyscale.models.results import bits_per_byte

STATUSES = ("pending", "running", "finished", "diverged", "failed", "cancelled", "skipped")
DONE_STATUSES = ("finished", "diverged")
"""`skipped`: a fork whose parent failed or diverged; its reason says which. Final, like failed."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL,
    width INTEGER, depth INTEGER, lr REAL, batch_size INTEGER, schedule TEXT, parametrization TEXT, seed INTEGER,
    n_params INTEGER, n_params_nonembedding INTEGER, tokens INTEGER, flops REAL,
    initial_eval_loss REAL, final_eval_loss REAL, best_eval_loss REAL,
    wall_seconds REAL, train_seconds REAL,
    reason TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    data_hash TEXT, provenance_json TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL,
    parent_id TEXT, parent_step INTEGER
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    lr REAL,
    train_loss REAL,
    eval_loss REAL,
    probes_json TEXT,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, name)
);
"""
"""`evals`: the named task metrics of train.evals, one row per (run, eval step, name). A ledger written before
them gets the empty table when opened (CREATE TABLE IF NOT EXISTS); older proxyscales ignore it."""

RUN_COLUMNS = ("run_id", "parent_id", "parent_step", "status",
               "n_params", "n_params_nonembedding", "tokens", "flops", "initial_eval_loss",
               "final_eval_loss", "best_eval_loss", "lr", "batch_size", "width", "depth", "schedule",
               "parametrization", "seed", "wall_seconds", "train_seconds", "reason", "error", "attempts", "data_hash",
               "final_eval_bpb", "best_eval_bpb", "bytes_per_token", "tokens_per_second", "mfu", "device_name")


BPB_RUN_COLUMNS = ("final_eval_bpb", "best_eval_bpb", "bytes_per_token")
"""Bits per byte (models.results.bits_per_byte) of the final and best eval, and the eval split's bytes per token;
added to runs (and steps.eval_bpb) by ALTER TABLE, so older ledgers open and older proxyscales ignore them."""

THROUGHPUT_RUN_COLUMNS = (("tokens_per_second", "REAL"), ("mfu", "REAL"), ("device_name", "TEXT"))
"""Training tokens/s, MFU (None without a known peak) and the GPU's name (or 'cpu') of the process that finished
the run (models/throughput.py, docs/gpu.md); added by ALTER TABLE, so older ledgers open with NULL there."""

SCHEMA_VERSION = 1
"""The `PRAGMA user_version` stamped on the ledgers this proxyscale writes. Bump it when SCHEMA changes in a
way an older proxyscale cannot read; older ledgers are brought up to it by the migrations in Ledger()."""


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        version = self._schema_version()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "started_at" not in columns:  # a ledger written before runs recorded their start
            self._db.execute("ALTER TABLE runs ADD COLUMN started_at REAL")
        if "parent_id" not in columns:  # a ledger written before forks
            self._db.execute("ALTER TABLE runs ADD COLUMN parent_id TEXT")
            self._db.execute("ALTER TABLE runs ADD COLUMN parent_step INTEGER")
        for column in BPB_RUN_COLUMNS:  # a ledger written before bits per byte: NULL for its runs
            if column not in columns:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} REAL")
        for column, kind in THROUGHPUT_RUN_COLUMNS:  # a ledger written before the CUDA path: NULL for its runs
            if column not in columns:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        if "eval_bpb" not in {row[1] for row in self._db.execute("PRAGMA table_info(steps)")}:
            self._db.execute("ALTER TABLE steps ADD COLUMN eval_bpb REAL")
        # The forks of a checkpoint are looked up as each fork ends: an index, not a scan of every run.
        self._db.execute("CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_id, parent_step)")
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _schema_version(self) -> int:
        """The file's schema version, read before anything writes: a newer or foreign file is refused untouched."""
        from proxyscale.models.spec import SpecError

        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise SpecError(f"{self.path}: is not a proxyscale ledger (SQLite: {error}); give a sweep directory made "
                            "by `proxyscale launch`, or move this file away to start a new ledger there") from None
        if version > SCHEMA_VERSION:
            self._db.close()
            raise SpecError(f"{self.path}: written by a newer proxyscale (schema {version}, this one reads up to "
                            f"{SCHEMA_VERSION}): upgrade proxyscale to use this sweep directory")
        return version

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Transaction(self._db)

    def register(self, sweep: str, specs: Iterable[Any], plan: list[dict[str, Any]]) -> None:
        """Insert runs not seen before as pending; runs already in the ledger keep their state."""
        now = time.time()
        with self._transaction():
            for spec, row in zip(specs, plan, strict=True):
                self._db.execute(
                    """INSERT OR IGNORE INTO runs (run_id, sweep, spec_json, status, width, depth, lr, batch_size,
                       schedule, parametrization, seed, n_params, n_params_nonembedding, tokens, flops,
                       created_at, updated_at, parent_id, parent_step)
                       VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (row["run_id"], sweep, json.dumps(spec.to_dict(), sort_keys=True), row["width"], row["depth"],
                     row["lr"], row["batch_tokens"], row["schedule"], row["parametrization"], row["seed"],
                     row["n_params"], row["n_params_nonembedding"], row["tokens"], row["flops"], now, now,
                     row.get("parent_id"), row.get("parent_step")),
                )

    def mark_running(self, run_id: str) -> None:
        with self._transaction():
            now = time.time()
            self._db.execute("UPDATE runs SET status='running', attempts=attempts+1, started_at=?, updated_at=? "
                             "WHERE run_id=?", (now, now, run_id))

    def set_status(self, run_id: str, status: str, error: str | None = None, reason: str | None = None) -> None:
        assert status in STATUSES, status
        with self._transaction():
            self._db.execute("UPDATE runs SET status=?, error=COALESCE(?, error), reason=COALESCE(?, reason), "
                             "updated_at=? WHERE run_id=?", (status, error, reason, time.time(), run_id))

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return dict(row) if row is not None else None

    def add_steps(self, run_id: str, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        with self._transaction():
            self._db.executemany(
                """INSERT OR REPLACE INTO steps (run_id, step, tokens, lr, train_loss, eval_loss, probes_json, eval_bpb)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                [(run_id, r["step"], r["tokens"], r["lr"], r["train_loss"], r["eval_loss"],
                  json.dumps(r.get("probes") or {}), _finite(r.get("eval_bpb"))) for r in records],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO evals (run_id, step, tokens, name, value) VALUES (?, ?, ?, ?, ?)",
                [(run_id, r["step"], r["tokens"], name, _finite(value))
                 for r in records for name, value in (r.get("evals") or {}).items()],
            )

    def finish(self, run_id: str, result: dict[str, Any], provenance: dict[str, Any]) -> None:
        """Record a run's result: status finished or diverged, losses, timings, provenance."""
        with self._transaction():
            self._db.execute(
                """UPDATE runs SET status=?, reason=?, error=NULL, tokens=?, flops=?, initial_eval_loss=?,
                   final_eval_loss=?, best_eval_loss=?, wall_seconds=?, train_seconds=?, data_hash=?,
                   provenance_json=?, updated_at=? WHERE run_id=?""",
                (result["status"], result["reason"], result["tokens"], result["flops"], result["initial_eval_loss"],
                 _finite(result["final_eval_loss"]), _finite(result["best_eval_loss"]), result["wall_seconds"],
                 result["train_seconds"], result["data_hash"], json.dumps(provenance, sort_keys=True), time.time(),
                 run_id),
            )
            bytes_per_token = result.get("val_bytes_per_token")
            self._db.execute(
                "UPDATE runs SET final_eval_bpb=?, best_eval_bpb=?, bytes_per_token=? WHERE run_id=?",
                (_finite(bits_per_byte(result["final_eval_loss"], bytes_per_token)),
                 _finite(bits_per_byte(result["best_eval_loss"], bytes_per_token)), bytes_per_token, run_id),
            )
            self._db.execute("UPDATE runs SET tokens_per_second=?, mfu=?, device_name=? WHERE run_id=?",
                             (result.get("tokens_per_second"), result.get("mfu"), result.get("device_name"), run_id))

    def runs(self, statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM runs"
        params: tuple = ()
        if statuses is not None:
            statuses = tuple(statuses)
            query += f" WHERE status IN ({','.join('?' * len(statuses))})"
            params = statuses
        return [dict(row) for row in self._db.execute(query + " ORDER BY created_at, run_id", params)]

    def forks_of(self, parent_id: str, step: int) -> list[dict[str, Any]]:
        """The runs forked from `parent_id` at `step` (their run_id and status)."""
        rows = self._db.execute("SELECT run_id, status FROM runs WHERE parent_id=? AND parent_step=?", (parent_id, step))
        return [dict(row) for row in rows]

    def steps(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query, params = "SELECT * FROM steps", ()
        if run_id is not None:
            query, params = query + " WHERE run_id=?", (run_id,)
        return [dict(row) for row in self._db.execute(query + " ORDER BY run_id, step", params)]


    def evals(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """The task metrics recorded (run_id, step, tokens, name, value), by run, step and name."""
        query, params = "SELECT * FROM evals", ()
        if run_id is not None:
            query, params = query + " WHERE run_id=?", (run_id,)
        return [dict(row) for row in self._db.execute(query + " ORDER BY run_id, step, name", params)]

    def final_evals(self) -> dict[str, dict[str, float]]:
        """run_id -> {name: value at the run's last evaluation that recorded it}."""
        rows = self._db.execute(
            """SELECT e.run_id, e.name, e.value FROM evals e JOIN
               (SELECT run_id, name, MAX(step) AS step FROM evals GROUP BY run_id, name) last
               ON e.run_id = last.run_id AND e.name = last.name AND e.step = last.step""")
        final: dict[str, dict[str, float]] = {}
        for run_id, name, value in rows:
            final.setdefault(run_id, {})[name] = value
        return final


def cell_flops(row: dict[str, Any]) -> float:
    """The whole compute of a run's (N, D) cell: a fork's `flops` are only its own tokens', so scale them
    to every token the model has seen (a ledger row or a plan row)."""
    flops, tokens = float(row["flops"] or 0.0), float(row["tokens"] or 0.0)
    batch = row.get("batch_size") or row.get("batch_tokens") or 0
    own = tokens - (row.get("parent_step") or 0) * batch
    return flops * tokens / own if own > 0 else flops


def _finite(value: float | None) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return value


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
