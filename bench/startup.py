"""Start-up: from the command to the end of the first GRPO step, syncrl's phases next to TRL's.

Both sides run as a user runs them, each in its own process, one after the other:

- syncrl: ``python -m launch train CONFIG --output DIR`` (``syncrl train``) on the config of
  ``bench/grpo_vs_trl.py`` (its ``syncrl_config``: the ``tiny-grpo`` recipe with this bench's
  shapes) and ``steps=1``. The run writes ``DIR/startup.json`` after its first step: the driver's
  phases from its process start (Python and the command's imports, Ray, with the driver's
  modules and then the task and tokenizer loading alongside it, cluster check, the actor groups,
  file check and weight transport) and each worker's (from the moment its group
  was started: a new worker process or one Ray had prestarted, imports, then the parts of its
  constructor: vLLM engine; process group, policy load, DeepSpeed initialize, the first step's
  memory; reward scorers), then the first step's parts.
- TRL: ``GRPOTrainer`` as ``bench/grpo_vs_trl.py`` runs it (same model, task, shapes, reward),
  for one optimizer step, in a child process of this script: Python and imports, then model,
  dataset and trainer, then step 1.

``--systems syncrl`` run from another checkout's folder (``cd OLD && python NEW/bench/startup.py``)
times that checkout's ``syncrl train``; one from before ``startup.json`` gives its total only (from
the command's launch to the first step's ``time`` in metrics.jsonl). The table lists every phase
with the second (from its command's start) it began at; the summary gives each side's time to
its first step's start and to its end, and their ratio. Run
it on a quiet machine (the 1-min load average is printed): another job slows both sides.

    python bench/startup.py --model tiny-llama
    python bench/startup.py --model smollm2 --prompts 4 --samples 4 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpo_vs_trl
from common import machine, print_table

ROOT = Path(__file__).resolve().parent.parent


def syncrl_rows(startup: dict, t0: float) -> tuple[list[list], float, float]:
    """Rows (who, phase, began at, seconds) of a run's startup.json, the seconds from ``t0`` (the
    command's start) to the first step's start and to its end."""
    rows = [["driver", name, began - t0, seconds] for name, began, seconds in startup["driver"]["phases"]]
    for worker, w in startup["workers"].items():
        if "start" not in w:
            continue
        if "process" not in w:  # a checkout from before the process start was recorded
            rows.append([worker, "process start and imports", w["submitted"] - t0, w["start"] - w["submitted"]])
        elif w["process"] > w["submitted"]:  # a new process (none of Ray's prestarted ones fitted)
            rows.append([worker, "new worker process", w["submitted"] - t0, w["process"] - w["submitted"]])
            rows.append([worker, "Python, Ray and the actor's imports", w["process"] - t0, w["start"] - w["process"]])
        else:
            rows.append(
                [worker, "the actor's imports (a prestarted process)", w["submitted"] - t0, w["start"] - w["submitted"]]
            )
        rows += [[worker, name, began - t0, seconds] for name, began, seconds in w["phases"]]
    first = startup["first_step"]
    at = first["start"]
    for name, seconds in first["parts"].items():
        rows.append(["driver", f"step 1: {name}", at - t0, seconds])
        at += seconds
    rows.sort(key=lambda r: r[2])
    return rows, first["start"] - t0, first["end"] - t0


def run_syncrl(args: argparse.Namespace) -> tuple[list[list], float, float]:
    from launch.config import dump_config

    cfg = grpo_vs_trl.syncrl_config(args, "steps=1", *args.overrides)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        config, run_dir = Path(tmp, "config.yaml"), Path(tmp, "run")
        config.write_text(dump_config(cfg))
        print(f"syncrl train: 1-min load average before it {os.getloadavg()[0]:.2f}", flush=True)
        launched = time.time()
        subprocess.run(
            [sys.executable, "-m", "launch", "train", str(config), "--output", str(run_dir)],
            check=True,
            env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"},
        )  # the current folder's checkout
        if not (run_dir / "startup.json").is_file():  # a checkout from before startup.json: the total only
            end = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["time"] - launched
            return [], float("nan"), end
        startup = json.loads((run_dir / "startup.json").read_text())
    return syncrl_rows(startup, startup["driver"]["start"])  # the driver's start: its process start


def trl_child(args: argparse.Namespace) -> None:
    """In the child process: TRL for one step; its wall-clock marks as JSON on the last line."""
    from rollout.phases import process_start

    started = process_start()
    import datasets  # noqa: F401  # what TRL's trainer needs, as a TRL script imports it
    import trl  # noqa: F401

    from launch.models import resolve_model

    imported = time.time()

    args.steps, args.trl_gradient_checkpointing = 1, False
    with tempfile.TemporaryDirectory(prefix="bench-startup-trl-") as out:
        result = grpo_vs_trl.run_trl(args, resolve_model(args.model), out)
    marks = {
        "start": started,
        "imports": imported,
        "began": result["began"],
        "first": result["first"],
        "first_gen": result["first_gen"],
    }
    print(json.dumps(marks), flush=True)


def run_trl(args: argparse.Namespace) -> tuple[list[list], float, float]:
    print(f"TRL: 1-min load average before it {os.getloadavg()[0]:.2f}", flush=True)
    argv = [
        "--model",
        args.model,
        "--task",
        args.task,
        "--prompts",
        str(args.prompts),
        "--samples",
        str(args.samples),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--micro",
        str(args.micro),
        "--lr",
        str(args.lr),
        *(["--one-shot"] if args.one_shot else []),
    ]
    out = subprocess.run(
        [sys.executable, __file__, "--trl-child", *argv], cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    m = json.loads(out.strip().splitlines()[-1])
    t0 = m["start"]
    rows = [
        ["TRL", "command (Python, imports)", 0.0, m["imports"] - t0],
        ["TRL", "model, dataset and GRPOTrainer", m["imports"] - t0, m["began"] - m["imports"]],
        ["TRL", "step 1: generate + score", m["began"] - t0, m["first_gen"]],
        ["TRL", "step 1: loss, backward, optimizer", m["began"] - t0 + m["first_gen"], m["first"] - m["first_gen"]],
    ]
    return rows, m["began"] - t0, m["began"] - t0 + m["first"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    grpo_vs_trl.add_run_args(ap, 1, "(always 1 here)")
    ap.add_argument("--systems", default="syncrl,trl", help="which to run, in this order")
    ap.add_argument("--trl-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_child:
        trl_child(args)
        return
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    print(
        f"{machine()}\nmodel {args.model}: {args.prompts} prompts x {args.samples} samples, "
        f"<= {args.max_new_tokens} new tokens, micro-batch {args.micro}",
        flush=True,
    )
    results = {}
    for system in systems:
        if system == "syncrl":
            results["syncrl"] = run_syncrl(args)
        elif system == "trl":
            results["trl"] = run_trl(args)
        else:
            raise SystemExit(f"--systems: unknown system {system!r} (syncrl, trl)")
    for system, (rows, _, _) in results.items():
        print_table(
            f"{system}: start-up phases, {args.model} (seconds from the command's start)",
            ["who", "phase", "began at (s)", "seconds"],
            rows,
        )
    base = results["trl"][2] if "trl" in results else float("nan")
    summary = [[system, start, end - start, end, end / base] for system, (_, start, end) in results.items()]
    print_table(
        f"Start-up + step 1, {args.model}",
        ["system", "to step 1 (s)", "step 1 (s)", "start-up + step 1 (s)", "ratio to TRL"],
        summary,
    )
    print(f"1-min load average now: {os.getloadavg()[0]:.2f} (2 cores; others' jobs count too)")


if __name__ == "__main__":
    main()
