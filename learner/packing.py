"""Packing: the rows of a padded batch laid end to end in one sequence, without padding.

Each row keeps its own positions (restarting at 0) and attends only to itself: flash-attention
reads the segment boundaries from the position ids; other attention implementations get an
additive block-diagonal causal mask. Per-token results are unpacked back to the padded [N, T]
layout, so the losses never know.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [1, L]
    position_ids: torch.Tensor  # [1, L]
    rows: torch.Tensor  # [L] the padded row of each packed token
    cols: torch.Tensor  # [L] and its column there
    segment: torch.Tensor  # [L] which row (0..N-1) a token belongs to


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Packed:
    rows, cols = attention_mask.nonzero(as_tuple=True)  # row-major: rows in order, columns ascending
    return Packed(input_ids=input_ids[rows, cols][None], position_ids=cols[None], rows=rows, cols=cols, segment=rows)


def block_causal_mask(packed: Packed, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, L, L] additive mask: 0 where token i may attend to token j (same row, j <= i)."""
    seg = packed.segment
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(len(seg), len(seg), dtype=torch.bool, device=seg.device).tril()
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def unpack(values: torch.Tensor, packed: Packed, shape: torch.Size) -> torch.Tensor:
    """[1, L] per-token values back to the padded [N, T] layout (0 at padding and at each row's
    first token, which has no context of its own)."""
    out = values.new_zeros(shape)
    out[packed.rows, packed.cols] = values[0]
    out[:, 0] = 0
    return out
