"""`proxyscale compare`: recipes compared by their fitted laws at a target, with intervals and crossovers.

Recipes come from several sweep directories (one recipe each), from one sweep directory split by a config key
that varies (`--by data.path`), or from one CSV split by a column (`--csv F --by COL --n --d --loss`). Everything
is checked before any fitting: two recipes or more, enough runs for each law, one evaluation set and tokenizer
per recipe, and, in nats, the same ones across recipes (else `--metric bpb`); a table whose (recipe, N, D) cells
repeat (several evaluation sets or seeds pooled) is refused unless --where or --eval-set says which; at least
MIN_MEMBERS bootstrap members. The engine is `comparison()`, which `proxyscale.compare` calls too; the math is
analysis/compare.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.commands.common import METRICS, metric_label, open_ledger, print_json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare recipes (data sets, tokenizers, architectures) by their fitted "
                                              "laws at a target: P(a lower), P(best), crossover compute")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="sweep directories, one recipe each (or one, with --by KEY)")
    p.add_argument("--csv", help="a results table with a recipe column (--by)")
    p.add_argument("--by", help="the recipe: a column of --csv, or a config key that varies across one sweep "
                                "directory's runs (data.path, model.depth, ...)")
    p.add_argument("--n", help="CSV: column of parameter counts")
    p.add_argument("--d", help="CSV: column of training tokens")
    p.add_argument("--loss", help="CSV: column of final losses (nats per token, or bits per byte with --metric bpb)")
    p.add_argument("--flops", help="CSV: column of training FLOPs (the other of N / D follows from C = 6 N D)")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="CSV: keep only the rows whose column equals the value (repeatable; e.g. eval=c4_val)")
    p.add_argument("--eval-set", metavar="COL", help="CSV: column naming each run's evaluation set (checked: one per "
                                                     "recipe, the same across recipes in nats)")
    p.add_argument("--tokenizer", metavar="COL", help="CSV: column naming each run's tokenizer (checked as --eval-set)")
    p.add_argument("--metric", choices=list(METRICS), default="loss",
                   help="loss: nats per token (default; recipes must share the tokenizer and evaluation set); bpb: bits "
                        "per byte (compares tokenizers; a CSV's --loss column then holds bpb)")
    p.add_argument("--task", metavar="NAME", help="compare on a task metric through each recipe's task law "
                                                  "(docs/downstream.md): a CSV column, or a sweep's train.evals name; "
                                                  "an error in [0, 1] (lower is better) unless --accuracy")
    p.add_argument("--accuracy", action="store_true", help="--task is an accuracy (higher is better)")
    p.add_argument("--law", choices=["chinchilla", "overtraining"], default="chinchilla",
                   help="the law per recipe: chinchilla L(N, D) or Gadre et al.'s overtraining L(C, M)")
    p.add_argument("--share", choices=["auto", "E", "none"], default="auto",
                   help="auto: one E across recipes when the AICc says the data cannot tell their floors apart "
                        "(default); E: always; none: an E per recipe")
    p.add_argument("--target-flops", type=float, help="compare at this compute, each recipe at its compute-optimal N, D")
    p.add_argument("--target-n", type=float, help="compare at this N (with --target-d)")
    p.add_argument("--target-d", type=float, help="compare at this D (with --target-n)")
    p.add_argument("--decide-at", type=float, default=0.9,
                   help="a probability at or beyond this is a decision, below it 'no clear winner' (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap members per recipe (default: %(default)s; "
                                                               "fewer than analysis.predictive.MIN_MEMBERS are refused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PATH", help="write the figure (each recipe's law with its band, crossovers)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# ------------------------------------------------------------------------------------------------ input

def _recipe_error(error: Exception) -> SpecError:
    return SpecError(str(error))


def _check_identity(values: dict[str, set], what: str, metric: str, fix: str) -> bool:
    """One value per recipe (else a SpecError); True when every recipe has the same one. In nats, different
    values across recipes are refused with `fix`."""
    for name, found in values.items():
        if len(found) > 1:
            raise SpecError(f"recipe {name!r} has runs on {len(found)} {what}s ({sorted(map(str, found))}); one recipe "
                            f"is one {what}: {fix}")
    distinct = {next(iter(v)) for v in values.values() if v}
    return len(distinct) <= 1


def _refuse_in_nats(what: str, values: dict[str, set]) -> SpecError:
    shown = ", ".join(f"{k}: {next(iter(v))}" for k, v in values.items())
    return SpecError(f"the recipes are on different {what}s ({shown}); their losses in nats per token are not "
                     "comparable: use --metric bpb (bits per byte)")


def _parse_where(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise SpecError(f"--where {item!r}: give COL=VALUE (e.g. eval=c4_val)")
        out.append((column, value))
    return out


def recipes_from_table(table, *, by: str, n: str | None, d: str | None, loss: str, flops: str | None = None,
                       where: list[tuple[str, str]] = (), metric: str = "loss", task: str | None = None,
                       accuracy: bool = False, eval_set: str | None = None, tokenizer: str | None = None,
                       source: str = "the table"):
    """(recipes, same_eval, notes) from a table split by the column `by` (a DataFrame already read); every check
    is one SpecError line."""
    import numpy as np

    from proxyscale.analysis.compare import Recipe

    columns = [str(c) for c in table.columns]
    for option, name in (("--by", by), ("--eval-set", eval_set), ("--tokenizer", tokenizer), ("--task", task),
                         *(("--where", c) for c, _ in where)):
        if name is not None and name not in table.columns:
            raise SpecError(f"{option}: column {name!r} is not in {source}; its columns are {columns}")
    for column, value in where:
        kept = table[table[column].astype(str) == value]
        if kept.empty:
            values = sorted(map(str, table[column].unique()))[:12]
            raise SpecError(f"--where {column}={value}: no row of {source} has it; {column} takes {values}")
        table = kept
    c = table[flops].to_numpy(float) if flops else None
    n_values = table[n].to_numpy(float) if n else c / (6 * table[d].to_numpy(float))
    d_values = table[d].to_numpy(float) if d else c / (6 * n_values)
    loss_values = table[loss].to_numpy(float)
    task_values = None
    if task is not None:
        task_values = table[task].to_numpy(float)
        bad = ~np.isfinite(task_values) | (task_values < 0) | (task_values > 1)
        if bad.any():
            raise SpecError(f"--task: column {task!r} has {task_values[bad][0]!r}; a task metric is a fraction in [0, 1]")
        if accuracy:
            task_values = 1 - task_values
    labels = table[by].astype(str).to_numpy()
    recipes, evals, tokens = [], {}, {}
    for name in dict.fromkeys(labels):  # first-seen order
        rows = labels == name
        recipes.append(Recipe.of(name, n_values[rows], d_values[rows], loss_values[rows],
                                 None if task_values is None else task_values[rows]))
        if eval_set is not None:
            evals[name] = set(table[eval_set].astype(str).to_numpy()[rows])
        if tokenizer is not None:
            tokens[name] = set(table[tokenizer].astype(str).to_numpy()[rows])
    return recipes, *_identities(evals, tokens, metric, where_fix="keep one with --where COL=VALUE")


def repeated_cells(recipes) -> dict[str, int]:
    """Recipe name -> how many of its (N, D) cells hold more than one run (recipes with none left out)."""
    import numpy as np

    out = {}
    for r in recipes:
        _, counts = np.unique(np.stack([r.n, r.d], axis=1), axis=0, return_counts=True)
        if (counts > 1).any():
            out[r.name] = int((counts > 1).sum())
    return out


def _check_repeats(recipes, *, eval_set: str | None, where: list[tuple[str, str]], source: str) -> str | None:
    """A table's (recipe, N, D) cells that hold several rows are likely several evaluation sets (or seeds) pooled
    in one recipe; E is one evaluation text's floor, so pooled sets would share it wrongly. With --eval-set the
    recipes' sets are checked, so repeats are seeds: None. Without it and without --where, a SpecError; with
    --where (the user narrowed the rows but named no evaluation column), a note: E is then not shared."""
    if eval_set is not None:
        return None
    repeats = repeated_cells(recipes)
    if not repeats:
        return None
    shown = ", ".join(f"{name}: {count}" for name, count in list(repeats.items())[:4])
    if not where:
        raise SpecError(f"{source}: several rows per (recipe, N, D) cell ({shown} cells), likely several evaluation "
                        "sets or seeds pooled in one recipe: keep one with --where COL=VALUE, or name the evaluation "
                        "set's column with --eval-set COL")
    return (f"several rows per (recipe, N, D) cell ({shown} cells) and no --eval-set: taken as seeds, but they may be "
            "several evaluation sets, so E is not shared (name the set's column with --eval-set COL to check it)")


def _identities(evals: dict[str, set], tokens: dict[str, set], metric: str, where_fix: str) -> tuple[bool, list[str]]:
    """Check each recipe's evaluation set and tokenizer: (same evaluation text, notes)."""
    same_eval = _check_identity(evals, "evaluation set", metric, where_fix) if evals else True
    same_tokens = _check_identity(tokens, "tokenizer", metric, where_fix) if tokens else True
    notes = []
    if metric == "loss":
        if not same_tokens:
            raise _refuse_in_nats("tokenizer", tokens)
        if not same_eval:
            raise _refuse_in_nats("evaluation set", evals)
    elif not same_eval:
        notes.append("the recipes' evaluation sets differ: bits per byte compare them only as far as the texts are "
                     "alike; E is not shared")
    return same_eval, notes


def _spec_value(spec: dict, key: str):
    node: Any = spec
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return json.dumps(node, sort_keys=True) if isinstance(node, (dict, list)) else node


def _flat_keys(spec: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in spec.items():
        name = f"{prefix}{key}"
        out.extend(_flat_keys(value, name + ".") if isinstance(value, dict) else [name])
    return out


def _data_identity(spec: dict) -> tuple[str, str]:
    """(evaluation text, tokenizer) of a run from its spec: stdlib (bytes), a memmap's val file, or a prepared
    corpus's inputs and split (its manifest's fingerprint) and its tokenizer."""
    data, model = spec.get("data", {}), spec.get("model", {})
    kind = data.get("kind", "stdlib")
    if kind == "stdlib":
        return f"stdlib (val_every {data.get('val_every')})", "byte"
    if kind == "memmap":
        return f"memmap {data.get('val_path')}", f"memmap vocab {data.get('vocab_size') or model.get('vocab_size')}"
    manifest: dict = {}
    try:
        manifest = json.loads((Path(str(data.get("path"))) / "manifest.json").read_text())
    except (OSError, ValueError):
        pass  # a corpus moved or gone since the runs: identify it by its path and the run's manifest hash below
    fingerprint = manifest.get("fingerprint") or {}
    if fingerprint.get("inputs") is not None:
        text = json.dumps({k: fingerprint.get(k) for k in ("inputs", "val_fraction", "text_field", "errors")},
                          sort_keys=True)
        import hashlib

        text = f"prepared inputs {hashlib.sha256(text.encode()).hexdigest()[:12]}"
    else:
        text = f"prepared {data.get('path')}"
    tokenizer = (manifest.get("tokenizer") or {}).get("sha256") or fingerprint.get("tokenizer") or \
        f"manifest {str(data.get('manifest_hash'))[:12]}"
    return text, str(tokenizer)[:24]


def recipes_from_sweeps(dirs: list[str], *, by: str | None = None, metric: str = "loss", task: str | None = None,
                        accuracy: bool = False):
    """(recipes, same_eval, notes) from sweep directories: one recipe per directory, or, with `by`, one per value
    of that config key across one directory's finished runs."""
    import numpy as np

    from proxyscale.analysis.compare import Recipe
    from proxyscale.orchestrator.observations import finished_rows

    if by is not None and len(dirs) != 1:
        raise SpecError(f"--by {by}: splits ONE sweep directory by a config key; got {len(dirs)} directories (several "
                        "directories are one recipe each: drop --by)")
    groups: dict[str, list[tuple[dict, dict, float | None]]] = {}
    for directory in dirs:
        with open_ledger(directory, metric=metric) as ledger:
            rows = finished_rows(ledger)
            finals = ledger.final_evals() if task is not None else {}
        name = Path(directory).resolve().name
        if by is None and name in groups:
            name = str(Path(directory))
        for row in rows:
            spec = json.loads(row["spec_json"])
            value = None
            if task is not None:
                value = finals.get(row["run_id"], {}).get(task)
                if value is None:
                    names = sorted({k for v in finals.values() for k in v})
                    raise SpecError(f"--task {task}: run {row['run_id']} of {directory} has no final value of it; the "
                                    f"task metrics recorded are {names or 'none (train.evals)'}")
            if by is not None:
                label = _spec_value(spec, by)
                if label is KeyError:
                    keys = [k for k in _flat_keys(spec) if not k.startswith("simulated.")]
                    raise SpecError(f"--by {by}: not a config key of the runs of {directory}; keys are e.g. "
                                    f"{keys[:40]}")
                group = str(label)
            else:
                group = name
            groups.setdefault(group, []).append((row, spec, value))
    recipes, evals, tokens = [], {}, {}
    for name, members in groups.items():
        rows = [m[0] for m in members]
        metric_values = None
        if task is not None:
            metric_values = np.array([m[2] for m in members], float)
            if not ((metric_values >= 0) & (metric_values <= 1)).all():
                raise SpecError(f"--task {task}: recipe {name!r} has values outside [0, 1]; a task metric is a fraction")
            if accuracy:
                metric_values = 1 - metric_values
        recipes.append(Recipe.of(name, [r["n_params"] for r in rows], [r["tokens"] for r in rows],
                                 [r["final_eval_loss"] for r in rows], metric_values))
        identities = [_data_identity(m[1]) for m in members]
        evals[name] = {i[0] for i in identities}
        tokens[name] = {i[1] for i in identities}
    if by is not None and len(recipes) < 2:
        values = ", ".join(groups) or "none"
        raise SpecError(f"--by {by}: takes one value across the finished runs of {dirs[0]} ({values}); compare needs a "
                        "key that varies, or several sweep directories")
    return recipes, *_identities(evals, tokens, metric, where_fix="split it with --by, or give one directory per recipe")


# ------------------------------------------------------------------------------------------------ engine

def comparison(*, dirs: list[str] = (), table=None, csv: str | None = None, by: str | None = None, n: str | None = None,
               d: str | None = None, loss: str | None = None, flops: str | None = None,
               where: list[tuple[str, str]] = (), eval_set: str | None = None, tokenizer: str | None = None,
               metric: str = "loss", task: str | None = None, accuracy: bool = False, law: str = "chinchilla",
               share: str = "auto", target_flops: float | None = None, target_n: float | None = None,
               target_d: float | None = None, decide_at: float = 0.9, bootstrap: int = 1000, seed: int = 0):
    """The engine of `proxyscale compare` and `proxyscale.compare`: (Comparison, notes). Every input is checked
    (one SpecError line) before any fitting."""
    from proxyscale.analysis.compare import CompareInputError, Target, check_recipes, compare_at, fit_recipes
    from proxyscale.analysis.predictive import MIN_MEMBERS

    if metric not in METRICS:
        raise SpecError(f"--metric: {metric!r} is not allowed; choose one of {list(METRICS)}")
    if (target_flops is None) == (target_n is None and target_d is None) or (target_n is None) != (target_d is None):
        raise SpecError("compare: give --target-flops C, or --target-n N with --target-d D (one of the two)")
    if not 0.5 < decide_at < 1:
        raise SpecError(f"--decide-at: {decide_at!r}; it must lie in (0.5, 1), e.g. 0.9")
    if bootstrap < MIN_MEMBERS:
        # P(best), P(a lower) and every interval are shares and percentiles of the members: with none (the point
        # alone) or a handful they read 1.00 and zero width, a certainty nobody measured
        raise SpecError(f"--bootstrap: {bootstrap}; it must be >= {MIN_MEMBERS} members (fewer cannot state a "
                        "probability or an interval)")
    try:
        target = Target(flops=target_flops, n=target_n, d=target_d)
    except CompareInputError as error:
        raise _recipe_error(error) from None
    from_table = table is not None or csv is not None
    if from_table and dirs:
        raise SpecError("compare: give sweep directories or --csv, not both")
    if from_table:
        if by is None:
            raise SpecError("compare --csv: give --by COL, the column naming each run's recipe")
        if loss is None or (n is None and d is None) or ((n is None or d is None) and flops is None):
            raise SpecError("compare --csv: give --loss COL and --n COL --d COL (or one of them with --flops COL)")
        if csv is not None:
            from proxyscale.orchestrator.tables import Column, read_table

            named = {"--n": n, "--d": d, "--loss": loss, "--flops": flops}
            table = read_table(csv, [Column(option, name) for option, name in named.items() if name is not None],
                               min_rows=1, purpose="comparing recipes", repeats_allowed=True)
        else:
            missing = [c for c in (n, d, loss, flops) if c is not None and c not in table.columns]
            if missing:
                raise SpecError(f"compare: no column {missing[0]!r} in the table; its columns are "
                                f"{[str(c) for c in table.columns]}")
        recipes, same_eval, notes = recipes_from_table(
            table, by=by, n=n, d=d, loss=loss, flops=flops, where=list(where), metric=metric, task=task,
            accuracy=accuracy, eval_set=eval_set, tokenizer=tokenizer, source=csv or "the table")
        repeats = _check_repeats(recipes, eval_set=eval_set, where=list(where), source=csv or "the table")
        if repeats is not None:
            notes.append(repeats)
            share = "none"
    else:
        if not dirs:
            raise SpecError("compare: give two or more sweep directories, one with --by KEY, or --csv F --by COL")
        if where or eval_set or tokenizer:
            raise SpecError("--where, --eval-set and --tokenizer go with --csv (a sweep's runs say their own data)")
        recipes, same_eval, notes = recipes_from_sweeps(list(dirs), by=by, metric=metric, task=task, accuracy=accuracy)
    try:
        check_recipes(recipes, law)
        fits = fit_recipes(recipes, law=law, share=share, bootstrap=bootstrap, seed=seed, same_eval=same_eval,
                           metric=metric, task_name=task, higher_is_better=accuracy)
        result = compare_at(fits, target, decide_at=decide_at)
    except CompareInputError as error:
        raise _recipe_error(error) from None
    return result, notes


def run(args: argparse.Namespace) -> int:
    """Compare recipes at the target: each one's loss with its interval, each pair with P(a lower) and crossover."""
    result, notes = comparison(
        dirs=args.dirs, csv=args.csv, by=args.by, n=args.n, d=args.d, loss=args.loss, flops=args.flops,
        where=_parse_where(args.where), eval_set=args.eval_set, tokenizer=args.tokenizer, metric=args.metric,
        task=args.task, accuracy=args.accuracy, law=args.law, share=args.share, target_flops=args.target_flops,
        target_n=args.target_n, target_d=args.target_d, decide_at=args.decide_at, bootstrap=args.bootstrap,
        seed=args.seed)
    plot = None
    if args.plot:
        from proxyscale.analysis.compare import plot_comparison

        plot = str(plot_comparison(result, args.plot))
    if args.json:
        print_json(result.to_dict() | {"notes": notes, "plot": plot})
        return 0
    print(f"compare: {metric_label(args.metric)}, {args.bootstrap} bootstrap members per recipe, 95% intervals")
    for line in result.lines():
        print(line)
    for note in notes:
        print(f"note: {note}")
    if plot:
        print(f"figure: {plot}")
    return 0
