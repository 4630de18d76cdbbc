"""Learner efficiency: tokens/s of syncrl's learner step against a raw torch loop.

Both train the same model on the same GRPO batches (same rows, same micro-batches) in this
process: the raw loop is forward, log-softmax at the response tokens times the advantage,
backward, gradient clipping and torch's fused AdamW, with nothing else; the process keeps the
memory it frees, as the learner's actor does (``actors.common.keep_freed_memory``). syncrl's
``LearnerRank`` adds DeepSpeed, the full loss (clipped ratio, entropy metric, totals) and its
metrics. The ratio (syncrl / raw, goal >= 0.9) is printed for padded batches, packed batches,
and packed batches whose groups (``--group`` samples of one prompt, as GRPO makes) share one
copy of their prompt, the last with attention over the whole packed row under its mask (as
before) and block by block (the learner's default).

    python bench/learner.py --model smollm2 --rows 32 --steps 3
"""

from __future__ import annotations

import argparse
import random

import torch
from common import machine, print_table, timed


def make_batch(
    vocab: int, rows: int, prompt_len: tuple[int, int], response_len: tuple[int, int], seed: int, group: int = 1
):
    """Random GRPO rows, ``group`` consecutive rows per prompt."""
    from rollout.records import TrainBatch, TrainSequence

    rng = random.Random(seed)
    seqs = []
    for i in range(rows):
        if i % group == 0:
            prompt = [rng.randrange(vocab) for _ in range(rng.randint(*prompt_len))]
        r = rng.randint(*response_len)
        seqs.append(
            TrainSequence(
                prompt_ids=list(prompt),
                response_ids=[rng.randrange(vocab) for _ in range(r)],
                behaviour_logps=[-rng.random() * 3 for _ in range(r)],
                advantage=rng.gauss(0, 1),
            )
        )
    return TrainBatch(sequences=seqs)


class RawLoop:
    """The baseline: what a hand-written policy-gradient step costs in plain torch."""

    def __init__(self, model, lr: float, micro: int, threads: int):
        self.model, self.micro = model.train(), micro
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)  # as the learner's (and TRL's default)
        torch.set_num_threads(threads)

    def step(self, batch) -> None:
        from learner.objective import collate, micro_batches

        total = sum(len(s.response_ids) for s in batch.sequences)
        for part in micro_batches(batch, self.micro):
            cb = collate(part, 0)
            logits = self.model(input_ids=cb.input_ids, attention_mask=cb.attention_mask, use_cache=False).logits
            logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, cb.input_ids[:, 1:, None]).squeeze(-1)
            loss = -(logps * cb.advantages[:, None] * cb.loss_mask[:, 1:]).sum() / total
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="tiny-llama, smollm2 or a Hugging Face folder")
    ap.add_argument("--rows", type=int, default=32, help="sequences per step")
    ap.add_argument("--micro", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--prompt-len", type=int, nargs=2, default=(40, 60))
    ap.add_argument("--response-len", type=int, nargs=2, default=(10, 64))
    ap.add_argument("--group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args()

    import os

    from transformers import AutoConfig, AutoModelForCausalLM

    from actors.common import keep_freed_memory
    from actors.placement import free_port
    from launch.config import LearnerConfig
    from launch.models import resolve_model
    from learner.packing import use_block_attention
    from learner.trainer import LearnerRank
    from rollout.records import LossSpec

    keep_freed_memory()  # as in the learner's actor, for both loops (both run in this process)
    threads = args.threads or len(os.sched_getaffinity(0))
    path = resolve_model(args.model)
    batch = make_batch(
        AutoConfig.from_pretrained(path).vocab_size, args.rows, args.prompt_len, args.response_len, 0, args.group
    )
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in batch.sequences)
    spec = LossSpec(grpo_weight=1.0, clip_low=0.2, clip_high=0.28)
    print(
        f"{machine()}\nmodel {args.model}: {args.rows} rows ({args.group} per prompt), {tokens} tokens per step, "
        f"micro-batch {args.micro}, {threads} threads"
    )

    raw = RawLoop(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), 1e-6, args.micro, threads)
    t_raw, _ = timed(lambda: raw.step(batch), args.steps)
    raw = None  # free its model before the next loop
    rows = [["raw torch loop (padded)", t_raw, tokens / t_raw, 1.0]]

    from learner.objective import Totals

    rank = None
    variants = {
        "padded": (False, False, False),
        "packed": (True, False, True),
        "packed, shared prompts, whole-row mask": (True, True, False),
        "packed, shared prompts": (True, True, True),
    }
    for name, (packing, share, blocks) in variants.items():
        cfg = LearnerConfig(
            micro_batch_size=args.micro, packing=packing, share_prompts=share, cpu_threads=threads, lr=1e-6
        )
        if rank is None:
            rank = LearnerRank(path, cfg, 0, 1, "127.0.0.1", free_port())
            assert use_block_attention(rank.engine.module)
        rank.cfg, rank.block_attention = cfg, blocks
        num_micro = rank.num_micro_batches(batch)
        t, _ = timed(lambda: rank.train_step(batch, spec, Totals.of(batch), num_micro), args.steps)
        rows.append([f"syncrl LearnerRank ({name})", t, tokens / t, t_raw / t])
    print_table(f"Learner step, {args.model}", ["step", "s/step", "tokens/s", "ratio vs raw"], rows)


if __name__ == "__main__":
    main()
