"""Training data from a JSONL file: prompts, preference pairs or scored responses.

One record a line, every record of a file of one kind:
- a prompt: ``{"prompt": str | "messages": [...], "id"?, "answer"?, "source"?}``: the run
  generates the responses (``rollout.tasks.load_prompts``),
- a preference pair: ``{"prompt" | "messages", "chosen": str, "rejected": str}``, or
- a scored response: ``{"prompt" | "messages", "response": str, "reward": float, "prompt_id"?}``.
The kind is decided from every record (``read_records``): a record that fits no kind (a pair
without ``rejected``), or a file that mixes kinds, is a ``ConfigError`` naming the line, the
fields the record has and the fields each kind needs. Records with the same prompt form one group
(a pair's two responses, or every scored response to a prompt). They become ``Sample`` records
(chosen: reward 1, rejected: reward 0) that the algorithms turn into training batches as they do
with rollouts; the file has no behaviour log-probs, so GRPO's importance ratio is taken against
the current policy (ratio 1).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from rollout.errors import ConfigError
from rollout.records import Sample

OFFLINE_VERSION = -1  # policy_version of samples that no engine generated

# kind: (a record of it, in words; the fields it needs besides "prompt" or "messages")
KINDS = {
    "prompts": ("prompt", ()),
    "pairs": ("preference pair", ("chosen", "rejected")),
    "samples": ("scored response", ("response", "reward")),
}
FIELD_TYPES = {"chosen": "a non-empty string", "rejected": "a non-empty string", "response": "a non-empty string",
               "reward": "a finite number"}  # fmt: skip


def _needs(kind: str) -> str:
    return " + ".join(["prompt|messages", *KINDS[kind][1]])


def kinds_needed() -> str:
    """What each kind of record needs, for error messages."""
    return "; ".join(f"a {what} needs {_needs(kind)}" for kind, (what, _) in KINDS.items())


def record_kind(rec: Any, where: str) -> str:
    """The kind of one parsed record ('prompts', 'pairs' or 'samples'), its fields checked, or a
    ConfigError naming ``where`` (path:line), the fields the record has and what each kind needs."""
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: not a JSON object (got a JSON {type(rec).__name__}); {kinds_needed()}")
    has = f"the record has {', '.join(sorted(rec)) or 'no fields'}"
    if "messages" in rec:
        messages = rec["messages"]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):  # fmt: skip
            raise ConfigError(f"{where}: 'messages' must be a non-empty list of {{\"role\": str, \"content\": str}}, "
                              f"got {_short(messages)}")  # fmt: skip
    elif "prompt" in rec:
        _text(rec, "prompt", where)
    else:
        raise ConfigError(f"{where}: no 'prompt' or 'messages' ({has}); {kinds_needed()}")
    if "completion" in rec:  # a prompt-completion (SFT, KTO) record: not a prompt whose completion is ignored
        raise ConfigError(f"{where}: fits no kind: syncrl reads no 'completion' field ({has}); {kinds_needed()}")
    fits = [kind for kind, (_, fields) in KINDS.items() if any(f in rec for f in fields)]
    if not fits:
        return "prompts"
    if len(fits) > 1:
        (a, b), fields = fits, [f for kind in fits for f in KINDS[kind][1] if f in rec]
        raise ConfigError(f"{where}: fits no kind: it has fields of a {KINDS[a][0]} and of a {KINDS[b][0]} "
                          f"({', '.join(fields)}; {has}); {kinds_needed()}")  # fmt: skip
    (kind,) = fits
    what, fields = KINDS[kind]
    for field in fields:
        if field not in rec:
            raise ConfigError(f"{where}: '{field}' must be {FIELD_TYPES[field]} and is missing ({has}): a {what} needs "
                              f"{_needs(kind)}")  # fmt: skip
    for field in ("chosen", "rejected") if kind == "pairs" else ("response",):
        _text(rec, field, where)
    if kind == "samples":
        reward = rec["reward"]
        if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
            raise ConfigError(f"{where}: 'reward' must be a finite number, got {_short(reward)}")
    return kind


def check_data_file(path: str) -> None:
    """data.path names a file (a ConfigError otherwise)."""
    if not Path(path).is_file():
        raise ConfigError(f"data.path: no file {path!r}" + (" (a folder)" if Path(path).is_dir() else ""))


def read_records(path: str) -> tuple[str, list[tuple[int, dict]]]:
    """The kind of the file ('prompts', 'pairs' or 'samples') and its records with their line
    numbers, each record checked. A ConfigError names the line of the first bad record or, in a
    file that mixes kinds, the first line of a kind other than the most common one."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the file ({err.strerror or err})") from None
    records: list[tuple[int, dict, str]] = []
    for n, line in enumerate(raw.splitlines(), 1):  # at \n, \r\n or \r, which a JSON string never holds raw
        where = f"{path}:{n}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start} of the line)") from None
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not JSON ({err.msg} at column {err.colno}); the file needs one JSON object a line") from None
        records.append((n, rec, record_kind(rec, where)))
    if not records:
        raise ConfigError(f"{path}: no records (the file is empty); {kinds_needed()}")
    counts = Counter(kind for _, _, kind in records)  # most_common breaks ties by first appearance
    main = counts.most_common(1)[0][0]
    if len(counts) > 1:
        n, rec, kind = next(r for r in records if r[2] != main)
        first = next(m for m, _, k in records if k == main)
        mix = [f"{c} {KINDS[k][0]}{'s' if c > 1 else ''}" for k, c in counts.most_common()]
        mix = ", ".join(mix[:-1]) + " and " + mix[-1]
        raise ConfigError(f"{path}:{n}: a {KINDS[kind][0]} (the record has {', '.join(sorted(rec))}) in a file of "
                          f"{KINDS[main][0]}s (the first on line {first}); a file holds one kind, this one {mix} "
                          f"({kinds_needed()})")  # fmt: skip
    return main, [(n, rec) for n, rec, _ in records]


def file_kind(path: str) -> str:
    """'pairs', 'samples' or 'prompts', from every record of the file (see ``read_records``)."""
    return read_records(path)[0]


def load_offline_groups(path: str, tokenizer: Any) -> list[list[Sample]]:
    """Every group of a file of preference pairs or scored responses, as tokenized samples; errors
    name the line and the field."""
    kind, records = read_records(path)
    if kind == "prompts":
        raise ConfigError(f"{path}: holds prompts, not responses to train on; {kinds_needed()}")
    groups: dict[str, list[Sample]] = {}
    for n, rec in records:
        messages = rec.get("messages") or [{"role": "user", "content": rec["prompt"]}]
        if kind == "pairs":
            scored = [(rec["chosen"], 1.0), (rec["rejected"], 0.0)]
            key = f"pair-{n}"
        else:
            scored = [(rec["response"], float(rec["reward"]))]
            key = str(rec.get("prompt_id") or json.dumps(messages, sort_keys=True))
        prompt_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=False))  # fmt: skip
        for text, reward in scored:
            response_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            groups.setdefault(key, []).append(Sample(
                prompt_id=key, prompt_ids=prompt_ids, response_ids=response_ids, logprobs=[], finish_reason="stop",
                policy_version=OFFLINE_VERSION, prompt_text=messages[-1]["content"], response_text=text, reward=reward,
                answer=None if rec.get("answer") is None else str(rec["answer"]), source=rec.get("source", "default"),
            ))  # fmt: skip
    return list(groups.values())


def _text(rec: dict, field: str, where: str) -> str:
    value = rec.get(field)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{field}' must be a non-empty string, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
