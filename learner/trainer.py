"""One learner rank: a DeepSpeed engine over a Hugging Face causal LM.

The rank trains on its share of a step's ``TrainBatch`` with the step's ``LossSpec``; it knows
no algorithm. On CPU it runs DeepSpeed's cpu accelerator with gloo, fp32 and torch AdamW (no op
compile); on GPU bf16 with NCCL. Gradient accumulation is unmanaged: every micro-batch's loss is
already normalized by the whole step's totals, the ranks' parts are summed (DeepSpeed averages
over ranks, so each rank scales by the world size), and ``step()`` is the boundary.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from learner.logprobs import logprobs_and_entropy, token_logprobs_and_entropy
from learner.objective import CollatedBatch, Totals, collate, compute_loss, micro_batches
from learner.packing import pack, packed_mask, unpack
from rollout.records import LossSpec, TrainBatch, TrainSequence, weights_checksum

DUMMY = TrainBatch([TrainSequence(prompt_ids=[0], response_ids=[0], behaviour_logps=[0.0])])


def ds_config(cfg: Any, gpu: bool) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "overlap_comm": False},
        "bf16": {"enabled": gpu},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": cfg.lr, "betas": list(cfg.betas), "weight_decay": cfg.weight_decay, "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }  # fmt: skip
    if cfg.warmup_steps:
        config["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_num_steps": cfg.warmup_steps, "warmup_type": "linear"}}
    return config


def rank_micro_batches(batch: TrainBatch, cfg: Any) -> list[TrainBatch]:
    """The micro-batches a rank runs on its share: ``micro_batch_size`` rows and at most
    ``micro_batch_tokens`` tokens, counted as packed when prompts are shared."""
    shared = cfg.packing and cfg.share_prompts
    return micro_batches(batch, cfg.micro_batch_size, cfg.micro_batch_tokens, shared) if batch.sequences else []


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> str:
    """Join the learner's process group; returns the backend (gloo on CPU, nccl on GPU)."""
    import deepspeed

    gpu = torch.cuda.is_available()
    if not gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "syncrl" / "torch_extensions"))
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0" if not gpu else str(rank % torch.cuda.device_count()))  # fmt: skip
    os.environ.pop("LOCAL_SIZE", None)  # with it, each CPU rank leaks a /dev/shm file
    backend = "nccl" if gpu else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    return backend


class LearnerRank:
    """A DeepSpeed rank: log-probs, losses, optimizer steps, weight export, checkpoints."""

    def __init__(self, model_path: str, cfg: Any, rank: int, world_size: int, master_addr: str, master_port: int,
                 temperature: float = 1.0, needs_reference: bool = False):  # fmt: skip
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.rank, self.world_size, self.cfg, self.temperature = rank, world_size, cfg, temperature
        self.backend = init_distributed(rank, world_size, master_addr, master_port)
        self.gpu = torch.cuda.is_available()
        if not self.gpu:  # Ray sets OMP_NUM_THREADS=1 in a 1-CPU actor; a CPU learner wants more
            torch.set_num_threads(cfg.cpu_threads or max(1, len(os.sched_getaffinity(0)) // world_size))
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if self.gpu else torch.device("cpu")
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.dtype = dtype = torch.bfloat16 if self.gpu else torch.float32
        load = dict(dtype=dtype)
        if self.gpu and _has_flash_attn():
            load["attn_implementation"] = "flash_attention_2"
        model = AutoModelForCausalLM.from_pretrained(model_path, **load)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=ds_config(cfg, self.gpu))  # fmt: skip
        self.reference = None
        if needs_reference:
            self.reference = self._frozen_copy(model_path, load)
        self.version = 0

    def _frozen_copy(self, model_path: str, load: dict) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(model_path, **load).to(self.device).eval()
        ref.requires_grad_(False)
        return ref

    # -- forward ------------------------------------------------------------------------------
    def _logps(self, module: torch.nn.Module, cb: CollatedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and entropies [N, T] of a padded batch (0 off the response tokens),
        computed padded or packed (learner.packing)."""
        if not self.cfg.packing:
            logits = module(input_ids=cb.input_ids, attention_mask=cb.attention_mask, use_cache=False).logits
            return token_logprobs_and_entropy(logits, cb.input_ids, self.temperature)
        flash = self.engine.module.config._attn_implementation == "flash_attention_2"
        packed = pack(cb.input_ids, cb.attention_mask, cb.loss_mask, share_prompts=self.cfg.share_prompts and not flash)
        kwargs = dict(input_ids=packed.input_ids, position_ids=packed.position_ids, logits_to_keep=packed.pred, use_cache=False)
        if not flash:  # flash-attention reads the segments from the position ids
            kwargs["attention_mask"] = packed_mask(packed, self.dtype)
        logps, entropy = logprobs_and_entropy(module(**kwargs).logits[0], packed.target, self.temperature)
        return unpack(logps, packed, cb.input_ids.shape), unpack(entropy, packed, cb.input_ids.shape)

    def train_step(self, batch: TrainBatch, spec: LossSpec, totals: Totals, num_micro: int) -> dict[str, float]:
        """One optimizer step on this rank's share. ``num_micro``: micro-batches every rank runs
        (the same on all ranks: ZeRO-3 gathers parameters in each forward); extra ones are
        zero-weight dummies."""
        self.engine.train()
        parts = rank_micro_batches(batch, self.cfg)
        if len(parts) > num_micro:
            raise ValueError(f"rank {self.rank}: {len(parts)} micro-batches, more than the agreed {num_micro}")
        summed: dict[str, float] = {}
        for part in parts + [DUMMY] * (num_micro - len(parts)):
            cb = collate(part, self.pad_token_id)
            cb = CollatedBatch(**{k: v.to(self.device) for k, v in vars(cb).items()})
            logps, entropy = self._logps(self.engine, cb)
            ref_logps = None
            if self.reference is not None:
                with torch.no_grad():
                    ref_logps, _ = self._logps(self.reference, cb)
            loss, metrics = compute_loss(spec, cb, logps.float(), entropy.float(),
                                         None if ref_logps is None else ref_logps.float(), totals)  # fmt: skip
            if part is DUMMY:
                loss, metrics = loss * 0.0, {}
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            for k, v in metrics.items():
                summed[k] = summed.get(k, 0.0) + v
        self.engine.step()
        self.version += 1
        grad_norm = self.engine.get_global_grad_norm()  # None where DeepSpeed does not compute it (ZeRO-0)
        if grad_norm is not None:
            summed["grad_norm"] = float(grad_norm)
        summed["lr"] = self.engine.get_lr()[0]
        summed["tokens"] = float(sum(len(s.prompt_ids) + len(s.response_ids) for s in batch.sequences))
        return summed

    def num_micro_batches(self, batch: TrainBatch) -> int:
        return len(rank_micro_batches(batch, self.cfg))

    # -- weights ------------------------------------------------------------------------------
    def named_full_weights(self):
        """Yield (name, full tensor) of the policy in Hugging Face names. Every rank must iterate
        (ZeRO-3 gathers each parameter collectively); all ranks see the full tensors."""
        import deepspeed

        module = self.engine.module
        for name, param in module.named_parameters():
            if hasattr(param, "ds_id"):  # ZeRO-3 partitioned
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.detach().clone()
            else:
                yield name, param.detach()

    def export_weights(self) -> list[tuple[str, torch.Tensor]] | None:
        """The full weights as CPU copies on rank 0 (None on other ranks); rank 0 keeps them as
        the last pushed weights."""
        out = [(n, t.to("cpu", copy=True)) for n, t in self.named_full_weights()]
        if self.rank != 0:
            return None
        self.pushed = out
        return out

    # The weights last pushed to the engines (rank 0): a checkpoint taken while the engines lag
    # the learner stores them, so a resumed run gives the engines exactly what they had.
    pushed: list[tuple[str, torch.Tensor]] | None = None

    def save_pushed_weights(self, path: str) -> None:
        from safetensors.torch import save_file

        if self.pushed is None:
            raise RuntimeError("no weights were pushed yet")
        save_file({n: t.contiguous() for n, t in self.pushed}, path)

    def load_pushed_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        self.pushed = list(load_file(path).items())

    def sync_reference(self) -> None:
        """Reference sync: the frozen reference becomes a copy of the current policy."""
        if self.reference is None:
            return
        params = dict(self.reference.named_parameters())
        with torch.no_grad():
            for name, tensor in self.named_full_weights():
                params[name].copy_(tensor)

    def weights_checksum(self) -> str:
        return weights_checksum(self.named_full_weights())

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, folder: str, client_state: dict) -> None:
        """Model, optimizer and scheduler state of every rank, plus ``client_state`` and RNG."""
        state = dict(client_state, version=self.version, torch_rng=torch.get_rng_state(), py_rng=random.getstate())
        self.engine.save_checkpoint(folder, tag="state", client_state=state)
        if self.reference is not None and self.rank == 0:
            torch.save(self.reference.state_dict(), Path(folder) / "reference.pt")

    def load_checkpoint(self, folder: str) -> dict:
        _, state = self.engine.load_checkpoint(folder, tag="state")
        self.version = state["version"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        ref_file = Path(folder) / "reference.pt"
        if self.reference is not None and ref_file.is_file():
            self.reference.load_state_dict(torch.load(ref_file, map_location=self.device))
        return state

    def save_hf(self, folder: str) -> None:
        """The policy as a Hugging Face folder (rank 0 writes; every rank must call)."""
        weights = dict(self.named_full_weights())
        if self.rank == 0:
            module = self.engine.module
            module.save_pretrained(folder, state_dict={k: v.cpu() for k, v in weights.items()}, safe_serialization=True)


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True
