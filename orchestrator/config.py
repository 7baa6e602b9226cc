"""Hydra composition: the config tree in conf/ turned into typed specs at the CLI boundary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from models.spec import RunSpec, SpecError
from orchestrator.sweep import simulated_truth

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SWEEPS_DIR = Path(__file__).resolve().parents[1] / "sweeps"


def register_sweeps(sweeps_dir: Path = SWEEPS_DIR) -> list[str]:
    """Put every sweeps/NAME.yaml in Hydra's config store as option NAME of the group `sweep`.

    Directories in $PROXYSCALE_SWEEP_PATH (os.pathsep-separated) add sweeps of the user's own.
    Sweep files are `@package _global_`: besides their `sweep:` block they may set model/train/data
    keys, which override the groups' defaults and are overridden by the command line.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    names = []
    extra = [Path(p) for p in os.environ.get("PROXYSCALE_SWEEP_PATH", "").split(os.pathsep) if p]
    paths = sorted(sweeps_dir.glob("*.yaml")) + [f for d in extra for f in sorted(d.glob("*.yaml"))]
    for path in paths:
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")
        names.append(path.stem)
    return names


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """Compose conf/config.yaml (and the selected sweep) with command-line overrides, as a Hydra app would."""
    register_sweeps()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise SpecError(f"bad override: {error}") from error


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise SpecError(f"{error.full_key}: is required (it has no default); set it on the command line") from error


def run_spec_from_config(cfg: DictConfig) -> RunSpec:
    plain = to_plain(cfg)
    sections = {key: plain[key] for key in ("model", "train", "data")}
    return RunSpec.from_dict(sections | {"simulated": simulated_truth(plain)})
