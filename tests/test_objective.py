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
        Sample(
            prompt_id="p",
            prompt_ids=[1, 2, 3],
            response_ids=list(range(5, 5 + n)),
            logprobs=[-1.0] * n,
            finish_reason="stop",
            policy_version=0,
            reward=r,
        )
        for n, r in zip([2, 4, 3, 1], rewards)
    ]
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
    spec = LossSpec(
        dpo_weight=1.0, grpo_weight=0.5, beta=0.2, ld_alpha=0.3, nll_coef=0.1, kl_coef=0.05, entropy_coef=0.01
    )
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


def test_the_grpo_term_takes_its_own_log_probs_and_the_others_theirs():
    """The learner passes the GRPO term log-probs at the sampler's temperature (grpo_logps,
    grpo_ref_logps) and the DPO and NLL terms log-probs at temperature 1 (logps, ref_logps)."""
    torch.manual_seed(1)
    cb = collate(_batch(), pad_token_id=0)
    logps = -torch.rand(cb.input_ids.shape) * cb.attention_mask
    hot = logps * 0.6 - 0.2 * torch.rand(logps.shape) * cb.attention_mask  # as if at another temperature
    ref, hot_ref = logps + 0.3 * torch.randn(logps.shape), hot + 0.2 * torch.randn(logps.shape)
    spec = LossSpec(dpo_weight=1.0, grpo_weight=0.5, beta=0.2, nll_coef=0.1, kl_coef=0.05, temperature=0.7)
    total, metrics = compute_loss(spec, cb, logps, None, ref, grpo_logps=hot, grpo_ref_logps=hot_ref)
    m, c, r = cb.loss_mask, cb.chosen, cb.rejected
    pc, pr = losses.ld_sequence_logps(logps[c], m[c], logps[r], m[r], 1.0)
    rc, rr = losses.ld_sequence_logps(ref[c], m[c], ref[r], m[r], 1.0)
    dpo = losses.dpo_loss(pc, pr, rc, rr, 0.2).mean()
    nll = losses.nll_loss(logps[[0, 2]], m[[0, 2]])
    grpo, _ = losses.grpo_loss(hot, cb.behaviour_logps, cb.advantages, m, 0.2, 0.2, hot_ref, 0.05)
    torch.testing.assert_close(total, dpo + 0.1 * nll + 0.5 * grpo)
    assert metrics["grpo_loss"] == pytest.approx(grpo.item(), rel=1e-5)
    assert metrics["grpo_loss"] != pytest.approx(
        losses.grpo_loss(logps, cb.behaviour_logps, cb.advantages, m, 0.2, 0.2, ref, 0.05)[0].item(), rel=1e-3
    )


def test_reference_required_for_dpo():
    cb = collate(_batch(), pad_token_id=0)
    with pytest.raises(ValueError, match="reference"):
        compute_loss(LossSpec(dpo_weight=1.0), cb, torch.zeros(cb.input_ids.shape))


def test_no_pairs_gives_no_dpo_term():
    cb = collate(TrainBatch([TrainSequence([1], [2], [-0.5])], counts={"prompts_without_pair": 1}), pad_token_id=0)
    logps = torch.zeros(cb.input_ids.shape, requires_grad=True)
    loss, metrics = compute_loss(LossSpec(dpo_weight=1.0), cb, logps, ref_logps=logps.detach())
    assert loss.item() == 0.0 and "dpo_loss" not in metrics


def test_micro_batches_sum_to_the_whole_batch():
    """Split into parts (pair groups kept whole), normalized by the whole batch's totals, the
    parts' losses and gradients add up to the whole batch's."""
    from learner.objective import Totals, micro_batches, split_batch

    torch.manual_seed(1)
    samples = []
    for g in range(5):
        for k in range(4):
            n = 1 + (g + k) % 4
            samples.append(
                Sample(
                    prompt_id=f"g{g}",
                    prompt_ids=[1, 2],
                    response_ids=list(range(3, 3 + n)),
                    logprobs=[-1.0] * n,
                    finish_reason="stop",
                    policy_version=0,
                    reward=float((g + k) % 2 or g == 4),
                )
            )
    tb = build_group_dpo_batch(samples, with_advantages=True)
    spec = LossSpec(dpo_weight=1.0, grpo_weight=0.3, nll_coef=0.2, kl_coef=0.1, entropy_coef=0.01, ld_alpha=0.5)
    table = torch.randn(64, requires_grad=True)  # a "model": log-prob of token v at any position = f(table[v])

    def run(part: TrainBatch, totals=None):
        cb = collate(part, pad_token_id=0)
        logps = -torch.nn.functional.softplus(table[cb.input_ids]) * cb.attention_mask
        return compute_loss(spec, cb, logps, torch.sigmoid(table[cb.input_ids]), logps.detach() * 0.9, totals)

    whole, whole_metrics = run(tb)
    (g_whole,) = torch.autograd.grad(whole, table)
    totals = Totals.of(tb)
    shards = split_batch(tb, 2)
    parts = [m for shard in shards for m in micro_batches(shard, 6)]
    assert len(parts) > 2 and sum(len(p.sequences) for p in parts) == len(tb.sequences)
    assert sum(p.num_pairs for p in parts) == tb.num_pairs
    total_loss, grads, summed = 0.0, torch.zeros_like(table), {}
    for part in parts:
        loss, metrics = run(part, totals)
        grads += torch.autograd.grad(loss, table)[0]
        total_loss += loss.item()
        for k, v in metrics.items():
            summed[k] = summed.get(k, 0.0) + v
    assert total_loss == pytest.approx(whole.item(), rel=1e-5)
    torch.testing.assert_close(grads, g_whole, rtol=1e-5, atol=1e-7)
    for key in ("dpo_loss", "dpo_accuracy", "grpo_loss", "kl", "entropy", "nll_loss"):
        assert summed[key] == pytest.approx(whole_metrics[key], rel=1e-5, abs=1e-7), key


def test_micro_batches_under_a_token_budget():
    """With ``max_tokens``, a micro-batch closes before it would exceed the budget, counted as
    packed when prompts are shared; pair groups stay whole even when over it."""
    from learner.objective import micro_batches

    a, b = [1, 2, 3, 4], [5, 6]
    rows = [TrainSequence(a, [9] * 2), TrainSequence(a, [9] * 3), TrainSequence(a, [9] * 1), TrainSequence(b, [9] * 4)]
    batch = TrainBatch(rows)
    order = lambda parts: [[len(s.response_ids) for s in p.sequences] for p in parts]  # noqa: E731
    assert order(micro_batches(batch, 8)) == [[2, 3, 1, 4]]
    # rows alone: 6 + 7 > 10, 7 + 5 > 10, 5 + 6 > 10
    assert order(micro_batches(batch, 8, max_tokens=10)) == [[2], [3], [1], [4]]
    # shared prompt counted once: 4 + 2 + 3 = 9, + 1 = 10; b's rows bring their own prompt
    assert order(micro_batches(batch, 8, max_tokens=10, share_prompts=True)) == [[2, 3, 1], [4]]
    assert order(micro_batches(batch, 2, max_tokens=11, share_prompts=True)) == [
        [2, 3],
        [1, 4],
    ]  # rows first, then 5 + 6
    # a pair group over the budget is a micro-batch of its own, whole
    pairs = TrainBatch(rows, chosen=[0, 2], rejected=[1, 3], pair_group=[0, 0])
    parts = micro_batches(pairs, 8, max_tokens=5)
    assert order(parts) == [[2, 3, 1, 4]] and parts[0].num_pairs == 2
