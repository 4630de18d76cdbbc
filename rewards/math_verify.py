"""Verifiable rewards for math: the final answer of a response checked against the reference.

The final answer is the content of the last ``\\boxed{...}`` of the response, else its last
number (``-12``, ``3.5``, ``1,000``, ``1/2``). math-verify (``parse`` + ``verify``) decides
whether it equals the reference answer (``Sample.answer``), so ``0.5``, ``1/2`` and
``\\frac{1}{2}`` are one answer. Reward 1.0 if it does, 0.0 otherwise.

math-verify's built-in time limit is ``signal.alarm``: it fails outside the main thread and
cannot stop C code. Here it is switched off (``parsing_timeout=None``, ``timeout_seconds=None``)
and every comparison runs in a persistent child process (``rewards.grader_process``) that is
killed and replaced when one answer takes longer than ``timeout_s``. A timeout, a crash or an
exception gives reward 0 with ``timed_out`` / ``error`` in the info, is counted, and never raises.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rewards.base import RewardFunction, RewardResult
from rewards.grader_process import GraderBacked, GraderError, GraderProcess, GraderTimeout

if TYPE_CHECKING:  # only a type here: the grader process imports this module and stays light
    from rollout.records import Sample

BOXED = "\\boxed"
# A number as people write one: sign (not the minus of "7-2"), thousands separators, decimals,
# or a simple fraction.
NUMBER = re.compile(r"(?:(?<![\w.)}])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?")


@dataclass(frozen=True)
class ExtractedAnswer:
    """The final answer found in a response and where it came from."""

    text: str
    source: str  # "boxed" | "boxed_unclosed" (the response ends inside the box) | "number"


def last_boxed(text: str) -> tuple[str, bool] | None:
    """Content of the last ``\\boxed{...}`` and whether its braces close; None if there is none.

    An unclosed last box (a response cut off inside it) gives the rest of the text, unclosed.
    """
    start = text.rfind(BOXED + "{")
    if start == -1:
        return None
    depth, begin = 0, start + len(BOXED)
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin + 1 : i], True
    return text[begin + 1 :], False


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands separators removed), or None."""
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "").replace(" ", "") if numbers else None


def extract_answer(response: str) -> ExtractedAnswer | None:
    """The final answer of a response: its last ``\\boxed{}``, else its last number, else None."""
    boxed = last_boxed(response)
    if boxed is not None:
        content, closed = boxed
        return ExtractedAnswer(content.strip(), "boxed" if closed else "boxed_unclosed")
    number = last_number(response)
    return ExtractedAnswer(number, "number") if number is not None else None


def _reference_text(answer: str) -> str:
    """A reference answer as an expression: the content of its box if it has one, no ``$``."""
    boxed = last_boxed(answer)
    return (boxed[0] if boxed is not None else answer).strip().strip("$").strip()


def grade(extracted: str, reference: str) -> dict:
    """Whether ``extracted`` equals ``reference`` by math-verify, with no time limit.

    Runs inside the grader process. Returns ``{"correct": bool, "parsed": bool}``; ``parsed``
    says whether the answer became a math expression (not just a string).
    """
    from math_verify import parse, verify

    def to_math(expression: str) -> list:
        return parse(BOXED + "{" + expression + "}", parsing_timeout=None)

    gold, predicted = to_math(_reference_text(reference)), to_math(extracted)
    correct = bool(gold and predicted and verify(gold, predicted, timeout_seconds=None))
    return {"correct": correct, "parsed": any(not isinstance(p, str) for p in predicted)}


def warmup() -> None:
    """Import math-verify and sympy and fill their caches (the grader process runs this first)."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # silences "Timeout is disabled"
    grade("\\frac{1}{2}", "0.5")


class MathVerifier(GraderBacked, RewardFunction):
    """Reward 1.0 for a response whose final answer equals ``Sample.answer``, else 0.0.

    ``require_boxed``: only an answer inside a closed ``\\boxed{}`` counts (a format-strict
    reward, as the prompt asks for the box); a correct bare number gets 0 with ``correct`` False
    and ``unboxed_correct`` True in the info. ``timeout_s`` bounds each answer's grading;
    ``memory_limit_mb`` caps the grader process's address space (a runaway computation fails
    instead of eating the machine). Thread-safe.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        memory_limit_mb: int | None = 4096,
        startup_timeout_s: float = 60.0,
        require_boxed: bool = False,
    ) -> None:
        self.timeout_s, self.require_boxed = timeout_s, require_boxed
        self._grader = GraderProcess("rewards.math_verify:grade", startup_timeout_s, memory_limit_mb)
        self._lock = threading.Lock()
        self._counts = {"graded": 0, "correct": 0, "no_answer": 0, "timed_out": 0, "errors": 0}

    @property
    def grader_pid(self) -> int | None:
        """Process id of the running grader process (None before the first answer), for monitoring."""
        return self._grader.pid

    def score(self, samples: Sequence[Sample]) -> list[RewardResult]:
        return [self.grade(s.response_text, s.answer) for s in samples]

    def grade(self, response: str, answer: str | None) -> RewardResult:
        """The reward of one response against its reference answer."""
        with self._lock:
            result = self._grade(response, answer)
            self._counts["graded"] += 1
            self._counts["correct"] += result.info["correct"]
            self._counts["no_answer"] += result.info["extracted"] is None and result.info["error"] is None
            self._counts["timed_out"] += result.info["timed_out"]
            self._counts["errors"] += result.info["error"] is not None and not result.info["timed_out"]
            return result

    def _grade(self, response: str, answer: str | None) -> RewardResult:
        info: dict = dict(extracted=None, source=None, correct=False, parsed=False, timed_out=False, error=None)
        if answer is None or not str(answer).strip():
            info["error"] = "no reference answer"
            return RewardResult(0.0, info)
        found = extract_answer(response or "")
        if found is None:
            return RewardResult(0.0, info)
        info.update(extracted=found.text, source=found.source)
        try:
            info.update(self._grader.call(found.text, str(answer), timeout_s=self.timeout_s))
        except GraderTimeout:
            info.update(timed_out=True, error=f"grading took longer than {self.timeout_s} s")
        except GraderError as err:
            info["error"] = str(err)
        if self.require_boxed and found.source != "boxed":
            info.update(unboxed_correct=info["correct"], correct=False)
        return RewardResult(1.0 if info["correct"] else 0.0, info)
