"""Evaluation through vLLM: a task's held-out questions, graded by the reward routes.

``syncrl eval MODEL_DIR... --task add-1digit`` evaluates model folders; during training the
Driver evaluates the engines' policy with the same ``Evaluator`` (``eval`` config section).
Folders of one architecture and tokenizer (a base model and the runs trained from it) share one
engine start: each next folder's weights are loaded into the running engines, as a push does.
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


def evaluate_models(model_dirs: list[str], cfg: Any, task: str | None, ks=(1,)) -> list[dict[str, float]]:
    """Evaluate each folder (on the Ray cluster found or a local one); engines start once per run
    of interchangeable folders and stop at the end."""
    prompts = test_prompts(cfg, task)
    rewards, rollouts, loaded = RewardGroup(cfg.reward), None, None
    results = []
    try:
        for version, folder in enumerate(model_dirs):
            if rollouts is None or not interchangeable(loaded, folder):
                if rollouts is not None:
                    rollouts.shutdown()
                rollouts = RolloutGroup(folder, cfg.rollout)
            elif folder != loaded:
                rollouts.update_weights(folder_weights(folder), version)
            loaded = folder
            results.append(Evaluator(rollouts, rewards, prompts, cfg.eval, ks)())
    finally:
        if rollouts is not None:
            rollouts.shutdown()
        rewards.shutdown()
    return results


def interchangeable(a: str, b: str) -> bool:
    """Whether folder ``b`` can be evaluated in engines started on ``a``: the same model config
    (but its name) and the same tokenizer (vocabulary, special tokens, chat template)."""
    from transformers import AutoTokenizer

    def identity(folder: str):
        config = json.loads((Path(folder) / "config.json").read_text())
        for key in ("_name_or_path", "transformers_version"):
            config.pop(key, None)
        tok = AutoTokenizer.from_pretrained(folder)
        return config, tok.get_vocab(), tok.all_special_tokens, tok.chat_template

    return identity(a) == identity(b)


def folder_weights(folder: str) -> list[tuple[str, Any]]:
    """The tensors of a Hugging Face folder's safetensors files, by name."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    return [item for f in files for item in load_file(f).items()]


def main(model_dirs: list[str], cfg: Any, task: str | None, ks: tuple[int, ...], output: str | None) -> int:
    import ray

    from launch.models import resolve_model
    from launch.train import connect_ray

    folders = [resolve_model(d) for d in model_dirs]
    started = connect_ray(cfg)
    try:
        results = list(zip(model_dirs, evaluate_models(folders, cfg, task, ks)))
    finally:
        if started:
            ray.shutdown()
    print(format_table(results))
    if output:
        Path(output).write_text(json.dumps({d: r for d, r in results}, indent=1))
    return 0
