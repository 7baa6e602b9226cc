"""`proxyscale --help` and `proxyscale CMD --help` for every command: the next stray `%` in a help string
(argparse reads it as a format) fails here, not in front of a user."""

from __future__ import annotations

import tomllib

import pytest

from proxyscale.orchestrator.cli import COMMANDS, main
from tests.conftest import ROOT


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_working_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert f"proxyscale {command}" in out
    # A description is not %-formatted by argparse, so an escaped '%%' there reaches the user as is.
    assert "%%" not in out


def test_version_is_pyprojects(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"proxyscale {version}"
