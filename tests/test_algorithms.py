"""Batch builders: scored samples -> GRPO groups, DPO pairs, GroupDPO groups."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from rollout.algorithms import (
    build_dpo_batch,
    build_group_dpo_batch,
    build_grpo_batch,
    group_advantages,
    make_algorithm,
)
from rollout.records import Sample


def sample(prompt: str, reward: float, tag: int) -> Sample:
    return Sample(
        prompt_id=prompt,
        prompt_ids=[1, 2],
        response_ids=[10 + tag],
        logprobs=[-0.5],
        finish_reason="stop",
        policy_version=3,
        reward=reward,
    )


def test_group_advantages_hand_value():
    # mean 0.5, unbiased std sqrt(1/3): A = +-0.5 / 0.57735 = +-0.866
    a = group_advantages([1.0, 0.0, 0.0, 1.0], eps=0.0)
    assert a == pytest.approx([math.sqrt(3) / 2, -math.sqrt(3) / 2, -math.sqrt(3) / 2, math.sqrt(3) / 2])
    assert group_advantages([1.0, 0.0, 0.0, 1.0], scale_by_std=False) == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_all_correct_group_has_zero_advantage():
    batch = build_grpo_batch([sample("p", 1.0, i) for i in range(4)] + [sample("q", float(i % 2), i) for i in range(4)])
    assert [s.advantage for s in batch.sequences[:4]] == [0.0] * 4
    assert any(s.advantage != 0 for s in batch.sequences[4:])
    assert batch.counts["groups_uniform"] == 1 and batch.counts["groups_skipped"] == 0
    skipped = build_grpo_batch([sample("p", 1.0, i) for i in range(4)], skip_uniform_groups=True)
    assert skipped.sequences == [] and skipped.counts["groups_skipped"] == 1


def test_dpo_pairs_correct_against_incorrect_and_counts_skips():
    samples = [sample("a", r, i) for i, r in enumerate([0.0, 1.0, 0.0, 1.0])]
    samples += [sample("b", 1.0, i) for i in range(3)]  # all correct: no pair
    samples += [sample("c", r, i) for i, r in enumerate([0.2, 0.9, 0.5])]  # reward model scores
    batch = build_dpo_batch(samples, random.Random(0))
    assert batch.num_pairs == 2 and batch.counts == {"pairs": 2, "prompts_without_pair": 1}
    rows = batch.sequences
    assert rows[batch.chosen[0]].response_ids[0] in (11, 13) and rows[batch.rejected[0]].response_ids[0] in (10, 12)
    assert rows[batch.chosen[1]].response_ids == [11] and rows[batch.rejected[1]].response_ids == [10]
    assert batch.pair_group == [0, 1]


def test_group_dpo_uses_every_correct_incorrect_pair():
    samples = [sample("a", r, i) for i, r in enumerate([1.0, 0.0, 1.0, 0.0, 0.0])]
    samples += [sample("b", 0.0, i) for i in range(2)]
    batch = build_group_dpo_batch(samples)
    pairs = {
        (batch.sequences[c].response_ids[0], batch.sequences[r].response_ids[0])
        for c, r in zip(batch.chosen, batch.rejected)
    }
    assert pairs == {(c, r) for c in (10, 12) for r in (11, 13, 14)}
    assert batch.counts["pairs"] == 6 and batch.counts["prompts_without_pair"] == 1
    assert len(batch.sequences) == 5  # the pairless prompt adds no rows
    combined = build_group_dpo_batch(samples, with_advantages=True)
    assert len(combined.sequences) == 7 and combined.num_pairs == 6  # its rows still carry (zero) advantages
    assert [s.advantage for s in combined.sequences[5:]] == [0.0, 0.0]


def test_unscored_sample_is_an_error():
    with pytest.raises(ValueError, match="no reward"):
        build_grpo_batch([sample("a", None, 0)])


@pytest.mark.parametrize(
    "name,dpo_weight,grpo_weight",
    [("grpo", 0.0, 1.0), ("dpo", 1.0, 0.0), ("group_dpo", 1.0, 0.0), ("group_dpo_grpo", 1.0, 0.5)],
)
def test_make_algorithm_loss_spec(name, dpo_weight, grpo_weight):
    from launch.config import AlgorithmConfig

    algo = make_algorithm(AlgorithmConfig(name=name, grpo_weight=0.5, ld_alpha=0.3))
    assert (algo.loss.dpo_weight, algo.loss.grpo_weight) == (dpo_weight, grpo_weight)
    batch = algo.build([sample("a", r, i) for i, r in enumerate([1.0, 0.0, 0.0])])
    assert len(batch.sequences) >= 2
    assert make_algorithm(SimpleNamespace(**AlgorithmConfig(name=name).model_dump())).name == name


@pytest.mark.parametrize(
    "name,temperatures",
    [
        ("grpo", (0.7,)),
        ("group_dpo_grpo", (0.7, 1.0)),
        ("dpo", (1.0,)),
        ("group_dpo", (1.0,)),
        ("oreo", (1.0,)),
        ("rejection_sampling", (1.0,)),
    ],
)
def test_only_the_grpo_term_takes_log_probs_at_the_sampling_temperature(name, temperatures):
    from launch.config import AlgorithmConfig

    spec = make_algorithm(AlgorithmConfig(name=name), sampling_temperature=0.7).loss
    assert spec.temperatures == temperatures
    assert spec.grpo_temperature == (0.7 if spec.grpo_weight else 1.0)
    assert make_algorithm(AlgorithmConfig(name=name)).loss.temperatures == (1.0,)  # a sampler at temperature 1
