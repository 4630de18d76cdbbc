"""The one interface of the reward side: a reward function scores a batch of samples.

A reward function takes ``Sample`` records (``rollout/records.py``) and returns one
``RewardResult`` per sample, in the same order. It never writes into the samples itself: the
router does that, so the same function can score, compare, or re-score without side effects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a type here: the grader process imports this module and stays light
    from rollout.records import Sample


@dataclass
class RewardResult:
    """The reward of one sample and what the scorer found out about it.

    ``info`` is a flat dict of plain values (it crosses process boundaries and is logged), e.g.
    for the math verifier ``extracted``, ``correct``, ``timed_out``, ``error``.
    """

    reward: float
    info: dict[str, Any] = field(default_factory=dict)


class RewardRouteError(RuntimeError):
    """A reward route failed where only a reward worker can tell (its model does not load, its
    grader process does not start): the message names the route and the cause, in one line."""


class RewardFunction(ABC):
    """Scores a batch of samples: one result per sample, in the input order."""

    @abstractmethod
    def score(self, samples: Sequence[Sample]) -> list[RewardResult]:
        """One ``RewardResult`` per sample, in the order of ``samples``."""

    def start(self) -> None:
        """Get ready now (start a child process, ...) rather than at the first batch; default: nothing to do."""

    def stats(self) -> dict[str, int]:
        """Counters since construction (e.g. graded, timed_out, errors); empty if it keeps none."""
        return {}

    def close(self) -> None:
        """Release what the function holds (child processes, models); calling it twice is harmless."""
