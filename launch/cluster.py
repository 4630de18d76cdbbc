"""The Ray cluster a command runs on: the one it finds, or a local one it starts and stops."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from actors.controller import NAMESPACE


def required_cpus(cfg) -> int:
    r = cfg.rollout
    return int(math.ceil(r.num_workers * r.num_cpus_per_worker)) + cfg.reward.num_workers + cfg.learner.num_ranks


def connect_ray(cfg) -> bool:
    """Attach to the cluster named by RAY_ADDRESS (as inside ``ray job submit``) or started on this
    machine with ``ray start``; else start a local one with enough logical CPUs for the run's
    actors. Returns True if it started one."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address or Path("/tmp/ray/ray_current_cluster").is_file():  # never guess among other clusters
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=True)
        return False
    ray.init(address="local", namespace=NAMESPACE, num_cpus=max(os.cpu_count() or 1, required_cpus(cfg)),
             include_dashboard=False)  # fmt: skip
    return True



@contextmanager
def ray_session(cfg) -> Iterator[None]:
    """Ray for one command (``syncrl train``, ``eval``, an experiment's transfer evaluation): a
    local cluster this started is shut down at the end, one it attached to is left running."""
    started = connect_ray(cfg)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
