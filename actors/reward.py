"""RewardWorker: a Ray actor that scores samples through a RewardRouter. Start as many as needed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray

from actors.common import ActorGroup, join, split_evenly, wait_ready
from rewards.router import RewardRouter, Route
from rollout.records import Sample


@ray.remote(num_cpus=1)
class RewardWorker:
    """Scores batches of samples by their ``source``: math verifier or reward model per route."""

    def __init__(self, routes: Mapping[str, Route | Mapping[str, Any]], default: str = "default") -> None:
        self.router = RewardRouter(routes, default)

    def score(self, samples: list[Sample]) -> list[Sample]:
        """The samples with ``reward`` and ``reward_info`` set."""
        return self.router.apply(samples)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of each route used so far (graded, timed_out, errors, ...)."""
        return self.router.stats()


class RewardGroup(ActorGroup):
    """N reward workers; a batch of samples is spread across them and comes back in order."""

    def __init__(self, cfg: Any) -> None:
        self.workers = [RewardWorker.remote(cfg.routes, cfg.default) for _ in range(cfg.num_workers)]
        wait_ready(self)

    def score(self, samples: list[Sample]) -> list[Sample]:
        chunks = split_evenly(samples, len(self.workers))
        return join(ray.get([w.score.remote(c) for w, c in zip(self.workers, chunks) if c]))

    def stats(self) -> list[dict[str, dict[str, int]]]:
        return ray.get([w.stats.remote() for w in self.workers])
