"""The value model of OREO: a causal LM's backbone with a scalar head.

``V(s)`` of a state (a prompt plus the response tokens so far) is a linear map (hidden -> 1, no
bias, zero-initialized, so V = 0 everywhere before training) of the backbone's last hidden state
at the state's last token. The backbone starts from the same checkpoint as the policy.

On disk a value model is its own folder: the backbone as an ordinary Hugging Face model (any
``AutoModel`` loads it), the head in ``value_head.safetensors``, and the tokenizer;
``ValueModel.from_pretrained(folder)`` loads the whole.
"""

from __future__ import annotations

from pathlib import Path

import torch

HEAD_FILE = "value_head.safetensors"


class ValueModel(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, zero_init: bool = True):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        hidden = backbone.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1, bias=False, dtype=backbone.dtype)
        if zero_init:
            torch.nn.init.zeros_(self.value_head.weight)

    @classmethod
    def from_pretrained(cls, path: str, **load) -> ValueModel:
        """A value folder (backbone + head), or a causal LM folder (a new, zero head)."""
        from transformers import AutoModel

        model = cls(AutoModel.from_pretrained(path, **load))
        head = Path(path, HEAD_FILE)
        if head.is_file():
            from safetensors.torch import load_file

            model.value_head.load_state_dict({k: v.to(model.value_head.weight.dtype) for k, v in load_file(head).items()})
        return model

    def gradient_checkpointing_enable(self) -> None:
        self.backbone.gradient_checkpointing_enable()

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """The value at every position: [B, L], V of the state that ends at that token."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state  # fmt: skip
        return self.value_head(hidden).squeeze(-1)


def save_value_folder(folder: str, backbone: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Write a value model from its full state dict (``backbone.*`` and ``value_head.*`` names)."""
    from safetensors.torch import save_file

    Path(folder).mkdir(parents=True, exist_ok=True)
    body = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    backbone.save_pretrained(folder, state_dict=body, safe_serialization=True)
    save_file({"weight": state_dict["value_head.weight"].contiguous()}, str(Path(folder, HEAD_FILE)))


def pad_states(states: list[tuple[list[int], list[int]]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt ids, response ids) states as right-padded input ids, attention mask, and the index
    of each state's last token."""
    rows = [list(p) + list(r) for p, r in states]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask, torch.tensor([len(r) - 1 for r in rows])


class ValueScorer:
    """V of (prompt, partial response) states with a value folder (``final/value`` of an OREO run;
    a causal LM folder gives the untrained, all-zero value model). Beam search's scorer."""

    def __init__(self, folder: str, batch_size: int = 64, threads: int = 0):
        import os

        gpu = torch.cuda.is_available()
        if not gpu:  # a 1-CPU Ray actor runs 1 thread; score with the cores this process may use
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self.device = torch.device("cuda" if gpu else "cpu")
        self.model = ValueModel.from_pretrained(folder, dtype=torch.bfloat16 if gpu else torch.float32).to(self.device).eval()
        pad = self.model.config.pad_token_id
        self.pad_id, self.batch_size = 0 if pad is None else pad, batch_size

    @torch.no_grad()
    def score(self, states: list[tuple[list[int], list[int]]]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(states), self.batch_size):
            ids, mask, last = pad_states(states[start : start + self.batch_size], self.pad_id)
            values = self.model(ids.to(self.device), attention_mask=mask.to(self.device))
            out += values[torch.arange(len(last)), last.to(self.device)].float().tolist()
        return out
