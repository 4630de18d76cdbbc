"""The start-up's big imports with Python's cyclic garbage collector on, and off as syncrl runs them.

Each import runs in a fresh child process (``python -c``), the two ways taking turns, ``--repeat``
times each: with the collector as Python leaves it, and inside
``rollout.phases.imports_without_gc`` (the collector off, then the imported objects frozen),
which is how the engine, the learner ranks and ``syncrl train`` import them now:

- the engine's: torch (with dynamo, as the engine loads it) and ``from vllm import LLM``;
- a learner rank's: ``import deepspeed`` and transformers' ``AutoModelForCausalLM``;
- the driver's: ``launch.train`` (torch, transformers, the actors' modules).

It prints the median seconds of each and their ratio. Run it on a quiet machine.

    python bench/imports.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine, print_table

ROOT = Path(__file__).resolve().parent.parent
IMPORTS = {
    "engine: torch + vLLM": "import torch, torch._dynamo\nfrom vllm import LLM",
    "learner: DeepSpeed + transformers": "import deepspeed\nfrom transformers import AutoModelForCausalLM",
    "driver: launch.train": "import launch.train",
}
CHILD = """
import time
t0 = time.perf_counter()
{setup}
{body}
print(time.perf_counter() - t0)
"""


def child_seconds(body: str, without_gc: bool) -> float:
    if without_gc:
        setup = "from rollout.phases import imports_without_gc\nwith imports_without_gc():\n"
        body = "\n".join("    " + line for line in body.splitlines())
    else:
        setup = ""
    code = CHILD.format(setup=setup, body=body)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="child processes per import and setting")
    args = ap.parse_args()
    print(f"{machine()}\n1-min load average: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name, body in IMPORTS.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for without_gc in (False, True):  # taking turns: a drift of the machine hits both
                times[without_gc].append(child_seconds(body, without_gc))
        on, off = statistics.median(times[False]), statistics.median(times[True])
        rows.append([name, on, off, on / off])
    print_table(
        "Imports in a fresh process: the cyclic GC on against off (median seconds)",
        ["import", "GC on (Python's default)", "GC off, then frozen (syncrl)", "ratio"],
        rows,
    )
    print(f"1-min load average now: {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
