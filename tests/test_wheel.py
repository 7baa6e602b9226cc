"""The built wheel, installed into a fresh venv, works without the repository (issue 33).

In the normal suite (not `slow`): one wheel build and one `pip install --no-deps` per module, about half a
minute on 2 cores, most of it the short `proxyscale train`. The fresh venv gets the heavy dependencies
(torch, pandas, hydra, ...) from the running venv through a `.pth` line naming its site-packages: a path in a
`.pth` file is put on sys.path but is not a site directory, so the editable install's own `.pth` and finder
there stay inactive, and `import proxyscale` in the fresh venv fails until the wheel is installed.

Every command runs from a folder that holds a user's own `models/`, `analysis/` and `orchestrator/` packages
(which raise on import) and without the repository on PYTHONPATH: the wheel must need neither.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from proxyscale.orchestrator.cli import COMMANDS
from tests.conftest import ROOT, SHARED_DATA

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CHINCHILLA = SHARED_DATA / "chinchilla_epoch" / "svg_extracted_data.csv"
# What never goes into the build: the venv, VCS data, build and run outputs of a checkout.
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "runs", "outputs", "site", ".whl", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache")


def _run(command, *, cwd, env, timeout=120) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{command}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    return out


class Installed:
    def __init__(self, wheel: Path, python: Path, purelib: Path, cwd: Path, env: dict):
        self.wheel, self.python, self.purelib, self.cwd, self.env = wheel, python, purelib, cwd, env
        self.script = python.parent / "proxyscale"

    def run(self, *args, timeout=120, **env) -> subprocess.CompletedProcess:
        return _run(args, cwd=self.cwd, env=self.env | env, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the working tree: an in-tree build would leave build/ (whose stale files later builds
    # pick up) and a fresh egg-info in the checkout that other work shares.
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", tmp / "dist", source], cwd=tmp, env=dict(os.environ), timeout=300)
    [wheel] = (tmp / "dist").glob("proxyscale-*.whl")

    fresh = tmp / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", fresh], cwd=tmp, env=dict(os.environ))
    python = fresh / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PYTHONNOUSERSITE": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb"),
            "WANDB_SILENT": "true", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp, env=env).stdout.strip())
    (purelib / "_proxyscale_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # A user's project with folders of the names the repository uses; importing any of them is loud.
    cwd = tmp / "user_project"
    for name in ("models", "analysis", "orchestrator"):
        (cwd / name).mkdir(parents=True)
        (cwd / name / "__init__.py").write_text('raise ImportError("user\'s own package")\n')

    probe = subprocess.run([python, "-c", "import pandas, torch, hydra; import proxyscale"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0 and "No module named 'proxyscale'" in probe.stderr, (
        "the fresh venv sees proxyscale before the wheel is installed (the editable finder leaked in?)\n"
        + probe.stderr[-2000:])

    # --ignore-installed: the running venv's editable proxyscale is on the fresh venv's path (through the .pth);
    # pip must neither call the wheel already satisfied nor try to uninstall that one.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "-q", wheel], cwd=tmp, env=env, timeout=300)
    return Installed(wheel, python, purelib, cwd, env)


def test_wheel_holds_only_the_proxyscale_package(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"proxyscale", f"proxyscale-{VERSION}.dist-info"}
    for part in ("tests", "docs", "scripts", "deploy"):
        assert not [name for name in names if part in name.split("/")[:-1]], f"{part}/ is in the wheel"
    for package in ("models", "analysis", "orchestrator", "orchestrator/commands"):
        assert f"proxyscale/{package}/__init__.py" in names
    # The Hydra tree travels with the code (orchestrator/config.py looks for it one level above itself).
    assert "proxyscale/conf/config.yaml" in names and "proxyscale/sweeps/demo.yaml" in names
    assert f"proxyscale-{VERSION}.dist-info/licenses/LICENSE" in names


def test_imports_come_from_the_wheel_not_the_checkout_or_the_users_folders(installed):
    snippet = textwrap.dedent("""
        import json
        import proxyscale, proxyscale.models.train, proxyscale.analysis, proxyscale.orchestrator.config as config
        try:
            import models
        except ImportError as error:
            users = str(error)
        print(json.dumps({"files": [proxyscale.__file__, proxyscale.models.train.__file__,
                                    proxyscale.analysis.__file__, config.__file__],
                          "conf": str(config.CONF_DIR), "sweeps": str(config.SWEEPS_DIR), "users": users}))
    """)
    found = json.loads(installed.run(installed.python, "-c", snippet).stdout.strip().splitlines()[-1])
    purelib = installed.purelib.resolve()
    for file in found["files"]:
        assert Path(file).resolve().is_relative_to(purelib), file
    assert (Path(found["conf"]) / "config.yaml").is_file() and Path(found["conf"]).is_relative_to(purelib)
    assert (Path(found["sweeps"]) / "demo.yaml").is_file()
    assert found["users"] == "user's own package"


def test_console_script_help_and_version(installed):
    out = installed.run(installed.script, "--help").stdout
    for name in COMMANDS:
        assert name in out
    assert installed.run(installed.script, "--version").stdout.strip() == f"proxyscale {VERSION}"


def test_console_script_trains_a_tiny_proxy_with_the_packaged_configs(installed, tmp_path):
    installed.run(installed.script, "train", f"out_dir={tmp_path / 'run'}", "train.tokens=16384",
                  "train.batch_tokens=1024", "train.warmup_steps=2", "train.eval_interval_tokens=8192",
                  "train.eval_batches=2", "train.log_interval=4", "train.device=cpu", "model.width=32",
                  "model.depth=2", "model.n_heads=2", "model.seq_len=64", timeout=300)
    [result] = (tmp_path / "run").glob("*/result.json")
    result = json.loads(result.read_text())
    assert result["status"] == "finished" and result["steps"] == 16


@pytest.mark.skipif(not CHINCHILLA.is_file(), reason=f"no shared data at {SHARED_DATA} (the Chinchilla points)")
def test_public_fit_reproduces_the_chinchilla_replication(installed):
    # shared/data/README.md: drop the 5 highest-loss points; N = Model Size, D = Training FLOP / (6 N).
    snippet = textwrap.dedent(f"""
        import json
        import pandas
        import proxyscale
        raw = pandas.read_csv({str(CHINCHILLA)!r})
        raw = raw.drop(raw.nlargest(5, "loss").index)
        table = pandas.DataFrame({{"N": raw["Model Size"], "D": raw["Training FLOP"] / (6 * raw["Model Size"]),
                                   "loss": raw["loss"]}})
        fit = proxyscale.fit(table, n="N", d="D", loss="loss", law="chinchilla", bootstrap=0)
        print(json.dumps({{"E": fit.parameters["E"].value, "n": len(table), "file": proxyscale.__file__}}))
    """)
    found = json.loads(installed.run(installed.python, "-c", snippet, timeout=300).stdout.strip().splitlines()[-1])
    assert found["n"] == 240
    assert Path(found["file"]).resolve().is_relative_to(installed.purelib.resolve())
    assert found["E"] == pytest.approx(1.817, rel=0.01)
