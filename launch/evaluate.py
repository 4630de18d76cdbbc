"""Evaluation through vLLM: a task's held-out questions, graded by the reward routes.

``syncrl eval MODEL_DIR... --task add-1digit`` evaluates model folders; during training the
Driver evaluates the engines' policy with the same ``Evaluator`` (``eval`` config section).
Folders of one architecture and tokenizer (a base model and the runs trained from it) share one
engine start: each next folder's weights are loaded into the running engines, as a push does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray

from actors.faults import Supervisor
from actors.placement import check_cluster
from actors.reward import RewardGroup
from actors.rollout import RolloutGroup
from actors.value import ValueGroup
from launch.config import ConfigError, EvalConfig, SyncRLConfig, engine_settings
from rewards.judge import judge
from rollout.beam_search import beam_search
from rollout.data import test_prompts
from rollout.evaluation import format_judged_table, format_table, judged_summary, summarize, value_diagnostics
from rollout.records import Prompt, Sample
from rollout.tasks import CHAT

EVAL_SEED = 12345  # evaluations sample reproducibly (when not greedy)


class Evaluator:
    """Sampled (or greedy) answers to the held-out prompts, graded, and with ``score`` (V of
    states: a ValueGroup's or the learner's) the value model's diagnostics on those answers;
    ``beam(B, score)`` the value-guided beam search's answers instead."""

    def __init__(
        self,
        rollouts: RolloutGroup,
        rewards: RewardGroup,
        prompts: list[Prompt],
        cfg: EvalConfig,
        rollout_max_new_tokens: int,
        ks=(1,),
    ):
        self.rollouts, self.rewards, self.prompts, self.cfg = rollouts, rewards, prompts, cfg
        self.ks = tuple(k for k in ks if k <= cfg.samples_per_prompt) or (1,)
        self.max_new_tokens = cfg.max_new_tokens or rollout_max_new_tokens

    def __call__(self, score=None) -> dict[str, float]:
        e = self.cfg
        sampling = dict(temperature=e.temperature, max_tokens=self.max_new_tokens)
        started = time.perf_counter()
        samples = self.rollouts.generate(self.prompts, n=e.samples_per_prompt, seed=EVAL_SEED, **sampling)
        return self._result(samples, self.ks, started, score=score)

    def beam(self, beam: int, score) -> dict[str, float]:
        e, worker = self.cfg, self.rollouts.workers[0]
        started = time.perf_counter()
        prompt_ids = ray.get([worker.prompt_ids.remote(p) for p in self.prompts])

        def expand(requests, n, seed):
            return self.rollouts.expand_steps(requests, n, seed, e.step_delimiter, e.beam_temperature)

        found = beam_search(
            prompt_ids, expand, score, beam, e.beam_candidates, e.beam_max_steps, self.max_new_tokens, EVAL_SEED
        )
        texts = ray.get(worker.decode.remote([r.response_ids for r in found]))
        version = ray.get(worker.call.remote(lambda engine: engine.policy_version))
        samples = [
            Sample(
                prompt_id=p.id,
                prompt_ids=ids,
                response_ids=r.response_ids,
                logprobs=[],
                finish_reason=r.finish_reason,
                policy_version=version,
                response_text=text,
                answer=p.answer,
                source=p.source,
            )
            for p, ids, r, text in zip(self.prompts, prompt_ids, found, texts)
        ]
        tokens = sum(r.tokens_generated for r in found)  # every sampled token, kept or not
        result = self._result(samples, (1,), started, tokens)
        return {**result, "beam": beam, "finished_answers_mean": sum(r.finished_answers for r in found) / len(found)}

    def _result(
        self, samples: list[Sample], ks, started: float, tokens: int | None = None, score=None
    ) -> dict[str, float]:
        """Graded summary; ``tokens``: the tokens generated (default: those of the samples); with
        ``score``, the value model's diagnostics on the graded answers (``value_diagnostics``)."""
        samples = self.rewards.score(samples)
        result = summarize(samples, ks)
        if score is not None:
            result.update(value_result(samples, score))
        generated = sum(s.response_len for s in samples) if tokens is None else tokens
        result["tokens_per_question"] = generated / len(self.prompts)
        result["policy_version"] = samples[0].policy_version
        result["time_s"] = time.perf_counter() - started
        return result


def answer_state(sample: Sample) -> tuple[list[int], list[int]]:
    """The last state of an answer, where its value is read: the prompt and the response without
    its end-of-sequence token (an answer that stopped ends with it: vLLM keeps it, and training
    never reads V there); an answer cut at the token limit whole."""
    cut = sample.finish_reason == "stop" and sample.response_ids
    return list(sample.prompt_ids), list(sample.response_ids[:-1] if cut else sample.response_ids)


def value_result(samples: list[Sample], score) -> dict[str, float]:
    """``value_diagnostics`` of graded answers: V(s_0) of each prompt (scored once) and V at each
    answer's last state (``answer_state``), in one ``score`` call."""
    prompts = list(dict.fromkeys(tuple(s.prompt_ids) for s in samples))
    values = score([(list(p), []) for p in prompts] + [answer_state(s) for s in samples])
    v_s0 = dict(zip(prompts, values[: len(prompts)]))
    return value_diagnostics([v_s0[tuple(s.prompt_ids)] for s in samples], values[len(prompts) :], samples)


def model_engines(model_dirs: list[str], cfg: SyncRLConfig, supervisor: Supervisor):
    """For each folder in turn, (its index, the folder, rollout engines holding its weights):
    engines start once per run of interchangeable folders (each next one's weights are loaded into
    the running engines, as a push does) and stop when the iteration ends."""
    rollouts, loaded, base = None, None, None
    try:
        for version, folder in enumerate(model_dirs):
            if rollouts is None or not interchangeable(loaded, folder, cfg.model.trust_remote_code):
                if rollouts is not None:
                    rollouts.shutdown()
                rollouts, base = RolloutGroup(folder, engine_settings(cfg), supervisor), folder
                # a replacement engine starts on `base` and loads the folder being evaluated
                rollouts.held = lambda: 0 if loaded == base else model_dirs.index(loaded)
                rollouts.weights_of = lambda v: ray.put(folder_weights(model_dirs[v]))
            elif folder != loaded:
                rollouts.update_weights(folder_weights(folder), version)
            loaded = folder
            yield version, folder, rollouts
    finally:
        if rollouts is not None:
            rollouts.shutdown()


def evaluate_models(
    model_dirs: list[str],
    cfg: SyncRLConfig,
    task: str | None,
    ks=(1,),
    beams: tuple[int, ...] = (),
    value_dirs: list[str] | None = None,
) -> list[dict[str, float]]:
    """Evaluate each folder (on the Ray cluster found or a local one); engines start once per run
    of interchangeable folders and stop at the end. With ``value_dirs`` (one value folder per
    model), each folder's answers also get its value model's diagnostics (AUCs, MSE); with
    ``beams``, each folder is also searched with value-guided beam search of each beam size,
    ranked by its value folder; those results follow the folder's own, in the order of ``beams``."""
    if beams and not value_dirs:
        raise ValueError("beam search needs a value folder per model (value_dirs)")
    prompts = test_prompts(cfg, task)
    check_cluster(cfg, learner=False, value=bool(value_dirs))  # engines, reward and value workers fit, before any start
    supervisor = Supervisor(cfg.fault_tolerance)  # a dead or hung worker is replaced, as in training
    rewards = RewardGroup(cfg.reward, supervisor)
    results = []
    try:
        for version, _, rollouts in model_engines(model_dirs, cfg, supervisor):
            evaluator = Evaluator(rollouts, rewards, prompts, cfg.eval, cfg.rollout.max_new_tokens, ks)
            if not value_dirs:
                results.append(evaluator())
                continue
            values = ValueGroup(value_dirs[version], supervisor, model=cfg.model)
            try:
                results.append(evaluator(values.score))
                results += [evaluator.beam(b, values.score) for b in beams]
            finally:
                values.shutdown()
    finally:
        rewards.shutdown()
    return results


CHUNK_TOKENS = 16384  # generate_in_chunks: about this many new tokens per call


def generate_in_chunks(
    rollouts: RolloutGroup,
    prompts: list[Prompt],
    n: int,
    seed: int,
    store: Path | None = None,
    key: dict[str, Any] | None = None,
    **sampling: Any,
) -> list[Sample]:
    """``rollouts.generate`` in calls of a few prompts (about ``CHUNK_TOKENS`` new tokens each at
    ``max_tokens``), so that no call runs into the hung-worker timeout on a slow machine; prompt i
    is still sampled with seed + i, as in one call.

    With ``store`` (a JSON-lines file: a header of the settings, then one sample a line), each
    call's samples are appended as they come, and a later call with the same settings (``key``,
    n, seed, sampling, the prompt ids) starts after the calls the file already holds, so that a
    long generation killed half way resumes; a file of other settings is a ConfigError naming
    them (remove it to start over)."""
    per_call = max(1, CHUNK_TOKENS // (n * sampling.get("max_tokens", 128)))
    samples: list[Sample] = []
    if store is not None:
        header = {"key": key or {}, "n": n, "seed": seed, "sampling": sampling, "prompts": [p.id for p in prompts]}
        samples = stored_samples(store, header, n, per_call)
    for start in range(len(samples) // n, len(prompts), per_call):
        chunk = rollouts.generate(prompts[start : start + per_call], n=n, seed=seed + start, **sampling)
        samples += chunk
        if store is not None:
            with store.open("a") as f:
                f.write(json_lines(map(dataclasses.asdict, chunk)))
                f.flush()
                os.fsync(f.fileno())
    return samples


def json_lines(records: Iterable[dict[str, Any]]) -> str:
    """Records as JSON lines (a store's header and samples)."""
    return "".join(json.dumps(r) + "\n" for r in records)


def stored_samples(store: Path, header: dict[str, Any], n: int, per_call: int) -> list[Sample]:
    """The samples of the whole calls ``store`` holds for these settings (see
    ``generate_in_chunks``), the file rewritten to hold just them (a call cut while it was written
    is dropped); a new file with the header when there is none."""
    lines = store.read_text().splitlines() if store.exists() else []
    if lines:
        stored = json.loads(lines[0])
        if stored != header:
            differ = sorted(k for k in header if stored.get(k) != header[k])
            raise ConfigError(
                f"{store}: answers of other settings ({', '.join(differ)} differ); remove the file to start over"
            )
    samples = []
    for line in lines[1:]:
        try:
            samples.append(Sample(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            break
    done = len(samples) // n
    whole = len(header["prompts"]) if done >= len(header["prompts"]) else done // per_call * per_call
    samples = samples[: whole * n]
    tmp = store.with_name(store.name + ".tmp")
    tmp.write_text(json_lines([header, *map(dataclasses.asdict, samples)]))
    tmp.replace(store)
    return samples


def judge_samples(samples: list[Sample]) -> list[float]:
    """The gold judge's score of each chat answer (its prompt's request fields in ``columns``)."""
    return [judge(s.columns, s.response_text).score for s in samples]


def judged_evaluation(
    model_dirs: list[str], cfg: SyncRLConfig, baseline: str, reward_model: str | None = None
) -> list[dict[str, float]]:
    """The chat task's judged evaluation of each folder against ``baseline``'s greedy answers to
    the same held-out prompts (``judged_summary``: win rate and LC win rate under the judge, mean
    judge score, the reward model's mean score with ``reward_model``, length, truncation). Each
    model answers with the eval settings (greedy by default); with several samples per prompt,
    each is compared with the baseline's answer to its prompt. Judge and reward model score in
    this process; the engines start once per run of interchangeable folders."""
    prompts = test_prompts(cfg, CHAT)
    check_cluster(cfg, learner=False, engines=True)
    supervisor = Supervisor(cfg.fault_tolerance)
    e = cfg.eval
    max_tokens = e.max_new_tokens or cfg.rollout.max_new_tokens
    folders = [baseline, *[d for d in model_dirs if d != baseline]]
    answers: dict[str, list[Sample]] = {}
    base_answers: list[Sample] = []
    for _, folder, rollouts in model_engines(folders, cfg, supervisor):
        if folder == baseline:
            base_answers = generate_in_chunks(
                rollouts, prompts, n=1, seed=EVAL_SEED, temperature=0.0, max_tokens=max_tokens
            )
        if folder in model_dirs:
            answers[folder] = (
                base_answers
                if folder == baseline and e.temperature == 0
                else generate_in_chunks(
                    rollouts, prompts, e.samples_per_prompt, EVAL_SEED, temperature=e.temperature, max_tokens=max_tokens
                )
            )
    scorer = None
    if reward_model:
        from rewards.reward_model import RewardModelScorer

        scorer = RewardModelScorer(reward_model)
    base_of = {s.prompt_id: s for s in base_answers}
    base_scores = dict(zip(base_of, judge_samples(list(base_of.values()))))
    results = []
    for folder in model_dirs:
        samples = answers[folder]
        result = judged_summary(
            judge_samples(samples),
            [base_scores[s.prompt_id] for s in samples],
            [s.response_len for s in samples],
            [base_of[s.prompt_id].response_len for s in samples],
            [s.finish_reason == "length" for s in samples],
            [r.reward for r in scorer.score(samples)] if scorer else None,
        )
        results.append({**result, "baseline": baseline})
    return results


def interchangeable(a: str, b: str, trust_remote_code: bool = False) -> bool:
    """Whether folder ``b`` can be evaluated in engines started on ``a``: the same model config
    (but its name) and the same tokenizer (vocabulary, special tokens, chat template)."""
    from transformers import AutoTokenizer

    def identity(folder: str):
        config = json.loads((Path(folder) / "config.json").read_text())
        for key in ("_name_or_path", "transformers_version"):
            config.pop(key, None)
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        return config, tok.get_vocab(), tok.all_special_tokens, tok.chat_template

    return identity(a) == identity(b)


def folder_weights(folder: str) -> list[tuple[str, Any]]:
    """The tensors of a Hugging Face folder's safetensors files, by name."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    return [item for f in files for item in load_file(f).items()]


def value_folders(model_dirs: list[str], value: str | None) -> list[str]:
    """The value folder of each model: ``value`` for all, or each model's own ``value/`` (what
    OREO training writes in ``final/``)."""
    folders = [value or str(Path(d, "value")) for d in model_dirs]
    for model, folder in zip(model_dirs, folders):
        if not Path(folder, "config.json").is_file():
            raise ConfigError(
                f"--beam/--value: no value model for {model}: {folder} is not a model folder (give --value DIR)"
            )
    return folders


def main(
    model_dirs: list[str],
    cfg: SyncRLConfig,
    task: str | None,
    ks: tuple[int, ...],
    output: str | None,
    beams: tuple[int, ...] = (),
    value: str | None = None,
    baseline: str | None = None,
    reward_model: str | None = None,
) -> int:
    """``syncrl eval``: a table of each model folder's results (``--task chat``: judged against
    ``baseline``, default the first folder), and with ``output`` the same as JSON."""
    from launch.cluster import ray_session
    from launch.models import resolve_model

    folders = [resolve_model(d) for d in model_dirs]
    if task == CHAT:
        base = resolve_model(baseline) if baseline else folders[0]
        rm = resolve_model(reward_model) if reward_model else None
        with ray_session(cfg):
            results = list(zip(model_dirs, judged_evaluation(folders, cfg, base, rm)))
        print(f"judged against the greedy answers of {baseline or model_dirs[0]}")
        print(format_judged_table(results))
        if output:
            Path(output).write_text(json.dumps({d: r for d, r in results}, indent=1))
        return 0
    # --value [DIR]: DIR, or each model's own value/ ("" or, with --beam, None)
    values = value_folders(folders, value and resolve_model(value)) if beams or value is not None else None
    names = [name for d in model_dirs for name in [d, *(f"{d} beam={b}" for b in beams)]]
    with ray_session(cfg):
        results = list(zip(names, evaluate_models(folders, cfg, task, ks, beams, values)))
    print(format_table(results))
    if output:
        Path(output).write_text(json.dumps({d: r for d, r in results}, indent=1))
    return 0
