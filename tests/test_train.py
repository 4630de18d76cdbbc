"""System tests of the driver: real local Ray, real vLLM engines, real DeepSpeed ranks, tiny model.

Only the sync interval s separates offline, semi-online and online training; these tests check
the bounds that s promises (staleness, which weights the engines hold), that a push is exact,
that s can change while a run goes, that a killed run resumes where it was, and that the ranks
of ZeRO-3 train like one rank.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from launch.config import dump_config, load_config
from rollout.records import LossSpec

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[1]


def tiny_config(recipe: str, model: str, *overrides: str):
    return load_config(
        recipe,
        [
            f"model.path={model}",
            "steps=4",
            "data.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=12",
            "rollout.cpu_kv_cache_gib=0.25",
            "learner.lr=5e-3",
            "logging.progress_bar=false",
            *overrides,
        ],
    )


def rm_reward(model: str) -> list[str]:
    """Score with a (tiny, random) reward model: continuous rewards, so DPO always finds pairs."""
    return ["reward.routes.default.kind=reward_model", f"reward.routes.default.model_path={model}"]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def interval(value) -> float:
    return math.inf if value == "inf" else value


@pytest.mark.parametrize("s", [1, 2, "inf"])
@pytest.mark.parametrize("recipe", ["tiny-grpo", "tiny-dpo"])
def test_sync_interval_bounds_staleness_and_engine_weights(
    ray_cluster, tiny_llama, tiny_reward_model, tmp_path, recipe, s
):
    from launch.run import run

    # DPO on an untrained tiny model rarely finds a correct answer to pair: score with a reward model.
    rewards = rm_reward(tiny_reward_model) if recipe == "tiny-dpo" else []
    cfg = tiny_config(recipe, tiny_llama, f"sync.interval={s}", "logging.weight_checksums=true", *rewards)
    run(cfg, str(tmp_path))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    s = interval(s)
    for r in rows:
        assert r["staleness_max"] <= (s - 1 if s != math.inf else r["step"] - 1)
        assert r["sync_interval"] == (int(s) if s != math.inf else "inf")
        parts = r["time_gen_s"] + r["time_score_s"] + r["time_train_s"] + r["time_sync_s"]
        assert parts <= r["time_wall_s"] < parts + 30  # the wall time holds the parts (+ checksums, logging)
    assert all(a["time"] < b["time"] for a, b in zip(rows, rows[1:]))
    trained = [r for r in rows if r["trained"]]
    assert len(trained) >= 2, "the test needs steps that trained"
    assert len({r["learner_checksum"] for r in trained}) == len(trained), "the learner must change every step"
    engine = [r["engine_checksums"][0] for r in rows]
    if s == math.inf:
        assert len(set(engine)) == 1 and all(r["engine_version"] == 0 for r in rows)
        assert all(r["sample_versions"] == [0] for r in rows)
    else:
        for r in rows:  # the engines hold the newest version whose number is a multiple of s steps
            assert r["engine_version"] == r["learner_version"] - r["learner_version"] % s
        assert len(set(engine)) == len({r["engine_version"] for r in rows})
    if s == 1:
        assert all(r["staleness_max"] == 0 for r in rows)
    for r in trained:  # the drift of the engines from the learner, by staleness, whatever the algorithm
        assert r["drift_kl"] >= 0 and 0 < r["drift_ess"] <= 1 and r["drift_ratio_max"] >= r["drift_ratio_mean"] > 0
        by_staleness = {k for k in r if k.startswith("drift_kl_s")}
        assert by_staleness and by_staleness <= {f"drift_kl_s{k}" for k in range(r["staleness_max"] + 1)}
    if s == 1:  # staleness 0: the engine's and the learner's log-probs of the same weights (fp32)
        assert all(r["drift_kl_s0"] < 1e-4 for r in trained)
    assert all(
        r["pushed_after"] == (s if r["engine_version"] == r["learner_version"] else 0) for r in rows if s != math.inf
    )
    check_startup(tmp_path, rows[0], reference=recipe == "tiny-dpo")


def check_startup(run_dir, first_step: dict, reference: bool) -> None:
    """startup.json (bench/startup.py's table): every part of the start-up, in the order it ran."""
    startup = json.loads(Path(run_dir, "startup.json").read_text())
    names = lambda rec: [p[0] for p in rec["phases"]]  # noqa: E731
    driver = names(startup["driver"])  # syncrl train's: Ray starts while a thread imports and reads the data
    assert driver[0] == "command (Python, imports, config)" and set(driver[1:4]) == {
        "Ray",
        "driver's imports (torch, transformers, the actors')",
        "task, tokenizer and data",
    }
    assert driver[4:] == [
        "cluster check and controller",
        "rollout and reward groups started",
        "learner placement and rendezvous",
        "waiting for the actors",
        "file check, placement, transport",
    ]
    workers = startup["workers"]
    assert names(workers["rollout-0"]) == ["imports", "vLLM engine"]
    assert names(workers["reward-0"]) == ["scorers"]
    assert names(workers["learner-0"]) == [
        "imports",
        "process group",
        "policy load",
        "DeepSpeed initialize",
        *(["reference model"] if reference else []),
        "step memory",
    ]
    for w in workers.values():
        assert w["submitted"] <= w["start"] <= w["end"] <= startup["driver"]["end"] and w["process"] <= w["start"]
        assert sum(p[2] for p in w["phases"]) == pytest.approx(w["end"] - w["start"], abs=0.01)
    first = startup["first_step"]
    assert startup["driver"]["end"] <= first["start"] and sum(first["parts"].values()) <= first["end"] - first["start"]
    assert first["parts"]["gen"] == first_step["time_gen_s"]


def train_one_step(rollouts, learners, prompts, seed: int) -> None:
    """One GRPO step of the learner on the engines' samples (alternate rewards 1, 0)."""
    from rollout.algorithms import build_grpo_batch

    samples = rollouts.generate(prompts, seed=seed)
    for i, s in enumerate(samples):
        s.reward = float(i % 2)
    learners.train_step(build_grpo_batch(samples), LossSpec(grpo_weight=1.0))


def assert_engines_are_the_learner(rollouts, learners, prompts, version: int, folder: Path, before: list, cfg) -> list:
    """After a push of ``version``: the engines' greedy output equals HF greedy decoding of the
    learner's weights (saved as a HF folder in ``folder``) and differs from ``before``; returns it."""
    from transformers import AutoModelForCausalLM

    learners.on_all("save_hf", str(folder))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    after = rollouts.generate(prompts, n=1, temperature=0)
    assert all(s.policy_version == version for s in after)
    for s in after:
        out = hf.generate(torch.tensor([s.prompt_ids]), max_new_tokens=cfg.rollout.max_new_tokens, do_sample=False)
        assert s.response_ids == out[0, len(s.prompt_ids) :].tolist(), folder.name
    assert [s.response_ids for s in after] != before, f"{folder.name}: the weights did not change"
    return [s.response_ids for s in after]


def test_push_is_exact_with_each_transport(ray_cluster, tiny_llama, tmp_path):
    """After a train step and a push, the engine's greedy output equals HF greedy decoding of the
    learner's current weights (saved by the learner as a HF folder)."""
    from actors.learner import LearnerGroup
    from actors.rollout import RolloutGroup
    from actors.weight_sync import CollectiveTransport, ObjectStoreTransport
    from rollout.tasks import make_task

    cfg = tiny_config("tiny-grpo", tiny_llama, "learner.lr=0.05")
    prompts, _ = make_task("add-2digit", 6, 0)
    rollouts = RolloutGroup(tiny_llama, cfg.rollout)
    learners = LearnerGroup(tiny_llama, cfg.learner)
    try:
        before = [s.response_ids for s in rollouts.generate(prompts, n=1, temperature=0)]
        gloo = CollectiveTransport(learners, rollouts, "gloo")
        # "regrouped": every member joins a new group (as after a replaced engine), the old one shut down first
        transports = {"gloo": gloo, "regrouped": gloo, "object_store": ObjectStoreTransport()}
        for version, (name, transport) in enumerate(transports.items(), start=1):
            if name == "regrouped":
                gloo._join(learners, rollouts)
            train_one_step(rollouts, learners, prompts[:2], seed=version)
            transport.push(learners, rollouts, version)
            before = assert_engines_are_the_learner(rollouts, learners, prompts, version, tmp_path / name, before, cfg)
    finally:
        rollouts.shutdown()
        learners.shutdown()


def test_push_into_tensor_parallel_engines_and_past_an_engine_lost_at_a_push(ray_cluster, tiny_llama, tmp_path):
    """Two engines of 2 tensor-parallel vLLM workers each (on CPU): the gloo weight group has a rank
    per worker (5 in all), and after a push both engines' greedy output equals HF greedy decoding of
    the learner's weights. Then engine 1 is killed and the next push replaces it, regroups and
    pushes again, naming it in the restart event; nothing is kept on the host (keep=False)."""
    from actors.faults import Supervisor
    from actors.learner import LearnerGroup
    from actors.rollout import RolloutGroup
    from actors.weight_sync import CollectiveTransport
    from rollout.tasks import make_task

    cfg = tiny_config(
        "tiny-grpo",
        tiny_llama,
        "learner.lr=0.05",
        "rollout.num_workers=2",
        "rollout.tensor_parallel_size=2",
        "fault_tolerance.generate_timeout_s=120",
    )
    prompts, _ = make_task("add-2digit", 4, 0)
    supervisor = Supervisor(cfg.fault_tolerance)
    rollouts = RolloutGroup(tiny_llama, cfg.rollout, supervisor)
    learners = LearnerGroup(tiny_llama, cfg.learner)
    try:
        transport = CollectiveTransport(learners, rollouts, "gloo", timeout_s=10)
        before = [s.response_ids for s in rollouts.generate(prompts, n=1, temperature=0)]
        for version in (1, 2):
            train_one_step(rollouts, learners, prompts[:2], seed=version)
            if version == 2:
                pid = __import__("ray").get(rollouts.workers[1].call.remote(lambda actor: os.getpid()))
                os.kill(pid, signal.SIGKILL)
            transport.push(learners, rollouts, version, keep=False)
            before = assert_engines_are_the_learner(
                rollouts, learners, prompts, version, tmp_path / str(version), before, cfg
            )
        assert rollouts.call(lambda w, i: w.weight_receivers.remote()) == [2, 2]
        assert [(e["actor"], e["cause"].split(" ")[0]) for e in supervisor.events] == [("rollout-1", "died")]
        assert "during a weight push" in supervisor.events[0]["cause"]
        # what a replacement engine would load: exported on demand while the learner still has version 2
        stored = learners.export_weights()  # the learner's buckets in the object store
        assert {n for bucket in ray_cluster.get(stored) for n, _ in bucket} == {m[0] for m in transport.meta}
    finally:
        rollouts.shutdown()
        learners.shutdown()


def test_zero3_two_ranks_packing_and_token_budget_match_one_rank(ray_cluster, tiny_llama):
    from actors.learner import LearnerGroup
    from learner.objective import split_batch
    from learner.trainer import rank_micro_batches
    from rollout.algorithms import build_group_dpo_batch
    from rollout.records import Sample

    samples = [
        Sample(
            prompt_id=f"g{g}",
            prompt_ids=[1, 5, 6 + g],
            response_ids=list(range(10 + k, 13 + 2 * k)),
            logprobs=[-4.0] * (3 + k),
            finish_reason="stop",
            policy_version=0,
            reward=float(k % 2),
        )
        for g in range(3)
        for k in range(4)
    ]
    batch = build_group_dpo_batch(samples, with_advantages=True)
    spec = LossSpec(dpo_weight=1.0, grpo_weight=0.5, nll_coef=0.1, entropy_coef=0.01)
    # a group (4 rows, one shared 3-token prompt, ~21 packed tokens) is one DPO unit; under a
    # 30-token budget each is a micro-batch, so the rank with two groups runs two, the other one
    budget = ["learner.micro_batch_size=8", "learner.micro_batch_tokens=30"]

    def reuses_memory_and_fuses_adamw(rank) -> tuple[bool, bool]:  # runs in each rank (pickled by value)
        """In a learner rank's process: a 48 MB tensor allocated after a 64 MB one was freed reuses
        its memory (under 1,000 page faults against 12,288 for fresh pages; keep_freed_memory), and
        the optimizer is torch's fused AdamW."""
        import resource

        torch.ones(2**24)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(3 * 2**22)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        optimizer = getattr(rank.engine.optimizer, "optimizer", rank.engine.optimizer)  # ZeRO wraps torch's
        return faults < 1000, optimizer.defaults.get("fused") is True

    losses = {}
    for name, ranks, stage, packing, extra in [
        ("one rank", 1, 0, False, []),
        ("zero3", 2, 3, False, []),
        ("packed", 2, 3, True, []),
        ("token budget", 2, 3, True, budget),
    ]:
        cfg = load_config(
            "tiny-grpo",
            [
                f"learner.num_ranks={ranks}",
                f"learner.zero_stage={stage}",
                f"learner.packing={packing}",
                "learner.lr=1e-2",
                "learner.micro_batch_size=4",
                *extra,
            ],
        ).learner
        if extra:
            assert sorted(len(rank_micro_batches(s, cfg)) for s in split_batch(batch, 2)) == [1, 2]
        group = LearnerGroup(tiny_llama, cfg, needs_reference=True)
        try:
            losses[name] = [group.train_step(batch, spec)["loss"] for _ in range(3)]
            if packing:  # packed rows attend block by block, in the policy and the reference alike
                attn = lambda rank: [m.config._attn_implementation for m in (rank.engine.module, rank.reference)]  # noqa: E731
                assert group.call(lambda w, i: w.call.remote(attn)) == [["syncrl_block_sdpa"] * 2] * 2
            if ranks == 2:  # ZeRO's collectives go through gloo: DeepSpeed's shm op is never compiled
                built = lambda rank: __import__("deepspeed").comm.comm.cdb.shm_comm_op is not None  # noqa: E731
                assert group.call(lambda w, i: w.call.remote(built)) == [False, False]
                assert group.call(lambda w, i: w.call.remote(reuses_memory_and_fuses_adamw)) == [(True, True)] * 2
        finally:
            group.shutdown()
    one_rank = losses["one rank"]
    assert one_rank[0] != one_rank[2], "training must move the loss"
    assert losses["zero3"] == pytest.approx(one_rank, rel=1e-4)
    assert losses["packed"] == pytest.approx(one_rank, rel=1e-4)  # packed rows train like padded ones
    assert losses["token budget"] == pytest.approx(one_rank, rel=1e-4)


def test_set_sync_interval_from_another_process(ray_cluster, tiny_llama, tmp_path):
    """`syncrl ctl` in another process pauses the run, changes s and the learning rate, resumes
    it: both apply from the next step on, a bad `ctl set` is refused and the run goes on, and the
    learning rate set survives a resume. (The tiny run is faster than a CLI round trip, hence the pause.)"""
    from launch.checkpoint import load_state
    from launch.run import run
    from launch.train import Driver

    cfg = tiny_config(
        "tiny-grpo",
        tiny_llama,
        "steps=10",
        "sync.interval=1",
        "logging.controller_name=ctl-test",
        "checkpoint.every_steps=5",
    )
    runner = threading.Thread(target=run, args=(cfg, str(tmp_path)))
    runner.start()
    address = ray_cluster.get_runtime_context().gcs_address
    ctl = [sys.executable, "-m", "launch", "ctl", "--address", address, "--name", "ctl-test"]

    def syncrl_ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*ctl, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)

    try:
        while not (tmp_path / "metrics.jsonl").exists() or len(read_metrics(tmp_path)) < 2:
            assert runner.is_alive(), "the run ended early"
            time.sleep(0.05)
        assert syncrl_ctl("pause").returncode == 0
        paused_at = len(read_metrics(tmp_path))
        done = syncrl_ctl("set-sync-interval", "3")
        assert done.returncode == 0 and "applies from the next step" in done.stdout, done.stderr[-2000:]
        status = syncrl_ctl("status")
        assert status.returncode == 0, status.stderr[-2000:]
        status = json.loads(status.stdout)
        assert status["sync_interval"] == 3 and status["paused"] is True
        assert any("sync_interval 1 -> 3" in e for e in status["events"])
        bad = syncrl_ctl("set-sync-interval", "0")
        assert bad.returncode == 2 and "positive integer" in bad.stderr
        done = syncrl_ctl("set", "learner.lr", "0.02")
        assert done.returncode == 0 and "applies from the next step" in done.stdout, done.stderr[-2000:]
        for args, says in [
            (("learner.lr", "-1"), "learner.lr: Input should be greater than 0"),
            (("learner.momentum", "0.9"), "not a setting a running job takes"),
            (("algorithm.kl_coef", "0.1"), "need a reference model"),  # tiny-grpo starts without one
            (("learner.value_lr", "1e-5"), "no value model"),
        ]:
            refused = syncrl_ctl("set", *args)
            assert refused.returncode == 2 and says in refused.stderr, (args, refused.stderr[-2000:])
        assert json.loads(syncrl_ctl("status").stdout)["live"] == {"learner.lr": 0.02}
        time.sleep(1.0)
        assert len(read_metrics(tmp_path)) <= paused_at + 1, "a paused run must not go on"
        assert syncrl_ctl("resume").returncode == 0
    finally:
        runner.join()
    seen = [r["sync_interval"] for r in read_metrics(tmp_path)]
    first = seen.index(3)
    assert first >= 2 and set(seen[:first]) == {1} and set(seen[first:]) == {3}
    rows = read_metrics(tmp_path)[first:]
    assert max(r["staleness_max"] for r in rows) <= 2 and any(r["staleness_max"] > 0 for r in rows)
    every = read_metrics(tmp_path)  # the learning rate: the recipe's, then the one set, from the same step as s
    assert [r.get("set/learner.lr") for r in every] == [None] * first + [0.02] + [None] * (len(every) - first - 1)
    assert all(r["lr"] == 5e-3 for r in every[:first]) and all(r["lr"] == 0.02 for r in every[first:])

    more = cfg.model_copy(update={"steps": 12})  # resumed from the step-10 checkpoint for two more steps
    with Driver(more, str(tmp_path), load_state(str(tmp_path))) as driver:  # a longer run than the recipe
        driver.run()
    assert [r["lr"] for r in read_metrics(tmp_path)[10:]] == [0.02, 0.02]


def kill_after_checkpoint(ray_cluster, cfg, run_dir: Path, step: int) -> None:
    """Run ``syncrl train`` in another process on the test cluster and SIGKILL it as soon as its
    checkpoint of ``step`` is in place."""
    recipe = run_dir.with_name(run_dir.name + "-recipe.yaml")
    recipe.write_text(dump_config(cfg))
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", "train", str(recipe), "--output", str(run_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (run_dir / "checkpoints" / f"step_{step:06d}").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its checkpoint"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(2)  # Ray reaps the dead driver's actors (the named Controller among them)


def test_auto_interval_pushes_when_the_policy_drifts(ray_cluster, tiny_llama, tiny_reward_model, tmp_path):
    """sync.interval: auto pushes when the drift would pass sync.target_kl: a learner that does not
    barely moves (lr 1e-12) is pushed to only at max_interval, one that moves fast much more often."""
    from launch.run import run

    pushes = {}
    for lr in (1e-12, 0.05):
        cfg = tiny_config(
            "tiny-grpo",
            tiny_llama,
            "steps=6",
            "sync.interval=auto",
            "sync.target_kl=0.001",
            "sync.max_interval=5",
            f"learner.lr={lr}",
            f"logging.controller_name=auto-{lr}",
            *rm_reward(tiny_reward_model),
        )
        run(cfg, str(tmp_path / str(lr)))
        rows = read_metrics(tmp_path / str(lr))
        assert all(r["sync_interval"] == "auto" for r in rows)
        for r in rows:  # pushed_after: the steps since the previous push, on the steps that pushed
            assert (r["pushed_after"] > 0) == (r["engine_version"] == r["learner_version"])
        pushes[lr] = [r["step"] for r in rows if r["pushed_after"]]
    assert pushes[1e-12] == [5], pushes  # the drift stays the mismatch: only max_interval pushes
    assert len(pushes[0.05]) >= 2, pushes


@pytest.mark.parametrize("s", ["3", "auto"])
def test_killed_run_resumes_with_the_same_data_and_versions(ray_cluster, tiny_llama, tiny_reward_model, tmp_path, s):
    """A run killed (SIGKILL) after its step-4 checkpoint and resumed gives the same data order,
    policy versions and samples as the uninterrupted run; with s = auto, the same pushes."""
    from launch.run import run

    overrides = ["steps=7", f"sync.interval={s}", "checkpoint.every_steps=2", "logging.controller_name=resume-test"]
    overrides += ["sync.target_kl=0.5"] if s == "auto" else []  # pushes after some steps, not others
    cfg = tiny_config("tiny-dpo", tiny_llama, *overrides, *rm_reward(tiny_reward_model))
    run(cfg, str(tmp_path / "whole"))

    killed = tmp_path / "killed"
    kill_after_checkpoint(ray_cluster, cfg, killed, step=4)
    run(None, resume=str(killed))

    keys = (
        "step",
        "stage",
        "learner_version",
        "engine_version",
        "sample_versions",
        "prompts_hash",
        "reward_mean",
        "sequences",
        "staleness_max",
        "pushed_after",
    )
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(killed)
    assert [r["step"] for r in resumed] == list(range(1, 8))
    assert [{k: r[k] for k in keys} for r in resumed] == [{k: r[k] for k in keys} for r in whole]
    for a, b in zip(resumed, whole):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, nan_ok=True)


def test_g2d_two_stages(ray_cluster, tiny_llama, tiny_reward_model, tmp_path):
    """G2D: GRPO online, then DPO offline on rollouts of the warmed-up policy."""
    from launch.run import run

    cfg = tiny_config("tiny-g2d", tiny_llama, "stages.0.steps=2", "stages.1.steps=3", *rm_reward(tiny_reward_model))
    run(cfg, str(tmp_path))
    rows = read_metrics(tmp_path)
    assert [r["stage"] for r in rows] == ["grpo-warmup"] * 2 + ["offline-dpo"] * 3
    assert [r["sync_interval"] for r in rows] == [1, 1, "inf", "inf", "inf"]
    warm = rows[1]["learner_version"]
    assert warm == 2
    for r in rows[2:]:  # every DPO sample comes from the warmed-up policy, which the engines keep
        assert r["sample_versions"] == [warm] and r["engine_version"] == warm
        assert r["trained"] and "dpo_loss" in r
    assert (tmp_path / "final" / "config.json").is_file() and (tmp_path / "final" / "tokenizer.json").is_file()


def test_overlap_adds_one_step_of_staleness(ray_cluster, tiny_llama, tmp_path):
    """sync.overlap: the next batch generates while this one trains, so staleness reaches s."""
    from launch.run import run

    run(tiny_config("tiny-grpo", tiny_llama, "steps=5", "sync.interval=2", "sync.overlap=true"), str(tmp_path))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert max(r["staleness_max"] for r in rows) == 2  # bound s, reached
    assert [r["sample_versions"] for r in rows] == [[0], [0], [0], [2], [2]]


def write_pairs(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 7, (3 * i) % 5
            f.write(
                json.dumps(
                    {
                        "prompt": f"What is {a} + {b}?",
                        "chosen": f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}",
                        "rejected": f"The answer is {a * b + 1}",
                    }
                )
                + "\n"
            )


def test_offline_dpo_from_a_file_of_pairs(ray_cluster, tiny_llama, tmp_path):
    """s = inf with a file of preference pairs: no generation, the learner trains on the file
    and the DPO margin of the chosen responses grows."""
    from launch.run import run

    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 12)
    cfg = tiny_config(
        "tiny-dpo",
        tiny_llama,
        f"data.path={pairs}",
        "sync.interval=inf",
        "steps=6",
        "data.prompts_per_step=6",
        "learner.lr=1e-3",
    )
    run(cfg, str(tmp_path / "run"))
    rows = read_metrics(tmp_path / "run")
    assert all(r["trained"] and r["batch_pairs"] == 6 and r["engine_version"] == 0 for r in rows)
    assert all(r["sample_versions"] == [-1] for r in rows)  # no engine generated them
    assert rows[-1]["dpo_margin"] > rows[0]["dpo_margin"] + 0.1 and rows[-1]["dpo_loss"] < rows[0]["dpo_loss"]


def test_bad_offline_data_fails_before_actors_start(tiny_llama, tmp_path):
    from launch.config import ConfigError
    from launch.run import run

    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 3)
    with pytest.raises(ConfigError, match="sync.interval must be inf"):
        run(tiny_config("tiny-dpo", tiny_llama, f"data.path={pairs}", "sync.interval=2"), str(tmp_path / "a"))
    pairs.write_text(pairs.read_text() + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:4: 'rejected' must be a non-empty string"):
        run(tiny_config("tiny-dpo", tiny_llama, f"data.path={pairs}", "sync.interval=inf"), str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("ranks,stage", [(1, 0), (2, 3)], ids=["one rank", "zero3"])
def test_reference_sync_makes_the_reference_the_policy(ray_cluster, tiny_llama, tmp_path, ranks, stage):
    """sync.ref_sync: at a push the frozen reference becomes the current policy, so the KL to it
    restarts from 0. Under ZeRO-3 the reference is partitioned like the policy (each of 2 ranks
    holds half of every parameter and none whole between forwards), a sync copies each rank's
    partitions, and a checkpoint's reference (saved per rank) is the one a resume gets back; the
    learner's loads (a causal LM, a value model) come out of from_pretrained partitioned already.
    ZeRO 0-2 ranks load plainly."""
    from actors.learner import LearnerGroup
    from rollout.algorithms import build_grpo_batch
    from rollout.records import Sample

    def reference_state(rank) -> tuple:  # runs in each rank (pickled by value): every rank must call
        """The reference's checksum and, per parameter, (elements this rank holds, elements it holds
        whole, the parameter's elements): under ZeRO-3 a rank holds a partition and nothing whole.
        The checksum, hashed as each parameter is gathered, is the one of all full weights at once."""
        from rollout.records import weights_checksum

        held = [
            (int(getattr(p, "ds_tensor", p).numel()), int(p.numel()), int(getattr(p, "ds_numel", p.numel())))
            for p in rank.reference.parameters()
        ]
        engine = rank.reference_engine or type("Module", (), {"module": rank.reference})
        checksum = rank.weights_checksum(engine)
        assert checksum == weights_checksum(rank.named_full_weights(engine))
        return checksum, held

    def sharded_loads(rank) -> list:  # in each rank: how the learner's loads come out of from_pretrained
        """Per model the learner loads (causal LM, value model): True where every parameter comes
        out partitioned (ZeRO-3: built under zero.Init, before any DeepSpeed engine), and the
        parameters' elements held whole; then whether ZeRO-3 loading is still on after the block."""
        from transformers import AutoModelForCausalLM
        from transformers.integrations import is_deepspeed_zero3_enabled

        from learner.trainer import ds_config, sharded_loading
        from learner.value import ValueModel

        out = []
        with sharded_loading(ds_config(rank.cfg, rank.dtype)):
            for model in (AutoModelForCausalLM.from_pretrained(tiny_llama), ValueModel.from_pretrained(tiny_llama)):
                params = list(getattr(model, "backbone", model).parameters())
                out.append((all(hasattr(p, "ds_id") for p in params), sum(p.numel() for p in params)))
        return out + [is_deepspeed_zero3_enabled()]

    samples = [
        Sample(
            prompt_id=f"g{g}",
            prompt_ids=[1, 5],
            response_ids=[10 + k, 20],
            logprobs=[-3.0, -3.0],
            finish_reason="stop",
            policy_version=0,
            reward=float(k % 2),
        )
        for g in range(2)
        for k in range(4)
    ]
    spec = LossSpec(grpo_weight=1.0, kl_coef=0.1)
    cfg = load_config(
        "tiny-grpo", ["learner.lr=2e-2", f"learner.num_ranks={ranks}", f"learner.zero_stage={stage}"]
    ).learner
    group = LearnerGroup(tiny_llama, cfg, needs_reference=True)
    state = lambda: group.call(lambda w, i: w.call.remote(reference_state))  # noqa: E731
    try:
        loads = group.call(lambda w, i: w.call.remote(sharded_loads))
        initial = state()
        group.on_all("save_checkpoint", str(tmp_path / "ckpt"))
        kl = [group.train_step(build_grpo_batch(samples), spec)["kl"] for _ in range(3)]
        group.on_all("sync_reference")
        synced = state()
        after = group.train_step(build_grpo_batch(samples), spec)["kl"]
        group.on_all("load_checkpoint", str(tmp_path / "ckpt"))
        restored = state()
    finally:
        group.shutdown()
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[2] > 1e-4
    assert after == pytest.approx(0.0, abs=1e-7)
    assert synced[0][0] != initial[0][0] and restored[0][0] == initial[0][0]
    assert len({checksum for checksum, _ in initial + synced + restored}) == 2  # every rank sees the same weights
    for (policy, whole), (value, value_whole), still_on in loads:  # ZeRO 0-2: plain loads
        assert (policy, value, still_on) == (stage == 3, stage == 3, False)
        assert (whole == 0 and value_whole == 0) if stage == 3 else (whole > 0 and value_whole > 0)
    for _, held in initial:
        if stage == 3:  # a partition of each parameter, padded to a multiple of the ranks; nothing whole
            assert all(whole == 0 and part == -(-numel // 2) for part, whole, numel in held), held
        else:
            assert all(part == whole == numel for part, whole, numel in held)
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("reference*"))
    assert saved == (
        ["reference-zero3-rank0-of-2.pt", "reference-zero3-rank1-of-2.pt"] if stage == 3 else ["reference.pt"]
    )


def test_learner_takes_grpo_log_probs_at_the_sampling_temperature_and_the_others_at_1(ray_cluster, tiny_llama):
    """GroupDPO + NLL + GRPO with the sampler at temperature 0.7: the learner's NLL is that of the
    model's own distribution (temperature 1), its GRPO loss and entropy those of the sampler's
    (logits / 0.7); all computed here from a plain Hugging Face forward of the same weights."""
    from transformers import AutoModelForCausalLM

    from actors.learner import LearnerGroup
    from learner import losses
    from learner.logprobs import token_logprobs_and_entropy
    from learner.objective import collate
    from rollout.algorithms import build_group_dpo_batch, make_algorithm
    from rollout.records import Sample

    samples = [
        Sample(
            prompt_id="g",
            prompt_ids=[1, 5, 6],
            response_ids=list(range(10 + k, 13 + k)),
            logprobs=[-4.0] * 3,
            finish_reason="stop",
            policy_version=0,
            reward=float(k % 2),
        )
        for k in range(4)
    ]
    batch = build_group_dpo_batch(samples, with_advantages=True)
    cfg = load_config(
        "tiny-grpo", ["algorithm.name=group_dpo_grpo", "algorithm.nll_coef=0.1", "rollout.temperature=0.7"]
    )
    spec = make_algorithm(cfg.algorithm, sampling_temperature=cfg.rollout.temperature).loss
    group = LearnerGroup(tiny_llama, cfg.learner, needs_reference=True)
    try:
        got = group.train_step(batch, spec)
    finally:
        group.shutdown()
    cb = collate(batch, pad_token_id=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=cb.input_ids, attention_mask=cb.attention_mask).logits
    m = cb.loss_mask
    at1, _ = token_logprobs_and_entropy(logits, cb.input_ids, 1.0)
    hot, hot_entropy = token_logprobs_and_entropy(logits, cb.input_ids, 0.7)
    rows = torch.unique(cb.chosen)
    assert got["nll_loss"] == pytest.approx(losses.nll_loss(at1[rows] * m[rows], m[rows]).item(), rel=1e-4)
    grpo, _ = losses.grpo_loss(
        hot * m, cb.behaviour_logps, cb.advantages, m, spec.clip_low, spec.clip_high, hot * m, spec.kl_coef
    )
    assert got["grpo_loss"] == pytest.approx(grpo.item(), rel=1e-4)
    assert got["entropy"] == pytest.approx(((hot_entropy * m).sum() / m.sum()).item(), rel=1e-4)
    assert losses.nll_loss(hot[rows] * m[rows], m[rows]).item() != pytest.approx(got["nll_loss"], rel=1e-2)


def test_a_crashed_worker_is_reported_and_nothing_is_left(ray_cluster, tiny_llama, tmp_path):
    """A rollout worker that dies mid-run, with no restart allowed, ends the run with an error
    naming it, and the run's other actors (and its named Controller) are stopped."""
    import ray

    from actors.controller import NAMESPACE
    from actors.faults import RestartBudgetSpent
    from launch.train import Driver

    cfg = tiny_config(
        "tiny-grpo", tiny_llama, "steps=3", "logging.controller_name=crash-test", "fault_tolerance.rollout_restarts=0"
    )
    with pytest.raises(RestartBudgetSpent, match="rollout-0 died"), Driver(cfg, str(tmp_path)) as driver:
        handles = [*driver.rollouts.workers, *driver.rewards.workers, *driver.learners.workers, driver.controller]
        ray.kill(driver.rollouts.workers[0])
        driver.run()
    for handle in handles:  # ray.kill is asynchronous: a call sent just after it may still be answered
        deadline = time.monotonic() + 30
        with pytest.raises(ray.exceptions.RayActorError):
            while time.monotonic() < deadline:
                ray.get(handle.__ray_ready__.remote(), timeout=30)
                time.sleep(0.2)
    with pytest.raises(ValueError):
        ray.get_actor("crash-test", namespace=NAMESPACE)
