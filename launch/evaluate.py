"""Evaluation through vLLM: a task's held-out questions, graded by the reward routes.

``syncrl eval MODEL_DIR --task add-1digit`` evaluates a model folder; during training the
Driver evaluates the engines' policy with the same ``Evaluator`` (``eval`` config section).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from actors.reward import RewardGroup
from actors.rollout import RolloutGroup
from rollout.evaluation import format_table, summarize
from rollout.records import Prompt
from rollout.tasks import make_task

EVAL_SEED = 12345  # evaluations sample reproducibly (when not greedy)


def test_prompts(cfg, task: str | None = None) -> list[Prompt]:
    """The held-out questions of ``eval.task`` (default ``data.task``), at most eval.num_questions:
    the test split of the same ``make_task`` call that gives training its questions."""
    d, e = cfg.data, cfg.eval
    _, test = make_task(task or e.task or d.task, d.num_train, d.num_test, d.seed, d.one_shot, d.system_prompt)
    if not test:
        raise ValueError(f"eval: task {task or e.task or d.task!r} has no test questions (data.num_test)")
    return test[: e.num_questions]


class Evaluator:
    def __init__(self, rollouts: RolloutGroup, rewards: RewardGroup, prompts: list[Prompt], cfg: Any, ks=(1,)):
        self.rollouts, self.rewards, self.prompts, self.cfg = rollouts, rewards, prompts, cfg
        self.ks = tuple(k for k in ks if k <= cfg.samples_per_prompt) or (1,)

    def __call__(self) -> dict[str, float]:
        e = self.cfg
        sampling = dict(temperature=e.temperature)
        if e.max_new_tokens:
            sampling["max_tokens"] = e.max_new_tokens
        started = time.perf_counter()
        samples = self.rollouts.generate(self.prompts, n=e.samples_per_prompt, seed=EVAL_SEED, **sampling)
        result = summarize(self.rewards.score(samples), self.ks)
        result["policy_version"] = samples[0].policy_version
        result["time_s"] = time.perf_counter() - started
        return result


def evaluate_model(model_dir: str, cfg: Any, task: str | None, ks=(1,)) -> dict[str, float]:
    """Start engines on ``model_dir`` (on the Ray cluster found or a local one), evaluate, stop."""
    rollouts, rewards = RolloutGroup(model_dir, cfg.rollout), RewardGroup(cfg.reward)
    try:
        return Evaluator(rollouts, rewards, test_prompts(cfg, task), cfg.eval, ks)()
    finally:
        rollouts.shutdown()
        rewards.shutdown()


def main(model_dirs: list[str], cfg: Any, task: str | None, ks: tuple[int, ...], output: str | None) -> int:
    import ray

    from launch.models import resolve_model
    from launch.train import connect_ray

    folders = [resolve_model(d) for d in model_dirs]
    started = connect_ray(cfg)
    try:
        results = [(d, evaluate_model(f, cfg, task, ks)) for d, f in zip(model_dirs, folders)]
    finally:
        if started:
            ray.shutdown()
    print(format_table(results))
    if output:
        Path(output).write_text(json.dumps({d: r for d, r in results}, indent=1))
    return 0
