"""The learner on one accelerator, without Ray or vLLM: the checks a GPU machine runs in minutes.

For each attention implementation (sdpa; flash_attention_2 when flash_attn imports, on CUDA) and
ZeRO stage (0 and 3, one rank), a ``LearnerRank`` (the learner's own class, with a reference
model) on a model built here (random weights, no hub) checks, one printed line each, PASS or FAIL:

- packed = padded: the log-probs of a micro-batch of GRPO groups computed packed and padded agree
  (within bf16's rounding on CUDA, 1e-4 in fp32), and ZeRO-3's equal ZeRO-0's;
- a train step (GRPO with a KL term to the reference) gives a finite loss and changes the weights;
- the export path's memory: ``host_weights`` (the gather loop of a push's export and of a save)
  holds at most the largest parameter (gathered) beyond the model on the device (CUDA:
  ``max_memory_allocated``; CPU, where the device is the host: resident memory, the host copy it
  returns left out).

Exit status 1 if any check fails. ``--device cpu`` runs it in fp32 on the CPU (the test suite
does, on a tiny model). It imports neither ray nor vllm, and checks that none was imported.

    python bench/gpu_check.py                      # CUDA, bf16, a ~150M-parameter Llama
    python bench/gpu_check.py --device cpu --size tiny
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/gpu_check.py`

import torch

SIZES = {  # LlamaConfig fields: "small" is a ~150M-parameter model (untied head), "tiny" for the CPU test
    "small": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=512,
    ),
}
FAILED: list[str] = []


def report(name: str, ok: bool, figures: str) -> None:
    """One line per check: PASS or FAIL, its name and its figures."""
    print(f"{'PASS' if ok else 'FAIL'} {name}: {figures}", flush=True)
    if not ok:
        FAILED.append(name)


def learner_config(zero_stage: int):
    """The learner settings a run's ``LearnerConfig`` holds (launch.config needs pydantic: not imported here)."""
    return types.SimpleNamespace(
        num_ranks=1,
        zero_stage=zero_stage,
        lr=1e-4,
        value_lr=None,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        grad_clip=1.0,
        warmup_steps=0,
        micro_batch_size=16,
        micro_batch_tokens=0,
        packing=True,
        share_prompts=True,
        gradient_checkpointing=False,
        cpu_threads=0,
        seed=0,
    )


def build_model(folder: Path, size: str) -> Path:
    """A random Llama (seeded) saved in fp32 as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_batch(vocab: int):
    """4 GRPO groups (a prompt of 20-40 tokens, 4 responses of 10-60 each), seeded."""
    from rollout.records import TrainBatch, TrainSequence

    rng = random.Random(0)
    rows = []
    for _ in range(4):
        prompt = [rng.randrange(1, vocab) for _ in range(rng.randint(20, 40))]
        for k in range(4):
            response = [rng.randrange(1, vocab) for _ in range(rng.randint(10, 60))]
            rows.append(TrainSequence(prompt, response, [-3.0] * len(response), advantage=(k % 2) - 0.5))
    return TrainBatch(rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_now(device: torch.device) -> int:
    """Device memory allocated (CUDA), or this process's anonymous resident memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return int(re.search(r"RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def export_extra(rank) -> tuple[int, int]:
    """Peak memory of ``rank.host_weights()`` (the gather loop of a push's export and of a save)
    beyond the level before it, and the bytes of the host copy it returns. CUDA: device memory
    (``max_memory_allocated``: the host copy is not on it). CPU, where the device is the host: the
    process's anonymous resident memory, sampled by a thread, less the host copy."""
    device = rank.device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        level = torch.cuda.memory_allocated(device)
        weights = rank.host_weights()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        level = peak = memory_now(device)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, memory_now(device))
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        weights = rank.host_weights()
        done.set()
        sampler.join()
        peak = max(peak, memory_now(device))
    kept = sum(t.numel() * t.element_size() for t in weights.values())
    live = {p.data_ptr() for p in rank.engine.module.parameters()}  # ZeRO 0-2 on the CPU: the parameters themselves
    copied = sum(t.numel() * t.element_size() for t in weights.values() if t.data_ptr() not in live)
    return peak - level - (copied if device.type == "cpu" else 0), kept


def check(model: Path, device: torch.device, attn: str, zero_stage: int, baseline: dict) -> None:
    """One LearnerRank on ``model`` with this attention and ZeRO stage: its checks, printed."""
    from learner.objective import Totals
    from learner.trainer import LearnerRank
    from rollout.records import LossSpec, weights_checksum

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    label = f"{attn} zero{zero_stage} {dtype}"
    settings = types.SimpleNamespace(dtype=dtype, attn_implementation=attn, trust_remote_code=False)
    t0 = time.perf_counter()
    rank = LearnerRank(
        str(model), learner_config(zero_stage), 0, 1, "127.0.0.1", free_port(), needs_reference=True, model=settings
    )
    load_s = time.perf_counter() - t0
    got = rank.engine.module.config._attn_implementation
    report(
        f"{label} load",
        got in (attn, "syncrl_block_sdpa") and rank.device.type == device.type,
        f"attention {got}, device {rank.device}, {load_s:.1f} s",
    )

    batch = make_batch(rank.engine.module.config.vocab_size)
    cb = rank._collate(batch)
    with torch.no_grad():
        padded = rank._logps(rank.engine, cb, None)[0][1.0][0].float()
        packed = rank._logps(rank.engine, cb, rank._pack(cb))[0][1.0][0].float()
    mask = cb.loss_mask.bool()
    diff = (packed - padded)[mask].abs()
    tol_max, tol_mean = (0.25, 0.03) if dtype == "bfloat16" else (1e-4, 1e-5)  # bf16: logits rounded to 8 bits
    report(
        f"{label} packed = padded log-probs",
        bool(diff.max() <= tol_max and diff.mean() <= tol_mean),
        f"max |diff| {diff.max():.2e} (<= {tol_max}), mean {diff.mean():.2e} (<= {tol_mean}) over {int(mask.sum())} "
        f"tokens; mean log-prob {padded[mask].mean():.3f}",
    )
    if attn in baseline:  # ZeRO-3 against ZeRO-0, same attention
        across = (padded - baseline[attn])[mask].abs()
        report(
            f"{label} log-probs = zero0's",
            bool(across.max() <= tol_max and across.mean() <= tol_mean),
            f"max |diff| {across.max():.2e}, mean {across.mean():.2e}",
        )
    else:
        baseline[attn] = padded

    total = sum(
        p.ds_numel * p.element_size() if hasattr(p, "ds_numel") else p.numel() * p.element_size()
        for p in rank.engine.module.parameters()
    )
    largest = max(
        p.ds_numel * p.element_size() if hasattr(p, "ds_numel") else p.numel() * p.element_size()
        for p in rank.engine.module.parameters()
    )
    extra, output = export_extra(rank)
    slack = 64 * 2**20 if device.type == "cpu" else 2**20  # CPU: the allocator's and the sampler's noise
    report(
        f"{label} export memory",
        extra <= largest + slack,
        f"peak extra {extra / 1e6:.1f} MB beyond the {output / 1e6:.1f} MB host copy; model {total / 1e6:.1f} MB, "
        f"largest parameter {largest / 1e6:.1f} MB ({extra / total:.2f} of the model, {extra / largest:.2f} "
        f"of the largest; at most 1 of it + {slack / 2**20:.0f} MiB)",
    )

    before = weights_checksum(rank.named_full_weights())
    spec = LossSpec(grpo_weight=1.0, kl_coef=0.05, clip_low=0.2, clip_high=0.28)
    t0 = time.perf_counter()
    metrics = rank.train_step(batch, spec, Totals.of(batch), rank.num_micro_batches(batch))
    step_s = time.perf_counter() - t0
    changed = weights_checksum(rank.named_full_weights()) != before
    report(
        f"{label} train step",
        math.isfinite(metrics["loss"]) and changed,
        f"loss {metrics['loss']:.4f}, kl {metrics.get('kl', float('nan')):.2e}, weights changed: {changed}, "
        f"{step_s:.2f} s",
    )
    del rank, cb, padded, packed
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="the built model (default: small on CUDA, tiny on CPU)"
    )
    ap.add_argument("--model", help="a Hugging Face causal LM folder instead of a built model")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the learner takes a visible GPU if there is one
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    elif not torch.cuda.is_available():
        report("CUDA", False, "torch.cuda.is_available() is False: run with --device cpu, or fix the CUDA install")
        return 1
    device = torch.device(args.device)
    import deepspeed
    import transformers

    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}, "
        f"{gpu}, Python {sys.version.split()[0]}",
        flush=True,
    )
    from learner.loading import _has_flash_attn

    attns = ["sdpa"] + (["flash_attention_2"] if device.type == "cuda" and _has_flash_attn() else [])
    if device.type == "cuda" and "flash_attention_2" not in attns:
        print("SKIP flash_attention_2: flash_attn does not import", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        size = args.size or ("small" if device.type == "cuda" else "tiny")
        model = Path(args.model) if args.model else build_model(Path(tmp, "model"), size)
        for attn in attns:
            baseline: dict = {}
            for zero_stage in (0, 3):
                try:
                    check(model, device, attn, zero_stage, baseline)
                except Exception as err:  # a crash is a failed check; the others still run
                    report(f"{attn} zero{zero_stage}", False, f"{type(err).__name__}: {str(err)[:500]}")
    report("no ray or vllm imported", not {"ray", "vllm"} & set(sys.modules), "the learner runs without them")
    print(f"{'FAILED: ' + ', '.join(FAILED) if FAILED else 'ALL PASSED'} in {time.perf_counter() - start:.0f} s")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
