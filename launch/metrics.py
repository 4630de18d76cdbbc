"""Per-step metrics: ``metrics.jsonl`` in the run directory, TensorBoard scalars beside it, the
Controller's Ray metrics, an optional Weights & Biases run, and a console progress bar."""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import ray

from actors.controller import eval_prefix, metric_values, scalar_tag
from rollout.evaluation import VALUE_COLUMNS
from rollout.records import Sample, TrainBatch, interval_text


def mean_or_nan(values: list[float]) -> float:
    """The mean, or nan for no values."""
    return sum(values) / len(values) if values else float("nan")


def per_source(samples: list[Sample]) -> dict[str, float]:
    """``reward_mean/<source>``, ``response_len_mean/<source>`` and ``samples/<source>`` (a count)
    for each reward-route source (``Sample.source``) among ``samples``, sources in sorted order."""
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_source[s.source].append(s)
    groups = sorted(by_source.items())
    return {
        **{f"reward_mean/{source}": mean_or_nan([s.reward for s in group]) for source, group in groups},
        **{f"response_len_mean/{source}": mean_or_nan([s.response_len for s in group]) for source, group in groups},
        **{f"samples/{source}": len(group) for source, group in groups},
    }


def step_record(
    state,
    stage: str,
    sync_interval: float,
    samples: list[Sample],
    batch: TrainBatch,
    loss: dict[str, float],
    gen: float,
    score: float,
    train: float,
    sync: float,
) -> dict[str, Any]:
    """One line of metrics.jsonl. Staleness of a sample = learner version it trains - version that
    generated it. ``state`` is read after the step (learner_version counts this step if it trained)."""
    trained_at = state.learner_version - (1 if loss else 0)
    staleness = [trained_at - s.policy_version for s in samples]
    tokens = loss.get("tokens", 0.0)
    return {
        "step": state.step + 1,
        "stage": stage,
        "learner_version": state.learner_version,
        "engine_version": state.engine_version,
        "sync_interval": interval_text(sync_interval),
        "staleness_mean": mean_or_nan(staleness),
        "staleness_max": max(staleness, default=0),
        "sample_versions": sorted({s.policy_version for s in samples}),
        "prompts_hash": hashlib.sha1(" ".join(dict.fromkeys(s.prompt_id for s in samples)).encode()).hexdigest()[:12],
        "reward_mean": mean_or_nan([s.reward for s in samples]),
        "response_len_mean": mean_or_nan([s.response_len for s in samples]),
        "truncated_frac": mean_or_nan([s.finish_reason == "length" for s in samples]),
        "grader_timeouts": sum(
            bool((s.reward_info or {}).get("timed_out")) for s in samples
        ),  # scored 0 after the grader's limit
        "reward_errors": sum(
            bool((s.reward_info or {}).get("error")) for s in samples
        ),  # scored 0 by an error (on_error: zero)
        "entropy_mean": loss.get("entropy", float("nan")),
        "loss": loss.get("loss", float("nan")),
        "kl": loss.get("kl"),
        **{k: v for k, v in loss.items() if k not in ("loss", "entropy", "kl", "tokens")},
        **{f"batch_{k}": v for k, v in batch.counts.items()},
        "sequences": len(batch.sequences),
        "tokens_generated": sum(s.response_len for s in samples if s.policy_version >= 0),  # file samples: none
        "tokens_trained": tokens,  # prompt + response tokens the learner ran forward and backward
        "trained": bool(loss),
        "time_gen_s": gen,
        "time_score_s": score,
        "time_train_s": train,
        "time_sync_s": sync,
        "tokens_per_s": tokens / max(gen + score + train + sync, 1e-9),
        **per_source(samples),
    }


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl or eval.jsonl ([] when the file does not exist)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def wandb_run_name(run_dir: str | Path, name: str | None) -> str:
    """The default wandb run name: the run directory's name, after the config's ``name`` unless
    it already starts with it (the default output_dir ``runs/{name}-{time}`` does)."""
    base = Path(run_dir).absolute().name
    return base if not name or base.startswith(name) else f"{name}-{base}"


class MetricsLog:
    """``tensorboard``: also every numeric field of each step record (tag ``train/<field>``) and
    evaluation (``eval/<key>``; beam search ``eval_beam/<key>``) as TensorBoard scalars at its step,
    in ``<run_dir>/tensorboard/``; the values are the Ray gauges' (``actors.controller.metric_values``;
    tags by ``scalar_tag``: a per-source ``reward_mean/<source>`` keeps its ``/``). ``wandb`` (a
    ``launch.config.WandbConfig``): the same scalars logged to a Weights & Biases run, each row with
    its ``step``, and ``config`` (the run's SyncRLConfig) as the wandb run's config."""

    def __init__(
        self,
        run_dir: str,
        progress_bar: bool,
        total_steps: int,
        resume_step: int = 0,
        tensorboard: bool = False,
        wandb=None,
        config=None,
    ):
        self.path = Path(run_dir, "metrics.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        self.file = open(self.path, "a")
        self.tensorboard, self.writer = tensorboard, None
        self._open_writer(resume_step)
        self.wandb_run = self._open_wandb(wandb, config, resume_step) if wandb is not None else None
        self.last_write = time.time()
        self.bar = None
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc="syncrl", unit="step")

    def _truncate(self, step: int) -> None:
        """Drop the records past ``step`` from metrics.jsonl and eval.jsonl: a resumed (or restarted)
        run writes them again, and would duplicate them; from step 0 every record goes."""
        for path in (self.path, self.path.with_name("eval.jsonl")):
            if path.exists():
                kept = [
                    line
                    for line in path.read_text().splitlines()
                    if line and step > 0 and json.loads(line)["step"] <= step
                ]
                path.write_text("".join(line + "\n" for line in kept))

    def _open_writer(self, step: int) -> None:
        """A TensorBoard writer (a new event file) continuing after ``step``: it purges the scalars of
        later steps, which the run writes again (TensorBoard hides the old values)."""
        if not self.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.path.with_name("tensorboard")), purge_step=step + 1 if step > 0 else 0)

    def _open_wandb(self, settings, config, step: int):
        """A wandb run (wandb is imported only here). A resumed run (``step`` > 0) continues the
        wandb run whose id ``<run_dir>/wandb_run_id`` keeps (``resume="allow"``); from step 0 a new
        one starts. Rows are plotted against their ``step`` field: wandb's own step only grows, so
        the steps a resumed run writes again are logged again, after the first copies."""
        import wandb

        run_dir = self.path.parent
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if step > 0 and id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        folder = Path(settings.dir or run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = settings.name or wandb_run_name(run_dir, getattr(config, "name", None))
        run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            name=name,
            tags=settings.tags,
            mode=settings.mode,
            dir=str(folder),
            id=run_id,
            resume="allow",
            config=config.model_dump(mode="json") if config is not None else None,
        )
        run.define_metric("step")
        for prefix in ("train", "eval", "eval_beam"):
            run.define_metric(f"{prefix}/*", step_metric="step")
        return run

    def _scalars(self, prefix: str, record: dict[str, Any], step: int) -> None:
        """Each numeric field but ``step`` and ``time`` (the event's own step and wall time), as
        ``<prefix>/<scalar_tag(field)>``, to TensorBoard and wandb."""
        values = {
            f"{prefix}/{tag}": v for tag, v in metric_values(record, scalar_tag).items() if tag not in ("step", "time")
        }
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, global_step=step, walltime=record.get("time"))
            self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({"step": step, **values})

    def rewind(self, step: int) -> None:
        """The run continues from the checkpoint of ``step`` (the learner group restarted); the
        wandb run goes on, and gets the steps after ``step`` again."""
        self.file.close()
        self._truncate(step)
        self.file = open(self.path, "a")
        if self.writer is not None:
            self.writer.close()
            self._open_writer(step)

    def write(self, record: dict[str, Any], controller) -> None:
        """Log a step; adds ``time`` (Unix seconds) and ``time_wall_s``, the wall time since the
        previous step was logged (evaluations, checkpoints and overlapped generation included)."""
        now = time.time()
        record.update(time=now, time_wall_s=now - self.last_write)
        self.last_write = now
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self._scalars("train", record, record["step"])
        controller.report.remote(record)
        line = (
            f"step {record['step']} [{record['stage']}] s={record['sync_interval']} v={record['learner_version']} "
            f"reward={record['reward_mean']:.3f} loss={record['loss']:.4f} len={record['response_len_mean']:.1f} "
            f"stale<={record['staleness_max']} gen={record['time_gen_s']:.1f}s train={record['time_train_s']:.1f}s "
            f"sync={record['time_sync_s']:.1f}s"
        )
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(line.split("] ", 1)[1])
        else:
            print(line, flush=True)

    def eval(self, step: int, result: dict[str, float], controller) -> None:
        """One evaluation: a line of eval.jsonl, the Controller's eval gauges, the console."""
        record = {"step": step, **result}
        with open(self.path.with_name("eval.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        self._scalars(eval_prefix(result).rstrip("_"), record, step)
        controller.report_eval.remote(record)
        search = f" beam {result['beam']}" if "beam" in result else ""
        print(
            f"eval{search} at step {step} (policy v{result['policy_version']}): accuracy {result['accuracy']:.3f} "
            f"+- {result['accuracy_stderr']:.3f} over {result['questions']} questions, "
            f"boxed {result['boxed_rate']:.2f}, len {result['response_len_mean']:.1f}"
            + "".join(f", {k} {result[k]:.3f}" for k in VALUE_COLUMNS if k in result),
            flush=True,
        )

    def event(self, text: str) -> None:
        print(f"[controller] {text}", flush=True)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if self.bar is not None:
            self.bar.close()


def live_settings(controller, log: MetricsLog) -> dict:
    """The Controller's settings (``sync_interval``, ``live``), read at a step boundary; waits while paused."""
    while True:
        settings, events = ray.get([controller.settings.remote(), controller.drain_events.remote()])
        for e in events:
            log.event(e)
        if not settings["paused"]:
            return settings
        time.sleep(0.5)


GRAFANA_DASHBOARD = Path(__file__).with_name("grafana") / "syncrl.json"


def ray_session_dir() -> str | None:
    """The session directory of the Ray node this driver is attached to (None without Ray)."""
    try:
        return ray._private.worker.global_worker.node.get_session_dir_path()
    except Exception:  # not connected, or a Ray client driver
        return None


def install_grafana_dashboard(session_dir: str | None = None) -> Path | None:
    """Copy the syncrl Grafana dashboard (launch/grafana/syncrl.json) into the dashboards folder of
    the Ray session's Grafana provisioning (``metrics/grafana/provisioning/dashboards/default.yml``,
    which the Ray dashboard writes when it starts and Grafana started with Ray's grafana.ini reads):
    Grafana lists it beside Ray's own dashboards. ``session_dir``: the head's session directory
    (default: the one of the node this driver runs on, the head's in ``ray job submit``). Returns
    where it went, or None when the session has no Grafana provisioning (no dashboard, or a driver
    that does not see the head's disk): nothing to do there."""
    import os
    import shutil

    import yaml

    session_dir = session_dir or ray_session_dir()
    if not session_dir:
        return None
    provisioning = Path(session_dir, "metrics", "grafana", "provisioning", "dashboards", "default.yml")
    if not provisioning.is_file():  # written after Ray clears the folder at dashboard start: wait for it
        return None
    folders = [
        p["options"]["path"]
        for p in (yaml.safe_load(provisioning.read_text()) or {}).get("providers", [])
        if (p.get("options") or {}).get("path")
    ]
    folder = Path(
        folders[0]
        if folders
        else os.environ.get(
            "RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR", Path(session_dir, "metrics", "grafana", "dashboards")
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(GRAFANA_DASHBOARD, folder / "syncrl_grafana_dashboard.json"))
