"""Rollout workers: Ray actors around ``RolloutEngine``, and the group that spreads prompts."""

from __future__ import annotations

from typing import Any

import ray

from actors.common import ActorGroup, ActorMixin, WORKER_RUNTIME_ENV, join, split_evenly, wait_ready
from rollout.engine import RolloutEngine
from rollout.records import Prompt, Sample


@ray.remote
class RolloutWorker(ActorMixin, RolloutEngine):
    """A RolloutEngine as a Ray actor: every public method of the engine is a remote method."""


class RolloutGroup(ActorGroup):
    """N rollout workers. Prompts are spread across them; samples come back in prompt order."""

    def __init__(self, model_path: str, cfg: Any):
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        n = cfg.num_workers
        self.workers = [
            RolloutWorker.options(num_cpus=cfg.num_cpus_per_worker, num_gpus=gpus, runtime_env=WORKER_RUNTIME_ENV).remote(model_path, cfg, i, n)
            for i in range(n)
        ]
        wait_ready(self)

    def _spread(self, method: str, items: list, seed: int | None, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Call ``method`` on every worker with its contiguous chunk of ``items``; a chunk's seed
        is ``seed`` plus the index of its first item (None stays None)."""
        refs, offset = [], 0
        for worker, chunk in zip(self.workers, split_evenly(items, len(self.workers))):
            if chunk:
                refs.append(getattr(worker, method).remote(chunk, *args, seed=None if seed is None else seed + offset, **kwargs))
            offset += len(chunk)
        return refs

    def generate_refs(self, prompts: list[Prompt], n: int | None = None, seed: int | None = None,
                      **sampling: Any) -> list[ray.ObjectRef]:  # fmt: skip
        """Start generation on every worker; ``ray.get`` the refs (in order) for the samples."""
        return self._spread("generate", prompts, seed, n, **sampling)

    def generate(self, prompts: list[Prompt], n: int | None = None, seed: int | None = None,
                 **sampling: Any) -> list[Sample]:  # fmt: skip
        return join(ray.get(self.generate_refs(prompts, n, seed, **sampling)))

    def expand_steps(self, requests: list, n: int, seed: int, stop: str, temperature: float = 1.0) -> list:
        """Beam search's ``expand`` over every worker (rollout.beam_search); results in request order."""
        return join(ray.get(self._spread("expand_steps", requests, seed, n, stop=stop, temperature=temperature)))

    def update_weights(self, named_tensors: list, version: int) -> None:
        """Object-store transport: one ``ray.put`` of the weights, read by every worker."""
        ref = ray.put(named_tensors)
        ray.get([w.update_weights.remote(ref, version) for w in self.workers])

    def weights_checksums(self) -> list[str]:
        return ray.get([w.weights_checksum.remote() for w in self.workers])
