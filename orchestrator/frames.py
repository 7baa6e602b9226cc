"""A sweep directory's ledger as pandas tables: one row per run, per logged step, per task-metric evaluation.

Shared by `proxyscale export` and `proxyscale.open_sweep`, so a notebook reads the same columns the CSV has.
"""

from __future__ import annotations

import json


def runs_frame(ledger):
    """One row per run (the ledger's run columns), with an eval.<name> column per task metric at its last eval."""
    import pandas as pd

    from proxyscale.orchestrator.ledger import RUN_COLUMNS

    table = pd.DataFrame(ledger.runs())
    table = table[[c for c in RUN_COLUMNS if c in table.columns]] if not table.empty else table
    final = ledger.final_evals()
    if final and not table.empty:  # each task metric (train.evals) at the run's last evaluation
        wide = pd.DataFrame.from_dict(final, orient="index").add_prefix("eval.")
        table = table.merge(wide, left_on="run_id", right_index=True, how="left")
    return table


def steps_frame(ledger):
    """One row per logged step: losses, lr, tokens, a probe.<name> column per probe, eval.<name> per task metric."""
    import pandas as pd

    table = pd.DataFrame(ledger.steps())
    if not table.empty:
        probes = pd.json_normalize(table.pop("probes_json").map(json.loads)).add_prefix("probe.")
        table = pd.concat([table, probes], axis=1)
        evals = pd.DataFrame(ledger.evals())
        if not evals.empty:  # one column eval.<name> per task metric (train.evals), at its eval steps
            wide = evals.pivot(index=["run_id", "step"], columns="name", values="value").add_prefix("eval.")
            table = table.merge(wide.reset_index(), on=["run_id", "step"], how="left")
    return table


def evals_frame(ledger):
    """One row per (run, step, task metric) evaluation, long form."""
    import pandas as pd

    return pd.DataFrame(ledger.evals())
