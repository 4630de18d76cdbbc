"""Evaluation metrics by hand, and the in-training evaluation against an independent HF pass."""

from __future__ import annotations

import json
import math

import pytest

from rollout.evaluation import auc, format_table, pass_at_k, summarize, value_diagnostics
from rollout.records import Sample


def graded(
    qid: str, correct: bool, boxed: bool = True, length: int = 4, finish: str = "stop", source: str = "default"
) -> Sample:
    return Sample(
        prompt_id=qid,
        prompt_ids=[1],
        response_ids=[2] * length,
        logprobs=[0.0] * length,
        finish_reason=finish,
        policy_version=0,
        reward=float(correct),
        source=source,
        reward_info={"correct": correct, "source": "boxed" if boxed else "number"},
    )


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_summarize_hand_values():
    samples = [
        graded("a", True),
        graded("a", False, boxed=False),
        graded("b", False, length=8, finish="length"),
        graded("b", False),
        graded("c", True),
        graded("c", True),
    ]
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
    samples = [
        graded("a", True, source="arith"),
        graded("a", False, source="arith"),
        graded("b", True, source="arith"),
        graded("b", True, source="arith"),
        graded("c", False, source=other),
        graded("c", False, source=other),
    ]
    samples[0].reward = 0.75  # a reward that is not the grade: reward_mean follows the reward, accuracy the grade
    out = summarize(samples)
    assert out["accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3) and out["questions"] == 3  # the totals as before
    assert out["accuracy/arith"] == pytest.approx(0.75) and out["accuracy/gsm/8k v1"] == 0.0
    assert out["reward_mean/arith"] == pytest.approx(2.75 / 4) and out["reward_mean/gsm/8k v1"] == 0.0
    assert (out["questions/arith"], out["samples/arith"], out["questions/gsm/8k v1"], out["samples/gsm/8k v1"]) == (
        2,
        4,
        1,
        2,
    )
    assert list(out).index("accuracy/arith") < list(out).index("accuracy/gsm/8k v1")
    table = format_table([("m", out)])
    assert table.splitlines()[0].split()[:2] == ["model", "accuracy"] and "accuracy/" not in table


def test_auc_by_hand_and_by_counting_pairs():
    # ranks 1..4 of 0.1, 0.35, 0.4, 0.8; positives 0.35 and 0.8: (2 + 4 - 3) / (2 * 2)
    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    # ties share their ranks: each positive 0.5 against the negative 0.5 counts one half, against 0.2 one
    assert auc([0.5, 0.5, 0.5, 0.2], [True, False, True, False]) == pytest.approx(0.75)
    assert auc([0.3] * 5, [True, False, True, False, False]) == pytest.approx(0.5)  # a constant: chance
    assert auc([0.9, 0.1], [True, False]) == 1.0 and auc([0.9, 0.1], [False, True]) == 0.0
    assert auc([0.2, 0.4], [True, True]) is None and auc([], []) is None  # one class: undefined
    import random

    rng = random.Random(0)
    scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(60)]  # many ties
    labels = [rng.random() < 0.4 for _ in range(60)]
    pos, neg = [s for s, y in zip(scores, labels) if y], [s for s, y in zip(scores, labels) if not y]
    counted = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auc(scores, labels) == pytest.approx(counted)
    with pytest.raises(ValueError, match="labels"):
        auc([0.1], [True, False])


def test_value_diagnostics_by_hand():
    samples = [graded("a", True), graded("a", False), graded("b", True), graded("b", False)]
    out = value_diagnostics([0.5] * 4, [0.9, 0.2, 0.6, 0.7], samples)
    assert out["value_auc_s0"] == 0.5  # V(s_0) the same for every answer: no information
    assert out["value_auc_last"] == pytest.approx(0.75)  # 0.9 > 0.2, 0.9 > 0.7, 0.6 > 0.2, 0.6 < 0.7
    assert out["value_mse_last"] == pytest.approx((0.01 + 0.04 + 0.16 + 0.49) / 4)
    assert out["value_mse_s0"] == pytest.approx(0.25) and out["value_mse_constant"] == pytest.approx(0.25)
    assert out["value_answers"] == 4 and out["value_last_mean"] == pytest.approx(0.6)
    only_right = value_diagnostics([0.5, 0.4], [0.9, 0.8], [graded("a", True), graded("b", True)])
    assert "value_auc_last" not in only_right and only_right["value_mse_constant"] == 0.0
    table = format_table([("m", {**summarize(samples), **out}), ("n", summarize(samples))])
    header = table.splitlines()[0].split()  # beside accuracy
    assert (
        header[:7]
        == ["model", "accuracy", "accuracy_stderr", "pass@1", "value_auc_s0", "value_auc_last", "value_mse_last"]
        and header[7] == "value_mse_constant"
    )
    assert "0.750" in table.splitlines()[1]
    assert "value_auc" not in format_table([("n", summarize(samples))])
    with pytest.raises(ValueError, match="per answer"):
        value_diagnostics([0.5], [0.9, 0.2], samples[:2])


@pytest.mark.system
def test_eval_before_and_after_matches_hf_greedy(ray_cluster, tiny_llama, tmp_path):
    """eval.at_start / at_end: the end evaluation grades the final policy's greedy answers; an
    independent pass (HF greedy decoding of the saved final model, graded by the verifier)
    gives the same numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.config import load_config
    from launch.evaluate import test_prompts
    from launch.run import run
    from rewards.math_verify import MathVerifier

    cfg = load_config(
        "tiny-grpo",
        [
            f"model.path={tiny_llama}",
            "steps=3",
            "learner.lr=1e-2",
            "eval.at_start=true",
            "eval.at_end=true",
            "eval.every_steps=3",
            "eval.num_questions=6",
            "rollout.max_new_tokens=12",
            "logging.progress_bar=false",
        ],
    )
    run(cfg, str(tmp_path))  # every_steps=3 evaluates the last step: at_end does not repeat it
    before, after = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert (before["step"], before["policy_version"]) == (0, 0)
    assert (after["step"], after["policy_version"]) == (3, 3) and after["questions"] == 6

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    verifier = MathVerifier(timeout_s=5)
    lengths, correct, boxed = [], [], []
    for p in test_prompts(cfg):
        ids = tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
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
    assert [{k: r[k] for k in keys} for r in (base, final, base_again)] == [
        {k: r[k] for k in keys} for r in (before, after, before)
    ]
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


def test_eval_cli_passes_the_beam_temperature_and_the_value_folder(tiny_llama, monkeypatch, capsys):
    import launch.evaluate
    from launch.cli import main

    seen = []

    def evaluate(*args):
        seen.append(args)
        return 0

    monkeypatch.setattr(launch.evaluate, "main", evaluate)
    assert (
        main(["eval", tiny_llama, "--task", "add-1digit", "--beam", "2", "--beam-temperature", "0.6", "--value"]) == 0
    )
    models, cfg, task, ks, output, beams, value, baseline, reward_model = seen[-1]
    assert cfg.eval.beam_temperature == 0.6 and beams == (2,) and value == ""  # "": each model's own value/
    assert baseline is None and reward_model is None  # --task chat's
    assert main(["eval", tiny_llama, "--task", "add-1digit", "--value", tiny_llama]) == 0
    assert seen[-1][5:] == ((), tiny_llama, None, None) and seen[-1][1].eval.beam_temperature == 1.0
    assert main(["eval", tiny_llama, "--task", "add-1digit"]) == 0 and seen[-1][6] is None  # no value model
    assert main(["eval", tiny_llama, "--task", "add-1digit", "--beam", "2", "--beam-temperature", "0"]) != 0
    assert "beam_temperature" in capsys.readouterr().err and len(seen) == 3
