"""Value-guided beam search (OREO, arXiv 2412.16145): a value model steers generation step by step.

A response is written one reasoning step at a time (a step ends at a delimiter, "\\n" for
answers that write one step per line). Each of the B beams of a question samples K candidate next
steps; the value model scores every child (its prompt plus its partial response) at its last
token; the highest-valued children are kept, B of them less one for every finished answer so far.
A kept child that ends the response (end of sequence, or the token limit) joins the question's
finished answers, and its beam slot is gone for good; the others are the next beams. The search
of a question stops when no beam is left or after ``max_steps`` steps, and returns its
highest-valued finished answer (if none finished, its highest-valued beam). Policy log-probs play no part in the ranking. Identical children of one
question (the same token ids) are merged before ranking (``dedup``), so that copies do not take
several beam slots.

The search is a plain function over two callables, so it runs on any engine and any scorer:
``expand(requests, n, seed)`` samples ``n`` next steps for each (prompt ids, response ids so far,
tokens left) and returns, per request, ``n`` ``Step`` records; ``score(states)`` returns V of each
(prompt ids, response ids). Every question advances in lockstep: one ``expand`` and one ``score``
call per step for all of them, so the engine batches every beam and its prefix cache serves
the shared beam prefixes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Step:
    """One sampled continuation: its tokens and whether it ends the response."""

    token_ids: list[int]
    finished: bool  # end of sequence or token limit: no step follows
    finish_reason: str = "stop"  # "stop" | "length" when finished


@dataclass
class Beam:
    response_ids: list[int]
    value: float = 0.0
    finished: bool = False
    finish_reason: str = "stop"
    steps: int = 0


@dataclass
class SearchResult:
    """The answer of one question, and what the search cost."""

    response_ids: list[int]
    value: float
    finish_reason: str
    steps: int
    tokens_generated: int  # every sampled token, kept or not
    finished_answers: int
    pool: list[Beam] = field(default_factory=list)


Expand = Callable[[list[tuple[list[int], list[int], int]], int, int], list[list[Step]]]
Score = Callable[[list[tuple[list[int], list[int]]]], list[float]]


def beam_search(prompts: list[list[int]], expand: Expand, score: Score, beam: int, candidates: int | None = None,
                max_steps: int = 16, max_new_tokens: int = 256, seed: int = 0, dedup: bool = True) -> list[SearchResult]:  # fmt: skip
    """Search every question (prompt token ids) in lockstep; see the module docstring."""
    if beam < 1 or (candidates is not None and candidates < 1) or max_steps < 1:
        raise ValueError(f"beam ({beam}), candidates ({candidates}) and max_steps ({max_steps}) must be >= 1")
    k = candidates or beam
    beams: list[list[Beam]] = [[Beam([])] for _ in prompts]  # the empty response: one beam to start
    pools: list[list[Beam]] = [[] for _ in prompts]
    generated = [0] * len(prompts)
    for step in range(max_steps):
        active = [(q, b) for q, bs in enumerate(beams) for b in bs]
        if not active:
            break
        requests = [(prompts[q], b.response_ids, max_new_tokens - len(b.response_ids)) for q, b in active]
        expansions = expand(requests, k, seed + 7919 * step)
        children: list[list[Beam]] = [[] for _ in prompts]
        for (q, parent), steps in zip(active, expansions):
            for s in steps:
                generated[q] += len(s.token_ids)
                ids = parent.response_ids + s.token_ids
                done = s.finished or len(ids) >= max_new_tokens
                reason = s.finish_reason if s.finished else ("length" if done else "stop")
                children[q].append(Beam(ids, finished=done, finish_reason=reason, steps=parent.steps + 1))
        if dedup:
            children = [list({tuple(c.response_ids): c for c in cs}.values()) for cs in children]
        flat = [(q, c) for q, cs in enumerate(children) for c in cs]
        for (q, c), v in zip(flat, score([(prompts[q], c.response_ids) for q, c in flat])):
            c.value = float(v)
        for q, cs in enumerate(children):  # every finished answer takes one of the B slots for good
            kept = sorted(cs, key=lambda c: -c.value)[: beam - len(pools[q])]
            pools[q] += [c for c in kept if c.finished]
            beams[q] = [c for c in kept if not c.finished]
    results = []
    for q in range(len(prompts)):
        answers = pools[q] or beams[q]  # no finished answer: the best unfinished beam, cut at max_steps
        best = max(answers, key=lambda c: c.value) if answers else Beam([])
        results.append(SearchResult(best.response_ids, best.value, best.finish_reason if pools[q] else "length",
                                    best.steps, generated[q], len(pools[q]), pools[q]))  # fmt: skip
    return results
