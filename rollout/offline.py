"""Offline training data from a JSONL file: preference pairs or scored responses.

One record a line, either
- a preference pair: ``{"prompt": str | "messages": [...], "chosen": str, "rejected": str}``, or
- a scored response: ``{"prompt" | "messages", "response": str, "reward": float}``.
Records with the same prompt form one group (a pair's two responses, or every scored response
to a prompt). They become ``Sample`` records (chosen: reward 1, rejected: reward 0) that the
algorithms turn into training batches as they do with rollouts; the file has no behaviour
log-probs, so GRPO's importance ratio is taken against the current policy (ratio 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rollout.records import Sample

OFFLINE_VERSION = -1  # policy_version of samples that no engine generated


def file_kind(path: str) -> str:
    """'pairs', 'samples' or 'prompts', from the keys of the file's first record."""
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    keys = set(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    raise ValueError(f"{path}:1: not a JSON object") from None
                if {"chosen", "rejected"} <= keys:
                    return "pairs"
                return "samples" if "response" in keys else "prompts"
    raise ValueError(f"{path}: empty file")


def load_offline_groups(path: str, tokenizer: Any) -> list[list[Sample]]:
    """Every group of the file as tokenized samples; errors name the line and the field."""
    groups: dict[str, list[Sample]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        messages = rec.get("messages") or ([{"role": "user", "content": rec["prompt"]}] if "prompt" in rec else None)
        if not messages:
            raise ValueError(f"{where}: needs 'prompt' or 'messages'")
        if "chosen" in rec or "rejected" in rec:
            scored = [(_text(rec, "chosen", where), 1.0), (_text(rec, "rejected", where), 0.0)]
            key = f"pair-{n}"
        else:
            reward = rec.get("reward")
            if not isinstance(reward, (int, float)) or isinstance(reward, bool):
                raise ValueError(f"{where}: 'reward' must be a number, got {reward!r}")
            scored = [(_text(rec, "response", where), float(reward))]
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
    if not groups:
        raise ValueError(f"{path}: no records")
    return list(groups.values())


def _text(rec: dict, field: str, where: str) -> str:
    value = rec.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: '{field}' must be a non-empty string, got {value!r}")
    return value
