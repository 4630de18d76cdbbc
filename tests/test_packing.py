"""Packed rows give the same per-token log-probs and entropies as padded rows."""

from __future__ import annotations

import pytest
import torch

from learner.logprobs import token_logprobs_and_entropy
from learner.objective import collate
from learner.packing import block_causal_mask, pack, unpack
from rollout.records import TrainBatch, TrainSequence


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_padded(tiny_qwen2, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32, attn_implementation=attn).eval()
    rows = [TrainSequence([1, 5, 9], [20, 21, 22, 23]), TrainSequence([1, 7], [30]), TrainSequence([1, 2, 3, 4, 5], [40, 41])]
    cb = collate(TrainBatch(rows), pad_token_id=3)
    with torch.no_grad():
        padded = token_logprobs_and_entropy(model(input_ids=cb.input_ids, attention_mask=cb.attention_mask).logits, cb.input_ids)
        p = pack(cb.input_ids, cb.attention_mask)
        assert p.input_ids.shape[1] == int(cb.attention_mask.sum())  # no padding left
        logits = model(input_ids=p.input_ids, position_ids=p.position_ids, attention_mask=block_causal_mask(p, torch.float32)).logits
        packed = [unpack(t, p, cb.input_ids.shape) for t in token_logprobs_and_entropy(logits, p.input_ids)]
    mask = cb.attention_mask.bool()
    mask[:, 0] = False
    for a, b in zip(padded, packed):
        torch.testing.assert_close(a[mask], b[mask], rtol=1e-4, atol=1e-5)
        assert (b[~mask] == 0).all()
