"""Hydra composition: the config tree in conf/ turned into typed specs at the CLI boundary."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from proxyscale.models.spec import RunSpec, SpecError
from proxyscale.orchestrator.sweep import SweepSpec, simulated_truth

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
    """Compose conf/config.yaml (and the selected sweep) with command-line overrides, as a Hydra app would.

    Hydra's own errors span several lines (and `sweep=NAME`, an optional group, composes without one
    when NAME is not a sweep); each becomes one SpecError line naming the override and the fix.
    """
    _check_sweep_exists(overrides, register_sweeps())
    try:
        return _compose(overrides, config_name)
    except (HydraException, OmegaConfBaseException) as error:
        raise SpecError(_override_message(error, list(overrides), config_name)) from error


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _did_you_mean(value: str, choices: list[str]) -> str:
    hint = difflib.get_close_matches(value, choices, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _check_sweep_exists(overrides: list[str], names: list[str]) -> None:
    for item in overrides:
        key, has_value, name = item.lstrip("+").partition("=")
        if key == "sweep" and has_value and name not in names and name != "null":
            search = os.environ.get("PROXYSCALE_SWEEP_PATH") or "not set"
            raise SpecError(f"sweep={name}: no such sweep; the sweeps are {', '.join(sorted(set(names))) or 'none'} "
                            f"(NAME.yaml files in {SWEEPS_DIR} and in the directories of $PROXYSCALE_SWEEP_PATH, "
                            f"now {search})" + _did_you_mean(name, names))


def _override_message(error: Exception, overrides: list[str], config_name: str) -> str:
    """One line for Hydra's multi-line composition errors: the override, what is wrong, the fix."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(error)
    if isinstance(error, MissingConfigException) and error.options is not None:
        found = re.search(r"Could not find '(.+)/([^/']+)'", text)
        if found:
            group, name = found.groups()
            return (f"{group}={name}: no such option of {group}; the options are {', '.join(error.options)}"
                    + _did_you_mean(name, list(error.options)))
    if isinstance(error, OverrideParseException):
        for item in overrides:
            try:
                OverridesParser.create().parse_overrides([item])
            except OverrideParseException as bad:
                return (f"{item!r} is not a valid override ({str(bad).splitlines()[0]}); write key=value, quoting "
                        "values with spaces or brackets: https://hydra.cc/docs/advanced/override_grammar/basic/")
    found = re.match(r"Could not override '([^']+)'", text)
    if found:
        key = found.group(1)
        cause = re.search(r"full_key: (\S+)", str(error.__cause__ or ""))
        full_key = cause.group(1) if cause else key
        item = next((o for o in overrides if o.partition("=")[0] == key), key)
        rest = [o for o in overrides if o != item]
        try:
            known = _flat_keys(OmegaConf.to_container(_compose(rest, config_name), resolve=False))
        except (HydraException, OmegaConfBaseException):
            known = []
        return (f"{item}: {full_key} is not a setting" + _did_you_mean(full_key, known)
                + " (`proxyscale launch sweep=NAME --cfg job` prints every key)")
    found = re.match(r"Could not append to config. An item is already at '([^']+)'", text)
    if found:
        item = next((o for o in overrides if o.lstrip("+").partition("=")[0] == found.group(1)), found.group(1))
        return f"{item}: {found.group(1)} already exists, so it cannot be added; drop the +: {item.lstrip('+')}"
    return "bad override: " + "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix] if prefix else []
    return [key for name, value in node.items() for key in _flat_keys(value, f"{prefix}{name}." if isinstance(value, dict)
                                                                       else f"{prefix}{name}")]


def check_not_swept(overrides: list[str], sweep: SweepSpec) -> None:
    """A command-line value of a key the sweep sets per run would be silently replaced: refuse it."""
    varied = {key: values for key, values in sweep.axes}
    for group in sweep.zipped:
        varied |= dict(group)
    if sweep.budget_kind is not None:
        varied["train.tokens"] = f"from sweep.budget.{sweep.budget_kind} [{', '.join(f'{v:g}' for v in sweep.budget_values)}]"
    for item in overrides:
        key = item.lstrip("+").partition("=")[0]
        if key in varied:
            values = varied[key]
            shown = values if isinstance(values, str) else f"its values {list(values)}"
            raise SpecError(f"{item}: sweep {sweep.name!r} sets {key} for each run ({shown}), so this value would be "
                            f"ignored; drop it, or change the sweep's file ({sweep.name}.yaml) or use another sweep")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    from proxyscale.orchestrator.prepare import resolve_prepared_data

    try:
        plain = resolve_prepared_data(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except MissingMandatoryValue as error:
        raise SpecError(f"{error.full_key}: is required (it has no default); set it on the command line") from error
    return resolve_recipes(plain)


def resolve_recipes(plain: dict[str, Any]) -> dict[str, Any]:
    """Each recipe of `sweep.recipes` that changes data.* resolved as the base's data is (resolve_prepared_data: a
    data.build prepared on first use, the manifest read): its overrides become the dotted keys of data (and
    model.vocab_size) that differ from the base's, so the recorded config.yaml holds what its runs used. The block
    is checked (orchestrator.sweep.parse_recipes) before any corpus is built."""
    import copy

    from proxyscale.orchestrator.prepare import resolve_prepared_data
    from proxyscale.orchestrator.sweep import parse_recipes

    raw = (plain.get("sweep") or {}).get("recipes")
    if raw is None:
        return plain
    recipes = parse_recipes(raw, simulated=(plain.get("trainer") or {}).get("kind") == "simulated")
    resolved = {}
    for name, overrides in recipes.items():
        data_keys = {key[len("data."):]: value for key, value in overrides.items() if key.startswith("data.")}
        if not data_keys:
            resolved[name] = overrides
            continue
        base_data, base_model = dict(plain.get("data") or {}), dict(plain.get("model") or {})
        scratch = {"data": copy.deepcopy(base_data) | copy.deepcopy(data_keys), "model": dict(base_model)}
        if "model.vocab_size" in overrides:
            scratch["model"]["vocab_size"] = overrides["model.vocab_size"]
        try:
            scratch = resolve_prepared_data(scratch)
        except SpecError as error:
            raise SpecError(f"sweep.recipes.{name}: {error}") from None
        kept = {key: value for key, value in overrides.items() if not key.startswith("data.")}
        kept |= {f"data.{key}": value for key, value in scratch["data"].items()
                 if key in data_keys or base_data.get(key) != value}
        if scratch["model"].get("vocab_size") != base_model.get("vocab_size"):
            kept["model.vocab_size"] = scratch["model"]["vocab_size"]
        resolved[name] = kept
    plain["sweep"]["recipes"] = resolved
    return plain


def run_spec_from_config(cfg: DictConfig) -> RunSpec:
    plain = to_plain(cfg)
    sections = {key: plain[key] for key in ("model", "train", "data")}
    return RunSpec.from_dict(sections | {"simulated": simulated_truth(plain)})
