"""Weight transports: how the learner's weights reach the rollout engines.

A transport has one method, ``push(learners, rollouts, version, keep)``. Every learner rank takes
part (ZeRO-3 gathers each parameter collectively); rank 0 sends the full tensors, in Hugging Face
names, and every rollout engine loads them in place, bucket by bucket as they arrive, and adopts
``version``. With ``keep`` the push returns the pushed weights as learner rank 0 stored them on
its host (what a replacement engine or a checkpoint needs once the learner has moved past the
engines' version), which ``WeightSync`` keeps.

- ``ObjectStoreTransport``: rank 0 puts the weights in Ray's object store once; each engine reads
  them from there. Works everywhere, across nodes, with no setup.
- ``CollectiveTransport``: a process group of learner rank 0 and every vLLM worker of every engine
  (one rank per tensor-parallel worker), separate from the training group (gloo on CPU, NCCL on
  GPU), over which rank 0 broadcasts tensor by tensor. An engine lost in the middle of a push is
  replaced and the push runs again (``fault_tolerance.push_timeout_s`` bounds how long the others
  wait for it in a broadcast).

vLLM 0.32 has a weight-transfer API of its own (``weight_transfer_config``; NCCL, IPC and RDMA
backends, no gloo). The engines run the same layerwise-reload session its NCCL backend runs
(rollout/vllm_worker.py), over a group syncrl opens itself, so that one code path serves gloo on
CPU, where every test runs it, and NCCL on GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import ray

from actors.faults import DEATHS, death_cause
from actors.learner import LearnerGroup
from actors.placement import cluster_has_gpus
from actors.rollout import RolloutGroup
from learner.weights import host_copy
from rollout.records import AUTO, BUCKET_BYTES
from rollout.settings import SyncConfig
from rollout.vllm_worker import open_weight_group


class WeightTransport(Protocol):
    def push(self, learners: LearnerGroup, rollouts: RolloutGroup, version: int, keep: bool = True) -> list | None: ...


class ObjectStoreTransport:
    def push(self, learners: LearnerGroup, rollouts: RolloutGroup, version: int, keep: bool = True) -> list | None:
        stored = learners.export_weights()  # refs to rank 0's buckets; the data stays put
        rollouts.call(lambda w, i: w.update_weights.remote(stored, version))
        return stored


# -- collective broadcast: code that runs inside the learner actors (through ActorMixin.call) ---
def _join_group(learner, host: str, port: int, world: int, backend: str, timeout_s: float) -> None:
    learner.weight_group = open_weight_group(
        host, port, 0, world, backend, timeout_s, getattr(learner, "weight_group", None)
    )


def _send(learner, with_group: bool, keep: bool = True) -> tuple[list[tuple[str, tuple, str]], list | None] | None:
    """On every learner rank: gather each tensor; rank 0 broadcasts it (and stores a host copy
    with ``keep``). Returns the metadata and what was stored on rank 0. A failed broadcast (an
    engine lost) does not stop the gathers, which every rank must finish: it is raised once they
    are done."""
    meta, sent, failed = [], [], None
    for name, tensor, partitioned in learner.gathered_weights():  # one gathered parameter at a time
        meta.append((name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")))
        if learner.rank == 0 and with_group and failed is None:
            try:
                learner.weight_group.broadcast(tensor.contiguous(), 0).wait()
            except Exception as err:  # noqa: BLE001 - raised below, after the last gather
                failed = err
            if keep:  # a gathered tensor is freed at the next one: copied to the host now
                sent.append((name, host_copy(tensor, partitioned)))
    if learner.rank != 0:
        return None
    if failed is not None:  # a plain error: torch's DistBackendError does not pickle
        raise RuntimeError(f"the weight broadcast failed: {type(failed).__name__}: {failed}")
    # stored after the broadcasts, while the engines load what they received
    return meta, learner.store_all(sent) if with_group and keep else None


def group_layout(receivers: list[int]) -> tuple[int, list[int]]:
    """The weight group's size and each engine's first rank, for engines of ``receivers[i]`` vLLM
    workers each: learner rank 0 is rank 0, then every worker of engine 0, of engine 1, ..."""
    offsets, rank = [], 1
    for count in receivers:
        offsets.append(rank)
        rank += count
    return rank, offsets


class CollectiveTransport:
    """Broadcast over a dedicated process group: learner rank 0 is its rank 0, then each vLLM
    worker of each engine (``group_layout``)."""

    def __init__(self, learners: LearnerGroup, rollouts: RolloutGroup, backend: str, timeout_s: float = 300.0):
        self.backend, self.timeout_s = backend, timeout_s
        self._join(learners, rollouts)
        rollouts.on_replace.append(lambda i: self._join(learners, rollouts))  # a replaced engine: everyone regroups

    def _join(self, learners: LearnerGroup, rollouts: RolloutGroup) -> None:
        wait = rollouts.supervisor.timeout(rollouts.kind)
        host, port = ray.get(
            [learners.workers[0].node_ip.remote(), learners.workers[0].free_port.remote()], timeout=wait
        )
        world, offsets = group_layout(rollouts.call(lambda w, i: w.weight_receivers.remote()))
        joins = [learners.workers[0].call.remote(_join_group, host, port, world, self.backend, self.timeout_s)]
        joins += [
            w.join_weight_group.remote(host, port, offsets[i], world, self.backend, self.timeout_s)
            for i, w in enumerate(rollouts.workers)
        ]
        ray.get(joins, timeout=wait)
        if not hasattr(self, "meta"):  # names, shapes and dtypes do not change during a run: learn them once
            self.meta = ray.get([w.call.remote(_send, False) for w in learners.workers], timeout=wait)[0][0]

    def push(self, learners: LearnerGroup, rollouts: RolloutGroup, version: int, keep: bool = True) -> list | None:
        while True:  # again after a lost engine is replaced (the restart budget bounds it)
            sends = learners.calls(lambda w, i: w.call.remote(_send, True, keep))
            lost = self._receive(rollouts, version)
            if not lost:
                return sends.collect()[0][1]
            self._recover(learners, rollouts, sends, lost)

    def _receive(self, rollouts: RolloutGroup, version: int) -> dict[int, str]:
        """Every engine receives the push; returns the engines that died or hung (index -> cause).
        Another error of an engine is raised, unless an engine was lost (then it is the lost
        engine's broadcast that failed)."""
        refs = {i: w.receive_weights.remote(self.meta, version, BUCKET_BYTES) for i, w in enumerate(rollouts.workers)}
        timeout = rollouts.supervisor.timeout(rollouts.kind)
        _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        lost, errors = {}, []
        for i, ref in refs.items():
            if ref in pending:
                lost[i] = f"gave no answer within {timeout:g} s (hung) during a weight push"
                continue
            try:
                ray.get(ref)
            except DEATHS as err:
                lost[i] = f"{death_cause(err)} during a weight push"
            except ray.exceptions.RayTaskError as err:
                errors.append(err)
        if errors and not lost:
            raise errors[0]
        return lost

    def _recover(self, learners: LearnerGroup, rollouts: RolloutGroup, sends, lost: dict[int, str]) -> None:
        """Rank 0 leaves its broadcast (a failed send, at the latest after the group's timeout), each
        lost engine is replaced (it loads nothing: the push that follows gives it the weights) and
        every member joins a new group."""
        try:
            sends.collect()
        except ray.exceptions.RayTaskError:  # the broadcast that failed with the lost engine
            pass
        for i, cause in lost.items():
            rollouts.replace(i, cause, restore=False)
        self._join(learners, rollouts)


def make_transport(
    kind: str, learners: LearnerGroup, rollouts: RolloutGroup, timeout_s: float = 300.0
) -> WeightTransport:
    """``auto``: NCCL broadcast on GPUs, the object store on CPU (zero-copy tensors, faster here
    than a gloo broadcast: ``python bench/weight_sync.py --model smollm2``, docs/PERFORMANCE.md 2).
    ``timeout_s``: a collective push's broadcast timeout (``fault_tolerance.push_timeout_s``)."""
    gpu = cluster_has_gpus()
    if kind == "auto":
        kind = "nccl" if gpu else "object_store"
    if kind == "object_store":
        return ObjectStoreTransport()
    if kind == "nccl" and not gpu:
        raise ValueError("sync.transport: 'nccl' needs GPUs; use 'gloo' or 'object_store' on CPU")
    return CollectiveTransport(learners, rollouts, kind, timeout_s)


@dataclass
class AutoInterval:
    """``sync.interval: auto``: when to push, from the drift the learner measures every step.

    The rule (deterministic: it reads only the step records' ``drift_kl_s<k>``, the KL of the
    engines' policy from the learner's on the samples of staleness k):

    - ``mismatch``: the latest ``drift_kl_s0``, the train/inference mismatch that no push removes;
    - ``growth``: from the step's largest staleness k >= 1, sqrt(max(drift_kl_s<k> - mismatch, 0)) / k:
      the drift grows about quadratically in the learner steps taken past the engines' weights
      (a KL is quadratic in a small change of the policy);
    - after a step that leaves the learner n = steps_since_sync steps past the engines, the next
      step's samples would have staleness n: ``predicted(n) = mismatch + (growth * n)^2``;
    - push when n >= max_interval, or n >= min_interval and predicted(n) > target_kl. Until a step
      with stale samples has given a growth, only max_interval pushes.

    Its fields are part of the run state (a checkpoint, ``--resume``), so a resumed run decides
    as the run left alone would."""

    mismatch: float = 0.0
    growth: float | None = None

    def observe(self, record: dict) -> None:
        """Update from a step's metrics (the learner's ``drift_kl_s<k>``; none for file rows)."""
        drift = {int(k.removeprefix("drift_kl_s")): v for k, v in record.items() if k.startswith("drift_kl_s")}
        if 0 in drift:
            self.mismatch = drift[0]
        stale = [k for k in drift if k >= 1]
        if stale:
            k = max(stale)
            self.growth = math.sqrt(max(drift[k] - self.mismatch, 0.0)) / k

    def predicted(self, staleness: int) -> float | None:
        """The drift expected of samples ``staleness`` learner steps behind (None: no growth yet)."""
        return None if self.growth is None else self.mismatch + (self.growth * staleness) ** 2

    def due(self, steps_since_sync: int, target_kl: float, min_interval: int, max_interval: int) -> bool:
        if steps_since_sync < min_interval:
            return False
        if steps_since_sync >= max_interval:
            return True
        expected = self.predicted(steps_since_sync)
        return expected is not None and expected > target_kl


class KeptWeights:
    """The weights pushed to the engines, by version, the newest ``count`` of them, as learner rank 0
    stored them (refs to its buckets in the object store): a replacement engine loads the version
    the engines hold from here, and a checkpoint taken while they lag the learner saves it. With
    sync.overlap a generation started before a push may run again on the version before it: 2."""

    def __init__(self, count: int = 1):
        self.count, self.versions = count, {}

    def keep(self, version: int, stored: list) -> None:
        versions = {v: w for v, w in self.versions.items() if v != version}
        versions[version] = stored  # the newest last (after a restart from an earlier checkpoint too)
        self.versions = dict(list(versions.items())[-self.count :])

    def __contains__(self, version: int) -> bool:
        return version in self.versions

    def __getitem__(self, version: int) -> list:
        return self.versions[version]


class WeightSync:
    """The weights the engines hold, and when they get the learner's: the one owner of the
    transport, the engines' version (in the run state), the host copies of what was pushed
    (``KeptWeights``, saved in and restored from a checkpoint), and the decision "push now?"
    (every s learner steps, or ``AutoInterval``; s changes live). The loop asks ``due`` after each
    step and calls ``push``.

    ``state``: the run state (``launch.checkpoint.RunState``: ``learner_version``,
    ``engine_version``, ``steps_since_sync``, ``auto_sync``), read and written here.
    ``rollouts`` None: a run without engines (offline data, no evaluation) only syncs the
    reference. A replacement engine loads the weights of the version the engines hold
    (``RolloutGroup.held``/``weights_of`` read them here). ``kept_versions``: 2 when a stage
    overlaps generation with training, else 1."""

    def __init__(
        self,
        kind: str,
        learners: LearnerGroup,
        rollouts: RolloutGroup | None,
        state,
        timeout_s: float,
        kept_versions: int = 1,
    ):
        self.learners, self.rollouts, self.state, self.transport = learners, rollouts, state, None
        self.kept, self.overlap = KeptWeights(kept_versions), False
        if rollouts is not None:
            rollouts.on_replace.clear()  # a collective transport of a previous learner group regrouped there
            self.transport = make_transport(kind, learners, rollouts, timeout_s)
            rollouts.held, rollouts.weights_of = lambda: self.state.engine_version, self.weights_of

    def weights_of(self, version: int) -> list:
        """The weights pushed as ``version``, as stored: kept, or, while they are still the
        learner's weights, exported (and kept) now."""
        if version not in self.kept:
            if version != self.state.learner_version:
                raise RuntimeError(
                    f"the weights of version {version} are not kept (kept: {sorted(self.kept.versions)})"
                )
            self.kept.keep(version, self.learners.export_weights())
        return self.kept[version]

    def may_lag(self) -> bool:
        """Whether the learner can train past the engines' weights before its next push (s > 1 or
        auto, or a prefetch generating on them while it trains): then a host copy of the weights
        pushed is kept, for a replacement engine and a checkpoint. With s = 1 the learner's
        own weights serve."""
        return self.state.sync_interval != 1 or self.overlap

    def set_interval(self, s: float | str, overlap: bool) -> float | str:
        """The sync interval of this step (the live one, ``syncrl ctl``), into the run state. An s
        changed to more than 1 after a push that kept nothing keeps the engines' weights now, while
        the learner still has them (version 0, the base model, is on disk)."""
        self.state.sync_interval, self.overlap = s, overlap
        if self.may_lag() and self.rollouts is not None and self.state.engine_version != 0:
            self.weights_of(self.state.engine_version)
        return s

    def begin_stage(self, sync: SyncConfig) -> None:
        """A new stage (its interval already in the run state): the engines get the current
        policy, the stage's first step starts in sync."""
        self.overlap = sync.overlap
        self.push(sync.ref_sync)

    def due(self, sync: SyncConfig, metrics: dict) -> int:
        """After a step (``metrics``: its learner metrics, {} when it trained nothing): the learner
        steps since the last push when it is time to push now, else 0. Every s steps, or with s =
        auto when the drift the next step's samples would have passes ``sync.target_kl``. The
        drift is observed whatever s is, so a run switched to auto live decides from its history."""
        state, s = self.state, self.state.sync_interval
        state.auto_sync.observe(metrics)
        if s == AUTO:
            now = bool(metrics) and state.auto_sync.due(
                state.steps_since_sync, sync.target_kl, sync.min_interval, sync.max_interval
            )
        else:
            now = state.steps_since_sync >= s
        return state.steps_since_sync if now else 0

    def push(self, ref_sync: bool, keep: bool | None = None) -> None:
        """The learner's weights to every engine, as the learner's version (and to the reference,
        with ``ref_sync``). ``keep``: a host copy of them is kept (None: when ``may_lag``)."""
        keep = self.may_lag() if keep is None else keep
        if self.rollouts is not None:
            version = self.state.learner_version
            stored = self.transport.push(self.learners, self.rollouts, version, keep)
            self.state.engine_version = version
            if keep:
                self.kept.keep(version, stored)
        if ref_sync:
            self.learners.on_all("sync_reference")
        self.state.steps_since_sync = 0

    def save_engine_weights(self, path: Path) -> None:
        """A checkpoint's copy of the weights the engines hold, when they lag the learner (none
        for version 0, the base model on disk, or for the learner's own weights)."""
        version = self.state.engine_version
        if self.rollouts is not None and version not in (0, self.state.learner_version):
            self.learners.save_stored(str(path), self.weights_of(version))

    def restore_engine_weights(self, path: Path) -> None:
        """After the learner loaded a checkpoint: the engines get exactly the weights they held
        (``path``, written by ``save_engine_weights``; else the learner's own, pushed)."""
        version = self.state.engine_version
        if self.rollouts is None:
            return
        if path.is_file():
            stored = self.learners.store_file(str(path))
            self.kept.keep(version, stored)
            self.rollouts.update_weights(stored, version)
        elif version > 0:
            self.kept.keep(version, self.transport.push(self.learners, self.rollouts, version, keep=True))
