"""Correctness on more than one node: a tiny GRPO run on a 3-node Ray cluster started on this
machine (tests/multinode_run.py, in a process of its own), with its 2 learner ranks on two
different nodes and its engine on the third."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def multinode_run(tiny_llama, tiny_reward_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("multinode")
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path_factory.mktemp("ray")), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "multinode_run.py"), tiny_llama, tiny_reward_model, str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return run_dir, json.loads(Path(run_dir, "multinode.json").read_text()), out.stdout + out.stderr


def test_ranks_on_two_nodes_engine_on_the_third(multinode_run):
    run_dir, result, _ = multinode_run
    placement = json.loads(Path(run_dir, "placement.json").read_text())["workers"]
    ranks = [placement[f"learner-{i}"]["node_id"] for i in range(2)]
    assert sorted(ranks) == sorted(result["learner_nodes"]), placement  # SPREAD: a node each
    assert placement["rollout-0"]["node_id"] == result["head_node"]
    assert [r["node_id"] for r in result["ranks"]] == ranks  # placement.json tells the truth


def test_rendezvous_is_chosen_on_rank_0s_node(multinode_run):
    run_dir, result, _ = multinode_run
    placement = json.loads(Path(run_dir, "placement.json").read_text())
    host, port = placement["learner_rendezvous"].rsplit(":", 1)
    assert placement["learner_rendezvous_node"] == result["ranks"][0]["node_id"] != result["head_node"]
    assert all(r["master_addr"] == host and r["master_port"] == int(port) for r in result["ranks"])


def test_push_across_nodes_is_exact_and_the_run_finishes(multinode_run):
    run_dir, result, log = multinode_run
    assert result["steps"] == 2 and result["learner_version"] == 2
    assert Path(run_dir, "finished.json").is_file() or Path(run_dir, "final", "syncrl_state.json").is_file()
    assert set(result["engine_versions"]) == {2}  # s = 1: the engine holds the final policy
    assert result["engine_responses"] == result["hf_responses"]  # engine greedy == HF greedy of final/
    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    assert all(r["trained"] for r in rows) and len({r["engine_checksums"][0] for r in rows}) == 2  # a push each step
    assert "placement: " in log  # the driver says where the workers went when they span nodes
