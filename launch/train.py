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

from actors.common import join
from actors.controller import NAMESPACE, start_controller
from actors.learner import LearnerGroup
from actors.reward import RewardGroup
from actors.rollout import RolloutGroup
from actors.weight_sync import make_transport
from launch.checkpoint import RunState, load_state, restore, save_checkpoint, save_final
from launch.config import ConfigError, SyncRLConfig, dump_config, load_config
from launch.metrics import MetricsLog, live_sync_interval, step_record
from launch.models import resolve_model
from rollout.algorithms import make_algorithm
from rollout.tasks import PromptStream


def train(cfg: SyncRLConfig, run_dir: str, state: RunState | None = None) -> RunState:
    """Run every stage of ``cfg`` in ``run_dir``; ``state`` continues a checkpointed run."""
    model_path, stages = resolve_model(cfg.model.path), cfg.resolved_stages()
    algorithms = [make_algorithm(s.algorithm, seed=cfg.seed + i) for i, s in enumerate(stages)]
    state = state or RunState(sync_interval=stages[0].sync.interval)
    controller = start_controller(cfg.logging.controller_name, state.sync_interval, cfg.name, cfg.logging.ray_metrics)
    groups: list = []  # shut down whatever started, however the run ends
    try:
        groups.append(rollouts := RolloutGroup(model_path, cfg.rollout))
        groups.append(rewards := RewardGroup(cfg.reward))
        needs_reference = any(a.loss.needs_reference for a in algorithms)
        groups.append(learners := LearnerGroup(model_path, cfg.learner, cfg.rollout.temperature, needs_reference))
        loop(cfg, run_dir, state, stages, algorithms, controller, rollouts, rewards, learners)
        save_final(run_dir, cfg, state, learners, model_path)
    finally:
        for group in groups:
            group.shutdown()
        ray.kill(controller)
    return state


def loop(cfg, run_dir, state, stages, algorithms, controller, rollouts, rewards, learners) -> None:
    """For each stage, for each step: generate, score, build, train, and push every s steps."""
    transport = make_transport(cfg.sync.transport, learners, rollouts)
    prompts = PromptStream(state.train_prompts(cfg), cfg.data.prompts_per_step, cfg.data.seed, state.prompt_position)
    log = MetricsLog(run_dir, cfg.logging.progress_bar, sum(s.steps for s in stages), resume_step=state.step)
    restore(run_dir, state, learners, rollouts, transport)

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
        pending = None
        while state.step_in_stage < stage.steps:
            s = state.sync_interval = live_sync_interval(controller, log)
            t0 = time.perf_counter()
            samples = join(ray.get(pending)) if pending else rollouts.generate(prompts.next(), seed=sampling_seed(cfg, state))
            pending = None
            if stage.sync.overlap and state.step_in_stage + 1 < stage.steps:  # next batch generates during training
                pending = rollouts.generate_refs(prompts.next(), seed=sampling_seed(cfg, state, ahead=1))
            t_gen = time.perf_counter()
            samples = rewards.score(samples)
            batch = algorithm.build(samples)
            t1 = time.perf_counter()
            loss = {}
            if batch.sequences:  # a step with no pair (DPO) or no group (GRPO) trains nothing
                loss = learners.train_step(batch, algorithm.loss)
                state.learner_version += 1
                state.steps_since_sync += 1
            t2 = time.perf_counter()
            if state.steps_since_sync >= s:
                push(stage.sync.ref_sync)
            t3 = time.perf_counter()
            record = step_record(state, stage.name, s, samples, batch, loss, t_gen - t0, t1 - t_gen, t2 - t1, t3 - t2)
            if cfg.logging.weight_checksums:
                record.update(learner_checksum=learners.on_all("weights_checksum")[0][:16],
                              engine_checksums=[c[:16] for c in rollouts.weights_checksums()])  # fmt: skip
            state.step += 1
            state.step_in_stage += 1
            state.prompt_position = prompts.position - (cfg.data.prompts_per_step if pending else 0)
            log.write(record, controller)
            if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
                save_checkpoint(run_dir, cfg, state, learners, controller)
    log.close()


def sampling_seed(cfg: SyncRLConfig, state: RunState, ahead: int = 0) -> int:
    """Sampling seed of a step's prompts: runs (and resumed runs) sample reproducibly."""
    return cfg.rollout.seed + 1_000_003 * (state.step + ahead)


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
        run_dir = Path(output or cfg.logging.output_dir.format(name=cfg.name))
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
