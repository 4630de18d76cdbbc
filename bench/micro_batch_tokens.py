"""A packed learner step with long micro-batches, against the same step split by a token budget.

Packing lays a micro-batch's rows end to end in one sequence with a tree mask (shared prompts),
so attention (eager or SDPA with a mask) costs the square of that sequence's length however
sparse the mask. ``learner.micro_batch_tokens`` closes a micro-batch before it passes a budget.
This times ``LearnerRank.train_step`` on the same GRPO batch (groups of 4 samples sharing a
``--prompt-len``-token prompt, reference model on) for each budget, in one process, for short
responses (the experiments') and long ones (reasoning traces). Prints s/step and the ratio
against rows only (16 rows per micro-batch, no budget).

    python bench/micro_batch_tokens.py --model smollm2
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import machine, print_table
from dpo_step import packed_tokens, shared_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompt-len", type=int, default=97)
    ap.add_argument("--budgets", type=int, nargs="+", default=[0, 512, 256], help="micro_batch_tokens; 0: rows only")
    ap.add_argument("--repeat", type=int, default=2, help="timed steps per row (one warm-up step before the first)")
    args = ap.parse_args()

    from actors.placement import free_port
    from launch.config import LearnerConfig
    from launch.models import resolve_model
    from learner.objective import Totals
    from learner.trainer import LearnerRank, rank_micro_batches
    from rollout.records import LossSpec

    cfg = LearnerConfig(micro_batch_size=16, packing=True, lr=1e-5)
    rank = LearnerRank(resolve_model(args.model), cfg, 0, 1, "127.0.0.1", free_port(), needs_reference=True)
    spec = LossSpec(grpo_weight=1.0, kl_coef=0.1)
    print(
        f"{machine()}\nmodel {args.model}, prompt {args.prompt_len} tokens, groups of 4, reference on, "
        f"attention {rank.engine.module.config._attn_implementation}"
    )
    rows, warm = [], False
    for name, groups, response_len in [
        ("short responses (20-30)", 8, (20, 30)),
        ("long responses (150-250)", 2, (150, 250)),
    ]:
        vocab = rank.engine.module.config.vocab_size
        batch, packed = shared_batch(4, groups, args.prompt_len, 0, response_len, token_range=(10, vocab))
        base = None
        for budget in args.budgets:
            cfg.micro_batch_tokens = budget
            parts = rank_micro_batches(batch, cfg)
            longest = max(map(packed_tokens, parts))
            times = []
            for _ in range(args.repeat + (not warm)):  # one warm-up step in all
                t0 = time.perf_counter()
                rank.train_step(batch, spec, Totals.of(batch), len(parts))
                times.append(time.perf_counter() - t0)
            step, warm = statistics.median(times[1 - warm :]), True
            base = base or step
            rows.append([name, packed, budget or "rows only", len(parts), longest, step, base / step])
    print_table(
        f"Packed GRPO step by micro-batch token budget, {args.model}",
        [
            "batch",
            "packed tokens",
            "micro_batch_tokens",
            "micro-batches",
            "longest (tokens)",
            "s/step",
            "speed-up vs rows only",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
