"""The import graph of models/, analysis/ and orchestrator/ (design.md, "Which package may import which"):
no module imports itself back through others, counting imports inside functions (a function-level import
is how a circle hides), and each package imports only what design.md allows it.

The graph is read with `ast` from the source, so nothing is imported and the test takes well under a second.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "analysis", "orchestrator")
"""The repository's folders; installed, they are the subpackages proxyscale.models, ... (docs/layout.md)."""


@dataclass(frozen=True)
class ImportEdge:
    source: str
    """The importing module, dotted (orchestrator.commands.fit)."""
    target: str
    """The imported name as written, made absolute (analysis.lr_grid.optimal_lr, or a third-party module)."""
    line: int


def module_name(path: Path) -> str:
    """The dotted import name of a source file: models/gpt.py is proxyscale.models.gpt, proxyscale/api.py is
    proxyscale.api (pyproject's package-dir maps the folders into the one namespace)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "proxyscale" else ("proxyscale", *parts))


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in (*PACKAGES, "proxyscale") for p in sorted((ROOT / package).rglob("*.py"))}


def subpackage(dotted: str) -> str:
    """proxyscale.analysis.fit -> analysis; proxyscale.api -> proxyscale (the public API); numpy.linalg -> numpy."""
    parts = dotted.split(".")
    if parts[0] == "proxyscale" and len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    return parts[0]


def imports_of(name: str, path: Path) -> list[ImportEdge]:
    """Every import statement in the file, at any depth (module level, in functions, in classes)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            edges += [ImportEdge(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from analysis import plots` imports the module analysis.plots; `from a.b import f`, the module a.b.
            edges += [ImportEdge(name, f"{base}.{alias.name}" if base else alias.name, node.lineno)
                      for alias in node.names]
    return edges


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (the longest dotted prefix that is a module), else None."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, list[int]]]:
    """module -> {imported project module: [lines]}."""
    graph: dict[str, dict[str, list[int]]] = {name: {} for name in modules}
    for name, path in modules.items():
        for edge in imports_of(name, path):
            target = resolve(edge.target, modules)
            if target is not None and target != name:
                graph[name].setdefault(target, []).append(edge.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is a circle (or several sharing modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, dict[str, list[int]]], modules: dict[str, Path]) -> str:
    members = set(component)
    lines = [f"  {a} -> {b} ({modules[a].relative_to(ROOT)} line {', '.join(map(str, sorted(set(graph[a][b]))))})"
             for a in component for b in sorted(graph[a]) if b in members]
    return "import circle among " + ", ".join(component) + ":\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------- the checks

def test_graph_reader_sees_function_level_imports_and_circles(tmp_path):
    """The reader itself: a circle closed only by an import inside a function is found, and a chain is not one."""
    modules = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py", "pkg.c": tmp_path / "c.py"}
    modules["pkg.a"].write_text("from pkg.b import f\n")
    modules["pkg.b"].write_text("import numpy\n\ndef f():\n    from pkg.c import g\n    return g\n")
    modules["pkg.c"].write_text("def g():\n    from pkg import a\n    return a\n")
    graph = import_graph(modules)
    assert graph["pkg.b"] == {"pkg.c": [4]}
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    modules["pkg.c"].write_text("import pkg.zzz\n")
    assert strongly_connected(import_graph(modules)) == []


def test_no_import_circles():
    modules = project_modules()
    assert {"proxyscale.models.gpt", "proxyscale.analysis.fit", "proxyscale.orchestrator.cli"} <= set(modules)
    graph = import_graph(modules)
    assert sum(len(v) for v in graph.values()) > 100, "the reader found too few imports to be reading the tree"
    circles = strongly_connected(graph)
    assert not circles, "\n".join(describe(c, graph, modules) for c in circles)


def third_party(package: str) -> dict[str, list[str]]:
    """Top-level name of every non-stdlib module a package imports -> where ('path:line')."""
    modules = project_modules()
    found: dict[str, list[str]] = {}
    for name, path in modules.items():
        if subpackage(name) != package:
            continue
        for edge in imports_of(name, path):
            top = subpackage(edge.target)
            if top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{edge.line}")
    return found


# design.md: models/ imports torch and numpy only; analysis/ numpy, scipy, pandas, matplotlib only (no torch, Ray,
# W&B: it works on a results table); orchestrator/ may import models and analysis, and is the only place with
# Hydra, Ray and W&B.
ALLOWED = {
    "models": {"models", "torch", "numpy"},
    "analysis": {"analysis", "numpy", "scipy", "pandas", "matplotlib"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(package):
    imported = third_party(package)
    assert "numpy" in imported, f"{package}: the reader found no numpy import; it is not reading the package"
    extra = {top: where for top, where in imported.items() if top not in ALLOWED[package]}
    assert not extra, (f"{package}/ may import only {sorted(ALLOWED[package])} (design.md); found "
                       + "; ".join(f"{top} at {', '.join(where)}" for top, where in sorted(extra.items())))


@pytest.mark.parametrize("library, home", [("ray", "orchestrator/execution.py"), ("wandb", "orchestrator/tracking.py")])
def test_ray_and_wandb_live_in_one_module(library, home):
    where = {site.rpartition(":")[0] for site in third_party("orchestrator").get(library, [])}
    assert where == {home}, f"{library} is imported from {sorted(where)}; design.md keeps it in {home} only"


def test_hydra_only_in_orchestrator():
    for package in ("models", "analysis"):
        imported = third_party(package)
        assert not {"hydra", "omegaconf"} & set(imported), f"{package}/ imports Hydra: only orchestrator/ may"
    assert "hydra" in third_party("orchestrator")


def test_every_project_import_is_in_the_proxyscale_namespace():
    """Installed, proxyscale owns one import name: an import of a bare `models`, `analysis` or `orchestrator`
    would find the user's own folder of that name (most research repos have a models/), or fail."""
    bare = [f"{path.relative_to(ROOT)}:{edge.line} imports {edge.target}"
            for name, path in project_modules().items() for edge in imports_of(name, path)
            if edge.target.split(".")[0] in PACKAGES]
    assert not bare, "import these as proxyscale.<package>: " + "; ".join(bare)


def test_the_library_does_not_import_the_public_api():
    """proxyscale/__init__.py and proxyscale/api.py sit above everything (they import the commands' engines);
    a module below importing them back would make `import proxyscale.models` load the whole tool."""
    api = {"proxyscale", "proxyscale.api"}
    graph = import_graph(project_modules())
    upward = [f"{source} -> {target}" for source, targets in sorted(graph.items()) if source not in api
              for target in targets if target in api]
    assert not upward, "; ".join(upward)


def test_only_the_command_line_imports_the_commands():
    """The commands sit on top: the library below them (models/, analysis/, orchestrator/ outside commands/) never
    imports one, so a ledger reader or the live view does not drag in a command's argument handling."""
    modules = project_modules()
    graph = import_graph(modules)
    # The Python API (proxyscale/api.py) sits beside the command line, on the same engines.
    top = ("proxyscale.orchestrator.cli", "proxyscale.orchestrator.commands", "proxyscale.orchestrator.__main__",
           "proxyscale.api", "proxyscale.__main__")
    upward = [f"{source} -> {target} (line {lines[0]})" for source, targets in sorted(graph.items())
              if not source.startswith(top) for target, lines in sorted(targets.items())
              if target.startswith("proxyscale.orchestrator.commands")]
    assert not upward, "modules below the commands import them: " + "; ".join(upward)
