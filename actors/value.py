"""The value worker: a Ray actor that scores (prompt, partial response) states with a value model
folder (``ValueScorer``), for value-guided beam search. On CPU it computes with the cores of its
node that its process may use; on GPUs it takes one GPU."""

from __future__ import annotations

import ray

from actors.common import ActorGroup, ActorMixin
from actors.placement import Ask, cluster_has_gpus, value_bundle
from learner.value import ValueScorer


@ray.remote
class ValueWorker(ActorMixin, ValueScorer):
    """A ValueScorer as a Ray actor."""


class ValueGroup(ActorGroup):
    """One value worker over one value folder, in a placement bundle of its own (``value_bundle``,
    counted by ``check_cluster(..., value=True)``); ``score`` is beam search's scorer. A worker that
    dies or hangs is replaced like a rollout engine (it holds nothing but the folder), in its bundle."""

    kind = "rollout"  # its budget and timeout are the engines'

    def __init__(self, folder: str, supervisor=None, model=None):
        self.folder, self.gpu = folder, cluster_has_gpus()
        self.model = model  # the model settings (ModelConfig): dtype, trust_remote_code
        self.start_workers(1, supervisor)

    def ask(self, count: int) -> Ask:
        return Ask("value workers", count, value_bundle(self.gpu))

    def name(self, i: int) -> str:
        return f"value-{i}"

    def _start(self, i: int):
        return ValueWorker.options(**self.placement.options(i)).remote(self.folder, model=self.model)

    def score(self, states: list[tuple[list[int], list[int]]]) -> list[float]:
        return self.call(lambda w, i: w.score.remote(states))[0]
