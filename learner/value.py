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

from learner.loading import model_dtype
from learner.packing import Packed, pack, packed_mask, use_block_attention
from rollout.settings import ModelConfig

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

            model.value_head.load_state_dict(
                {k: v.to(model.value_head.weight.dtype) for k, v in load_file(head).items()}
            )
        return model

    def gradient_checkpointing_enable(self) -> None:
        self.backbone.gradient_checkpointing_enable()

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs) -> torch.Tensor:
        """The value at every position: [B, L], V of the state that ends at that token
        (``kwargs``: the backbone's, e.g. ``packed_spans`` with block attention)."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1)


def save_value_folder(folder: str, backbone: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Write a value model from its full state dict (``backbone.*`` and ``value_head.*`` names)."""
    from safetensors.torch import save_file

    Path(folder).mkdir(parents=True, exist_ok=True)
    body = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    backbone.save_pretrained(folder, state_dict=body, safe_serialization=True)
    save_file({"weight": state_dict["value_head.weight"].contiguous()}, str(Path(folder, HEAD_FILE)))


def pack_states(states: list[tuple[list[int], list[int]]]) -> tuple[Packed, torch.Tensor]:
    """States packed with ``learner.packing.pack``, each distinct prompt once (``share_prompts``),
    and the packed position of each state's last token: as in ``LearnerRank.score_states``, a
    state is a row whose response is followed by one more token, and the position that predicts
    that token is the state's last (the prompt's last for an empty response)."""
    rows = [list(p) + list(r) + [0] for p, r in states]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask, scored = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, ((prompt, _), row) in enumerate(zip(states, rows)):
        ids[i, : len(row)], mask[i, : len(row)], scored[i, len(prompt) : len(row)] = torch.tensor(row), 1, 1
    packed = pack(ids, mask, scored, share_prompts=True)
    final = packed.cols == mask.sum(1)[packed.rows] - 1  # the appended token of each row
    last = torch.empty(len(states), dtype=torch.long)
    last[packed.rows[final]] = packed.pred[final]
    return packed, last


def token_chunks(states: list[tuple[list[int], list[int]]], max_tokens: int) -> list[list[int]]:
    """Indices of ``states`` in chunks of whole prompt groups of about ``max_tokens`` packed tokens
    each (a group larger than that is a chunk of its own)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, _) in enumerate(states):
        groups.setdefault(tuple(prompt), []).append(i)
    chunks, chunk, size = [], [], 0
    for prompt, members in groups.items():
        tokens = len(prompt) + sum(len(states[i][1]) for i in members)
        if chunk and size + tokens > max_tokens:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk, size = chunk + members, size + tokens
    return chunks + ([chunk] if chunk else [])


class ValueScorer:
    """V of (prompt, partial response) states with a value folder (``final/value`` of an OREO run;
    a causal LM folder gives the untrained, all-zero value model). Beam search's scorer.
    ``model``: the model settings (None: the defaults): its dtype and trust_remote_code (not its
    attn_implementation: packed scoring passes a 4-D attention mask, which flash-attention cannot
    take)."""

    def __init__(self, folder: str, max_tokens: int = 2048, threads: int = 0, model: ModelConfig | None = None):
        import os

        gpu = torch.cuda.is_available()
        if not gpu:  # a 1-CPU Ray actor runs 1 thread; score with the cores this process may use
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self.device = torch.device("cuda" if gpu else "cpu")
        model = model or ModelConfig()
        load = dict(dtype=model_dtype(model.dtype, gpu), trust_remote_code=model.trust_remote_code)
        self.model = ValueModel.from_pretrained(folder, **load).to(self.device).eval()
        self.block_attention = use_block_attention(self.model.backbone)  # a chunk's prompts attend block by block
        self.max_tokens = max_tokens
        self.dtype = next(self.model.parameters()).dtype

    @torch.no_grad()
    def score(self, states: list[tuple[list[int], list[int]]]) -> list[float]:
        """V of each state, packed: the states of one prompt (a question's beams and their
        candidates) share one copy of it, ``max_tokens`` packed tokens a forward at most."""
        out = [0.0] * len(states)
        for chunk in token_chunks(states, self.max_tokens):
            packed, last = pack_states([states[i] for i in chunk])
            spans = dict(packed_spans=packed.spans) if self.block_attention else {}
            values = self.model(
                packed.input_ids.to(self.device),
                position_ids=packed.position_ids.to(self.device),
                attention_mask=packed_mask(packed, self.dtype).to(self.device),
                **spans,
            )[0]
            for i, v in zip(chunk, values[last.to(self.device)].float().tolist()):
                out[i] = v
        return out
