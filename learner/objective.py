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
    behaviour_logps: torch.Tensor  # [N, T]
    has_behaviour: torch.Tensor  # [N] bool: False for rows no engine generated (offline data)
    advantages: torch.Tensor  # [N]
    chosen: torch.Tensor  # [P]
    rejected: torch.Tensor  # [P]
    pair_group: torch.Tensor  # [P]
    heldout: torch.Tensor  # [P] bool: a pair only measured, not trained on
    rewards: torch.Tensor  # [N]
    action_starts: torch.Tensor  # [N, T] float, 1 where an action (OREO) begins
    policy_versions: torch.Tensor  # [N] long: the version of the weights that generated each row


def collate(batch: TrainBatch, pad_token_id: int) -> CollatedBatch:
    n = len(batch.sequences)
    width = max((len(s.prompt_ids) + len(s.response_ids) for s in batch.sequences), default=1)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width))
    behaviour = torch.zeros((n, width))
    starts = torch.zeros((n, width))
    for i, s in enumerate(batch.sequences):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attention_mask[i, : p + r] = 1
        loss_mask[i, p : p + r] = 1
        if s.action_starts is None:
            starts[i, p : p + r] = 1
        else:
            if any(not 0 <= a < r for a in s.action_starts) or (r and 0 not in s.action_starts):
                raise ValueError(
                    f"row {i}: action starts {s.action_starts} must include 0 and lie in its {r} response tokens"
                )
            starts[i, [p + a for a in s.action_starts]] = 1
        if s.behaviour_logps is not None:
            if len(s.behaviour_logps) != r:
                raise ValueError(f"row {i}: {len(s.behaviour_logps)} behaviour log-probs for {r} response tokens")
            behaviour[i, p : p + r] = torch.tensor(s.behaviour_logps)
    return CollatedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        behaviour_logps=behaviour,
        has_behaviour=torch.tensor([s.behaviour_logps is not None for s in batch.sequences], dtype=torch.bool),
        advantages=torch.tensor([s.advantage for s in batch.sequences], dtype=torch.float32),
        chosen=torch.tensor(batch.chosen, dtype=torch.long),
        rejected=torch.tensor(batch.rejected, dtype=torch.long),
        pair_group=torch.tensor(batch.pair_group, dtype=torch.long),
        heldout=torch.tensor([k in set(batch.heldout) for k in range(batch.num_pairs)], dtype=torch.bool),
        rewards=torch.tensor([s.reward for s in batch.sequences], dtype=torch.float32),
        action_starts=starts,
        policy_versions=torch.tensor([s.policy_version for s in batch.sequences], dtype=torch.long),
    )


@dataclass(frozen=True)
class Totals:
    """Denominators of the whole step's batch. A micro-batch normalized by them contributes its
    exact share: the parts' losses (and metrics) sum to those of the whole batch."""

    tokens: float  # response tokens of all rows (GRPO token mean, entropy)
    groups: int  # pair groups (DPO / GroupDPO mean)
    pairs: int
    chosen_rows: int  # distinct chosen rows (NLL mean)
    rows: int = 0  # every row (SFT, OREO and KL means over sequences)
    heldout_pairs: int = 0  # pairs only measured (a reward model's held-out share): not in groups or pairs

    @staticmethod
    def of(batch: TrainBatch) -> Totals:
        heldout = set(batch.heldout)
        trained = [k for k in range(batch.num_pairs) if k not in heldout]
        return Totals(
            tokens=float(sum(len(s.response_ids) for s in batch.sequences)),
            groups=len({batch.pair_group[k] for k in trained}),
            pairs=len(trained),
            chosen_rows=len({batch.chosen[k] for k in trained}),
            rows=len(batch.sequences),
            heldout_pairs=len(heldout),
        )


def units(batch: TrainBatch) -> list[list[int]]:
    """Rows that must stay together: the rows of each pair group; every other row alone."""
    unit_of: dict[int, int] = {}
    found: list[list[int]] = []
    for group in dict.fromkeys(batch.pair_group):
        rows = sorted(
            {r for k, g in enumerate(batch.pair_group) if g == group for r in (batch.chosen[k], batch.rejected[k])}
        )
        if any(r in unit_of for r in rows):
            raise ValueError(f"pair group {group} shares rows with another group")
        unit_of.update({r: len(found) for r in rows})
        found.append(rows)
    found += [[r] for r in range(len(batch.sequences)) if r not in unit_of]
    return found


def subset(batch: TrainBatch, rows: list[int]) -> TrainBatch:
    """The rows given (whole pair groups) and their pairs, re-indexed."""
    index = {r: i for i, r in enumerate(rows)}
    keep = [k for k, c in enumerate(batch.chosen) if c in index]
    heldout = set(batch.heldout)
    return TrainBatch(
        sequences=[batch.sequences[r] for r in rows],
        chosen=[index[batch.chosen[k]] for k in keep],
        rejected=[index[batch.rejected[k]] for k in keep],
        pair_group=[batch.pair_group[k] for k in keep],
        heldout=[i for i, k in enumerate(keep) if k in heldout],
    )


def split_batch(batch: TrainBatch, parts: int) -> list[TrainBatch]:
    """Split into ``parts`` batches of about equal token count, keeping pair groups whole
    (largest unit first onto the lightest part). Parts may be empty."""
    size = lambda rows: sum(len(batch.sequences[r].prompt_ids) + len(batch.sequences[r].response_ids) for r in rows)  # noqa: E731
    buckets: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for unit in sorted(units(batch), key=size, reverse=True):
        i = loads.index(min(loads))
        buckets[i] += unit
        loads[i] += size(unit)
    return [subset(batch, sorted(rows)) for rows in buckets]


def micro_batches(
    batch: TrainBatch, max_rows: int, max_tokens: int = 0, share_prompts: bool = False
) -> list[TrainBatch]:
    """Consecutive micro-batches of at most ``max_rows`` rows and, if ``max_tokens`` is set, at
    most that many tokens, padding not counted (with ``share_prompts``, a prompt shared by rows
    counts once, as packed). A pair group stays whole: over either limit, it is a micro-batch alone."""
    out: list[list[int]] = [[]]
    seen: set[tuple[int, ...]] = set()  # prompts already in the current micro-batch
    tokens = 0

    def cost(unit: list[int]) -> int:
        seqs = [batch.sequences[r] for r in unit]
        prompts = {tuple(s.prompt_ids) for s in seqs} - seen if share_prompts else [s.prompt_ids for s in seqs]
        return sum(map(len, prompts)) + sum(len(s.response_ids) for s in seqs)

    for unit in units(batch):
        added = cost(unit)
        if out[-1] and (len(out[-1]) + len(unit) > max_rows or (max_tokens and tokens + added > max_tokens)):
            out.append([])
            seen, tokens = set(), 0
            added = cost(unit)  # its prompts are new again
        tokens += added
        seen.update(tuple(batch.sequences[r].prompt_ids) for r in unit)
        out[-1] += unit
    return [subset(batch, rows) for rows in out if rows]


def compute_loss(
    spec: LossSpec,
    batch: CollatedBatch,
    logps: torch.Tensor,
    entropy: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    totals: Totals | None = None,
    values: torch.Tensor | None = None,
    kl_tokens: torch.Tensor | None = None,
    grpo_logps: torch.Tensor | None = None,
    grpo_ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy's loss:

        L = dpo_weight * L_(Group)DPO + nll_coef * L_NLL + grpo_weight * L_GRPO - entropy_coef * H
          + sft_weight * L_NLL(all rows) + bellman_weight * L_OREO_pi + kl_reg * L_KL

    ``logps``/``entropy``/``ref_logps`` are [N, T] per-token tensors aligned with input_ids;
    ``values`` the value model's V (OREO), ``kl_tokens`` the full-vocabulary KL(pi || ref) per
    token (``kl_estimator: full``). ``grpo_logps``/``grpo_ref_logps``: the policy's and the
    reference's log-probs at the GRPO term's temperature (``spec.grpo_temperature``, the
    sampler's), where it differs from the others' (default: ``logps``/``ref_logps``).
    ``totals`` are the whole step's denominators when ``batch`` is a micro-batch of it (default:
    this batch's own). Returns the loss and float metrics, each normalized by the same totals,
    so micro-batch values add up to the whole batch's.
    """
    mask = batch.loss_mask.to(logps.dtype)
    loss = logps.new_zeros(())
    metrics: dict[str, float] = {}
    if spec.needs_reference and ref_logps is None:
        raise ValueError("this loss needs reference log-probs (DPO term or KL) but none were given")
    if totals is None:
        totals = own_totals(batch)

    if spec.dpo_weight and batch.chosen.numel():
        c, r = batch.chosen, batch.rejected
        pol_c, pol_r = losses.ld_sequence_logps(logps[c], mask[c], logps[r], mask[r], spec.ld_alpha)
        ref_c, ref_r = losses.ld_sequence_logps(ref_logps[c], mask[c], ref_logps[r], mask[r], spec.ld_alpha)
        per_pair = losses.dpo_loss(pol_c, pol_r, ref_c, ref_r, spec.beta)
        dpo = losses.group_mean(per_pair, batch.pair_group, totals.groups)
        loss = loss + spec.dpo_weight * dpo
        margin = ((pol_c - ref_c) - (pol_r - ref_r)).detach()
        metrics.update(
            dpo_loss=dpo.item(),
            dpo_margin=margin.sum().item() / totals.pairs,
            dpo_accuracy=(margin > 0).sum().item() / totals.pairs,
        )
        if spec.nll_coef:
            rows = torch.unique(c)
            nll = losses.nll_loss(logps[rows], mask[rows], totals.chosen_rows)
            loss = loss + spec.nll_coef * nll
            metrics["nll_loss"] = nll.item()

    if spec.grpo_weight:
        # Rows without behaviour log-probs (offline data) take the current policy's: ratio 1.
        lp = logps if grpo_logps is None else grpo_logps
        ref_lp = ref_logps if grpo_ref_logps is None else grpo_ref_logps
        behaviour = torch.where(batch.has_behaviour[:, None], batch.behaviour_logps.to(lp.dtype), lp.detach())
        grpo, stats = losses.grpo_loss(
            lp,
            behaviour,
            batch.advantages,
            mask,
            spec.clip_low,
            spec.clip_high,
            ref_lp,
            spec.kl_coef,
            totals.tokens,
        )
        loss = loss + spec.grpo_weight * grpo
        metrics["grpo_loss"] = grpo.item()
        metrics.update({k: v.item() for k, v in stats.items()})

    if spec.sft_weight:
        sft = losses.nll_loss(logps, mask, totals.rows)
        loss = loss + spec.sft_weight * sft
        metrics["sft_loss"] = sft.item()

    if spec.bellman_weight:
        if values is None:
            raise ValueError("the OREO policy loss needs the value model's values")
        bellman = losses.oreo_policy_loss(
            values, logps, ref_logps, batch.rewards, mask, batch.action_starts, spec.beta, totals.rows
        )
        loss = loss + spec.bellman_weight * bellman
        metrics["policy_bellman_loss"] = bellman.item()

    if spec.kl_reg:
        if spec.kl_estimator == "full":
            if kl_tokens is None:
                raise ValueError("kl_estimator 'full' needs the per-token KL over the vocabulary")
            per_token = kl_tokens
        else:
            per_token = losses.kl_k3(logps, ref_logps)
        kl_term = losses.state_mean(per_token, mask, totals.rows)
        loss = loss + spec.kl_reg * kl_term
        metrics["kl_reg_term"] = kl_term.item()

    if entropy is not None:
        metrics["entropy"] = losses.token_mean(entropy.detach(), mask, totals.tokens).item()
        if spec.entropy_coef:
            loss = loss + losses.entropy_loss(entropy, mask, spec.entropy_coef, totals.tokens)

    metrics["loss"] = loss.item()
    return loss, metrics


def drift_sums(
    logps: torch.Tensor, batch: CollatedBatch, staleness: torch.Tensor, clip_low: float, clip_high: float
) -> dict[str, float]:
    """Sums, per staleness k (learner version - generating version of a row), over the response
    tokens of the rows an engine generated, from which ``drift_metrics`` gives the drift:

        d = log pi_learner(token) - log pi_engine(token),   w = exp(d)   (the importance ratio)
        k3 = w - 1 - d                                       (>= 0; its mean estimates KL(engine || learner))

    ``logps`` [N, T]: the learner's log-probs at the sampler's temperature, before the step's
    update. Keys ``drift_sum/<what>/<k>`` for what in n (tokens), k3, w, w2, clip (tokens with w
    outside [1 - clip_low, 1 + clip_high]) add up over micro-batches and ranks; ``drift_sum/max/<k>``
    (the largest w) combines by max (``add_metrics``). Rows without engine log-probs (offline
    data) are left out."""
    mask = batch.loss_mask.to(torch.float64) * batch.has_behaviour[:, None]
    d = (logps.detach().double() - batch.behaviour_logps.double()) * mask
    w = torch.exp(d)
    outside = ((w < 1 - clip_low) | (w > 1 + clip_high)).double()
    sums: dict[str, float] = {}
    for k in sorted(set(staleness[batch.has_behaviour].tolist())):
        m = mask * (staleness == k)[:, None]
        if not m.any():
            continue
        for what, x in (("n", m), ("k3", (w - 1 - d) * m), ("w", w * m), ("w2", w * w * m), ("clip", outside * m)):
            sums[f"drift_sum/{what}/{k}"] = float(x.sum())
        sums[f"drift_sum/max/{k}"] = float(w[m.bool()].max())
    return sums


def add_metrics(into: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """Add a micro-batch's (or a rank's) metrics into ``into``: sums add, ``drift_sum/max/...`` takes the max."""
    for key, value in metrics.items():
        if key.startswith("drift_sum/max/"):
            into[key] = max(into.get(key, value), value)
        else:
            into[key] = into.get(key, 0.0) + value
    return into


def drift_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with the ``drift_sum`` entries (``drift_sums``, summed over the step) replaced
    by the drift of the engines' policy from the learner's on the step's generated tokens:

        drift_kl = mean_tokens k3,  drift_ratio_mean = mean w,  drift_ratio_max = max w,
        drift_ess = (sum w)^2 / (n sum w^2)   (effective sample size per token, 1: no drift),
        drift_clip_frac = share of tokens with w outside the clip range,

    for all rows, and the same with the suffix ``_s<k>`` for the rows of staleness k (k = 0: the
    train/inference mismatch alone). Nothing is added for a step with no generated rows."""
    groups: dict[str, dict[str, float]] = {}
    out = {}
    for key, value in metrics.items():
        if key.startswith("drift_sum/"):
            _, what, k = key.split("/")
            groups.setdefault(k, {})[what] = value
        else:
            out[key] = value
    if not groups:
        return out

    def fields(s: dict[str, float], suffix: str) -> dict[str, float]:
        n = s["n"]
        return {
            f"drift_kl{suffix}": s["k3"] / n,
            f"drift_ratio_mean{suffix}": s["w"] / n,
            f"drift_ratio_max{suffix}": s["max"],
            f"drift_ess{suffix}": s["w"] ** 2 / (n * s["w2"]),
            f"drift_clip_frac{suffix}": s["clip"] / n,
        }

    total = {what: sum(g[what] for g in groups.values()) for what in ("n", "k3", "w", "w2", "clip")}
    total["max"] = max(g["max"] for g in groups.values())
    out.update(fields(total, ""))
    for k in sorted(groups, key=int):
        out.update(fields(groups[k], f"_s{k}"))
    return out


def own_totals(batch: CollatedBatch) -> Totals:
    """The denominators of a batch that is the whole step."""
    return Totals(
        float(batch.loss_mask.sum()),
        len(set(batch.pair_group.tolist())),
        batch.chosen.numel(),
        len(set(batch.chosen.tolist())),
        batch.input_ids.shape[0],
    )


def compute_value_loss(
    spec: LossSpec,
    batch: CollatedBatch,
    values: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    totals: Totals | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The value model's loss, value_weight * L_OREO_V (no gradient reaches the policy), and how
    well V(s_0), the value of the prompt alone, predicts the reward: its mean and mean |V(s_0) - R|.
    Also the sums (``EV_SUMS``) from which ``explained_variance`` gives V's explained variance on
    the whole step's batch (sums of micro-batches and ranks add up)."""
    mask = batch.loss_mask.to(values.dtype)
    totals = totals or own_totals(batch)
    loss = spec.value_weight * losses.oreo_value_loss(
        values, logps, ref_logps, batch.rewards, mask, batch.action_starts, spec.beta, totals.rows
    )
    has_response = mask.sum(-1) > 0
    v0 = values.detach().gather(1, mask.argmax(-1, keepdim=True)).squeeze(1) * has_response
    rows = max(totals.rows, 1)
    states = (batch.action_starts * mask).double()
    target = losses.oreo_value_target(logps, ref_logps, batch.rewards, mask, batch.action_starts, spec.beta).double()
    error = target - values.detach().double()
    return loss, {
        "value_loss": loss.item(),
        "value_s0_mean": v0.sum().item() / rows,
        "value_s0_abs_err": ((v0 - batch.rewards.to(v0.dtype)).abs() * has_response).sum().item() / rows,
        **dict(zip(EV_SUMS, (float((x * states).sum()) for x in (1.0, target, target**2, error, error**2)))),
    }


# Sums over the value model's states of 1, y, y^2, e and e^2 (y: the value target, e = y - V).
EV_SUMS = ("value_ev_states", "value_ev_y", "value_ev_y2", "value_ev_err", "value_ev_err2")


def explained_variance(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with the ``EV_SUMS`` (summed over a step's micro-batches and ranks) replaced by
    the value model's explained variance on the step's batch, over every state its loss trains:

        value_explained_variance = 1 - Var(y - V) / Var(y),   Var(x) = mean(x^2) - mean(x)^2

    y_k = R - beta * sum_{j >= k} A_j the value target (``losses.oreo_value_target``): 1 when V
    predicts every state's target, 0 for a V no better than the batch's mean target (a constant),
    negative for worse. Left out where Var(y) = 0 (undefined) or there are no sums."""
    if EV_SUMS[0] not in metrics:
        return metrics
    n, y, y2, e, e2 = (metrics.get(k, 0.0) for k in EV_SUMS)
    out = {k: v for k, v in metrics.items() if k not in EV_SUMS}
    var_y = y2 / n - (y / n) ** 2 if n else 0.0
    if var_y > 1e-12:
        out["value_explained_variance"] = 1.0 - (e2 / n - (e / n) ** 2) / var_y
    return out


def compute_reward_model_loss(
    spec: LossSpec, batch: CollatedBatch, scores: torch.Tensor, totals: Totals | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """A reward model's loss over the pairs it trains on (the held-out ones are only measured):

        L = bradley_terry_weight * (1/P) sum_k -log sigmoid(r(x, y_w,k) - r(x, y_l,k) - reward_margin)

    ``scores`` [N]: the model's reward of each row. Metrics: the loss, pair accuracy (r_w > r_l)
    and mean margin r_w - r_l, on the trained and on the held-out pairs."""
    totals = totals or Totals(0.0, 0, int((~batch.heldout).sum()), 0, scores.shape[0], int(batch.heldout.sum()))
    diff = scores[batch.chosen] - scores[batch.rejected]
    per_pair = losses.bradley_terry_loss(scores[batch.chosen], scores[batch.rejected], spec.reward_margin)
    trained, heldout = ~batch.heldout, batch.heldout
    loss = spec.bradley_terry_weight * (per_pair * trained).sum() / max(totals.pairs, 1)
    d = diff.detach()
    metrics = {
        "loss": loss.item(),
        "rm_loss": loss.item(),
        "rm_accuracy": ((d > 0) & trained).sum().item() / max(totals.pairs, 1),
        "rm_margin": (d * trained).sum().item() / max(totals.pairs, 1),
    }
    if totals.heldout_pairs:
        metrics.update(
            heldout_accuracy=((d > 0) & heldout).sum().item() / totals.heldout_pairs,
            heldout_margin=(d * heldout).sum().item() / totals.heldout_pairs,
            heldout_loss=(per_pair.detach() * heldout).sum().item() / totals.heldout_pairs,
        )
    return loss, metrics
