"""The learner group: R Ray actors, each a DeepSpeed rank (``LearnerRank``)."""

from __future__ import annotations

from typing import Any

import ray

from actors.common import ActorGroup, ActorMixin, serialize_tensors_zero_copy
from actors.faults import ActorFailure, Supervisor
from actors.placement import Ask, Placement, bundle_address, cluster_has_gpus, learner_bundle
from learner.objective import Totals, add_metrics, drift_metrics, explained_variance, split_batch
from learner.trainer import LearnerRank, rank_micro_batches
from rollout.records import LossSpec, TrainBatch
from rollout.settings import LearnerConfig, ModelConfig


@ray.remote
class LearnerWorker(ActorMixin, LearnerRank):
    """A LearnerRank as a Ray actor. The weights it pushes live in the object store, one object per
    bucket, which the engines read zero-copy one at a time; rank 0 holds the ObjectRefs, which keep
    them there."""

    def __init__(self, *args: Any) -> None:
        serialize_tensors_zero_copy()
        super().__init__(*args)

    def store_weights(self, bucket: list) -> ray.ObjectRef:
        return ray.put(bucket)

    def load_stored(self, stored: list[ray.ObjectRef]) -> list:
        return [named for ref in stored for named in ray.get(ref)]


class LearnerGroup(ActorGroup):
    """Splits each step's batch over the ranks (pair groups whole, tokens balanced) and sums the
    ranks' parts of the loss and metrics.

    A rank cannot be replaced alone (the DeepSpeed state of every rank is lost with one of them):
    a rank that dies or hangs raises ``ActorFailure`` and the driver restarts the whole group
    from the run's last checkpoint.
    """

    kind = "learner"

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        needs_reference: bool = False,
        needs_value: bool = False,
        supervisor: Supervisor | None = None,
        wait: bool = True,
        model: ModelConfig | None = None,
        reward_model: bool = False,
    ):
        self.cfg, self.gpu, self.shares_prompts = cfg, cluster_has_gpus(), None
        # The ranks' bundles first: the rendezvous (MASTER_ADDR, MASTER_PORT) is rank 0's node
        # and a port free there, which only a placed bundle 0 can tell.
        supervisor = supervisor or Supervisor()
        self.placement = Placement("learner group", self.ask(cfg.num_ranks))
        try:
            self.placement.wait(supervisor.start_timeout)
            host, port, self.address_node = bundle_address(self.placement, 0, supervisor.start_timeout)
            self.address = (host, port)
        except BaseException:
            self.placement.remove()
            raise
        self.rank_args = (
            model_path,
            cfg,
            cfg.num_ranks,
            *self.address,
            needs_reference,
            needs_value,
            model,
            reward_model,
        )  # reward_model: a scalar head
        self.start_workers(cfg.num_ranks, supervisor, wait)

    def ask(self, count: int) -> Ask:
        return Ask("learner ranks", count, learner_bundle(self.cfg, self.gpu), self.cfg.placement_strategy)

    def _start(self, rank: int):
        model_path, cfg, world, host, port, *rest = self.rank_args
        options = self.placement.options(rank)  # no runtime env of its own: a prestarted worker process fits
        return LearnerWorker.options(**options).remote(model_path, cfg, rank, world, host, port, *rest)

    def replace(self, i: int, cause: str, version: int | None = None, restore: bool = True) -> None:
        raise ActorFailure(self.kind, self.name(i), cause)

    def train_step(self, batch: TrainBatch, spec: LossSpec) -> dict[str, float]:
        shards = split_batch(batch, len(self.workers))
        if self.shares_prompts is None:  # how the ranks count a micro-batch's tokens (flash: no shared prompts)
            self.shares_prompts = self.call(lambda w, i: w.call.remote(lambda rank: rank.shares_prompts), [0])[0]
        num_micro = max(len(rank_micro_batches(s, self.cfg, self.shares_prompts)) for s in shards)
        totals = Totals.of(batch)
        results = self.call(lambda w, i: w.train_step.remote(shards[i], spec, totals, num_micro))
        merged: dict[str, float] = {}
        for r in results:
            add_metrics(merged, r)
        merged.update(
            {k: results[0][k] for k in ("grad_norm", "value_grad_norm", "lr") if k in results[0]}
        )  # global, not parts
        return drift_metrics(explained_variance(merged))

    def score_states(self, states: list) -> list[float]:
        """V of (prompt ids, response ids) states with the learner's value model (beam search's scorer)."""
        return self.on_all("score_states", states)[0]

    def export_weights(self) -> list:
        """The learner's weights, stored by rank 0 (refs to its buckets in the object store)."""
        return self.call(lambda w, i: w.export_weights.remote())[0]

    def save_stored(self, path: str, stored: list) -> None:
        """Stored weights written by rank 0 as one safetensors file."""
        ray.get(self.workers[0].save_stored.remote(path, stored), timeout=self.supervisor.timeout(self.kind))

    def store_file(self, path: str) -> list:
        """A safetensors file of weights, stored by rank 0 (as ``export_weights``)."""
        return ray.get(self.workers[0].store_file.remote(path), timeout=self.supervisor.timeout(self.kind))

    def on_all(self, method: str, *args: Any) -> list:
        """Call a method on every rank (collective methods need all of them) and wait."""
        return self.call(lambda w, i: getattr(w, method).remote(*args))
