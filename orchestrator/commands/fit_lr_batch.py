"""`proxyscale fit --csv F --law lr_batch`: Step Law's eta_opt(N, D) and B_opt(D) from a table of runs.

The same procedure `recommend` runs on a sweep directory (`analysis.lr_batch_law.lr_batch_evidence`):
per (N, D) group the near-optimal runs (within 0.25% of the group's best loss) locate the group's
optimal LR and batch size; eta_opt = c N^a D^b and B_opt = k D^g are fitted by least squares in log
space, with bootstrap intervals on every exponent; and the optimal LR per batch size says whether it
moves with the batch size. A table has no widths, so no muP transfer is assumed: N stays in the LR law.

Rows without a loss (diverged or failed runs in a W&B or `proxyscale export` table) are left out.
"""

from __future__ import annotations

import argparse

import numpy as np

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import print_json
from proxyscale.orchestrator.tables import Column, read_table

MIXED_UNITS_GAP = 16.0
"""A jump of at least this factor between two neighbouring distinct batch sizes reads as two units (a
sequence length is 32 to 8192 tokens), not one grid (whose neighbours are a factor 2 or sqrt(2) apart)."""


def _below_a_gap(batch: np.ndarray, gap: float) -> tuple[np.ndarray, float]:
    """(rows below the widest jump between neighbouring distinct values, its factor), or (none, factor) if < gap."""
    values = np.unique(batch)
    if len(values) < 2:
        return np.zeros(len(batch), bool), 1.0
    ratios = values[1:] / values[:-1]
    widest = int(np.argmax(ratios))
    return (batch <= values[widest]) if ratios[widest] >= gap else np.zeros(len(batch), bool), float(ratios[widest])


def mixed_units(batch, groups, gap: float = MIXED_UNITS_GAP) -> tuple[np.ndarray, float] | None:
    """(mask of the rows that look like sequences among tokens, the smallest jump that set them apart), or None.

    A row looks like sequences when its batch size sits below a jump of `gap` or more between neighbouring
    distinct batch sizes, in the whole table or within its own (N, D) group (where a grid in tokens has
    neighbours a factor 2 apart). A whole table, or a whole group, in sequences cannot be told from its values.
    """
    batch, groups = np.asarray(batch, float), np.asarray(groups)
    mask, factors = np.zeros(len(batch), bool), []
    for rows in [np.arange(len(batch))] + [np.flatnonzero(groups == g) for g in np.unique(groups)]:
        below, factor = _below_a_gap(batch[rows], gap)
        if below.any():
            mask[rows[below]] = True
            factors.append(factor)
    return (mask, min(factors)) if mask.any() else None


def read_lr_batch_table(args: argparse.Namespace):
    """The table with its (N, D, LR, batch, loss) columns checked (an empty loss is kept as NaN: a diverged run)."""
    named = {"--n": args.n, "--d": args.d, "--lr": args.lr, "--batch": args.batch, "--loss": args.loss}
    missing = [option for option, name in named.items() if name is None]
    if missing:
        raise SpecError(f"fit --law lr_batch: give {' '.join(f'{m} COL' for m in missing)} (the columns of N, tokens D, "
                        "peak LR, batch size in tokens and final loss)")
    columns = [Column(option, name, may_be_empty=option == "--loss") for option, name in named.items()]
    return read_table(args.csv, columns, min_rows=3, purpose="an LR/batch law")


def run_fit_lr_batch(args: argparse.Namespace) -> int:
    from proxyscale.analysis.lr_batch_law import lr_batch_evidence

    if args.csv is None:
        raise SpecError("fit --law lr_batch: give --csv FILE (a table with one row per run)")
    table = read_lr_batch_table(args)
    n, d, lr, batch, loss = (table[c].to_numpy(float) for c in (args.n, args.d, args.lr, args.batch, args.loss))
    dropped = int((~np.isfinite(loss)).sum())
    mixed = mixed_units(batch, [f"{a:g}/{b:g}" for a, b in zip(n, d, strict=True)])
    if mixed is not None:
        low, factor = mixed
        raise SpecError(
            f"--batch: column {args.batch!r} mixes units: {int(low.sum())} row(s) ({_lines(table, low)}) have batch "
            f"sizes {batch[low].min():g}-{batch[low].max():g}, {factor:.0f}x or more below the next ones in the table or "
            f"in their (N, D) group (the rest: {batch[~low].min():g}-{batch[~low].max():g}); they look like sequences "
            "rather than tokens: give every batch size in tokens (sequences x sequence length)")
    most, groups = most_lrs_in_a_group(n, d, lr, batch, loss)
    if most < 3:
        raise SpecError(f"{args.csv}: no (N, D) group has 3+ LRs at one batch size (at most {most} among the {groups} groups "
                        f"of columns {args.n!r} x {args.d!r} with a loss); an LR optimum needs 3+ LRs around it in some group")
    evidence = lr_batch_evidence(n, d, n, lr, batch, loss, transfer=False, bootstrap=args.bootstrap, seed=args.seed)
    payload = lr_batch_payload(evidence, rows=len(loss), dropped=dropped, bootstrap=args.bootstrap)
    if args.json:
        print_json(payload)
        return 0
    print_lr_batch(payload, evidence)
    return 0


def most_lrs_in_a_group(n, d, lr, batch, loss) -> tuple[int, int]:
    """(the most distinct LRs any (N, D, batch) cell with a loss tried, the number of (N, D) groups with a loss)."""
    finite = np.isfinite(loss)
    cells: dict[tuple[float, float, float], set[float]] = {}
    for key, rate in zip(zip(n[finite], d[finite], batch[finite], strict=True), lr[finite], strict=True):
        cells.setdefault(key, set()).add(rate)
    return max((len(lrs) for lrs in cells.values()), default=0), len({key[:2] for key in cells})


def _lines(table, mask: np.ndarray, shown: int = 5) -> str:
    """The file lines (header = line 1) of the rows in mask, the first few."""
    lines = [str(int(i) + 2) for i in table.index.to_numpy()[mask][:shown]]
    more = int(mask.sum()) - len(lines)
    return "line" + "s" * (len(lines) > 1) + " " + ", ".join(lines) + (f" and {more} more" if more > 0 else "")


def _law(law) -> dict | None:
    if law is None:
        return None
    return {"coefficient": law.coefficient.as_dict(), "exponents": {k: v.as_dict() for k, v in law.exponents.items()},
            "formula": law.formula(), "groups": law.n_rows, "at_bound": list(law.at_bound)}


def lr_batch_payload(evidence, *, rows: int, dropped: int, bootstrap: int) -> dict:
    """The JSON of `fit --law lr_batch`: {"lr": {"coefficient", "exponents": {"N", "D"}}, "batch_size": {...}, ...}."""
    trend = evidence.trend
    return {
        "law": "lr_batch", "rows": rows, "rows_without_loss": dropped, "bootstrap": bootstrap,
        "groups": len(evidence.optima),
        "lr": _law(evidence.lr_law), "lr_reason": evidence.lr_reason,
        "batch_size": _law(evidence.batch_law), "batch_size_reason": evidence.batch_reason,
        "lr_vs_batch": trend.as_dict() if trend is not None else None,
        "group_optima": [{"N": g.n_params, "D": g.tokens, "lr": g.lr, "batch_size": g.batch, "loss": g.loss,
                          "lr_bracketed": g.lr_bracketed, "batch_bracketed": g.batch_bracketed,
                          "near_optimal_runs": g.near_optimal} for g in evidence.optima],
    }


def print_lr_batch(payload: dict, evidence) -> None:
    print(f"Step Law fit on {payload['rows']} runs in {payload['groups']} (N, D) groups ({payload['bootstrap']} bootstrap "
          "resamples, 95% intervals)" + (f"; {payload['rows_without_loss']} rows without a loss left out"
                                         if payload["rows_without_loss"] else ""))
    for label, law, reason in (("eta_opt(N, D)", evidence.lr_law, evidence.lr_reason),
                               ("B_opt(D)", evidence.batch_law, evidence.batch_reason)):
        print(f"  {label + ':':<15}{law.formula()}  ({reason})" if law is not None else f"  {label + ':':<15}no law: {reason}")
    trend = evidence.trend
    if trend is None:
        print("  LR vs batch:   not measured (no group tried 2+ batch sizes with 3+ LRs each)")
        return
    s = trend.slope
    print(f"  LR vs batch:   {trend.verdict}; d log eta_opt / d log B = {s.value:+.3f} [{s.low:+.3f}, {s.high:+.3f}] "
          f"over {trend.groups} group(s)")
    for b, interval in zip(trend.batches, trend.lr_opt, strict=True):
        print(f"    B = {b:<10g} eta_opt {interval.value:.4g} [{interval.low:.4g}, {interval.high:.4g}]")
