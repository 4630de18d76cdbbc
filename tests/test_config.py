"""The configuration tree: recipes, overrides, and one readable error per bad field."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from launch.config import RECIPES_DIR, ConfigError, load_config


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_every_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.resolved_stages()


def test_overrides_and_interval_forms():
    cfg = load_config("tiny-grpo", ["sync.interval=inf", "rollout.samples_per_prompt=8", "algorithm.name=dpo"])
    assert math.isinf(cfg.sync.interval) and cfg.rollout.samples_per_prompt == 8 and cfg.algorithm.name == "dpo"
    assert load_config(None, ["sync.interval=4"]).sync.interval == 4
    g2d = load_config("tiny-g2d", ["stages.1.steps=7"])
    stages = g2d.resolved_stages()
    assert [s.steps for s in stages] == [3, 7]
    assert stages[0].algorithm.name == "grpo" and math.isinf(stages[1].sync.interval)


def test_single_stage_inherits_top_level():
    cfg = load_config("tiny-dpo")
    (stage,) = cfg.resolved_stages()
    assert stage.steps == cfg.steps and stage.algorithm == cfg.algorithm and stage.sync.interval == 2


@pytest.mark.parametrize(
    "override,field,value",
    [
        ("learner.lrr=0.1", "learner.lrr", "unknown key"),
        ("learner.lr=fast", "learner.lr", "valid number"),
        ("sync.interval=0", "sync.interval", "positive integer"),
        ("sync.interval=-3", "sync.interval", "positive integer"),
        ("sync.interval=2.5", "sync.interval", "positive integer"),
        ("algorithm.name=ppo", "algorithm.name", "grpo"),
        ("reward.routes.default.kind=reward_model", "reward.routes.default", "model_path"),
        ("logging.output_dir=runs/{nme}", "logging.output_dir", "{name}"),
    ],
)
def test_bad_values_name_the_field(override, field, value):
    with pytest.raises(ConfigError) as err:
        load_config("tiny-grpo", [override])
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1, f"expected one error, got {lines}"
    assert lines[0].strip().startswith(f"{field}:") and value in lines[0]


def test_bad_recipe_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: x\nsteps: 0\nmodle: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert "steps:" in text and "modle: unknown key" in text and str(bad) in text
    with pytest.raises(ConfigError, match="neither a file nor a built-in recipe"):
        load_config("no-such-recipe")
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config("tiny-grpo", ["sync.interval"])


def test_cli_config_show():
    ok = subprocess.run(
        [sys.executable, "-m", "launch", "config", "show", "tiny-g2d", "--set", "sync.interval=3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "interval: 3" in ok.stdout and "grpo-warmup" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "launch", "config", "show", "tiny-grpo", "--set", "sync.interval=0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "sync.interval" in bad.stderr and "Traceback" not in bad.stderr
