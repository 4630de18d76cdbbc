"""Packed rows (each alone, or sharing their prompts) give the same per-token log-probs,
entropies and gradients as padded rows, with the whole row's mask or attention block by block."""

from __future__ import annotations

import pytest
import torch

from learner.logprobs import logprobs_and_entropy, token_logprobs_and_entropy
from learner.objective import collate
from learner.packing import BLOCK_SDPA, pack, packed_mask, unpack, use_block_attention
from rollout.records import TrainBatch, TrainSequence

ROWS = [
    TrainSequence([1, 5, 9], [20, 21, 22, 23]),
    TrainSequence([1, 7], [30]),
    TrainSequence([1, 5, 9], [24, 25]),  # shares row 0's prompt
    TrainSequence([1, 2, 3, 4, 5], [40, 41]),
    TrainSequence([1, 5, 9], [26]),  # and again
]


def test_shared_prompt_layout_and_mask():
    cb = collate(TrainBatch(ROWS), pad_token_id=3)
    alone, shared = (
        pack(cb.input_ids, cb.attention_mask, cb.loss_mask),
        pack(cb.input_ids, cb.attention_mask, cb.loss_mask, share_prompts=True),
    )
    assert alone.input_ids.shape[1] == int(cb.attention_mask.sum()) == 26
    assert shared.input_ids.shape[1] == 26 - 2 * 3  # the prompt [1, 5, 9] packed once instead of three times
    assert shared.input_ids[0].tolist() == [1, 5, 9, 20, 21, 22, 23, 24, 25, 26, 1, 7, 30, 1, 2, 3, 4, 5, 40, 41]
    assert shared.spans == ((0, 10), (10, 13), (13, 20)) and len(alone.spans) == len(ROWS)  # the attention blocks
    assert shared.position_ids[0, :10].tolist() == [0, 1, 2, 3, 4, 5, 6, 3, 4, 3]  # responses continue the prompt
    # row 2's first response token (24, packed at 7) is predicted from the prompt's last token (9, at 2)
    k = ((shared.rows == 2) & (shared.cols == 3)).nonzero().item()
    assert (shared.pred[k].item(), shared.target[k].item()) == (2, 24)
    assert sorted(zip(shared.rows.tolist(), shared.cols.tolist())) == sorted(zip(*cb.loss_mask.nonzero(as_tuple=True)))
    allowed = packed_mask(shared, torch.float32)[0, 0] == 0
    assert allowed[7, :3].all() and not allowed[7, 3:7].any() and allowed[8, 7]  # row 2 sees the prompt and itself
    assert not allowed[10, :10].any() and not allowed[2, 3]  # the next block sees nothing before it; no future
    assert torch.equal(unpack(shared.target.float(), shared, cb.input_ids.shape), cb.input_ids * cb.loss_mask)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "blocks"])
@pytest.mark.parametrize("share", [False, True])
def test_packed_equals_padded(tiny_qwen2, attn, share):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_qwen2, dtype=torch.float32, attn_implementation="sdpa" if attn == "blocks" else attn
    )
    if attn == "blocks":  # what the learner runs packed rows with
        assert use_block_attention(model) and model.config._attn_implementation == BLOCK_SDPA
    cb = collate(TrainBatch(ROWS), pad_token_id=3)
    mask = cb.loss_mask.bool()

    def grads_of(values: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        (values * cb.loss_mask).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    padded = token_logprobs_and_entropy(
        model(input_ids=cb.input_ids, attention_mask=cb.attention_mask).logits, cb.input_ids
    )
    padded_grads = grads_of(padded[0] + 0.1 * padded[1])
    p = pack(cb.input_ids, cb.attention_mask, cb.loss_mask, share_prompts=share)
    spans = dict(packed_spans=p.spans) if attn == "blocks" else {}
    logits = model(
        input_ids=p.input_ids,
        position_ids=p.position_ids,
        attention_mask=packed_mask(p, torch.float32),
        logits_to_keep=p.pred,
        **spans,
    ).logits[0]
    assert logits.shape[0] == int(mask.sum())  # logits on response tokens only
    packed = [unpack(t, p, cb.input_ids.shape) for t in logprobs_and_entropy(logits, p.target)]
    packed_grads = grads_of(packed[0] + 0.1 * packed[1])
    for a, b in zip(padded, packed):
        torch.testing.assert_close(a[mask], b[mask], rtol=1e-4, atol=1e-5)
        assert (b[~mask] == 0).all()
    for a, b in zip(padded_grads, packed_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_the_token_budget_counts_prompts_as_the_rank_packs_them():
    """With flash attention a rank packs every row with its own prompt: the micro-batch token
    budget then counts each row's prompt (k times a shared one), not once."""
    from launch.config import LearnerConfig
    from learner.trainer import rank_micro_batches
    from rollout.records import TrainBatch, TrainSequence

    rows = [
        TrainSequence(prompt_ids=list(range(20)), response_ids=[1, 2, 3, 4]) for _ in range(4)
    ]  # one prompt, 4 rows
    cfg = LearnerConfig(packing=True, share_prompts=True, micro_batch_size=8, micro_batch_tokens=40)
    shared = rank_micro_batches(TrainBatch(rows), cfg)  # sdpa: 20 + 4 x 4 = 36 tokens
    assert [len(m.sequences) for m in shared] == [4]
    own = rank_micro_batches(TrainBatch(rows), cfg, shares_prompts=False)  # flash: 24 tokens a row
    assert [len(m.sequences) for m in own] == [1, 1, 1, 1]
