"""MkDocs hook: the CLI and config references, generated at build time so they cannot drift.

- `reference/cli.md` walks `orchestrator.cli.build_parser()`: every subcommand's help, usage and arguments.
- `reference/config.md` walks the Hydra tree in conf/ (every group, option and key with its comments) and adds
  the field docstrings of the dataclass that validates each group (found by class name with `ast`, so nothing
  but the CLI is imported), and the sweeps in sweeps/ with the grammar of their `sweep:` block.

Neither page is written to docs/: they exist only in the built site (`mkdocs build`, `scripts/docs.sh`).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]

# The dataclass that validates each config group (by class name; searched in these packages).
GROUP_CLASSES = {
    "model": "ModelSpec",
    "train": "TrainSpec",
    "data": "DataSpec",
    "trainer": "SimulatedSpec",
    "cluster": "ClusterSettings",
    "planner": "ActiveSettings",
}
PACKAGES = ("models", "orchestrator", "analysis")
GROUP_ORDER = ("model", "train", "data", "cluster", "tracking", "trainer", "planner")


@event_priority(100)  # before mkdocstrings reads its `paths`
def on_config(config):
    """Lay out the installed package for mkdocstrings' reader (griffe) as Python sees it: griffe finds a package by
    its folder, and the repository's proxyscale/ holds only the API, while proxyscale.models, .analysis and
    .orchestrator are the folders models/, analysis/, orchestrator/ (pyproject's package-dir). A tree of links
    under .api-src/ (mkdocs.yml's `paths`) mirrors the mapping; it is found through the import system, so it
    points at whatever proxyscale is installed, editable or not."""
    import importlib.util
    import shutil

    tree = Path(config.config_file_path).parent / ".api-src" / "proxyscale"
    shutil.rmtree(tree.parent, ignore_errors=True)
    tree.mkdir(parents=True)
    top = Path(importlib.util.find_spec("proxyscale").origin).parent
    for entry in top.iterdir():
        if entry.suffix == ".py":
            (tree / entry.name).symlink_to(entry)
    for package in PACKAGES:
        (tree / package).symlink_to(Path(importlib.util.find_spec(f"proxyscale.{package}").origin).parent)
    return config


def on_files(files, config):
    for path, text in (("reference/cli.md", cli_reference()), ("reference/config.md", config_reference())):
        files.append(File.generated(config, path, content=text))
    return files


# ---------------------------------------------------------------- CLI


def _cell(text: Any) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _expand(text: str) -> str:
    """argparse's own expansion of a help string ('95%%' -> '95%')."""
    try:
        return text % {}
    except (KeyError, TypeError, ValueError):
        return text.replace("%%", "%")


def _subparsers(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: _expand(choice.help or "") for choice in action._choices_actions}
            return dict(action.choices), helps
    return {}, {}


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | help | default |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(action.option_strings) or action.dest
        if action.metavar and not action.option_strings:
            name = action.metavar if isinstance(action.metavar, str) else action.dest
        if action.option_strings and action.nargs != 0:
            metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices
                                         else action.dest.upper())
            name += f" {metavar}" if isinstance(metavar, str) else ""
        help_text = (action.help or "") if action.help != argparse.SUPPRESS else ""
        try:
            help_text = help_text % {**vars(action), "prog": parser.prog}
        except (KeyError, TypeError, ValueError):
            pass
        if action.choices and not action.option_strings:
            help_text += f" (one of {', '.join(map(str, action.choices))})"
        default = action.default
        shown = "" if default is None or default is False or default == argparse.SUPPRESS else f"`{default}`"
        rows.append(f"| `{_cell(name)}` | {_cell(help_text)} | {_cell(shown)} |")
    return rows


def cli_reference() -> str:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("COLUMNS", "100")
    from proxyscale.orchestrator.cli import build_parser

    parser = build_parser()
    commands, helps = _subparsers(parser)
    lines = [
        "# CLI reference",
        "",
        "Generated when the site is built, from the parsers `proxyscale --help` prints "
        "(`orchestrator.cli.build_parser()`), so it cannot drift from the code. `train` and `launch` also "
        "take Hydra overrides (`key=value`; every key is in the [config reference](config.md)).",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{name}`](#{_slug(name)}) | {_cell(helps.get(name, ''))} |" for name in commands]
    for name, sub in commands.items():
        lines += ["", f"## {name}", ""]
        if helps.get(name):
            lines += [helps[name].strip(), ""]
        lines += ["```text", sub.format_help().rstrip(), "```", ""]
        lines += _argument_rows(sub)
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-")


# ---------------------------------------------------------------- config


def _class_fields(class_name: str) -> tuple[str, dict[str, dict[str, str]], str] | None:
    """(path, {field: {annotation, default, doc}}, class docstring) of a dataclass, read with ast."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name == class_name:
                    return str(path.relative_to(ROOT)), _fields_of(node), ast.get_docstring(node) or ""
    return None


def _fields_of(node: ast.ClassDef) -> dict[str, dict[str, str]]:
    fields: dict[str, dict[str, str]] = {}
    body = node.body
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            doc = ""
            following = body[i + 1] if i + 1 < len(body) else None
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                doc = " ".join(following.value.value.split())
            default = ast.unparse(stmt.value) if stmt.value is not None else ""
            fields[stmt.target.id] = {"annotation": ast.unparse(stmt.annotation), "default": default, "doc": doc}
    return fields


def _yaml_keys(path: Path) -> tuple[str, list[tuple[str, Any, str]]]:
    """(header comment, [(dotted key, value, comment)]) of a YAML file: the first comment block is the
    file's header; a comment block right above a key, and a comment at the end of its line, describe it."""
    text = path.read_text()
    values = yaml.safe_load(text) or {}
    header: list[str] = []
    pending: list[str] = []
    comments: dict[str, str] = {}
    seen_key = False
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            comment = stripped.lstrip("#").strip()
            if comment.startswith("@package"):
                continue
            pending.append(comment)
            continue
        if not stripped:
            if not seen_key and pending:
                header, pending = header + pending, []
            continue
        if not seen_key and pending and not header:
            header, pending = pending, []
        seen_key = True
        indent = len(raw) - len(raw.lstrip())
        if stripped.startswith("- ") or ":" not in stripped:
            pending = []
            continue
        key = stripped.split(":", 1)[0].strip().strip("'\"")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        inline = ""
        rest = stripped.split(":", 1)[1]
        if " #" in rest:
            inline = rest.split(" #", 1)[1].strip()
        comments[dotted] = " ".join(pending + ([inline] if inline else []))
        pending = []
    keys = []
    for dotted, comment in comments.items():
        value: Any = values
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        keys.append((dotted, value, comment))
    return " ".join(header), keys


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "(a block)"
    if value == "???":
        return "required (`???`)"
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`{value}`"


def _group_section(group: str) -> list[str]:
    options = sorted((ROOT / "conf" / group).glob("*.yaml"))
    found = _class_fields(GROUP_CLASSES[group]) if group in GROUP_CLASSES else None
    fields = found[1] if found else {}
    lines = [f"## {group}", ""]
    lines.append(f"Options ({group}=NAME): " + ", ".join(f"`{o.stem}`" for o in options) + ".")
    if found:
        lines.append(f"Validated by `{GROUP_CLASSES[group]}` in `{found[0]}`" +
                     (f": {' '.join(found[2].split())}" if found[2] else "."))
    lines.append("")
    per_option: dict[str, dict[str, tuple[Any, str]]] = {}
    for option in options:
        header, keys = _yaml_keys(option)
        lines += [f"### {group}={option.stem}", "", header or "(no description in the file)", ""]
        per_option[option.stem] = {key: (value, comment) for key, value, comment in keys}
        if not keys:
            continue
        lines += ["| key | value | type | comment in conf/ | docstring |", "|---|---|---|---|---|"]
        for key, value, comment in keys:
            field = fields.get(key, {})
            kind = _cell(field["annotation"]) if field else ""  # plain text: a pipe in code would show its backslash
            lines.append(f"| `{group}.{key}` | {_cell(_show(value))} | {kind} | {_cell(comment)} | "
                         f"{_cell(field.get('doc', ''))} |")
        lines.append("")
    in_files = {key for keys in per_option.values() for key in keys}
    extra = [name for name in fields if name not in in_files]
    if extra:
        lines += [f"### Keys of `{GROUP_CLASSES[group]}` set in no file of conf/{group}/", "",
                  f"Settable on the command line as `{group}.KEY=VALUE` (or in a sweep file); the default applies otherwise.",
                  "", "| key | type | default | description |", "|---|---|---|---|"]
        for name in extra:
            field = fields[name]
            lines.append(f"| `{group}.{name}` | {_cell(field['annotation'])} | `{_cell(field['default'])}` | "
                         f"{_cell(field['doc'])} |")
        lines.append("")
    return lines


def _sweep_section() -> list[str]:
    lines = ["## sweep", "",
             "A sweep is a file in `sweeps/` (or in a directory of `$PROXYSCALE_SWEEP_PATH`) selected with "
             "`sweep=NAME`. It may set any `model.*`, `train.*`, `data.*` key and the root keys, and its "
             "`sweep:` block says what varies. The grammar, from `orchestrator/sweep.py`:", ""]
    found = None
    path = ROOT / "orchestrator" / "sweep.py"
    if path.exists():
        found = ast.get_docstring(ast.parse(path.read_text()))
    if found:
        lines += ["```text", found.strip(), "```", ""]
    lines += ["| sweep | description |", "|---|---|"]
    for sweep in sorted((ROOT / "sweeps").glob("*.yaml")):
        header, keys = _yaml_keys(sweep)
        values = yaml.safe_load(sweep.read_text()) or {}
        description = (values.get("sweep") or {}).get("description") or ""
        text = "; ".join(part for part in (description, header) if part)
        lines.append(f"| `sweep={sweep.stem}` | {_cell(text)} |")
    lines.append("")
    return lines


def config_reference() -> str:
    root_header, root_keys = _yaml_keys(ROOT / "conf" / "config.yaml")
    groups = [g for g in GROUP_ORDER if (ROOT / "conf" / g).is_dir()]
    groups += sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name not in groups)
    lines = [
        "# Config reference",
        "",
        "Generated when the site is built from the Hydra tree in `conf/` (every group, option and key, with "
        "the comments found there) and the docstrings of the dataclasses that validate them, so it cannot "
        "drift. Override any key on the command line of `proxyscale train` or `proxyscale launch` "
        "(`model.width=128`), pick a group's option with `GROUP=NAME` (`model=proxy_1m`), and see the "
        "composed config with `--cfg job`. Unknown keys and bad values are refused before anything runs, "
        "naming the key and the allowed values.",
        "",
        "## Root keys (`conf/config.yaml`)",
        "",
        root_header,
        "",
        "| key | default | description |",
        "|---|---|---|",
    ]
    for key, value, comment in root_keys:
        if key == "defaults":
            default_list = ", ".join(f"`{item}`" if not isinstance(item, dict)
                                     else ", ".join(f"`{k}: {v}`" for k, v in item.items()) for item in value)
            lines.append(f"| `defaults` | {_cell(default_list)} | the default option of each group |")
            continue
        lines.append(f"| `{key}` | {_cell(_show(value))} | {_cell(comment)} |")
    lines.append("")
    for group in groups:
        lines += _group_section(group)
    lines += _sweep_section()
    return "\n".join(lines) + "\n"
