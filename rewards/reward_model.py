"""Rewards from a learned reward model: a Hugging Face sequence-classification model.

The model (``AutoModelForSequenceClassification`` with one label) reads the prompt and the
response, as the chat ``[user: prompt, assistant: response]`` when the tokenizer has a chat
template, else as ``prompt + response``; the reward is its single logit. It runs in fp32 in
eval mode (no dropout), so the same text always gets the same score, in batches of
``batch_size`` padded on the right (the score is read at each row's last real token).
"""

from __future__ import annotations

from collections.abc import Sequence

from rewards.base import RewardFunction, RewardResult
from rollout.records import Sample


class RewardModelScorer(RewardFunction):
    """Scores samples with the classifier in ``model_path`` (a Hugging Face folder).

    ``max_length`` caps the tokens per text (default: the model's position limit); longer texts
    lose their beginning, so the end of the response is always scored.
    """

    def __init__(
        self, model_path: str, batch_size: int = 16, max_length: int | None = None, device: str = "cpu"
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_path = model_path
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
        self.model.to(self.device).eval()
        if self.model.config.pad_token_id is None:  # the model finds each row's last token by it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None) or 2048
        self._counts = {"scored": 0, "truncated": 0, "batches": 0}

    def text(self, sample: Sample) -> str:
        """What the model reads for one sample: the chat of prompt and response, or their concatenation."""
        if self.tokenizer.chat_template:
            messages = [
                {"role": "user", "content": sample.prompt_text},
                {"role": "assistant", "content": sample.response_text},
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return sample.prompt_text + sample.response_text

    def score(self, samples: Sequence[Sample]) -> list[RewardResult]:
        import torch

        results: list[RewardResult] = []
        special = not self.tokenizer.chat_template  # a chat template writes its own special tokens
        for begin in range(0, len(samples), self.batch_size):
            texts = [self.text(s) for s in samples[begin : begin + self.batch_size]]
            encoded = self.tokenizer(texts, add_special_tokens=special)["input_ids"]
            rows = [ids[-self.max_length :] for ids in encoded]  # keep the end of long texts
            batch = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for logit, ids in zip(logits[:, 0].tolist(), encoded, strict=True):
                truncated = len(ids) > self.max_length
                info = {"tokens": min(len(ids), self.max_length), "truncated": truncated}
                results.append(RewardResult(float(logit), info))
                self._counts["truncated"] += truncated
            self._counts["batches"] += 1
        self._counts["scored"] += len(results)
        return results

    def stats(self) -> dict[str, int]:
        """scored, truncated (texts longer than max_length) and batches run."""
        return dict(self._counts)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
