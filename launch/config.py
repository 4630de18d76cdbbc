"""Loading the one configuration tree of syncrl: recipes and ``--set`` overrides.

The schema (every section, ``extra="forbid"``) is ``rollout.settings``, where every layer can
import it; its names are re-exported here. Recipes are YAML files (``launch/recipes/*.yaml``);
``--set a.b=value`` overrides any field. ``load_config`` returns a validated ``SyncRLConfig`` or
raises ``ConfigError`` whose message names every bad field and its value.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rollout.errors import ConfigError
from rollout.settings import (
    AlgorithmConfig,
    CheckpointConfig,
    DataConfig,
    EngineSettings,
    EvalConfig,
    FaultToleranceConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    RewardConfig,
    RewardRoute,
    RolloutConfig,
    StageConfig,
    SyncConfig,
    SyncRLConfig,
    WandbConfig,
    engine_settings,
)

__all__ = [
    "AlgorithmConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EngineSettings",
    "EvalConfig",
    "FaultToleranceConfig",
    "LearnerConfig",
    "LoggingConfig",
    "ModelConfig",
    "RECIPES_DIR",
    "RewardConfig",
    "RewardRoute",
    "RolloutConfig",
    "StageConfig",
    "SyncConfig",
    "SyncRLConfig",
    "WandbConfig",
    "apply_override",
    "config_from_dict",
    "dump_config",
    "engine_settings",
    "load_config",
    "resolve_recipe",
]

RECIPES_DIR = Path(__file__).parent / "recipes"


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe path, or the name of a file in launch/recipes (with or without .yaml)."""
    path = Path(recipe)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / f"{recipe}", RECIPES_DIR / f"{recipe}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise ConfigError(f"recipe {str(recipe)!r} is neither a file nor a built-in recipe ({', '.join(known)})")


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, key, keys[: i + 1])]
            continue
        if not isinstance(node.get(key, {}), (dict, list)):
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[: i + 1])} is not a section")
        node = node.setdefault(key, {})
    if isinstance(node, list):
        node[_list_index(node, keys[-1], keys)] = value
    else:
        node[keys[-1]] = value


def _list_index(node: list, key: str, path: list[str]) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override {'.'.join(path)!r}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {field}: {msg} (got {e['input']!r})")
    return "\n".join(lines)


def config_from_dict(tree: dict, source: str = "<dict>") -> SyncRLConfig:
    try:
        return SyncRLConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(recipe: str | Path | None = None, overrides: list[str] = ()) -> SyncRLConfig:
    """Read a YAML recipe (None: all defaults), apply ``--set`` overrides and validate."""
    tree: dict = {}
    source = "defaults"
    if recipe is not None:
        path = resolve_recipe(recipe)
        source = str(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(tree).__name__}")
    tree = copy.deepcopy(tree)
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(tree, source)


def dump_config(config: SyncRLConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
