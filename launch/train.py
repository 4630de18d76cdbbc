"""The driver: generate -> score -> build training records -> train -> every s steps push weights.

``syncrl train RECIPE`` (``python -m launch train RECIPE``) runs it, on the Ray cluster that
launch/run.py and launch/cluster.py find or start. Only the sync interval s separates offline (s=inf), semi-online
(1<s<inf) and online (s=1) training; a run may list stages, each with its own algorithm, step
count and s (G2D: GRPO with s=1, then DPO with s=inf on the warmed-up policy's rollouts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ray

from actors.common import wait_ready
from actors.controller import start_controller
from actors.faults import ActorFailure, RestartBudgetSpent, Supervisor
from actors.learner import LearnerGroup
from actors.placement import check_cluster, check_visible, where
from actors.reward import RewardGroup
from actors.rollout import RolloutGroup
from actors.weight_sync import WeightSync
from launch.checkpoint import RunState, latest_checkpoint, load_state, restore, save_checkpoint, save_final
from launch.config import SyncRLConfig, engine_settings
from launch.evaluate import Evaluator
from launch.live import LiveSettings, with_live
from launch.metrics import MetricsLog, install_grafana_dashboard, live_settings, step_record
from launch.models import resolve_model
from launch.plots import plot_run
from launch.sources import FileSource, RolloutSource
from rewards.reward_model import reward_token_ids
from rollout.algorithms import make_algorithm
from rollout.data import RunData, read_run_data, test_prompts, training_items
from rollout.phases import Phases
from rollout.records import Prompt
from rollout.tasks import ShuffledStream


class Driver:
    """One run: its actors, its data source, its state. ``run()`` is the loop."""

    def __init__(
        self,
        cfg: SyncRLConfig,
        run_dir: str,
        state: RunState | None = None,
        phases: Phases | None = None,
        data: RunData | None = None,
    ):
        """``data``: the run's data as ``read_run_data`` read it (``syncrl train`` reads it before
        Ray starts); None: read here."""
        began = time.time()
        self.phases = phases or Phases()  # the start-up's parts, in startup.json after the first step
        self.recipe, self.run_dir = cfg, str(Path(run_dir).absolute())  # the same path on every node
        self.model_path = str(Path(resolve_model(cfg.model.path)).absolute())
        tokenizer = load_tokenizer(self.model_path, cfg.model.trust_remote_code)
        self.texts = TokenTexts(self.model_path, tokenizer=tokenizer)  # OREO's step level finds steps with it
        self.reward_ids = lambda s: reward_token_ids(tokenizer, s.messages, s.response_text)  # reward_model
        self.configure(state.live if state else {})
        data = data or read_run_data(cfg)  # bad data fails here, before any actor starts
        self.data = training_items(cfg, data, tokenizer)
        self.state = state or self.initial_state()
        self.eval_prompts = test_prompts(cfg, built=data.task) if cfg.eval.enabled else []
        # Rollout engines and reward workers, unless nothing would use them: data of scored
        # responses or pairs (no generation, rewards in the data) and no evaluation.
        self.engines = isinstance(self.data[0], Prompt) or cfg.eval.enabled
        self.groups: list = []
        self.evaluated_at: int | None = None  # the step of the last every_steps evaluation
        self.mid_step = False  # the learner trained this step and its record is not written yet
        self.changed: dict = {}  # the live settings applied from this step
        self.probed_at = time.monotonic()
        self.phases.add("task, tokenizer and data", began, time.time() - began)  # syncrl train: while Ray starts

    def configure(self, live: dict) -> None:
        """The run's settings (``cfg``, its stages and their algorithms): the recipe's, with the
        live settings (``syncrl ctl set``) in place."""
        cfg = self.cfg = with_live(self.recipe, live)
        self.stages = cfg.resolved_stages()
        self.algorithms = [
            make_algorithm(s.algorithm, cfg.seed + i, self.texts, self.reward_ids, cfg.rollout.temperature)
            for i, s in enumerate(self.stages)
        ]

    def apply_live(self, changed: dict) -> None:
        """Live settings set since the last step, from this step on (``launch.live``)."""
        self.state.live.update(changed)
        self.configure(self.state.live)
        self.set_learning_rates(changed)
        if isinstance(self.source, RolloutSource):
            self.source.temperature = self.cfg.rollout.temperature

    def set_learning_rates(self, live: dict) -> None:
        """The learner's (and value model's) learning rates that ``live`` sets (the optimizers
        start at the recipe's)."""
        for key, value_model in (("learner.lr", False), ("learner.value_lr", True)):
            if key in live:
                self.learners.on_all("set_lr", live[key], value_model)

    def initial_state(self) -> RunState:
        return RunState(sync_interval=self.stages[0].sync.interval)

    def __enter__(self) -> Driver:
        cfg, state = self.cfg, self.state
        check_cluster(
            cfg, engines=self.engines
        )  # before any actor starts: the run fits the cluster, or says what is missing
        check = LiveSettings(
            self.recipe,
            has_reference=any(a.loss.needs_reference for a in self.algorithms),
            has_value=any(a.loss.needs_value for a in self.algorithms),
        ).check
        self.controller = start_controller(
            cfg.logging.controller_name, state.sync_interval, cfg.name, cfg.logging.ray_metrics, state.live, check
        )
        self.phases.mark("cluster check and controller")
        if cfg.logging.ray_metrics and (dashboard := install_grafana_dashboard()):
            print(f"Grafana dashboard: {dashboard}", flush=True)
        self.supervisor = Supervisor(cfg.fault_tolerance, lambda event: self.controller.report_restart.remote(event))
        try:  # the three groups start at once, and are waited for together
            rollouts = rewards = None
            if self.engines:
                self.groups.append(
                    rollouts := RolloutGroup(self.model_path, engine_settings(cfg), self.supervisor, wait=False)
                )
                self.groups.append(rewards := RewardGroup(cfg.reward, self.supervisor, wait=False))
            self.phases.mark("rollout and reward groups started")
            self.groups.append(self.learner_group())
            self.phases.mark("learner placement and rendezvous")
            wait_ready(*self.groups)
            self.phases.mark("waiting for the actors")
            check_visible(self.groups, self.shared_paths(), self.run_dir, self.supervisor.start_timeout)
            self.write_placement()
            self.rollouts, self.rewards = rollouts, rewards
            self.attach_learners()
            self.phases.mark("file check, placement, transport")
            self.log = MetricsLog(
                self.run_dir,
                cfg.logging.progress_bar,
                sum(s.steps for s in self.stages),
                state.step,
                tensorboard=cfg.logging.tensorboard,
                wandb=cfg.logging.wandb,
                config=cfg,
            )
        except BaseException:  # nothing left running (a wandb run that cannot start included)
            self.__exit__()
            raise
        self.evaluator = Evaluator(
            rollouts, rewards, self.eval_prompts, cfg.eval, cfg.rollout.max_new_tokens, (1, cfg.eval.samples_per_prompt)
        )
        return self

    def write_placement(self) -> None:
        """placement.json in the run directory: each worker's node, and the learner's rendezvous."""
        nodes = where(self.groups, self.supervisor.start_timeout)
        host, port = self.learners.address
        Path(self.run_dir, "placement.json").write_text(
            json.dumps(
                {
                    "workers": nodes,
                    "learner_rendezvous": f"{host}:{port}",
                    "learner_rendezvous_node": self.learners.address_node,
                },
                indent=1,
            )
        )
        if len({n["node_id"] for n in nodes.values()}) > 1:
            print(
                "placement: "
                + ", ".join(f"{name} on {n['node_ip']} ({n['node_id'][:8]})" for name, n in nodes.items()),
                flush=True,
            )

    def write_startup(self, first_step: dict) -> None:
        """startup.json in the run directory: the driver's and every worker's start-up phases
        (wall-clock starts, seconds each) and the first step's parts (bench/startup.py)."""
        workers = {}
        for group in self.groups:
            records = ray.get([w.startup.remote() for w in group.workers], timeout=self.supervisor.start_timeout)
            for i, rec in enumerate(records):
                workers[group.name(i)] = {"submitted": group.submitted, **(rec or {})}
        parts = {k: first_step[f"time_{k}_s"] for k in ("gen", "score", "train", "sync")}
        record = {
            "driver": self.phases.record(),
            "workers": workers,
            "first_step": {"start": self.phases.last, "end": time.time(), "parts": parts},
        }
        Path(self.run_dir, "startup.json").write_text(json.dumps(record, indent=1))
        self.phases = None

    def shared_paths(self) -> dict[str, str]:
        """What every actor reads (besides the run directory): the model and reward model folders."""
        routes = {
            f"reward.routes.{name}.model_path": r.model_path
            for name, r in self.cfg.reward.routes.items()
            if r.model_path
        }
        return {"model.path": self.model_path, **routes}

    def learner_group(self) -> LearnerGroup:
        """The learner group, starting (not waited for)."""
        needs = dict(
            needs_reference=any(a.loss.needs_reference for a in self.algorithms),
            needs_value=any(a.loss.needs_value for a in self.algorithms),
            reward_model=any(a.loss.scalar_head for a in self.algorithms),
        )
        self.learners = LearnerGroup(
            self.model_path, self.cfg.learner, **needs, supervisor=self.supervisor, wait=False, model=self.cfg.model
        )
        return self.learners

    def attach_learners(self) -> None:
        """The weight transport, and the actors brought to the run state (the last checkpoint's,
        for a resumed or restarted run), with a data source at its position."""
        learners, cfg = self.learners, self.cfg
        overlap = any(stage.sync.overlap for stage in self.stages)  # a prefetch may need the version before a push
        self.sync = WeightSync(
            cfg.sync.transport,
            learners,
            self.rollouts,
            self.state,
            cfg.fault_tolerance.push_timeout_s,
            kept_versions=2 if overlap else 1,
        )
        restore(self.run_dir, self.state, learners, self.sync)
        self.source = make_source(self.cfg, self.data, self.rollouts, self.state.data_position)
        self.set_learning_rates(self.state.live)  # a resumed or restarted run's (the rest is in self.cfg)

    def restart_learners(self, failure: ActorFailure) -> None:
        """A learner rank died or hung: restart the group from the last checkpoint (from the start
        without one); the step records after it are replaced as the steps run again."""
        self.supervisor.charge(failure)
        t0 = time.perf_counter()
        self.learners.shutdown()
        self.groups.remove(self.learners)
        held = self.state.engine_version
        self.state = load_state(self.run_dir) if latest_checkpoint(self.run_dir) else self.initial_state()
        if (
            self.state.engine_version == 0 and held != 0 and self.rollouts is not None
        ):  # the engines go back to the base model
            self.rollouts.restart_all()
        self.groups.append(self.learner_group())
        wait_ready(self.learners)
        self.write_placement()
        self.attach_learners()
        self.log.rewind(self.state.step)
        self.evaluated_at, self.mid_step = None, False
        self.supervisor.record(failure, time.perf_counter() - t0, resumed_from_step=self.state.step)

    def __exit__(self, *exc) -> None:  # shut down whatever started, however the run ends
        for group in self.groups:
            group.shutdown()
        ray.kill(self.controller)

    def sync_interval(self, stage) -> float | str:
        """The live settings (``syncrl ctl``), applied from this step, and the sync interval."""
        settings = live_settings(self.controller, self.log)
        self.changed = {k: v for k, v in settings["live"].items() if self.state.live.get(k) != v}
        if self.changed:
            self.apply_live(self.changed)
        return self.sync.set_interval(settings["sync_interval"], stage.sync.overlap)

    def evaluate_at_start(self) -> None:
        """eval.at_start, before the first step (a part of the start-up, in startup.json)."""
        if self.cfg.eval.at_start and self.state.step == 0:
            self.evaluate()
            if self.phases is not None:  # not after a restart of the learner group
                self.phases.mark("eval at start")

    def evaluate(self) -> None:
        """Held-out accuracy of the engines' policy, with the diagnostics of the learner's value
        model (OREO) on those answers (and value-guided beam search with it, with eval.beam_size), logged."""
        score = self.learners.score_states if any(a.loss.needs_value for a in self.algorithms) else None
        self.log.eval(self.state.step, self.evaluator(score), self.controller)
        if self.cfg.eval.beam_size:
            self.log.eval(
                self.state.step,
                self.evaluator.beam(self.cfg.eval.beam_size, self.learners.score_states),
                self.controller,
            )

    def run(self) -> RunState:
        """The loop, continued from the last checkpoint after a learner failure; a spent restart
        budget stops it with a resumable checkpoint."""
        while True:
            try:
                try:
                    return self.run_stages()
                except ActorFailure as failure:
                    if failure.kind != "learner":
                        raise
                    self.restart_learners(failure)
            except RestartBudgetSpent as spent:
                raise self.stopped(spent) from None

    def run_stages(self) -> RunState:
        """For each stage, for each step: generate, score, build, train; push every s steps."""
        cfg, state = self.cfg, self.state
        self.evaluate_at_start()
        for index in range(state.stage_index, len(self.stages)):
            stage = self.stages[index]
            if index != state.stage_index:  # a new stage starts from the current policy, with its own s
                state.begin_stage(index, stage.sync.interval, self.controller)
                self.sync.begin_stage(stage.sync)
            while state.step_in_stage < stage.steps:
                s = self.sync_interval(stage)  # and the live settings, from this step
                stage, algorithm = self.stages[index], self.algorithms[index]
                self.probe()
                t0 = time.perf_counter()
                samples = self.source.next(
                    state.step, prefetch=stage.sync.overlap and state.step_in_stage + 1 < stage.steps
                )
                t1 = time.perf_counter()
                samples = self.rewards.score(samples) if samples[0].reward is None else samples  # files come scored
                batch = algorithm.build(samples)
                t2 = time.perf_counter()
                loss = {}
                if batch.sequences:  # a step with no pair (DPO) or no group (GRPO) trains nothing
                    self.mid_step = True
                    loss = self.learners.train_step(batch, algorithm.loss)
                    state.learner_version += 1
                    state.steps_since_sync += 1
                t3 = time.perf_counter()
                pushed_after = self.sync.due(stage.sync, loss)  # steps since the last push, when pushing now
                if pushed_after:
                    self.sync.push(stage.sync.ref_sync)
                t4 = time.perf_counter()
                record = step_record(state, stage.name, s, samples, batch, loss, t1 - t0, t2 - t1, t3 - t2, t4 - t3)
                self.end_step({**record, "pushed_after": pushed_after})
        if cfg.eval.at_end and self.evaluated_at != state.step:  # not already evaluated by every_steps
            if state.engine_version != state.learner_version:  # the engines get the final policy
                self.sync.push(ref_sync=False, keep=False)
            self.evaluate()
        save_final(self.run_dir, cfg, state, self.learners, self.model_path)
        self.log.close()
        print(f"progress plot: {plot_run(self.run_dir)}", flush=True)
        return state

    def probe(self) -> None:
        """Between steps, at most every fault_tolerance.health_check_s: ping the idle rollout and
        reward workers and replace the dead ones before work is sent to them."""
        if time.monotonic() - self.probed_at < self.cfg.fault_tolerance.health_check_s:
            return
        if self.rollouts is None:
            return
        if getattr(self.source, "pending", None) is None:  # an engine busy with a prefetch answers late
            self.rollouts.probe()
        self.rewards.probe()
        self.probed_at = time.monotonic()

    def stopped(self, spent: RestartBudgetSpent) -> RestartBudgetSpent:
        """The run stops: a checkpoint of its state when the learner is up and between steps, and
        the error saying how to continue."""
        where = latest_checkpoint(self.run_dir)
        if spent.failure.kind != "learner" and not self.mid_step:
            try:
                where = save_checkpoint(self.run_dir, self.cfg, self.state, self.learners, self.sync)
            except Exception as err:  # the learner may be failing too: the last checkpoint stands
                print(f"[restart] no checkpoint at the stop ({err!r})", flush=True)
        hint = (
            f"continue with: syncrl train --resume {self.run_dir} (from {where.name})"
            if where
            else "no checkpoint to resume from"
        )
        spent.args = (f"{spent.args[0]}. The run stopped at step {self.state.step}; {hint}",)
        return spent

    def end_step(self, record: dict) -> None:
        """Count the step, log it, checkpoint when due."""
        state, cfg = self.state, self.cfg
        if cfg.logging.weight_checksums:
            record.update(
                learner_checksum=self.learners.on_all("weights_checksum")[0][:16],
                engine_checksums=[c[:16] for c in self.rollouts.weights_checksums()] if self.rollouts else [],
            )
        record.update({f"set/{k}": v for k, v in self.changed.items()})  # the live settings applied from it
        record["restarts"] = self.supervisor.drain()
        if self.phases is not None:  # the first step of this process: its start-up, once
            self.write_startup(record)
        state.step, state.step_in_stage, state.data_position = (
            state.step + 1,
            state.step_in_stage + 1,
            self.source.position,
        )
        self.mid_step = False
        self.log.write(record, self.controller)
        every = cfg.eval.every_steps
        if every and state.step % every == 0 and state.engine_version == state.learner_version:
            self.evaluate()
            self.evaluated_at = state.step
        if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
            save_checkpoint(self.run_dir, cfg, state, self.learners, self.sync)


def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    """The model's tokenizer on the driver (``trust_remote_code``: model.trust_remote_code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


class TokenTexts:
    """ids -> the text of each token, with the model's tokenizer (``tokenizer``, or loaded on first
    use); OREO's step level finds reasoning steps with it."""

    def __init__(self, model_path: str, trust_remote_code: bool = False, tokenizer=None):
        self.model_path, self.trust_remote_code, self.tokenizer = model_path, trust_remote_code, tokenizer

    def __call__(self, ids: list[int]) -> list[str]:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model_path, self.trust_remote_code)
        return self.tokenizer.batch_decode([[i] for i in ids])


def make_source(cfg: SyncRLConfig, data: list, rollouts: RolloutGroup, position: int):
    stream = ShuffledStream(data, cfg.data.prompts_per_step, cfg.data.seed, position)
    if isinstance(data[0], Prompt):
        return RolloutSource(rollouts, stream, cfg.rollout.seed, cfg.rollout.temperature)
    return FileSource(stream)
