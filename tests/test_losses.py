"""Loss functions against hand computations, gradients and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from learner import losses
from learner.logprobs import token_logprobs_and_entropy


def test_dpo_loss_hand_value():
    # margin = (-1 - -2) - (-3 - -2.5) = 1.5 ; beta 0.1 -> -log sigmoid(0.15)
    loss = losses.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), 0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.15)), rel=1e-6)


def test_ld_sequence_logps_hand_value():
    # chosen has 4 response tokens, rejected 2: l_p = 2. The chosen's tokens 3 and 4 weigh alpha.
    chosen = torch.tensor([[0.0, -1.0, -2.0, -3.0, -4.0]])
    chosen_mask = torch.tensor([[0.0, 1, 1, 1, 1]])
    rejected = torch.tensor([[0.0, -5.0, -6.0, 9.0, 9.0]])
    rejected_mask = torch.tensor([[0.0, 1, 1, 0, 0]])  # 9.0 are padding, must not count
    c, r = losses.ld_sequence_logps(chosen, chosen_mask, rejected, rejected_mask, alpha=0.3)
    assert c.item() == pytest.approx(-1 - 2 + 0.3 * (-3 - 4))
    assert r.item() == pytest.approx(-11.0)
    c1, _ = losses.ld_sequence_logps(chosen, chosen_mask, rejected, rejected_mask, alpha=1.0)
    assert c1.item() == pytest.approx(-10.0)  # alpha = 1 is the plain sum (DPO)


def test_group_mean_weights_groups_equally():
    per_pair = torch.tensor([1.0, 3.0, 10.0])  # group 0 has two pairs, group 5 one
    assert losses.group_mean(per_pair, torch.tensor([0, 0, 5])).item() == pytest.approx((2.0 + 10.0) / 2)


def test_nll_is_length_normalized_per_row():
    logps = torch.tensor([[-1.0, -3.0, 0.0], [-6.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert losses.nll_loss(logps, mask).item() == pytest.approx((2.0 + 6.0) / 2)


def test_grpo_clipped_loss_hand_value():
    # Row 0: A = +1, ratios 1.5, 0.5, 1.0 -> min(rA, clip(r)A) = 1.2, 0.5, 1.0
    # Row 1: A = -1, ratios 1.5, 0.5 (third token is padding) -> min = -1.5, -0.8
    # token mean of -min: (-1.2 - 0.5 - 1.0 + 1.5 + 0.8) / 5 = -0.08
    behaviour = torch.zeros(2, 3)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 7.0]]))
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    loss, stats = losses.grpo_loss(logps, behaviour, torch.tensor([1.0, -1.0]), mask, 0.2, 0.2)
    assert loss.item() == pytest.approx(-0.08, abs=1e-6)
    # clipped tokens: row 0 token 0 (1.5 > 1.2), row 1 token 1 (0.5 < 0.8, A<0) -> 2 of 5
    assert stats["clip_frac"].item() == pytest.approx(0.4)


def test_grpo_asymmetric_clip_and_kl():
    behaviour = torch.zeros(1, 2)
    logps = torch.log(torch.tensor([[1.25, 0.5]]))
    ref = torch.log(torch.tensor([[0.25 * 1.25, 0.5]]))
    mask = torch.ones(1, 2)
    # clip_high 0.28 lets ratio 1.25 through; kl_k3 of token 0: exp(log .25) - log .25 - 1
    loss, stats = losses.grpo_loss(logps, behaviour, torch.tensor([2.0]), mask, 0.2, 0.28, ref, kl_coef=0.1)
    k3 = 0.25 - math.log(0.25) - 1
    expected = (-(1.25 * 2) + 0.1 * k3 + -(0.5 * 2) + 0.0) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["kl"].item() == pytest.approx(k3 / 2, rel=1e-6)


def test_kl_k3_is_zero_at_equality_and_positive_elsewhere():
    x = torch.tensor([-1.0, -2.0, -0.1])
    assert torch.allclose(losses.kl_k3(x, x), torch.zeros(3))
    assert (losses.kl_k3(x, x - 0.5) > 0).all()


def test_entropy_loss_and_logprobs_against_distributions():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    ids = torch.randint(0, 7, (2, 4))
    logps, entropy = token_logprobs_and_entropy(logits, ids)
    dist = torch.distributions.Categorical(logits=logits[:, :-1])
    torch.testing.assert_close(logps[:, 1:], dist.log_prob(ids[:, 1:]))
    torch.testing.assert_close(entropy[:, 1:], dist.entropy())
    assert (logps[:, 0] == 0).all() and (entropy[:, 0] == 0).all()
    mask = torch.tensor([[0.0, 1, 1, 0], [0, 0, 1, 1]])
    expected = -0.01 * (dist.entropy() * mask[:, 1:]).sum() / 4
    torch.testing.assert_close(losses.entropy_loss(entropy, mask, 0.01), expected)


def test_temperature_divides_logits():
    logits = torch.randn(1, 3, 5)
    ids = torch.randint(0, 5, (1, 3))
    hot, _ = token_logprobs_and_entropy(logits, ids, temperature=0.5)
    ref, _ = token_logprobs_and_entropy(logits * 2, ids)
    torch.testing.assert_close(hot, ref)


def test_gradients_are_finite():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11, requires_grad=True)
    ids = torch.randint(0, 11, (4, 6))
    mask = torch.tensor([[0.0, 0, 1, 1, 1, 1]] * 4)
    logps, entropy = token_logprobs_and_entropy(logits, ids)
    c, r = losses.ld_sequence_logps(logps[:2], mask[:2], logps[2:], mask[2:], 0.3)
    total = losses.dpo_loss(c, r, c.detach() - 1, r.detach(), 0.1).mean()
    total = total + losses.nll_loss(logps, mask)
    grpo, _ = losses.grpo_loss(
        logps, logps.detach() - 0.3, torch.tensor([1.0, -1, 0.5, 0]), mask, 0.2, 0.2, logps.detach() + 0.1, 0.05
    )
    total = total + grpo + losses.entropy_loss(entropy, mask, 0.01)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_reward_model_loss_against_a_hand_computation():
    """Bradley-Terry with a margin over the trained pairs; the held-out pair only measured."""
    import math

    from learner.objective import collate, compute_reward_model_loss
    from rollout.records import LossSpec, TrainBatch, TrainSequence

    rows = [TrainSequence(prompt_ids=[1, 2, 3], response_ids=[]) for _ in range(4)]
    batch = TrainBatch(rows, chosen=[0, 2], rejected=[1, 3], pair_group=[0, 1], heldout=[1])
    scores = torch.tensor([2.0, 0.5, -1.0, 1.0], requires_grad=True)
    loss, metrics = compute_reward_model_loss(
        LossSpec(bradley_terry_weight=1.0, reward_margin=0.25), collate(batch, 0), scores
    )
    hand = -math.log(1 / (1 + math.exp(-(2.0 - 0.5 - 0.25))))  # pair 0 only
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    assert (metrics["rm_accuracy"], metrics["rm_margin"]) == (1.0, pytest.approx(1.5))
    assert metrics["heldout_accuracy"] == 0.0 and metrics["heldout_margin"] == pytest.approx(-2.0)
    assert metrics["heldout_loss"] == pytest.approx(-math.log(1 / (1 + math.exp(2.0 + 0.25))), rel=1e-6)
    loss.backward()  # no gradient reaches the held-out pair's rows
    assert (
        scores.grad[2].item() == 0 and scores.grad[3].item() == 0 and scores.grad[0].item() < 0 < scores.grad[1].item()
    )


@pytest.mark.parametrize("shape", [(3, 7), (13,)])
def test_chunked_logprobs_equal_unchunked_values_and_gradients(shape):
    """Log-probs and entropies computed in pieces (activation-checkpointed) equal the whole
    tensor's, padded [N, T, V] and packed [M, V], gradients included."""
    from learner.logprobs import logprobs_and_entropy

    torch.manual_seed(0)
    vocab = 50
    logits = torch.randn(*shape, vocab, dtype=torch.float64)
    targets = torch.randint(0, vocab, shape)
    results = []
    for chunk_bytes in (10**9, 4 * vocab * 2):  # whole, then pieces of 2 positions
        z = logits.clone().requires_grad_(True)
        logps, entropy = logprobs_and_entropy(z, targets, temperature=0.7, chunk_bytes=chunk_bytes)
        (logps.sum() * 0.3 + (entropy * torch.arange(entropy.numel()).view(shape)).sum()).backward()
        results.append((logps.detach(), entropy.detach(), z.grad))
    for whole, pieces in zip(*results):
        torch.testing.assert_close(pieces, whole, rtol=1e-6, atol=1e-6)
