"""The documentation: the site builds with --strict, its references come from the code, the README stays short.

The MkDocs build is the one scripts/docs.sh runs (mkdocs build --strict), into a temporary directory, so a
broken link or anchor, a page missing from the nav or a hook that fails breaks the suite. A second build of a
copy of docs/ with one broken link shows that --strict does catch it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _mkdocs(config_dir: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=config_dir,
                          env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs-material is not installed: run `bash scripts/setup.sh` (it installs the docs extra)")
    out = tmp_path_factory.mktemp("site")
    built = _mkdocs(ROOT, out)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def _text(html: Path) -> str:
    return re.sub(r"<[^>]+>", "", html.read_text())


def test_the_site_builds_strict_with_every_page_of_the_nav(site):
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(entries):
        for entry in entries:
            for value in entry.values():
                yield from (pages(value) if isinstance(value, list) else [value])

    for page in pages(nav):
        html = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.exists(), f"{page} in the nav was not built"
    assert not (site / "hooks").exists(), "the build hook must not be published"


def test_the_cli_reference_has_every_command_and_flag_of_the_parser(site):
    from proxyscale.orchestrator.cli import build_parser

    text = _text(site / "reference" / "cli" / "index.html")
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert len(sub.choices) >= 10
    for name, command in sub.choices.items():
        assert f"proxyscale {name}" in text, name
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in text, f"{name} {flag}"


def test_the_config_reference_has_every_group_option_and_key(site):
    from proxyscale.models.spec import DataSpec, ModelSpec, SimulatedSpec, TrainSpec

    text = _text(site / "reference" / "config" / "index.html")
    for group_dir in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir()):
        for option in sorted(group_dir.glob("*.yaml")):
            assert f"{group_dir.name}={option.stem}" in text, option
            for key in yaml.safe_load(option.read_text()) or {}:
                assert f"{group_dir.name}.{key}" in text, f"{option}: {key}"
    for group, spec in (("model", ModelSpec), ("train", TrainSpec), ("data", DataSpec), ("trainer", SimulatedSpec)):
        for field in dataclasses.fields(spec):
            assert f"{group}.{field.name}" in text, f"{group}.{field.name}"
    # A field docstring reaches the page (from models/spec.py, not from conf/).
    assert "Residual-branch exponent" in text
    for sweep in sorted((ROOT / "sweeps").glob("*.yaml")):
        assert f"sweep={sweep.stem}" in text, sweep


def test_strict_fails_on_a_broken_link(tmp_path):
    for entry in ROOT.iterdir():
        if entry.name in ("docs", ".git", ".venv", "runs", "site") or entry.name.startswith("."):
            continue
        (tmp_path / entry.name).symlink_to(entry)
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("figures"))
    (tmp_path / "docs" / "figures").symlink_to(ROOT / "docs" / "figures")
    with open(tmp_path / "docs" / "index.md", "a") as page:
        page.write("\nSee [a page that does not exist](no_such_page.md).\n")
    built = _mkdocs(tmp_path, tmp_path / "site")
    assert built.returncode != 0
    assert "no_such_page.md" in built.stdout + built.stderr


def test_the_readme_is_short_and_keeps_the_demo_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the limit is 300 (move text to docs/)"
    readme = README.read_text()
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    commands = re.findall(r"\.venv/bin/(proxyscale [a-z-]+[^\n;|&]*)", demo)
    assert len(commands) >= 4
    for command in commands:
        command = command.replace('"$sweep_dir"', "runs/demo").replace('"$@"', "").strip()
        assert command in readme, f"scripts/demo.sh runs `{command}`; the README must name it"
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme


@pytest.mark.parametrize(("page", "needles"), [
    ("docs/fitting.md", ["proxyscale fit --csv"]),                        # (a) fit a CSV of published results
    ("docs/forks.md", ["sweep.cooldowns", "train.init_from="]),           # (b) fork cooldowns from a stable run
    ("docs/cluster.md", ["cluster.address=auto"]),                       # (c) join a running Ray cluster
])
def test_a_newcomer_finds_the_task_from_the_readme(page, needles):
    """The README links the page, and the page holds the command."""
    assert f"]({page})" in README.read_text(), f"the README does not link {page}"
    text = (ROOT / page).read_text()
    for needle in needles:
        assert needle in text, f"{page} does not show `{needle}`"


def public_api_members() -> list[tuple[str, object]]:
    """Every public name of the Python API (proxyscale.__all__) and the public methods and properties of its
    classes, including the fit object `proxyscale.fit` returns."""
    import inspect

    import proxyscale
    from proxyscale.analysis.table_fit import TableFit

    members = [(f"proxyscale.{name}", getattr(proxyscale, name)) for name in proxyscale.__all__ if name != "__version__"]
    classes = [obj for _, obj in members if inspect.isclass(obj)] + [TableFit]
    for cls in classes:
        for name, attribute in vars(cls).items():
            if not name.startswith("_") and (callable(attribute) or isinstance(attribute, property)):
                members.append((f"{cls.__qualname__}.{name}", attribute))
    return members


def test_every_public_function_of_the_api_has_a_docstring():
    undocumented = [name for name, obj in public_api_members()
                    if not (getattr(obj, "__doc__", None) or "").strip()]
    assert len(public_api_members()) >= 10, "the reader found too few public names to be reading the API"
    assert not undocumented, f"public API without a docstring (the reference page is built from them): {undocumented}"


def test_the_api_reference_page_is_built_from_the_docstrings(site):
    page = (site / "api" / "index.html").read_text()
    import proxyscale.api

    # A sentence of fit's docstring reaches the page, and so does a method of the object it returns.
    assert proxyscale.api.fit.__doc__.split(":")[0].split("\n")[0].strip() in page
    assert "compute_optimal" in page and "open_sweep" in page
