"""Live settings (`syncrl ctl set`): checked by the config's own fields, applied to every stage."""

from __future__ import annotations

import pytest

from launch.config import load_config
from launch.live import LiveSettings, with_live
from rollout.algorithms import make_algorithm


def g2d():
    return load_config("tiny-g2d")  # two stages, each with its own algorithm and sync sections


def test_a_live_setting_reaches_every_stage_and_its_loss():
    cfg = with_live(g2d(), {"algorithm.beta": 0.5, "sync.target_kl": 0.2, "rollout.temperature": 0.7})
    stages = cfg.resolved_stages()
    assert [s.algorithm.beta for s in stages] == [0.5, 0.5] and [s.sync.target_kl for s in stages] == [0.2, 0.2]
    losses = [make_algorithm(s.algorithm, sampling_temperature=cfg.rollout.temperature).loss for s in stages]
    assert losses[1].dpo_weight and losses[1].beta == 0.5  # the DPO stage's loss (GRPO's has no beta)
    assert [loss.temperature for loss in losses] == [0.7, 0.7]
    assert with_live(g2d(), {}) == g2d()


def test_check_types_values_and_refuses_what_the_run_cannot_take():
    check = LiveSettings(g2d(), has_reference=True, has_value=False).check
    assert check("learner.lr", "2e-5", {}) == 2e-5 and check("algorithm.beta", 0.3, {}) == 0.3
    assert check("sync.target_kl", "0.05", {"learner.lr": 1e-3}) == 0.05
    for key, value, says in [
        ("learner.lr", "0", "learner.lr: Input should be greater than 0"),
        ("algorithm.beta", "many", "algorithm.beta"),
        ("learner.micro_batch_size", "4", "not a setting a running job takes"),
        ("learner.value_lr", "1e-5", "no value model"),
    ]:
        with pytest.raises(ValueError, match=says):
            check(key, value, {})
    grpo = LiveSettings(load_config("tiny-grpo"), has_reference=False, has_value=False).check
    with pytest.raises(ValueError, match="need a reference model"):
        grpo("algorithm.kl_coef", "0.1", {})
    assert grpo("algorithm.entropy_coef", "0.01", {}) == 0.01
    overlap = LiveSettings(load_config("tiny-grpo", ["sync.overlap=true"]), has_reference=False, has_value=False)
    with pytest.raises(ValueError, match="rollout.temperature: not while sync.overlap"):
        overlap.check("rollout.temperature", "0.5", {})
