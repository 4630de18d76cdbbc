"""Rewards from a learned reward model: a Hugging Face sequence-classification model.

The model (``AutoModelForSequenceClassification``) reads the prompt's chat and the response
(``reward_text``: the chat with the response as the assistant's turn, through the chat template
when the tokenizer has one, else prompt + response); the reward is its one logit, or with
several labels the logit of the route's ``label_index``. The score is read exactly as a plain
forward reads it (``model(input_ids, attention_mask).logits``, each row right-padded, so the
model reads its last real token), which is also how syncrl's reward-model training scores: the
worker's scores on a text equal the trainer's. It runs in eval mode (no dropout), in float32 on
the CPU and bfloat16 on a GPU by default, in batches of ``batch_size`` rows, or with
``batch_tokens`` in batches formed by tokens over the samples sorted by length.

``check_reward_model`` checks a route's folder from its config.json alone (no torch), so the
CLI can refuse a wrong folder before Ray starts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rewards.base import RewardFunction, RewardResult
from rollout.errors import ConfigError
from rollout.records import Sample


def reward_text(tokenizer, messages: list[dict[str, str]], response: str) -> str:
    """What a reward model reads for a prompt's ``messages`` and a ``response``: the chat with the
    response as the assistant's turn, through the tokenizer's chat template, or prompt + response
    as plain text when it has none. The reward worker scores this text and syncrl's reward-model
    training trains on it, so both see the same tokens."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    return "".join(m["content"] for m in messages) + response


def reward_token_ids(
    tokenizer, messages: list[dict[str, str]], response: str, max_length: int | None = None
) -> list[int]:
    """The token ids of ``reward_text`` as the model reads them (a chat template writes its own
    special tokens; plain text gets the tokenizer's), cut to the last ``max_length`` tokens so the
    end of the response is always read."""
    ids = tokenizer(reward_text(tokenizer, messages, response), add_special_tokens=not tokenizer.chat_template)[
        "input_ids"
    ]
    return ids[-max_length:] if max_length else ids


def _num_labels(config: dict) -> int:
    """The number of labels a config.json gives its model, as transformers reads it: one per
    ``id2label`` entry, else ``num_labels``, else transformers' default of 2."""
    if config.get("id2label"):
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


def check_reward_model(model_path: str, label_index: int | None, field: str) -> None:
    """Raise ``ConfigError`` naming ``field`` (e.g. ``reward.routes.chat.model_path``) unless
    ``model_path`` is a sequence-classification model folder whose reward logit is known: one
    label (``label_index`` None or 0), or several and ``label_index`` picks one. Reads only
    config.json, so the CLI runs it before Ray starts, and a reward worker before it loads."""
    folder = Path(model_path).expanduser()
    route = field.removesuffix(".model_path")
    if not folder.exists():
        raise ConfigError(f"{field}: {model_path!r} does not exist; give a sequence-classification model folder")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{field}: {model_path!r} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{field}: {model_path!r}: config.json cannot be read ({err})") from None
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            raise ConfigError(
                f"{field}: {model_path!r} is a causal LM ({', '.join(architectures)}), not a reward model "
                "(a sequence classifier); syncrl trains one from it with `algorithm.name: reward_model`"
            )
        named = f"architectures {architectures}" if architectures else "no architecture"
        raise ConfigError(
            f"{field}: {model_path!r} is not a sequence-classification model (its config.json names "
            f"{named}); a reward_model route needs a ...ForSequenceClassification folder"
        )
    labels = _num_labels(config)
    names = config.get("id2label") or {}
    if labels > 1 and label_index is None:
        raise ConfigError(
            f"{field}: {model_path!r} is a classifier with {labels} labels (id2label {names}); "
            f"say which logit is the reward with {route}.label_index (0 to {labels - 1})"
        )
    if label_index is not None and label_index >= labels:
        raise ConfigError(
            f"{route}.label_index: {label_index} is out of range for {model_path!r}, a classifier with "
            f"{labels} label(s) (id2label {names}); give 0 to {labels - 1}"
        )


def token_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int = 0) -> list[list[int]]:
    """Batches of sample indices. ``batch_tokens`` 0: ``batch_size`` rows each, in input order.
    Else the samples sorted longest first, each batch closed before it has more than
    ``batch_size`` rows or more than ``batch_tokens`` tokens padded to its longest row (a row
    longer than that alone makes a batch). Sorting keeps the padding small; the longest batch
    comes first, so a batch that does not fit in memory fails at once."""
    if not batch_tokens:
        return [list(range(b, min(b + batch_size, len(lengths)))) for b in range(0, len(lengths), batch_size)]
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        batch = batches[-1] if batches else None
        # rows are sorted longest first: the batch's first row sets its padded length
        if batch and len(batch) < batch_size and (len(batch) + 1) * lengths[batch[0]] <= batch_tokens:
            batch.append(i)
        else:
            batches.append([i])
    return batches


class RewardModelScorer(RewardFunction):
    """Scores samples with the classifier in ``model_path`` (a Hugging Face folder).

    ``max_length`` caps the tokens per text (default: the model's position limit); longer texts
    lose their beginning, so the end of the response is always scored. ``device`` auto: the GPU
    when this process sees one, else the CPU; ``dtype`` auto: bfloat16 on a GPU, float32 on the
    CPU. ``label_index`` picks the reward's logit of a classifier with several labels (one
    without it is refused, as ``check_reward_model`` says; ``route`` names the route there).
    Batching (``batch_size`` rows, ``batch_tokens``: see ``token_batches``) changes no score
    beyond float rounding: every row is right-padded and masked.
    """

    def __init__(
        self,
        model_path: str,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_tokens: int = 0,
        label_index: int | None = None,
        route: str = "<name>",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_reward_model(model_path, label_index, f"reward.routes.{route}.model_path")
        self.model_path = model_path
        self.batch_size, self.batch_tokens = batch_size, batch_tokens
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the model's own num_labels (its config's id2label): forcing 1 breaks a two-label model
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=self.dtype)
        self.model.to(self.device).eval()
        text_config = self.model.config.get_text_config()  # where the forward looks for the pad id
        if text_config.pad_token_id is None:  # the model finds each row's last token by it
            text_config.pad_token_id = self.tokenizer.pad_token_id
        self.pad_id = text_config.pad_token_id
        self.label = label_index or 0  # check_reward_model made sure it is a label of the model
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None) or 2048
        self._counts = {"scored": 0, "truncated": 0, "batches": 0}

    def text(self, sample: Sample) -> str:
        """What the model reads for one sample (``reward_text``)."""
        return reward_text(self.tokenizer, sample.messages, sample.response_text)

    def score(self, samples: Sequence[Sample]) -> list[RewardResult]:
        import torch

        full = [reward_token_ids(self.tokenizer, s.messages, s.response_text) for s in samples]
        rows = [ids[-self.max_length :] for ids in full]  # keep the end of long texts
        results: list[RewardResult | None] = [None] * len(samples)
        for batch in token_batches([len(r) for r in rows], self.batch_size, self.batch_tokens):
            width = max(len(rows[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, i in enumerate(batch):  # right padding: row j's real tokens first
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for i, value in zip(batch, logits[:, self.label].float().tolist(), strict=True):
                truncated = len(full[i]) > self.max_length
                results[i] = RewardResult(float(value), {"tokens": len(rows[i]), "truncated": truncated})
                self._counts["truncated"] += truncated
            self._counts["batches"] += 1
        self._counts["scored"] += len(results)
        return results  # type: ignore[return-value]

    def stats(self) -> dict[str, int]:
        """scored, truncated (texts longer than max_length) and batches run."""
        return dict(self._counts)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
