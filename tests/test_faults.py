"""A run survives its workers (real Ray, vLLM, DeepSpeed; tiny model).

Each chaos run kills (SIGKILL) or hangs actors at chosen steps and is compared with the same run
left alone: every field of metrics.jsonl but the timings and the restart records must be equal,
the engines' weight checksums included, and so must the final weights.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train import read_metrics, rm_reward, tiny_config

from launch.config import dump_config

pytestmark = pytest.mark.system
VOLATILE = ("time", "restarts")  # prefixes of the fields a restart may change (timings, tokens_per_s)


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE) and k != "tokens_per_s"} for r in rows]


def final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "final" / "model.safetensors")


def sigkill(worker) -> None:
    pid = __import__("ray").get(worker.call.remote(lambda actor: os.getpid()))
    os.kill(pid, signal.SIGKILL)


def hang(worker) -> None:
    """The worker's next calls wait behind this one (an actor runs one call at a time)."""
    worker.call.remote(lambda actor: time.sleep(3600))


def chaos_driver(actions: dict[int, callable]):
    """A Driver that, after step k is logged, runs ``actions[k](driver)`` once."""
    from launch.train import Driver

    class ChaosDriver(Driver):
        def end_step(self, record: dict) -> None:
            super().end_step(record)
            action = actions.pop(self.state.step, None)
            if action is not None:
                action(self)

    return ChaosDriver


def restarts(rows: list[dict]) -> list[tuple[int, str, str]]:
    return [(r["step"], e["actor"], e["cause"].split(" ")[0]) for r in rows for e in r["restarts"]]


@pytest.mark.parametrize("s", ["2", "auto"])
def test_killed_and_hung_rollout_and_reward_workers_are_replaced_losing_nothing(
    ray_cluster, tiny_llama, tiny_reward_model, tmp_path, s
):
    """GRPO, s = 2 or auto, prefetched generation (sync.overlap): a reward worker killed after
    step 1, the rollout worker killed after step 3 (with s = 2 the engines then lag the learner:
    the replacement must load the pushed version, not the learner's), and the rollout worker hung
    after step 5 (the next push and the prefetch behind it time out; the prefetch started before
    the push must run again on the version before it). With auto the chaos run must make the same
    push decisions as the clean one."""
    from launch.run import run

    overrides = [
        "steps=7",
        f"sync.interval={s}",
        "sync.target_kl=0.1",  # auto: here it pushes after some steps, not after others
        "sync.overlap=true",
        "logging.weight_checksums=true",
        "fault_tolerance.generate_timeout_s=30",
        "fault_tolerance.health_check_s=100000",
    ]
    cfg = tiny_config(
        "tiny-grpo", tiny_llama, *overrides, *rm_reward(tiny_reward_model), "logging.controller_name=ft-clean"
    )
    run(cfg, str(tmp_path / "clean"))

    cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"controller_name": "ft-chaos"})})
    actions = {
        1: lambda d: sigkill(d.rewards.workers[0]),
        3: lambda d: sigkill(d.rollouts.workers[0]),
        5: lambda d: hang(d.rollouts.workers[0]),
    }
    with chaos_driver(actions)(cfg, str(tmp_path / "chaos")) as driver:
        driver.run()
        status = __import__("ray").get(driver.controller.get_status.remote())  # what `syncrl ctl status` prints
    assert status["restarts"] == {"reward": 1, "rollout": 2}
    assert sum("restart: rollout-0" in e for e in status["events"]) == 2

    clean, chaos = read_metrics(tmp_path / "clean"), read_metrics(tmp_path / "chaos")
    assert comparable(chaos) == comparable(clean)
    if s == "2":
        assert [r["engine_version"] for r in chaos] == [0, 2, 2, 4, 4, 6, 6]
    else:
        pushes = [r["pushed_after"] for r in chaos]
        assert 0 < sum(p > 0 for p in pushes) < len(pushes), pushes  # auto decided both ways
    events = restarts(chaos)
    assert [(actor, cause) for _, actor, cause in events] == [
        ("reward-0", "died"),
        ("rollout-0", "died"),
        ("rollout-0", "gave"),
    ], events
    assert [step for step, _, _ in events] == sorted(step for step, _, _ in events) and events[0][0] == 2
    assert all(r["restarts"] == [] for r in clean)
    a, b = final_weights(tmp_path / "clean"), final_weights(tmp_path / "chaos")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_dead_learner_rank_restarts_the_group_and_a_spent_budget_stops_resumably(
    ray_cluster, tiny_llama, tiny_reward_model, tmp_path
):
    """2 ZeRO ranks, checkpoints every 2 steps, no rollout restart allowed: learner rank 1 killed
    after step 3 -> the group restarts from step 2 and steps 3-4 run again (their records
    replaced); then the (idle) rollout worker killed after step 5 -> the health probe at the next
    step boundary finds it, and the run stops with an error naming the actor, its cause and the
    budget, after a checkpoint of step 5; ``--resume`` ends it like the run left alone."""
    from actors.faults import RestartBudgetSpent
    from launch.run import run

    overrides = [
        "steps=6",
        "sync.interval=2",
        "learner.num_ranks=2",
        "checkpoint.every_steps=2",
        "fault_tolerance.rollout_restarts=0",
        "fault_tolerance.health_check_s=0",
        "logging.weight_checksums=true",
    ]
    cfg = tiny_config(
        "tiny-grpo", tiny_llama, *overrides, *rm_reward(tiny_reward_model), "logging.controller_name=ft-l-clean"
    )
    run(cfg, str(tmp_path / "clean"))

    cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"controller_name": "ft-l-chaos"})})
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    (chaos / "config.yaml").write_text(dump_config(cfg))
    actions = {3: lambda d: sigkill(d.learners.workers[1]), 5: lambda d: sigkill(d.rollouts.workers[0])}
    with pytest.raises(RestartBudgetSpent) as stop, chaos_driver(actions)(cfg, str(chaos)) as driver:
        driver.run()
    message = str(stop.value)
    for needed in ("rollout-0 died", "fault_tolerance.rollout_restarts is 0", "stopped at step 5", f"--resume {chaos}"):
        assert needed in message, message
    stopped = read_metrics(chaos)
    assert [r["step"] for r in stopped] == [1, 2, 3, 4, 5]  # steps 3 and 4 ran twice, logged once
    assert restarts(stopped) == [(3, "learner-1", "died")]
    assert stopped[2]["restarts"][0]["resumed_from_step"] == 2
    assert (chaos / "checkpoints" / "step_000005").is_dir()

    run(None, resume=str(chaos))
    clean, resumed = read_metrics(tmp_path / "clean"), read_metrics(chaos)
    assert comparable(resumed) == comparable(clean)
    a, b = final_weights(tmp_path / "clean"), final_weights(chaos)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
