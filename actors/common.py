"""What every syncrl actor has beyond its plain class."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import ray

from actors.faults import ActorFailure, Calls, Supervisor
from actors.placement import Placement, free_port

T = TypeVar("T")


def serialize_tensors_zero_copy() -> None:
    """In this process, put torch tensors in the object store as their raw bytes (a numpy array,
    which Ray stores as one buffer and a reader maps without a copy) instead of pickling them:
    this halved an object-store push of SmolLM2 here (1.25 s -> 0.76 s). A reader gets CPU
    tensors (a GPU tensor's bytes are copied to the host first). The learner ranks call
    it, since they put the weights. What Ray's RAY_ENABLE_ZERO_COPY_TORCH_TENSORS does, without
    giving the actor a runtime environment of its own, which no prestarted worker process fits."""
    import torch

    ray.util.register_serializer(torch.Tensor, serializer=_tensor_bytes, deserializer=_tensor_from_bytes)


def keep_freed_memory() -> None:
    """Make glibc's malloc keep what this process frees for its next allocations: no mmap of its
    own for big blocks, no trimming of the heap. By default glibc maps every block over 32 MB (a
    micro-batch's logits, the embedding's gradient, a received weight) fresh from the kernel and
    unmaps it when it is freed, so each step page-faults its big tensors in again (the faults and
    the step time with and without: ``python bench/memory.py``). The process's resident memory
    stays at its peak instead, as under a caching allocator (CUDA's, jemalloc, tcmalloc). Does
    nothing where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, -1)  # -1: never trim


def _tensor_bytes(tensor):
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype, bf16 included
    return flat.numpy(), str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)


def _tensor_from_bytes(state):
    import torch

    data, dtype, shape = state
    return torch.from_numpy(data).view(getattr(torch, dtype)).reshape(shape)


class ActorMixin:
    """Run a function inside the actor's process on the actor's object: ``actor.call.remote(fn, ...)``.

    Lets a piece of the system that spans actors (a weight transport, a test probe) keep its
    code in one module instead of in the classes it visits. An actor that computes on the CPU (it
    holds no GPU) keeps the memory it frees (``keep_freed_memory``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not ray.get_gpu_ids():
            keep_freed_memory()
        super().__init__(*args, **kwargs)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self, *args, **kwargs)

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def free_port(self) -> int:
        """A TCP port free on this actor's node right now (for a rendezvous it hosts)."""
        return free_port()

    def startup(self) -> dict | None:
        """The worker's start-up phases (``rollout.phases.Phases.record``) and when its process
        started (before its group did: a process Ray had prestarted), None if it keeps none."""
        from rollout.phases import process_start

        phases = getattr(self, "phases", None)
        return {**phases.record(), "process": process_start()} if phases is not None else None

    def unseen(self, paths: dict[str, str], marker: tuple[str, str] | None = None) -> list[str]:
        """Which of ``paths`` (what -> path) this actor's node cannot see, and whether it reads
        ``marker`` (path, content): a file the driver just wrote, so that a folder of the same name
        on another filesystem does not pass for the driver's."""
        import os

        missing = [f"{what} {path}" for what, path in paths.items() if not os.path.exists(path)]
        if marker is not None:
            try:
                seen = open(marker[0]).read() == marker[1]
            except OSError:
                seen = False
            if not seen:
                missing.append(f"the driver's file {marker[0]}")
        return missing


class ActorGroup:
    """A group of actors of one ``kind`` (``workers``, named ``kind-i``) under a ``Supervisor``.

    A subclass starts worker i in ``_start(i)``; ``replace(i, cause)`` charges the restart budget,
    kills worker i and starts it again (``_restore(i)`` then brings the new one to the state the
    group's work needs). ``call(submit)`` runs one call per worker through ``Calls``, which
    replaces a worker that dies or hangs and runs its call again. ``shutdown`` stops them all.
    """

    kind = "actor"
    workers: list
    supervisor: Supervisor | None = None
    placement: Placement | None = None  # when the group's workers hold bundles

    def ask(self, count: int) -> Any:
        """The ``Ask`` of ``count`` workers placed in a placement group, or None (placed anywhere)."""
        return None

    def name(self, i: int) -> str:
        return f"{self.kind}-{i}"

    def _start(self, i: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} cannot start a replacement worker")

    def _restore(self, i: int, version: int | None) -> None:
        """Bring replacement worker i up to date (the rollout group loads the weights of
        ``version``, by default those the engines hold: it alone has ``held``/``update_worker``, which
        ``Calls`` uses for calls made with a version)."""

    def start_workers(self, count: int, supervisor: Supervisor | None = None, wait: bool = True) -> None:
        """Start the workers; ``wait=False``: return at once (``wait_ready`` several groups together)."""
        self.supervisor = supervisor or Supervisor()
        self.submitted = time.time()  # start-up phases (startup.json) count from here
        ask = self.ask(count)
        if ask is not None and self.placement is None:
            self.placement = Placement(f"{self.kind} group", ask)
        self.workers = [self._start(i) for i in range(count)]
        self.replacements = [0] * count
        if wait:
            wait_ready(self)

    def calls(self, submit: Callable[[Any, int], Any], indices: list[int] | None = None, version: int | None = None):
        """Start ``submit(worker, i)`` on every worker (or those of ``indices``): a ``Calls``."""
        return Calls(self, submit, list(range(len(self.workers))) if indices is None else indices, version)

    def call(self, submit: Callable[[Any, int], Any], indices: list[int] | None = None) -> list:
        return self.calls(submit, indices).collect()

    def is_dead(self, i: int) -> bool:
        try:
            ray.get(self.workers[i].__ray_ready__.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:  # alive, busy
            return False
        return False

    def replace(self, i: int, cause: str, version: int | None = None, restore: bool = True) -> None:
        """Worker i died or hung: charge the budget (which raises when it is spent), replace it
        (with the weights of ``version``, by default those the workers hold; ``restore`` False: as
        started, for a caller that brings it up to date itself)."""
        failure = ActorFailure(self.kind, self.name(i), cause)
        self.supervisor.charge(failure)
        t0 = time.perf_counter()
        self.restart(i)
        if restore:
            self._restore(i, version)
        self.supervisor.record(failure, time.perf_counter() - t0)

    def restart(self, i: int) -> None:
        """Kill worker i and start it afresh (not counted: ``replace`` counts)."""

        ray.kill(self.workers[i])
        self.workers[i] = self._start(i)
        self.replacements[i] += 1
        timeout = self.supervisor.timeout(self.kind)
        try:
            ray.get(self.workers[i].__ray_ready__.remote(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"{self.name(i)}: its replacement did not start within {timeout:g} s "
                "(is there room for it on the cluster? `ray status` shows what is free)"
            ) from None

    def probe(self) -> None:
        """Ping every worker; replace the dead ones (the driver calls this between steps)."""
        self.call(lambda w, i: w.__ray_ready__.remote())

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self.placement is not None:  # its bundles' resources go back to the cluster
            self.placement.remove()
            self.placement = None


def wait_ready(*groups: Any) -> None:
    """Wait until every actor of the groups (started together) is up, each group's placement
    first, within ``fault_tolerance.start_timeout_s``; if one fails or does not start in time,
    stop them all (nothing is left running) and raise an error naming it."""

    try:
        timeout = groups[0].supervisor.start_timeout if groups else None
        for group in groups:
            if group.placement is not None:
                group.placement.wait(timeout)
        refs = {w.__ray_ready__.remote(): group.name(i) for group in groups for i, w in enumerate(group.workers)}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        if pending:
            names = ", ".join(refs[r] for r in pending)
            raise TimeoutError(
                f"{names} did not start within {timeout:g} s (fault_tolerance.start_timeout_s); "
                "`ray status` shows whether the cluster has room for them"
            )
        ray.get(ready)  # raises the error of an actor whose constructor failed
    except BaseException:
        for group in groups:
            group.shutdown()
        raise


def split_evenly(items: list[T], parts: int) -> list[list[T]]:
    """Contiguous chunks whose sizes differ by at most one (empty chunks at the end)."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        chunks.append(items[start:end])
        start = end
    return chunks


def join(parts: list[list[T]]) -> list[T]:
    return [s for part in parts for s in part]
