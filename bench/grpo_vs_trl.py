"""End-to-end GRPO step: syncrl's training loop against TRL's ``GRPOTrainer`` on this machine.

Both train the same model (fp32, CPU) on the same task (``rollout.tasks.make_task``), with the
same prompts per step, samples per prompt, maximum response length, sampling (temperature 1,
no top-p/top-k), clip range, learning rate, micro-batch and reward: syncrl's math verifier
(``rewards.math_verify.MathVerifier``, wrapped as a TRL reward function). One step = generate
``prompts x samples`` responses, score them, one optimizer step. The two systems run one after
the other, never at the same time.

- syncrl: the real loop, ``launch.run.run(cfg, run_dir)`` on a config built from the
  ``tiny-grpo`` recipe (vLLM engine, reward worker, DeepSpeed learner as Ray actors; a local Ray
  cluster is started through ``launch.cluster.connect_ray`` if none runs). metrics.jsonl has no
  timestamp, so the bench stamps each step as the driver logs it (``MetricsLog.write`` is wrapped
  in this process); a step's wall time is the gap between two stamps (it also holds what the
  time_*_s parts do not: reading the Controller, logging). Step 1 (engine start, first-call
  warm-up) is not timed.
- TRL: ``GRPOTrainer`` (``use_cpu=True``, fp32, ``beta=0``: no reference model, as syncrl's
  ``kl_coef=0``; no gradient checkpointing, as syncrl's default, while TRL's default is on),
  ``per_device_train_batch_size`` = the micro-batch, gradient accumulation and
  ``steps_per_generation`` = prompts x samples / micro-batch, so one optimizer step trains one
  generation of ``prompts x samples``; no logging, no saving. A callback stamps
  ``on_step_end``; step 1 is not timed. The trainer's ``_generate_and_score_completions`` is
  timed too, to split TRL's step into generation + scoring and the rest (loss, backward, step).

The generated lengths are printed next to the times (a random tiny model always runs to the
maximum; a real model stops when it likes, so the two sides may differ), and so is the machine's
1-min load average at the step ends: on a shared 2-core machine another job slows both sides,
TRL's in-process generation by up to ~10x, so compare only figures taken under a similar load.

    python bench/grpo_vs_trl.py --model tiny-llama --steps 6
    python bench/grpo_vs_trl.py --model smollm2 --prompts 4 --samples 4 --max-new-tokens 48 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import machine, print_table

# -- syncrl ------------------------------------------------------------------------------------

_STAMPS: list[float] = []  # perf_counter() as the driver logged each step
_LOADS: list[float] = []  # the machine's 1-min load average then
_PREFETCH: dict[int, float] = {}  # step (1-based) -> seconds its batch took to generate in the background


def _instrument() -> None:
    """Stamp each step as the driver logs it, and time prefetched (sync.overlap) generations
    from their start to their end. Wraps two methods in this process; no library file changes."""
    import ray

    from launch.metrics import MetricsLog
    from launch.sources import RolloutSource

    if getattr(MetricsLog.write, "_bench", False):
        return
    write, source_next = MetricsLog.write, RolloutSource.next

    def stamped_write(self, record, controller):
        _STAMPS.append(time.perf_counter())
        _LOADS.append(os.getloadavg()[0])
        return write(self, record, controller)

    def timed_next(self, step, prefetch=False):
        samples = source_next(self, step, prefetch)
        if self.pending:  # the batch of step `step + 2` (1-based) started generating just now
            refs, t0 = list(self.pending.refs.values()), time.perf_counter()

            def wait() -> None:
                ray.wait(refs, num_returns=len(refs), fetch_local=False)
                _PREFETCH[step + 2] = time.perf_counter() - t0

            threading.Thread(target=wait, daemon=True).start()
        return samples

    stamped_write._bench = True
    MetricsLog.write, RolloutSource.next = stamped_write, timed_next


_RUNS = 0


def add_run_args(ap: argparse.ArgumentParser, steps: int, steps_help: str) -> None:
    """The settings ``syncrl_config`` reads (shared with bench/overlap.py), and ``--set``."""
    ap.add_argument("--model", default="tiny-llama", help="tiny-llama, smollm2 or a Hugging Face folder")
    ap.add_argument("--task", default="add-1digit", help="a task of rollout.tasks")
    ap.add_argument(
        "--one-shot", action="store_true", help="prompts with a worked example (data.one_shot), as the demo's"
    )
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (GRPO group size)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="maximum response length")
    ap.add_argument("--micro", type=int, default=16, help="sequences per forward/backward")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--steps", type=int, default=steps, help=steps_help)
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra syncrl config override for every run, e.g. --set learner.cpu_threads=1 (repeatable)",
    )


def syncrl_config(args: argparse.Namespace, *overrides: str):
    """The ``tiny-grpo`` recipe with this bench's settings (and ``overrides`` last)."""
    from launch.config import load_config

    global _RUNS
    _RUNS += 1
    return load_config(
        "tiny-grpo",
        [
            "name=bench",
            f"model.path={args.model}",
            "model.dtype=float32",
            "rollout.dtype=float32",
            f"steps={args.steps}",
            f"data.task={args.task}",
            f"data.one_shot={args.one_shot}",
            f"data.prompts_per_step={args.prompts}",
            f"rollout.samples_per_prompt={args.samples}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            "rollout.temperature=1.0",
            "rollout.top_p=1.0",
            "rollout.top_k=-1",
            f"learner.micro_batch_size={args.micro}",
            f"learner.lr={args.lr}",
            "algorithm.kl_coef=0",
            "logging.progress_bar=false",
            "checkpoint.save_final_hf=false",
            f"logging.controller_name=bench-{os.getpid()}-{_RUNS}",
            *overrides,
        ],
    )


def ensure_ray(cfg) -> bool:
    """Ray as ``syncrl train`` gets it (``launch.cluster.connect_ray``); True if it started one."""
    import ray

    from launch.cluster import connect_ray

    if ray.is_initialized():
        return False
    started = connect_ray(cfg)
    how = "started a local cluster" if started else "attached to a running cluster (shared: timings may suffer)"
    print(f"Ray: {how} with {int(ray.cluster_resources().get('CPU', 0))} logical CPUs", flush=True)
    return started


@dataclass
class SyncrlRun:
    records: list[dict]  # metrics.jsonl
    wall: list[float]  # wall seconds of steps 2..N (gaps between the driver's step logs)
    first: float  # seconds from run() to the end of step 1: actor and engine start-up + step 1
    prefetch: dict[int, float] = field(default_factory=dict)  # step -> background generation seconds
    loads: list[float] = field(default_factory=list)  # 1-min load average at the end of each step

    def timed(self, skip_last: bool = False) -> tuple[list[dict], list[float]]:
        """Steps 2..N (2..N-1 with skip_last): their records and wall times."""
        end = len(self.records) - 1 if skip_last else len(self.records)
        return self.records[1:end], self.wall[: end - 1]


def run_syncrl(cfg, run_dir: str | None = None) -> SyncrlRun:
    """Run ``launch.run.run(cfg, run_dir)`` to the end and time its steps."""
    from launch.config import dump_config
    from launch.run import run

    _instrument()
    run_dir = run_dir or tempfile.mkdtemp(prefix=f"bench-{cfg.name}-")
    Path(run_dir, "config.yaml").write_text(dump_config(cfg))
    _STAMPS.clear()
    _LOADS.clear()
    _PREFETCH.clear()
    print(f"syncrl run in {run_dir}: 1-min load average before it {os.getloadavg()[0]:.2f}", flush=True)
    t0 = time.perf_counter()
    run(cfg, run_dir)
    records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    stamps = list(_STAMPS)
    if len(stamps) != len(records):
        raise RuntimeError(f"{len(records)} steps logged but {len(stamps)} stamped")
    wall = [b - a for a, b in zip(stamps, stamps[1:])]
    return SyncrlRun(records, wall, stamps[0] - t0, dict(_PREFETCH), list(_LOADS))


def mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


# -- TRL ---------------------------------------------------------------------------------------


def run_trl(args: argparse.Namespace, model_path: str, out_dir: str) -> dict:
    """GRPOTrainer for ``args.steps`` optimizer steps; wall seconds of steps 2..N and the mean
    generated length of those steps."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.math_verify import MathVerifier
    from rollout.tasks import make_task

    rows = args.prompts * args.samples
    if rows % args.micro:
        raise SystemExit(f"--micro {args.micro} must divide prompts x samples = {rows}")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    train_prompts, _ = make_task(args.task, 2000, 100, 0, one_shot=args.one_shot)
    dataset = Dataset.from_list([{"prompt": p.messages, "answer": p.answer} for p in train_prompts])

    verifier, lengths = MathVerifier(), []

    def math_verify(completions, answer, completion_ids=None, **_):
        """syncrl's math verifier as a TRL reward function (conversational completions)."""
        lengths.append(mean(len(ids) for ids in completion_ids))  # one call per generation = per step
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [verifier.grade(t, a).reward for t, a in zip(texts, answer)]

    stamps: list[float] = []
    loads: list[float] = []
    began: list[float] = []  # wall clock at the start of training (bench/startup.py)

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *_, **__):
            stamps.append(time.perf_counter())
            began.append(time.time())

        def on_step_end(self, _args, state, *_, **__):
            stamps.append(time.perf_counter())
            loads.append(os.getloadavg()[0])
            gen, length = gen_times[-1] if gen_times else float("nan"), lengths[-1] if lengths else float("nan")
            print(
                f"TRL step {state.global_step}: {stamps[-1] - stamps[-2]:.1f} s (generate + score {gen:.1f} s), "
                f"{length:.1f} tokens per response, 1-min load {loads[-1]:.2f}",
                flush=True,
            )

    accumulation = rows // args.micro
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        num_generations=args.samples,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        num_iterations=1,
        gradient_checkpointing=args.trl_gradient_checkpointing,  # TRL's default: on; syncrl's: off
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=math_verify,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    generate, gen_times = trainer._generate_and_score_completions, []

    def timed_generate(*a, **k):  # TRL's generation + scoring of a step, to split its step time
        t0 = time.perf_counter()
        out = generate(*a, **k)
        gen_times.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed_generate
    print(f"TRL run: 1-min load average before it {os.getloadavg()[0]:.2f}", flush=True)
    try:
        trainer.train()
    finally:
        verifier.close()
    wall = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(wall) != args.steps or len(lengths) != args.steps:
        raise RuntimeError(f"TRL ran {len(wall)} optimizer steps and {len(lengths)} generations, expected {args.steps}")
    return {
        "wall": wall[1:],
        "first": wall[0],
        "length": mean(lengths[1:]),
        "gen": mean(gen_times[1:]),
        "load": mean(loads[1:]),
        "began": began[0],
        "first_gen": gen_times[0],
    }


# -- the comparison ----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(ap, 6, "optimizer steps per system; step 1 is not timed")
    ap.add_argument("--systems", default="syncrl,trl", help="which to run, in this order")
    ap.add_argument("--run-dir", default=None, help="syncrl's run directory (default: a new folder in /tmp)")
    ap.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="keep TRL's default gradient checkpointing (default: off, as syncrl's learner)",
    )
    args = ap.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (step 1 is not timed)")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the engines inherit it (a local cluster)

    from launch.models import resolve_model

    path = resolve_model(args.model)
    print(
        f"{machine()}\nmodel {args.model} ({path}): {args.prompts} prompts x {args.samples} samples, "
        f"<= {args.max_new_tokens} new tokens, micro-batch {args.micro}, {args.steps} steps "
        f"(steps 2..{args.steps} timed)",
        flush=True,
    )

    results: dict[str, dict] = {}
    for system in systems:
        if system == "syncrl":
            import ray

            cfg = syncrl_config(args, *args.overrides)
            started = ensure_ray(cfg)
            try:
                run = run_syncrl(cfg, args.run_dir)
            finally:
                if started:
                    ray.shutdown()
            records, wall = run.timed()
            parts = {k: mean(r[f"time_{k}_s"] for r in records) for k in ("gen", "score", "train", "sync")}
            results["syncrl"] = {
                "wall": wall,
                "first": run.first,
                "parts": parts,
                "load": mean(run.loads[1:]),
                "length": mean(r["response_len_mean"] for r in records),
            }
        elif system == "trl":
            with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
                results["trl"] = run_trl(args, path, out)
        else:
            raise SystemExit(f"--systems: unknown system {system!r} (syncrl, trl)")

    nan = float("nan")
    base = mean(results["syncrl"]["wall"]) if "syncrl" in results else nan
    base_median = statistics.median(results["syncrl"]["wall"]) if "syncrl" in results else nan
    checkpointing = " (gradient checkpointing)" if args.trl_gradient_checkpointing else ""
    names = {"syncrl": "syncrl (vLLM + DeepSpeed on Ray)", "trl": f"TRL {_trl_version()} GRPOTrainer{checkpointing}"}
    rows = []
    for system, r in results.items():
        step, median = mean(r["wall"]), statistics.median(r["wall"])
        rows.append(
            [
                names[system],
                step,
                median,
                min(r["wall"]),
                max(r["wall"]),
                step / base,
                median / base_median,
                r["length"],
                r["first"],
                r["load"],
            ]
        )
    title = (
        f"GRPO step, {args.model}: {args.prompts} prompts x {args.samples} samples, "
        f"<= {args.max_new_tokens} new tokens (steps 2..{args.steps})"
    )
    print_table(
        title,
        [
            "system",
            "s/step (mean)",
            "median",
            "min",
            "max",
            "ratio TRL/syncrl (means)",
            "ratio (medians)",
            "mean response tokens",
            "step 1 (s; syncrl's with its actors' start)",
            "1-min load at step ends (mean)",
        ],
        rows,
    )
    parts = []
    if "syncrl" in results:
        p = results["syncrl"]["parts"]
        parts.append(["syncrl", p["gen"] + p["score"], p["train"], p["sync"], base - sum(p.values()), base])
    if "trl" in results:
        t = results["trl"]
        parts.append(["TRL", t["gen"], mean(t["wall"]) - t["gen"], "-", "-", mean(t["wall"])])
    print_table(
        "Where a step goes (mean of the same steps, seconds)",
        [
            "system",
            "generate + score",
            "train (TRL: loss, backward, optimizer)",
            "weight sync",
            "other (driver, logging)",
            "step",
        ],
        parts,
    )
    print(f"1-min load average now: {os.getloadavg()[0]:.2f} (2 cores; others' jobs count too)")


def _trl_version() -> str:
    try:
        import trl

        return trl.__version__
    except ImportError:
        return "?"


if __name__ == "__main__":
    main()
