"""Losses as pure torch functions: one equation each, no Ray, no DeepSpeed.

Conventions. Sequences are rows of a padded batch. ``token_logps[i, t]`` is log pi(y_t | x, y_<t)
of the token at position t of row i, and ``mask[i, t]`` is 1 where that token is a response token
the loss sees (prompt and padding are 0). All per-token tensors share the shape [N, T].
Pairs index rows: ``chosen[k], rejected[k]`` are the row indices of pair k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t values[i, t] * mask[i, t], per row."""
    return (values * mask).sum(dim=-1)


def token_mean(values: torch.Tensor, mask: torch.Tensor, total: float | None = None) -> torch.Tensor:
    """(sum_i sum_t values * mask) / (sum_i sum_t mask): every response token weighs the same.

    ``total`` replaces the denominator when this batch is one part of a larger one (micro-batches,
    data-parallel ranks): the parts then sum to the token mean of the whole.
    """
    return (values * mask).sum() / (mask.sum().clamp(min=1) if total is None else total)


def ld_sequence_logps(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-desensitized sequence log-probs of a pair (LD-DPO, arXiv 2505.02142).

        l_p = min(|y_w|, |y_l|)
        log pi_ld(y|x) = sum_{t <= l_p} log pi(y_t|x,y_<t) + alpha * sum_{t > l_p} log pi(y_t|x,y_<t)

    t counts response tokens (mask positions), from 1. alpha = 1 gives the plain sums of DPO.
    Inputs are [P, T] rows of the chosen and rejected responses; returns two [P] tensors.
    """
    shared = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1)).unsqueeze(-1)

    def weighted(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        position = mask.cumsum(-1)
        weight = torch.where(position <= shared, 1.0, alpha).to(logps.dtype)
        return masked_sum(logps, mask * weight)

    return weighted(chosen_logps, chosen_mask), weighted(rejected_logps, rejected_mask)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Sigmoid DPO loss of each pair (Rafailov et al. 2023):

        L = -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])

    Inputs are [P] sequence log-probs; returns [P].
    """
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def group_mean(per_item: torch.Tensor, group: torch.Tensor, num_groups: int | None = None) -> torch.Tensor:
    """Mean over groups of the mean within each group:

        L = (1/G) sum_g (1/|P_g|) sum_{k in P_g} per_item[k]

    With one pair per group this is the plain mean over pairs (DPO); with every (correct,
    incorrect) pair of a prompt's samples in one group it is GroupDPO. A group's items must all
    be in this batch; ``num_groups`` gives G when the batch is a part of a larger one.
    """
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse].to(per_item.dtype)
    return (per_item * weight).sum() / (counts.numel() if num_groups is None else num_groups)


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Reward-model loss of each pair (Bradley-Terry, with an optional margin m):

        L_k = -log sigmoid(r(x, y_w) - r(x, y_l) - m)

    ``chosen_scores``/``rejected_scores`` [P] are the model's scalar rewards of each pair's rows."""
    return -F.logsigmoid(chosen_scores - rejected_scores - margin)


def nll_loss(token_logps: torch.Tensor, mask: torch.Tensor, num_rows: int | None = None) -> torch.Tensor:
    """Length-normalized negative log-likelihood, averaged over rows:

    L = (1/N) sum_i [ -(1/|y_i|) sum_t log pi(y_{i,t}) ]      (N = ``num_rows`` if given)
    """
    per_row = -masked_sum(token_logps, mask) / mask.sum(-1).clamp(min=1)
    return per_row.sum() / (per_row.numel() if num_rows is None else num_rows)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref) (Schulman 2020), unbiased and >= 0:

    k3 = exp(log ref - log pi) - (log ref - log pi) - 1
    """
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(
    logps: torch.Tensor,
    behaviour_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logps: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    total_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level clipped GRPO objective, aggregated as a token mean:

        rho_t = exp(log pi(y_t) - log mu(y_t))       (mu: the rollout engine that sampled y)
        l_t   = -min(rho_t * A, clip(rho_t, 1 - clip_low, 1 + clip_high) * A) + kl_coef * k3_t
        L     = sum_{i,t} mask * l_t / sum_{i,t} mask

    ``advantages`` is [N] (one per sequence); ``total_tokens`` replaces sum(mask) when this batch
    is a part of a larger one. Returns the loss and detached statistics (clip fraction, mean
    ratio, mean KL when a reference is given), normalized the same way.
    """
    adv = advantages.unsqueeze(-1).to(logps.dtype)
    ratio = torch.exp(logps - behaviour_logps)
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    stats = {
        "clip_frac": token_mean(((ratio * adv) > (clipped * adv)).to(logps.dtype), mask, total_tokens).detach(),
        "ratio_mean": token_mean(ratio, mask, total_tokens).detach(),
    }
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps)
        stats["kl"] = token_mean(kl, mask, total_tokens).detach()
        if kl_coef:
            per_token = per_token + kl_coef * kl
    return token_mean(per_token, mask, total_tokens), stats


def entropy_loss(
    entropy: torch.Tensor, mask: torch.Tensor, coef: float, total_tokens: float | None = None
) -> torch.Tensor:
    """Entropy regularization: L = -coef * token_mean(H_t), H_t = -sum_v pi(v) log pi(v)."""
    return -coef * token_mean(entropy, mask, total_tokens)


# -- OREO (arXiv 2412.16145): soft Bellman consistency of a policy and a value model ---------------
#
# Token-level MDP: state s_t = prompt + response tokens before t, action a_t = token t, reward R
# only at the end. lr_t = log pi(a_t|s_t) - log ref(a_t|s_t). An *action* may span several tokens
# (step level: a reasoning step; response level: the whole response): ``starts[i, t]`` is 1 where
# an action of row i begins, and every response token belongs to the action that began last.
# ``values[i, t]`` is V(state before token t), read where an action begins.


def action_log_ratios(
    log_ratio: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per action k of each row, at its first token t_k:

        A_k = sum_{t in action k} lr_t                    (the action's log-ratio, with gradient)
        F_k = sum_{t >= t_k} lr_t                         (the action's and every later one's)

    Both are [N, T], nonzero only where ``starts`` is 1. ``log_ratio`` is lr_t, [N, T].
    """
    lr = log_ratio * mask
    future = lr.flip(-1).cumsum(-1).flip(-1)  # F at every token: sum of lr from t to the end
    action = (starts * mask).cumsum(-1).long()  # 1-based index of each token's action (0 before the first)
    per_action = lr.new_zeros(lr.shape[0], lr.shape[1] + 1).scatter_add(1, action, lr)  # A by action index
    return per_action.gather(1, action) * starts * mask, future * starts * mask


def _per_state_mean(per_state: torch.Tensor, states: torch.Tensor, num_rows: int | None) -> torch.Tensor:
    """Mean over each row's states, then over rows (``num_rows`` when this batch is a part)."""
    per_row = masked_sum(per_state, states) / states.sum(-1).clamp(min=1)
    return per_row.sum() / (per_row.numel() if num_rows is None else num_rows)


def oreo_value_loss(
    values: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    starts: torch.Tensor,
    beta: float,
    num_rows: int | None = None,
) -> torch.Tensor:
    """OREO value loss: the value model alone learns (every policy term is detached):

        L_V = (1/N) sum_i (1/K_i) sum_k [ V(s_k) - R_i + beta * sg(sum_{j >= k} A_j) ]^2

    over the K_i actions of row i (token level: every response token). ``rewards`` is [N].
    """
    states = starts * mask
    residual = values - oreo_value_target(logps, ref_logps, rewards, mask, starts, beta).to(values.dtype)
    return _per_state_mean(residual.square(), states, num_rows)


def oreo_value_target(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    starts: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """What OREO's value loss regresses V(s_k) on, at each state k of row i (no gradient):

        y_k = R_i - beta * sg(sum_{j >= k} A_j)

    [N, T]; meaningful where an action begins (``starts * mask``)."""
    _, future = action_log_ratios((logps - ref_logps).detach(), mask, starts * mask)
    return rewards.to(future.dtype)[:, None] - beta * future


def oreo_policy_loss(
    values: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    starts: torch.Tensor,
    beta: float,
    num_rows: int | None = None,
) -> torch.Tensor:
    """OREO policy loss: only the current action's log-ratio carries gradient (V and the later
    actions' log-ratios are stop-gradient):

        L_pi = (1/N) sum_i (1/K_i) sum_k [ sg(V(s_k)) - R_i + beta * A_k + sg(beta * sum_{j > k} A_j) ]^2

    Response level (one action: the whole response) this is [V(s_0) - R + beta * sum_t lr_t]^2.
    """
    states = starts * mask
    current, future = action_log_ratios(logps - ref_logps.detach(), mask, states)
    later = (future - current).detach()
    residual = values.detach() - rewards.to(logps.dtype)[:, None] + beta * current + beta * later
    return _per_state_mean(residual.square(), states, num_rows)


def kl_full_vocab(logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position KL(pi || ref) over the whole vocabulary, from logits [..., V]:

    KL_t = sum_v pi(v|s_t) * (log pi(v|s_t) - log ref(v|s_t))
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float() / temperature, dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def state_mean(per_token: torch.Tensor, mask: torch.Tensor, num_rows: int | None = None) -> torch.Tensor:
    """Mean over each row's response tokens, then over rows (OREO's KL regularizer L_reg):

    L = (1/N) sum_i (1/|y_i|) sum_t per_token[i, t]
    """
    return _per_state_mean(per_token, mask, num_rows)
