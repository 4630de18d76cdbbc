"""Unit tests of the pure pieces of fault tolerance: budgets, record rewinding, what is kept for
a replacement engine, and choices that must not depend on the run's history."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from actors.faults import ActorFailure, RestartBudgetSpent, Supervisor
from launch.config import ConfigError, FaultToleranceConfig, load_config
from launch.metrics import MetricsLog, read_jsonl, step_record
from rollout.algorithms import batch_rng, build_dpo_batch, make_algorithm
from rollout.records import Sample, TrainBatch


def test_budgets_per_kind_and_per_run():
    sup = Supervisor(FaultToleranceConfig(rollout_restarts=2, reward_restarts=1, learner_restarts=0, max_restarts=3))
    sup.charge(ActorFailure("rollout", "rollout-0", "died"))
    sup.charge(ActorFailure("reward", "reward-0", "died"))
    with pytest.raises(
        RestartBudgetSpent, match=r"reward-1 hung; no restart left: fault_tolerance.reward_restarts is 1"
    ):
        sup.charge(ActorFailure("reward", "reward-1", "hung"))
    with pytest.raises(RestartBudgetSpent, match="learner_restarts is 0"):
        sup.charge(ActorFailure("learner", "learner-1", "died"))
    sup.charge(ActorFailure("rollout", "rollout-1", "died"))  # the kind's second, the run's third
    with pytest.raises(RestartBudgetSpent, match="rollout_restarts is 2"):
        sup.charge(ActorFailure("rollout", "rollout-0", "died"))
    assert sup.used == {"rollout": 2, "reward": 1, "learner": 0}

    total = Supervisor(FaultToleranceConfig(rollout_restarts=5, max_restarts=1))
    total.charge(ActorFailure("rollout", "rollout-0", "died"))
    with pytest.raises(RestartBudgetSpent, match="max_restarts is 1"):
        total.charge(ActorFailure("rollout", "rollout-0", "died"))


def test_without_a_budget_the_failure_itself_is_raised_and_events_drain_once():
    failure = ActorFailure("rollout", "rollout-3", "died (ActorDiedError: gone)")
    with pytest.raises(ActorFailure, match="rollout-3 died") as err:
        Supervisor().charge(failure)
    assert err.value.kind == "rollout" and err.value.name == "rollout-3"
    seen = []
    sup = Supervisor(FaultToleranceConfig(), on_event=seen.append)
    sup.charge(failure)
    sup.record(failure, 1.234)
    assert (
        sup.drain() == seen == [{"actor": "rollout-3", "kind": "rollout", "cause": failure.cause, "recovery_s": 1.23}]
    )
    assert sup.drain() == []


def test_fault_tolerance_fields_are_validated():
    with pytest.raises(ConfigError, match="fault_tolerance.rollout_restarts"):
        load_config("tiny-grpo", ["fault_tolerance.rollout_restarts=-1"])
    with pytest.raises(ConfigError, match="fault_tolerance.generate_timeout_s"):
        load_config("tiny-grpo", ["fault_tolerance.generate_timeout_s=0"])
    with pytest.raises(ConfigError, match="fault_tolerance.retries"):
        load_config("tiny-grpo", ["fault_tolerance.retries=2"])


def test_rewind_replaces_records_after_the_checkpoint(tmp_path):
    controller = SimpleNamespace(
        report=SimpleNamespace(remote=lambda r: None), report_eval=SimpleNamespace(remote=lambda r: None)
    )
    log = MetricsLog(str(tmp_path), progress_bar=False, total_steps=6)
    result = {
        "policy_version": 0,
        "accuracy": 0.5,
        "accuracy_stderr": 0.1,
        "questions": 4,
        "boxed_rate": 1.0,
        "response_len_mean": 3.0,
    }
    log.eval(0, result, controller)
    for step in range(1, 5):
        log.write(record(step), controller)
        if step % 2 == 0:
            log.eval(step, result, controller)
    log.rewind(2)  # the learner group restarted from the checkpoint of step 2
    for step in range(3, 5):
        log.write(record(step), controller)
    log.eval(4, result, controller)
    log.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [r["step"] for r in read_jsonl(tmp_path / "eval.jsonl")] == [0, 2, 4]
    MetricsLog(str(tmp_path), progress_bar=False, total_steps=6, resume_step=3).close()  # a --resume from step 3
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(tmp_path / "eval.jsonl")] == [0, 2]
    log = MetricsLog(str(tmp_path), progress_bar=False, total_steps=6, resume_step=3)
    log.rewind(0)  # no checkpoint: the run starts over, its at_start evaluation too
    log.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == read_jsonl(tmp_path / "eval.jsonl") == []


def record(step: int) -> dict:
    return {
        "step": step,
        "stage": "main",
        "sync_interval": 1,
        "learner_version": step,
        "reward_mean": 0.0,
        "loss": 0.0,
        "response_len_mean": 1.0,
        "staleness_max": 0,
        "time_gen_s": 0.0,
        "time_train_s": 0.0,
        "time_sync_s": 0.0,
    }


def sample(prompt: str, reward: float, ids: list[int], timed_out: bool = False) -> Sample:
    return Sample(
        prompt_id=prompt,
        prompt_ids=[1, 2],
        response_ids=ids,
        logprobs=[-1.0] * len(ids),
        finish_reason="stop",
        policy_version=0,
        reward=reward,
        reward_info={"timed_out": timed_out},
    )


def test_grader_timeouts_are_counted_in_the_step_record():
    state = SimpleNamespace(step=0, learner_version=0, engine_version=0)
    samples = [sample("a", 0.0, [3], timed_out=True), sample("a", 1.0, [4]), sample("b", 0.0, [5], timed_out=True)]
    rec = step_record(state, "main", 1, samples, TrainBatch(sequences=[]), {}, 0, 0, 0, 0)
    assert rec["grader_timeouts"] == 2


def test_dpo_ties_depend_on_the_batch_not_on_the_batches_before():
    """A restarted or resumed run builds its pairs with fresh state: they must be the same."""
    batch = [sample("p", r, [i]) for i, r in enumerate([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])]
    other = [sample("q", r, [i + 10]) for i, r in enumerate([1.0, 1.0, 0.0, 0.0])]
    ids = lambda b: [s.response_ids for s in b.sequences]  # noqa: E731
    first = make_algorithm(load_config("tiny-dpo").algorithm, seed=0)
    picks_fresh = ids(first.build(batch))
    for _ in range(5):  # history in between changes nothing
        first.build(other)
        assert ids(first.build(batch)) == picks_fresh
    assert ids(make_algorithm(load_config("tiny-dpo").algorithm, seed=0).build(batch)) == picks_fresh
    picks = {
        tuple(s.response_ids[0] for s in build_dpo_batch(batch, batch_rng(seed, batch)).sequences) for seed in range(20)
    }
    assert len(picks) > 1  # the seed still matters: ties are not always broken the same way
    assert random.Random(1).random() != batch_rng(1, batch).random()


def test_weight_sync_keeps_the_newest_pushed_versions():
    from actors.weight_sync import WeightSync

    exports = []
    learners = SimpleNamespace(export_weights=lambda: exports.append("exported") or f"w{len(exports)}")
    sync = WeightSync("object_store", learners, None, SimpleNamespace(learner_version=6), 1.0, kept_versions=2)
    for version in (2, 4, 6):
        sync.kept.keep(version, f"w{version}")
    assert list(sync.kept.versions) == [4, 6]
    sync.kept.keep(2, "w2 again")  # after a restart from an earlier checkpoint: newest is last
    assert list(sync.kept.versions) == [6, 2] and sync.weights_of(2) == "w2 again"
    with pytest.raises(RuntimeError, match="version 4 are not kept"):
        sync.weights_of(4)
    assert json.dumps(sorted(sync.kept.versions)) == "[2, 6]" and exports == []
    sync.state.learner_version = 8  # pushed with nothing kept (s = 1), and still the learner's weights: exported
    assert sync.weights_of(8) == "w1" and exports == ["exported"] and list(sync.kept.versions) == [2, 8]
