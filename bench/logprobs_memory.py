"""Peak memory and time of the learner's log-probs and entropies, computed at once against in
checkpointed pieces (``learner.logprobs.logprobs_and_entropy``, ``chunk_bytes``).

At once, the float copy of the logits, their softmax and its product with them are three fp32
[N, T, V] tensors (5 GB each for a 152k vocabulary at 4 x 2048 tokens), kept for the backward
pass. In pieces of ``CHUNK_BYTES`` they exist one piece at a time and are recomputed in the
backward pass. Each way runs in a child process of its own (forward and backward of a loss over
both outputs, from bf16 logits as a GPU learner gets them); the table gives each one's peak
resident memory over the logits' own size, and its time.

    python bench/logprobs_memory.py --rows 2 --tokens 1024 --vocab 151936
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import machine, print_table


def child(rows: int, tokens: int, vocab: int, chunk_bytes: int) -> dict:
    import torch

    from learner.logprobs import logprobs_and_entropy

    torch.manual_seed(0)
    logits = torch.randn(rows, tokens, vocab, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (rows, tokens))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    logps, entropy = logprobs_and_entropy(logits, targets, chunk_bytes=chunk_bytes)
    (logps.mean() + 0.01 * entropy.mean()).backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    return {"extra_gb": (peak - base) / 2**20, "seconds": seconds, "logps_sum": float(logps.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.rows, args.tokens, args.vocab, args.child)))
        return
    from learner.logprobs import CHUNK_BYTES

    logits_gb = args.rows * args.tokens * args.vocab * 2 / 2**30  # bf16
    results = {}
    for name, chunk in (("at once", 2**62), ("pieces", CHUNK_BYTES)):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rows",
                str(args.rows),
                "--tokens",
                str(args.tokens),
                "--vocab",
                str(args.vocab),
                "--child",
                str(chunk),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    once, pieces = results["at once"], results["pieces"]
    assert abs(once["logps_sum"] - pieces["logps_sum"]) <= 1e-3 * abs(once["logps_sum"]), (once, pieces)
    print(machine())
    print_table(
        f"log-probs of {args.rows} x {args.tokens} tokens, vocabulary {args.vocab} (bf16 logits {logits_gb:.2f} GB)",
        ["computed", "extra peak memory GB", "x logits", "forward + backward s"],
        [[name, r["extra_gb"], r["extra_gb"] / logits_gb, r["seconds"]] for name, r in results.items()]
        + [["pieces / at once", pieces["extra_gb"] / once["extra_gb"], "", pieces["seconds"] / once["seconds"]]],
    )


if __name__ == "__main__":
    main()
