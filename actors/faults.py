"""Failures of actors: every wait has a timeout, a dead or hung actor is named, and it is replaced
while the run's restart budget lasts.

- ``Calls``: one call per worker of a group, in flight. ``collect()`` waits for them; a worker
  that died (Ray reports it at once) or gave no answer within the timeout is handed to its
  group's ``replace`` and its call runs again on the replacement, with the same arguments (the
  same seeds: the results are those the dead worker would have returned).
- ``Supervisor``: the budgets (``fault_tolerance``), the timeouts, and the restart events that
  the driver writes into metrics.jsonl. A group without one (tests, ``syncrl eval``) replaces
  nothing: the first failure raises ``ActorFailure`` naming the actor.

An exception raised *inside* a call (a bug, bad input) is not a failure of the actor: it
propagates unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from rollout.settings import FaultToleranceConfig

# What says an actor is gone: its process died, its node died, or the object it returned is lost.
DEATHS = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)


class ActorFailure(RuntimeError):
    """An actor died or hung. ``kind``: rollout, reward or learner; ``name``: e.g. rollout-0."""

    def __init__(self, kind: str, name: str, cause: str):
        super().__init__(f"{name} {cause}")
        self.kind, self.name, self.cause = kind, name, cause


class RestartBudgetSpent(RuntimeError):
    """An actor failed and its kind's (or the run's) restart budget is spent: the run stops."""

    def __init__(self, failure: ActorFailure, budget: str, used: int):
        super().__init__(
            f"{failure.name} {failure.cause}; no restart left: fault_tolerance.{budget} is {used} "
            f"and {used} restart(s) were used"
        )
        self.failure = failure


def death_cause(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"died ({type(err).__name__}: {first[:200]})"


class Supervisor:
    """Budgets and timeouts of one run (``fault_tolerance``; None: no timeouts, no restarts), and its events."""

    BUDGETS = {"rollout": "rollout_restarts", "reward": "reward_restarts", "learner": "learner_restarts"}
    TIMEOUTS = {"rollout": "generate_timeout_s", "reward": "score_timeout_s", "learner": "train_timeout_s"}

    def __init__(self, cfg: FaultToleranceConfig | None = None, on_event: Callable[[dict], None] | None = None):
        self.cfg, self.on_event = cfg, on_event
        self.used = {kind: 0 for kind in self.BUDGETS}
        self.events: list[dict] = []  # since the last drain (the driver's step record takes them)

    def timeout(self, kind: str) -> float | None:
        return None if self.cfg is None else getattr(self.cfg, self.TIMEOUTS[kind])

    @property
    def start_timeout(self) -> float | None:
        """How long actor groups may take to be placed and to start."""
        return None if self.cfg is None else self.cfg.start_timeout_s

    def charge(self, failure: ActorFailure) -> None:
        """Count a restart of ``failure``'s actor, or raise ``RestartBudgetSpent`` (``ActorFailure``
        itself without a budget configured)."""
        if self.cfg is None:
            raise failure
        kind_budget = getattr(self.cfg, self.BUDGETS[failure.kind])
        if self.used[failure.kind] >= kind_budget:
            raise RestartBudgetSpent(failure, self.BUDGETS[failure.kind], self.used[failure.kind])
        if sum(self.used.values()) >= self.cfg.max_restarts:
            raise RestartBudgetSpent(failure, "max_restarts", sum(self.used.values()))
        self.used[failure.kind] += 1

    def record(self, failure: ActorFailure, seconds: float, **extra: Any) -> None:
        event = {
            "actor": failure.name,
            "kind": failure.kind,
            "cause": failure.cause,
            "recovery_s": round(seconds, 2),
            **extra,
        }
        self.events.append(event)
        print(
            f"[restart] {failure.name} {failure.cause}: replaced in {seconds:.1f} s "
            f"({self.used[failure.kind]} {failure.kind} restart(s) so far)",
            flush=True,
        )
        if self.on_event is not None:
            self.on_event(event)

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class Calls:
    """Calls in flight on a group's workers, one per worker index (see the module docstring).

    ``version``: the weights version the calls need (a generation started before a push needs
    the weights from before it): a re-run on a replacement first loads that version, then the
    version the engines hold now.
    """

    def __init__(
        self, group: Any, submit: Callable[[Any, int], ray.ObjectRef], indices: list[int], version: int | None = None
    ):
        self.group, self.submit, self.version = group, submit, version
        self.refs: dict[int, ray.ObjectRef] = {}
        self.started: dict[int, int] = {}  # worker index -> the group's replacement count at submit
        for i in indices:
            self._submit(i)

    def _submit(self, i: int) -> None:
        self.refs[i] = self.submit(self.group.workers[i], i)
        self.started[i] = self.group.replacements[i]

    def collect(self, fetch: Callable[[int], bool] = lambda i: True) -> list:
        """The results in index order; ``fetch(i)`` False: wait for worker i's call, return None
        (its result stays in the object store, e.g. weights another actor reads)."""
        timeout = self.group.supervisor.timeout(self.group.kind)
        deadline = {i: None if timeout is None else time.monotonic() + timeout for i in self.refs}
        results, pending, reloaded = {}, dict(self.refs), set()
        while pending:
            due = [deadline[i] for i in pending if deadline[i] is not None]
            wait = None if not due else max(0.0, min(due) - time.monotonic())
            ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=wait)
            if not ready:  # the earliest deadline passed: that worker hangs
                i = min((i for i in pending if deadline[i] is not None), key=deadline.get)
                cause = f"gave no answer within {timeout:g} s (hung)"
            else:
                i = next(i for i, ref in pending.items() if ref == ready[0])
                try:
                    results[i] = ray.get(ready[0]) if fetch(i) else None
                    del pending[i]
                    continue
                except DEATHS as err:
                    if self.group.replacements[i] == self.started[i] and not self.group.is_dead(i):
                        raise  # an argument's producer died, not this worker
                    cause = death_cause(err)
            if self.group.replacements[i] == self.started[i]:  # not replaced yet (by another call)
                self.group.replace(i, cause, self.version)
            elif self.version is not None:
                self.group.update_worker(i, self.version)
            reloaded.add(i)
            self._submit(i)
            pending[i] = self.refs[i]
            deadline[i] = None if timeout is None else time.monotonic() + timeout
        for i in reloaded:  # back to the weights the engines hold now
            if self.version is not None and self.version != self.group.held():
                self.group.update_worker(i, self.group.held())
        return [results[i] for i in sorted(results)]
