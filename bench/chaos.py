"""Chaos: a tiny GRPO run that SIGKILLs a random actor (rollout engine, reward worker or learner
rank) every k steps, against the same run left alone, in the same process.

Printed: each kill (step, actor) with the restart it caused and how long the recovery took
(replacement start + weight load; for a learner rank, the whole group's restart from its last
checkpoint), the steps completed, the restarts by kind, the wall time of both runs, the steps
that ran twice (a learner restart repeats the steps after the checkpoint), and whether the
final weights are bit-identical to the clean run's.

    python bench/chaos.py --steps 12 --every 3
    python bench/chaos.py --steps 12 --every 2 --seed 1 --ranks 2 --set sync.overlap=true
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/chaos.py` from a checkout

from common import machine, print_table  # noqa: E402


def weights_digest(run_dir: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(run_dir / "final" / "model.safetensors")
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def sigkill(worker) -> None:
    import ray

    os.kill(ray.get(worker.call.remote(lambda actor: os.getpid())), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--every", type=int, default=3, help="kill an actor after every k-th step")
    ap.add_argument("--seed", type=int, default=0, help="which actors are killed")
    ap.add_argument("--ranks", type=int, default=2, help="learner ranks (ZeRO-2)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    import ray

    from launch.config import load_config
    from launch.metrics import read_jsonl
    from launch.models import build_tiny_model, build_tiny_reward_model
    from launch.run import run
    from launch.train import Driver

    tmp = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    model, reward_model = build_tiny_model(tmp / "model", "llama", seed=0), build_tiny_reward_model(tmp / "rm", seed=0)
    kills = args.steps // args.every
    overrides = [
        f"model.path={model}",
        f"steps={args.steps}",
        "data.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=12",
        "rollout.cpu_kv_cache_gib=0.25",
        "learner.lr=5e-3",
        "sync.interval=2",
        f"learner.num_ranks={args.ranks}",
        "learner.zero_stage=2",
        "checkpoint.every_steps=2",
        "logging.progress_bar=false",
        "reward.routes.default.kind=reward_model",
        f"reward.routes.default.model_path={reward_model}",
        f"fault_tolerance.rollout_restarts={kills}",
        f"fault_tolerance.reward_restarts={kills}",
        f"fault_tolerance.learner_restarts={kills}",
        f"fault_tolerance.max_restarts={kills}",
        *args.overrides,
    ]
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    print(
        f"machine: {machine()}\nrun: tiny GRPO, {args.steps} steps, s=2, {args.ranks} learner ranks, "
        "checkpoints every 2 steps",
        flush=True,
    )

    t0 = time.perf_counter()
    run(load_config("tiny-grpo", [*overrides, "logging.controller_name=chaos-clean"]), str(tmp / "clean"))
    clean_s = time.perf_counter() - t0

    rng, killed = random.Random(args.seed), []

    class ChaosDriver(Driver):
        def end_step(self, record: dict) -> None:
            super().end_step(record)
            step = self.state.step
            if step % args.every == 0 and step < args.steps and step not in [k[0] for k in killed]:
                kind = rng.choice(["rollout", "reward", "learner"])
                group = {"rollout": self.rollouts, "reward": self.rewards, "learner": self.learners}[kind]
                index = rng.randrange(len(group.workers))
                killed.append((step, group.name(index)))
                sigkill(group.workers[index])

    cfg = load_config("tiny-grpo", [*overrides, "logging.controller_name=chaos-run"])
    t0 = time.perf_counter()
    with ChaosDriver(cfg, str(tmp / "chaos")) as driver:
        driver.run()
    chaos_s = time.perf_counter() - t0
    ray.shutdown()

    rows = read_jsonl(tmp / "chaos" / "metrics.jsonl")
    events = [(r["step"], e) for r in rows for e in r["restarts"]]
    table, reruns = [], 0
    for step, actor in killed:
        found = next(
            ((s, e) for s, e in events if e["actor"] == actor), None
        )  # a learner's is logged at the re-run step
        if found is None:
            table.append([step, actor, "none found", "", ""])
            continue
        events.remove(found)
        s, e = found
        reruns += step - e.get("resumed_from_step", step)
        table.append([step, actor, e["cause"][:60], f"{e['recovery_s']:.1f}", s])
    print_table(
        f"chaos: a kill every {args.every} steps (seed {args.seed})",
        ["killed after step", "actor", "restart cause", "recovery s", "logged at step"],
        table,
    )
    by_kind: dict[str, int] = {}
    for r in rows:
        for e in r["restarts"]:
            by_kind[e["kind"]] = by_kind.get(e["kind"], 0) + 1
    same = weights_digest(tmp / "clean") == weights_digest(tmp / "chaos")
    print(
        f"\nsteps completed: {len(rows)} of {args.steps}; restarts by kind: {by_kind or 'none'}; "
        f"steps run twice (learner restarts): {reruns}"
    )
    print(f"wall time: clean {clean_s:.0f} s, with kills {chaos_s:.0f} s ({chaos_s / clean_s:.2f}x)")
    print(f"final weights equal the clean run's: {same}")
    if not same or len(rows) != args.steps:
        sys.exit(1)


if __name__ == "__main__":
    main()
