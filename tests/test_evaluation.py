"""Evaluation metrics by hand, and the in-training evaluation against an independent HF pass."""

from __future__ import annotations

import json
import math

import pytest

from rollout.evaluation import format_table, pass_at_k, summarize
from rollout.records import Sample


def graded(qid: str, correct: bool, boxed: bool = True, length: int = 4, finish: str = "stop", source: str = "default") -> Sample:
    return Sample(prompt_id=qid, prompt_ids=[1], response_ids=[2] * length, logprobs=[0.0] * length,
                  finish_reason=finish, policy_version=0, reward=float(correct), source=source,
                  reward_info={"correct": correct, "source": "boxed" if boxed else "number"})  # fmt: skip


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_summarize_hand_values():
    samples = [graded("a", True), graded("a", False, boxed=False), graded("b", False, length=8, finish="length"),
               graded("b", False), graded("c", True), graded("c", True)]  # fmt: skip
    out = summarize(samples, ks=(1, 2))
    per_q = [0.5, 0.0, 1.0]
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["accuracy_stderr"] == pytest.approx(math.sqrt(sum((a - 0.5) ** 2 for a in per_q) / 2 / 3))
    assert out["pass@2"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert out["boxed_rate"] == pytest.approx(5 / 6) and out["truncated_rate"] == pytest.approx(1 / 6)
    assert out["response_len_mean"] == pytest.approx(28 / 6) and out["questions"] == 3
    assert "0.500" in format_table([("m", out)])
    # one source: its per-source keys repeat the totals
    assert (out["accuracy/default"], out["questions/default"], out["samples/default"]) == (out["accuracy"], 3, 6)
    assert out["reward_mean/default"] == pytest.approx(0.5)


def test_summarize_per_source():
    other = "gsm/8k v1"  # characters a metric name does not take: the key keeps them
    samples = [graded("a", True, source="arith"), graded("a", False, source="arith"), graded("b", True, source="arith"),
               graded("b", True, source="arith"), graded("c", False, source=other), graded("c", False, source=other)]  # fmt: skip
    samples[0].reward = 0.75  # a reward that is not the grade: reward_mean follows the reward, accuracy the grade
    out = summarize(samples)
    assert out["accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3) and out["questions"] == 3  # the totals as before
    assert out["accuracy/arith"] == pytest.approx(0.75) and out["accuracy/gsm/8k v1"] == 0.0
    assert out["reward_mean/arith"] == pytest.approx(2.75 / 4) and out["reward_mean/gsm/8k v1"] == 0.0
    assert (out["questions/arith"], out["samples/arith"], out["questions/gsm/8k v1"], out["samples/gsm/8k v1"]) == (2, 4, 1, 2)
    assert list(out).index("accuracy/arith") < list(out).index("accuracy/gsm/8k v1")
    table = format_table([("m", out)])
    assert table.splitlines()[0].split()[:2] == ["model", "accuracy"] and "accuracy/" not in table


@pytest.mark.system
def test_eval_before_and_after_matches_hf_greedy(ray_cluster, tiny_llama, tmp_path):
    """eval.at_start / at_end: the end evaluation grades the final policy's greedy answers; an
    independent pass (HF greedy decoding of the saved final model, graded by the verifier)
    gives the same numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.config import load_config
    from launch.evaluate import test_prompts
    from launch.train import train
    from rewards.math_verify import MathVerifier

    cfg = load_config("tiny-grpo", [f"model.path={tiny_llama}", "steps=3", "learner.lr=1e-2", "eval.at_start=true",
                                    "eval.at_end=true", "eval.every_steps=3", "eval.num_questions=6", "rollout.max_new_tokens=12",
                                    "logging.progress_bar=false"])  # fmt: skip
    train(cfg, str(tmp_path))  # every_steps=3 evaluates the last step: at_end does not repeat it
    before, after = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert (before["step"], before["policy_version"]) == (0, 0)
    assert (after["step"], after["policy_version"]) == (3, 3) and after["questions"] == 6

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    verifier = MathVerifier(timeout_s=5)
    lengths, correct, boxed = [], [], []
    for p in test_prompts(cfg):
        ids = tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
        result = verifier.grade(tok.decode(out, skip_special_tokens=True), p.answer)
        lengths.append(len(out))
        correct.append(result.info["correct"])
        boxed.append(result.info["source"] == "boxed")
    verifier.close()
    assert after["response_len_mean"] == pytest.approx(sum(lengths) / len(lengths))
    assert after["accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert after["boxed_rate"] == pytest.approx(sum(boxed) / len(boxed))

    # `syncrl eval base final base`: one engine start, the next folders' weights loaded into it;
    # the numbers are those of the training run's evaluations of the same policies.
    from launch.evaluate import evaluate_models, interchangeable

    assert interchangeable(tiny_llama, str(tmp_path / "final"))
    base, final, base_again = evaluate_models([tiny_llama, str(tmp_path / "final"), tiny_llama], cfg, None)
    keys = ("accuracy", "response_len_mean", "boxed_rate", "questions")
    assert [{k: r[k] for k in keys} for r in (base, final, base_again)] == [{k: r[k] for k in keys} for r in (before, after, before)]
    assert final["policy_version"] == 1  # served by the first engine, not a new one


def test_interchangeable_folders(tiny_llama, tiny_qwen2, tmp_path):
    """A folder saved from a model shares its engines; another architecture does not."""
    import shutil

    from launch.evaluate import folder_weights, interchangeable

    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    assert interchangeable(tiny_llama, str(copy))
    assert not interchangeable(tiny_llama, tiny_qwen2)
    assert {n for n, _ in folder_weights(str(copy))} == {n for n, _ in folder_weights(tiny_llama)}
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        folder_weights(str(tmp_path))
