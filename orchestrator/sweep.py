"""The sweep grammar: a `SweepSpec` read from the composed Hydra config, expanded into RunSpecs.

A sweep file in sweeps/ (selected with `sweep=NAME`) sets model/train/data keys for every run and a
`sweep:` block:

    sweep:
      name: demo
      axes:                 # cartesian product over dotted keys of model / train / data
        model.width: [32, 64, 96]
        train.lr: [3e-3, 1e-2]
      zip:                  # groups of keys whose lists vary together (equal lengths)
        - {model.width: [64, 128], model.n_heads: [2, 4]}
      budget:               # optional: how train.tokens is set for each run
        tokens_per_param: [10, 20]     # or  tokens: [...]   or  flops: [...]  (D = C / flops_per_token)
      filters:              # optional: combinations are kept only where every expression is true
        - "model.width >= 16 * model.depth"
      seeds: [0, 1]         # optional shorthand for an axis over train.seed
      cooldowns:            # optional, with budget: WSD forks (Hägele et al. 2024) instead of one run per budget
        fraction: 0.2       # each budget's run is a cooldown over its last 20% of tokens...
        shape: sqrt         # ...shaped linear or sqrt (1 - sqrt), forked from ONE constant-LR run per
                            # combination of the axes, trained to the latest fork step
      recipes:              # optional: two or more recipes, each a set of overrides of the base; every
        bytes: {}           # combination runs once per recipe, and each run records its recipe's name
        bpe: {data.kind: prepared, data.build: {inputs: stdlib, tokenizer: "train:512"}}
                            # (planner.objective: compare decides between them; `compare DIR --by recipe`)

With `cooldowns`, a combination of the axes gives one stable (constant-LR) trajectory to the last
fork step, recorded as a chain of segments that each continue the previous one (so it can be
extended one budget at a time), and, per budget, a fork `train.init_from=SEGMENT@S` with schedule
wsd whose decay starts at its fork step S. A fork is charged only its own tokens, so the ladder
costs the stable trajectory plus the cooldowns instead of the sum of every budget.

Everything is validated before any run starts; errors name the key and the allowed values.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import itertools
from dataclasses import dataclass
from typing import Any

from proxyscale.models.flops import count_parameters, flops_per_token, training_flops
from proxyscale.models.schedules import lr_multiplier
from proxyscale.models.spec import (
    DECAY_SHAPES,
    DataSpec,
    ModelSpec,
    RunSpec,
    SimulatedSpec,
    SpecError,
    TrainSpec,
    build_spec,
    parse_init_from,
)

SECTIONS = {"model": ModelSpec, "train": TrainSpec, "data": DataSpec}
SWEEP_KEYS = ("name", "description", "axes", "zip", "budget", "filters", "seeds", "cooldowns", "recipes")
RECIPE_SECTIONS = ("model", "train", "data", "trainer")
"""What a recipe may override: model / train / data keys, and the simulated trainer's truth (trainer.*)."""
COOLDOWN_KEYS = ("fraction", "shape")
BUDGET_KINDS = ("tokens", "tokens_per_param", "flops")


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    name: str
    base: dict[str, dict[str, Any]]
    """model / train / data values shared by every run."""
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    zipped: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...]
    budget_kind: str | None
    budget_values: tuple[float, ...]
    filters: tuple[str, ...]
    description: str = ""
    simulated: dict[str, Any] | None = None
    """The simulated trainer's ground truth, shared by every run (None: real training)."""
    cooldown_fraction: float | None = None
    """With a budget: each budget is a WSD cooldown fork of this share of its tokens (None: fresh runs)."""
    cooldown_shape: str = "sqrt"
    recipes: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    """(name, ((dotted key, value), ...)) per recipe: each recipe's overrides of the base (empty: one recipe, the base)."""

    @property
    def recipe_names(self) -> tuple[str, ...]:
        """The recipes' names, in the file's order (empty without sweep.recipes)."""
        return tuple(name for name, _ in self.recipes)


def _allowed_keys() -> dict[str, list[str]]:
    return {section: [f.name for f in dataclasses.fields(cls)] for section, cls in SECTIONS.items()}


def check_dotted_key(key: str, where: str) -> None:
    allowed = _allowed_keys()
    section, _, name = key.partition(".")
    if section not in allowed or not name:
        flat = [f"{s}.{k}" for s, keys in allowed.items() for k in keys]
        hint = difflib.get_close_matches(key, flat, n=1)
        raise SpecError(f"{where}.{key}: unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
                        + " Keys look like model.width, train.lr, data.kind")
    if name not in allowed[section]:
        hint = difflib.get_close_matches(name, allowed[section], n=1)
        raise SpecError(f"{where}.{key}: unknown key" + (f"; did you mean '{section}.{hint[0]}'?" if hint else "")
                        + f" Allowed under {section}: {allowed[section]}")


def _values(key: str, raw: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(raw, (list, tuple)):
        raise SpecError(f"{where}.{key}: must be a list of values, got {raw!r}")
    if len(raw) == 0:
        raise SpecError(f"{where}.{key}: is empty; give at least one value")
    return tuple(raw)


class _FilterCheck(ast.NodeVisitor):
    """Filters are plain expressions over dotted keys: names, numbers, arithmetic and comparisons only."""

    ALLOWED = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Attribute,
               ast.Constant, ast.Load, ast.And, ast.Or, ast.Not, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
               ast.Mod, ast.Pow, ast.USub, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
               ast.Tuple, ast.List)

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, self.ALLOWED):
            raise SpecError(f"sweep.filters: {self.expression!r} uses {type(node).__name__}; allowed are dotted keys, "
                            "numbers, strings, arithmetic, comparisons, and/or/not")
        if isinstance(node, ast.Attribute):
            check_dotted_key(ast.unparse(node), "sweep.filters")
            return
        if isinstance(node, ast.Name) and node.id not in SECTIONS and node.id not in ("True", "False", "None"):
            raise SpecError(f"sweep.filters: {self.expression!r} names {node.id!r}; use dotted keys like model.width")
        super().generic_visit(node)


def _check_filter(expression: Any) -> str:
    if not isinstance(expression, str):
        raise SpecError(f"sweep.filters: each filter must be a string expression, got {expression!r}")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as error:
        raise SpecError(f"sweep.filters: {expression!r} is not a valid expression ({error.msg})") from error
    _FilterCheck(expression).visit(tree)
    return expression


def sweep_from_config(plain: dict[str, Any]) -> SweepSpec:
    """Validate the `sweep:` block of a composed config (a plain dict) and build the SweepSpec."""
    raw = plain.get("sweep")
    if not raw:
        raise SpecError("sweep: no sweep selected; add sweep=NAME (the files in sweeps/)")
    for key in raw:
        if key not in SWEEP_KEYS:
            hint = difflib.get_close_matches(key, SWEEP_KEYS, n=1)
            raise SpecError(f"sweep.{key}: unknown key" + (f"; did you mean 'sweep.{hint[0]}'?" if hint else "")
                            + f" Allowed: {list(SWEEP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise SpecError(f"sweep.name: must be a non-empty name without spaces or slashes, got {name!r}")
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, dict):
        raise SpecError(f"sweep.axes: must be a mapping of dotted key to a list of values, got {axes_raw!r}")
    axes = []
    for key, values in axes_raw.items():
        check_dotted_key(key, "sweep.axes")
        axes.append((key, _values(key, values, "sweep.axes")))
    if raw.get("seeds") is not None:
        if "train.seed" in axes_raw:
            raise SpecError("sweep.seeds: train.seed is already an axis; give seeds one way")
        axes.append(("train.seed", _values("seeds", raw["seeds"], "sweep")))
    zipped = []
    for index, group in enumerate(raw.get("zip") or []):
        if not isinstance(group, dict) or not group:
            raise SpecError(f"sweep.zip[{index}]: must be a non-empty mapping of dotted key to a list")
        entries = []
        for key, values in group.items():
            check_dotted_key(key, f"sweep.zip[{index}]")
            entries.append((key, _values(key, values, f"sweep.zip[{index}]")))
        lengths = {len(values) for _, values in entries}
        if len(lengths) != 1:
            raise SpecError(f"sweep.zip[{index}]: lists must have equal lengths, got "
                            f"{ {key: len(values) for key, values in entries} }")
        zipped.append(tuple(entries))
    keys = [key for key, _ in axes] + [key for group in zipped for key, _ in group]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise SpecError(f"sweep: {duplicates[0]} is varied twice (in axes and zip); vary each key once")
    budget_kind, budget_values = None, ()
    budget = raw.get("budget")
    if budget is not None:
        if not isinstance(budget, dict) or len(budget) != 1:
            raise SpecError(f"sweep.budget: give exactly one of {list(BUDGET_KINDS)} with a list of values")
        [(budget_kind, values)] = budget.items()
        if budget_kind not in BUDGET_KINDS:
            hint = difflib.get_close_matches(budget_kind, BUDGET_KINDS, n=1)
            raise SpecError(f"sweep.budget.{budget_kind}: unknown budget kind"
                            + (f"; did you mean {hint[0]!r}?" if hint else "") + f" Allowed: {list(BUDGET_KINDS)}")
        budget_values = _values(budget_kind, values, "sweep.budget")
        for value in budget_values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SpecError(f"sweep.budget.{budget_kind}: values must be positive numbers, got {value!r}")
        if "train.tokens" in keys:
            raise SpecError("sweep.budget: train.tokens is also an axis; set the token budget one way")
    filters = tuple(_check_filter(expression) for expression in raw.get("filters") or [])
    base = {section: dict(plain.get(section) or {}) for section in SECTIONS}
    cooldown_fraction, cooldown_shape = _cooldowns(raw.get("cooldowns"), budget_kind, keys)
    simulated = simulated_truth(plain)
    recipes: tuple = ()
    if raw.get("recipes") is not None:
        if cooldown_fraction is not None:
            raise SpecError("sweep.recipes: cannot be combined with sweep.cooldowns yet (recipes are compared on fresh "
                            "runs' final losses); drop one of them")
        varied = keys + (["train.tokens"] if budget_kind is not None else [])
        parsed = parse_recipes(raw["recipes"], varied=varied, simulated=simulated is not None, resolved=True)
        recipes = tuple((recipe, tuple(overrides.items())) for recipe, overrides in parsed.items())
        _check_compare_planner(plain, parsed)
    elif (plain.get("planner") or {}).get("objective") == "compare":
        raise SpecError("planner.objective: compare decides between recipes; the sweep has no sweep.recipes (e.g. "
                        "recipes: {bytes: {}, bpe: {data.kind: prepared, ...}}), or use planner.objective: target")
    return SweepSpec(simulated=simulated, name=name, description=str(raw.get("description") or ""),
                     base=base, axes=tuple(axes), zipped=tuple(zipped), budget_kind=budget_kind,
                     budget_values=tuple(budget_values), filters=filters, cooldown_fraction=cooldown_fraction,
                     cooldown_shape=cooldown_shape, recipes=recipes)


def _flatten_overrides(name: str, overrides: Any) -> dict[str, Any]:
    """A recipe's overrides as {dotted key: value}: `{data.kind: prepared}` or one level of nesting by section
    (`{data: {kind: prepared}}`); data.build keeps its mapping."""
    where = f"sweep.recipes.{name}"
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise SpecError(f"{where}: must be a mapping of config keys to values (e.g. {{data.kind: prepared}}), got "
                        f"{overrides!r}")
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        key = str(key)
        if "." not in key and key in RECIPE_SECTIONS and isinstance(value, dict):
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = inner
        else:
            flat[key] = value
    return flat


def parse_recipes(raw: Any, *, varied: list[str] = (), simulated: bool = True,
                  resolved: bool = False) -> dict[str, dict[str, Any]]:
    """Validate `sweep.recipes` ({name: overrides}) into {name: {dotted key: value}}; one SpecError line naming the key.

    Two or more recipes with distinct names and distinct overrides; keys of model / train / data (and data.build, the
    corpus prepared on first use: resolved into data.path by config.to_plain, so `resolved` refuses it), or trainer.*
    (the simulated truth, with trainer=simulated only); no key the sweep already varies (axes, zip, the budget)."""
    if not isinstance(raw, dict):
        raise SpecError(f"sweep.recipes: must be a mapping of recipe name to overrides (e.g. {{bytes: {{}}, bpe: "
                        f"{{data.kind: prepared}}}}), got {raw!r}")
    if len(raw) < 2:
        names = ", ".join(map(str, raw)) or "none"
        raise SpecError(f"sweep.recipes: give two or more recipes to compare, got {len(raw)} ({names})")
    truth_keys = [f.name for f in dataclasses.fields(SimulatedSpec)]
    parsed: dict[str, dict[str, Any]] = {}
    for name, overrides in raw.items():
        if not isinstance(name, str) or not name or any(c in name for c in "/\\ .=,"):
            raise SpecError(f"sweep.recipes: {name!r} is not a recipe name; use a word without spaces, dots, slashes "
                            "or '=' (e.g. bytes, bpe)")
        flat = _flatten_overrides(name, overrides)
        for key, value in flat.items():
            where = f"sweep.recipes.{name}"
            section, _, field = key.partition(".")
            if section == "trainer":
                if not simulated:
                    raise SpecError(f"{where}.{key}: sets the simulated trainer's truth; only with trainer=simulated "
                                    "(a real recipe differs in model / train / data keys)")
                if field not in truth_keys or field == "kind":
                    hint = difflib.get_close_matches(field, truth_keys, n=1)
                    raise SpecError(f"{where}.{key}: unknown key" + (f"; did you mean 'trainer.{hint[0]}'?" if hint else "")
                                    + f" Allowed under trainer: {truth_keys}")
            elif key == "data.build":
                if resolved:
                    raise SpecError(f"{where}.data.build: was not resolved into data.path (config.to_plain prepares "
                                    "it); compose the sweep with orchestrator.config.to_plain")
                if not isinstance(value, dict):
                    raise SpecError(f"{where}.data.build: must be a mapping like {{inputs: stdlib, tokenizer: "
                                    f"'train:512'}}, got {value!r}")
            else:
                check_dotted_key(key, where)
            if key in varied:
                raise SpecError(f"{where}.{key}: the sweep also varies {key} (axes, zip or budget); set it one way")
        for other, seen in parsed.items():
            if seen == flat:
                raise SpecError(f"sweep.recipes.{name}: has the same overrides as {other!r}; recipes must differ in "
                                "at least one key")
        parsed[name] = flat
    return parsed


def recipes_differ_in_data(recipes: dict[str, dict[str, Any]]) -> list[str]:
    """The data / tokenizer keys (data.*, model.vocab_size) that some recipe sets, sorted: their losses in nats
    then measure different texts or tokens."""
    return sorted({key for overrides in recipes.values() for key in overrides
                   if key.startswith("data.") or key == "model.vocab_size"})


def _check_compare_planner(plain: dict[str, Any], recipes: dict[str, dict[str, Any]]) -> None:
    """planner.objective: compare in nats on recipes with different data or tokenizers, or in bits per byte on runs
    that record none (memmap data, the simulated trainer): refused with the fix, before any run."""
    from proxyscale.orchestrator.recipes import require_recorded_bytes, unrecorded_bytes

    planner = plain.get("planner") or {}
    if planner.get("kind") != "active" or planner.get("objective", "target") != "compare":
        return
    keys = recipes_differ_in_data(recipes)
    metric = planner.get("metric", "loss")
    if keys and metric == "loss":
        no_bytes = unrecorded_bytes(plain, recipes)
        fix = ("set planner.metric: bpb (bits per byte)" if no_bytes is None else
               f"bpb would need bytes per token, which runs with {no_bytes} do not record: give the recipes the same "
               "data, or use data.kind stdlib or prepared on the real trainer")
        raise SpecError(f"planner.metric: loss (nats per token) cannot compare recipes that set {', '.join(keys)} "
                        f"(different texts or tokenizers); {fix}")
    if metric == "bpb":
        require_recorded_bytes(plain, recipes)


def _cooldowns(raw: Any, budget_kind: str | None, varied: list[str]) -> tuple[float | None, str]:
    if raw is None:
        return None, "sqrt"
    if not isinstance(raw, dict):
        raise SpecError(f"sweep.cooldowns: must be a mapping like {{fraction: 0.2, shape: sqrt}}, got {raw!r}")
    for key in raw:
        if key not in COOLDOWN_KEYS:
            hint = difflib.get_close_matches(key, COOLDOWN_KEYS, n=1)
            raise SpecError(f"sweep.cooldowns.{key}: unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
                            + f" Allowed: {list(COOLDOWN_KEYS)}")
    if budget_kind is None:
        raise SpecError("sweep.cooldowns: needs sweep.budget (the token budgets the cooldowns end at)")
    for key in ("train.schedule", "train.decay_fraction", "train.init_from"):
        if key in varied:
            raise SpecError(f"sweep.cooldowns: {key} cannot be an axis of a sweep with cooldowns (they set it)")
    fraction = raw.get("fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise SpecError(f"sweep.cooldowns.fraction: must be a number in (0, 1), got {fraction!r}")
    shape = raw.get("shape", "sqrt")
    if shape not in DECAY_SHAPES:
        raise SpecError(f"sweep.cooldowns.shape: {shape!r} is not allowed; choose one of {list(DECAY_SHAPES)}")
    return float(fraction), shape


TRAINER_KINDS = ("real", "simulated")


def simulated_truth(plain: dict[str, Any]) -> dict[str, Any] | None:
    """The ground truth of `trainer=simulated` (None for the real trainer), validated."""
    trainer = dict(plain.get("trainer") or {"kind": "real"})
    kind = trainer.pop("kind", None)
    if kind not in TRAINER_KINDS:
        raise SpecError(f"trainer.kind: {kind!r} is not allowed; choose one of {list(TRAINER_KINDS)} (trainer=real|simulated)")
    if kind == "real":
        return None
    build_spec(SimulatedSpec, trainer, "trainer")  # refuse bad ground truth before anything starts
    return trainer


class _Namespace:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _passes(expression: str, nested: dict[str, dict[str, Any]]) -> bool:
    namespace = {section: _Namespace(values) for section, values in nested.items()}
    return bool(eval(compile(ast.parse(expression, mode="eval"), "<filter>", "eval"), {"__builtins__": {}}, namespace))


def _tokens_for(kind: str, value: float, model: ModelSpec, batch_tokens: int) -> int:
    if kind == "tokens":
        tokens = value
    elif kind == "tokens_per_param":
        tokens = value * count_parameters(model).total
    else:  # flops: D = C / FLOPs per token
        tokens = value / flops_per_token(model)
    if tokens < batch_tokens:
        raise SpecError(f"sweep.budget.{kind}: {value:g} gives {tokens:.0f} tokens to a {model.width}-wide model, "
                        f"shorter than one step of train.batch_tokens={batch_tokens}")
    return round(tokens / batch_tokens) * batch_tokens  # whole optimiser steps


def _assign(sweep: SweepSpec, assignments) -> tuple[dict[str, dict[str, Any]], str]:
    """The base's sections with one combination's (key, value) pairs set, and the pairs as text."""
    pairs = [pair for group in assignments for pair in group]
    nested = {section: dict(values) for section, values in sweep.base.items()}
    for key, value in pairs:
        section, _, name = key.partition(".")
        nested[section][name] = value
    return nested, ", ".join(f"{k}={v}" for k, v in pairs)


def _unique_runs(sweep: SweepSpec, specs: list[RunSpec]) -> list[RunSpec]:
    """The specs in order without repeated run ids; refused when the filters left none."""
    runs, seen = [], set()
    for spec in specs:
        if spec.run_id() not in seen:
            seen.add(spec.run_id())
            runs.append(spec)
    if not runs:
        raise SpecError(f"sweep {sweep.name!r}: the filters drop every combination; nothing would run")
    return runs


def expand(sweep: SweepSpec) -> list[RunSpec]:
    """Every run of the sweep, in a stable order, without duplicates; errors name the failing combination.
    With recipes: every combination once per recipe (its overrides applied to the base), recipe by recipe."""
    if sweep.recipes:
        specs = []
        for name, overrides in sweep.recipes:
            try:
                specs += [dataclasses.replace(spec, recipe=name) for spec in expand(_recipe_sweep(sweep, overrides))]
            except SpecError as error:
                raise SpecError(f"sweep.recipes.{name}: {error}") from None
        return _unique_runs(sweep, specs)
    choices = [[((key, value),) for value in values] for key, values in sweep.axes]
    choices += [[tuple((key, values[i]) for key, values in group) for i in range(len(group[0][1]))]
                for group in sweep.zipped]
    budgets = sweep.budget_values or (None,)
    if sweep.cooldown_fraction is not None:
        return _expand_with_cooldowns(sweep, choices)
    specs = []
    for combination in itertools.product(*choices, budgets):
        *assignments, budget = combination
        nested, where = _assign(sweep, assignments)
        if not all(_passes(expression, nested) for expression in sweep.filters):
            continue
        try:
            if budget is not None:
                model = build_spec(ModelSpec, nested["model"], "model")
                batch = nested["train"].get("batch_tokens", TrainSpec().batch_tokens)
                nested["train"]["tokens"] = _tokens_for(sweep.budget_kind, budget, model, int(batch))
            spec = RunSpec.from_dict(nested | {"simulated": sweep.simulated})
        except SpecError as error:
            parts = [where] if where else []
            if budget is not None:
                parts.append(f"budget {sweep.budget_kind}={budget:g}")
            raise SpecError(f"sweep {sweep.name!r}: the combination ({', '.join(parts)}) is invalid: {error}") from None
        specs.append(spec)
    return _unique_runs(sweep, specs)


def _recipe_sweep(sweep: SweepSpec, overrides) -> SweepSpec:
    """The sweep with one recipe's overrides applied to its base (and to the simulated truth: trainer.*)."""
    base = {section: dict(values) for section, values in sweep.base.items()}
    simulated = None if sweep.simulated is None else dict(sweep.simulated)
    for key, value in overrides:
        section, _, name = key.partition(".")
        if section == "trainer":
            simulated[name] = value
        else:
            base[section][name] = value
    return dataclasses.replace(sweep, base=base, simulated=simulated, recipes=())


def _expand_with_cooldowns(sweep: SweepSpec, choices: list) -> list[RunSpec]:
    """One constant-LR run per combination of the axes, and one WSD cooldown fork of it per budget."""
    specs = []
    for assignments in itertools.product(*choices):
        nested, where = _assign(sweep, assignments)
        where = where or "the base"
        try:
            model = build_spec(ModelSpec, nested["model"], "model")
            batch = int(nested["train"].get("batch_tokens", TrainSpec().batch_tokens))
            cooldowns = []
            for budget in sweep.budget_values:
                tokens = _tokens_for(sweep.budget_kind, budget, model, batch)
                # Filters see each budget's train.tokens here, so a ladder can be a triangle in (N, D).
                if not all(_passes(e, nested | {"train": nested["train"] | {"tokens": tokens}}) for e in sweep.filters):
                    continue
                train = nested["train"] | {"tokens": tokens, "schedule": "wsd",
                                           "decay_fraction": sweep.cooldown_fraction,
                                           "decay_shape": sweep.cooldown_shape}
                cooldowns.append((budget, build_spec(TrainSpec, train, "train")))
            # The stable phase is a chain of constant-LR segments, one per fork step: segment k continues
            # segment k-1 from its last step, so a planner can buy (extend) the stable run one budget at a
            # time; the chain trains exactly what one long run would (a fork that keeps the schedule
            # reproduces its parent bit for bit).
            segments: dict[int, RunSpec] = {}
            previous = None
            for step in sorted({train.decay_start for _, train in cooldowns}):
                segment_train = nested["train"] | {"schedule": "constant", "tokens": step * batch}
                if previous is not None:
                    segment_train |= {"init_from": f"{previous.run_id()}@{previous.train.steps}"}
                previous = RunSpec.from_dict(nested | {"simulated": sweep.simulated} | {"train": segment_train})
                segments[step] = previous
            forks = []
            for _, train in cooldowns:
                parent = segments[train.decay_start]
                fork_train = dataclasses.asdict(train) | {"init_from": f"{parent.run_id()}@{train.decay_start}"}
                fork_train = {k: v for k, v in fork_train.items() if v is not None}
                forks.append(RunSpec.from_dict(nested | {"simulated": sweep.simulated} | {"train": fork_train}))
            chain = list(segments.values())
        except SpecError as error:
            raise SpecError(f"sweep {sweep.name!r}: the combination ({where}) with cooldowns is invalid: {error}") from None
        specs += [*chain, *forks]
    return _unique_runs(sweep, specs)


def check_fork(fork: RunSpec, parent: RunSpec | None, *, parent_steps_known: bool = True) -> None:
    """Refuse a fork that cannot continue its parent: unknown parent, another model or data, or an LR
    history that differs from the parent's before the fork step (the fork's schedule covers all its steps)."""
    parent_id, step = parse_init_from(fork.train.init_from)
    if parent is None:
        raise SpecError(f"train.init_from: run {parent_id} does not exist in this sweep or its ledger; "
                        "give the id of a run listed by `proxyscale status DIR`")
    if step > parent.train.steps:
        raise SpecError(f"train.init_from: run {parent_id} has {parent.train.steps} steps, so it has no checkpoint "
                        f"at step {step}; allowed: 1 to {parent.train.steps}")
    for section in ("model", "data", "simulated"):
        if getattr(fork, section) != getattr(parent, section):
            raise SpecError(f"train.init_from: the fork's {section} differs from run {parent_id}'s; "
                            f"a fork continues the same model on the same data")
    same = ("batch_tokens", "lr", "seed", "warmup_steps", "weight_decay", "beta1", "beta2", "eps")
    for name in same:
        if getattr(fork.train, name) != getattr(parent.train, name):
            raise SpecError(f"train.{name}: the fork has {getattr(fork.train, name)!r} but its parent {parent_id} "
                            f"has {getattr(parent.train, name)!r}; a fork keeps it")
    for index in range(step):
        if abs(lr_multiplier(index, fork.train) - lr_multiplier(index, parent.train)) > 1e-12:
            raise SpecError(f"train.schedule: the fork's LR at step {index + 1} differs from its parent {parent_id}'s "
                            f"(its schedule must equal the parent's up to step {step}; e.g. a wsd whose decay starts "
                            "at or after the fork step from a constant parent)")


def keep_steps_by_parent(runs: list[RunSpec]) -> dict[str, tuple[int, ...]]:
    """The steps each parent must keep a checkpoint at, for the forks among `runs`."""
    steps: dict[str, set[int]] = {}
    for spec in runs:
        if spec.train.init_from is not None:
            parent_id, step = parse_init_from(spec.train.init_from)
            steps.setdefault(parent_id, set()).add(step)
    return {parent_id: tuple(sorted(found)) for parent_id, found in steps.items()}


def plan_rows(runs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per run for the plan table: id, shape, N, D, FLOPs (its own), LR, schedule, parent."""
    rows = []
    for spec in runs:
        counts = count_parameters(spec.model)
        parent_id, parent_step = parse_init_from(spec.train.init_from) if spec.train.init_from else (None, None)
        rows.append({
            "run_id": spec.run_id(), "width": spec.model.width, "depth": spec.model.depth,
            "n_params": counts.total, "n_params_nonembedding": counts.non_embedding,
            "tokens": spec.train.steps * spec.train.batch_tokens, "flops": training_flops(spec),
            "lr": spec.train.lr, "batch_tokens": spec.train.batch_tokens, "schedule": spec.train.schedule,
            "parametrization": spec.model.parametrization, "seed": spec.train.seed,
            "parent_id": parent_id, "parent_step": parent_step,
        })
    return rows
