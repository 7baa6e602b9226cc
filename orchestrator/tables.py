"""The CSV tables a user hands to `fit` and `fit-schedule`, read and checked in one place.

Every check fails with one SpecError line that names the file, the column, the line of the file
and the value, and says what to do, before any fitting starts. Lines are the file's own (the
header is line 1), so the message points at what an editor shows.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from proxyscale.models.spec import SpecError


@dataclass(frozen=True)
class Column:
    """One column a command needs: the option that named it (for messages) and what its values must be."""

    option: str
    name: str
    positive: bool = True
    """True: every value > 0 (counts, tokens, FLOPs, losses); False: >= 0 (an LR that decays to zero)."""
    at_most: float | None = None
    """An upper bound on every value (1 for a task metric, a fraction); None: none."""
    may_be_empty: bool = False
    """True: an empty or NaN cell is kept as NaN (a diverged or failed run's loss in an export); False: refused."""


def read_table(path: str, columns: Collection[Column], *, min_rows: int, purpose: str,
               unique: str | None = None, increasing: str | None = None, repeats_allowed: bool = False):
    """The table at `path` with the given numeric columns checked; each failure is one SpecError line.

    purpose: what the rows are for, in the words of the messages ("fitting L(N, D)").
    unique: a column whose values must not repeat (steps of a curve); without it, whole rows must not.
    increasing: a column that must increase down the file.
    repeats_allowed: equal rows are data, not a mistake (two runs' step-0 evals of one initial model).
    """
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file; give the path of a CSV file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
        raise SpecError(f"{path}: not a readable CSV table ({first}); give a comma-separated file with a header line") \
            from None
    names = [str(c) for c in table.columns]
    for column in columns:
        if column.name not in table.columns:
            fix = (f"give {column.option} one of those" if column.option.startswith("-")
                   else f"{column.option} reads the column named {column.name!r}: rename yours")
            raise SpecError(f"{column.option}: column {column.name!r} is not in {path}; its columns are {names}; {fix}")
    used = [column.name for column in columns]
    for column in columns:
        table[column.name] = _numbers(path, table[column.name], column)
    if len(table) < min_rows:
        raise SpecError(f"{path}: has {len(table)} data row{'s' * (len(table) != 1)}; {purpose} needs at least "
                        f"{min_rows}; add rows")
    repeated_in = [unique] if unique is not None else used
    repeated = table.duplicated(subset=repeated_in, keep=False)
    if repeated.any() and not repeats_allowed:
        lines = [_line(i) for i in table.index[repeated][:2]]
        values = ", ".join(f"{name}={table.loc[table.index[repeated][0], name]:g}" for name in repeated_in)
        what = f"the same {unique}" if unique is not None else "the same row"
        raise SpecError(f"{path}: lines {lines[0]} and {lines[1]} are {what} ({values}); remove the duplicate")
    if increasing is not None:
        values = table[increasing].to_numpy()
        for i in range(1, len(values)):
            if values[i] < values[i - 1]:
                raise SpecError(f"{path}: column {increasing!r} goes down from {values[i - 1]:g} to {values[i]:g} at "
                                f"line {_line(table.index[i])}; sort the rows by {increasing}")
    return table


def _numbers(path: str, raw, column: Column):
    """A column as floats, or a SpecError at its first text, empty, NaN, infinite, zero or negative value."""
    import pandas as pd

    values = pd.to_numeric(raw, errors="coerce")
    where = f"{path}: column {column.name!r} ({column.option})"
    for index, original, value in zip(raw.index, raw, values, strict=True):
        if pd.isna(original) or (isinstance(original, str) and original.strip().lower() == "nan"):
            if column.may_be_empty:
                continue
            raise SpecError(f"{where} is empty or NaN at line {_line(index)}; fill in the value or remove the row")
        if pd.isna(value):
            raise SpecError(f"{where} has the text {original!r} at line {_line(index)}; it must hold numbers only")
        if not math.isfinite(value):
            raise SpecError(f"{where} has {original!r} at line {_line(index)}; it must hold finite numbers")
        if value < 0 or (column.positive and value == 0):
            bound = "> 0" if column.positive else ">= 0"
            raise SpecError(f"{where} has {value:g} at line {_line(index)}; its values must be {bound}: fix the value "
                            "or remove the row")
        if column.at_most is not None and value > column.at_most:
            raise SpecError(f"{where} has {value:g} at line {_line(index)}, outside [0, {column.at_most:g}]; it must be a "
                            "fraction (0.42, not 42%): fix the value or remove the row")
    return values.astype(float)


def _line(index) -> int:
    """The file line of a data row: the header is line 1."""
    return int(index) + 2
