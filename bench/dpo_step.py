"""Where a DPO learner step's time goes, against a GRPO step in the same process.

DPO pairs shaped like the experiments' (one-shot prompt of ``--prompt-len`` tokens, responses of
20-30 tokens, reference model on, packed with shared prompts) and GRPO groups of 4 samples of the
same shapes. Prints per step: packed tokens (each prompt once per pair or group, plus the
responses), the step, its forward + loss / backward / optimizer parts, and seconds per packed
token against GRPO's (ratio ~1: the step's time is its packed tokens, not a fixed cost).

    python bench/dpo_step.py --model smollm2
"""

from __future__ import annotations

import argparse
import random
import time

from common import machine, print_table


def packed_tokens(batch) -> int:
    """Tokens of ``batch`` packed with shared prompts: each distinct prompt once, every response."""
    return sum(map(len, {tuple(s.prompt_ids) for s in batch.sequences})) + sum(
        len(s.response_ids) for s in batch.sequences
    )


def shared_batch(
    rows_per_prompt: int,
    prompts: int,
    prompt_len: int,
    seed: int,
    response_len: tuple[int, int] = (20, 30),
    token_range: tuple[int, int] = (1000, 40000),
):
    """``prompts`` prompts with ``rows_per_prompt`` responses each, token ids drawn from
    ``token_range``; pairs (0, 1) of each prompt when there are 2 rows per prompt. Returns the
    batch and its packed tokens."""
    from rollout.records import TrainBatch, TrainSequence

    rng = random.Random(seed)
    seqs, chosen, rejected, group = [], [], [], []
    for p in range(prompts):
        prompt = [rng.randrange(*token_range) for _ in range(prompt_len)]
        for _ in range(rows_per_prompt):
            r = rng.randint(*response_len)
            seqs.append(
                TrainSequence(
                    prompt_ids=list(prompt),
                    response_ids=[rng.randrange(*token_range) for _ in range(r)],
                    behaviour_logps=[-rng.random() * 3 for _ in range(r)],
                    advantage=rng.gauss(0, 1),
                )
            )
        chosen.append(p * rows_per_prompt), rejected.append(p * rows_per_prompt + 1), group.append(p)
    if rows_per_prompt != 2:
        chosen, rejected, group = [], [], []
    batch = TrainBatch(seqs, chosen, rejected, group)
    return batch, packed_tokens(batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompt-len", type=int, default=97)
    ap.add_argument("--repeat", type=int, default=2, help="timed steps per row (after one warm-up)")
    args = ap.parse_args()

    from actors.placement import free_port
    from launch.config import LearnerConfig
    from launch.models import resolve_model
    from learner.objective import Totals
    from learner.trainer import LearnerRank
    from rollout.records import LossSpec

    rank = LearnerRank(
        resolve_model(args.model),
        LearnerConfig(micro_batch_size=16, packing=True, lr=1e-5),
        0,
        1,
        "127.0.0.1",
        free_port(),
        needs_reference=True,
    )
    parts: dict[str, float] = {}

    def timing(name, fn):
        def wrapped(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
            return out

        return wrapped

    rank.engine.backward, rank.engine.step = (
        timing("backward", rank.engine.backward),
        timing("optimizer", rank.engine.step),
    )
    print(f"{machine()}\nmodel {args.model}, prompt {args.prompt_len} tokens, micro-batch 16, reference on")
    cases = [
        ("GRPO, 4 groups of 4", 4, 4, LossSpec(grpo_weight=1.0, kl_coef=0.1)),
        ("DPO, 4 pairs", 2, 4, LossSpec(dpo_weight=1.0, beta=0.1)),
        ("DPO, 8 pairs", 2, 8, LossSpec(dpo_weight=1.0, beta=0.1)),
    ]
    rows, base = [], None
    for name, per_prompt, prompts, spec in cases:
        batch, packed = shared_batch(per_prompt, prompts, args.prompt_len, 0)
        steps = []
        for i in range(1 + args.repeat):
            parts.clear()
            t0 = time.perf_counter()
            rank.train_step(batch, spec, Totals.of(batch), rank.num_micro_batches(batch))
            step = time.perf_counter() - t0
            if i:  # the first is a warm-up
                steps.append(
                    (step, step - parts["backward"] - parts["optimizer"], parts["backward"], parts["optimizer"])
                )
        step, fwd, bwd, opt = (sorted(x)[len(x) // 2] for x in zip(*steps))
        base = base or step / packed
        rows.append(
            [name, len(batch.sequences), packed, step, fwd, bwd, opt, 1000 * step / packed, step / packed / base]
        )
    print_table(
        f"DPO and GRPO learner steps, {args.model}",
        [
            "step",
            "rows",
            "packed tokens",
            "s/step",
            "forward + loss",
            "backward",
            "optimizer",
            "ms per packed token",
            "ratio vs GRPO",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
