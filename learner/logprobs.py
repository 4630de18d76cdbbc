"""Per-token log-probs and entropies from a causal LM's logits."""

from __future__ import annotations

import torch
import torch.utils.checkpoint

# The most fp32 logits one piece of ``logprobs_and_entropy`` works on at once (128 MiB): its
# float copy, softmax and product exist for one piece at a time, not for the whole [N, T, V]
# (three 5 GB tensors for a 152k vocabulary at 4 x 2048 tokens).
CHUNK_BYTES = 2**27


def _logprobs_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    logps = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    return logps, entropy


def logprobs_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk_bytes: int = CHUNK_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy H of each distribution; logits [M, V] or [N, T, V], targets
    [M] or [N, T]. ``temperature`` divides the logits, as the sampler did.
        log p(y) = z_y - logsumexp(z),   H = logsumexp(z) - sum_v softmax(z)_v z_v
    Logits of more than ``chunk_bytes`` (as fp32) go in pieces of positions (views, no copy), each
    recomputed in the backward pass when gradients flow (activation checkpointing): the same
    values and gradients, without the fp32 intermediates of the whole tensor at once."""
    vocab = logits.shape[-1]
    per_piece = max(1, chunk_bytes // (4 * vocab))
    if targets.numel() <= per_piece:
        return _logprobs_and_entropy(logits, targets, temperature)
    # split/unbind (one backward each that joins the pieces' gradients), not slices (whose backward
    # writes each piece's gradient into a zero tensor of the whole size)
    rows = [(logits, targets)] if logits.dim() == 2 else list(zip(logits.unbind(0), targets.unbind(0)))
    checkpointed = torch.is_grad_enabled() and logits.requires_grad
    logps, entropy = [], []
    for row_logits, row_targets in rows:
        for piece in zip(row_logits.split(per_piece), row_targets.split(per_piece)):
            if checkpointed:
                lp, h = torch.utils.checkpoint.checkpoint(
                    _logprobs_and_entropy, *piece, temperature, use_reentrant=False
                )
            else:
                lp, h = _logprobs_and_entropy(*piece, temperature)
            logps.append(lp)
            entropy.append(h)
    return torch.cat(logps).view(targets.shape), torch.cat(entropy).view(targets.shape)


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
