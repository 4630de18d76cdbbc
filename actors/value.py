"""The value worker: a Ray actor that scores (prompt, partial response) states with a value model
folder (``ValueScorer``), for value-guided beam search. On CPU it computes with the cores of its
node that its process may use; on GPUs it takes one GPU."""

from __future__ import annotations

import ray

from actors.common import ActorGroup, ActorMixin, wait_ready
from learner.value import ValueScorer


@ray.remote
class ValueWorker(ActorMixin, ValueScorer):
    """A ValueScorer as a Ray actor."""


class ValueGroup(ActorGroup):
    """One value worker over one value folder; ``score`` is beam search's scorer."""

    def __init__(self, folder: str):
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        self.workers = [ValueWorker.options(num_cpus=1, num_gpus=gpus).remote(folder)]
        wait_ready(self)

    def score(self, states: list[tuple[list[int], list[int]]]) -> list[float]:
        return ray.get(self.workers[0].score.remote(states))
