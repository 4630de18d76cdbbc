"""The Ray cluster a command runs on: the one it finds, or a local one it starts and stops."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from actors.controller import NAMESPACE
from launch.config import ConfigError, SyncRLConfig

CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # written by `ray start --head` on this machine


def required_cpus(cfg: SyncRLConfig) -> int:
    r = cfg.rollout
    return int(math.ceil(r.num_workers * r.num_cpus_per_worker)) + cfg.reward.num_workers + cfg.learner.num_ranks


def check_answers(address: str, named_by: str, timeout: float = 3.0) -> None:
    """Fail at once, saying what to do, if the cluster at ``address`` (host:port of its GCS) does
    not accept a connection: Ray itself would retry for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():  # "auto", "ray://...", "http://...": Ray resolves those itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        hint = (
            (
                f"remove {CURRENT_CLUSTER} (left by a head that is gone) to let syncrl start a local cluster, "
                "or start one with `ray start --head`"
            )
            if named_by == str(CURRENT_CLUSTER)
            else "check the address"
        )
        raise ConfigError(
            f"the Ray cluster at {address} (named by {named_by}) does not answer ({err.strerror or err}): {hint}"
        ) from None


def connect_ray(cfg: SyncRLConfig) -> bool:
    """Attach to the cluster named by RAY_ADDRESS (as inside ``ray job submit``) or started on this
    machine with ``ray start``; else start a local one with enough logical CPUs for the run's
    actors, serving the dashboard on 127.0.0.1 (``logging.dashboard``). Returns True if it started one."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address or CURRENT_CLUSTER.is_file():  # never guess among other clusters
        if address:
            check_answers(address, "RAY_ADDRESS")
        else:
            check_answers(CURRENT_CLUSTER.read_text().strip(), str(CURRENT_CLUSTER))
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=True)
        return False
    dashboard = cfg.logging.dashboard
    context = ray.init(
        address="local",
        namespace=NAMESPACE,
        num_cpus=max(os.cpu_count() or 1, required_cpus(cfg)),
        include_dashboard=dashboard,
        **({"dashboard_host": "127.0.0.1"} if dashboard else {}),
    )
    if dashboard and context.dashboard_url:
        sign_in = (
            ""
            if os.environ.get("RAY_AUTH_MODE") == "disabled"
            else " (it asks for the token `ray get-auth-token` prints)"
        )
        print(f"Ray dashboard: http://{context.dashboard_url}{sign_in}", flush=True)
    return True


@contextmanager
def ray_session(cfg: SyncRLConfig) -> Iterator[None]:
    """Ray for one command (``syncrl train``, ``eval``, an experiment's transfer evaluation): a
    local cluster this started is shut down at the end, one it attached to is left running."""
    started = connect_ray(cfg)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
