"""Live settings: the learning knobs ``syncrl ctl set KEY VALUE`` changes while a run goes.

The Controller holds what was set; the driver reads it at every step boundary and applies a
change from the next step (``Driver.apply_live``). A value is checked here, by the same pydantic
fields as a recipe's, before the Controller takes it: a bad key or value is an error to the
caller, and the run goes on untouched. What was set is part of the run state, so ``--resume``
restores it.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from launch.config import SyncRLConfig, config_from_dict
from rollout.algorithms import make_algorithm

# The settings a running job takes, each applied from the next step. An algorithm or sync key
# applies to every stage (a stage's own algorithm or sync section included).
LIVE_KEYS = (
    "learner.lr",
    "learner.value_lr",
    "algorithm.beta",
    "algorithm.kl_coef",
    "algorithm.entropy_coef",
    "algorithm.grpo_weight",
    "algorithm.nll_coef",
    "algorithm.kl_reg",
    "rollout.temperature",
    "sync.target_kl",
)


def with_live(cfg: SyncRLConfig, live: dict[str, Any]) -> SyncRLConfig:
    """``cfg`` with the live settings ``live`` (already checked) in place, in every stage."""
    if not live:
        return cfg
    return config_from_dict(_tree_with(cfg.model_dump(mode="json"), live), "live settings")


def _tree_with(tree: dict, live: dict[str, Any]) -> dict:
    tree = copy.deepcopy(tree)
    for key, value in live.items():
        section, field = key.split(".")
        tree.setdefault(section, {})[field] = value
        if section in ("algorithm", "sync"):
            for stage in tree.get("stages") or []:
                if stage.get(section) is not None:
                    stage[section][field] = value
    return tree


class LiveSettings:
    """Checks a ``syncrl ctl set`` (the Controller calls ``check``). ``has_reference`` /
    ``has_value``: whether the learner was started with a reference model / a value model (a
    live change cannot add one)."""

    def __init__(self, cfg: SyncRLConfig, has_reference: bool, has_value: bool):
        self.tree = cfg.model_dump(mode="json")
        self.has_reference, self.has_value = has_reference, has_value

    def check(self, key: str, value: Any, live: dict[str, Any]) -> Any:
        """The typed value of ``key`` set to ``value`` (a YAML string or a value) over the
        settings already set (``live``); ValueError naming the key when it cannot be set."""
        if key not in LIVE_KEYS:
            raise ValueError(f"{key}: not a setting a running job takes; these are: {', '.join(LIVE_KEYS)}")
        if isinstance(value, str):
            value = yaml.safe_load(value)
        cfg = config_from_dict(_tree_with(self.tree, {**live, key: value}), f"syncrl ctl set {key} {value!r}")
        section, field = key.split(".")
        typed = getattr(getattr(cfg, section), field)
        if key == "rollout.temperature" and any(s.sync.overlap for s in cfg.resolved_stages()):
            # the batch generating while a step trains would be trained at a temperature it was not sampled at
            raise ValueError(f"{key}: not while sync.overlap generates the next batch ahead")
        if key == "learner.value_lr" and not self.has_value:
            raise ValueError(f"{key}: this run has no value model")
        if section == "algorithm" and not self.has_reference:
            reward_ids = lambda s: []  # noqa: E731  (only the loss is read)
            needs = [
                s.name
                for s in cfg.resolved_stages()
                if make_algorithm(s.algorithm, reward_ids=reward_ids).loss.needs_reference
            ]
            if needs:
                raise ValueError(
                    f"{key}: {value!r} makes stages {needs} need a reference model, and this run started without one"
                )
        return typed
