"""OREO on real components: the value model as a second DeepSpeed engine on the learner ranks
(1 rank and ZeRO-3 on 2 ranks, packed), and a staged run (GRPO warm-up, then OREO with s = auto
held to every 2 steps) killed and resumed, which must end with the policy and value weights of
the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import kill_after_checkpoint, read_metrics, rm_reward, tiny_config

from launch.config import load_config
from launch.metrics import read_jsonl
from rollout.records import LossSpec, Sample

pytestmark = pytest.mark.system


def _fixed_batch():
    from rollout.algorithms import build_oreo_batch

    rewards = [1.0, 0.0, 1.0, 1.0] * 2  # mean 0.75
    samples = [
        Sample(
            prompt_id=f"g{i // 4}",
            prompt_ids=[1, 5, 6 + i // 4],
            response_ids=list(range(10 + i, 14 + i + i % 3)),
            logprobs=[-4.0] * (4 + i % 3),
            finish_reason="stop",
            policy_version=0,
            reward=r,
        )
        for i, r in enumerate(rewards)
    ]
    return build_oreo_batch(samples)


def test_value_model_learns_beside_the_policy_and_zero3_matches_one_rank(ray_cluster, tiny_llama, tmp_path):
    """... and the value worker (the saved value folder, a plain padded forward) scores states as
    the learner's value engine does (ZeRO-3, packed)."""
    from actors.learner import LearnerGroup
    from actors.value import ValueGroup

    batch = _fixed_batch()
    spec = LossSpec(bellman_weight=1.0, value_weight=1.0, beta=0.1, kl_reg=0.01)
    runs = {}
    for name, extra in [
        ("one rank", []),
        ("zero3 packed", ["learner.num_ranks=2", "learner.zero_stage=3", "learner.packing=true"]),
    ]:
        # a policy that barely moves keeps lr_t ~ 0, so the value's target is the reward itself
        cfg = load_config(
            "tiny-oreo", ["learner.lr=1e-6", "learner.value_lr=3e-3", "learner.micro_batch_size=4", *extra]
        ).learner
        group = LearnerGroup(tiny_llama, cfg, needs_reference=True, needs_value=True)
        try:
            checksums = [(group.on_all("weights_checksum")[0], group.on_all("value_checksum")[0])]
            steps = []
            for _ in range(10):
                steps.append(group.train_step(batch, spec))
                checksums.append((group.on_all("weights_checksum")[0], group.on_all("value_checksum")[0]))
            runs[name] = steps
            states = [(s.prompt_ids, s.response_ids[:t]) for s in batch.sequences for t in (0, 2, len(s.response_ids))]
            learner_scores = group.score_states(states)
            group.on_all("save_hf", str(tmp_path / name))
            worker = ValueGroup(str(tmp_path / name / "value"))
            try:
                assert worker.score(states) == pytest.approx(learner_scores, rel=1e-4, abs=1e-5), name
            finally:
                worker.shutdown()
            assert len(set(learner_scores)) > 3, "a trained value model tells states apart"
        finally:
            group.shutdown()
        assert len({c[0] for c in checksums}) == len(checksums) and len({c[1] for c in checksums}) == len(checksums), (
            f"{name}: both the policy and the value model must change every step"
        )
    steps = runs["one rank"]
    assert steps[0]["value_s0_mean"] == 0.0  # the zero-initialized head: V = 0 before training
    assert steps[0]["value_s0_abs_err"] == pytest.approx(0.75)  # |0 - R| averaged: the mean reward
    assert steps[-1]["value_loss"] < 0.2 * steps[0]["value_loss"]
    assert 0.5 < steps[-1]["value_s0_mean"] < 1.1  # moved from 0 toward the batch's mean reward, 0.75
    assert steps[-1]["value_s0_abs_err"] < steps[0]["value_s0_abs_err"]
    # explained variance of V against its target: 0 for the all-zero V, above 0 once V tells rows apart
    assert steps[0]["value_explained_variance"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["value_explained_variance"] > 0.05 and not any(k.startswith("value_ev_") for k in steps[-1])
    for key in (
        "loss",
        "value_loss",
        "policy_bellman_loss",
        "kl_reg_term",
        "value_s0_mean",
        "value_explained_variance",
    ):
        assert [s[key] for s in runs["zero3 packed"]] == pytest.approx([s[key] for s in steps], rel=1e-4, abs=1e-7), key


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    return out


def test_oreo_stage_after_grpo_killed_and_resumed_ends_with_the_same_weights(
    ray_cluster, tiny_llama, tiny_reward_model, tmp_path
):
    from transformers import AutoModel

    from launch.run import run
    from learner.value import ValueModel

    stages = [
        "stages=[{name: grpo-warmup, steps: 2, algorithm: {name: grpo}, sync: {interval: 1}}, "
        "{name: oreo, steps: 4, algorithm: {name: oreo, beta: 0.1, level: step, step_delimiter: ' '}, "
        "sync: {interval: auto, min_interval: 2, max_interval: 2}}]"  # auto bounded to every 2 steps
    ]
    cfg = tiny_config(
        "tiny-oreo",
        tiny_llama,
        *stages,
        "checkpoint.every_steps=3",
        "learner.value_lr=1e-2",
        "logging.controller_name=oreo-resume",
        *rm_reward(tiny_reward_model),
        "eval.at_end=true",
        "eval.beam_size=2",
        "eval.num_questions=6",
        "eval.step_delimiter=' '",
    )
    run(cfg, str(tmp_path / "whole"))
    rows = read_metrics(tmp_path / "whole")
    assert [r["stage"] for r in rows] == ["grpo-warmup"] * 2 + ["oreo"] * 4
    assert [r["sync_interval"] for r in rows] == [1, 1] + ["auto"] * 4
    assert all(r["drift_kl"] >= 0 for r in rows[2:])  # OREO's samples measure drift as GRPO's do
    assert all("value_loss" not in r for r in rows[:2])  # GRPO does not train the value model
    oreo = rows[2:]
    assert oreo[0]["value_s0_mean"] == 0.0 and oreo[-1]["value_s0_mean"] != 0.0
    assert all(r["batch_actions"] > r["batch_rows"] for r in oreo)  # steps split at ' ': several actions a row
    assert {"policy_bellman_loss", "kl_reg_term", "value_s0_abs_err"} <= set(oreo[0])
    assert [r["engine_version"] for r in oreo] == [2, 4, 4, 6]
    greedy, beam = read_jsonl(
        tmp_path / "whole" / "eval.jsonl"
    )  # the end: greedy, then beam search with the learner's V
    assert "beam" not in greedy and beam["beam"] == 2 and beam["questions"] == greedy["questions"] == 6
    assert (
        greedy["value_answers"] == 6 and "value_mse_last" in greedy and "value_answers" not in beam
    )  # V's diagnostics
    assert all("value_explained_variance" in r for r in oreo)
    assert beam["policy_version"] == 6 and beam["tokens_per_question"] > greedy["tokens_per_question"]

    killed = tmp_path / "killed"
    kill_after_checkpoint(ray_cluster, cfg, killed, step=3)  # inside the OREO stage, engines one version behind
    assert (killed / "checkpoints" / "step_000003" / "engine_weights.safetensors").is_file()
    assert (killed / "checkpoints" / "step_000003" / "value").is_dir()
    run(None, resume=str(killed))

    keys = ("step", "stage", "learner_version", "engine_version", "prompts_hash", "reward_mean", "sequences")
    assert [{k: r[k] for k in keys} for r in read_metrics(killed)] == [{k: r[k] for k in keys} for r in rows]
    for part in ("final", "final/value"):
        whole, resumed = _tensors(tmp_path / "whole" / part), _tensors(killed / part)
        assert whole.keys() == resumed.keys() and whole
        for name in whole:
            assert torch.equal(whole[name], resumed[name]), f"{part} {name}"

    # the value folder stands alone: its backbone is a Hugging Face model, the whole a ValueModel
    value_dir = tmp_path / "whole" / "final" / "value"
    assert (value_dir / "tokenizer.json").is_file()
    AutoModel.from_pretrained(value_dir)
    value = ValueModel.from_pretrained(str(value_dir)).eval()
    assert value.value_head.weight.abs().sum() > 0
    with torch.no_grad():
        v = value(torch.tensor([[1, 5, 6, 7]]))
    assert v.shape == (1, 4) and torch.isfinite(v).all()

    # syncrl eval --beam: the saved value model (a value worker) steers a real vLLM engine
    from launch.evaluate import evaluate_models

    final = str(tmp_path / "whole" / "final")
    results = evaluate_models([final], cfg, None, beams=(1, 2), value_dirs=[str(value_dir)])
    assert [r.get("beam") for r in results] == [None, 1, 2]
    assert results[0]["value_answers"] == 6 and results[0]["value_mse_constant"] >= 0  # syncrl eval --value
    for r in results:
        assert r["questions"] == 6 and 0 <= r["accuracy"] <= 1 and r["response_len_mean"] > 0
    assert results[2]["tokens_per_question"] > results[1]["tokens_per_question"]  # a wider search samples more
    assert results[2]["finished_answers_mean"] >= 1
    # eval.beam_candidates and eval.beam_max_steps: one candidate, one step, so one step's tokens per question
    narrow = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"beam_candidates": 1, "beam_max_steps": 1})})
    _, one = evaluate_models([final], narrow, None, beams=(2,), value_dirs=[str(value_dir)])
    assert one["tokens_per_question"] == pytest.approx(one["response_len_mean"])  # the answer is all that was sampled
    assert one["tokens_per_question"] < results[2]["tokens_per_question"] and one["finished_answers_mean"] <= 1
