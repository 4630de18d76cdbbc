"""Value-guided beam search on a scripted engine and a scripted value scorer (no Ray, no vLLM)."""

from __future__ import annotations

import pytest

from rollout.beam_search import Step, beam_search

EOS = 0


class ScriptedEngine:
    """Step k of any beam offers the children ``steps[k]`` (token lists; a list ending in EOS
    finishes the response), cycling if asked for more; records every call."""

    def __init__(self, steps: list[list[list[int]]]):
        self.steps, self.calls = steps, []

    def __call__(self, requests, n, seed):
        self.calls.append((requests, n))
        out = []
        for _, response, _ in requests:
            depth = sum(1 for t in response if t >= 100)  # one marker token (>= 100) per step
            options = self.steps[min(depth, len(self.steps) - 1)]
            out.append([Step(list(options[i % len(options)]), finished=options[i % len(options)][-1] == EOS) for i in range(n)])
        return out


def prefers(token: int, bonus: float = 1.0):
    """A value model that likes states containing ``token`` (and longer ones a little)."""
    return lambda states: [bonus * (token in r) + 0.01 * len(r) for _, r in states]


def test_the_search_follows_the_step_the_value_prefers():
    engine = ScriptedEngine([[[101, 1], [102, 2], [103, 3]], [[104, 7, EOS], [105, 8, EOS]]])
    (result,) = beam_search([[9, 9]], engine, prefers(102), beam=2, candidates=3)
    assert result.response_ids[:2] == [102, 2] and result.response_ids[-1] == EOS
    (other,) = beam_search([[9, 9]], engine, prefers(103), beam=2, candidates=3)
    assert other.response_ids[:2] == [103, 3]
    assert result.finished_answers == 2 and result.finish_reason == "stop"


def test_all_children_finish_at_the_first_step_returns_the_best_of_them():
    engine = ScriptedEngine([[[101, EOS], [102, EOS], [103, EOS], [104, EOS]]])
    (result,) = beam_search([[9]], engine, prefers(103), beam=4)
    assert result.response_ids == [103, EOS] and len(engine.calls) == 1
    assert result.finished_answers == 4 and result.steps == 1
    assert result.tokens_generated == 8  # 4 children of 2 tokens


def test_duplicates_are_merged_before_ranking():
    # two of three children are the same step: merged they take one beam slot, not two
    engine = ScriptedEngine([[[101, 1], [101, 1], [102, 2]], [[110, EOS]]])
    (merged,) = beam_search([[9]], engine, prefers(101), beam=2, candidates=3)
    assert {tuple(b.response_ids[:2]) for b in merged.pool} == {(101, 1), (102, 2)}
    engine.calls.clear()
    (kept,) = beam_search([[9]], engine, prefers(101), beam=2, candidates=3, dedup=False)
    assert {tuple(b.response_ids[:2]) for b in kept.pool} == {(101, 1)}
    assert len(kept.pool) == 2  # both copies took a slot


def test_max_steps_is_honoured_and_unfinished_beams_answer():
    engine = ScriptedEngine([[[101, 1], [102, 2]]])  # never finishes
    (result,) = beam_search([[9]], engine, prefers(102), beam=2, max_steps=3, max_new_tokens=100)
    assert len(engine.calls) == 3
    assert result.finish_reason == "length" and result.finished_answers == 0 and result.steps == 3
    assert len(result.response_ids) == 6


def test_the_token_limit_ends_a_response():
    engine = ScriptedEngine([[[101, 1, 1]]])
    (result,) = beam_search([[9]], engine, prefers(101), beam=1, max_steps=10, max_new_tokens=7)
    assert result.finish_reason == "length" and result.finished_answers == 1 and len(result.response_ids) >= 7
    assert all(left == 7 - len(response) for requests, _ in engine.calls for _, response, left in requests)


def test_questions_advance_in_lockstep_with_one_call_per_step():
    engine = ScriptedEngine([[[101, 1], [102, 2]], [[103, EOS]]])
    results = beam_search([[9], [8], [7]], engine, prefers(101), beam=2)
    assert len(engine.calls) == 2 and len(engine.calls[0][0]) == 3 and len(engine.calls[1][0]) == 6
    assert all(r.response_ids == [101, 1, 103, EOS] for r in results)
    with pytest.raises(ValueError, match="beam"):
        beam_search([[9]], engine, prefers(101), beam=0)
