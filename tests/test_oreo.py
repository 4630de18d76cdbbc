"""OREO's losses against plain loops over sequences and actions, their gradients, the batch
builders of OREO and rejection sampling, and their configuration."""

from __future__ import annotations

import pytest
import torch

from launch.config import load_config
from learner import losses
from learner.objective import collate, compute_loss, compute_value_loss, explained_variance
from rollout.algorithms import build_oreo_batch, build_rejection_sampling_batch, make_algorithm, step_starts
from rollout.records import LossSpec, Sample, TrainBatch, TrainSequence

BETA = 0.3


def _inputs(seed: int = 0):
    """Two rows: a 2-token prompt then 4 response tokens, and a 3-token prompt then 2 (padded)."""
    torch.manual_seed(seed)
    mask = torch.tensor([[0.0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
    logps = (-torch.rand(2, 6) * mask).requires_grad_()
    ref = (-torch.rand(2, 6) * mask).requires_grad_()
    values = (torch.randn(2, 6) * mask).requires_grad_()
    rewards = torch.tensor([1.0, 0.0])
    return logps, ref, values, rewards, mask


def _actions(mask_row: list[float], starts_row: list[int]) -> list[list[int]]:
    """The token positions of each action of one row."""
    positions = [t for t, m in enumerate(mask_row) if m]
    begins = [positions[0] + s for s in starts_row]
    return [
        [t for t in positions if b <= t < (begins[k + 1] if k + 1 < len(begins) else 10**9)]
        for k, b in enumerate(begins)
    ]


def loop_losses(logps, ref, values, rewards, mask, starts_per_row):
    """OREO's value and policy losses written out: for each row, each action k beginning at t_k,
    A_k = sum of its tokens' log-ratios, value residual V(t_k) - R + beta * sum_{j>=k} sg(A_j),
    policy residual sg(V(t_k)) - R + beta * A_k + beta * sum_{j>k} sg(A_j)."""
    value_rows, policy_rows = [], []
    for i in range(mask.shape[0]):
        acts = _actions(mask[i].tolist(), starts_per_row[i])
        A = [sum(logps[i, t] - ref[i, t].detach() for t in act) for act in acts]
        v_terms, p_terms = [], []
        for k, act in enumerate(acts):
            v = values[i, act[0]]
            future_incl = sum(a.detach() for a in A[k:])
            future_excl = sum((a.detach() for a in A[k + 1 :]), torch.tensor(0.0))
            v_terms.append((v - rewards[i] + BETA * future_incl) ** 2)
            p_terms.append((v.detach() - rewards[i] + BETA * A[k] + BETA * future_excl) ** 2)
        value_rows.append(sum(v_terms) / len(v_terms))
        policy_rows.append(sum(p_terms) / len(p_terms))
    n = mask.shape[0]
    return sum(value_rows) / n, sum(policy_rows) / n


def _starts_tensor(mask, starts_per_row):
    starts = torch.zeros_like(mask)
    for i, row in enumerate(starts_per_row):
        first = int(mask[i].nonzero()[0])
        starts[i, [first + s for s in row]] = 1
    return starts


LEVELS = {
    "token": [[0, 1, 2, 3], [0, 1]],
    "step": [[0, 2], [0, 1]],  # row 0: actions of 2 tokens each
    "response": [[0], [0]],
}


@pytest.mark.parametrize("level", list(LEVELS))
def test_oreo_losses_equal_the_loops_and_their_gradients(level):
    starts_per_row = LEVELS[level]
    logps, ref, values, rewards, mask = _inputs()
    starts = _starts_tensor(mask, starts_per_row)
    want_v, want_p = loop_losses(logps, ref, values, rewards, mask, starts_per_row)
    got_v = losses.oreo_value_loss(values, logps, ref, rewards, mask, starts, BETA)
    got_p = losses.oreo_policy_loss(values, logps, ref, rewards, mask, starts, BETA)
    assert got_v.item() == pytest.approx(want_v.item(), rel=1e-6)
    assert got_p.item() == pytest.approx(want_p.item(), rel=1e-6)

    # value loss: gradients reach the values at action starts only, never the policy or the reference
    (g_values,) = torch.autograd.grad(got_v, [values])
    (w_values,) = torch.autograd.grad(want_v, [values])
    torch.testing.assert_close(g_values, w_values)
    assert (g_values[starts == 0] == 0).all() and (g_values[starts == 1] != 0).all()
    assert not got_v.requires_grad or torch.autograd.grad(
        got_v, [logps, ref], allow_unused=True, retain_graph=True
    ) == (None, None)

    # policy loss: gradients reach the policy's log-probs (through the current action only), not V or the reference
    g_logps = torch.autograd.grad(got_p, [logps], retain_graph=True)[0]
    w_logps = torch.autograd.grad(want_p, [logps])[0]
    torch.testing.assert_close(g_logps, w_logps)
    assert (g_logps[mask == 1] != 0).all() and (g_logps[mask == 0] == 0).all()
    assert torch.autograd.grad(got_p, [values, ref], allow_unused=True) == (None, None)


def test_token_level_policy_gradient_flows_through_the_current_token_only():
    """d L_pi / d lr_t = (2/K) * beta * residual_t: the future tokens' log-ratios are constants."""
    logps, ref, values, rewards, mask = _inputs(1)
    starts = mask.clone()
    loss = losses.oreo_policy_loss(values, logps, ref, rewards, mask, starts, BETA)
    (grad,) = torch.autograd.grad(loss, [logps])
    lr = (logps - ref).detach() * mask
    future_excl = lr.flip(-1).cumsum(-1).flip(-1) - lr
    residual = values.detach() - rewards[:, None] + BETA * lr + BETA * future_excl
    expected = 2 * BETA * residual * mask / mask.sum(-1, keepdim=True) / mask.shape[0]
    torch.testing.assert_close(grad, expected)


def test_response_level_is_one_residual_per_sequence():
    logps, ref, values, rewards, mask = _inputs(2)
    starts = _starts_tensor(mask, [[0], [0]])
    got = losses.oreo_policy_loss(values, logps, ref, rewards, mask, starts, BETA)
    v0 = values[[0, 1], [2, 3]]
    total_lr = ((logps - ref) * mask).sum(-1)
    assert got.item() == pytest.approx(((v0 - rewards + BETA * total_lr) ** 2).mean().item(), rel=1e-6)


def test_full_vocabulary_kl_equals_the_sum_over_tokens():
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(3, 7), torch.randn(3, 7)
    got = losses.kl_full_vocab(logits, ref_logits, temperature=0.7)
    for row in range(3):
        p, q = torch.softmax(logits[row] / 0.7, -1), torch.softmax(ref_logits[row] / 0.7, -1)
        assert got[row].item() == pytest.approx(
            sum(p[v] * (p[v].log() - q[v].log()) for v in range(7)).item(), rel=1e-5
        )
    assert losses.kl_full_vocab(logits, logits).abs().max().item() < 1e-6


def test_step_starts_split_after_each_delimiter():
    texts = ["3", " +", " 4", " =", " 7", ".\n", "7", " *", " 2", "\n", "\n", "=", " 14"]
    assert step_starts(texts, "\n") == [0, 6, 10, 11]
    assert step_starts(["a", "\n", "\n", "b"], "\n\n") == [0, 3]  # a delimiter spanning two tokens
    assert step_starts(["a", "b\n"], "\n") == [0]  # a delimiter in the last token starts nothing
    assert step_starts(["no", " steps"], "\n") == [0]


def _samples(rewards=(1.0, 0.0, 1.0, 0.0)):
    return [
        Sample(
            prompt_id=f"p{i // 2}",
            prompt_ids=[1, 2],
            response_ids=[5, 9, 6, 9, 7],
            logprobs=[-1.0] * 5,
            finish_reason="stop",
            policy_version=0,
            reward=r,
        )
        for i, r in enumerate(rewards)
    ]


def test_oreo_batch_keeps_every_sample_with_its_reward_and_actions():
    texts = lambda ids: ["\n" if i == 9 else "x" for i in ids]  # noqa: E731  token 9 ends a step
    token = build_oreo_batch(_samples())
    assert [s.reward for s in token.sequences] == [1.0, 0.0, 1.0, 0.0] and token.chosen == []
    assert all(s.action_starts is None for s in token.sequences)
    step = build_oreo_batch(_samples(), "step", "\n", texts)
    assert all(s.action_starts == [0, 2, 4] for s in step.sequences) and step.counts["actions"] == 12
    assert all(s.action_starts == [0] for s in build_oreo_batch(_samples(), "response").sequences)
    with pytest.raises(ValueError, match="token texts"):
        build_oreo_batch(_samples(), "step")


def test_rejection_sampling_keeps_the_correct_samples():
    batch = build_rejection_sampling_batch(_samples((1.0, 0.0, 0.0, 1.0)))
    assert len(batch.sequences) == 2 and batch.counts == {"kept": 2, "rejected": 2}
    assert build_rejection_sampling_batch(_samples((0.0,) * 4)).sequences == []


def test_compute_loss_composes_oreo_terms():
    batch = build_oreo_batch(_samples(), "response")
    cb = collate(batch, pad_token_id=0)
    torch.manual_seed(0)
    logps = -torch.rand(cb.input_ids.shape) * cb.loss_mask
    ref = -torch.rand(cb.input_ids.shape) * cb.loss_mask
    values = torch.randn(cb.input_ids.shape) * cb.loss_mask
    kl_tokens = torch.rand(cb.input_ids.shape)
    spec = LossSpec(bellman_weight=1.0, value_weight=1.0, beta=BETA, kl_reg=0.3)
    total, metrics = compute_loss(spec, cb, logps, None, ref, values=values, kl_tokens=kl_tokens)
    m = cb.loss_mask
    policy = losses.oreo_policy_loss(values, logps, ref, cb.rewards, m, cb.action_starts, BETA)
    kl = ((kl_tokens * m).sum(-1) / m.sum(-1)).mean()
    assert total.item() == pytest.approx((policy + 0.3 * kl).item(), rel=1e-6)
    assert metrics["kl_reg_term"] == pytest.approx(kl.item(), rel=1e-6)
    value_loss, vm = compute_value_loss(spec, cb, values, logps, ref)
    assert value_loss.item() == pytest.approx(
        losses.oreo_value_loss(values, logps, ref, cb.rewards, m, cb.action_starts, BETA).item()
    )
    v0 = values[:, 2]  # the first response column: V of the prompt alone
    assert vm["value_s0_mean"] == pytest.approx(v0.mean().item(), rel=1e-6)
    assert vm["value_s0_abs_err"] == pytest.approx((v0 - cb.rewards).abs().mean().item(), rel=1e-6)
    k3 = LossSpec(bellman_weight=1.0, beta=BETA, kl_reg=0.3, kl_estimator="k3")
    total_k3, _ = compute_loss(k3, cb, logps, None, ref, values=values)
    k3_term = ((losses.kl_k3(logps, ref) * m).sum(-1) / m.sum(-1)).mean()
    assert total_k3.item() == pytest.approx((policy + 0.3 * k3_term).item(), rel=1e-6)
    with pytest.raises(ValueError, match="value model"):
        compute_loss(spec, cb, logps, None, ref, kl_tokens=kl_tokens)


def test_sft_term_is_the_nll_of_every_row():
    batch = TrainBatch([TrainSequence([1], [4, 5]), TrainSequence([1, 2], [6])])
    cb = collate(batch, 0)
    logps = torch.tensor([[0.0, -1.0, -3.0], [0.0, 0.0, -6.0]])
    total, metrics = compute_loss(LossSpec(sft_weight=1.0), cb, logps)
    assert total.item() == pytest.approx((2.0 + 6.0) / 2) and metrics["sft_loss"] == pytest.approx(4.0)


def test_collate_marks_action_starts():
    batch = TrainBatch([TrainSequence([1, 2], [3, 4, 5], action_starts=[0, 2]), TrainSequence([1], [6, 7])])
    cb = collate(batch, 0)
    assert cb.action_starts.tolist() == [[0, 0, 1, 0, 1], [0, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="action starts"):
        collate(TrainBatch([TrainSequence([1], [3, 4], action_starts=[1])]), 0)


def test_oreo_configuration():
    cfg = load_config("tiny-grpo", ["algorithm.name=oreo"])
    algo = make_algorithm(cfg.algorithm)
    assert algo.loss.bellman_weight == algo.loss.value_weight == 1.0 and algo.loss.kl_reg == 0.01
    assert algo.loss.needs_reference and algo.loss.needs_value and algo.loss.needs_full_logits
    assert (
        make_algorithm(load_config("tiny-grpo", ["algorithm.name=oreo", "algorithm.level=step"]).algorithm).loss.kl_reg
        == 0.1
    )
    assert (
        make_algorithm(
            load_config("tiny-grpo", ["algorithm.name=oreo", "algorithm.level=response"]).algorithm
        ).loss.kl_reg
        == 0.3
    )
    assert (
        make_algorithm(load_config("tiny-grpo", ["algorithm.name=oreo", "algorithm.kl_reg=0"]).algorithm).loss.kl_reg
        == 0
    )
    rs = make_algorithm(load_config("tiny-grpo", ["algorithm.name=rejection_sampling"]).algorithm).loss
    assert rs.sft_weight == 1.0 and not rs.needs_reference and not rs.needs_value
    from launch.config import ConfigError

    for bad, field in [
        ("algorithm.level=sentence", "algorithm.level"),
        ("algorithm.step_delimiter=''", "algorithm.step_delimiter"),
        ("algorithm.kl_reg=-1", "algorithm.kl_reg"),
        ("learner.value_lr=0", "learner.value_lr"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config("tiny-grpo", ["algorithm.name=oreo", bad])


def test_offline_oreo_trains_on_a_file_of_scored_responses(tiny_llama, tmp_path):
    """s = inf with a JSONL file of scored responses: every response is a row, unpaired, with its
    reward, and the step level finds the steps with the tokenizer."""
    import json

    from transformers import AutoTokenizer

    from launch.train import TokenTexts
    from rollout.data import groups_of, read_data

    path = tmp_path / "scored.jsonl"
    records = [
        ("What is 2 + 3?", "2 + 3 = 5\nThe answer is 5", 1.0),
        ("What is 2 + 3?", "2 + 3 = 6", 0.0),
        ("What is 4 + 4?", "4 + 4 = 8\n\\boxed{8}", 1.0),
    ]
    path.write_text("".join(json.dumps({"prompt": p, "response": r, "reward": w}) + "\n" for p, r, w in records))
    groups = groups_of(read_data(str(path)), AutoTokenizer.from_pretrained(tiny_llama))
    samples = [s for g in groups for s in g]
    batch = build_oreo_batch(samples, "step", "\n", TokenTexts(tiny_llama))
    assert [s.reward for s in batch.sequences] == [1.0, 0.0, 1.0]
    assert [len(s.action_starts) for s in batch.sequences] == [2, 1, 2]  # a new step after each "\n"
    cb = collate(batch, 0)
    assert cb.action_starts.sum().item() == 5 and cb.rewards.tolist() == [1.0, 0.0, 1.0]


def test_value_scorer_packs_states_by_prompt_and_scores_each_alone(tiny_llama, tmp_path):
    """The packed scorer (each prompt once, small token budget: several forwards) gives every
    state the value a forward of that state alone gives."""
    from learner.value import ValueModel, ValueScorer, save_value_folder, token_chunks

    torch.manual_seed(0)
    model = ValueModel.from_pretrained(tiny_llama)
    torch.nn.init.normal_(model.value_head.weight, std=1.0)  # a head that tells states apart
    save_value_folder(str(tmp_path / "value"), model.backbone, model.state_dict())
    states = [([5, 6, 7], []), ([5, 6, 7], [9]), ([8, 9], [10, 11, 12]), ([5, 6, 7], [9, 4, 4]), ([8, 9], [])]
    scorer = ValueScorer(str(tmp_path / "value"), max_tokens=9)
    assert sorted(i for c in token_chunks(states, 9) for i in c) == list(range(5)) and len(token_chunks(states, 9)) == 2
    got = scorer.score(states)
    with torch.no_grad():
        alone = [model(torch.tensor([p + r]))[0, -1].item() for p, r in states]
    assert got == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert len(set(round(v, 4) for v in got)) == len(states)


def test_explained_variance_by_hand():
    """Token level, log pi = log ref (the target is R): y = [1, 1, 0], V = [0.8, 0.6, 0.2], so
    e = y - V = [0.2, 0.4, -0.2]; Var(y) = 2/3 - 4/9 = 2/9, Var(e) = 0.08 - (0.4/3)^2 = 0.0622...;
    EV = 1 - 0.0622... / 0.2222... = 0.72."""
    cb = collate(TrainBatch([TrainSequence([1], [4, 5], reward=1.0), TrainSequence([1], [6], reward=0.0)]), 0)
    logps = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]]) * cb.loss_mask
    values = torch.tensor([[0.0, 0.8, 0.6], [0.0, 0.2, 0.0]])
    _, metrics = compute_value_loss(LossSpec(value_weight=1.0, beta=BETA), cb, values, logps, logps)
    assert explained_variance(metrics)["value_explained_variance"] == pytest.approx(0.72)
    assert not any(k.startswith("value_ev_") for k in explained_variance(metrics))
    constant = torch.full_like(values, 2 / 3) * cb.loss_mask  # the mean target at every state: EV 0
    _, flat = compute_value_loss(LossSpec(value_weight=1.0, beta=BETA), cb, constant, logps, logps)
    assert explained_variance(flat)["value_explained_variance"] == pytest.approx(0.0, abs=1e-9)


def test_explained_variance_of_parts_is_that_of_the_whole_batch():
    """With log-ratios (the target is R - beta * sum of the log-ratios from the state on, computed
    here by loops) and at step level; micro-batches' sums add up to the whole batch's."""
    batch = build_oreo_batch(_samples(), "response")
    batch = TrainBatch(
        [TrainSequence(s.prompt_ids, s.response_ids, reward=s.reward, action_starts=[0, 2, 4]) for s in batch.sequences]
    )
    cb = collate(batch, 0)
    torch.manual_seed(3)
    logps, ref = -torch.rand(cb.input_ids.shape) * cb.loss_mask, -torch.rand(cb.input_ids.shape) * cb.loss_mask
    values = torch.randn(cb.input_ids.shape) * cb.loss_mask
    spec = LossSpec(value_weight=1.0, beta=0.5)
    ys, vs = [], []
    for i in range(cb.input_ids.shape[0]):
        cols = [t for t in range(cb.input_ids.shape[1]) if cb.action_starts[i, t] and cb.loss_mask[i, t]]
        for t in cols:
            future = sum(float(logps[i, j] - ref[i, j]) for j in range(t, cb.input_ids.shape[1]) if cb.loss_mask[i, j])
            ys.append(float(cb.rewards[i]) - 0.5 * future)
            vs.append(float(values[i, t]))
    y, v = torch.tensor(ys, dtype=torch.float64), torch.tensor(vs, dtype=torch.float64)
    expected = 1 - (y - v).var(unbiased=False) / y.var(unbiased=False)
    _, whole = compute_value_loss(spec, cb, values, logps, ref)
    assert explained_variance(whole)["value_explained_variance"] == pytest.approx(expected.item(), rel=1e-6)
    parts = [
        compute_value_loss(spec, collate(TrainBatch(batch.sequences[a:b]), 0), values[a:b], logps[a:b], ref[a:b])[1]
        for a, b in [(0, 1), (1, len(batch.sequences))]
    ]
    summed = {k: parts[0][k] + parts[1][k] for k in parts[0]}
    assert explained_variance(summed)["value_explained_variance"] == pytest.approx(expected.item(), rel=1e-6)
