"""Packing: the rows of a padded batch laid end to end in one sequence, without padding.

Each row keeps its own positions (starting at 0) and attends only to its own tokens. With
``share_prompts``, rows with the same prompt (a GRPO group's samples, a DPO pair) share it: the
prompt is packed once and each response follows it, attending to the prompt and to itself, with
positions continuing from the prompt's end, so a group of k samples costs one prompt instead of
k. Flash-attention reads segments from position ids and cannot express that tree: it packs rows
only. Other attention implementations get an additive mask.

Only response tokens are scored: ``pred`` holds, for each, the packed position whose logits
predict it (the previous token of its row: the prompt's last token for a response's first), so
the model computes logits at those positions only (``logits_to_keep``). Per-token results go
back to the padded [N, T] layout, so the losses never know.

No token attends across blocks, so attention runs block by block (``block_sdpa_attention``):
exactly the masked attention over the whole packed row, at the cost of the blocks' squares
instead of the row's (4 GRPO groups in a micro-batch: ~4x less attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [1, L]
    position_ids: torch.Tensor  # [1, L]
    block: torch.Tensor  # [L] attention block: a row, or all rows sharing one prompt
    branch: torch.Tensor  # [L] -1 on prompt tokens, else the row of the response token
    pred: torch.Tensor  # [M] packed position whose logits predict each scored token
    target: torch.Tensor  # [M] the scored token
    rows: torch.Tensor  # [M] its row in the padded batch
    cols: torch.Tensor  # [M] and its column there
    spans: tuple[tuple[int, int], ...] = ()  # (start, end) of each block in the packed row


def pack(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, share_prompts: bool = False
) -> Packed:
    """Pack a right-padded batch; rows' prompts end where their ``loss_mask`` starts."""
    lengths = attention_mask.sum(1).tolist()
    scored = loss_mask.bool().tolist()
    ids_rows = input_ids.tolist()
    prompt_len = [row.index(True) if True in row[:n] else n for row, n in zip(scored, lengths)]
    blocks: dict[object, list[int]] = {}
    for i, p in enumerate(prompt_len):
        blocks.setdefault(tuple(ids_rows[i][:p]) if share_prompts else i, []).append(i)
    ids: list[int] = []
    pos: list[int] = []
    block: list[int] = []
    branch: list[int] = []
    pred: list[int] = []
    rows: list[int] = []
    cols: list[int] = []

    def emit(tokens: list[int], start: int, b: int, owner: int) -> int:
        first = len(ids)
        ids.extend(tokens)
        pos.extend(range(start, start + len(tokens)))
        block.extend([b] * len(tokens))
        branch.extend([owner] * len(tokens))
        return first

    spans: list[tuple[int, int]] = []
    for b, members in enumerate(blocks.values()):
        start = len(ids)
        p = prompt_len[members[0]]
        for k, i in enumerate(members):
            if k == 0 or not share_prompts:
                prompt_end = emit(ids_rows[i][:p], 0, b, -1) + p - 1  # packed position of the last prompt token
            first = emit(ids_rows[i][p : lengths[i]], p, b, i)
            for j in range(p, lengths[i]):
                if j == 0:
                    continue  # no context: nothing predicts a row's very first token
                pred.append(prompt_end if j == p else first + j - p - 1)
                rows.append(i)
                cols.append(j)
        spans.append((start, len(ids)))
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=input_ids.device)  # noqa: E731
    pred_t = as_long(pred)
    ids_t = as_long(ids)
    return Packed(
        input_ids=ids_t[None],
        position_ids=as_long(pos)[None],
        block=as_long(block),
        branch=as_long(branch),
        pred=pred_t,
        target=input_ids[as_long(rows), as_long(cols)],
        rows=as_long(rows),
        cols=as_long(cols),
        spans=tuple(spans),
    )


def packed_mask(packed: Packed, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, L, L] additive mask: 0 where token a may attend to token b: same block, b not after
    a, and b a prompt token or a token of a's own response."""
    blk, br = packed.block, packed.branch
    n = len(blk)
    causal = torch.ones(n, n, dtype=torch.bool, device=blk.device).tril()
    allowed = (blk[:, None] == blk[None, :]) & causal & ((br[None, :] == -1) | (br[None, :] == br[:, None]))
    return torch.zeros(allowed.shape, dtype=dtype, device=blk.device).masked_fill(~allowed, torch.finfo(dtype).min)[
        None, None
    ]


def unpack(values: torch.Tensor, packed: Packed, shape: torch.Size) -> torch.Tensor:
    """[M] per-scored-token values back to the padded [N, T] layout (0 everywhere else)."""
    out = values.new_zeros(shape)
    out[packed.rows, packed.cols] = values
    return out


BLOCK_SDPA = "syncrl_block_sdpa"


def block_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    packed_spans=None,
    **kwargs,
):
    """Transformers' sdpa attention, run on each block of a packed row (``packed_spans``: the
    (start, end) of each block; without them, on the whole input): softmax(q_b k_b^T / sqrt(d) +
    mask_bb) v_b for each block b. Exact: the mask is -inf across blocks, so the row's attention
    is the blocks' attentions side by side."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not packed_spans or len(packed_spans) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    parts = [
        sdpa_attention_forward(
            module,
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            None if attention_mask is None else attention_mask[..., a:b, a:b],
            **kwargs,
        )[0]
        for a, b in packed_spans
    ]
    return torch.cat(parts, dim=1), None  # [batch, tokens, heads, head_dim], as sdpa returns


def use_block_attention(model: torch.nn.Module) -> bool:
    """Switch a Hugging Face model on sdpa to ``block_sdpa_attention`` (registered once with
    Transformers, with sdpa's masks); True if it now takes ``packed_spans``. Models on another
    implementation (flash-attention packs rows alone; eager) or not on Transformers' attention
    interface (remote code) stay as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", BLOCK_SDPA):
        return False
    if not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    if BLOCK_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(BLOCK_SDPA, block_sdpa_attention)
        AttentionMaskInterface.register(BLOCK_SDPA, sdpa_mask)
    model.set_attn_implementation(BLOCK_SDPA)
    return config._attn_implementation == BLOCK_SDPA
