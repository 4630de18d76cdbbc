"""One learner rank: a DeepSpeed engine over a Hugging Face causal LM.

The rank trains on its share of a step's ``TrainBatch`` with the step's ``LossSpec``; it knows
no algorithm. On CPU it runs DeepSpeed's cpu accelerator with gloo, fp32 and torch's fused AdamW
(no op compile); on GPU bf16 with NCCL (``model.dtype`` "auto"; an explicit dtype is used as given).
Gradient accumulation is unmanaged: every micro-batch's loss is already normalized by the whole
step's totals, the ranks' parts are summed (DeepSpeed averages over ranks, so each rank scales by
the world size), and ``step()`` is the boundary.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from learner.loading import load_kwargs
from learner.logprobs import logprobs_and_entropy
from learner.losses import kl_full_vocab
from learner.objective import (
    CollatedBatch,
    Totals,
    add_metrics,
    collate,
    compute_loss,
    compute_reward_model_loss,
    compute_value_loss,
    drift_sums,
    micro_batches,
)
from learner.packing import Packed, pack, packed_mask, unpack, use_block_attention
from learner.value import ValueModel
from learner.weights import RankWeights, is_partitioned
from rollout.phases import Phases, imports_without_gc
from rollout.records import LossSpec, TrainBatch, TrainSequence
from rollout.settings import LearnerConfig, ModelConfig

DUMMY = TrainBatch([TrainSequence(prompt_ids=[0], response_ids=[0], behaviour_logps=[0.0])])


def ds_config(cfg: LearnerConfig, dtype: torch.dtype, lr: float | None = None) -> dict:
    """The DeepSpeed config of a learner engine whose model is in ``dtype`` (bf16/fp16: DeepSpeed's
    mixed precision, fp32 master weights in the optimizer) (``lr``: another learning rate, e.g. the
    value model's)."""
    lr = cfg.lr if lr is None else lr
    config = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "overlap_comm": False},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "optimizer": {
            "type": "AdamW",
            # torch's fused AdamW: one pass over each tensor. On CPU torch's default is a loop of
            # ~10 passes per tensor (0.58 s a SmolLM2 step here, against 0.08 s fused: bench/memory.py).
            "params": {
                "lr": lr,
                "betas": list(cfg.betas),
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
                "fused": True,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.warmup_steps:
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": lr,
                "warmup_num_steps": cfg.warmup_steps,
                "warmup_type": "linear",
            },
        }
    return config


def rank_micro_batches(batch: TrainBatch, cfg: LearnerConfig, shares_prompts: bool | None = None) -> list[TrainBatch]:
    """The micro-batches a rank runs on its share: ``micro_batch_size`` rows and at most
    ``micro_batch_tokens`` tokens, a prompt shared by rows counted once when the rank packs them
    so (``shares_prompts``, ``LearnerRank.shares_prompts``; None: packing and share_prompts, as on
    sdpa; flash attention packs every row with its own prompt)."""
    shared = cfg.packing and cfg.share_prompts if shares_prompts is None else shares_prompts
    return micro_batches(batch, cfg.micro_batch_size, cfg.micro_batch_tokens, shared) if batch.sequences else []


def extensions_dir() -> str:
    """Where DeepSpeed's JIT-compiled ops (the CPU shm comm op, ~80 s to build) are cached: one
    folder per DeepSpeed install path and version pair. The build command names the install by
    the path Python imported it through, so one virtualenv reached by two paths (a symlink, a
    worktree) gave two commands that rebuilt the op over each other at every start in turn."""
    import hashlib

    import deepspeed

    where = f"{Path(deepspeed.__file__).parent} {deepspeed.__version__} torch {torch.__version__}"
    return str(Path.home() / ".cache" / "syncrl" / "torch_extensions" / hashlib.sha256(where.encode()).hexdigest()[:12])


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory comm op (65-130 s of C++ at
    the first start on a machine, and again whenever the installed headers change): the op only
    serves ``inference_all_reduce`` (tensor-parallel inference), never the collectives of ZeRO
    training, which go through torch.distributed (gloo) either way. DeepSpeed builds it only if
    its table of compatible ops says so, a dict it keeps (and reads) once per process."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def frozen_ds_config(cfg: LearnerConfig, dtype: torch.dtype) -> dict:
    """The DeepSpeed config of a frozen model (the reference) on ZeRO-3 ranks: no optimizer, its
    parameters partitioned across the ranks as the policy's, and none kept whole between forwards
    (persistence threshold 0: every forward gathers each layer and frees it after), so that a
    rank's partitions are the whole of its copy and ``sync_reference`` can overwrite them."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "overlap_comm": False, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


@contextmanager
def sharded_loading(config: dict | None) -> Iterator[None]:
    """Inside it, a ``from_pretrained`` under ZeRO-3 (``config``: a DeepSpeed config of stage 3)
    builds the model inside ``deepspeed.zero.Init``: each parameter is partitioned across the ranks
    as it is created, and the checkpoint's tensors are copied in one module at a time (rank 0 reads
    them), so no rank ever holds the whole model. transformers finds the config through a global
    weak reference to an ``HfDeepSpeedConfig``, which lives as long as this block. ``config``
    None (ZeRO 0-2): a plain load (each rank its full copy, as those stages keep one)."""
    if config is None or config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(config)  # noqa: F841  (held: transformers keeps only a weak reference)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def own_memory(model: torch.nn.Module, gpu: bool) -> torch.nn.Module:
    """A model loaded on the CPU, with its parameters in memory of its own. ``from_pretrained``
    leaves fp32 parameters as views of the safetensors file, mapped copy-on-write: the first
    optimizer step then copies them page by page (135 k page faults for SmolLM2, seconds of step
    1), and while the rank waits for the engines the kernel may drop the file's pages and fault
    them in again. On GPUs DeepSpeed moves the parameters to the device."""
    if not gpu:
        with torch.no_grad():
            for param in model.parameters():  # a tied weight is one parameter: it stays tied
                if not is_partitioned(param):  # zero.Init's partitions are already memory of their own
                    param.data = param.data.clone()
    return model


def step_memory(model: torch.nn.Module, zero_stage: int, world_size: int) -> int:
    """Bytes a rank allocates at its first optimizer step besides the model: the gradients (a
    share of them from ZeRO-2 on) and AdamW's two moments (a share from ZeRO-1 on)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = params if zero_stage < 2 else params // world_size
    return grads + 2 * (params if zero_stage == 0 else params // world_size)


def reserve_memory(nbytes: int) -> None:
    """Fault ``nbytes`` of fresh memory into this process and free it again, where it stays for
    the next allocations (``actors.common.keep_freed_memory``): done while the engines start, it
    takes the first step's page faults off that step (``python bench/learner.py`` times the first
    step against the later ones). Without that setting the memory
    goes back to the kernel and this only costs the time it takes."""
    torch.empty(nbytes, dtype=torch.uint8).fill_(0)


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> str:
    """Join the learner's process group; returns the backend (gloo on CPU, nccl on GPU)."""
    import deepspeed

    gpu = torch.cuda.is_available()
    if not gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0" if not gpu else str(rank % torch.cuda.device_count()),
    )
    os.environ.pop("LOCAL_SIZE", None)  # with it, each CPU rank leaks a /dev/shm file
    if not gpu:
        skip_shm_comm_op()
    backend = "nccl" if gpu else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    return backend


class LearnerRank(RankWeights):
    """A DeepSpeed rank: log-probs, losses, optimizer steps (its weights' export, checkpoints and
    saves: ``learner.weights.RankWeights``). With
    ``needs_value`` it also holds a value model (OREO) as a second DeepSpeed engine with its own
    AdamW (``cfg.value_lr``), trained on the same micro-batches. ``model``: the model settings
    (dtype, attn_implementation, trust_remote_code; None: the defaults), which every model the
    rank loads follows. ``reward_model``: the rank trains a reward model
    (the model folder loaded as a one-label sequence classifier: a scalar head, read at each row's
    last token, in place of the LM head) on a ``LossSpec`` with a Bradley-Terry term."""

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        needs_reference: bool = False,
        needs_value: bool = False,
        model: ModelConfig | None = None,
        reward_model: bool = False,
    ):
        self.phases = phases = Phases()
        with imports_without_gc():
            import deepspeed
            from transformers import AutoModelForCausalLM
        phases.mark("imports")
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.backend = init_distributed(rank, world_size, master_addr, master_port)
        phases.mark("process group")
        self.gpu = torch.cuda.is_available()
        if not self.gpu:  # Ray sets OMP_NUM_THREADS=1 in a 1-CPU actor; a CPU learner wants more
            torch.set_num_threads(cfg.cpu_threads or max(1, len(os.sched_getaffinity(0)) // world_size))
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if self.gpu else torch.device("cpu")
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model_load = load = load_kwargs(model, self.gpu)  # every from_pretrained of this rank
        self.dtype = dtype = load["dtype"]
        self.reward_model = reward_model
        # ZeRO-3: every model of the rank is built partitioned (zero.Init), never whole on a rank
        self.sharded = cfg.zero_stage == 3
        sharding = ds_config(cfg, dtype) if self.sharded else None
        with sharded_loading(sharding):
            if reward_model:
                policy = own_memory(load_reward_model(model_path, load), self.gpu)
            else:
                policy = own_memory(AutoModelForCausalLM.from_pretrained(model_path, **load), self.gpu)
        self.packing = cfg.packing and not reward_model  # a reward model's rows run padded: one score per row
        self.block_attention = self.packing and use_block_attention(policy)  # packed rows: attention block by block
        # packed rows share their prompt (flash attention's packing cannot: each row has its own)
        self.shares_prompts = (
            self.packing and cfg.share_prompts and policy.config._attn_implementation != "flash_attention_2"
        )
        if cfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        self.pad_token_id = policy.config.pad_token_id if policy.config.pad_token_id is not None else 0
        phases.mark("policy load")
        self.engine, *_ = deepspeed.initialize(
            model=policy, model_parameters=policy.parameters(), config=ds_config(cfg, dtype)
        )
        if world_size == 1 and cfg.zero_stage == 0:
            # One replica: ZeRO-0's gradient all-reduce would flatten every gradient into one
            # buffer, all-reduce it with itself and copy it back (0.5-1.1 s a SmolLM2 step here).
            self.engine.enable_backward_allreduce = False
        phases.mark("DeepSpeed initialize")
        self.reference = self.reference_engine = None
        if needs_reference:
            self.reference = self._frozen_copy(model_path, load)
            phases.mark("reference model")
        self.value_engine = None
        if needs_value:
            with sharded_loading(sharding):
                value = own_memory(ValueModel.from_pretrained(model_path, **load), self.gpu)
            if self.block_attention:
                use_block_attention(value.backbone)
            if cfg.gradient_checkpointing:
                value.gradient_checkpointing_enable()
            self.value_engine, *_ = deepspeed.initialize(
                model=value, model_parameters=value.parameters(), config=ds_config(cfg, dtype, cfg.value_lr)
            )
            phases.mark("value model")
        if not self.gpu:
            trained = [policy] + ([self.value_engine.module] if needs_value else [])
            reserve_memory(sum(step_memory(m, cfg.zero_stage, world_size) for m in trained))
            phases.mark("step memory")
        self.version = 0

    def _frozen_copy(self, model_path: str, load: dict) -> torch.nn.Module:
        """The reference: a frozen copy of the model folder. Under ZeRO-3 it is partitioned across
        the ranks like the policy (loaded under zero.Init, then run by a stage-3 DeepSpeed engine
        without optimizer, whose hooks gather each layer for its forward): each rank holds 1/R
        of it. Else each rank holds all of it."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        config = frozen_ds_config(self.cfg, self.dtype) if self.sharded else None
        with sharded_loading(config):
            ref = AutoModelForCausalLM.from_pretrained(model_path, **load)
        ref.requires_grad_(False)
        if self.block_attention:
            use_block_attention(ref)
        if config is None:
            return ref.to(self.device).eval()
        self.reference_engine, *_ = deepspeed.initialize(model=ref, config=config)
        self.reference_engine.eval()
        return self.reference_engine.module

    # -- forward ------------------------------------------------------------------------------
    def _collate(self, batch: TrainBatch) -> CollatedBatch:
        cb = collate(batch, self.pad_token_id)
        return CollatedBatch(**{k: v.to(self.device) for k, v in vars(cb).items()})

    def _pack(self, cb: CollatedBatch) -> Packed | None:
        """The micro-batch packed (learner.packing), or None when it runs padded."""
        if not self.packing:
            return None
        return pack(cb.input_ids, cb.attention_mask, cb.loss_mask, share_prompts=self.shares_prompts)

    def _inputs(self, cb: CollatedBatch, packed: Packed | None) -> dict:
        if packed is None:
            return dict(input_ids=cb.input_ids, attention_mask=cb.attention_mask)
        kwargs = dict(input_ids=packed.input_ids, position_ids=packed.position_ids)
        if self.engine.module.config._attn_implementation != "flash_attention_2":  # flash reads segments from positions
            kwargs["attention_mask"] = packed_mask(packed, self.dtype)
        if self.block_attention:
            kwargs["packed_spans"] = packed.spans
        return kwargs

    def _place(self, values: torch.Tensor, cb: CollatedBatch, packed: Packed | None) -> torch.Tensor:
        """Values of the positions that predict each token ([N, T-1] padded, [M] packed) in the
        [N, T] layout of input_ids: column t holds the value for token t (0 off the response)."""
        if packed is None:
            return torch.cat([values.new_zeros(values.shape[0], 1), values], dim=1)
        return unpack(values, packed, cb.input_ids.shape)

    def _logps(
        self,
        module: torch.nn.Module,
        cb: CollatedBatch,
        packed: Packed | None = None,
        keep_logits: bool = False,
        temperatures: tuple[float, ...] = (1.0,),
    ) -> tuple[dict[float, tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """Per-token log-probs and entropies [N, T] of a padded batch (0 off the response tokens)
        at each of ``temperatures`` (the logits divided by it), from one forward, computed padded
        or packed (learner.packing); with ``keep_logits`` also the logits that predict each token
        ([N, T-1, V] padded, [M, V] packed)."""
        if packed is None:
            logits = module(**self._inputs(cb, None), use_cache=False).logits[:, :-1]
            targets = cb.input_ids[:, 1:]
        else:
            logits = module(**self._inputs(cb, packed), logits_to_keep=packed.pred, use_cache=False).logits[0]
            targets = packed.target
        out = {}
        for t in temperatures:
            logps, entropy = logprobs_and_entropy(logits, targets, t)
            out[t] = self._place(logps, cb, packed), self._place(entropy, cb, packed)
        return out, logits if keep_logits else None

    def _values(self, cb: CollatedBatch, packed: Packed | None) -> torch.Tensor:
        """The value model's V [N, T]: column t holds V of the state before token t (the prompt
        and the response tokens before it), read at the last token of that state."""
        values = self.value_engine(**self._inputs(cb, packed))
        return self._place(values[:, :-1] if packed is None else values[0, packed.pred], cb, packed)

    def train_step(self, batch: TrainBatch, spec: LossSpec, totals: Totals, num_micro: int) -> dict[str, float]:
        """One optimizer step on this rank's share. ``num_micro``: micro-batches every rank runs
        (the same on all ranks: ZeRO-3 gathers parameters in each forward); extra ones are
        zero-weight dummies."""
        self.engine.train()
        parts = rank_micro_batches(batch, self.cfg, self.shares_prompts)
        if len(parts) > num_micro:
            raise ValueError(f"rank {self.rank}: {len(parts)} micro-batches, more than the agreed {num_micro}")
        with_value = spec.needs_value
        if with_value and self.value_engine is None:
            raise ValueError("this loss needs a value model, and the learner was started without one")
        if with_value:
            self.value_engine.train()
        summed: dict[str, float] = {}
        for part in parts + [DUMMY] * (num_micro - len(parts)):
            loss, value_loss, metrics = self._losses(self._collate(part), spec, totals)
            if part is DUMMY:  # every rank runs as many forwards as the others; a dummy weighs nothing
                loss, value_loss, metrics = loss * 0.0, None if value_loss is None else value_loss * 0.0, {}
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            if value_loss is not None:
                self.value_engine.backward(value_loss * self.world_size, scale_wrt_gas=False)
            add_metrics(summed, metrics)
        self.engine.step()
        self.version += 1
        grad_norm = self.engine.get_global_grad_norm()  # None where DeepSpeed does not compute it (ZeRO-0)
        if grad_norm is not None:
            summed["grad_norm"] = float(grad_norm)
        if with_value:
            self.value_engine.step()
            value_norm = self.value_engine.get_global_grad_norm()
            if value_norm is not None:
                summed["value_grad_norm"] = float(value_norm)
        summed["lr"] = self.engine.get_lr()[0]
        summed["tokens"] = float(sum(len(s.prompt_ids) + len(s.response_ids) for s in batch.sequences))
        return summed

    def _losses(
        self, cb: CollatedBatch, spec: LossSpec, totals: Totals
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """One micro-batch's forwards (policy; reference, value model and full logits as the spec
        needs) and losses: the policy's, the value model's (None without one) and the metrics."""
        if spec.scalar_head:  # a reward model: each row's score, as a plain sequence-classifier forward reads it
            if not self.reward_model:
                raise ValueError("a Bradley-Terry loss needs the learner started as a reward model")
            scores = self.engine(input_ids=cb.input_ids, attention_mask=cb.attention_mask, use_cache=False).logits[:, 0]
            loss, metrics = compute_reward_model_loss(spec, cb, scores.float(), totals)
            return loss, None, metrics
        packed = self._pack(cb)
        temps, t_grpo = spec.temperatures, spec.grpo_temperature  # the GRPO term's: the sampler's; the others': 1
        drift = bool(cb.has_behaviour.any())  # rows an engine generated: the drift, at the sampler's temperature
        forward_temps = tuple(dict.fromkeys(temps + ((spec.temperature,) if drift else ())))
        policy, logits = self._logps(
            self.engine, cb, packed, keep_logits=spec.needs_full_logits, temperatures=forward_temps
        )
        main = 1.0 if 1.0 in temps else t_grpo  # the other terms' temperature (GRPO's when it is the only term)
        logps, entropy = policy[main][0], policy[t_grpo][1]  # the entropy: the sampler's distribution with GRPO
        grpo_logps = policy[t_grpo][0].float() if spec.grpo_weight else None
        ref_logps = grpo_ref_logps = kl_tokens = values = value_loss = None
        if self.reference is not None:
            with torch.no_grad():
                ref, ref_logits = self._logps(
                    self.reference, cb, packed, keep_logits=spec.needs_full_logits, temperatures=temps
                )
                ref_logps = ref[main][0].float()
                grpo_ref_logps = ref[t_grpo][0].float() if spec.grpo_weight else None
            if logits is not None:  # KL regularization (OREO): temperature 1
                kl_tokens = self._place(kl_full_vocab(logits, ref_logits), cb, packed)
        if spec.needs_value:
            values = self._values(cb, packed).float()
        loss, metrics = compute_loss(
            spec,
            cb,
            logps.float(),
            entropy.float(),
            ref_logps,
            totals,
            values=values,
            kl_tokens=kl_tokens,
            grpo_logps=grpo_logps,
            grpo_ref_logps=grpo_ref_logps,
        )
        if spec.needs_value:
            value_loss, value_metrics = compute_value_loss(spec, cb, values, logps.float(), ref_logps, totals)
            metrics.update(value_metrics)
        if drift:
            staleness = self.version - cb.policy_versions
            metrics.update(drift_sums(policy[spec.temperature][0], cb, staleness, spec.clip_low, spec.clip_high))
        return loss, value_loss, metrics

    @torch.no_grad()
    def score_states(self, states: list[tuple[list[int], list[int]]]) -> list[float]:
        """V of each (prompt ids, response ids) state with the value model, through the forward
        that trains it (packing included): the state is a row whose response is followed by one
        more token, whose V is read (every rank must call: ZeRO-3 gathers in the forward)."""
        if self.value_engine is None:
            raise ValueError("this learner has no value model")
        self.value_engine.eval()
        out: list[float] = []
        for start in range(0, len(states), self.cfg.micro_batch_size):
            chunk = states[start : start + self.cfg.micro_batch_size]
            cb = self._collate(TrainBatch([TrainSequence(list(p), list(r) + [self.pad_token_id]) for p, r in chunk]))
            values = self._values(cb, self._pack(cb))
            last = cb.attention_mask.sum(-1) - 1
            out += values[torch.arange(len(chunk), device=self.device), last].float().tolist()
        return out

    def num_micro_batches(self, batch: TrainBatch) -> int:
        return len(rank_micro_batches(batch, self.cfg, self.shares_prompts))

    # -- weights ------------------------------------------------------------------------------
    def set_lr(self, lr: float, value_model: bool = False) -> None:
        """A new learning rate (the policy's, or the value model's) from the next optimizer step on
        (``syncrl ctl set learner.lr``); a warm-up schedule keeps its shape and ends at ``lr``."""
        engine = self.value_engine if value_model else self.engine
        scheduler = engine.lr_scheduler
        if scheduler is not None:  # DeepSpeed's WarmupLR: min -> max over warmup_num_steps, then max
            scheduler.max_lrs = [lr] * len(scheduler.max_lrs)
            scheduler.delta_lrs = [big - small for big, small in zip(scheduler.max_lrs, scheduler.min_lrs)]
            lrs = scheduler.get_lr()
        else:
            lrs = [lr] * len(engine.optimizer.param_groups)
        for group, value in zip(engine.optimizer.param_groups, lrs):
            group["lr"] = value


def load_reward_model(model_path: str, load: dict) -> torch.nn.Module:
    """The model folder as a one-label sequence classifier (a causal LM's folder gets a new score
    head), its pad token set from the tokenizer when the config has none: the classifier finds each
    row's last token by it, here and in every later ``AutoModelForSequenceClassification`` load of
    the saved folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, **load)
    if model.config.pad_token_id is None:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=load.get("trust_remote_code", False))
        model.config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    return model
