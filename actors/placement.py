"""Where a run's actors go on the cluster: what they ask for, whether the cluster can hold it,
and the placement groups that hold them.

Each group of workers asks for ``count`` bundles of the same resources (``Ask``): a rollout
engine ``rollout.num_cpus_per_worker`` CPUs (on GPUs also ``rollout.tensor_parallel_size`` GPUs,
all on one node: vLLM's tensor parallelism stays inside the engine's bundle), a learner rank one
CPU (and one GPU), a reward worker ``reward.num_cpus_per_worker`` CPUs (and
``reward.num_gpus_per_worker`` GPUs, if any); plus the custom Ray resources of
``rollout.resources`` / ``learner.resources`` / ``reward.resources`` (e.g. ``{"rollout_node": 1}``
to keep engines on the nodes that offer it). ``check_fits`` compares that with the cluster's
nodes before any actor starts and names what is missing. The learner ranks, the engines and the
reward workers then each hold a placement group (``Placement``), a bundle per worker: the
learner's placed with ``learner.placement_strategy`` (PACK by default: ranks on as few nodes as
possible; SPREAD across nodes), the others packed. A replaced worker takes its predecessor's
bundle, so it lands where the group was placed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import ray

from rollout.settings import LearnerConfig, RewardConfig, RolloutConfig, SyncRLConfig


class PlacementError(RuntimeError):
    """The cluster cannot hold what the run asks for (the message says what is missing)."""


@dataclass(frozen=True)
class Ask:
    """``count`` bundles of ``bundle`` resources for the workers of one group."""

    group: str  # what the workers are, plural: "engines", "learner ranks", "reward workers"
    count: int
    bundle: dict[str, float]
    strategy: str = "PACK"  # a Ray placement strategy: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def engine_bundle(cfg: RolloutConfig, gpu: bool) -> dict[str, float]:
    """The resources of one rollout engine: on GPUs one GPU per
    tensor-parallel worker, on CPU at least one CPU per tensor-parallel worker."""
    tp = cfg.tensor_parallel_size
    if gpu:
        return {"CPU": cfg.num_cpus_per_worker, "GPU": float(tp), **cfg.resources}
    return {"CPU": max(cfg.num_cpus_per_worker, float(tp)), **cfg.resources}


def learner_bundle(cfg: LearnerConfig, gpu: bool) -> dict[str, float]:
    """The resources of one learner rank."""
    return {"CPU": 1.0, **({"GPU": 1.0} if gpu else {}), **cfg.resources}


def reward_bundle(cfg: RewardConfig) -> dict[str, float]:
    """The resources of one reward worker: GPUs only when it
    asks for some, whether the cluster has GPUs or not (a reward model's GPU is the user's call)."""
    gpus = float(cfg.num_gpus_per_worker)
    return {"CPU": float(cfg.num_cpus_per_worker), **({"GPU": gpus} if gpus > 0 else {}), **cfg.resources}


def value_bundle(gpu: bool) -> dict[str, float]:
    """The resources of a value worker (``syncrl eval --beam``'s scorer): 1 CPU, and 1 GPU on GPUs."""
    return {"CPU": 1.0, **({"GPU": 1.0} if gpu else {})}


def run_asks(
    cfg: SyncRLConfig, gpu: bool, learner: bool = True, value: bool = False, engines: bool = True
) -> list[Ask]:
    """What a run asks for: engines and reward workers (unless
    ``engines`` is False: a run on data of scored responses), learner ranks, and (``value``) an
    evaluation's value worker."""
    asks = (
        [
            Ask("engines", cfg.rollout.num_workers, engine_bundle(cfg.rollout, gpu)),
            Ask("reward workers", cfg.reward.num_workers, reward_bundle(cfg.reward)),
        ]
        if engines
        else []
    )
    if learner:
        asks.append(
            Ask(
                "learner ranks", cfg.learner.num_ranks, learner_bundle(cfg.learner, gpu), cfg.learner.placement_strategy
            )
        )
    if value:
        asks.append(Ask("value workers", 1, value_bundle(gpu)))
    return asks


def _amount(x: float) -> str:
    return f"{x:g}"


def check_fits(asks: list[Ask], nodes: list[dict[str, float]]) -> None:
    """Raise ``PlacementError`` naming every shortfall if ``nodes`` (each node's total resources)
    cannot hold ``asks``: a resource short in total, a bundle no single node can hold, or a
    strict strategy the nodes cannot satisfy. Free resources are not looked at: a busy cluster
    makes a placement group wait (``Placement.wait`` times out), not fail here."""
    problems = []
    resources = sorted({r for a in asks for r in a.bundle})
    for r in resources:
        need = sum(a.count * a.bundle.get(r, 0) for a in asks)
        have = sum(n.get(r, 0) for n in nodes)
        if need > have + 1e-9:
            parts = " + ".join(
                f"{a.count} {a.group} ({_amount(a.bundle[r])} each)" for a in asks if a.bundle.get(r, 0) and a.count
            )
            problems.append(f"needs {_amount(need)} {r} for {parts}; the cluster has {_amount(have)}")
    for a in asks:
        if not a.count:
            continue
        fits = [n for n in nodes if all(n.get(r, 0) + 1e-9 >= v for r, v in a.bundle.items())]
        wanted = ", ".join(f"{_amount(v)} {r}" for r, v in a.bundle.items())
        if not fits:
            problems.append(f"each of the {a.group} needs {wanted} on one node; no node has that")
        elif a.strategy == "STRICT_SPREAD" and len(fits) < a.count:
            problems.append(
                f"{a.count} {a.group} on {a.count} different nodes (STRICT_SPREAD), but only "
                f"{len(fits)} node(s) can hold one ({wanted})"
            )
        elif a.strategy == "STRICT_PACK" and not any(
            all(n.get(r, 0) + 1e-9 >= a.count * v for r, v in a.bundle.items()) for n in nodes
        ):
            problems.append(f"{a.count} {a.group} on one node (STRICT_PACK), but no node holds {a.count} x ({wanted})")
    if problems:
        raise PlacementError(
            "the cluster cannot hold this run: " + "; ".join(problems) + " (`ray status` shows the cluster's resources)"
        )


def cluster_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the connected cluster."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: SyncRLConfig, learner: bool = True, value: bool = False, engines: bool = True) -> None:
    """``check_fits`` for a run on the connected cluster; ``value``: with an evaluation's value
    worker; ``engines`` False: without engines and reward workers."""
    check_fits(run_asks(cfg, cluster_has_gpus(), learner, value, engines), cluster_nodes())


class Placement:
    """A placement group for a group's workers: worker i runs in bundle i."""

    def __init__(self, name: str, ask: Ask):
        from ray.util.placement_group import placement_group

        self.name, self.ask = name, ask
        self.group = placement_group([dict(ask.bundle)] * ask.count, strategy=ask.strategy)

    def wait(self, timeout: float | None) -> None:
        """Wait until every bundle is reserved; else remove the group and raise ``PlacementError``."""
        try:
            ray.get(self.group.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.remove()
            wanted = ", ".join(f"{_amount(v)} {r}" for r, v in self.ask.bundle.items())
            raise PlacementError(
                f"{self.name}: {self.ask.count} bundle(s) of ({wanted}), {self.ask.strategy}, not reserved "
                f"within {timeout:g} s: the cluster can hold them but they are not free "
                "(other jobs hold them? `ray status` shows what is used)"
            ) from None

    def options(self, i: int) -> dict[str, Any]:
        """The actor options that put a worker in bundle i (its resources are the bundle's)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = self.ask.bundle
        custom = {r: v for r, v in bundle.items() if r not in ("CPU", "GPU")}
        return dict(
            num_cpus=bundle.get("CPU", 0),
            num_gpus=bundle.get("GPU", 0),
            resources=custom,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i),
        )

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def free_port() -> int:
    """A TCP port free on this node right now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@ray.remote(num_cpus=0)
def _address_in_bundle() -> tuple[str, int, str]:
    return ray.util.get_node_ip_address(), free_port(), ray.get_runtime_context().get_node_id()


def bundle_address(placement: Placement, i: int, timeout: float | None) -> tuple[str, int, str]:
    """The IP address of bundle i's node, a TCP port free there now, and the node's id: the
    learner group's rendezvous, chosen on rank 0's own node (not the driver's)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(placement.group, placement_group_bundle_index=i)
    return ray.get(_address_in_bundle.options(scheduling_strategy=strategy).remote(), timeout=timeout)


def check_visible(groups: list[Any], paths: dict[str, str], marker_dir: str, timeout: float | None = None) -> None:
    """Every worker of ``groups`` sees ``paths`` (what -> path) and a file the driver writes into
    ``marker_dir`` now (the run directory: the same folder, not one of the same name on another
    filesystem); else ``PlacementError`` naming each worker, its node and what it cannot see."""
    import secrets
    from pathlib import Path

    token = secrets.token_hex(8)
    Path(marker_dir).mkdir(parents=True, exist_ok=True)
    marker = Path(marker_dir, f".syncrl-visible-{token}")
    marker.write_text(token)
    try:
        workers = [(group.name(i), w) for group in groups for i, w in enumerate(group.workers)]
        missing = ray.get([w.unseen.remote(paths, (str(marker), token)) for _, w in workers], timeout=timeout)
        blind = [(name, w, m) for (name, w), m in zip(workers, missing) if m]
        ips = ray.get([w.node_ip.remote() for _, w, _ in blind], timeout=timeout)
    finally:
        marker.unlink()
    if blind:
        lines = "; ".join(f"{name} on node {ip} cannot see {', '.join(m)}" for (name, _, m), ip in zip(blind, ips))
        raise PlacementError(
            f"{lines}. The run directory and the model folders must be on a filesystem every node "
            'mounts at the same path (README, "Running on a cluster"); built-in models are built '
            "under SYNCRL_CACHE (default ~/.cache/syncrl): point it at a shared folder"
        )


def where(groups: list[Any], timeout: float | None = None) -> dict[str, dict[str, str]]:
    """The node (id and IP address) of every worker of ``groups``, by worker name."""
    workers = [(group.name(i), w) for group in groups for i, w in enumerate(group.workers)]
    found = ray.get([w.call.remote(lambda obj: (obj.node_id(), obj.node_ip())) for _, w in workers], timeout=timeout)
    return {name: {"node_id": node, "node_ip": ip} for (name, _), (node, ip) in zip(workers, found)}
