"""Rollout workers: Ray actors around ``RolloutEngine``, and the group that spreads prompts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

from actors.common import ActorGroup, ActorMixin, join, split_evenly
from actors.faults import Supervisor
from actors.placement import Ask, cluster_has_gpus, engine_bundle
from rollout.engine import RolloutEngine
from rollout.records import Prompt, Sample
from rollout.settings import RolloutConfig


@ray.remote
class RolloutWorker(ActorMixin, RolloutEngine):
    """A RolloutEngine as a Ray actor: every public method of the engine is a remote method."""

    def update_weights(self, weights: list, version: int) -> int:
        """``weights``: (name, tensor) pairs, or the learner's stored buckets (ObjectRefs), each
        fetched from the object store as it is loaded."""
        if weights and isinstance(weights[0], ray.ObjectRef):
            return self.load_buckets((ray.get(ref) for ref in weights), version)
        return super().update_weights(weights, version)


class RolloutGroup(ActorGroup):
    """N rollout workers. Prompts are spread across them; samples come back in prompt order.

    A worker that dies or hangs is replaced (``ActorGroup.replace``); the replacement loads the
    weights its call needs (those the engines hold, ``held()``; for a generation started before a
    push, those from before it), which the driver keeps (``weights_of(version)``: a ref to them,
    None for the base model's), and its call runs again with the same seeds.
    """

    kind = "rollout"

    def __init__(self, model_path: str, cfg: RolloutConfig, supervisor: Supervisor | None = None, wait: bool = True):
        self.model_path, self.cfg = model_path, cfg
        self.gpu = cluster_has_gpus()
        self.held: Callable[[], int] = lambda: 0  # set by the driver, like weights_of
        self.weights_of: Callable[[int], ray.ObjectRef | None] = lambda version: None
        self.on_replace: list[Callable[[int], None]] = []  # e.g. a collective transport regroups
        self.start_workers(cfg.num_workers, supervisor, wait)

    def ask(self, count: int) -> Ask:
        return Ask("engines", count, engine_bundle(self.cfg, self.gpu))

    def _start(self, i: int):
        return RolloutWorker.options(**self.placement.options(i)).remote(
            self.model_path, self.cfg, i, self.cfg.num_workers
        )

    def _restore(self, i: int, version: int | None) -> None:
        version = self.held() if version is None else version
        if version != 0:  # a new engine has the base model's weights (version 0)
            self.update_worker(i, version)
        for hook in self.on_replace:
            hook(i)

    def update_worker(self, i: int, version: int) -> None:
        """Worker i takes the weights of ``version`` (0: the base model's: a fresh start)."""
        if version == 0:
            self.restart(i)
            return
        ray.get(
            self.workers[i].update_weights.remote(self.weights_of(version), version),
            timeout=self.supervisor.timeout(self.kind),
        )

    def restart_all(self) -> None:
        """Every worker started again (the base model's weights), not counted as restarts."""
        self.shutdown()
        self.start_workers(self.cfg.num_workers, self.supervisor)

    def _spread(self, method: str, items: list, seed: int | None, *args: Any, **kwargs: Any):
        """Start ``method`` on every worker with its contiguous chunk of ``items`` (a ``Calls``);
        a chunk's seed is ``seed`` plus the index of its first item (None stays None)."""
        chunks, offsets, offset = {}, {}, 0
        for i, chunk in enumerate(split_evenly(items, len(self.workers))):
            if chunk:
                chunks[i], offsets[i] = chunk, offset
            offset += len(chunk)

        def submit(worker, i):
            return getattr(worker, method).remote(
                chunks[i], *args, seed=None if seed is None else seed + offsets[i], **kwargs
            )

        return self.calls(submit, list(chunks), version=self.held())

    def start_generate(self, prompts: list[Prompt], n: int | None = None, seed: int | None = None, **sampling: Any):
        """Start generation on every worker; ``join(calls.collect())`` gives the samples in order."""
        return self._spread("generate", prompts, seed, n, **sampling)

    def generate(
        self, prompts: list[Prompt], n: int | None = None, seed: int | None = None, **sampling: Any
    ) -> list[Sample]:
        return join(self.start_generate(prompts, n, seed, **sampling).collect())

    def expand_steps(self, requests: list, n: int, seed: int, stop: str, temperature: float = 1.0) -> list:
        """Beam search's ``expand`` over every worker (rollout.beam_search); results in request order."""
        return join(self._spread("expand_steps", requests, seed, n, stop=stop, temperature=temperature).collect())

    def update_weights(self, weights: list | ray.ObjectRef, version: int) -> None:
        """Every worker takes ``weights`` as ``version``: (name, tensor) pairs, put in the object
        store once, or a ref to weights held there."""
        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self.call(lambda w, i: w.update_weights.remote(ref, version))

    def weights_checksums(self) -> list[str]:
        return self.call(lambda w, i: w.weights_checksum.remote())
