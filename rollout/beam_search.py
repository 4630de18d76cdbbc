"""Value-guided beam search (OREO, arXiv 2412.16145): a value model steers generation step by step.

A response is written one reasoning step at a time (a step ends at a delimiter, "\\n" for
answers that write one step per line). Each of the B beams of a question samples K candidate next
steps; the value model scores every child (its prompt plus its partial response). Then:

- a child that ends the response (end of sequence, or the token limit) is a finished answer: it
  goes to the question's pool of finished answers, outside the beams, and takes no beam slot;
- the B highest-valued unfinished children are the next beams (fewer only when fewer exist).

The search of a question stops when it has no unfinished child left or after ``max_steps`` steps.
Its answer is the highest-valued finished answer of the pool; if none finished, the
highest-valued beam (cut at ``max_steps``, finish reason "length").

A state is valued where the value model was trained to value it: at its last token, except that a
response ending with an end-of-sequence token (``Step.eos``) is valued without it, at its last
non-EOS token (training never reads V at the EOS position: V of the state before a token is read
at the token before it). Policy log-probs play no part in the ranking. Identical children of one
question (the same token ids) are merged before ranking (``dedup``), so that copies do not take
several beam slots.

Ties: children are ranked by value with a stable sort, so among equal values the child generated
first wins: the child of the better-ranked parent, then the one with the lower sample index;
in the pool, an answer finished at an earlier step wins over a later one, then the same order.
With a constant value the search keeps the first B unfinished children and answers with the first
finished answer.

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
    eos: bool = False  # its last token is an end-of-sequence token (kept in token_ids, never valued)


@dataclass
class Beam:
    response_ids: list[int]
    value: float = 0.0
    finished: bool = False
    finish_reason: str = "stop"
    steps: int = 0
    eos: bool = False  # the response ends with an end-of-sequence token

    @property
    def valued_ids(self) -> list[int]:
        """The response the value model scores: without a final end-of-sequence token."""
        return self.response_ids[:-1] if self.eos else self.response_ids


@dataclass
class SearchResult:
    """The answer of one question, and what the search cost."""

    response_ids: list[int]
    value: float
    finish_reason: str
    steps: int
    tokens_generated: int  # every sampled token, kept or not
    finished_answers: int  # the size of the pool of finished answers
    pool: list[Beam] = field(default_factory=list)  # every finished answer, in the order found


Expand = Callable[[list[tuple[list[int], list[int], int]], int, int], list[list[Step]]]
Score = Callable[[list[tuple[list[int], list[int]]]], list[float]]


def beam_search(
    prompts: list[list[int]],
    expand: Expand,
    score: Score,
    beam: int,
    candidates: int | None = None,
    max_steps: int = 16,
    max_new_tokens: int = 256,
    seed: int = 0,
    dedup: bool = True,
) -> list[SearchResult]:
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
                children[q].append(
                    Beam(
                        ids,
                        finished=done,
                        finish_reason=reason,
                        steps=parent.steps + 1,
                        eos=s.finished and s.eos and bool(s.token_ids),
                    )
                )
        if dedup:  # the first of identical children stands for them all
            children = [first_of_each(cs) for cs in children]
        flat = [(q, c) for q, cs in enumerate(children) for c in cs]
        for (_, c), v in zip(flat, score([(prompts[q], c.valued_ids) for q, c in flat])):
            c.value = float(v)
        for q, cs in enumerate(children):
            pools[q] += [c for c in cs if c.finished]  # finished answers leave the beams
            beams[q] = sorted((c for c in cs if not c.finished), key=lambda c: -c.value)[:beam]  # stable: ties by order
    results = []
    for q in range(len(prompts)):
        answers = pools[q] or beams[q]  # no finished answer: the best unfinished beam, cut at max_steps
        best = max(answers, key=lambda c: c.value) if answers else Beam([])  # the first of equal values
        results.append(
            SearchResult(
                best.response_ids,
                best.value,
                best.finish_reason if pools[q] else "length",
                best.steps,
                generated[q],
                len(pools[q]),
                pools[q],
            )
        )
    return results


def first_of_each(children: list[Beam]) -> list[Beam]:
    """The children with distinct token ids, each the first of its copies, in their order."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for c in children:
        if tuple(c.response_ids) not in seen:
            seen.add(tuple(c.response_ids))
            out.append(c)
    return out
