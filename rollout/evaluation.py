"""Evaluation metrics of scored samples on a verifiable task (pure functions, no engines).

accuracy: mean over questions of the share of a question's samples graded correct, with its
standard error over questions; pass@k by the unbiased estimator of Chen et al. (2021); mean
response length; the share of answers written inside \\boxed{}; the share cut at the token limit.
Per reward-route source (``Sample.source``) of the questions: accuracy, mean reward and counts.
A value model's diagnostics on graded answers: the AUC of V(s_0) and of V at the last state
against correctness, and V's mean squared error beside a constant predictor's. Judged
evaluation of open-ended answers against a baseline's (``win_rate``, ``lc_win_rate``,
``mean_stderr``, ``judged_summary``).
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
        "correct_any_format": sum(is_correct(s) or bool(s.reward_info.get("unboxed_correct")) for s in samples)
        / len(samples),
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


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for the binary ``labels``: the probability that a
    random positive scores above a random negative, a tie counting one half. By ranks
    (Mann-Whitney): with ranks 1..n of the scores in ascending order, tied scores sharing the mean
    of their ranks, and n_1 positives, n_0 negatives,

        AUC = (sum of the positives' ranks - n_1 (n_1 + 1) / 2) / (n_1 n_0)

    None when either class is empty (undefined)."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    n1 = sum(map(bool, labels))
    n0 = len(labels) - n1
    if not n1 or not n0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # the mean of ranks i+1 .. j+1
        i = j + 1
    positives = sum(r for r, y in zip(ranks, labels) if y)
    return (positives - n1 * (n1 + 1) / 2) / (n1 * n0)


def value_diagnostics(v_s0: list[float], v_last: list[float], samples: list[Sample]) -> dict[str, float]:
    """How well a value model's V predicts the outcome of graded answers (``samples``, with V of
    each one's prompt alone, ``v_s0``, and of its whole response, ``v_last``):

    - ``value_auc_s0``, ``value_auc_last``: ``auc`` of V against correctness (left out when all
      answers are correct or all wrong);
    - ``value_mse_s0``, ``value_mse_last``: mean (V - R)^2 over the answers, R the reward;
    - ``value_mse_constant``: the same for the best constant, the answers' own mean reward (their
      variance): a V that knows nothing but the mean reward scores this, at best;
    - ``value_s0_mean``, ``value_last_mean``, ``value_answers``."""
    if not (len(v_s0) == len(v_last) == len(samples)) or not samples:
        raise ValueError(
            f"value diagnostics need one V(s_0) and one V(last) per answer: {len(v_s0)}, {len(v_last)}, "
            f"{len(samples)} answers"
        )
    rewards = [s.reward or 0.0 for s in samples]
    correct = [is_correct(s) for s in samples]
    n, mean = len(samples), sum(rewards) / len(samples)
    mse = lambda values: sum((v - r) ** 2 for v, r in zip(values, rewards)) / n  # noqa: E731
    out = {
        "value_answers": n,
        "value_s0_mean": sum(v_s0) / n,
        "value_last_mean": sum(v_last) / n,
        "value_mse_s0": mse(v_s0),
        "value_mse_last": mse(v_last),
        "value_mse_constant": mse([mean] * n),
    }
    for key, values in (("value_auc_s0", v_s0), ("value_auc_last", v_last)):
        if (area := auc(values, correct)) is not None:
            out[key] = area
    return out


VALUE_COLUMNS = ("value_auc_s0", "value_auc_last", "value_mse_last", "value_mse_constant")


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """A plain-text table: one row per evaluated model/step, the main metrics as columns."""
    keys = [
        "accuracy",
        "accuracy_stderr",
        *sorted({k for _, r in rows for k in r if k.startswith("pass@")}),
        *(k for k in VALUE_COLUMNS if any(k in r for _, r in rows)),  # a value model's diagnostics, when given
        "correct_any_format",
        "response_len_mean",
        "boxed_rate",
        "truncated_rate",
        "tokens_per_question",
        "questions",
    ]
    header = ["model", *keys]
    body = [
        [name, *(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys)] for name, r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *body])


# judged evaluation (open-ended answers against a baseline's answers to the same prompts)


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample std / sqrt(n); 0 for one value)."""
    n = len(values)
    if not n:
        raise ValueError("no values")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def preferences(model_scores: list[float], base_scores: list[float]) -> list[float]:
    """1 where the model's answer scores above the baseline's to the same prompt, 0 below, 0.5 on a tie."""
    if len(model_scores) != len(base_scores) or not model_scores:
        raise ValueError(f"win rates need one baseline score per answer: {len(model_scores)} vs {len(base_scores)}")
    return [1.0 if m > b else 0.0 if m < b else 0.5 for m, b in zip(model_scores, base_scores)]


def win_rate(model_scores: list[float], base_scores: list[float]) -> tuple[float, float]:
    """The share of prompts where the model's answer beats the baseline's (a tie counts one half),
    and its standard error."""
    return mean_stderr(preferences(model_scores, base_scores))


def logistic_fit(x: list[float], y: list[float], ridge: float = 1e-4, iterations: int = 100):
    """Maximum-likelihood (with a small ridge penalty ``ridge`` * |w|^2 / 2, which keeps a fit
    finite when the data separate) of P(y = 1) = sigmoid(a + b x) by Newton's method (IRLS);
    ``y`` may be fractional (a tie is 0.5). Returns (a, b) and their covariance (the inverse of
    the penalized Fisher information)."""
    import numpy as np

    X = np.column_stack([np.ones(len(x)), np.asarray(x, dtype=float)])
    Y = np.asarray(y, dtype=float)
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        gradient = X.T @ (Y - p) - ridge * w
        hessian = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w = w + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-(X @ w)))
    covariance = np.linalg.inv((X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2))
    return (float(w[0]), float(w[1])), covariance


def lc_win_rate(
    model_scores: list[float],
    base_scores: list[float],
    model_lengths: list[float],
    base_lengths: list[float],
    ridge: float = 1e-4,
) -> tuple[float, float]:
    """The length-controlled win rate (AlpacaEval 2.0's idea) and its standard error. A logistic
    model of the preference (``preferences``: 1, 0, or 0.5 on a tie) with an intercept and a
    length term,

        P(model preferred) = sigmoid(a + b * tanh((n_model - n_base) / sd)),

    sd the standard deviation of the length differences (1 when they are all equal), is fitted by
    ``logistic_fit``; the LC win rate is the model read at no length difference, sigmoid(a), its
    standard error sigmoid'(a) * SE(a) (the delta method)."""
    if not (len(model_lengths) == len(base_lengths) == len(model_scores)):
        raise ValueError("LC win rate needs one length of each answer per prompt")
    y = preferences(model_scores, base_scores)
    diffs = [m - b for m, b in zip(model_lengths, base_lengths)]
    _, sd = mean_stderr(diffs)
    sd = sd * math.sqrt(len(diffs)) or 1.0
    (a, _), covariance = logistic_fit([math.tanh(d / sd) for d in diffs], y, ridge)
    p = 1.0 / (1.0 + math.exp(-a))
    return p, p * (1 - p) * math.sqrt(covariance[0, 0])


def judged_summary(
    model_scores: list[float],
    base_scores: list[float],
    model_lengths: list[int],
    base_lengths: list[int],
    truncated: list[bool],
    rm_scores: list[float] | None = None,
) -> dict[str, float]:
    """A model's judged evaluation against a baseline's answers to the same prompts: win rate and
    LC win rate under the judge, mean judge score, the reward model's mean score (when given),
    response length and truncation rate, each with its standard error (``_stderr``)."""
    out: dict[str, float] = {}
    out["win_rate"], out["win_rate_stderr"] = win_rate(model_scores, base_scores)
    out["lc_win_rate"], out["lc_win_rate_stderr"] = lc_win_rate(model_scores, base_scores, model_lengths, base_lengths)
    out["judge_mean"], out["judge_mean_stderr"] = mean_stderr(model_scores)
    if rm_scores is not None:
        out["rm_mean"], out["rm_mean_stderr"] = mean_stderr(rm_scores)
    out["response_len_mean"], out["response_len_stderr"] = mean_stderr([float(n) for n in model_lengths])
    out["truncated_rate"], out["truncated_rate_stderr"] = mean_stderr([float(t) for t in truncated])
    out["questions"] = len(model_scores)
    return out


JUDGED_COLUMNS = (
    "win_rate",
    "lc_win_rate",
    "judge_mean",
    "rm_mean",
    "response_len_mean",
    "truncated_rate",
)


def format_judged_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """A plain-text table of judged evaluations: each metric as value +- standard error."""
    keys = [k for k in JUDGED_COLUMNS if any(k in r for _, r in rows)]
    header = ["model", *keys, "questions"]

    def cell(r: dict, k: str) -> str:
        if k not in r:
            return ""
        err = r.get(k.removesuffix("_mean") + "_stderr" if k.endswith("_len_mean") else f"{k}_stderr")
        return f"{r[k]:.3f} +- {err:.3f}" if err is not None else f"{r[k]:.3f}"

    body = [[name, *(cell(r, k) for k in keys), str(r.get("questions", ""))] for name, r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [header, *body])
