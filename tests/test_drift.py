"""The drift of the engines' policy from the learner's (every step's drift_* metrics) and the
rule of sync.interval: auto, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from actors.weight_sync import AutoInterval
from learner.objective import add_metrics, collate, drift_metrics, drift_sums
from rollout.records import AUTO, TrainBatch, TrainSequence, interval_text, parse_interval

# Three generated rows (engine log-probs) and one file row (none): versions 5, 5, 3 and 0.
ENGINE = [[-1.0, -2.0], [-0.5, -0.1, -3.0], [-2.0]]
LEARNER = [[-0.8, -2.5], [-0.5, -0.4, -1.0], [-2.9]]


def _batch():
    rows = _batch_rows()
    cb = collate(TrainBatch(rows), pad_token_id=0)
    logps = torch.zeros_like(cb.behaviour_logps)
    for i, (s, lp) in enumerate(zip(rows, LEARNER + [[-7.0, -7.0]])):
        p = len(s.prompt_ids)
        logps[i, p : p + len(lp)] = torch.tensor(lp)
    return cb, logps


def _hand(rows: list[int], clip_low=0.2, clip_high=0.28) -> dict[str, float]:
    """The drift over the tokens of ``rows``, one token at a time."""
    ratios, k3s = [], []
    for i in rows:
        for learner, engine in zip(LEARNER[i], ENGINE[i]):
            d = learner - engine
            ratios.append(math.exp(d))
            k3s.append(math.exp(d) - 1 - d)
    n = len(ratios)
    return {
        "kl": sum(k3s) / n,
        "ratio_mean": sum(ratios) / n,
        "ratio_max": max(ratios),
        "ess": sum(ratios) ** 2 / (n * sum(r * r for r in ratios)),
        "clip_frac": sum(not (1 - clip_low <= r <= 1 + clip_high) for r in ratios) / n,
    }


def _expect(metrics: dict, hand: dict, suffix: str) -> None:
    for what, value in hand.items():
        assert metrics[f"drift_{what}{suffix}"] == pytest.approx(value, rel=1e-6), what  # log-probs in fp32


def test_drift_equals_a_hand_computation_overall_and_by_staleness():
    cb, logps = _batch()
    learner_version = 5  # rows 0, 1: staleness 0; row 2: staleness 2
    metrics = drift_metrics(drift_sums(logps, cb, learner_version - cb.policy_versions, 0.2, 0.28))
    _expect(metrics, _hand([0, 1, 2]), "")
    _expect(metrics, _hand([0, 1]), "_s0")
    _expect(metrics, _hand([2]), "_s2")
    assert not any(k.startswith("drift_sum") for k in metrics) and "drift_kl_s1" not in metrics


def test_drift_sums_add_up_over_micro_batches_and_ranks():
    """Split into parts, summed with add_metrics (max for the largest ratio): the same drift."""
    cb, logps = _batch()
    staleness = 5 - cb.policy_versions
    whole = drift_metrics(drift_sums(logps, cb, staleness, 0.2, 0.28))
    summed: dict[str, float] = {"loss": 1.0}
    for rows in ([0], [1, 2, 3]):
        part = collate(TrainBatch([_batch_rows()[i] for i in rows]), pad_token_id=0)
        part_logps = logps[rows, : part.input_ids.shape[1]]
        add_metrics(summed, drift_sums(part_logps, part, 5 - part.policy_versions, 0.2, 0.28))
    merged = drift_metrics(summed)
    assert merged["loss"] == 1.0
    for key, value in whole.items():
        assert merged[key] == pytest.approx(value, rel=1e-12), key


def _batch_rows():
    return [
        TrainSequence([1, 2], [3, 4], ENGINE[0], policy_version=5),
        TrainSequence([1], [5, 6, 7], ENGINE[1], policy_version=5),
        TrainSequence([1, 2, 3], [8], ENGINE[2], policy_version=3),
        TrainSequence([1], [9, 9], None, policy_version=0),  # offline data: left out
    ]


def test_no_generated_rows_no_drift():
    cb = collate(TrainBatch([TrainSequence([1], [2, 3], None)]), pad_token_id=0)
    sums = drift_sums(torch.zeros(1, 3), cb, torch.zeros(1, dtype=torch.long), 0.2, 0.2)
    assert sums == {} and drift_metrics({"loss": 0.5}) == {"loss": 0.5}


def test_auto_interval_rule():
    auto = AutoInterval()
    bounds = dict(target_kl=0.01, min_interval=1, max_interval=6)
    auto.observe({"drift_kl_s0": 0.001})  # right after a push: the mismatch only, no growth yet
    assert auto.mismatch == 0.001 and auto.growth is None and auto.predicted(1) is None
    assert not auto.due(1, **bounds) and auto.due(6, **bounds)  # only max_interval pushes without a growth
    auto.observe({"drift_kl_s0": 0.001, "drift_kl_s1": 0.003})  # growth from the largest staleness
    assert auto.growth == pytest.approx(math.sqrt(0.002))
    assert auto.predicted(2) == pytest.approx(0.001 + 4 * 0.002)  # 0.009: below the target
    assert not auto.due(2, **bounds)
    assert auto.predicted(3) == pytest.approx(0.001 + 9 * 0.002) and auto.due(3, **bounds)
    assert not auto.due(3, target_kl=0.01, min_interval=4, max_interval=6)  # never before min_interval
    auto.observe({"drift_kl_s2": 0.0005})  # below the mismatch: no growth
    assert auto.growth == 0.0 and not auto.due(5, **bounds)
    auto.observe({"loss": 1.0})  # a step with no generated rows changes nothing
    assert auto.growth == 0.0 and auto.mismatch == 0.001


def test_auto_is_a_sync_interval():
    assert parse_interval("auto") == parse_interval(" AUTO ") == AUTO and interval_text(AUTO) == "auto"
    with pytest.raises(ValueError, match="'auto'"):
        parse_interval("sometimes")


def test_weight_sync_observes_the_drift_whatever_s_is():
    """A run at s = 4 switched live to auto decides from the drift its earlier steps measured."""
    from types import SimpleNamespace

    from actors.weight_sync import WeightSync
    from rollout.settings import SyncConfig

    state = SimpleNamespace(sync_interval=4, steps_since_sync=2, auto_sync=AutoInterval(), learner_version=2)
    sync, cfg = WeightSync("object_store", None, None, state, 1.0), SyncConfig(target_kl=0.01)
    assert sync.due(cfg, {"drift_kl_s0": 0.0, "drift_kl_s1": 0.004}) == 0  # s = 4: not yet
    assert state.auto_sync.growth == pytest.approx(math.sqrt(0.004))
    state.sync_interval = AUTO  # `syncrl ctl set-sync-interval auto`
    assert sync.due(cfg, {"drift_kl_s0": 0.0, "drift_kl_s2": 0.012}) == 2  # predicted(2) = 0.012 > 0.01
