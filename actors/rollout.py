"""Rollout workers: Ray actors around ``RolloutEngine``, and the group that spreads prompts."""

from __future__ import annotations

from typing import Any

import ray

from rollout.engine import RolloutEngine
from rollout.records import Prompt, Sample

# The actor is the engine itself: every public method of RolloutEngine is a remote method.
RolloutWorker = ray.remote(RolloutEngine)


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one (empty chunks at the end)."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        chunks.append(items[start:end])
        start = end
    return chunks


class RolloutGroup:
    """N rollout workers. Prompts are spread across them; samples come back in prompt order."""

    def __init__(self, model_path: str, cfg: Any):
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        n = cfg.num_workers
        self.workers = [
            RolloutWorker.options(num_cpus=cfg.num_cpus_per_worker, num_gpus=gpus).remote(model_path, cfg, i, n)
            for i in range(n)
        ]
        ray.get([w.__ray_ready__.remote() for w in self.workers])  # surface start-up errors here

    def generate_refs(self, prompts: list[Prompt], n: int | None = None, **sampling: Any) -> list[ray.ObjectRef]:
        chunks = split_evenly(prompts, len(self.workers))
        return [w.generate.remote(c, n, **sampling) for w, c in zip(self.workers, chunks) if c]

    def generate(self, prompts: list[Prompt], n: int | None = None, **sampling: Any) -> list[Sample]:
        return [s for part in ray.get(self.generate_refs(prompts, n, **sampling)) for s in part]

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
