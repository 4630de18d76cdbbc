"""Reward functions written in Python (a route of ``kind: python``).

A function is named ``"pkg.module:name"`` (importable from the working directory) or
``"path/to/file.py:name"`` and called on a batch with TRL's convention::

    name(prompts, completions, **columns) -> list[float | None]

``prompts``: each sample's prompt (its last user turn), ``completions``: the responses;
``columns``: lists, one value per sample, of ``answer``, ``source``, ``prompt_messages`` (the
prompt's chat) and every other column of the sample's data record. A None says the function does
not score that sample. A route may list several functions; a sample's reward is their weighted
sum over the functions that scored it (``weights``, TRL's ``reward_weights``).

The function runs in the reward worker's grader process (``rewards.grader_process``), with the
route's time limit per call: a function that hangs is killed with its process, as math-verify
is. An exception, a timeout, a result of the wrong length, a value that is not a finite number,
or a sample no function scored is an error naming the function, the sample and the cause
(``RewardFunctionError``), which stops the run; with ``on_error: zero`` the samples it concerns
score 0 instead, and are counted (``errors``) and marked in their ``reward_info``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewards.base import RewardFunction, RewardResult
from rewards.grader_process import GraderBacked, GraderError, GraderProcess, GraderTimeout

if TYPE_CHECKING:
    from rollout.records import Sample


class RewardFunctionError(RuntimeError):
    """A reward function failed on a sample (the message names the function, the sample and the cause)."""


def split_spec(spec: str) -> tuple[str, str]:
    """``"pkg.module:name"`` or ``"path/to/file.py:name"`` -> (module or file, name), or ValueError."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"{spec!r} must look like 'pkg.module:name' or 'path/to/file.py:name'")
    return where, name


def is_file_spec(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where


_loaded: dict[tuple[str, str], Callable] = {}


def load_function(spec: str, cwd: str | None = None) -> Callable:
    """The function ``spec`` names, imported once per process; a file path (relative to ``cwd``,
    default the working directory) is loaded as a module of its own, its folder on sys.path (so it
    may import its neighbours); a module name is imported with ``cwd`` on sys.path. Raises
    ValueError saying what is missing."""
    where, name = split_spec(spec)
    cwd = cwd or os.getcwd()
    key = (spec, cwd)
    if key in _loaded:
        return _loaded[key]
    if is_file_spec(where):
        path = Path(where) if Path(where).is_absolute() else Path(cwd, where)
        if not path.is_file():
            raise ValueError(
                f"no file {str(path)!r} (a relative path is taken from the working directory, {cwd}; "
                "with ray job submit, ship it with --working-dir)"
            )
        sys.path.insert(0, str(path.parent))
        module_spec = importlib.util.spec_from_file_location(f"syncrl_reward_{abs(hash(str(path)))}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise ValueError(
                f"cannot import module {where!r} ({err}); run from the folder that holds it, or give a file path"
            ) from None
    function = getattr(module, name, None)
    if not callable(function):
        found = "not callable" if function is not None else "not defined"
        raise ValueError(f"{name!r} is {found} in {where!r}")
    _loaded[key] = function
    return function


def check_function(spec: str) -> None:
    """Import ``spec``'s function here (the CLI, before Ray starts): a ValueError says what is wrong.
    Any exception the import raises is reported as the cause."""
    try:
        load_function(spec)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's module raised while importing
        raise ValueError(f"importing it raised {type(err).__name__}: {err}") from None


def call(
    spec: str, cwd: str, prompts: list | None, completions: list | None = None, columns: dict | None = None
) -> Any:
    """Grader-process side: ``spec``'s function on one batch; its raw result (checked by the
    parent). ``prompts`` None: only import the function (a worker's start)."""
    function = load_function(spec, cwd)
    if prompts is None:
        return None
    result = function(prompts, completions, **columns)
    return list(result) if isinstance(result, (list, tuple)) else result


def batch_arguments(samples: Sequence[Sample]) -> tuple[list, list, dict[str, list]]:
    """(prompts, completions, columns) of a batch, TRL's convention; columns as lists."""
    names = list(dict.fromkeys(k for s in samples for k in s.columns))
    columns = {
        "answer": [s.answer for s in samples],
        "source": [s.source for s in samples],
        "prompt_messages": [s.messages for s in samples],
    }
    columns.update({k: [s.columns.get(k) for s in samples] for k in names if k not in columns})
    return [s.prompt_text for s in samples], [s.response_text for s in samples], columns


class PythonReward(GraderBacked, RewardFunction):
    """The weighted sum of Python reward functions, each called on the whole batch in a grader
    process with ``timeout_s`` per call. ``on_error``: "fail" raises ``RewardFunctionError``;
    "zero" scores the samples concerned 0 and counts them."""

    def __init__(
        self,
        functions: list[str],
        weights: list[float] | None = None,
        timeout_s: float = 5.0,
        on_error: str = "fail",
        route: str = "python",
    ) -> None:
        self.functions, self.weights = list(functions), list(weights or [1.0] * len(functions))
        self.timeout_s, self.on_error, self.route = timeout_s, on_error, route
        self.cwd = os.getcwd()
        self._grader = GraderProcess("rewards.python_function:call")
        self._lock = threading.Lock()
        self._counts = {"scored": 0, "errors": 0, "timed_out": 0}

    def start(self) -> None:
        """Start the grader process and import every function in it now (a worker's start): a
        function that does not import there fails the start, naming itself."""
        with self._lock:
            for spec in self.functions:
                try:
                    self._grader.call(spec, self.cwd, None, timeout_s=max(self.timeout_s, 60.0))
                except (GraderError, GraderTimeout) as err:
                    raise RewardFunctionError(
                        f"reward function {spec} (route {self.route!r}) does not import on the reward "
                        f"worker (working directory {self.cwd}): {err or 'timed out'}"
                    ) from None

    def score(self, samples: Sequence[Sample]) -> list[RewardResult]:
        if not samples:
            return []
        with self._lock:
            totals: list[float | None] = [None] * len(samples)
            infos: list[dict] = [{} for _ in samples]
            for spec, weight in zip(self.functions, self.weights):
                values = self._values(spec, samples, infos)
                for i, value in enumerate(values):
                    if value is not None:
                        infos[i][spec] = value
                        totals[i] = (totals[i] or 0.0) + weight * value
            results = []
            for i, (sample, total) in enumerate(zip(samples, totals)):
                if total is None and "error" not in infos[i]:
                    self._fail(
                        infos[i],
                        f"no function of route {self.route!r} scored sample of prompt "
                        f"{sample.prompt_id!r} (each returned None for it)",
                    )
                results.append(RewardResult(0.0 if total is None else float(total), infos[i]))
            self._counts["scored"] += len(samples)
            return results

    def _values(self, spec: str, samples: Sequence[Sample], infos: list[dict]) -> list[float | None]:
        """One function's checked values on the batch (None for every sample after an error with on_error zero)."""
        prompts, completions, columns = batch_arguments(samples)
        what = f"reward function {spec} (route {self.route!r})"
        try:
            raw = self._grader.call(spec, self.cwd, prompts, completions, _jsonable(columns), timeout_s=self.timeout_s)
        except GraderTimeout:
            self._counts["timed_out"] += 1
            return self._batch_error(
                infos,
                samples,
                f"{what} took longer than timeout_s={self.timeout_s:g} s on a batch of "
                f"{len(samples)} samples (the first of prompt {samples[0].prompt_id!r})",
            )
        except GraderError as err:
            return self._batch_error(infos, samples, f"{what} raised on {self._culprit(spec, samples)}: {err}")
        if not isinstance(raw, list) or len(raw) != len(samples):
            got = f"{len(raw)} values" if isinstance(raw, list) else f"a {type(raw).__name__}"
            return self._batch_error(
                infos,
                samples,
                f"{what} returned {got} for {len(samples)} samples (it must return one float or None per completion)",
            )
        values: list[float | None] = []
        for i, (value, sample) in enumerate(zip(raw, samples)):
            if value is None:
                values.append(None)
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self._fail(
                    infos[i],
                    f"{what} returned {value!r} for sample {i} of the batch (prompt "
                    f"{sample.prompt_id!r}): a reward must be a finite number or None",
                )
                values.append(None)
            else:
                values.append(float(value))
        return values

    def _culprit(self, spec: str, samples: Sequence[Sample]) -> str:
        """The first sample the function raises on, called one at a time (a batch of one: itself)."""
        if len(samples) > 1:
            for i, sample in enumerate(samples):
                prompts, completions, columns = batch_arguments([sample])
                try:
                    self._grader.call(
                        spec, self.cwd, prompts, completions, _jsonable(columns), timeout_s=self.timeout_s
                    )
                except (GraderError, GraderTimeout):
                    return f"sample {i} of the batch (prompt {sample.prompt_id!r})"
        return f"a batch of {len(samples)} samples (the first of prompt {samples[0].prompt_id!r})"

    def _batch_error(self, infos: list[dict], samples: Sequence[Sample], message: str) -> list[None]:
        for info in infos:
            self._fail(info, message)
        return [None] * len(samples)

    def _fail(self, info: dict, message: str) -> None:
        if self.on_error != "zero":
            raise RewardFunctionError(message)
        if "error" not in info:
            self._counts["errors"] += 1
            info["error"] = message


def _jsonable(value: Any) -> Any:
    """The columns as JSON can carry them to the grader process (other values as their text)."""
    return json.loads(json.dumps(value, default=str))
