"""Fresh memory against kept memory, and AdamW's per-tensor loop against the fused one.

glibc's malloc maps each block over 32 MB fresh from the kernel and unmaps it when it is freed;
``actors.common.keep_freed_memory`` (every syncrl actor without a GPU) makes it keep freed memory
for the next allocations. Since that is a setting of the whole process, this script runs itself
twice as a child process, with glibc's default and with the setting, and each child measures:

- a 113 MB ``torch.zeros`` (the size of SmolLM2's embedding gradient), median of 10;
- one ``LearnerRank.train_step`` (one rank, packed, as the recipes for SmolLM2) on 16 GRPO rows
  (4 prompts of 35 tokens x 4 responses of 20-48, bench/learner.py's ``make_batch``): the median
  of the steps after the first two, and the minor page faults of a step (``ru_minflt``).

The parent also times torch's AdamW over the model's parameters with its per-tensor loop
(``foreach=False``, what DeepSpeed's ``torch_adam`` got on CPU) and fused (the learner's now).

    python bench/memory.py --model smollm2 --steps 6
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine, print_table, timed


def make_batch(vocab: int):
    spec = importlib.util.spec_from_file_location("learner_bench", Path(__file__).with_name("learner.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # bench/learner.py, by path: its name shadows the learner package
    return module.make_batch(vocab, 16, (35, 35), (20, 48), 0, 4)


def child(model: str, steps: int, keep: bool) -> dict:
    from actors.common import keep_freed_memory
    from actors.placement import free_port

    if keep:
        keep_freed_memory()
    from transformers import AutoConfig

    from launch.config import LearnerConfig
    from launch.models import resolve_model
    from learner.objective import Totals
    from learner.trainer import LearnerRank
    from rollout.records import LossSpec

    zeros, _ = timed(lambda: torch.zeros(49152, 576), 10)
    path = resolve_model(model)
    batch = make_batch(AutoConfig.from_pretrained(path).vocab_size)
    spec = LossSpec(grpo_weight=1.0, clip_low=0.2, clip_high=0.28)
    rank = LearnerRank(path, LearnerConfig(micro_batch_size=16, packing=True, lr=1e-6), 0, 1, "127.0.0.1", free_port())
    times, faults = [], []
    for _ in range(steps):
        before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        rank.train_step(batch, spec, Totals.of(batch), rank.num_micro_batches(batch))
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "zeros": zeros,
        "step": statistics.median(times[2:]),
        "faults": statistics.median(faults[2:]),
        "first": times[0],
    }


def adamw(model: str) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    from launch.models import resolve_model

    params = list(AutoModelForCausalLM.from_pretrained(resolve_model(model), dtype=torch.float32).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    out = []
    for kwargs in ({"foreach": False}, {"fused": True}):
        opt = torch.optim.AdamW(params, lr=1e-6, **kwargs)
        out.append(timed(opt.step, 3)[0])
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="tiny-llama, smollm2 or a Hugging Face folder")
    ap.add_argument("--steps", type=int, default=6, help="train steps per child (the first two are not counted)")
    ap.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.steps, args.child == "kept")))
        return
    print(machine())
    results = {}
    for mode in ("default", "kept"):
        cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--child", mode]
        results[mode] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
    d, k = results["default"], results["kept"]
    print_table(
        f"Fresh and kept memory, {args.model} (each a child process)",
        ["what", "glibc's default", "memory kept", "ratio"],
        [
            ["113 MB torch.zeros (ms)", d["zeros"] * 1e3, k["zeros"] * 1e3, d["zeros"] / k["zeros"]],
            ["train step, median (s)", d["step"], k["step"], d["step"] / k["step"]],
            ["minor page faults a step, median", d["faults"], k["faults"], "-"],
            ["first train step (s)", d["first"], k["first"], d["first"] / k["first"]],
        ],
    )
    loop, fused = adamw(args.model)
    print_table(
        f"AdamW step, {args.model}",
        ["optimizer", "s/step", "ratio"],
        [["torch AdamW, per-tensor loop", loop, 1.0], ["torch AdamW, fused", fused, loop / fused]],
    )


if __name__ == "__main__":
    main()
