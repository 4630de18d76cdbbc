"""Making a reward model for the ``chat`` task, and checking it against the gold judge.

``syncrl chat-pairs MODEL --out DIR``: the model's own answers (``--samples`` per prompt, sampled
by the rollout engines) to the chat task's reward-model prompts (``rollout.chat``'s ``rm`` split:
neither the policy's training prompts nor the evaluation's), paired two by two within a prompt,
each pair labelled by a simulated labeller (``rewards.preferences``: a Bradley-Terry draw from the
judge's scores at ``--label-temperature``, with an optional length bias). It writes
``DIR/pairs.jsonl`` (training pairs, the layout ``algorithm.name: reward_model`` reads),
``DIR/heldout.jsonl`` (pairs of other prompts, for ``syncrl rm-check``) and ``DIR/summary.json``,
and prints the labels' agreement with the judge. The answers are kept in ``DIR/answers.jsonl`` as
they come: the same command, killed half way, resumes after the answers it has. Then
``syncrl train smollm2-rm --set data.path=DIR/pairs.jsonl`` trains the reward model.

``syncrl rm-check RM_DIR --pairs DIR/heldout.jsonl [--model BASE --best-of 16]``: the reward
model's pair accuracy against the judge (and against the noisy labels) on held-out pairs, and with
``--model`` its best-of-N win rate under the judge: on the chat test prompts, the answer of N
samples the reward model ranks first against the base model's greedy answer, beside a random
sample's and the judge's own pick's (the ceiling).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rewards.judge import judge, words
from rewards.preferences import draw_preference, expected_agreement, temperature_for_agreement
from rollout.chat import chat_prompts
from rollout.errors import ConfigError
from rollout.records import Sample
from rollout.settings import SyncRLConfig

PAIR_SEED = 4321  # the engines' sampling seed for the answers (prompt i: PAIR_SEED + i)


def label_pairs(
    samples: list[Sample], temperature: float | str, length_bias: float, rng: random.Random
) -> tuple[list[dict], dict[str, float]]:
    """Pairs (samples 0 and 1, 2 and 3, ... of each prompt) labelled by the simulated labeller,
    as records of a pairs file: prompt (the chat), chosen, rejected, source, the judge's scores
    and word counts, whether the label agrees with the judge, and the request fields. Pairs of
    two identical answers are left out. ``temperature`` "auto": the one whose expected agreement
    with the judge is 75% on these pairs. Returns the records and a summary."""
    by_prompt: dict[str, list[Sample]] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt_id, []).append(s)
    raw = []
    identical = 0
    for group in by_prompt.values():
        for a, b in zip(group[0::2], group[1::2]):
            if a.response_text == b.response_text:
                identical += 1
                continue
            raw.append((a, b, judge(a.columns, a.response_text).score, judge(b.columns, b.response_text).score))
    if not raw:
        raise ValueError("no pair of different answers to label")
    differences = [ja - jb for _, _, ja, jb in raw]
    if temperature == "auto":
        temperature = temperature_for_agreement(differences, 0.75)
    records, agree = [], []
    for a, b, ja, jb in raw:
        na, nb = len(words(a.response_text)), len(words(b.response_text))
        a_wins = draw_preference(rng, ja, jb, float(temperature), length_bias, na, nb)
        (c, jc, nc), (r, jr, nr) = ((a, ja, na), (b, jb, nb)) if a_wins else ((b, jb, nb), (a, ja, na))
        if jc != jr:
            agree.append(jc > jr)
        records.append(
            {
                "id": c.prompt_id,
                "prompt": c.messages,
                "chosen": c.response_text,
                "rejected": r.response_text,
                "source": c.source,
                "judge_chosen": jc,
                "judge_rejected": jr,
                "words_chosen": nc,
                "words_rejected": nr,
                "judge_agrees": jc > jr if jc != jr else None,
                **{k: v for k, v in c.columns.items() if v is not None},
            }
        )
    summary = {
        "pairs": len(records),
        "identical_pairs_left_out": identical,
        "judge_ties": len(records) - len(agree),
        "label_temperature": float(temperature),
        "length_bias": length_bias,
        "expected_agreement": expected_agreement(differences, float(temperature)) if any(differences) else 0.5,
        "agreement": sum(agree) / len(agree) if agree else float("nan"),
        "mean_abs_judge_difference": sum(map(abs, differences)) / len(differences),
        "chosen_longer": sum(r["words_chosen"] > r["words_rejected"] for r in records) / len(records),
    }
    return records, summary


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def check_samples(samples: int) -> None:
    """Answers per prompt must be even (pairs are made two by two): a ConfigError otherwise."""
    if samples < 2 or samples % 2:
        raise ConfigError(f"--samples: an even number of answers per prompt (pairs are made two by two), got {samples}")


def make_pairs(
    model: str,
    cfg: SyncRLConfig,
    out_dir: str,
    num_prompts: int,
    heldout_prompts: int,
    samples: int,
    label_temperature: float | str,
    length_bias: float,
) -> dict[str, dict]:
    """Generate, label and write the pairs (see the module's docstring); returns the summaries
    of the training and held-out pairs."""
    import ray  # noqa: F401  (the engines run as Ray actors)

    from actors.faults import Supervisor
    from actors.placement import check_cluster
    from actors.rollout import RolloutGroup
    from launch.config import engine_settings
    from launch.evaluate import generate_in_chunks

    check_samples(samples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = chat_prompts(num_prompts + heldout_prompts, "rm", cfg.data.seed, cfg.data.system_prompt)
    check_cluster(cfg, learner=False)
    rollouts = RolloutGroup(model, engine_settings(cfg), Supervisor(cfg.fault_tolerance))
    try:
        answers = generate_in_chunks(
            rollouts,
            prompts,
            samples,
            PAIR_SEED,
            store=out / "answers.jsonl",
            key={"model": model},
            temperature=cfg.rollout.temperature,
            max_tokens=cfg.rollout.max_new_tokens,
        )
    finally:
        rollouts.shutdown()
    train_ids = {p.id for p in prompts[:num_prompts]}
    rng = random.Random(f"labels-{cfg.data.seed}")
    records, summary = label_pairs(
        [s for s in answers if s.prompt_id in train_ids], label_temperature, length_bias, rng
    )
    summaries = {"train": summary}
    write_jsonl(out / "pairs.jsonl", records)
    if heldout_prompts:
        held = [s for s in answers if s.prompt_id not in train_ids]
        held_records, summaries["heldout"] = label_pairs(held, summary["label_temperature"], length_bias, rng)
        write_jsonl(out / "heldout.jsonl", held_records)
    lengths = [s.response_len for s in answers]
    summaries["answers"] = {
        "model": model,
        "answers": len(answers),
        "tokens_mean": sum(lengths) / len(lengths),
        "truncated_rate": sum(s.finish_reason == "length" for s in answers) / len(answers),
    }
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    return summaries


def rm_pair_accuracy(records: list[dict], chosen_scores: list[float], rejected_scores: list[float]) -> dict[str, float]:
    """A reward model's accuracy on labelled pairs: against the judge (the share of pairs with
    different judge scores where it ranks the judge's better answer higher; a tie counts one half)
    and against the labels (chosen over rejected)."""
    vs_judge, vs_labels = [], []
    for r, c, j in zip(records, chosen_scores, rejected_scores):
        vs_labels.append(1.0 if c > j else 0.5 if c == j else 0.0)
        if r["judge_chosen"] != r["judge_rejected"]:
            rm_order = (c > j) - (c < j)
            judge_order = 1 if r["judge_chosen"] > r["judge_rejected"] else -1
            vs_judge.append(0.5 if rm_order == 0 else float(rm_order == judge_order))
    return {
        "accuracy_vs_judge": sum(vs_judge) / len(vs_judge) if vs_judge else float("nan"),
        "accuracy_vs_labels": sum(vs_labels) / len(vs_labels),
        "label_agreement_with_judge": (
            sum(bool(r["judge_agrees"]) for r in records if r["judge_agrees"] is not None) / len(vs_judge)
            if vs_judge
            else float("nan")
        ),
        "pairs": len(records),
        "pairs_judge_differs": len(vs_judge),
    }


def check_reward_model(
    rm_dir: str, pairs_path: str, cfg: SyncRLConfig, model: str | None, best_of: int
) -> dict[str, Any]:
    """``syncrl rm-check``: pair accuracy on ``pairs_path``, and with ``model`` best-of-N win rates."""
    from rewards.reward_model import RewardModelScorer
    from rollout.data import read_data

    data = read_data(pairs_path)
    if data.kind != "pairs" or not data.records or "judge_chosen" not in data.records[0].columns:
        raise ConfigError(f"--pairs: {pairs_path} is not a pairs file written by syncrl chat-pairs (no judge_chosen)")
    scorer = RewardModelScorer(rm_dir)

    def sample(messages, text):
        return Sample("p", [], [], [], "stop", 0, prompt_messages=messages, response_text=text)

    chosen = scorer.score([sample(r.messages, r.responses[0][0]) for r in data.records])
    rejected = scorer.score([sample(r.messages, r.responses[1][0]) for r in data.records])
    records = [{**r.columns} for r in data.records]
    result: dict[str, Any] = {
        "pairs": rm_pair_accuracy(records, [x.reward for x in chosen], [x.reward for x in rejected])
    }
    if model:
        result["best_of"] = best_of_n(model, cfg, scorer, best_of)
    return result


def best_of_n(model: str, cfg: SyncRLConfig, scorer: Any, n: int) -> dict[str, Any]:
    """On the chat test prompts (``eval.num_questions``): the base model's greedy answers, and n
    samples each (``rollout.temperature``); win rates under the judge against the greedy answer
    of the sample the reward model ranks first, of the first sample (a random pick), and of the
    judge's own pick."""
    from actors.faults import Supervisor
    from actors.placement import check_cluster
    from actors.rollout import RolloutGroup
    from launch.config import engine_settings
    from launch.evaluate import EVAL_SEED, generate_in_chunks, judge_samples
    from rollout.data import test_prompts
    from rollout.evaluation import mean_stderr, win_rate

    prompts = test_prompts(cfg, "chat")
    check_cluster(cfg, learner=False)
    max_tokens = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    rollouts = RolloutGroup(model, engine_settings(cfg), Supervisor(cfg.fault_tolerance))
    try:
        greedy = generate_in_chunks(rollouts, prompts, 1, EVAL_SEED, temperature=0.0, max_tokens=max_tokens)
        sampled = generate_in_chunks(
            rollouts, prompts, n, EVAL_SEED, temperature=cfg.rollout.temperature, max_tokens=max_tokens
        )
    finally:
        rollouts.shutdown()
    base = judge_samples(greedy)
    judged, rm = judge_samples(sampled), [r.reward for r in scorer.score(sampled)]
    picks: dict[str, list[float]] = {"rm_pick": [], "random_pick": [], "judge_pick": []}
    for q in range(len(prompts)):
        rows = range(q * n, (q + 1) * n)
        picks["rm_pick"].append(judged[max(rows, key=lambda i: rm[i])])
        picks["random_pick"].append(judged[rows[0]])
        picks["judge_pick"].append(max(judged[i] for i in rows))
    out: dict[str, Any] = {"n": n, "questions": len(prompts)}
    out["greedy_judge_mean"], out["greedy_judge_stderr"] = mean_stderr(base)
    for name, scores in picks.items():
        out[f"{name}_win_rate"], out[f"{name}_win_rate_stderr"] = win_rate(scores, base)
        out[f"{name}_judge_mean"], _ = mean_stderr(scores)
    return out


def format_check(result: dict[str, Any]) -> str:
    """``rm-check``'s printout."""
    p = result["pairs"]
    lines = [
        f"held-out pairs: {p['pairs']} ({p['pairs_judge_differs']} with different judge scores)",
        f"  reward model accuracy vs the judge:  {p['accuracy_vs_judge']:.3f}",
        f"  reward model accuracy vs the labels: {p['accuracy_vs_labels']:.3f}",
        f"  labels' agreement with the judge:    {p['label_agreement_with_judge']:.3f}",
    ]
    if "best_of" in result:
        b = result["best_of"]
        lines.append(
            f"best-of-{b['n']} on {b['questions']} chat test prompts, judged against the greedy answer "
            f"(greedy judge mean {b['greedy_judge_mean']:.3f} +- {b['greedy_judge_stderr']:.3f}):"
        )
        for name in ("rm_pick", "random_pick", "judge_pick"):
            lines.append(
                f"  {name:12s} win rate {b[f'{name}_win_rate']:.3f} +- {b[f'{name}_win_rate_stderr']:.3f}"
                f"   judge mean {b[f'{name}_judge_mean']:.3f}"
            )
    return "\n".join(lines)
