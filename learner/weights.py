"""The learner rank's weights as others need them: exported for a push (gathered one parameter
at a time under ZeRO-3, in buckets), checksummed, saved as a checkpoint or a Hugging Face folder,
and copied into the reference. A mixin of ``LearnerRank`` (learner/trainer.py), which trains.
Which pushed weights are kept, and for what, is the driver's ``actors.weight_sync.WeightSync``."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from learner.value import save_value_folder
from rollout.records import BUCKET_BYTES, buckets, weights_checksum


def is_partitioned(param: torch.Tensor) -> bool:
    """A parameter partitioned by ZeRO-3 (``deepspeed.zero.Init`` or a stage-3 engine)."""
    return hasattr(param, "ds_id")


class RankWeights:
    """Export, checksum, save and load a learner rank's weights (``LearnerRank`` sets ``engine``,
    ``value_engine``, ``reference``, ``rank``, ``world_size`` and ``version``)."""

    def named_full_weights(self, engine=None):
        """Yield (name, full tensor) of the policy (or of another engine's module, e.g. the value
        model) in Hugging Face names. Every rank must iterate (ZeRO-3 gathers each parameter
        collectively); all ranks see the full tensors, each a copy of its own under ZeRO-3."""
        for name, tensor, partitioned in self.gathered_weights(engine):
            yield name, tensor.clone() if partitioned else tensor

    def gathered_weights(self, engine=None, by_name: bool = False):
        """Yield (name, full tensor, partitioned) of the policy (or of another engine's module): a
        ZeRO-3 parameter gathered, valid only until the next item (its memory is freed then: copy what
        is kept), else the parameter itself. Every rank must iterate; each holds one gathered
        parameter at a time. ``by_name``: in name order, else the module's."""
        import deepspeed

        module = (engine or self.engine).module
        named = list(module.named_parameters())
        for name, param in sorted(named, key=lambda kv: kv[0]) if by_name else named:
            if is_partitioned(param):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.detach(), True
            else:
                yield name, param.detach(), False

    def export_weights(self) -> list | None:
        """The full weights stored on rank 0, bucket by bucket as the gathers come
        (``store_weights``: the actor puts each bucket in the object store, so rank 0 holds one
        bucket beyond what it stored); None on the other ranks (which take part in ZeRO-3's
        gathers)."""
        named = self.host_named()
        if self.rank != 0:
            for _ in named:  # the gathers
                pass
            return None
        return [self.store_weights(bucket) for bucket in buckets(named, BUCKET_BYTES)]

    def store_all(self, weights: list[tuple[str, torch.Tensor]]) -> list:
        """``weights`` stored on the host, bucket by bucket (what ``export_weights`` returns)."""
        return [self.store_weights([(n, t.cpu()) for n, t in bucket]) for bucket in buckets(weights, BUCKET_BYTES)]

    def store_weights(self, bucket: list[tuple[str, torch.Tensor]]) -> Any:
        """A copy of one bucket that later steps do not change (the actor's: into the object store,
        where the engines read it; the stored bucket is its ObjectRef)."""
        return [(n, t.clone()) for n, t in bucket]

    def load_stored(self, stored: list) -> list[tuple[str, torch.Tensor]]:
        """The tensors of what ``export_weights``/``keep_weights`` stored (a list of stored buckets)."""
        return [named for bucket in stored for named in bucket]

    def save_stored(self, path: str, stored: list) -> None:
        """Stored weights (``export_weights``'s) written as one safetensors file (a checkpoint's
        engine weights)."""
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in self.load_stored(stored)}, path)

    def store_file(self, path: str) -> list:
        """A safetensors file of weights, stored as ``export_weights`` stores them."""
        from safetensors.torch import load_file

        return self.store_all(list(load_file(path).items()))

    def sync_reference(self) -> None:
        """Reference sync: the frozen reference becomes a copy of the current policy. Under ZeRO-3
        both are partitioned alike (same parameters, same ranks), so each rank copies its own
        partition of each parameter: nothing is gathered, nothing whole is held."""
        if self.reference is None:
            return
        params = dict(self.reference.named_parameters())
        with torch.no_grad():
            if self.sharded:
                for name, param in self.engine.module.named_parameters():
                    mine, theirs = own_partition(params[name], name), own_partition(param, name)
                    if mine.shape != theirs.shape:
                        raise RuntimeError(
                            f"{name}: the reference's partition {tuple(mine.shape)} is not the "
                            f"policy's {tuple(theirs.shape)}"
                        )
                    mine.copy_(theirs)
                return
            for name, tensor in self.named_full_weights():
                params[name].copy_(tensor)

    def weights_checksum(self, engine=None) -> str:
        """``rollout.records.weights_checksum`` of the policy's (or another engine's) full weights,
        each gathered and hashed in turn (every rank must call)."""
        named = ((n, t) for n, t, _ in self.gathered_weights(engine, by_name=True))
        return weights_checksum(named, in_name_order=True)

    def value_checksum(self) -> str | None:
        return None if self.value_engine is None else self.weights_checksum(self.value_engine)

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, folder: str) -> None:
        """Model, optimizer and scheduler state of every rank, its version and RNG."""
        state = dict(version=self.version, torch_rng=torch.get_rng_state(), py_rng=random.getstate())
        self.engine.save_checkpoint(folder, tag="state", client_state=state)
        if self.value_engine is not None:
            self.value_engine.save_checkpoint(str(Path(folder, "value")), tag="state")
        if self.reference is not None and self.sharded:  # each rank its partitions: none holds the whole
            shards = {n: own_partition(p, n).clone() for n, p in self.reference.named_parameters()}
            torch.save(shards, Path(folder) / reference_shard(self.rank, self.world_size))
        elif self.reference is not None and self.rank == 0:
            torch.save(self.reference.state_dict(), Path(folder) / "reference.pt")

    def load_checkpoint(self, folder: str) -> dict:
        _, state = self.engine.load_checkpoint(folder, tag="state")
        if self.value_engine is not None:
            value_dir = Path(folder, "value")
            if not value_dir.is_dir():
                raise FileNotFoundError(f"{folder}: the checkpoint has no value model (value/), which this run trains")
            self.value_engine.load_checkpoint(str(value_dir), tag="state")
        self.version = state["version"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        if self.reference is not None:
            self._load_reference(Path(folder))
        return state

    def _load_reference(self, folder: Path) -> None:
        """The reference of a checkpoint: this rank's partitions (ZeRO-3), or the whole state dict
        (reference.pt). A checkpoint without a reference (its run had none) keeps the model's."""
        if not self.sharded:
            if (folder / "reference.pt").is_file():
                self.reference.load_state_dict(torch.load(folder / "reference.pt", map_location=self.device))
            elif any(folder.glob("reference-zero3-*")):
                raise FileNotFoundError(
                    f"{folder}: its reference was saved partitioned by ZeRO-3 ranks: resume it "
                    "with the same learner.zero_stage=3 and number of ranks"
                )
            return
        shard = folder / reference_shard(self.rank, self.world_size)
        if not shard.is_file():
            found = sorted(p.name for p in folder.glob("reference*"))
            if found:
                raise FileNotFoundError(
                    f"{folder}: no {shard.name} (found {', '.join(found)}): a ZeRO-3 reference "
                    f"resumes on the same number of ZeRO-3 ranks it was saved from"
                )
            return
        saved = torch.load(shard, map_location=self.device)
        with torch.no_grad():
            for name, param in self.reference.named_parameters():
                own_partition(param, name).copy_(saved[name])

    def save_hf(self, folder: str) -> None:
        """The policy as a Hugging Face folder, and the value model (if any) as its own folder in
        ``folder/value`` (rank 0 writes; every rank must call). Rank 0 moves each gathered tensor to
        the host as it comes; the other ranks keep none (under ZeRO-3 a rank's extra device memory is
        one parameter at a time, not the model)."""
        weights = self.host_weights()
        if self.rank == 0:
            self.engine.module.save_pretrained(folder, state_dict=weights, safe_serialization=True)
        if self.value_engine is not None:
            value = self.host_weights(self.value_engine)
            if self.rank == 0:
                save_value_folder(str(Path(folder, "value")), self.value_engine.module.backbone, value)

    def host_weights(self, engine=None) -> dict[str, torch.Tensor] | None:
        """The full weights on the host, on rank 0; None on the others, which only take part in the
        gathers. Under ZeRO-3 rank 0 copies each gathered parameter straight to the host and every
        rank frees it before the next: beyond the host copy a rank holds one gathered parameter at
        a time, and the device never a copy of it. (ZeRO 0-2 on the CPU: the parameters themselves.)"""
        weights = dict(self.host_named(engine))
        return weights if self.rank == 0 else None

    def host_named(self, engine=None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor on the host) of each parameter, gathered one at a time, on rank 0; the
        other ranks take part in the gathers and get nothing (they must still iterate)."""
        for name, tensor, partitioned in self.gathered_weights(engine):
            if self.rank == 0:
                yield name, host_copy(tensor, partitioned)


def host_copy(tensor: torch.Tensor, partitioned: bool) -> torch.Tensor:
    """A gathered weight (``gathered_weights``) on the host: a ZeRO-3 gather is freed at the next
    parameter, so it is copied even on CPU; a whole parameter is moved (on CPU: itself)."""
    return tensor.to("cpu", copy=True) if partitioned else tensor.cpu()


def own_partition(param: torch.Tensor, name: str) -> torch.Tensor:
    """This rank's partition of a ZeRO-3 parameter (flat, padded to the same size on every rank)."""
    if not is_partitioned(param):
        raise RuntimeError(f"{name}: not partitioned by ZeRO-3 on this rank")
    return param.ds_tensor


def reference_shard(rank: int, world_size: int) -> str:
    """The checkpoint file of a ZeRO-3 rank's partitions of the reference."""
    return f"reference-zero3-rank{rank}-of-{world_size}.pt"
