"""Evaluation metrics of scored samples on a verifiable task (pure functions, no engines).

accuracy: mean over questions of the share of a question's samples graded correct, with its
standard error over questions; pass@k by the unbiased estimator of Chen et al. (2021); mean
response length; the share of answers written inside \\boxed{}; the share cut at the token limit.
Per reward-route source (``Sample.source``) of the questions: accuracy, mean reward and counts.
"""

from __future__ import annotations

import math
from collections import defaultdict

from rollout.records import Sample


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), c correct:

    pass@k = 1 - C(n - c, k) / C(n, k)
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per question, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def is_correct(sample: Sample) -> bool:
    return bool(sample.reward_info.get("correct", (sample.reward or 0.0) > 0.5))


def summarize(samples: list[Sample], ks: tuple[int, ...] = (1,)) -> dict[str, float]:
    by_question: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_question[s.prompt_id].append(s)
    if not by_question:
        raise ValueError("no samples to evaluate")
    per_question = [sum(map(is_correct, group)) / len(group) for group in by_question.values()]
    q = len(per_question)
    accuracy = sum(per_question) / q
    variance = sum((a - accuracy) ** 2 for a in per_question) / (q - 1) if q > 1 else 0.0
    n = min(len(g) for g in by_question.values())
    out = {
        "accuracy": accuracy,
        "accuracy_stderr": math.sqrt(variance / q),
        "questions": q,
        "samples_per_question": n,
        "response_len_mean": sum(s.response_len for s in samples) / len(samples),
        "boxed_rate": sum(s.reward_info.get("source") == "boxed" for s in samples) / len(samples),
        # correct whatever the format: differs from accuracy when the reward requires \boxed{}
        "correct_any_format": sum(is_correct(s) or bool(s.reward_info.get("unboxed_correct")) for s in samples) / len(samples),
        "truncated_rate": sum(s.finish_reason == "length" for s in samples) / len(samples),
    }
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(len(g), sum(map(is_correct, g)), k) for g in by_question.values()) / q
    return {**out, **per_source(list(by_question.values()))}


def per_source(groups: list[list[Sample]]) -> dict[str, float]:
    """For each source of the questions (``groups``: one list of samples per question; a question's
    source is its first sample's): ``accuracy/<source>`` (as ``accuracy``, over that source's
    questions), ``reward_mean/<source>`` (over its samples; an unscored sample counts 0),
    ``questions/<source>`` and ``samples/<source>``. Sources in sorted order."""
    by_source: dict[str, list[list[Sample]]] = defaultdict(list)
    for group in groups:
        by_source[group[0].source].append(group)
    out: dict[str, float] = {}
    for source, questions in sorted(by_source.items()):
        samples = [s for g in questions for s in g]
        out[f"accuracy/{source}"] = sum(sum(map(is_correct, g)) / len(g) for g in questions) / len(questions)
        out[f"reward_mean/{source}"] = sum(s.reward or 0.0 for s in samples) / len(samples)
        out[f"questions/{source}"] = len(questions)
        out[f"samples/{source}"] = len(samples)
    return out


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """A plain-text table: one row per evaluated model/step, the main metrics as columns."""
    keys = ["accuracy", "accuracy_stderr", *sorted({k for _, r in rows for k in r if k.startswith("pass@")}),
            "correct_any_format", "response_len_mean", "boxed_rate", "truncated_rate", "tokens_per_question", "questions"]  # fmt: skip
    header = ["model", *keys]
    body = [[name, *(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys)] for name, r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *body])
