"""Overlap of generation and training: syncrl GRPO with sync.interval=2 and sync.overlap=true
(step t+1's batch generates while step t trains) against sync.interval=1 without overlap.

Both runs are the real loop (``launch.run.run``, what ``syncrl train`` runs) with the same model, task, batch and
seeds; only ``sync.interval`` and ``sync.overlap`` differ. Per step, from metrics.jsonl:
time_gen_s, time_train_s, time_sync_s; a step's wall time is the gap between two of the driver's
step logs (metrics.jsonl has no timestamp: the bench stamps ``MetricsLog.write``, see
bench/grpo_vs_trl.py). Steps 2..N-1 are averaged: step 1 holds the engine's first-call warm-up
and, with overlap, the last step has nothing left to prefetch and trains alone.

What time_gen_s means with overlap: ``RolloutSource.next`` waits for the batch prefetched one
step earlier and starts the next one, so time_gen_s is only the wait, not the generation. The
generation time (gen) and training time (train) that an overlapped step should hide behind one
another are therefore taken from the non-overlapped run of the same layout (s=1, where
time_gen_s and time_train_s are the standalone times). The bench also times each prefetched
generation from its start to its end (a thread of the driver ``ray.wait``s its refs; its
wake-up adds a little, which matters only for sub-second steps): "gen in background" is how
long generation took while training competed with it for the cores; "train" of the overlapped
run is likewise its (contended) time_train_s. A weight push queues behind the generation in
flight (an engine actor runs one call at a time), so when generation outlasts training the
wait shows in time_sync_s of the overlapped run's sync steps.

Printed for each run: mean step time, mean max(gen, train), mean gen + train, step/max (goal
for the overlapped run: <= 1.15) and step/sum (s=1: what the serial loop adds to its two parts).

On a 2-core CPU generation and training compete for the same cores, so the goal may be out of
reach here. Layouts: ``shared`` (defaults: the engine's threads bound to every core, the learner
with as many torch threads) and ``split`` (the engine bound to the upper half of the cores,
``rollout.cpu_threads_bind``, the learner with the lower half's count of torch threads,
``learner.cpu_threads``; the learner's threads are not pinned: the config has no affinity for it).

    python bench/overlap.py --model tiny-llama --steps 8
    python bench/overlap.py --model smollm2 --prompts 4 --samples 4 --max-new-tokens 48 --steps 6
"""

from __future__ import annotations

import argparse
import os

from common import machine, print_table
from grpo_vs_trl import add_run_args, ensure_ray, mean, run_syncrl, syncrl_config


def layouts() -> dict[str, list[str]]:
    """Config overrides of each core layout."""
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    engine = f"{cores[half]}-{cores[-1]}" if len(cores) - half > 1 else str(cores[half])
    return {"shared": [], "split": [f"rollout.cpu_threads_bind='{engine}'", f"learner.cpu_threads={max(1, half)}"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(ap, 8, "steps per run; steps 2..N-1 are averaged")
    ap.add_argument("--interval", type=int, default=2, help="sync.interval of the overlapped run")
    ap.add_argument("--layouts", default="shared,split", help="core layouts to run: shared, split")
    args = ap.parse_args()
    if args.steps < 4:
        raise SystemExit("--steps must be >= 4 (steps 2..N-1 are averaged)")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the engines inherit it (a local cluster)

    import ray

    from launch.models import resolve_model

    path = resolve_model(args.model)
    print(
        f"{machine()}\nmodel {args.model} ({path}): {args.prompts} prompts x {args.samples} samples, "
        f"<= {args.max_new_tokens} new tokens, micro-batch {args.micro}, {args.steps} steps per run "
        f"(steps 2..{args.steps - 1} averaged)",
        flush=True,
    )
    all_layouts = layouts()
    chosen = [name.strip() for name in args.layouts.split(",") if name.strip()]
    for name in chosen:
        if name not in all_layouts:
            raise SystemExit(f"--layouts: unknown layout {name!r} ({', '.join(all_layouts)})")

    runs = []  # (layout, label, overrides)
    for name in chosen:
        runs.append((name, "s=1", [*all_layouts[name], "sync.interval=1", "sync.overlap=false"]))
        runs.append(
            (
                name,
                f"s={args.interval} overlap",
                [*all_layouts[name], f"sync.interval={args.interval}", "sync.overlap=true"],
            )
        )

    started = False
    results = {}
    try:
        for layout, label, overrides in runs:
            cfg = syncrl_config(args, *args.overrides, *overrides)
            started = ensure_ray(cfg) or started
            print(f"--- {layout} cores, {label}: {' '.join(overrides)}", flush=True)
            run = run_syncrl(cfg)
            records, wall = run.timed(skip_last=True)
            steps = [r["step"] for r in records]
            results[(layout, label)] = {
                "wall": mean(wall),
                "gen": mean(r["time_gen_s"] for r in records),
                "score": mean(r["time_score_s"] for r in records),
                "train": mean(r["time_train_s"] for r in records),
                "sync": mean(r["time_sync_s"] for r in records),
                "gen_bg": mean(run.prefetch[s] for s in steps if s in run.prefetch) if run.prefetch else None,
                "length": mean(r["response_len_mean"] for r in records),
                "staleness": max(r["staleness_max"] for r in records),
                "load": mean(run.loads[1:-1]),
            }
    finally:
        if started:
            ray.shutdown()

    fmt = lambda v: "-" if v is None else v  # noqa: E731
    rows = []
    for (layout, label), r in results.items():
        rows.append(
            [
                f"{layout}, {label}",
                r["wall"],
                r["gen"],
                fmt(r["gen_bg"]),
                r["score"],
                r["train"],
                r["sync"],
                r["length"],
                r["staleness"],
                r["load"],
            ]
        )
    print_table(
        f"syncrl GRPO steps, {args.model}: {args.prompts} x {args.samples}, <= {args.max_new_tokens} new "
        f"tokens (mean of steps 2..{args.steps - 1}, seconds)",
        [
            "run",
            "step (wall)",
            "time_gen_s (overlap: wait)",
            "gen in background",
            "score",
            "train",
            "sync",
            "response tokens",
            "max staleness",
            "1-min load",
        ],
        rows,
    )

    serial = [r["wall"] for (_, label), r in results.items() if label == "s=1"]
    fastest = min(serial) if serial else float("nan")
    rows = []
    for (layout, label), r in results.items():
        ref = results.get((layout, "s=1"))
        if ref is None:
            continue
        gen, train = ref["gen"], ref["train"]  # standalone times, from the non-overlapped run of this layout
        row = [
            f"{layout}, {label}",
            r["wall"],
            gen,
            train,
            max(gen, train),
            gen + train,
            r["wall"] / max(gen, train),
            r["wall"] / (gen + train),
        ]
        row += [ref["wall"] / r["wall"], fastest / r["wall"]]
        if r["gen_bg"] is not None:  # what the overlapped step actually had to cover: contended times
            row.append(r["wall"] / max(r["gen_bg"], r["train"]))
        else:
            row.append("-")
        rows.append(row)
    print_table(
        "Overlap: step time against its generation and training time (gen, train: the s=1 run of the "
        "same layout; means, seconds)",
        [
            "run",
            "step",
            "gen",
            "train",
            "max(gen, train)",
            "gen + train",
            "step / max (goal <= 1.15 overlapped)",
            "step / sum",
            "speed-up vs s=1 (same layout)",
            "speed-up vs fastest s=1",
            "step / max(contended gen, train)",
        ],
        rows,
    )
    cores = len(os.sched_getaffinity(0))
    print(f"1-min load average now: {os.getloadavg()[0]:.2f} ({cores} cores; others' jobs count too)")


if __name__ == "__main__":
    main()
