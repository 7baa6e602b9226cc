"""Bad input wherever a user types it: CSVs for `fit` and `fit-schedule`, overrides for `launch`, a sweep
directory's ledger. Every case is refused with exit status 2 and ONE line on stderr
("proxyscale: error: ...") that names the bad value and the fix; nothing starts and no ledger changes.
The CLI runs in-process (`main([...])`), so each case takes well under a second."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from proxyscale.orchestrator.cli import main
from proxyscale.orchestrator.ledger import SCHEMA_VERSION, Ledger

GOOD_FIT = "n,d,loss\n" + "".join(f"{n:g},{d:g},{3.0 - 0.1 * i - 0.05 * j:.3f}\n"
                                   for i, n in enumerate((1e6, 1e7, 1e8)) for j, d in enumerate((1e9, 1e10)))
FIT = ["--n", "n", "--d", "d", "--loss", "loss"]
GOOD_CURVE = "step,lr,loss\n100,1e-3,3.2\n200,1e-3,3.0\n300,5e-4,2.9\n400,0,2.85\n"


def refused(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one 'proxyscale: error:' line on stderr. Returns that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("proxyscale: error: "), captured.err
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "table.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- fit --csv -----------------------------------------------------------------------------------------

FIT_CASES = [
    # (what, csv text, extra argv, the words the message must hold)
    ("missing column", GOOD_FIT, ["--n", "params", "--d", "d", "--loss", "loss"],
     ["--n: column 'params' is not in", "its columns are ['n', 'd', 'loss']", "give --n one of those"]),
    ("text in a numeric column", GOOD_FIT.replace("1e+10,", "lots,", 1), FIT,
     ["column 'd' (--d) has the text 'lots' at line 3", "numbers only"]),
    ("zero", GOOD_FIT.replace("1e+06,1e+09", "0,1e+09"), FIT, ["column 'n' (--n) has 0 at line 2", "must be > 0"]),
    ("negative", GOOD_FIT.replace(",2.900", ",-2.900"), FIT,
     ["column 'loss' (--loss) has -2.9 at line 4", "must be > 0"]),
    ("NaN", GOOD_FIT.replace(",2.900", ",NaN"), FIT, ["column 'loss' (--loss) is empty or NaN at line 4",
                                                      "fill in the value or remove the row"]),
    ("empty cell", GOOD_FIT.replace(",2.900", ","), FIT, ["column 'loss' (--loss) is empty or NaN at line 4"]),
    ("infinite", GOOD_FIT.replace(",2.900", ",inf"), FIT, ["column 'loss' (--loss) has inf at line 4", "finite"]),
    ("duplicated rows", GOOD_FIT + GOOD_FIT.splitlines()[3] + "\n", FIT,
     ["lines 4 and 8 are the same row", "n=1e+07, d=1e+09, loss=2.9", "remove the duplicate"]),
    ("a single row", "n,d,loss\n1e6,1e9,3.1\n", FIT, ["has 1 data row", "needs at least 5", "add rows"]),
    ("not a CSV", "", FIT, ["not a readable CSV table", "comma-separated"]),
]


@pytest.mark.parametrize("what, text, argv, words", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_refuses_a_bad_csv(tmp_path, capsys, what, text, argv, words):
    line = refused(capsys, ["fit", "--csv", write(tmp_path, text), *argv, "--bootstrap", "10"])
    for word in words:
        assert word in line, line


def test_fit_names_a_csv_that_does_not_exist(tmp_path, capsys):
    line = refused(capsys, ["fit", "--csv", str(tmp_path / "nope.csv"), *FIT])
    assert "nope.csv: no such file" in line


# --- fit-schedule --------------------------------------------------------------------------------------

SCHEDULE_CASES = [
    ("missing column", GOOD_CURVE.replace("step,lr,loss", "step,learning_rate,loss"),
     ["column 'lr' is not in", "its columns are ['step', 'learning_rate', 'loss']", "rename yours"]),
    ("text in a numeric column", GOOD_CURVE.replace("2.9\n", "n/a?\n"),
     ["column 'loss' (fit-schedule) has the text 'n/a?' at line 4"]),
    ("negative lr", GOOD_CURVE.replace("5e-4", "-5e-4"), ["column 'lr' (fit-schedule) has -0.0005 at line 4",
                                                          "must be >= 0"]),
    ("zero step", GOOD_CURVE.replace("100,", "0,"), ["column 'step' (fit-schedule) has 0 at line 2", "must be > 0"]),
    ("NaN loss", GOOD_CURVE.replace("3.0\n", "nan\n"), ["column 'loss' (fit-schedule) is empty or NaN at line 3"]),
    ("duplicated step", GOOD_CURVE + "400,0,2.84\n", ["lines 5 and 6 are the same step (step=400)"]),
    ("steps out of order", "step,lr,loss\n100,1e-3,3.2\n300,1e-3,3.0\n200,5e-4,2.9\n",
     ["column 'step' goes down from 300 to 200 at line 4", "sort the rows by step"]),
    ("a single row", "step,lr,loss\n100,1e-3,3.2\n", ["has 1 data row", "a loss curve needs at least 2"]),
]


@pytest.mark.parametrize("what, text, words", SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_fit_schedule_refuses_a_bad_curve(tmp_path, capsys, what, text, words):
    good = write(tmp_path, GOOD_CURVE, "good.csv")
    # A bad curve is refused whether it is fitted or predicted.
    for argv in (["--fit", write(tmp_path, text)], ["--fit", good, "--predict", write(tmp_path, text)]):
        line = refused(capsys, ["fit-schedule", *argv])
        for word in words:
            assert word in line, line


def test_a_curve_whose_lr_decays_to_zero_is_read(tmp_path):
    from proxyscale.orchestrator.tables import Column, read_table

    table = read_table(write(tmp_path, GOOD_CURVE), [Column("fit-schedule", "step"),
                                                     Column("fit-schedule", "lr", positive=False),
                                                     Column("fit-schedule", "loss")],
                       min_rows=2, purpose="a loss curve", unique="step", increasing="step")
    assert table["lr"].tolist() == [1e-3, 1e-3, 5e-4, 0.0]


# --- launch overrides ----------------------------------------------------------------------------------

TINY_SWEEP = """# @package _global_
model: {depth: 1, n_heads: 2, seq_len: 32}
train: {batch_tokens: 1024, warmup_steps: 2, eval_interval_tokens: 4096, eval_batches: 2, log_interval: 4}
sweep:
  name: tiny
  axes: {model.width: [16, 32]}
  budget: {tokens: [8192]}
"""


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch):
    """A sweep `tiny` on the search path and its directory, whose ledger already holds a finished run."""
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "tiny.yaml").write_text(TINY_SWEEP)
    monkeypatch.setenv("PROXYSCALE_SWEEP_PATH", str(sweeps))
    directory = tmp_path / "runs"
    ledger = Ledger(directory / "ledger.sqlite")
    ledger.close()
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        db.execute("INSERT INTO runs (run_id, sweep, spec_json, status, created_at, updated_at) "
                   "VALUES ('0123456789abcdef', 'tiny', '{}', 'finished', 1.0, 1.0)")
    db.close()
    return directory


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def nothing_started(directory: Path, before: dict[str, bytes]) -> None:
    assert snapshot(directory) == before, "the sweep directory changed"
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized(), "Ray was started"


LAUNCH_CASES = [
    # (what, overrides, the words the message must hold)
    ("unknown key", ["train.lrr=1e-2"], ["train.lrr=1e-2: train.lrr is not a setting", "did you mean 'train.lr'?"]),
    ("unknown top-level key", ["budget_flop=1e12"], ["budget_flop=1e12: budget_flop is not a setting",
                                                     "did you mean 'budget_flops'?"]),
    ("wrong type", ["model.depth=two"], ["model.depth: must be an integer, got 'two'"]),
    ("wrong type in the cluster", ["cluster.num_cpus=many"], ["cluster.num_cpus: must be an integer, got 'many'"]),
    ("negative budget_flops", ["planner=active", "budget_flops=-1e12"],
     ["budget_flops: must be a positive number of FLOPs, got -1000000000000.0"]),
    ("negative target_flops", ["target_flops=-5"], ["target_flops: must be a positive number of FLOPs", "got -5"]),
    ("zero learning rate", ["train.lr=0"], ["train.lr: must be > 0, got 0"]),
    ("a missing sweep", ["sweep=tiyn"], ["sweep=tiyn: no such sweep", "tiny", "demo", "sweeps", "$PROXYSCALE_SWEEP_PATH",
                                         "did you mean 'tiny'?"]),
    ("a missing group option", ["model=huge"], ["model=huge: no such option of model", "proxy_1m, tiny"]),
    ("a value the sweep replaces", ["model.width=64"],
     ["model.width=64: sweep 'tiny' sets model.width for each run", "[16, 32]", "would be ignored"]),
    ("a malformed override", ["train.lr=[1"], ["'train.lr=[1' is not a valid override", "key=value"]),
]


@pytest.mark.parametrize("what, overrides, words", LAUNCH_CASES, ids=[c[0] for c in LAUNCH_CASES])
def test_launch_refuses_bad_overrides_and_starts_nothing(sweep_dir, capsys, what, overrides, words):
    before = snapshot(sweep_dir)
    sweep = [] if any(o.startswith("sweep=") for o in overrides) else ["sweep=tiny"]
    line = refused(capsys, ["launch", *sweep, f"sweep_dir={sweep_dir}", "cluster.num_cpus=2", *overrides])
    for word in words:
        assert word in line, line
    nothing_started(sweep_dir, before)


def test_the_missing_sweep_message_names_the_search_path(sweep_dir, capsys):
    line = refused(capsys, ["launch", "sweep=nope", f"sweep_dir={sweep_dir}"])
    assert str(sweep_dir.parent / "sweeps") in line and "sweeps" in line


# --- the ledger of a sweep directory -------------------------------------------------------------------

def test_new_ledgers_are_stamped_with_the_schema_version_and_old_ones_upgraded(tmp_path):
    Ledger(tmp_path / "new.sqlite").close()
    with sqlite3.connect(tmp_path / "new.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    old = tmp_path / "old.sqlite"  # a ledger from before the stamp: version 0, no started_at column
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, sweep TEXT NOT NULL, spec_json TEXT NOT NULL, "
                   "status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)")
        db.execute("INSERT INTO runs VALUES ('r', 's', '{}', 'finished', 1.0, 1.0)")
    db.close()
    ledger = Ledger(old)
    assert [r["run_id"] for r in ledger.runs()] == ["r"]
    ledger.close()
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


@pytest.mark.parametrize("command", ["launch", "status"])
def test_a_ledger_from_a_newer_proxyscale_is_refused_untouched(sweep_dir, capsys, command):
    path = sweep_dir / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    argv = ["launch", "sweep=tiny", f"sweep_dir={sweep_dir}"] if command == "launch" else ["status", str(sweep_dir)]
    line = refused(capsys, argv)
    assert (f"written by a newer proxyscale (schema {SCHEMA_VERSION + 1}, this one reads up to {SCHEMA_VERSION}): "
            "upgrade") in line and str(path) in line
    assert path.read_bytes() == before
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.parametrize("command", ["launch", "status"])
def test_a_ledger_that_is_not_sqlite_is_a_clear_error(sweep_dir, capsys, command):
    path = sweep_dir / "ledger.sqlite"
    path.write_text("run_id,status\n0123456789abcdef,finished\n" * 20)  # e.g. a CSV export saved over it
    before = path.read_bytes()
    argv = ["launch", "sweep=tiny", f"sweep_dir={sweep_dir}"] if command == "launch" else ["status", str(sweep_dir)]
    line = refused(capsys, argv)
    assert f"{path}: is not a proxyscale ledger" in line and "move this file away" in line
    assert path.read_bytes() == before
