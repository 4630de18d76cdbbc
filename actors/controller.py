"""The Controller: a named actor that holds a run's live settings and its latest status.

``syncrl ctl`` reaches it from any shell attached to the cluster. The driver reads the settings
at every step boundary, so a new sync interval applies from the next step; it reports each
step's metrics here, and the Controller exports them as Ray metrics (Prometheus, shown with
the Ray dashboard).
"""

from __future__ import annotations

import math
import time
from typing import Any

import ray

from rollout.records import interval_text, parse_interval

NAMESPACE = "syncrl"
DEFAULT_NAME = "syncrl-controller"
GAUGES = ("reward_mean", "loss", "entropy_mean", "staleness_mean", "staleness_max", "sync_interval",
          "policy_version", "response_len_mean", "tokens_per_s", "time_gen_s", "time_train_s", "time_sync_s", "kl",
          "value_loss", "policy_bellman_loss", "value_s0_mean", "value_s0_abs_err", "kl_reg_term")  # fmt: skip


class Controller:
    def __init__(self, sync_interval: float, run_name: str = "", export_metrics: bool = True):
        self.sync_interval = sync_interval
        self.paused = False
        self.run_name = run_name
        self.status: dict[str, Any] = {"step": 0}
        self.events: list[str] = []
        self._pending: list[str] = []
        self.gauges, self.eval_gauges = {}, {}
        self.last_eval: dict[str, Any] = {}
        self.restarts: dict[str, int] = {}  # per actor kind
        self.restart_counter = None
        if export_metrics:
            from ray.util.metrics import Counter, Gauge

            self.restart_counter = Counter("syncrl_restarts", description="actors replaced (kind: rollout, reward, learner)",
                                           tag_keys=("run", "kind"))  # fmt: skip

            self.gauges = {k: Gauge(f"syncrl_{k}", description=k, tag_keys=("run",)) for k in GAUGES}
            self.eval_gauges = {k: Gauge(f"syncrl_eval_{k}", description=f"eval {k}", tag_keys=("run",))
                                for k in ("accuracy", "boxed_rate")}  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {"sync_interval": self.sync_interval, "paused": self.paused}

    def set_sync_interval(self, interval: Any) -> float:
        value = parse_interval(interval)  # the same validation as a recipe's sync.interval
        self._event(f"sync_interval {interval_text(self.sync_interval)} -> {interval_text(value)} (from the next step)")
        self.sync_interval = value
        return value

    def pause(self) -> None:
        self.paused = True
        self._event("paused (at the next step boundary)")

    def resume(self) -> None:
        self.paused = False
        self._event("resumed")

    def report(self, metrics: dict[str, Any]) -> None:
        self.status = dict(metrics)
        for key, gauge in self.gauges.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                gauge.set(float(value), tags={"run": self.run_name})

    def report_eval(self, result: dict[str, Any]) -> None:
        self.last_eval = dict(result)
        for key in ("accuracy", "boxed_rate"):
            if key in self.eval_gauges:
                self.eval_gauges[key].set(float(result[key]), tags={"run": self.run_name})

    def report_restart(self, event: dict[str, Any]) -> None:
        """An actor was replaced (``actors.faults.Supervisor`` reports it)."""
        self.restarts[event["kind"]] = self.restarts.get(event["kind"], 0) + 1
        if self.restart_counter is not None:
            self.restart_counter.inc(tags={"run": self.run_name, "kind": event["kind"]})
        self._event(f"restart: {event['actor']} {event['cause']}, replaced in {event['recovery_s']:.1f} s")

    def get_status(self) -> dict[str, Any]:
        return {"run": self.run_name, **self.settings(), "sync_interval": interval_text(self.sync_interval),
                "status": self.status, "last_eval": self.last_eval, "restarts": self.restarts,
                "events": self.events[-10:]}  # fmt: skip

    def drain_events(self) -> list[str]:
        """Events since the last call (the driver logs them)."""
        events, self._pending = self._pending, []
        return events

    def _event(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.events.append(line)
        self._pending.append(line)


ControllerActor = ray.remote(num_cpus=0)(Controller)


def start_controller(name: str, sync_interval: float, run_name: str, export_metrics: bool = True):
    """Create the run's named Controller (one per name on a cluster: a second run needs its own)."""
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    else:
        raise RuntimeError(f"a Controller named {name!r} already runs on this cluster: is another syncrl job running? "
                           "Give this run another logging.controller_name.")  # fmt: skip
    return ControllerActor.options(name=name, namespace=NAMESPACE, lifetime=None).remote(
        sync_interval, run_name, export_metrics
    )
