"""RewardWorker: a Ray actor that scores samples through a RewardRouter. Start as many as needed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ray

from actors.common import ActorGroup, ActorMixin, join, split_evenly
from actors.faults import Supervisor
from actors.placement import Ask, reward_bundle
from rewards.reward_model import check_reward_model
from rewards.router import RewardRouter
from rollout.phases import Phases
from rollout.records import Sample
from rollout.settings import RewardConfig, RewardRoute


@ray.remote(num_cpus=1)
class RewardWorker(ActorMixin):
    """Scores batches of samples by their ``source``: math verifier or reward model per route.

    A worker given GPUs (``reward.num_gpus_per_worker``) runs its reward models on them; one
    given none hides the node's GPUs from itself, so that it never takes one it did not ask for."""

    def __init__(self, routes: Mapping[str, RewardRoute | Mapping[str, Any]], default: str = "default") -> None:
        if not ray.get_gpu_ids():  # before torch first looks for a GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        super().__init__()
        self.phases = Phases()
        self.router = RewardRouter(routes, default)
        for name, route in self.router.routes.items():  # a folder this node cannot read: one line naming the route
            if route.kind == "reward_model":
                check_reward_model(route.model_path, route.label_index, f"reward.routes.{name}.model_path")
        self.router.start()  # grader processes and reward models start with the other actors
        self.phases.mark("scorers")

    def score(self, samples: list[Sample]) -> list[Sample]:
        """The samples with ``reward`` and ``reward_info`` set."""
        return self.router.apply(samples)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of each route used so far (graded, timed_out, errors, ...)."""
        return self.router.stats()


class RewardGroup(ActorGroup):
    """N reward workers in a placement group (a bundle each: ``reward_bundle``); a batch of
    samples is spread across them and comes back in order. A worker that dies or hangs is
    replaced in its predecessor's bundle and its chunk scored again."""

    kind = "reward"

    def __init__(self, cfg: RewardConfig, supervisor: Supervisor | None = None, wait: bool = True) -> None:
        self.cfg = cfg
        self.start_workers(cfg.num_workers, supervisor, wait)

    def ask(self, count: int) -> Ask:
        return Ask("reward workers", count, reward_bundle(self.cfg))

    def _start(self, i: int):
        return RewardWorker.options(**self.placement.options(i)).remote(self.cfg.routes, self.cfg.default)

    def score(self, samples: list[Sample]) -> list[Sample]:
        chunks = dict(enumerate(split_evenly(samples, len(self.workers))))
        return join(self.call(lambda w, i: w.score.remote(chunks[i]), [i for i, c in chunks.items() if c]))
