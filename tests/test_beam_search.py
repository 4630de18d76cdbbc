"""Value-guided beam search on a scripted engine and a scripted value scorer (no Ray, no vLLM)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rollout.beam_search import Step, beam_search
from rollout.engine import steps_of

EOS = 0
NL = 1  # a step ends with this token (the delimiter) unless it ends the response


def step(tokens: list[int]) -> Step:
    """A scripted step: ending in EOS finishes the response (the EOS kept, as vLLM keeps it)."""
    done = tokens[-1] == EOS
    return Step(list(tokens), finished=done, eos=done)


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
            out.append([step(options[i % len(options)]) for i in range(n)])
        return out


class TreeEngine:
    """Sample i of a beam whose response so far is ``r`` is ``tree[r][i]`` (cycling): every
    possible response is scripted. Sample 0 is what greedy decoding would write."""

    def __init__(self, tree: dict[tuple[int, ...], list[list[int]]]):
        self.tree, self.calls = tree, []

    def __call__(self, requests, n, seed):
        self.calls.append([tuple(r) for _, r, _ in requests])
        options = [self.tree[tuple(r)] for _, r, _ in requests]
        return [[step(o[i % len(o)]) for i in range(n)] for o in options]


class Recorder:
    """A scripted value function that records every state it is asked to value."""

    def __init__(self, value):
        self.value, self.states = value, []

    def __call__(self, states):
        self.states += [list(r) for _, r in states]
        return [self.value(p, list(r)) for p, r in states]


def prefers(token: int, bonus: float = 1.0):
    """A value model that likes states containing ``token`` (and longer ones a little)."""
    return Recorder(lambda _, r: bonus * (token in r) + 0.01 * len(r))


def test_the_search_follows_the_step_the_value_prefers():
    engine = ScriptedEngine([[[101, 1], [102, 2], [103, 3]], [[104, 7, EOS], [105, 8, EOS]]])
    (result,) = beam_search([[9, 9]], engine, prefers(102), beam=2, candidates=3)
    assert result.response_ids[:2] == [102, 2] and result.response_ids[-1] == EOS
    (other,) = beam_search([[9, 9]], engine, prefers(103), beam=2, candidates=3)
    assert other.response_ids[:2] == [103, 3]
    # two beams (102 and the first of the equal others, 101) x two distinct children: four answers
    assert result.finished_answers == 4 and result.finish_reason == "stop"
    assert {tuple(b.response_ids[:2]) for b in result.pool} == {(102, 2), (101, 1)}


def test_finished_answers_never_take_a_beam_slot():
    # the best child of the first step is a finished answer; both unfinished children still continue
    tree = {
        (): [[101, EOS], [102, NL], [103, NL]],
        (102, NL): [[104, NL]],
        (103, NL): [[105, NL]],
        (102, NL, 104, NL): [[106, EOS]],
        (103, NL, 105, NL): [[107, EOS]],
    }
    engine = TreeEngine(tree)
    value = Recorder(lambda _, r: {(101,): 5.0, (102, NL): 1.0, (103, NL): 0.5}.get(tuple(r), 0.0))
    (result,) = beam_search([[9]], engine, value, beam=2, candidates=3)
    assert engine.calls[1] == [(102, NL), (103, NL)]  # B = 2 beams after the first finish, not 1
    assert engine.calls[2] == [(102, NL, 104, NL), (103, NL, 105, NL)]
    assert len(engine.calls) == 3  # then every beam has finished: the search stops
    assert [b.response_ids for b in result.pool] == [
        [101, EOS],
        [102, NL, 104, NL, 106, EOS],
        [103, NL, 105, NL, 107, EOS],
    ]
    assert result.response_ids == [101, EOS] and result.value == 5.0  # the highest-valued finished answer


def test_b_beams_continue_after_every_finish_until_max_steps():
    # every beam offers one finished and two unfinished children at every step
    engine = ScriptedEngine(
        [
            [[101, EOS], [102, 2], [103, 3]],
            [[104, EOS], [105, 5], [106, 6]],
            [[107, EOS], [108, 8], [109, 9]],
            [[110, EOS], [111, 1], [112, 2]],
        ]
    )
    (result,) = beam_search([[9]], engine, prefers(101), beam=2, candidates=3, max_steps=4)
    assert [len(requests) for requests, _ in engine.calls] == [1, 2, 2, 2]
    assert result.finished_answers == 1 + 2 + 2 + 2  # one finished child per expanded beam, each in the pool
    assert result.response_ids == [101, EOS]  # the value prefers it over every later answer


def test_eos_is_never_the_valued_position():
    engine = ScriptedEngine([[[101, 1], [102, EOS]], [[103, EOS], [104, 4, EOS]]])
    value = prefers(104)
    (result,) = beam_search([[9]], engine, value, beam=2, candidates=2)
    assert value.states and all(not s or s[-1] != EOS for s in value.states)
    assert [102] in value.states and [101, 1, 104, 4] in value.states  # finished answers, valued without EOS
    assert result.response_ids == [101, 1, 104, 4, EOS] and result.value == pytest.approx(1.04)
    # a response cut at the token limit has no EOS: valued at its last token
    cut = Recorder(lambda _, r: 0.0)
    beam_search([[9]], ScriptedEngine([[[101, 1, 1]]]), cut, beam=1, max_new_tokens=3)
    assert cut.states == [[101, 1, 1]]


def chain_task():
    """Three questions where greedy decoding (sample 0 at every step) answers wrong: a tempting
    first step leads to a wrong answer, and a quick wrong answer is on offer at the start."""
    trees, correct = [], []
    for q in range(3):
        a, b, c = 10 * q + 11, 10 * q + 12, 10 * q + 13
        trees.append(
            {
                (): [[a, NL], [150 + q, EOS], [b, NL]],
                (a, NL): [[a + 100, EOS], [a + 200, EOS]],  # both wrong
                (b, NL): [[c, NL], [b + 200, EOS]],
                (b, NL, c, NL): [[c + 200, EOS], [c + 300, EOS]],
            }
        )
        correct.append([b, NL, c, NL, c + 300, EOS])
    return trees, correct


def test_an_oracle_value_beats_greedy_on_a_task_greedy_fails():
    trees, correct = chain_task()
    prompts = [[1000 + q] for q in range(3)]

    def engine(requests, n, seed):
        return [
            [step(trees[p[0] - 1000][tuple(r)][i % len(trees[p[0] - 1000][tuple(r)])]) for i in range(n)]
            for p, r, _ in requests
        ]

    def oracle(states):  # 1 on a prefix of the correct answer, 0 otherwise
        return [float(r == correct[p[0] - 1000][: len(r)]) for p, r in states]

    greedy = beam_search(prompts, engine, lambda states: [0.0] * len(states), beam=1, candidates=1)
    search = beam_search(prompts, engine, oracle, beam=2, candidates=3)
    accuracy = lambda results: sum(r.response_ids == c for r, c in zip(results, correct)) / len(correct)  # noqa: E731
    assert accuracy(greedy) == 0.0 and accuracy(search) == 1.0
    assert all(r.value == 1.0 and r.finish_reason == "stop" for r in search)


def test_a_constant_value_keeps_the_first_children_and_answers_with_the_first_finished_answer():
    """The tie rule: a stable ranking, so generation order decides (parent's rank, then sample
    index; in the pool, the earlier step first)."""
    tree = {
        (): [[101, NL], [102, NL], [103, NL]],
        (101, NL): [[104, NL], [105, NL]],
        (102, NL): [[106, NL], [107, EOS]],
        (101, NL, 104, NL): [[108, EOS], [109, EOS]],
        (101, NL, 105, NL): [[110, EOS], [111, EOS]],
    }
    engine = TreeEngine(tree)
    (result,) = beam_search([[9]], engine, lambda states: [0.5] * len(states), beam=2, candidates=2)
    assert engine.calls[1] == [(101, NL), (102, NL)]  # the first two of three equal children
    # step 2's unfinished children in order: 104, 105 (first parent), 106 (second): the first two go on
    assert engine.calls[2] == [(101, NL, 104, NL), (101, NL, 105, NL)]
    assert result.response_ids == [102, NL, 107, EOS]  # found at step 2, before the step-3 answers
    assert result.finished_answers == 5


def test_all_children_finish_at_the_first_step_returns_the_best_of_them():
    engine = ScriptedEngine([[[101, EOS], [102, EOS], [103, EOS], [104, EOS]]])
    (result,) = beam_search([[9]], engine, prefers(103), beam=4)
    assert result.response_ids == [103, EOS] and len(engine.calls) == 1
    assert result.finished_answers == 4 and result.steps == 1
    assert result.tokens_generated == 8  # 4 children of 2 tokens


def test_duplicates_are_merged_before_ranking():
    # two of three children are the same step: merged they are one child, valued once
    engine = ScriptedEngine([[[101, 1], [101, 1], [102, 2]], [[110, EOS]]])
    value = prefers(101)
    (merged,) = beam_search([[9]], engine, value, beam=2, candidates=3)
    assert value.states[:2] == [[101, 1], [102, 2]]
    assert [b.response_ids for b in merged.pool] == [[101, 1, 110, EOS], [102, 2, 110, EOS]]
    engine.calls.clear()
    beam_search([[9]], engine, prefers(101), beam=2, candidates=3, dedup=False)
    assert [r for _, r, _ in engine.calls[1][0]] == [[101, 1]] * 2  # both copies took a beam


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


def test_engine_steps_mark_an_end_of_sequence_token():
    """vLLM's completions as beam search's steps: the delimiter continues, EOS and the token limit
    finish; only a final EOS token is marked (a stop at the delimiter or a cut is valued whole)."""

    def out(ids, reason, stop_reason=None):
        return SimpleNamespace(token_ids=ids, finish_reason=reason, stop_reason=stop_reason)

    completions = [out([5, 6, 10], "stop", "\n"), out([5, 2], "stop"), out([5, 6], "length"), out([5, 7], "stop", 7)]
    steps = steps_of(completions, "\n", eos_ids={2, 7})
    assert [(s.finished, s.eos, s.finish_reason) for s in steps] == [
        (False, False, "stop"),
        (True, True, "stop"),
        (True, False, "length"),
        (True, True, "stop"),
    ]
    assert steps[1].token_ids == [5, 2]
