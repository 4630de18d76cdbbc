"""The driver: generate -> score -> build training records -> train -> every s steps push weights.

``syncrl train RECIPE`` (``python -m launch train RECIPE``) runs it on the Ray cluster it finds,
or on a local one it starts. Only the sync interval s separates offline (s=inf), semi-online
(1<s<inf) and online (s=1) training; a run may list stages, each with its own algorithm, step
count and s (G2D: GRPO with s=1, then DPO with s=inf on the warmed-up policy's rollouts).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import ray

from actors.controller import NAMESPACE, start_controller
from actors.learner import LearnerGroup
from actors.reward import RewardGroup
from actors.rollout import RolloutGroup
from actors.weight_sync import make_transport
from launch.checkpoint import RunState, load_state, restore, save_checkpoint, save_final
from launch.config import ConfigError, SyncRLConfig, dump_config, load_config
from launch.metrics import MetricsLog, live_sync_interval, step_record
from launch.models import resolve_model
from launch.sources import FileSource, RolloutSource
from rollout.algorithms import make_algorithm
from rollout.offline import file_kind, load_offline_groups
from rollout.records import Prompt
from rollout.tasks import ShuffledStream, load_prompts, make_task


def train(cfg: SyncRLConfig, run_dir: str, state: RunState | None = None) -> RunState:
    """Run every stage of ``cfg`` in ``run_dir``; ``state`` continues a checkpointed run."""
    model_path, stages = resolve_model(cfg.model.path), cfg.resolved_stages()
    algorithms = [make_algorithm(s.algorithm, seed=cfg.seed + i) for i, s in enumerate(stages)]
    data = load_data(cfg, model_path, stages)  # bad data fails here, before any actor starts
    state = state or RunState(sync_interval=stages[0].sync.interval)
    controller = start_controller(cfg.logging.controller_name, state.sync_interval, cfg.name, cfg.logging.ray_metrics)
    groups: list = []  # shut down whatever started, however the run ends
    try:
        groups.append(rollouts := RolloutGroup(model_path, cfg.rollout))
        groups.append(rewards := RewardGroup(cfg.reward))
        needs_reference = any(a.loss.needs_reference for a in algorithms)
        groups.append(learners := LearnerGroup(model_path, cfg.learner, cfg.rollout.temperature, needs_reference))
        transport = make_transport(cfg.sync.transport, learners, rollouts)
        restore(run_dir, state, learners, rollouts, transport)
        source = make_source(cfg, data, rollouts, state.data_position)
        log = MetricsLog(run_dir, cfg.logging.progress_bar, sum(s.steps for s in stages), resume_step=state.step)
        loop(cfg, run_dir, state, stages, algorithms, controller, source, rewards, learners, rollouts, transport, log)
        save_final(run_dir, cfg, state, learners, model_path)
        log.close()
    finally:
        for group in groups:
            group.shutdown()
        ray.kill(controller)
    return state


def loop(cfg, run_dir, state, stages, algorithms, controller, source, rewards, learners, rollouts, transport, log):
    """For each stage, for each step: generate, score, build, train, and push every s steps."""

    def push(ref_sync: bool) -> None:
        transport.push(learners, rollouts, state.learner_version)
        if ref_sync:
            learners.on_all("sync_reference")
        state.engine_version, state.steps_since_sync = state.learner_version, 0

    for index in range(state.stage_index, len(stages)):
        stage, algorithm = stages[index], algorithms[index]
        if index != state.stage_index:  # a new stage starts from the current policy, with its own s
            state.begin_stage(index, stage.sync.interval, controller)
            push(stage.sync.ref_sync)
        while state.step_in_stage < stage.steps:
            s = state.sync_interval = live_sync_interval(controller, log)
            t0 = time.perf_counter()
            samples = source.next(state.step, prefetch=stage.sync.overlap and state.step_in_stage + 1 < stage.steps)
            t1 = time.perf_counter()
            samples = rewards.score(samples) if samples[0].reward is None else samples
            batch = algorithm.build(samples)
            t2 = time.perf_counter()
            loss = {}
            if batch.sequences:  # a step with no pair (DPO) or no group (GRPO) trains nothing
                loss = learners.train_step(batch, algorithm.loss)
                state.learner_version += 1
                state.steps_since_sync += 1
            t3 = time.perf_counter()
            if state.steps_since_sync >= s:
                push(stage.sync.ref_sync)
            t4 = time.perf_counter()
            record = step_record(state, stage.name, s, samples, batch, loss, t1 - t0, t2 - t1, t3 - t2, t4 - t3)
            if cfg.logging.weight_checksums:
                record.update(learner_checksum=learners.on_all("weights_checksum")[0][:16],
                              engine_checksums=[c[:16] for c in rollouts.weights_checksums()])  # fmt: skip
            state.step, state.step_in_stage, state.data_position = state.step + 1, state.step_in_stage + 1, source.position
            log.write(record, controller)
            if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
                save_checkpoint(run_dir, cfg, state, learners, controller)


def load_data(cfg: SyncRLConfig, model_path: str, stages) -> list:
    """The training items: prompts (generated task or prompt file), or sample groups (a file of
    preference pairs or scored responses, which trains offline: every stage needs s = inf)."""
    d = cfg.data
    if d.path is None:
        return make_task(d.task, d.num_train, d.num_test, d.seed, d.one_shot, d.system_prompt)[0]
    if not Path(d.path).is_file():
        raise ConfigError(f"data.path: no file {d.path!r}")
    if file_kind(d.path) == "prompts":
        return load_prompts(d.path)
    online = [s.name for s in stages if not math.isinf(s.sync.interval)]
    if online:
        raise ConfigError(f"data.path {d.path} holds responses (offline data), so sync.interval must be inf; "
                          f"stages with a finite interval: {online}")  # fmt: skip
    from transformers import AutoTokenizer

    return load_offline_groups(d.path, AutoTokenizer.from_pretrained(model_path))


def make_source(cfg: SyncRLConfig, data: list, rollouts: RolloutGroup, position: int):
    stream = ShuffledStream(data, cfg.data.prompts_per_step, cfg.data.seed, position)
    if isinstance(data[0], Prompt):
        return RolloutSource(rollouts, stream, cfg.rollout.seed)
    return FileSource(stream)


def required_cpus(cfg: SyncRLConfig) -> int:
    r = cfg.rollout
    return int(math.ceil(r.num_workers * r.num_cpus_per_worker)) + cfg.reward.num_workers + cfg.learner.num_ranks


def connect_ray(cfg: SyncRLConfig) -> bool:
    """Attach to the running cluster (RAY_ADDRESS, or one started with `ray start`), else start a
    local one with enough logical CPUs for the run's actors. Returns True if it started one."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address="auto", namespace=NAMESPACE, log_to_driver=True)
        return False
    except ConnectionError:
        ray.init(address="local", namespace=NAMESPACE, num_cpus=max(os.cpu_count() or 1, required_cpus(cfg)),
                 include_dashboard=False)  # fmt: skip
        return True


def run(cfg: SyncRLConfig | None, output: str | None = None, resume: str | None = None) -> Path:
    """``syncrl train``: make (or reopen) the run directory, connect to Ray, train."""
    if resume:
        run_dir = Path(resume)
        saved = load_config(run_dir / "config.yaml")
        if cfg is not None and cfg.model_dump() != saved.model_dump():
            raise ConfigError(f"--resume {resume}: the run's config.yaml differs from the recipe given; resume without a recipe")
        cfg, state = saved, load_state(str(run_dir))
    else:
        run_dir = Path(output or cfg.logging.output_dir.format(name=cfg.name, time=time.strftime("%Y%m%d-%H%M%S")))
        if (run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"run directory {run_dir} already holds a run: use --resume {run_dir} or another --output")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        state = None
    started = connect_ray(cfg)
    try:
        train(cfg, str(run_dir), state)
    finally:
        if started:
            ray.shutdown()
    return run_dir
