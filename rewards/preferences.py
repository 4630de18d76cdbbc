"""Noisy preference labels from a judge: a simulated labeller, as in reward-over-optimisation
studies, where a program is the gold judge and a reward model learns from its noisy labels.

For two responses a, b to one prompt with judge scores J(a), J(b) and lengths n_a, n_b (words),
the labeller prefers a with the Bradley-Terry probability

    P(a > b) = sigmoid((J(a) - J(b)) / T + bias * (n_a - n_b) / 100)

T is the labeller's temperature (0: always the judge's order; large: a coin), ``bias`` its
length bias in logits per 100 words (0: none; > 0 favours the longer answer). Pure functions
(``random.Random`` for the draws).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

# The labeller's default temperature: on 128 pairs of SmolLM2-135M-Instruct's own answers to chat
# prompts (temperature 1, up to 128 new tokens; mean |J(a) - J(b)| 0.14) the temperature of 75%
# expected agreement with the judge was 0.0995 (README, "Making a reward model").
DEFAULT_TEMPERATURE = 0.1


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def preference_probability(
    judge_a: float, judge_b: float, temperature: float, length_bias: float = 0.0, len_a: int = 0, len_b: int = 0
) -> float:
    """P(a preferred to b) = sigmoid((J(a) - J(b)) / T + bias * (n_a - n_b) / 100); T = 0 is the
    judge's order (its ties broken by the length bias, else 0.5)."""
    if temperature < 0:
        raise ValueError(f"label temperature must be >= 0, got {temperature}")
    bias = length_bias * (len_a - len_b) / 100
    if temperature == 0:  # the judge decides; the length bias breaks its ties
        decider = judge_a - judge_b if judge_a != judge_b else bias
        return 1.0 if decider > 0 else 0.0 if decider < 0 else 0.5
    return sigmoid((judge_a - judge_b) / temperature + bias)


def expected_agreement(differences: Sequence[float], temperature: float) -> float:
    """The expected share of labels that agree with the judge over pairs whose judge scores differ
    by ``differences`` (no length bias): the mean of sigmoid(|d| / T); pairs with d = 0 left out."""
    ds = [abs(d) for d in differences if d != 0]
    if not ds:
        raise ValueError("no pair with different judge scores")
    return sum(preference_probability(d, 0.0, temperature) for d in ds) / len(ds)


def temperature_for_agreement(differences: Sequence[float], target: float = 0.75) -> float:
    """The temperature at which ``expected_agreement`` is ``target`` (0.5 < target < 1), by
    bisection: agreement falls from 1 (T -> 0) to 0.5 (T -> inf) as T grows."""
    if not 0.5 < target < 1:
        raise ValueError(f"target agreement must be between 0.5 and 1, got {target}")
    lo, hi = 1e-6, 1e3
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if expected_agreement(differences, mid) > target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def draw_preference(
    rng: random.Random,
    judge_a: float,
    judge_b: float,
    temperature: float,
    length_bias: float = 0.0,
    len_a: int = 0,
    len_b: int = 0,
) -> bool:
    """One labeller draw: True when a is preferred to b."""
    return rng.random() < preference_probability(judge_a, judge_b, temperature, length_bias, len_a, len_b)
