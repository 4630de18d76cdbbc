"""RewardWorker: a Ray actor that scores samples through a RewardRouter. Start as many as needed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray

from actors.common import ActorGroup, ActorMixin, join, split_evenly
from rewards.router import RewardRouter, Route
from rollout.phases import Phases
from rollout.records import Sample


@ray.remote(num_cpus=1)
class RewardWorker(ActorMixin):
    """Scores batches of samples by their ``source``: math verifier or reward model per route."""

    def __init__(self, routes: Mapping[str, Route | Mapping[str, Any]], default: str = "default") -> None:
        super().__init__()
        self.phases = Phases()
        self.router = RewardRouter(routes, default)
        self.router.start()  # grader processes and reward models start with the other actors
        self.phases.mark("scorers")

    def score(self, samples: list[Sample]) -> list[Sample]:
        """The samples with ``reward`` and ``reward_info`` set."""
        return self.router.apply(samples)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of each route used so far (graded, timed_out, errors, ...)."""
        return self.router.stats()


class RewardGroup(ActorGroup):
    """N reward workers; a batch of samples is spread across them and comes back in order. A
    worker that dies or hangs is replaced and its chunk scored again."""

    kind = "reward"

    def __init__(self, cfg: Any, supervisor: Any = None, wait: bool = True) -> None:
        self.cfg = cfg
        self.start_workers(cfg.num_workers, supervisor, wait)

    def _start(self, i: int):
        return RewardWorker.remote(self.cfg.routes, self.cfg.default)

    def score(self, samples: list[Sample]) -> list[Sample]:
        chunks = dict(enumerate(split_evenly(samples, len(self.workers))))
        return join(self.call(lambda w, i: w.score.remote(chunks[i]), [i for i, c in chunks.items() if c]))

    def stats(self) -> list[dict[str, dict[str, int]]]:
        return self.call(lambda w, i: w.stats.remote())
