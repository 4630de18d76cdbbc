"""Reward-model scoring through a reward worker against a plain transformers forward.

The worker is a real ``RewardWorker`` Ray actor (local cluster) with one ``reward_model`` route:
the samples go to it over Ray, it builds each sample's text (``reward_text``, chat template),
tokenizes, batches and scores. The baseline, in this process, runs
``AutoModelForSequenceClassification`` on the same texts: the tokenizer pads each batch and one
forward reads the logits. Both use the same number of threads (``--cpus``) and the same
batches: ``batch_size`` rows in input order ("padded"), or ``batch_tokens`` over the samples
sorted by length ("by tokens"), and are timed in turns. The responses' lengths spread from
``--min-tokens`` to ``--max-tokens``, so padding costs. Prints samples/s of each, the
worker/baseline ratio (goal >= 0.9), the largest score difference between the two, and the
machine's 1-minute load average (the worker, a niced Ray process, loses most to other jobs).

    python bench/reward_model.py                    # tiny random reward model
    python bench/reward_model.py --model smollm2    # SmolLM2-135M with a new one-logit head
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/reward_model.py` from a checkout

from common import machine, print_table  # noqa: E402


def model_folder(name: str) -> str:
    """A one-logit classifier folder: the tiny random reward model, SmolLM2 with a new (seeded)
    score head, or a folder as given."""
    from launch.models import build_tiny_reward_model, resolve_model

    if name == "tiny":
        return str(build_tiny_reward_model(tempfile.mkdtemp(prefix="bench-rm-"), seed=0))
    if name != "smollm2":
        return name
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    causal = resolve_model("smollm2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(causal, num_labels=1, dtype=torch.float32)
    folder = tempfile.mkdtemp(prefix="bench-rm-smollm2-")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(causal).save_pretrained(folder)
    return folder


def make_samples(tokenizer, n: int, low: int, high: int, seed: int = 0) -> list:
    """``n`` chat samples whose responses are ``low`` to ``high`` tokens of decoded random ids
    (uniform lengths, in random order)."""
    from rollout.records import Sample

    rng = random.Random(seed)
    ids = list(range(len(tokenizer.all_special_ids) + 10, min(len(tokenizer), 30000)))
    samples = []
    for i in range(n):
        text = tokenizer.decode([rng.choice(ids) for _ in range(high)], skip_special_tokens=True)
        kept = tokenizer(text, add_special_tokens=False)["input_ids"][
            : rng.randint(low, high)
        ]  # decoding re-tokenizes longer
        response = tokenizer.decode(kept, skip_special_tokens=True)
        samples.append(
            Sample(
                prompt_id=str(i),
                prompt_ids=[],
                response_ids=[],
                logprobs=[],
                finish_reason="stop",
                policy_version=0,
                prompt_text=f"Question {i}: say something.",
                response_text=response,
            )
        )
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny, smollm2 or a sequence-classification folder")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--min-tokens", type=int, default=8, help="the shortest response")
    ap.add_argument("--max-tokens", type=int, default=400, help="the longest response")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per batch (route batch_size)")
    ap.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per batch in the by-tokens rows")
    ap.add_argument("--cpus", type=int, default=1, help="the worker's CPUs = the baseline's torch threads")
    ap.add_argument("--repeat", type=int, default=5, help="timed passes over the samples (after one warm-up)")
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from actors.reward import RewardWorker
    from launch.config import RewardRoute
    from rewards.reward_model import reward_text, token_batches

    folder = model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "right"
    samples = make_samples(tokenizer, args.samples, args.min_tokens, args.max_tokens)
    texts = [reward_text(tokenizer, s.messages, s.response_text) for s in samples]
    special = not tokenizer.chat_template  # as the worker: a chat template writes its own special tokens
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    torch.set_num_threads(args.cpus)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).to(device).eval()

    def baseline(batches: list[list[int]]) -> list[float]:
        scores = [0.0] * len(texts)
        with torch.inference_mode():
            for batch in batches:
                enc = tokenizer(
                    [texts[i] for i in batch], add_special_tokens=special, padding=True, return_tensors="pt"
                ).to(device)
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
                for i, v in zip(batch, logits[:, 0].float().tolist()):
                    scores[i] = v
        return scores

    def interleaved(fns: list) -> list[tuple[float, object]]:
        """Median seconds and last result of each of ``fns``, run in turns (one warm-up turn, then
        ``--repeat`` timed ones), so that a busy spell of a shared machine hits them alike."""
        outs = [fn() for fn in fns]
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(args.repeat):
            for k, fn in enumerate(fns):
                t0 = time.perf_counter()
                outs[k] = fn()
                times[k].append(time.perf_counter() - t0)
        return [(statistics.median(t), out) for t, out in zip(times, outs, strict=True)]

    ray.init(address="local", num_cpus=args.cpus + 1, num_gpus=int(gpu), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for mode, batch_tokens in [("padded", 0), ("by tokens", args.batch_tokens)]:
            batches = token_batches(lengths, args.batch_size, batch_tokens)
            padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
            route = RewardRoute(
                kind="reward_model", model_path=folder, batch_size=args.batch_size, batch_tokens=batch_tokens
            )
            worker = RewardWorker.options(num_cpus=args.cpus, num_gpus=int(gpu)).remote({"default": route})
            ray.get(worker.stats.remote())  # started, model loaded
            (t_base, ref), (t_worker, scored) = interleaved(
                [
                    lambda: baseline(batches),  # noqa: B023
                    lambda: ray.get(worker.score.remote(samples)),
                ]
            )  # noqa: B023
            ray.kill(worker)
            diff = max(abs(s.reward - r) for s, r in zip(scored, ref, strict=True))
            label = f"{mode} ({len(batches)} batches, {sum(lengths) / padded:.0%} real tokens)"
            rows.append([label, args.samples / t_base, args.samples / t_worker, t_base / t_worker, f"{diff:.1e}"])
    finally:
        ray.shutdown()
    print(
        f"machine: {machine()}; {args.samples} samples of {min(lengths)}-{max(lengths)} tokens with the chat template "
        f"({sum(lengths) / len(lengths):.0f} mean), batch_size {args.batch_size}, {args.cpus} CPU(s), "
        f"{'cuda bf16' if gpu else 'cpu fp32'}; load average {os.getloadavg()[0]:.2f}"
    )
    print_table(
        f"reward-model scoring, {args.model}",
        ["batches", "plain forward samples/s", "reward worker samples/s", "worker / plain", "max |score diff|"],
        rows,
    )
    by_tokens = rows[1][2] / rows[0][2]
    print(f"reward worker, by tokens vs padded: {by_tokens:.2f}x")


if __name__ == "__main__":
    main()
