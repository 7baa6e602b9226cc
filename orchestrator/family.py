"""Is another sweep the same model family? The keys every law depends on beyond its own knob, the values a
ledger's finished runs take on them, and the check that refuses another sweep (a knob source for `recommend
--knobs-from`, or the sweep `fit --score` predicts) of another model family or data."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from proxyscale.models.spec import SpecError

if TYPE_CHECKING:
    from proxyscale.orchestrator.ledger import Ledger


SAME_FAMILY_KEYS = ("model.seq_len", "model.vocab_size", "model.n_heads", "model.head_size", "model.mlp_ratio",
                    "model.tied_embeddings", "model.norm", "model.qk_layernorm", "model.base_width", "model.init_std",
                    "data.kind", "data.train_path", "data.val_path")
"""Keys on which every knob law depends beyond the knob itself: sweeps that differ in one share no law."""

LR_FAMILY_KEYS = ("model.parametrization", "train.weight_decay", "train.beta1", "train.beta2", "train.eps",
                  "train.grad_clip")
"""Keys the optimal LR and batch size also depend on: a source that differs in one lends only depth and schedule."""


def family_values(ledger: Ledger) -> dict[str, set]:
    """The values each family key takes over the ledger's finished runs ({} when it has none)."""
    values: dict[str, set] = {}
    for row in ledger.runs(["finished"]):
        spec = json.loads(row["spec_json"])
        for dotted in SAME_FAMILY_KEYS + LR_FAMILY_KEYS:
            section, key = dotted.split(".")
            value = (spec.get(section) or {}).get(key)
            values.setdefault(dotted, set()).add(json.dumps(value))
    return values


def shown_value(values: set) -> Any:
    """A family key's value for messages: the single value, or the sorted list when the sweep varies it."""
    decoded = sorted((json.loads(v) for v in values), key=str)
    return decoded[0] if len(decoded) == 1 else decoded


def check_same_family(mine: dict[str, set], theirs: dict[str, set], directory: str, *, flag: str = "--knobs-from") -> None:
    """Refuse another sweep (a knob source, or the sweep `fit --score` predicts) of another model family or
    data, from the runs' specs (so a key the other sweep varies counts too), naming the first key that differs."""
    for dotted in SAME_FAMILY_KEYS:
        if mine.get(dotted) != theirs.get(dotted):
            raise SpecError(f"{flag}: {directory} is another model family or data ({dotted} = "
                            f"{shown_value(theirs.get(dotted, {'null'}))!r} there, "
                            f"{shown_value(mine.get(dotted, {'null'}))!r} here); "
                            f"its laws do not carry over. Allowed: sweeps whose runs agree on "
                            f"{', '.join(SAME_FAMILY_KEYS)}")
