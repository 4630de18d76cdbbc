"""A tiny GRPO run on a 3-node Ray cluster started on this machine (Ray's own multi-node test
cluster: one raylet per node, each with its own resources), run by tests/test_multinode.py in a
process of its own (a process holds one Ray connection, and the test session already has one).

    python tests/multinode_run.py MODEL REWARD_MODEL RUN_DIR   # writes RUN_DIR/multinode.json

Nodes: a head with 2 CPUs and the custom resource ``rollout_node`` (the engine), and two nodes
with 2 CPUs and ``learner_node`` each (the reward worker, not placed, goes where a CPU is free).
Rewards come from a tiny reward model, so that every step has groups to train on. The run asks for its engine on
``rollout_node`` and its 2 learner ranks on ``learner_node`` with SPREAD, so each rank gets a node
of its own. After the run (actors still up) it records what the test checks: where every worker
ran, each rank's rendezvous environment, and the engine's greedy answers next to Hugging Face
greedy decoding of the run's final model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(model: str, reward_model: str, run_dir: str) -> None:
    import ray
    import ray._private.utils
    import torch
    from ray.cluster_utils import Cluster
    from transformers import AutoModelForCausalLM

    from actors.controller import NAMESPACE
    from launch.config import load_config
    from launch.train import Driver
    from rollout.tasks import make_task

    # The test cluster would name itself in /tmp/ray/ray_current_cluster, where `syncrl train`
    # (and the user's own `ray start`) look: it stays private to this process.
    ray._private.utils.write_ray_address = lambda *args, **kwargs: None
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"rollout_node": 2}, "include_dashboard": False},
    )
    learner_nodes = [cluster.add_node(num_cpus=2, resources={"learner_node": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=True)
    try:
        cfg = load_config(
            "tiny-grpo",
            [
                f"model.path={model}",
                "steps=2",
                "data.prompts_per_step=2",
                "rollout.samples_per_prompt=4",
                "rollout.max_new_tokens=12",
                "rollout.cpu_kv_cache_gib=0.25",
                "learner.lr=5e-2",
                "learner.num_ranks=2",
                "learner.placement_strategy=SPREAD",
                "learner.resources={learner_node: 1}",
                "rollout.resources={rollout_node: 1}",
                "sync.interval=1",
                "logging.weight_checksums=true",
                "logging.progress_bar=false",
                "logging.tensorboard=false",
                "eval.at_end=false",
                "reward.routes.default.kind=reward_model",
                f"reward.routes.default.model_path={reward_model}",
            ],
        )
        prompts, _ = make_task("add-2digit", 4, 0)
        with Driver(cfg, run_dir) as driver:
            state = driver.run()
            engine = driver.rollouts.generate(prompts, n=1, temperature=0)
            ranks = [
                ray.get(
                    w.call.remote(lambda obj: (obj.node_id(), os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]))
                )
                for w in driver.learners.workers
            ]
        hf = AutoModelForCausalLM.from_pretrained(Path(run_dir, "final"), dtype=torch.float32).eval()
        greedy = [
            hf.generate(torch.tensor([s.prompt_ids]), max_new_tokens=cfg.rollout.max_new_tokens, do_sample=False)[
                0, len(s.prompt_ids) :
            ].tolist()
            for s in engine
        ]
        result = {
            "head_node": cluster.head_node.node_id,
            "learner_nodes": [n.node_id for n in learner_nodes],
            "ranks": [{"node_id": n, "master_addr": a, "master_port": int(p)} for n, a, p in ranks],
            "engine_responses": [s.response_ids for s in engine],
            "engine_versions": [s.policy_version for s in engine],
            "hf_responses": greedy,
            "steps": state.step,
            "learner_version": state.learner_version,
        }
        Path(run_dir, "multinode.json").write_text(json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
