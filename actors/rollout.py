"""Rollout workers: Ray actors around ``RolloutEngine``, and the group that spreads prompts."""

from __future__ import annotations

from typing import Any

import ray

from actors.common import WORKER_RUNTIME_ENV, ActorMixin, join, split_evenly, wait_ready
from rollout.engine import RolloutEngine
from rollout.records import Prompt, Sample


@ray.remote
class RolloutWorker(ActorMixin, RolloutEngine):
    """A RolloutEngine as a Ray actor: every public method of the engine is a remote method."""


class RolloutGroup:
    """N rollout workers. Prompts are spread across them; samples come back in prompt order."""

    def __init__(self, model_path: str, cfg: Any):
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        n = cfg.num_workers
        self.workers = [
            RolloutWorker.options(num_cpus=cfg.num_cpus_per_worker, num_gpus=gpus, runtime_env=WORKER_RUNTIME_ENV).remote(model_path, cfg, i, n)
            for i in range(n)
        ]
        wait_ready(self)

    def generate_refs(self, prompts: list[Prompt], n: int | None = None, seed: int | None = None,
                      **sampling: Any) -> list[ray.ObjectRef]:  # fmt: skip
        """Start generation on every worker; ``ray.get`` the refs (in order) for the samples."""
        chunks = split_evenly(prompts, len(self.workers))
        refs, offset = [], 0
        for worker, chunk in zip(self.workers, chunks):
            if chunk:
                refs.append(worker.generate.remote(chunk, n, None if seed is None else seed + offset, **sampling))
            offset += len(chunk)
        return refs

    def generate(self, prompts: list[Prompt], n: int | None = None, seed: int | None = None,
                 **sampling: Any) -> list[Sample]:  # fmt: skip
        return join(ray.get(self.generate_refs(prompts, n, seed, **sampling)))

    def update_weights(self, named_tensors: list, version: int) -> None:
        """Object-store transport: one ``ray.put`` of the weights, read by every worker."""
        ref = ray.put(named_tensors)
        ray.get([w.update_weights.remote(ref, version) for w in self.workers])

    def weights_checksums(self) -> list[str]:
        return ray.get([w.weights_checksum.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []
