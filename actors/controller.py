"""The Controller: a named actor that holds a run's live settings and its latest status.

``syncrl ctl`` reaches it from any shell attached to the cluster. The driver reads the settings
at every step boundary, so a new sync interval applies from the next step; it reports each
step's metrics here, and the Controller exports them as Ray metrics (Prometheus, shown with
the Ray dashboard).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

import ray

from rollout.records import interval_text, parse_interval

NAMESPACE = "syncrl"
# Every numeric field of a step record (launch.metrics.step_record) is the gauge ``syncrl_<field>``
# (Prometheus: ``ray_syncrl_<field>``), and of an evaluation ``syncrl_eval_<key>`` (value-guided beam
# search: ``syncrl_eval_beam_<key>``), tagged ``run``. These have a description; the others (the
# algorithm's loss terms, the batch counts, the per-source fields) are made when a step first
# reports them. A per-source field ``<field>/<source>`` (``reward_mean/gsm8k``) is the gauge
# ``syncrl_<field>_<source>``, its source's characters but [a-zA-Z0-9_] written ``_`` (``metric_name``).
DESCRIPTIONS = {
    "step": "steps done",
    "learner_version": "the learner's weights version (steps trained)",
    "engine_version": "version the engines hold",
    "sync_interval": "learner steps between weight pushes (0: inf, offline; -1: auto)",
    "pushed_after": "on a step that pushed: learner steps since the previous push (0: no push)",
    "staleness_mean": "mean staleness of the step's samples (learner version - generating version)",
    "staleness_max": "largest staleness of the step's samples",
    "reward_mean": "mean reward of the step's samples",
    "response_len_mean": "mean response length (tokens)",
    "truncated_frac": "share of responses cut at max_new_tokens",
    "grader_timeouts": "samples scored 0 after the grader's time limit",
    "entropy_mean": "mean token entropy",
    "loss": "training loss",
    "kl": "KL to the reference",
    "drift_kl": "drift of the engines' policy from the learner's: mean k3 over generated tokens (_s<k>: staleness k)",
    "drift_ratio_mean": "mean importance ratio learner/engine over generated tokens",
    "drift_ratio_max": "largest importance ratio learner/engine",
    "drift_ess": "effective sample size per token of the importance ratios (1: no drift)",
    "drift_clip_frac": "share of generated tokens with an importance ratio outside the clip range",
    "sequences": "sequences trained",
    "tokens_generated": "response tokens generated",
    "tokens_trained": "tokens the learner ran forward and backward",
    "trained": "1 when the step trained",
    "time_gen_s": "generation time (s)",
    "time_score_s": "scoring time (s)",
    "time_train_s": "training time (s)",
    "time_sync_s": "weight push time (s)",
    "tokens_per_s": "tokens trained per second of the step",
    "time": "Unix time the step was logged",
    "time_wall_s": "wall time since the previous step (s)",
}
GAUGES = tuple(DESCRIPTIONS)  # the step gauges every run sets (the README names some of them)
EVAL_GAUGES = (
    "accuracy",
    "accuracy_stderr",
    "boxed_rate",
    "correct_any_format",
    "truncated_rate",
    "response_len_mean",
    "questions",
    "policy_version",  # of an evaluation: the engines' version it graded
    "time_s",
)


# The per-source fields of a step record (launch.metrics.step_record: ``<field>/<source>``).
SOURCE_DESCRIPTIONS = {
    "reward_mean": "mean reward of the step's samples from source",
    "response_len_mean": "mean response length (tokens) of the step's samples from source",
    "samples": "samples of the step from source",
}


def metric_name(field: str) -> str:
    """A record field as a Prometheus metric name part: ``pass@1`` -> ``pass_at_1``, per-source
    ``reward_mean/my-task`` -> ``reward_mean_my_task`` (every character but [a-zA-Z0-9_] as ``_``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", field.replace("@", "_at_"))


def scalar_tag(field: str) -> str:
    """A record field as a TensorBoard / wandb tag (after ``train/`` or ``eval/``): ``metric_name``
    of each ``/``-separated part, so ``pass@1`` -> ``pass_at_1``, ``reward_mean/my-task`` ->
    ``reward_mean/my_task``."""
    return "/".join(metric_name(part) for part in field.split("/"))


def numeric_fields(record: dict[str, Any]) -> dict[str, float]:
    """Every numeric field of a step or eval record, by its key, as a float: bools as 0/1,
    ``sync_interval`` "inf" as 0 (Ray drops a non-finite gauge value) and "auto" as -1. Text, lists, None and NaN
    (e.g. the loss of a step that did not train) are left out: the gauge keeps its last value."""
    values = {}
    for key, value in record.items():
        if key == "sync_interval" and value in ("inf", "auto"):
            value = 0 if value == "inf" else -1
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[key] = float(value)
    return values


def metric_values(record: dict[str, Any], name=metric_name) -> dict[str, float]:
    """``numeric_fields`` by metric name (``name``: ``metric_name``, or ``scalar_tag`` for the
    TensorBoard and wandb tags)."""
    return {name(key): value for key, value in numeric_fields(record).items()}


def describe(field: str) -> str:
    """A step record field's gauge description (a per-source field names its source)."""
    base, _, source = field.partition("/")
    if source and base in SOURCE_DESCRIPTIONS:
        return f"{SOURCE_DESCRIPTIONS[base]} {source}"
    return DESCRIPTIONS.get(metric_name(field), metric_name(field))


def eval_prefix(result: dict[str, Any]) -> str:
    """``eval_``, or ``eval_beam_`` for a value-guided beam search's result."""
    return "eval_beam_" if "beam" in result else "eval_"


class Controller:
    """``live``: the learning knobs set so far (``syncrl ctl set``; a resumed run's); ``check(key,
    value, live)`` gives a knob's typed value or raises naming it (launch.live.LiveSettings.check)."""

    def __init__(
        self,
        sync_interval: float,
        run_name: str = "",
        export_metrics: bool = True,
        live: dict[str, Any] | None = None,
        check: Callable[[str, Any, dict], Any] | None = None,
    ):
        self.sync_interval = sync_interval
        self.live, self.check = dict(live or {}), check
        self.paused = False
        self.run_name = run_name
        self.status: dict[str, Any] = {"step": 0}
        self.events: list[str] = []
        self._pending: list[str] = []
        self.export_metrics = export_metrics
        self.gauges: dict[str, Any] = {}  # metric name (syncrl_...) -> ray.util.metrics.Gauge
        self.last_eval: dict[str, Any] = {}
        self.evals: dict[str, dict[str, Any]] = {}  # the last result per eval_prefix, its gauges set again each step
        self.restarts: dict[str, int] = {}  # per actor kind
        self.restart_counter = None
        if export_metrics:
            from ray.util.metrics import Counter

            self.restart_counter = Counter(
                "syncrl_restarts",
                description="actors replaced (kind: rollout, reward, learner)",
                tag_keys=("run", "kind"),
            )
            for key in GAUGES:
                self._gauge(f"syncrl_{key}", DESCRIPTIONS[key])
            for key in EVAL_GAUGES:
                self._gauge(f"syncrl_eval_{key}", f"eval {key}")

    def _gauge(self, name: str, description: str):
        if name not in self.gauges:
            from ray.util.metrics import Gauge

            self.gauges[name] = Gauge(name, description=description, tag_keys=("run",))
        return self.gauges[name]

    def _set_gauges(self, prefix: str, record: dict[str, Any]) -> None:
        """Set ``syncrl_<prefix><field>`` to each numeric field of ``record`` (``metric_values``;
        a per-source ``<field>/<source>``: ``syncrl_<prefix><field>_<source>``)."""
        if not self.export_metrics:
            return
        for field, value in numeric_fields(record).items():
            key = metric_name(field)
            description = describe(field) if not prefix else f"{prefix.rstrip('_').replace('_', ' ')} {field}"
            self._gauge(f"syncrl_{prefix}{key}", description).set(value, tags={"run": self.run_name})

    def settings(self) -> dict[str, Any]:
        return {"sync_interval": self.sync_interval, "paused": self.paused, "live": dict(self.live)}

    def set(self, key: str, value: Any) -> Any:
        """A learning knob, from the next step; an error (nothing changed) when it cannot be set."""
        if self.check is None:
            raise ValueError("this run takes no live settings")
        typed = self.check(key, value, self.live)
        self._event(f"{key} {self.live.get(key, '(recipe)')} -> {typed} (from the next step)")
        self.live[key] = typed
        return typed

    def set_sync_interval(self, interval: Any) -> int | str:
        value = parse_interval(interval)  # the same validation as a recipe's sync.interval
        self._event(f"sync_interval {interval_text(self.sync_interval)} -> {interval_text(value)} (from the next step)")
        self.sync_interval = value
        return interval_text(value)

    def pause(self) -> None:
        self.paused = True
        self._event("paused (at the next step boundary)")

    def resume(self) -> None:
        self.paused = False
        self._event("resumed")

    def report(self, metrics: dict[str, Any]) -> None:
        """A step's record: the status, and every numeric field as a gauge (set again each step)."""
        self.status = dict(metrics)
        self._set_gauges("", metrics)
        for prefix, result in self.evals.items():  # a gauge not set for ~60 s drops out of a scrape
            self._set_gauges(prefix, result)

    def report_eval(self, result: dict[str, Any]) -> None:
        """An evaluation's record (with its ``step``): every numeric key as ``syncrl_eval_<key>``."""
        self.last_eval = self.evals[eval_prefix(result)] = dict(result)
        self._set_gauges(eval_prefix(result), result)

    def report_restart(self, event: dict[str, Any]) -> None:
        """An actor was replaced (``actors.faults.Supervisor`` reports it)."""
        self.restarts[event["kind"]] = self.restarts.get(event["kind"], 0) + 1
        if self.restart_counter is not None:
            self.restart_counter.inc(tags={"run": self.run_name, "kind": event["kind"]})
        self._event(f"restart: {event['actor']} {event['cause']}, replaced in {event['recovery_s']:.1f} s")

    def get_status(self) -> dict[str, Any]:
        return {
            "run": self.run_name,
            **self.settings(),
            "sync_interval": interval_text(self.sync_interval),
            "status": self.status,
            "last_eval": self.last_eval,
            "restarts": self.restarts,
            "events": self.events[-10:],
        }

    def drain_events(self) -> list[str]:
        """Events since the last call (the driver logs them)."""
        events, self._pending = self._pending, []
        return events

    def _event(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.events.append(line)
        self._pending.append(line)


ControllerActor = ray.remote(num_cpus=0)(Controller)


def start_controller(
    name: str,
    sync_interval: float,
    run_name: str,
    export_metrics: bool = True,
    live: dict[str, Any] | None = None,
    check: Callable[[str, Any, dict], Any] | None = None,
):
    """Create the run's named Controller (one per name on a cluster: a second run needs its own)."""
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    else:
        raise RuntimeError(
            f"a Controller named {name!r} already runs on this cluster: is another syncrl job running? "
            "Give this run another logging.controller_name."
        )
    return ControllerActor.options(name=name, namespace=NAMESPACE, lifetime=None).remote(
        sync_interval, run_name, export_metrics, live, check
    )
