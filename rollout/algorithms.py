"""Algorithms turn scored samples into training records and name the loss terms.

An algorithm is a batch builder plus a ``LossSpec``; the learner sees only the records and the
spec. Samples of one prompt share ``prompt_id`` and form its group.

- grpo:            every sample, with its group-normalized advantage.
- dpo:             one pair per prompt: a highest-reward sample against a lowest-reward one
                   (with 0/1 verifier rewards: a correct one against an incorrect one, picked at
                   random). LD-DPO is dpo with ``ld_alpha < 1``.
- group_dpo:       every (above-group-mean, below-group-mean) pair of a prompt's samples, i.e.
                   every (correct, incorrect) pair under 0/1 rewards; averaged per prompt.
- group_dpo_grpo:  the group_dpo pairs plus every sample's GRPO advantage; the loss is
                   GroupDPO + grpo_weight * GRPO.
- oreo:            every sample with its reward and where its actions begin (every token, each
                   reasoning step, or the response); the loss is OREO's soft Bellman policy loss
                   plus KL(pi || ref), and the value model's Bellman loss (arXiv 2412.16145).
- rejection_sampling: the samples with reward 1 (correct), trained with NLL; OREO's baseline.
- reward_model:    every (above-group-mean, below-group-mean) pair of a prompt's samples (a file
                   of preference pairs: each pair), as the texts a reward worker scores (chat
                   template included); the loss is Bradley-Terry's, and the learner trains a
                   scalar-head model. A ``heldout_share`` of the prompts is only measured.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout.records import LossSpec, Sample, TrainBatch, TrainSequence

if TYPE_CHECKING:  # the settings' algorithm.name is built from ALGORITHMS: they import this module
    from rollout.settings import AlgorithmConfig


def group_by_prompt(samples: list[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        if s.reward is None:
            raise ValueError(f"sample of prompt {s.prompt_id!r} has no reward: score it before building a batch")
        groups.setdefault(s.prompt_id, []).append(s)
    return groups


def group_advantages(rewards: list[float], scale_by_std: bool = True, eps: float = 1e-6) -> list[float]:
    """GRPO advantages of one prompt's samples:

        A_i = (r_i - mean(r)) / (std(r) + eps)      (A_i = r_i - mean(r) without std scaling)

    std is the unbiased sample std. A single sample, or a group whose rewards are all equal,
    gets A = 0.
    """
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    mean = sum(rewards) / n
    centered = [r - mean for r in rewards]
    if not scale_by_std:
        return centered
    std = math.sqrt(sum(c * c for c in centered) / (n - 1))
    if std == 0.0:
        return [0.0] * n
    return [c / (std + eps) for c in centered]


def _sequence(s: Sample, advantage: float = 0.0) -> TrainSequence:
    return TrainSequence(
        prompt_ids=s.prompt_ids,
        response_ids=s.response_ids,
        behaviour_logps=s.logprobs or None,  # offline data has none
        advantage=advantage,
        policy_version=s.policy_version,
    )


def build_grpo_batch(samples: list[Sample], scale_by_std: bool = True, skip_uniform_groups: bool = False) -> TrainBatch:
    sequences: list[TrainSequence] = []
    groups = group_by_prompt(samples)
    uniform = 0
    for group in groups.values():
        rewards = [s.reward for s in group]
        if max(rewards) == min(rewards):
            uniform += 1
            if skip_uniform_groups:
                continue
        for s, a in zip(group, group_advantages(rewards, scale_by_std)):
            sequences.append(_sequence(s, a))
    counts = {"groups": len(groups), "groups_uniform": uniform, "groups_skipped": uniform if skip_uniform_groups else 0}
    return TrainBatch(sequences=sequences, counts=counts)


def build_dpo_batch(samples: list[Sample], rng: random.Random) -> TrainBatch:
    batch = TrainBatch(sequences=[])
    skipped = 0
    for group in group_by_prompt(samples).values():
        best, worst = max(s.reward for s in group), min(s.reward for s in group)
        if best == worst:
            skipped += 1
            continue
        chosen = rng.choice([s for s in group if s.reward == best])
        rejected = rng.choice([s for s in group if s.reward == worst])
        _add_pair(batch, _sequence(chosen), _sequence(rejected), group_id=len(batch.chosen))
    batch.counts = {"pairs": batch.num_pairs, "prompts_without_pair": skipped}
    return batch


def _add_pair(batch: TrainBatch, chosen: TrainSequence, rejected: TrainSequence, group_id: int) -> None:
    batch.sequences += [chosen, rejected]
    batch.chosen.append(len(batch.sequences) - 2)
    batch.rejected.append(len(batch.sequences) - 1)
    batch.pair_group.append(group_id)


def build_group_dpo_batch(
    samples: list[Sample], with_advantages: bool = False, scale_by_std: bool = True
) -> TrainBatch:
    """Every (above-mean, below-mean) pair of each prompt; rows are shared by the pairs."""
    sequences: list[TrainSequence] = []
    chosen: list[int] = []
    rejected: list[int] = []
    pair_group: list[int] = []
    skipped = 0
    groups = group_by_prompt(samples)
    for g, group in enumerate(groups.values()):
        rewards = [s.reward for s in group]
        advantages = group_advantages(rewards, scale_by_std) if with_advantages else [0.0] * len(group)
        mean = sum(rewards) / len(rewards)
        above = [i for i, r in enumerate(rewards) if r > mean]
        below = [i for i, r in enumerate(rewards) if r < mean]
        if not above:  # all rewards equal: no pair (the rows still carry GRPO advantages)
            skipped += 1
            if not with_advantages:
                continue
        base = len(sequences)
        sequences += [_sequence(s, a) for s, a in zip(group, advantages)]
        for i in above:
            for j in below:
                chosen.append(base + i)
                rejected.append(base + j)
                pair_group.append(g)
    counts = {"groups": len(groups), "pairs": len(chosen), "prompts_without_pair": skipped}
    return TrainBatch(sequences, chosen, rejected, pair_group, counts)


def step_starts(token_texts: list[str], delimiter: str) -> list[int]:
    """Response-token indices where a reasoning step begins: 0, and the token after each one in
    which an occurrence of ``delimiter`` ends (a delimiter may span tokens)."""
    ends, pos = [], 0
    for text in token_texts:
        pos += len(text)
        ends.append(pos)
    joined, starts, token = "".join(token_texts), [0], 0
    at = joined.find(delimiter)
    while at >= 0:
        last_char = at + len(delimiter) - 1
        while ends[token] <= last_char:
            token += 1
        if token + 1 < len(token_texts) and starts[-1] != token + 1:
            starts.append(token + 1)
        at = joined.find(delimiter, at + len(delimiter))
    return starts


def build_oreo_batch(
    samples: list[Sample],
    level: str = "token",
    delimiter: str = "\n",
    token_texts: Callable[[list[int]], list[str]] | None = None,
) -> TrainBatch:
    """Every sample, unpaired, with its reward and where its actions begin."""
    if level == "step" and token_texts is None:
        raise ValueError("OREO at step level needs the tokenizer's token texts to find the steps")
    group_by_prompt(samples)  # every sample must be scored
    sequences = []
    for s in samples:
        seq = _sequence(s)
        seq.reward = float(s.reward)
        if level == "response":
            seq.action_starts = [0]
        elif level == "step":
            seq.action_starts = step_starts(token_texts(s.response_ids), delimiter)
        sequences.append(seq)
    counts = {"rows": len(sequences), "rows_rewarded": sum(s.reward > 0 for s in sequences)}
    if level != "token":
        counts["actions"] = sum(len(s.action_starts) for s in sequences)
    return TrainBatch(sequences=sequences, counts=counts)


def build_rejection_sampling_batch(samples: list[Sample]) -> TrainBatch:
    """The samples whose reward is 1 (or more): a correct answer under a verifier."""
    group_by_prompt(samples)  # every sample must be scored
    kept = [_sequence(s) for s in samples if s.reward >= 1.0]
    return TrainBatch(sequences=kept, counts={"kept": len(kept), "rejected": len(samples) - len(kept)})


def is_heldout(prompt_id: str, share: float, seed: int = 0) -> bool:
    """Whether a prompt belongs to the held-out share: a fixed draw from its id (and the seed), so
    a prompt is held out at every step and in every run with the same settings."""
    digest = hashlib.sha256(f"{seed}|{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def build_reward_model_batch(
    samples: list[Sample], token_ids: Callable[[Sample], list[int]], heldout_share: float = 0.0, seed: int = 0
) -> TrainBatch:
    """Reward-model training pairs: every (above-mean, below-mean) pair of each prompt's samples,
    each row the token ids ``token_ids(sample)`` of the text a reward model reads; the pairs of
    held-out prompts (``is_heldout``) are listed in ``heldout``."""
    batch = TrainBatch(sequences=[])
    skipped = held = 0
    for g, (prompt_id, group) in enumerate(group_by_prompt(samples).items()):
        rewards = [s.reward for s in group]
        mean = sum(rewards) / len(rewards)
        above = [i for i, r in enumerate(rewards) if r > mean]
        below = [i for i, r in enumerate(rewards) if r < mean]
        if not above:
            skipped += 1
            continue
        base = len(batch.sequences)
        batch.sequences += [
            TrainSequence(
                prompt_ids=token_ids(s), response_ids=[], policy_version=s.policy_version, reward=float(s.reward)
            )
            for s in group
        ]
        out = is_heldout(prompt_id, heldout_share, seed)
        held += out
        for i in above:
            for j in below:
                if out:
                    batch.heldout.append(len(batch.chosen))
                batch.chosen.append(base + i)
                batch.rejected.append(base + j)
                batch.pair_group.append(g)
    batch.counts = {
        "pairs": batch.num_pairs - len(batch.heldout),
        "heldout_pairs": len(batch.heldout),
        "prompts_heldout": held,
        "prompts_without_pair": skipped,
    }
    TrainBatch.__post_init__(batch)
    return batch


def batch_rng(seed: int, samples: list[Sample]) -> random.Random:
    """Random choices (DPO's ties) as a function of the seed and the batch, not of the batches
    before it: a resumed or restarted run makes the same choices as an uninterrupted one."""
    return random.Random(f"{seed}|" + "|".join(f"{s.prompt_id}:{','.join(map(str, s.response_ids))}" for s in samples))


class Algorithm:
    """A named way of turning scored samples into a TrainBatch, and the loss that trains on it."""

    def __init__(self, name: str, build: Callable[[list[Sample]], TrainBatch], loss: LossSpec):
        self.name = name
        self.build = build
        self.loss = loss

    def __repr__(self) -> str:
        return f"Algorithm({self.name!r}, {self.loss})"


@dataclass
class Context:
    """What an algorithm may need besides its settings (``make_algorithm``'s arguments)."""

    seed: int
    token_texts: Callable[[list[int]], list[str]] | None
    reward_ids: Callable[[Sample], list[int]] | None
    sampling_temperature: float


# The algorithms by name: each turns its settings (an ``AlgorithmConfig``) and a Context into an
# Algorithm. ``algorithm.name`` takes exactly these names (rollout/settings.py reads them here).
Builder = Callable[["AlgorithmConfig", Context], Algorithm]
ALGORITHMS: dict[str, Builder] = {}


def register(name: str):
    """Add an algorithm builder to ``ALGORITHMS`` under ``name``."""

    def add(builder: Builder) -> Builder:
        ALGORITHMS[name] = builder
        return builder

    return add


def make_algorithm(
    cfg: AlgorithmConfig,
    seed: int = 0,
    token_texts: Callable[[list[int]], list[str]] | None = None,
    reward_ids: Callable[[Sample], list[int]] | None = None,
    sampling_temperature: float = 1.0,
) -> Algorithm:
    """Build the algorithm an ``AlgorithmConfig`` names (``ALGORITHMS``). ``token_texts`` maps token
    ids to their texts (OREO's step level finds steps with it); ``reward_ids`` gives the token ids a
    reward model reads for a sample (reward_model; the driver makes it with
    ``rewards.reward_model.reward_token_ids``, which the reward worker scores).
    ``sampling_temperature``: the rollout engines' (``rollout.temperature``); only a GRPO term takes
    its log-probs at it (its importance ratio compares them with the sampler's), every other term at
    1 (``LossSpec.temperature``)."""
    return ALGORITHMS[cfg.name](cfg, Context(seed, token_texts, reward_ids, sampling_temperature))


def _common(cfg: AlgorithmConfig, ctx: Context) -> dict[str, Any]:
    """Every policy loss knows the sampler's temperature and the clip range: the learner measures
    the drift of the engines' log-probs from its own with them, whatever the terms."""
    return dict(
        entropy_coef=cfg.entropy_coef,
        temperature=ctx.sampling_temperature,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
    )


def _dpo_terms(cfg: AlgorithmConfig) -> dict[str, Any]:
    return dict(beta=cfg.beta, ld_alpha=cfg.ld_alpha, nll_coef=cfg.nll_coef)


@register("grpo")
def _grpo(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    return Algorithm(
        "grpo",
        lambda samples: build_grpo_batch(samples, cfg.scale_by_std, cfg.skip_uniform_groups),
        LossSpec(grpo_weight=1.0, kl_coef=cfg.kl_coef, **_common(cfg, ctx)),
    )


@register("dpo")
def _dpo(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    return Algorithm(
        "dpo",
        lambda samples: build_dpo_batch(samples, batch_rng(ctx.seed, samples)),
        LossSpec(dpo_weight=1.0, **_dpo_terms(cfg), **_common(cfg, ctx)),
    )


@register("group_dpo")
def _group_dpo(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    return Algorithm(
        "group_dpo", build_group_dpo_batch, LossSpec(dpo_weight=1.0, **_dpo_terms(cfg), **_common(cfg, ctx))
    )


@register("group_dpo_grpo")
def _group_dpo_grpo(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    return Algorithm(
        "group_dpo_grpo",
        lambda samples: build_group_dpo_batch(samples, with_advantages=True, scale_by_std=cfg.scale_by_std),
        LossSpec(
            dpo_weight=1.0, grpo_weight=cfg.grpo_weight, kl_coef=cfg.kl_coef, **_dpo_terms(cfg), **_common(cfg, ctx)
        ),
    )


@register("oreo")
def _oreo(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    return Algorithm(
        "oreo",
        lambda samples: build_oreo_batch(samples, cfg.level, cfg.step_delimiter, ctx.token_texts),
        LossSpec(
            bellman_weight=1.0,
            value_weight=1.0,
            beta=cfg.beta,
            kl_reg=cfg.oreo_kl_reg,
            kl_estimator=cfg.kl_estimator,
            **_common(cfg, ctx),
        ),
    )


@register("rejection_sampling")
def _rejection_sampling(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    return Algorithm(
        "rejection_sampling", build_rejection_sampling_batch, LossSpec(sft_weight=1.0, **_common(cfg, ctx))
    )


@register("reward_model")
def _reward_model(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    if ctx.reward_ids is None:
        raise ValueError("reward_model needs reward_ids: the token ids a reward model reads for a sample")
    return Algorithm(
        "reward_model",
        lambda samples: build_reward_model_batch(samples, ctx.reward_ids, cfg.heldout_share, ctx.seed),
        LossSpec(bradley_terry_weight=1.0, reward_margin=cfg.reward_margin),
    )
