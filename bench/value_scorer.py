"""Value scoring for beam search: ``ValueScorer.score`` (the states of one prompt packed with one
copy of it) against the same states right-padded in batches of 64, in the same process.

The states are what a beam search of width 4 with 4 candidates scores at one step: per question
16 (prompt, partial response) states sharing the prompt. Prints both times, the ratio, and the
largest difference between the two scores (with a random value head, so values differ).

    python bench/value_scorer.py --model smollm2 --questions 4
    python bench/value_scorer.py --model tiny-llama --questions 8
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/value_scorer.py` from a checkout

from common import machine, print_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="tiny-llama, smollm2 or a Hugging Face folder")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--children", type=int, default=16, help="states per question")
    ap.add_argument("--prompt-len", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from launch.models import resolve_model
    from learner.value import ValueModel, ValueScorer, save_value_folder

    torch.manual_seed(0)
    model = ValueModel.from_pretrained(resolve_model(args.model))
    torch.nn.init.normal_(model.value_head.weight, std=0.02)
    folder = tempfile.mkdtemp(prefix="bench-value-")
    save_value_folder(folder, model.backbone, model.state_dict())
    scorer = ValueScorer(folder, threads=args.threads)
    rng = random.Random(0)
    vocab = model.config.vocab_size
    states = []
    for _ in range(args.questions):
        prompt = [rng.randrange(10, vocab) for _ in range(args.prompt_len)]
        states += [
            (prompt, [rng.randrange(10, vocab) for _ in range(rng.randrange(20, 80))]) for _ in range(args.children)
        ]

    @torch.no_grad()
    def padded(batch: int = 64) -> list[float]:
        out = []
        for start in range(0, len(states), batch):
            rows = [p + r for p, r in states[start : start + batch]]
            ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(rows):
                ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
            values = scorer.model(ids, attention_mask=mask)
            out += values[torch.arange(len(rows)), mask.sum(1) - 1].tolist()
        return out

    scorer.score(states[:2])  # warm-up
    t0 = time.perf_counter()
    by_padding = padded()
    t1 = time.perf_counter()
    by_packing = scorer.score(states)
    t_pad, t_pack = t1 - t0, time.perf_counter() - t1
    diff = max(abs(a - b) for a, b in zip(by_padding, by_packing))
    print(
        f"machine: {machine()}; {len(states)} states ({args.questions} prompts x {args.children}, prompt "
        f"{args.prompt_len} tokens, responses 20-80), {args.threads} thread(s)"
    )
    print_table(
        f"value scoring, {args.model}",
        ["layout", "seconds", "vs padded"],
        [["padded (batches of 64)", t_pad, 1.0], ["packed, prompt once (ValueScorer)", t_pack, t_pad / t_pack]],
    )
    print(f"largest |padded - packed| score difference: {diff:.2e}")


if __name__ == "__main__":
    main()
