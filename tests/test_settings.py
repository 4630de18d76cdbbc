"""Settings that do what they say: model.dtype, model.trust_remote_code, model.attn_implementation,
data.max_prompt_tokens, and the weight push's log (no "Failed to load weights" noise)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from launch.config import ConfigError, LearnerConfig, ModelConfig, SyncRLConfig, engine_settings, load_config
from learner import loading, trainer
from learner.loading import attn_implementation, load_kwargs, model_dtype
from learner.trainer import ds_config

CUSTOM_CONFIG = """from transformers import LlamaConfig


class CustomLlamaConfig(LlamaConfig):
    model_type = "syncrl_custom_llama"
"""
CUSTOM_MODELING = """from transformers import LlamaForCausalLM, LlamaModel

from .configuration_custom import CustomLlamaConfig


class CustomLlamaModel(LlamaModel):
    config_class = CustomLlamaConfig


class CustomLlamaForCausalLM(LlamaForCausalLM):
    config_class = CustomLlamaConfig
"""


@pytest.fixture(scope="module")
def remote_code_llama(tiny_llama, tmp_path_factory) -> str:
    """tiny_llama as a model with its own code (config.json auto_map): transformers loads it only
    with trust_remote_code=True."""
    folder = tmp_path_factory.mktemp("remote") / "custom-llama"
    shutil.copytree(tiny_llama, folder)
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODELING)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="syncrl_custom_llama",
        architectures=["CustomLlamaForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomLlamaConfig",
            "AutoModel": "modeling_custom.CustomLlamaModel",
            "AutoModelForCausalLM": "modeling_custom.CustomLlamaForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


# -- model.dtype, model.attn_implementation, model.trust_remote_code: the learner's loads ---------
def test_model_settings_give_the_learners_from_pretrained_arguments(monkeypatch):
    monkeypatch.setattr(loading, "_has_flash_attn", lambda: True)
    assert load_kwargs(None, gpu=False) == dict(dtype=torch.float32, trust_remote_code=False)
    assert load_kwargs(ModelConfig(), gpu=True) == dict(
        dtype=torch.bfloat16, trust_remote_code=False, attn_implementation="flash_attention_2"
    )
    explicit = ModelConfig(dtype="bfloat16", attn_implementation="eager", trust_remote_code=True)
    assert load_kwargs(explicit, gpu=False) == dict(
        dtype=torch.bfloat16, trust_remote_code=True, attn_implementation="eager"
    )
    assert model_dtype("float32", gpu=True) == torch.float32 and model_dtype("float16", gpu=False) == torch.float16
    # fp32 on a GPU: flash attention has no fp32 kernels, so auto keeps transformers' default (sdpa)
    assert load_kwargs(ModelConfig(dtype="float32"), gpu=True) == dict(dtype=torch.float32, trust_remote_code=False)
    assert attn_implementation("auto", gpu=True, dtype=torch.float16) == "flash_attention_2"
    with pytest.raises(ValueError, match=r"flash_attention_2 runs bf16 or fp16 only, and model.dtype gives float32"):
        attn_implementation("flash_attention_2", gpu=True, dtype=torch.float32)
    monkeypatch.setattr(loading, "_has_flash_attn", lambda: False)
    assert attn_implementation("auto", gpu=True) is None  # transformers' default (sdpa)
    assert attn_implementation("sdpa", gpu=True) == "sdpa"


def test_flash_attention_that_cannot_run_is_an_error_naming_the_field(monkeypatch):
    monkeypatch.setattr(loading, "_has_flash_attn", lambda: False)
    with pytest.raises(ValueError, match=r"model.attn_implementation=flash_attention_2, but the flash_attn package"):
        attn_implementation("flash_attention_2", gpu=True)
    with pytest.raises(ValueError, match=r"model.attn_implementation=flash_attention_2 needs a CUDA GPU"):
        attn_implementation("flash_attention_2", gpu=False)


def test_deepspeed_precision_follows_the_model_dtype():
    def precision(dtype):
        ds = ds_config(LearnerConfig(), dtype)
        return ds["bf16"]["enabled"], ds["fp16"]["enabled"]

    assert precision(torch.bfloat16) == (True, False)
    assert precision(torch.float16) == (False, True)
    assert precision(torch.float32) == (False, False)


@pytest.mark.system
def test_learner_loads_policy_reference_and_value_model_as_the_model_settings_say(ray_cluster, remote_code_llama):
    """bf16 on CPU, eager attention, and the folder's own model class (only with trust_remote_code)
    for the policy, the reference and the value model; a bf16 step trains."""
    import ray

    from actors.learner import LearnerGroup
    from rollout.algorithms import build_grpo_batch
    from rollout.records import LossSpec, Sample

    settings = ModelConfig(dtype="bfloat16", attn_implementation="eager", trust_remote_code=True)
    group = LearnerGroup(
        remote_code_llama, LearnerConfig(lr=1e-3), needs_reference=True, needs_value=True, model=settings
    )
    try:

        def inspect(rank):
            models = {"policy": rank.engine.module, "reference": rank.reference, "value": rank.value_engine.module}
            return {
                name: (
                    type(m.backbone if name == "value" else m).__name__,
                    {p.dtype for p in m.parameters()},
                    m.config._attn_implementation,
                )
                for name, m in models.items()
            }

        seen = ray.get(group.workers[0].call.remote(inspect))
        assert seen == {
            "policy": ("CustomLlamaForCausalLM", {torch.bfloat16}, "eager"),
            "reference": ("CustomLlamaForCausalLM", {torch.bfloat16}, "eager"),
            "value": ("CustomLlamaModel", {torch.bfloat16}, "eager"),
        }
        samples = [
            Sample(
                prompt_id="p",
                prompt_ids=[1, 5, 6],
                response_ids=[7 + k, 8, 9],
                logprobs=[-4.0] * 3,
                finish_reason="stop",
                policy_version=0,
                reward=float(k % 2),
            )
            for k in range(4)
        ]
        metrics = group.train_step(build_grpo_batch(samples), LossSpec(grpo_weight=1.0))
        assert torch.isfinite(torch.tensor(metrics["loss"]))
    finally:
        group.shutdown()


def test_value_scorer_follows_dtype_and_trust_remote_code(remote_code_llama):
    from learner.value import ValueScorer

    with pytest.raises(ValueError, match="trust_remote_code"):
        ValueScorer(remote_code_llama, model=ModelConfig())
    scorer = ValueScorer(remote_code_llama, threads=1, model=ModelConfig(dtype="bfloat16", trust_remote_code=True))
    assert type(scorer.model.backbone).__name__ == "CustomLlamaModel" and scorer.dtype == torch.bfloat16
    assert scorer.score([([1, 5], [6, 7])]) == [0.0]  # an untrained (zero) head


def test_driver_tokenizer_loads_pass_trust_remote_code(tiny_llama, monkeypatch):
    import transformers

    from launch import train

    calls, original = [], transformers.AutoTokenizer.from_pretrained

    def recording(path, *args, **kwargs):
        calls.append(kwargs.get("trust_remote_code"))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recording)
    cfg = load_config(None, ["model.trust_remote_code=true", "data.num_train=4"])
    train.load_tokenizer(tiny_llama, cfg.model.trust_remote_code)
    train.TokenTexts(tiny_llama, cfg.model.trust_remote_code)([1, 2])
    assert calls == [True, True]


# -- rollout.dtype "auto" follows model.dtype; trust_remote_code reaches vLLM ------------------------
def test_rollout_dtype_auto_follows_model_dtype_and_explicit_wins():
    from rollout.engine import engine_dtype

    cfg = SyncRLConfig.model_validate(
        {"model": {"dtype": "bfloat16", "trust_remote_code": True}, "rollout": {"num_workers": 2, "max_new_tokens": 7}}
    )
    settings = engine_settings(cfg)
    assert (settings.dtype, settings.trust_remote_code, settings.num_workers, settings.max_new_tokens) == (
        "bfloat16",
        True,
        2,
        7,
    )
    assert cfg.rollout.dtype == "auto"  # the config itself is left as written
    explicit = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"dtype": "float32"})})
    assert engine_settings(explicit).dtype == "float32"
    default = engine_settings(SyncRLConfig())
    assert default.dtype == "auto" and not default.trust_remote_code
    assert engine_dtype(default.dtype, gpu=False) == "float32" and engine_dtype(default.dtype, gpu=True) == "bfloat16"


def test_cpu_kv_cache_holds_one_step_of_sequences_per_engine():
    """rollout.cpu_kv_cache_gib None: each engine's share of a step's prompts, times the samples,
    each as long as the longest prompt plus max_new_tokens allows; at least one max_model_len."""

    def tokens(**sections):
        return engine_settings(SyncRLConfig.model_validate(sections)).kv_cache_tokens

    # 8 prompts on 3 engines: 3 on the busiest, x 4 samples = 12 sequences of 256 + 64 tokens
    assert tokens(data={"prompts_per_step": 8}, rollout={"num_workers": 3, "samples_per_prompt": 4}) == 12 * 320
    # a sequence is never longer than max_model_len
    assert tokens(data={"prompts_per_step": 2}, rollout={"samples_per_prompt": 2, "max_model_len": 300}) == 4 * 300
    # one short sequence: still room for max_model_len (vLLM asks for it)
    assert (
        tokens(
            data={"prompts_per_step": 1, "max_prompt_tokens": 8},
            rollout={"samples_per_prompt": 1, "max_new_tokens": 8, "max_model_len": 64},
        )
        == 64
    )


def test_engine_passes_dtype_and_trust_remote_code_to_vllm(tiny_llama, monkeypatch):
    import vllm

    from rollout.engine import RolloutEngine

    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def get_tokenizer(self):
            return None

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # restored after the test
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cfg = SyncRLConfig.model_validate(
        {"model": {"dtype": "bfloat16", "trust_remote_code": True}, "rollout": {"cpu_threads_bind": "nobind"}}
    )
    RolloutEngine(tiny_llama, engine_settings(cfg))
    assert seen["model"] == tiny_llama and seen["dtype"] == "bfloat16" and seen["trust_remote_code"] is True


# -- data.max_prompt_tokens ------------------------------------------------------------------------
def load_data(cfg, model_path: str) -> list:
    """The run's training items, read and tokenized as the driver does."""
    from launch.train import load_tokenizer
    from rollout.data import read_run_data, training_items

    return training_items(cfg, read_run_data(cfg), load_tokenizer(model_path))


def test_a_prompt_longer_than_max_prompt_tokens_stops_the_run_naming_it(tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "short", "prompt": "1 + 1?"})
        + "\n"
        + json.dumps({"id": "long-one", "prompt": "1 + 1? " * 40})
        + "\n"
    )
    cfg = load_config(None, [f"data.path={prompts}", "data.max_prompt_tokens=64"])
    with pytest.raises(
        ConfigError, match=r"data.max_prompt_tokens=64: prompt 'long-one' of .*prompts.jsonl is \d+ tokens"
    ):
        load_data(cfg, tiny_llama)
    cfg = load_config(None, ["data.task=add-1digit", "data.one_shot=true", "data.max_prompt_tokens=20"])
    with pytest.raises(ConfigError, match=r"prompt 'add-1digit/train/\d+' of data.task 'add-1digit' is \d+ tokens"):
        load_data(cfg, tiny_llama)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "2 + 2? " * 40, "chosen": "4", "rejected": "5"}) + "\n")
    cfg = load_config(None, [f"data.path={pairs}", "data.max_prompt_tokens=64", "sync.interval=inf"])
    with pytest.raises(ConfigError, match=r"prompt 'pair-1' of .*pairs.jsonl"):
        load_data(cfg, tiny_llama)


def test_the_default_max_prompt_tokens_fits_every_recipe(tiny_llama):
    """The longest generated prompts (one-shot chains, ~160 tokens with the tiny tokenizer) fit 256;
    so do the smollm2 recipes' prompts with SmolLM2's tokenizer (checked when it is prepared here)."""
    from launch.models import cache_dir

    cfg = load_config(None, ["data.task=chain-2op", "data.one_shot=true"])
    assert cfg.data.max_prompt_tokens == 256
    assert len(load_data(cfg, tiny_llama)) == cfg.data.num_train
    smollm2 = cache_dir() / "models" / "smollm2"
    if not (smollm2 / "config.json").is_file():
        pytest.skip("SmolLM2 is not prepared on this machine (launch/smollm2.py)")
    for recipe in ("smollm2-demo", "smollm2-experiment", "smollm2-oreo"):
        cfg = load_config(recipe)
        load_data(cfg, str(smollm2))


# -- the weight push's log -------------------------------------------------------------------------
def test_only_the_warnings_of_layers_without_checkpoint_tensors_are_filtered():
    from rollout.vllm_worker import UNLOADED, CheckpointlessLayerFilter, checkpointless_layers

    class Rotary(torch.nn.Module):
        def __init__(self, persistent: bool = False):
            super().__init__()
            self.register_buffer("cos_sin_cache", torch.zeros(4), persistent=persistent)

    class Scales(Rotary):  # a buffer a checkpoint does hold
        def __init__(self):
            super().__init__(persistent=True)

    class Head(torch.nn.Module):
        def __init__(self, weight=None):
            super().__init__()
            self.weight = weight if weight is not None else torch.nn.Parameter(torch.zeros(2, 2))

    embed = torch.nn.Embedding(2, 2)
    tied = torch.nn.ModuleList([embed, torch.nn.Linear(2, 2), Rotary(), Scales(), Head(embed.weight)])
    assert checkpointless_layers(tied.modules()) == {"Rotary", "Head"}
    untied_too = torch.nn.ModuleList([embed, Head(embed.weight), Head()])  # a Head with weights of its own
    assert checkpointless_layers(untied_too.modules()) == set()

    quiet = CheckpointlessLayerFilter({"RotaryEmbedding", "ParallelLMHead"})
    record = lambda msg, *args: logging.LogRecord("vllm", logging.WARNING, __file__, 1, msg, args, None)  # noqa: E731
    assert not quiet.filter(record(UNLOADED, "RotaryEmbedding")) and not quiet.filter(
        record(UNLOADED, "ParallelLMHead")
    )
    assert quiet.filter(record(UNLOADED, "QKVParallelLinear"))  # a layer with weights of its own still warns
    assert quiet.filter(record("Allocating %.1f MB of device memory", 3.0))
    assert quiet.dropped == {"RotaryEmbedding": 1, "ParallelLMHead": 1}


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.system
def test_a_push_logs_no_failed_to_load_weights(tiny_llama):
    """vLLM warns "RotaryEmbedding/ParallelLMHead: Failed to load weights" at every reload of a
    tied-embedding model; the push filters exactly those (and says so at debug level)."""
    from transformers import AutoModelForCausalLM

    from rollout.engine import KV_SPARE_TOKENS, RolloutEngine
    from rollout.records import Prompt
    from rollout.vllm_worker import RELOAD_LOGGER

    rollout = {"max_model_len": 128, "max_new_tokens": 4}  # the KV cache sized by the run (cpu_kv_cache_gib None)
    cfg = SyncRLConfig.model_validate(
        {"model": {"trust_remote_code": True}, "rollout": rollout}
    )  # plain folder: as before
    settings = engine_settings(cfg)
    engine = RolloutEngine(tiny_llama, settings)
    cache = engine.llm.llm_engine.vllm_config.cache_config  # what vLLM allocated from the bytes it was given
    assert (
        settings.kv_cache_tokens
        <= cache.num_gpu_blocks * cache.block_size
        <= settings.kv_cache_tokens + KV_SPARE_TOKENS
    )
    reload_log, syncrl_log = logging.getLogger(RELOAD_LOGGER), logging.getLogger("syncrl.rollout")
    seen, trace = Records(), Records()
    reload_log.addHandler(seen)
    syncrl_log.addHandler(trace)
    level = syncrl_log.level
    syncrl_log.setLevel(logging.DEBUG)
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        weights = [(name, p.detach()) for name, p in model.named_parameters()]  # as the learner pushes (tied: once)
        assert engine.update_weights(weights, version=1) == len(weights)
        assert engine.generate([Prompt(id="p", messages=[{"role": "user", "content": "1 + 1?"}])], n=1, temperature=0)
    finally:
        reload_log.removeHandler(seen)
        syncrl_log.removeHandler(trace)
        syncrl_log.setLevel(level)
    assert not [r.getMessage() for r in seen.records if "Failed to load weights" in r.getMessage()]
    (line,) = [r for r in trace.records if r.msg.startswith("loaded %d tensors")]
    # What was dropped: those two layers' warnings, or nothing where this process's vLLM already
    # gave them (an engine of an earlier test); the filter itself is the unit test above.
    assert line.args[0] == len(weights) and set(line.args[1]) <= {"RotaryEmbedding", "ParallelLMHead"}


def _file_backed(tensor: torch.Tensor) -> bool:
    """Whether a tensor's memory lies in a mapping of a file (/proc/self/maps names one)."""
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return len(fields) > 5 and fields[5].startswith("/")
    return False


def test_cpu_policy_owns_its_parameters_and_stays_tied(tiny_llama):
    """from_pretrained leaves fp32 parameters as views of the mapped safetensors file; the
    learner's copy owns its memory, the tied embedding is still one parameter, the values equal."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    expected = {n: p.detach().clone() for n, p in loaded.named_parameters()}
    assert any(_file_backed(p) for p in loaded.parameters())  # what own_memory is for
    owned = trainer.own_memory(loaded, gpu=False)
    assert not any(_file_backed(p) for p in owned.parameters())
    assert owned.lm_head.weight is owned.model.embed_tokens.weight
    assert all(torch.equal(p, expected[n]) for n, p in owned.named_parameters())


def test_step_memory_counts_gradients_and_adam_moments_per_zero_stage():
    model = torch.nn.Linear(10, 10, bias=False)  # 400 bytes of fp32
    assert [trainer.step_memory(model, stage, 2) for stage in (0, 1, 2, 3)] == [1200, 800, 600, 600]
    assert trainer.step_memory(model, 3, 1) == 1200


# -- imports without the cyclic GC -----------------------------------------------------------------
def test_imports_without_gc_freeze_only_what_a_block_imported(tmp_path, monkeypatch):
    """The collector is off inside and back on after; a block that imports a module freezes the
    objects there are, one that imports nothing freezes nothing (an earlier model stays collectable)."""
    import gc
    import sys

    from rollout.phases import imports_without_gc

    (tmp_path / "syncrl_probe_module.py").write_text("TABLE = [{'n': i} for i in range(1000)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with imports_without_gc():
            assert not gc.isenabled()
            import syncrl_probe_module  # noqa: F401
        assert gc.isenabled() and gc.get_freeze_count() > frozen + 1000
        frozen = gc.get_freeze_count()
        with imports_without_gc():
            import syncrl_probe_module  # noqa: F401,F811  (already imported: nothing new)
        assert gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        sys.modules.pop("syncrl_probe_module", None)
