"""Unit tests of the placement plan (what a run asks of the cluster, whether the cluster can hold
it) and of the settings a GPU engine passes to vLLM. No Ray cluster: nodes are resource dicts."""

from __future__ import annotations

import pytest

from actors.placement import Ask, PlacementError, check_fits, engine_bundle, run_asks
from launch.config import engine_settings, load_config
from rollout.engine import cpu_threads_bind, engine_kwargs


def config(*overrides: str):
    return load_config("tiny-grpo", ["model.path=/m", *overrides])


def test_run_asks_on_gpus_count_tensor_parallel_gpus_and_custom_resources():
    cfg = config(
        "rollout.num_workers=2",
        "rollout.tensor_parallel_size=2",
        "learner.num_ranks=4",
        "learner.placement_strategy=SPREAD",
        "learner.resources={learner_node: 1}",
    )
    engines, rewards, learners = run_asks(cfg, gpu=True)
    assert engines == Ask("engines", 2, {"CPU": 1.0, "GPU": 2.0})
    assert rewards == Ask("reward workers", 1, {"CPU": 1.0})  # no GPU unless reward.num_gpus_per_worker asks
    assert learners == Ask("learner ranks", 4, {"CPU": 1.0, "GPU": 1.0, "learner_node": 1.0}, "SPREAD")
    assert "GPU" not in run_asks(cfg, gpu=False)[0].bundle
    assert len(run_asks(cfg, gpu=True, learner=False)) == 2  # `syncrl eval` starts no learner


def test_a_short_cluster_is_named_by_resource_and_group():
    cfg = config("rollout.num_workers=2", "learner.num_ranks=2")
    nodes = [{"CPU": 8.0, "GPU": 2.0}]
    with pytest.raises(PlacementError) as err:
        check_fits(run_asks(cfg, gpu=True), nodes)
    assert "needs 4 GPU for 2 engines (1 each) + 2 learner ranks (1 each); the cluster has 2" in str(err.value)
    check_fits(run_asks(cfg, gpu=True), [{"CPU": 8.0, "GPU": 4.0}])  # fits: no error


def test_reward_workers_ask_for_their_gpus_cpus_and_custom_resources():
    cfg = config(
        "reward.num_workers=2",
        "reward.num_gpus_per_worker=0.5",
        "reward.num_cpus_per_worker=2",
        "reward.resources={reward_node: 1}",
    )
    rewards = run_asks(cfg, gpu=True)[1]
    assert rewards == Ask("reward workers", 2, {"CPU": 2.0, "GPU": 0.5, "reward_node": 1.0})
    assert run_asks(cfg, gpu=False)[1] == rewards  # the user's GPU ask stands: check_fits says if there are none
    with pytest.raises(PlacementError) as err:
        check_fits(run_asks(cfg, gpu=False), [{"CPU": 16.0, "reward_node": 2.0}])
    assert "needs 1 GPU for 2 reward workers (0.5 each); the cluster has 0" in str(err.value)


def test_reward_workers_are_counted_with_engines_and_learner_ranks():
    cfg = config("rollout.num_workers=2", "learner.num_ranks=2", "reward.num_workers=2", "reward.num_gpus_per_worker=1")
    with pytest.raises(PlacementError) as err:
        check_fits(run_asks(cfg, gpu=True), [{"CPU": 16.0, "GPU": 4.0}])
    assert (
        "needs 6 GPU for 2 engines (1 each) + 2 reward workers (1 each) + 2 learner ranks (1 each); the cluster has 4"
        in str(err.value)
    )
    check_fits(run_asks(cfg, gpu=True), [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}])
    cpus = config("reward.num_workers=3", "reward.num_cpus_per_worker=2")  # on CPU: 1 engine + 6 + 1 learner rank
    with pytest.raises(PlacementError, match=r"needs 8 CPU for .*3 reward workers \(2 each\).*; the cluster has 4"):
        check_fits(run_asks(cpus, gpu=False), [{"CPU": 4.0}])
    with pytest.raises(PlacementError, match="each of the reward workers needs 1 CPU, 2 GPU on one node"):
        check_fits(run_asks(config("reward.num_gpus_per_worker=2"), gpu=True), [{"CPU": 8.0, "GPU": 1.0}] * 4)


def test_a_bundle_no_node_can_hold_and_strict_strategies():
    with pytest.raises(PlacementError, match="each of the engines needs 2 CPU, 4 GPU on one node; no node has that"):
        check_fits([Ask("engines", 1, {"CPU": 2.0, "GPU": 4.0})], [{"CPU": 8.0, "GPU": 2.0}] * 2)
    two = [{"CPU": 4.0, "learner_node": 1.0}, {"CPU": 4.0}]
    with pytest.raises(PlacementError, match="STRICT_SPREAD"):
        check_fits([Ask("learner ranks", 2, {"CPU": 1.0}, "STRICT_SPREAD")], [{"CPU": 4.0}])
    with pytest.raises(PlacementError, match="STRICT_PACK"):
        check_fits([Ask("learner ranks", 3, {"CPU": 2.0}, "STRICT_PACK")], two)
    with pytest.raises(PlacementError, match="needs 2 learner_node"):
        check_fits([Ask("learner ranks", 2, {"CPU": 1.0, "learner_node": 1.0})], two)
    check_fits([Ask("learner ranks", 2, {"CPU": 1.0}, "STRICT_SPREAD")], two)
    check_fits([Ask("learner ranks", 2, {"CPU": 2.0}, "STRICT_PACK")], two)


def test_gpu_engine_settings_reach_vllm():
    cfg = engine_settings(
        config("rollout.tensor_parallel_size=2", "rollout.gpu_memory_utilization=0.8", "rollout.seed=3")
    )
    gpu = engine_kwargs("/m", cfg, worker_index=1, gpu=True)
    assert gpu["tensor_parallel_size"] == 2 and gpu["distributed_executor_backend"] == "mp"
    assert gpu["gpu_memory_utilization"] == 0.8 and gpu["dtype"] == "bfloat16" and gpu["seed"] == 4
    assert "kv_cache_memory_bytes" not in gpu
    one = engine_kwargs("/m", engine_settings(config()), 0, gpu=True)
    assert one["tensor_parallel_size"] == 1 and "distributed_executor_backend" not in one
    # GPU defaults are vLLM's: CUDA graphs and 0.9 of the GPU; on CPU eager (no compile)
    assert one["enforce_eager"] is False and one["gpu_memory_utilization"] == 0.9
    assert (
        engine_kwargs("/m", engine_settings(config("rollout.enforce_eager=true")), 0, gpu=True)["enforce_eager"] is True
    )
    assert (
        engine_kwargs("/m", engine_settings(config("rollout.cpu_kv_cache_gib=0.5")), 0, gpu=False)["enforce_eager"]
        is True
    )
    cpu = engine_kwargs("/m", engine_settings(config("rollout.cpu_kv_cache_gib=0.5")), 0, gpu=False)
    assert cpu["kv_cache_memory_bytes"] == 2**29 and cpu["dtype"] == "float32" and "gpu_memory_utilization" not in cpu
    # tensor parallelism on CPU: vLLM's worker processes, each bound to its own cores, and a CPU each in the bundle
    cpu_tp = engine_kwargs(
        "/m", engine_settings(config("rollout.tensor_parallel_size=2", "rollout.cpu_kv_cache_gib=0.5")), 0, gpu=False
    )
    assert cpu_tp["tensor_parallel_size"] == 2 and cpu_tp["distributed_executor_backend"] == "mp"
    assert engine_bundle(config("rollout.tensor_parallel_size=2").rollout, gpu=False) == {"CPU": 2.0}
    assert engine_bundle(config("rollout.tensor_parallel_size=2").rollout, gpu=True) == {"CPU": 1.0, "GPU": 2.0}


def test_cpu_thread_binding_gives_each_engine_and_tensor_parallel_worker_its_own_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert [cpu_threads_bind("auto", i, 2) for i in range(2)] == ["0-3", "4-7"]
    assert [cpu_threads_bind("auto", i, 2, tensor_parallel_size=2) for i in range(2)] == ["0-1|2-3", "4-5|6-7"]
    assert cpu_threads_bind("auto", 0, 3, tensor_parallel_size=2) == "0|1"  # 2 cores each, the 7th and 8th unused
    assert cpu_threads_bind("auto", 0, 8, tensor_parallel_size=2) == "nobind"  # fewer cores than workers
    assert cpu_threads_bind("0-1|2-3", 0, 1, tensor_parallel_size=2) == "0-1|2-3"  # a setting is used as given


def test_an_evaluations_value_worker_is_in_the_plan():
    """syncrl eval --beam: the value worker's bundle (1 GPU on GPUs) is counted with the engines'
    and the reward workers', so a cluster whose GPUs the engines fill is refused at once."""
    asks = run_asks(config("rollout.num_workers=2"), gpu=True, learner=False, value=True)
    assert [(a.group, a.count, a.bundle) for a in asks][-1] == ("value workers", 1, {"CPU": 1.0, "GPU": 1.0})
    assert run_asks(config(), gpu=False, learner=False, value=True)[-1].bundle == {"CPU": 1.0}
    with pytest.raises(
        PlacementError, match=r"needs 3 GPU for 2 engines \(1 each\) \+ 1 value workers \(1 each\); the cluster has 2"
    ):
        check_fits(asks, [{"CPU": 8.0, "GPU": 2.0}])


def test_weight_group_has_a_rank_per_tensor_parallel_worker():
    """Learner rank 0 is rank 0; then every vLLM worker of engine 0, of engine 1, ... in order."""
    from actors.weight_sync import group_layout

    assert group_layout([1, 1]) == (3, [1, 2])
    assert group_layout([2, 2, 2]) == (7, [1, 3, 5])
    assert group_layout([4, 1, 2]) == (8, [1, 5, 6])
    assert group_layout([]) == (1, [])
