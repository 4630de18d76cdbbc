"""A persistent child process that runs one grading function under a wall-clock time limit.

Why a process: math-verify's own time limit is ``signal.alarm``, which only works in the main
thread of the main interpreter (not in Ray actor threads, not in thread pools) and cannot stop
a long computation inside C code (a big-integer power holds the interpreter for its whole
length). A child process can always be stopped: the parent sends one request at a time over a
pipe, waits for the reply at most ``timeout_s`` seconds, and on expiry kills the child and
starts a fresh one for the next request. The child lives across requests, so a batch costs one
pipe round trip per answer, not a process start.

Protocol: one JSON object per line. The child first writes ``{"ready": true}``; then each
request ``{"args": [...]}`` gets ``{"ok": true, "value": ...}`` or ``{"ok": false, "error": "..."}``.
The child is ``python -m rewards.grader_process MODULE:FUNCTION PARENT_PID``; it runs the
module's ``warmup()`` (if any) before it says ready, and exits when its stdin closes or its
parent dies, so no grader outlives the worker that started it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the `rewards` package


class GraderError(Exception):
    """The grading function raised in the child, or the child died or could not start."""


class GraderTimeout(Exception):
    """A request took longer than its time limit; the child was killed."""


class GraderProcess:
    """Parent side: owns one child process that applies ``target`` ("module:function") to requests.

    Not thread-safe: callers serialize their requests (``MathVerifier`` holds a lock).
    """

    def __init__(self, target: str, startup_timeout_s: float = 60.0, memory_limit_mb: int | None = None) -> None:
        self.target = target
        self.startup_timeout_s = startup_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.starts = 0  # how many children were started (1 + restarts after timeouts and crashes)
        self._proc: subprocess.Popen | None = None
        self._buffer = b""

    @property
    def pid(self) -> int | None:
        """The running child's process id, or None when no child runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start a child (if none runs) and wait until it has imported its function."""
        if self.pid is not None:
            return
        self.kill()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-m", "rewards.grader_process", self.target, str(os.getpid())]
        if self.memory_limit_mb:
            command.append(str(self.memory_limit_mb))
        self._proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=PROJECT_ROOT, env=env, bufsize=0
        )
        self.starts += 1
        self._buffer = b""
        try:
            reply = self._read_reply(time.monotonic() + self.startup_timeout_s)
        except GraderTimeout:
            self.kill()
            raise GraderError(f"grader process did not start within {self.startup_timeout_s} s") from None
        if reply != {"ready": True}:
            self.kill()
            raise GraderError(f"grader process sent {reply!r} instead of ready")

    def call(self, *args: Any, timeout_s: float) -> Any:
        """``target(*args)`` in the child; raises GraderTimeout after ``timeout_s`` seconds
        (the child is then killed) and GraderError if the function raised or the child died."""
        self.start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"args": list(args)}).encode() + b"\n")
        except (BrokenPipeError, OSError):
            self.kill()
            raise GraderError("grader process died before the request was sent") from None
        reply = self._read_reply(time.monotonic() + timeout_s)
        if not reply.get("ok"):
            raise GraderError(str(reply.get("error", "unknown error")))
        return reply["value"]

    def kill(self) -> None:
        """Stop the child now (SIGKILL) and reap it; the next request starts a fresh one."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    close = kill

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:
            pass

    def _read_reply(self, deadline: float) -> dict:
        """Read one JSON line from the child before ``deadline`` (time.monotonic)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise GraderTimeout()
            if not poller.poll(max(1, int(remaining * 1000))):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # end of file: the child exited (crash, out of memory, killed)
                code = self._proc.wait()
                self.kill()
                raise GraderError(f"grader process exited with code {code}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


class GraderBacked:
    """What a reward function that grades in one ``GraderProcess`` (``_grader``), under a lock
    (``_lock``), with counters (``_counts``) shares: start it now, report, stop it."""

    _grader: GraderProcess
    _lock: Any
    _counts: dict[str, int]

    def start(self) -> None:
        """Start the grader process now rather than at the first answer (raises GraderError)."""
        with self._lock:
            self._grader.start()

    def stats(self) -> dict[str, int]:
        """The counters and the grader process's restarts (after timeouts and crashes)."""
        with self._lock:
            return {**self._counts, "restarts": max(0, self._grader.starts - 1)}

    def close(self) -> None:
        with self._lock:
            self._grader.kill()


def _exit_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (even while it computes)."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass  # not Linux: the child still exits when its stdin closes
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def serve(target: str, parent_pid: int, memory_limit_mb: int | None = None) -> None:
    """Child side: import ``target``, say ready, then answer requests until stdin closes."""
    import importlib

    _exit_with_parent(parent_pid)
    if memory_limit_mb:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything the function prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        replies.write(json.dumps(message).encode() + b"\n")

    module_name, _, function_name = target.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, function_name)
    if hasattr(module, "warmup"):  # heavy imports and caches, before the first timed request
        module.warmup()
    send({"ready": True})
    for line in sys.stdin.buffer:
        try:
            reply = {"ok": True, "value": function(*json.loads(line)["args"])}
        except Exception as err:  # noqa: BLE001 - any failure of the function is reported, not fatal
            reply = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        try:
            send(reply)
        except TypeError as err:  # a value JSON cannot carry
            send({"ok": False, "error": f"TypeError: {err}"})


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
