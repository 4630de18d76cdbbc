"""The learner's loss: a LossSpec's terms over one collated batch.

The learner knows no algorithm. It gets rows (prompt + response token ids), the pairs that
index them, per-row advantages and behaviour log-probs, and a ``LossSpec`` saying which terms
are on; ``compute_loss`` adds them up from the pure functions in ``learner.losses``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner import losses
from rollout.records import LossSpec, TrainBatch


@dataclass
class CollatedBatch:
    """A TrainBatch as right-padded tensors; per-token tensors are aligned with input_ids."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    loss_mask: torch.Tensor  # [N, T] float, 1 on response tokens
    behaviour_logps: torch.Tensor  # [N, T], 0 where unknown
    advantages: torch.Tensor  # [N]
    chosen: torch.Tensor  # [P]
    rejected: torch.Tensor  # [P]
    pair_group: torch.Tensor  # [P]

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(batch: TrainBatch, pad_token_id: int) -> CollatedBatch:
    n = len(batch.sequences)
    width = max((len(s.prompt_ids) + len(s.response_ids) for s in batch.sequences), default=1)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width))
    behaviour = torch.zeros((n, width))
    for i, s in enumerate(batch.sequences):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attention_mask[i, : p + r] = 1
        loss_mask[i, p : p + r] = 1
        if s.behaviour_logps is not None:
            if len(s.behaviour_logps) != r:
                raise ValueError(f"row {i}: {len(s.behaviour_logps)} behaviour log-probs for {r} response tokens")
            behaviour[i, p : p + r] = torch.tensor(s.behaviour_logps)
    return CollatedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        behaviour_logps=behaviour,
        advantages=torch.tensor([s.advantage for s in batch.sequences], dtype=torch.float32),
        chosen=torch.tensor(batch.chosen, dtype=torch.long),
        rejected=torch.tensor(batch.rejected, dtype=torch.long),
        pair_group=torch.tensor(batch.pair_group, dtype=torch.long),
    )


def compute_loss(
    spec: LossSpec,
    batch: CollatedBatch,
    logps: torch.Tensor,
    entropy: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = dpo_weight * L_(Group)DPO + nll_coef * L_NLL + grpo_weight * L_GRPO - entropy_coef * H.

    ``logps``/``entropy``/``ref_logps`` are [N, T] per-token tensors aligned with input_ids.
    Returns the loss and float metrics of each term.
    """
    mask = batch.loss_mask.to(logps.dtype)
    loss = logps.new_zeros(())
    metrics: dict[str, float] = {}
    if spec.needs_reference and ref_logps is None:
        raise ValueError("this loss needs reference log-probs (DPO term or KL) but none were given")

    if spec.dpo_weight and batch.chosen.numel():
        c, r = batch.chosen, batch.rejected
        pol_c, pol_r = losses.ld_sequence_logps(logps[c], mask[c], logps[r], mask[r], spec.ld_alpha)
        ref_c, ref_r = losses.ld_sequence_logps(ref_logps[c], mask[c], ref_logps[r], mask[r], spec.ld_alpha)
        per_pair = losses.dpo_loss(pol_c, pol_r, ref_c, ref_r, spec.beta)
        dpo = losses.group_mean(per_pair, batch.pair_group)
        loss = loss + spec.dpo_weight * dpo
        margin = ((pol_c - ref_c) - (pol_r - ref_r)).detach()
        metrics.update(dpo_loss=dpo.item(), dpo_margin=margin.mean().item(), dpo_accuracy=(margin > 0).float().mean().item())
        if spec.nll_coef:
            rows = torch.unique(c)
            nll = losses.nll_loss(logps[rows], mask[rows])
            loss = loss + spec.nll_coef * nll
            metrics["nll_loss"] = nll.item()

    if spec.grpo_weight:
        grpo, stats = losses.grpo_loss(
            logps, batch.behaviour_logps.to(logps.dtype), batch.advantages, mask,
            spec.clip_low, spec.clip_high, ref_logps, spec.kl_coef,
        )  # fmt: skip
        loss = loss + spec.grpo_weight * grpo
        metrics["grpo_loss"] = grpo.item()
        metrics.update({k: v.item() for k, v in stats.items()})

    if entropy is not None:
        metrics["entropy"] = losses.token_mean(entropy.detach(), mask).item()
        if spec.entropy_coef:
            loss = loss + losses.entropy_loss(entropy, mask, spec.entropy_coef)

    metrics["loss"] = loss.item()
    return loss, metrics
