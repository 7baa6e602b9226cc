"""A recipe sweep's ledger as the deciding planner, `recommend` and `report` see it: each run's recipe (the name its
spec records, `sweep.recipes`), the runs grouped by recipe as planner observations or as `analysis.compare.Recipe`s,
in nats per token or bits per byte, and the comparison at a target (analysis/compare.py's engine, as `proxyscale
compare DIR --by recipe` runs it)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from proxyscale.analysis.planner import Observation
from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.observations import LEDGER_TO_PLANNER_STATUS

if TYPE_CHECKING:
    from proxyscale.analysis.compare import Comparison
    from proxyscale.orchestrator.ledger import Ledger

LOSS_COLUMNS = {"loss": "final_eval_loss", "bpb": "final_eval_bpb"}
"""The ledger column each metric reads (bpb: bits per byte of the eval split, recorded by the real trainer)."""
NO_BYTES_DATA_KINDS = ("memmap",)
"""Data kinds whose runs record no bytes per token, so no bits per byte (models/data.py: a memmap token file carries
no text; stdlib counts one byte per token, prepared reads it from its manifest)."""


def unrecorded_bytes(plain: dict[str, Any], recipes: dict[str, dict[str, Any]]) -> str | None:
    """The setting ('trainer.kind: simulated', 'sweep.recipes.NAME.data.kind: memmap', 'data.kind: memmap' or
    'sweep.axes.data.kind: memmap') under which some run of the sweep records no bytes per token, hence no bits per
    byte; None when every run records them. `recipes`: each recipe's dotted overrides."""
    if (plain.get("trainer") or {}).get("kind") == "simulated":
        return "trainer.kind: simulated"
    sweep = plain.get("sweep") or {}
    varied = dict(sweep.get("axes") or {})
    for group in sweep.get("zip") or []:
        varied |= group if isinstance(group, dict) else {}
    kinds = varied.get("data.kind")
    if isinstance(kinds, (list, tuple)) and any(kind in NO_BYTES_DATA_KINDS for kind in kinds):
        return f"sweep.axes.data.kind: {next(k for k in kinds if k in NO_BYTES_DATA_KINDS)}"
    base = (plain.get("data") or {}).get("kind", "stdlib")
    for name, overrides in recipes.items():
        kind = overrides.get("data.kind", base)
        if kind in NO_BYTES_DATA_KINDS:
            return f"sweep.recipes.{name}.data.kind: {kind}" if "data.kind" in overrides else f"data.kind: {kind}"
    return f"data.kind: {base}" if not recipes and base in NO_BYTES_DATA_KINDS else None


def require_recorded_bytes(plain: dict[str, Any], recipes: dict[str, dict[str, Any]]) -> None:
    """Refuse comparing in bits per byte (planner.metric: bpb) runs that record none, before any run: else the loop
    trains its whole initial design and only then finds no bpb to compare."""
    where = unrecorded_bytes(plain, recipes)
    if where is not None:
        raise SpecError(f"planner.metric: bpb needs bytes per token, which runs with {where} do not record (memmap data "
                        "and the simulated trainer record none); use data.kind stdlib or prepared on the real trainer, "
                        "or planner.metric: loss with recipes on the same data")


def most_finished_recipe(ledger: Ledger) -> str | None:
    """The recipe with the most finished runs (None: none finished), recommended when no comparison is possible."""
    counts: dict[str, int] = {}
    for r in ledger.runs(["finished"]):
        if (name := recipe_of_row(r)) is not None:
            counts[name] = counts.get(name, 0) + 1
    return max(counts, key=counts.get) if counts else None


def recipe_of_row(row: dict[str, Any]) -> str | None:
    """The recipe a ledger row's run belongs to (None: not a recipe sweep's run)."""
    try:
        return json.loads(row.get("spec_json") or "{}").get("recipe")
    except ValueError:
        return None


def recipe_names(rows: list[dict[str, Any]]) -> list[str]:
    """The recipes among the rows, in first-seen order."""
    return list(dict.fromkeys(name for row in rows if (name := recipe_of_row(row)) is not None))


def _loss(row: dict[str, Any], metric: str) -> float | None:
    if metric not in LOSS_COLUMNS:
        raise SpecError(f"metric: {metric!r} is not allowed; choose one of {list(LOSS_COLUMNS)}")
    value = row.get(LOSS_COLUMNS[metric])
    if value is None and metric == "bpb" and row["status"] == "finished" and row.get("final_eval_loss") is not None:
        raise SpecError(f"metric bpb: run {row['run_id']} recorded no bits per byte (the simulated trainer and memmap "
                        "data record none); use the loss metric (planner.metric: loss, --metric loss)")
    return value


def recipe_observations(ledger: Ledger, metric: str = "loss") -> dict[str, list[Observation]]:
    """Each recipe's runs as planner observations (loss in the metric's unit), recipes in first-seen order."""
    out: dict[str, list[Observation]] = {}
    for r in ledger.runs():
        name = recipe_of_row(r)
        if name is None:
            continue
        status = LEDGER_TO_PLANNER_STATUS[r["status"]]
        out.setdefault(name, []).append(Observation(r["run_id"], r["width"], float(r["n_params"]), float(r["tokens"]),
                                                    float(r["flops"]), float(r["lr"]), status,
                                                    _loss(r, metric) if status == "finished" else None))
    return out


def recipes_from_ledger(ledger: Ledger, metric: str = "loss") -> list:
    """Each recipe's finished runs as an `analysis.compare.Recipe` (every run, as `compare --by recipe` reads them)."""
    from proxyscale.analysis.compare import Recipe

    groups: dict[str, list[dict]] = {}
    for r in ledger.runs(["finished"]):
        name = recipe_of_row(r)
        if name is not None and r["final_eval_loss"] is not None:
            groups.setdefault(name, []).append(r)
    return [Recipe.of(name, [r["n_params"] for r in rows], [r["tokens"] for r in rows],
                      [_loss(r, metric) for r in rows]) for name, rows in groups.items()]


def sweep_metric(config: dict[str, Any] | None) -> str:
    """The metric a recipe sweep is compared in: its planner's (planner.metric), else bpb when its recipes set data or
    tokenizer keys (nats would compare different texts), else loss."""
    config = config or {}
    planner = config.get("planner") or {}
    if planner.get("metric") in LOSS_COLUMNS and planner.get("objective") == "compare":
        return planner["metric"]
    recipes = (config.get("sweep") or {}).get("recipes") or {}
    touches = any(key.startswith("data.") or key == "model.vocab_size" for overrides in recipes.values()
                  for key in (overrides or {}))
    return "bpb" if touches else "loss"


def compare_recipes(ledger: Ledger, target_flops: float, *, metric: str = "loss", bootstrap: int = 1000, seed: int = 0,
                    decide_at: float = 0.9, same_eval: bool = True) -> tuple[Comparison | None, str | None]:
    """(the recipes compared at target_flops, None) or (None, why not): fewer than two recipes, too few runs.
    same_eval False: the recipes are evaluated on different texts (E never shared)."""
    from proxyscale.analysis.compare import CompareInputError, Target, compare_at, fit_recipes

    recipes = recipes_from_ledger(ledger, metric)
    if len(recipes) < 2:
        return None, f"{len(recipes)} recipe(s) with finished runs; a comparison needs two or more"
    try:
        fits = fit_recipes(recipes, bootstrap=bootstrap, seed=seed, metric=metric, same_eval=same_eval)
        return compare_at(fits, Target(flops=target_flops), decide_at=decide_at), None
    except CompareInputError as error:
        return None, str(error)


def verdict_line(comparison: Comparison) -> str:
    """'recipe: bpe wins at C = 3e13 with P(best) 0.97 (bits per byte 1.23 [1.20, 1.26]; bytes 1.40 [...])', or the
    leader with 'no clear winner'."""
    unit = {"loss": "loss", "bpb": "bits per byte"}.get(comparison.fits.metric, comparison.fits.metric)
    groups = sorted(comparison.groups, key=lambda g: -g.p_best)
    values = "; ".join(f"{g.name} {g.loss.value:.4f} [{g.loss.low:.4f}, {g.loss.high:.4f}]" for g in groups)
    at = f"C = {comparison.target.compute:.3g} FLOPs"
    if comparison.decided:
        return f"recipe: {comparison.best} wins at {at} with P(best) {comparison.p_best:.2f} ({unit}: {values})"
    return (f"recipe: no clear winner at {at}: {comparison.best} leads with P(best) {comparison.p_best:.2f} < "
            f"{comparison.decide_at:g} ({unit}: {values})")


class RecipeLedger:
    """A ledger (or a metric view of one) seen through one recipe: runs(), steps(), evals() and final_evals() hold that
    recipe's runs only, so a recommendation for the winning recipe fits its runs alone. Everything else is the
    ledger's."""

    def __init__(self, ledger, recipe: str) -> None:
        self._ledger = ledger
        self.recipe = recipe

    def __getattr__(self, name: str):
        return getattr(self._ledger, name)

    def _ids(self) -> set[str]:
        return {r["run_id"] for r in self._ledger.runs() if recipe_of_row(r) == self.recipe}

    def runs(self, statuses=None) -> list[dict]:
        """The recipe's runs (in the wrapped ledger's metric)."""
        return [r for r in self._ledger.runs(statuses) if recipe_of_row(r) == self.recipe]

    def steps(self, run_id: str | None = None) -> list[dict]:
        """The recipe's step rows (one run's when run_id is given)."""
        ids = self._ids()
        return [r for r in self._ledger.steps(run_id) if r["run_id"] in ids]

    def evals(self, run_id: str | None = None) -> list[dict]:
        """The recipe's task-metric rows."""
        ids = self._ids()
        return [r for r in self._ledger.evals(run_id) if r["run_id"] in ids]

    def final_evals(self) -> dict[str, dict[str, float]]:
        """The recipe's final task metrics per run."""
        ids = self._ids()
        return {k: v for k, v in self._ledger.final_evals().items() if k in ids}


def recipe_verdict(plain: dict[str, Any], ledger, target_flops: float, *, bootstrap: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """`judge_recipes`'s verdict alone (a plain dict, as `recommend --json` prints it)."""
    return judge_recipes(plain, ledger, target_flops, bootstrap=bootstrap, seed=seed)[1]


def judge_recipes(plain: dict[str, Any], ledger, target_flops: float, *, bootstrap: int = 1000,
                  seed: int = 0) -> tuple[Comparison | None, dict[str, Any]]:
    """(the comparison or None, the verdict). Which recipe of a `sweep.recipes` sweep wins at the target, with its
    probability: {"recipe" (the one to recommend: the best, or the one with most finished runs when no comparison is
    possible yet), "decided",
    "p_best", "metric", "line", "comparison" (compare --json's dict, or None)}. The decision threshold is the
    planner's decide_at (0.95) when it decided, else compare's 0.9."""
    metric = sweep_metric(plain)
    planner = plain.get("planner") or {}
    decide_at = float(planner.get("decide_at", 0.95)) if planner.get("objective") == "compare" else 0.9
    data_keys = [key for overrides in ((plain.get("sweep") or {}).get("recipes") or {}).values()
                 for key in (overrides or {}) if key.startswith("data.")]
    comparison, why = compare_recipes(ledger, target_flops, metric=metric, bootstrap=bootstrap, seed=seed,
                                      decide_at=decide_at, same_eval=not data_keys)
    if comparison is None:
        most = most_finished_recipe(ledger)
        if most is None:
            raise SpecError("DIR: a recipe sweep with no finished runs; nothing to recommend yet")
        return None, {"recipe": most, "decided": False, "p_best": None, "metric": metric, "comparison": None,
                      "line": f"recipe: no comparison ({why}); recommending {most}, the recipe with the most finished "
                              "runs"}
    return comparison, {"recipe": comparison.best, "decided": comparison.decided, "p_best": comparison.p_best,
                        "metric": metric, "line": verdict_line(comparison), "comparison": comparison.to_dict()}
