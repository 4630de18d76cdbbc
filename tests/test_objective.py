"""compute_loss composes the pure losses as its LossSpec says."""

from __future__ import annotations

import pytest
import torch

from learner import losses
from learner.objective import collate, compute_loss
from rollout.algorithms import build_group_dpo_batch
from rollout.records import LossSpec, Sample, TrainBatch, TrainSequence


def _batch():
    rewards = [1.0, 0.0, 1.0, 0.0]
    samples = [
        Sample(prompt_id="p", prompt_ids=[1, 2, 3], response_ids=list(range(5, 5 + n)), logprobs=[-1.0] * n,
               finish_reason="stop", policy_version=0, reward=r)
        for n, r in zip([2, 4, 3, 1], rewards)
    ]  # fmt: skip
    return build_group_dpo_batch(samples, with_advantages=True)


def test_collate_aligns_response_tokens():
    batch = collate(TrainBatch([TrainSequence([1, 2], [7, 8, 9], [-0.1, -0.2, -0.3])]), pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 7, 8, 9]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 1]]
    torch.testing.assert_close(batch.behaviour_logps, torch.tensor([[0, 0, -0.1, -0.2, -0.3]]))
    with pytest.raises(ValueError, match="behaviour log-probs"):
        collate(TrainBatch([TrainSequence([1], [7, 8], [-0.1])]), pad_token_id=0)


def test_combined_loss_is_group_dpo_plus_alpha_grpo():
    torch.manual_seed(0)
    tb = _batch()
    cb = collate(tb, pad_token_id=0)
    logps = -torch.rand(cb.input_ids.shape) * cb.attention_mask
    ref = logps + 0.3 * torch.randn(logps.shape)
    entropy = torch.rand(logps.shape)
    spec = LossSpec(dpo_weight=1.0, grpo_weight=0.5, beta=0.2, ld_alpha=0.3, nll_coef=0.1, kl_coef=0.05, entropy_coef=0.01)
    total, metrics = compute_loss(spec, cb, logps, entropy, ref)

    m = cb.loss_mask
    c, r = cb.chosen, cb.rejected
    pc, pr = losses.ld_sequence_logps(logps[c], m[c], logps[r], m[r], 0.3)
    rc, rr = losses.ld_sequence_logps(ref[c], m[c], ref[r], m[r], 0.3)
    group_dpo = losses.dpo_loss(pc, pr, rc, rr, 0.2).mean()  # one prompt: group mean == mean over its 4 pairs
    nll = losses.nll_loss(logps[[0, 2]], m[[0, 2]])
    grpo, _ = losses.grpo_loss(logps, cb.behaviour_logps, cb.advantages, m, 0.2, 0.2, ref, 0.05)
    expected = group_dpo + 0.1 * nll + 0.5 * grpo - 0.01 * (entropy * m).sum() / m.sum()
    torch.testing.assert_close(total, expected)
    assert tb.num_pairs == 4 and metrics["loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_reference_required_for_dpo():
    cb = collate(_batch(), pad_token_id=0)
    with pytest.raises(ValueError, match="reference"):
        compute_loss(LossSpec(dpo_weight=1.0), cb, torch.zeros(cb.input_ids.shape))


def test_no_pairs_gives_no_dpo_term():
    cb = collate(TrainBatch([TrainSequence([1], [2], [-0.5])], counts={"prompts_without_pair": 1}), pad_token_id=0)
    logps = torch.zeros(cb.input_ids.shape, requires_grad=True)
    loss, metrics = compute_loss(LossSpec(dpo_weight=1.0), cb, logps, ref_logps=logps.detach())
    assert loss.item() == 0.0 and "dpo_loss" not in metrics
