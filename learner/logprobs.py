"""Per-token log-probs and entropies from a causal LM's logits."""

from __future__ import annotations

import torch


def logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy H of each distribution; logits [..., V], targets [...].
    ``temperature`` divides the logits, as the sampler did.
        log p(y) = z_y - logsumexp(z),   H = logsumexp(z) - sum_v softmax(z)_v z_v
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    logps = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    return logps, entropy


def token_logprobs_and_entropy(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every token given the ones before it, and the entropy of that distribution.

    logits: [B, T, V] of a causal LM over input_ids [B, T]. Returns two [B, T] tensors aligned
    with input_ids: position t holds log p(input_ids[t] | input_ids[:t]) and H(p(. | input_ids[:t]));
    position 0 (no context) holds 0.
    """
    logps, entropy = logprobs_and_entropy(logits[:, :-1], input_ids[:, 1:], temperature)
    pad = logps.new_zeros(logps.shape[0], 1)
    return torch.cat([pad, logps], dim=1), torch.cat([pad, entropy], dim=1)
