"""Plain records exchanged between rollout, rewards, algorithms and the learner.

No Ray, no vLLM, no torch: these cross process boundaries as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: records never import torch
    import torch


@dataclass
class Prompt:
    """One task item: what to ask, how to grade it."""

    id: str
    messages: list[dict[str, str]]  # chat messages; the engine applies the chat template
    answer: str | None = None  # reference answer for verifiers
    source: str = "default"  # picks the reward route
    # The data set's other columns of this record (data.path): they travel with every sample of the
    # prompt to the reward functions (a `python` route gets them as keyword arguments).
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One generated response, as the rollout engine returned it, plus its reward once scored."""

    prompt_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    # The sampler's log-prob of each response token (as many as response_ids) for generated
    # samples; empty for beam search's answers and for responses read from a file
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    policy_version: int  # version of the weights that generated it
    prompt_text: str = ""
    response_text: str = ""
    answer: str | None = None
    source: str = "default"
    reward: float | None = None
    reward_info: dict = field(default_factory=dict)
    # The prompt's chat messages (what a reward model reads with the response; empty: one user
    # message of prompt_text) and the data set's other columns of its record (Prompt.columns).
    prompt_messages: list[dict[str, str]] = field(default_factory=list)
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The prompt's messages (one user message of ``prompt_text`` when none were kept)."""
        return self.prompt_messages or [{"role": "user", "content": self.prompt_text}]

    @property
    def response_len(self) -> int:
        return len(self.response_ids)


@dataclass
class TrainSequence:
    """One row the learner trains on: a prompt, a response, and what the loss needs of it."""

    prompt_ids: list[int]
    response_ids: list[int]
    behaviour_logps: list[float] | None = None  # needed by GRPO's importance ratio
    advantage: float = 0.0
    policy_version: int = 0
    reward: float = 0.0  # the sample's reward (OREO's terminal reward R)
    # Response-token indices where an action begins (OREO step and response levels); None: every
    # token is an action (token level).
    action_starts: list[int] | None = None


@dataclass
class TrainBatch:
    """What an algorithm hands the learner: rows, and the pairs that index them.

    ``chosen[k]`` and ``rejected[k]`` are row indices of pair k; pairs with the same
    ``pair_group[k]`` are averaged together first (GroupDPO), then groups are averaged.
    ``heldout`` lists pairs that are only measured, not trained on (a reward model's held-out
    share). ``counts`` reports what was used and skipped (e.g. prompts with no pair).
    """

    sequences: list[TrainSequence]
    chosen: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    pair_group: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    heldout: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.sequences)
        if not (len(self.chosen) == len(self.rejected) == len(self.pair_group)):
            raise ValueError("chosen, rejected and pair_group must have one entry per pair")
        for idx in (*self.chosen, *self.rejected):
            if not 0 <= idx < n:
                raise ValueError(f"pair index {idx} is out of range for {n} sequences")
        if any(not 0 <= k < len(self.chosen) for k in self.heldout):
            raise ValueError(f"held-out pairs {self.heldout} are not all pairs of the {len(self.chosen)}")

    @property
    def num_pairs(self) -> int:
        return len(self.chosen)


@dataclass(frozen=True)
class LossSpec:
    """Which terms the learner's loss has, and their coefficients. The learner knows no algorithm:

        L = dpo_weight * GroupMean_k DPO_k(ld_alpha, beta) + nll_coef * NLL(chosen)
          + grpo_weight * GRPO(clip_low, clip_high, kl_coef) - entropy_coef * H
          + sft_weight * NLL(every row)
          + bellman_weight * OREO_pi(beta) + kl_reg * KL(pi || ref)       (kl_estimator: full | k3)
        and, for the value model (its own optimizer): value_weight * OREO_V(beta);
    or, for a reward model (a scalar head instead of the LM head: the learner loads a sequence
    classifier): L = bradley_terry_weight * mean_k BT_k(reward_margin).

    Temperature: every term takes the policy's and the reference's log-probs at temperature 1 (the
    model's own distribution, as the DPO, OREO and SFT objectives define them), except the GRPO
    term (its importance ratio against the sampler's log-probs, its KL to the reference and the
    entropy), which takes them at ``temperature``, the sampler's (logits divided by it).
    """

    dpo_weight: float = 0.0
    grpo_weight: float = 0.0
    beta: float = 0.1
    ld_alpha: float = 1.0
    nll_coef: float = 0.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    sft_weight: float = 0.0
    bellman_weight: float = 0.0
    value_weight: float = 0.0
    kl_reg: float = 0.0
    kl_estimator: str = "full"  # "full": over the vocabulary; "k3": the sampled token's estimate
    bradley_terry_weight: float = 0.0
    reward_margin: float = 0.0
    # The sampler's temperature: the GRPO term's log-probs, and the drift measured for every loss,
    # divide the logits by it
    temperature: float = 1.0

    @property
    def grpo_temperature(self) -> float:
        """The temperature of the GRPO term's log-probs and of the entropy: the sampler's with a
        GRPO term, else 1."""
        return self.temperature if self.grpo_weight else 1.0

    @property
    def temperatures(self) -> tuple[float, ...]:
        """Every temperature the learner takes log-probs at for this loss: the GRPO term's, and 1
        for the other terms (DPO, NLL, SFT, OREO, KL regularization) when the loss has any."""
        others = self.dpo_weight or self.sft_weight or self.bellman_weight or self.value_weight or self.kl_reg
        grpo = [self.grpo_temperature] if self.grpo_weight else []
        return tuple(dict.fromkeys(grpo + ([1.0] if others or not self.grpo_weight else [])))

    @property
    def scalar_head(self) -> bool:
        """The model trained is a reward model (one score per row), not a policy."""
        return self.bradley_terry_weight > 0

    @property
    def needs_reference(self) -> bool:
        return (
            self.dpo_weight > 0
            or self.kl_coef > 0
            or self.bellman_weight > 0
            or self.value_weight > 0
            or self.kl_reg > 0
        )

    @property
    def needs_value(self) -> bool:
        return self.value_weight > 0 or self.bellman_weight > 0

    @property
    def needs_full_logits(self) -> bool:
        return self.kl_reg > 0 and self.kl_estimator == "full"


def weights_checksum(named_tensors, in_name_order: bool = False) -> str:
    """SHA-256 over (name, tensor) pairs in name order: the name and the fp32 bytes of each.
    The learner and the engines report their weights this way (each in its own layout).
    ``in_name_order``: the pairs come sorted by name already, and each is hashed as it comes
    (a ZeRO-3 learner gathers them one at a time: none is kept)."""
    import hashlib

    digest = hashlib.sha256()
    pairs = named_tensors if in_name_order else sorted(named_tensors, key=lambda kv: kv[0])
    for name, tensor in pairs:
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


AUTO = "auto"  # sync.interval: auto, the run pushes when the drift would pass sync.target_kl
INTERVAL_HELP = "must be a positive integer (1 = online), 'inf' (offline) or 'auto'"


def parse_interval(value: Any) -> float | int | str:
    """A sync interval from a recipe, an override or ``syncrl ctl``: a positive int, math.inf
    ("inf", "offline") or ``AUTO``. Raises ValueError naming what it must be."""
    if isinstance(value, str) and value.strip().lower() in {"inf", ".inf", "infinity", "offline"}:
        return math.inf
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(INTERVAL_HELP)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(INTERVAL_HELP) from None
    if number != float(value) or number < 1:
        raise ValueError(INTERVAL_HELP)
    return number


def interval_text(value: float | str) -> str | int:
    """A sync interval as written in recipes, metrics and status: an int, "inf" or "auto"."""
    if value == AUTO:
        return AUTO
    return "inf" if math.isinf(value) else int(value)


BUCKET_BYTES = 256 * 2**20  # a push travels, is stored and is loaded in buckets of about this size


def buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], nbytes: int):
    """Consecutive lists of (name, tensor) of about ``nbytes`` each (a tensor is never split)."""
    bucket, size = [], 0
    for name, tensor in named_tensors:
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= nbytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket
