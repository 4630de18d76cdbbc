"""The gold judge of the ``chat`` task: a plain, deterministic function of what a prompt asked
(its request fields, ``rollout.chat.REQUEST_FIELDS``, carried in ``Prompt.columns``) and a
response, giving a score in [0, 1].

    J = repetition * (0.25 coverage + 0.25 asked + 0.20 fluency + 0.10 finished + 0.20 length)

- ``coverage``: the share of the request's content words (those of its topic and, for a note or
  an email, of its recipient; stop words left out) that the response uses, a word matching by a
  crude stem (``stem``: "tips" = "tip", "gardening" = "garden").
- ``asked``: what the kind asks for. tips / reasons: the number of list items (lines that start
  with "-", "*", "•" or a number; repeated items counted once) against the ``items`` asked,
  ``1 - |n - k| / k`` (at least 0). note / email / story: the requested tone, by the compound
  polarity c of the VADER lexicon (``vaderSentiment``): a positive tone scores
  ``clip((c + 0.1) / 0.6)``, a negative one ``clip((0.1 - c) / 0.6)``, a neutral one 1 while
  |c| <= 0.6, falling to 0 at |c| = 1. explain (to a child): plain words and short sentences,
  the mean of ``clip((2.0 - s) / 0.6)`` (s: mean syllables per word, counted as vowel groups)
  and ``clip((30 - w) / 16)`` (w: mean words per sentence).
- ``fluency``: the mean of two proxies: the share of words found in an English word list
  (``english-words``: web2 and GCIDE, after ``stem``), and a function-word term, 1 while the
  share of stop words among the words is between 0.25 and 0.65, falling linearly to 0 at 0.05
  and at 0.85 (a list of keywords has none).
- ``finished``: 1 if the last line of 4 or more words ends with ".", "!" or "?" (a closing
  quote or bracket after it allowed), else 0: an answer cut at the token limit ends
  mid-sentence. Shorter closing lines (a sign-off, a name) are not checked.
- ``repetition`` multiplies the rest: the smaller of the share of distinct sentences (of those
  with 3 or more words) and the share of distinct word 3-grams; 1 for text that repeats nothing,
  0.25 for a text said four times over.
- ``length``: ``(n / m) * exp(1 - n / m)`` of the response's n words, which peaks at 1 at the
  kind's moderate length m (``MODERATE_WORDS``; tips and reasons: 20 words per item asked) and
  falls on both sides (0.74 at 2m, 0.20 at 4m).

An empty response (no word) scores 0. What it does not measure, and so where it can be fooled:
truth (a fluent, on-topic answer full of false statements scores high), relevance beyond the
request's words (any text that uses them), coherence beyond sentence and 3-gram repetition (real
sentences shuffled, or unrelated real sentences, score as well as an argument), whether a list
item is a tip at all, tone beyond a lexicon's word polarities (sarcasm, negations VADER misses),
a child's understanding beyond syllables and sentence length, and an answer cut within a last
line of 3 words or fewer (taken for a sign-off). Answers built for it (every content word once,
polarity words, k short lines ending with a period) score near 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

WEIGHTS = {"coverage": 0.25, "asked": 0.25, "fluency": 0.20, "finished": 0.10, "length": 0.20}
MODERATE_WORDS = {"note": 60, "email": 80, "story": 120, "explain": 70}  # tips, reasons: 20 per item
WORDS_PER_ITEM = 20
TONE_KINDS = ("note", "email", "story")
# The polarity each tone of the chat task asks for (rollout/chat_lists.py's TONES).
TONE_SIGNS = {
    **dict.fromkeys(
        ["warm", "cheerful", "grateful", "enthusiastic", "encouraging", "friendly", "kind", "upbeat"], "positive"
    ),
    **dict.fromkeys(["disappointed", "worried", "sad", "annoyed"], "negative"),
    **dict.fromkeys(["formal", "matter-of-fact", "neutral", "businesslike"], "neutral"),
}
LIST_KINDS = ("tips", "reasons")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves also get got let lets may might must
    shall one ones its it's i'm you're we're they're don't can't won't isn't there's that's""".split()
)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,2}[.):])\s+\S")
_SENTENCE_END = re.compile(r"""[.!?]["')\]\u201d\u2019]*\s*$""")


@dataclass
class Judgement:
    """A response's score and its parts (each in [0, 1]), plus what was counted (``counts``)."""

    score: float
    parts: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


def clip(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def words(text: str) -> list[str]:
    """The words of a text, lower-cased (letters, with an inner apostrophe)."""
    return [w.lower() for w in _WORD.findall(text)]


def stem(word: str) -> str:
    """A crude stem: the word without one of the suffixes 's, ies (-> y), es, s, ing, ed, ly
    when at least 3 letters stay ("tips" -> "tip", "gardening" -> "garden")."""
    word = word.lower().removesuffix("'s")
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "ly", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def content_words(text: str | None) -> list[str]:
    """The distinct words of a request field that a response should use: not stop words, 3+ letters."""
    return list(dict.fromkeys(w for w in words(text or "") if w not in STOPWORDS and len(w) >= 3))


def sentences(text: str) -> list[str]:
    """The sentences of a text: split after ., ! or ? and at line breaks."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The English word list: web2 and GCIDE from the ``english-words`` package, lower-cased."""
    from english_words import get_english_words_set

    return frozenset(get_english_words_set(["web2", "gcide"], lower=True, alpha=True))


def is_english(word: str) -> bool:
    """Whether a word (or its ``stem``, or the stem plus "e": "explained" -> "explain") is in the list."""
    known = english_words()
    base = stem(word)
    return word in known or base in known or base + "e" in known or word.replace("'", "") in known


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def polarity(text: str) -> float:
    """VADER's compound polarity of a text, in [-1, 1]."""
    return _vader().polarity_scores(text)["compound"]


def tone_score(tone_sign: str, compound: float) -> float:
    """How well a compound polarity fits a tone's sign (positive, negative or neutral)."""
    if tone_sign == "positive":
        return clip((compound + 0.1) / 0.6)
    if tone_sign == "negative":
        return clip((0.1 - compound) / 0.6)
    if tone_sign == "neutral":
        return 1.0 - clip((abs(compound) - 0.6) / 0.4)
    raise ValueError(f"tone sign must be positive, negative or neutral, got {tone_sign!r}")


def syllables(word: str) -> int:
    """Vowel groups of a word (y counts as a vowel), at least 1; a final silent e is not counted."""
    groups = re.findall(r"[aeiouy]+", word.lower())
    count = len(groups) - (word.lower().endswith("e") and not word.lower().endswith("le") and len(groups) > 1)
    return max(1, count)


def list_items(text: str) -> list[str]:
    """The distinct list items of a text: lines starting with -, *, • or a number."""
    found = [re.sub(r"\W+", " ", line).strip().lower() for line in text.splitlines() if _LIST_ITEM.match(line)]
    return list(dict.fromkeys(found))


def length_score(n: int, moderate: float) -> float:
    """(n / m) exp(1 - n / m): 0 at no words, 1 at the moderate length m, falling after it."""
    return (n / moderate) * math.exp(1.0 - n / moderate)


def function_word_score(share: float) -> float:
    """1 for a stop-word share between 0.25 and 0.65, linear to 0 at 0.05 and 0.85."""
    return clip(min((share - 0.05) / 0.20, (0.85 - share) / 0.20))


def fluency(tokens: list[str]) -> tuple[float, dict[str, float]]:
    """The mean of the two fluency proxies (real words, function words) and each of them."""
    parts = {
        "real_words": sum(map(is_english, tokens)) / len(tokens),
        "function_words": function_word_score(sum(w in STOPWORDS for w in tokens) / len(tokens)),
    }
    return sum(parts.values()) / len(parts), parts


def repetition(text: str, tokens: list[str]) -> tuple[float, dict[str, float]]:
    """The smaller of the shares of distinct sentences (3+ words) and of distinct word 3-grams."""
    long_sentences = [" ".join(words(s)) for s in sentences(text) if len(words(s)) >= 3]
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    parts = {
        "distinct_sentences": len(set(long_sentences)) / len(long_sentences) if long_sentences else 1.0,
        "distinct_trigrams": len(set(grams)) / len(grams) if grams else 1.0,
    }
    return min(parts.values()), parts


def finished(text: str) -> bool:
    """Whether the last line of 4 or more words ends a sentence (., ! or ?, then maybe a quote or bracket)."""
    lines = [line for line in text.splitlines() if len(words(line)) >= 4]
    return bool(lines) and bool(_SENTENCE_END.search(lines[-1]))


def _field(request: Mapping[str, Any], name: str, kind: str) -> Any:
    value = request.get(name)
    if value is None:
        raise ValueError(f"a chat request of kind {kind!r} needs the field {name!r} (its columns: {sorted(request)})")
    return value


def judge(request: Mapping[str, Any], response: str) -> Judgement:
    """The judge's score of ``response`` to a chat request (its fields: kind, topic, recipient,
    tone, items, age as ``rollout.chat`` writes them), with its parts. Deterministic."""
    kind = request.get("kind")
    if kind not in (*TONE_KINDS, *LIST_KINDS, "explain"):
        raise ValueError(
            f"a chat request's 'kind' must be one of note, email, story, tips, reasons, explain; got {kind!r}"
        )
    tokens = words(response)
    if not tokens:
        return Judgement(0.0, {**dict.fromkeys(WEIGHTS, 0.0), "repetition": 0.0}, {"words": 0})
    stems = {stem(w) for w in tokens}
    wanted = content_words(_field(request, "topic", kind))
    if kind in ("note", "email"):
        wanted += [w for w in content_words(_field(request, "recipient", kind)) if w not in wanted]
    coverage = sum(stem(w) in stems for w in wanted) / len(wanted) if wanted else 1.0
    counts: dict[str, float] = {"words": len(tokens)}
    if kind in LIST_KINDS:
        k = int(_field(request, "items", kind))
        n = len(list_items(response))
        asked, counts["list_items"] = clip(1.0 - abs(n - k) / k), n
        moderate = WORDS_PER_ITEM * k
    elif kind in TONE_KINDS:
        tone = _field(request, "tone", kind)
        if tone not in TONE_SIGNS:
            raise ValueError(f"unknown tone {tone!r}; the judge's tones: {', '.join(TONE_SIGNS)}")
        counts["polarity"] = compound = polarity(response)
        asked = tone_score(TONE_SIGNS[tone], compound)
        moderate = MODERATE_WORDS[kind]
    else:
        said = [words(s) for s in sentences(response)]
        per_sentence = sum(map(len, said)) / max(1, sum(1 for s in said if s))
        per_word = sum(map(syllables, tokens)) / len(tokens)
        counts.update(syllables_per_word=per_word, words_per_sentence=per_sentence)
        asked = (clip((2.0 - per_word) / 0.6) + clip((30 - per_sentence) / 16)) / 2
        moderate = MODERATE_WORDS[kind]
    fluent, fluency_parts = fluency(tokens)
    repeats, repetition_parts = repetition(response, tokens)
    parts = {
        "coverage": coverage,
        "asked": asked,
        "fluency": fluent,
        "finished": float(finished(response)),
        "length": length_score(len(tokens), moderate),
    }
    score = repeats * sum(WEIGHTS[k] * v for k, v in parts.items())
    return Judgement(score, {**parts, "repetition": repeats, **fluency_parts, **repetition_parts}, counts)


def judge_reward(prompts: list, completions: list[str], **columns: list) -> list[float | None]:
    """The judge as a reward function (a ``kind: python`` route names ``rewards.judge:judge_reward``):
    TRL's convention, the request fields read from the columns. A sample whose prompt carries no
    ``kind`` (not a chat prompt) gets None. For labelling and control arms: the main arms train
    against a reward model, never against the judge."""
    fields = [f for f in ("kind", "topic", "recipient", "tone", "items", "age") if f in columns]
    out: list[float | None] = []
    for i, response in enumerate(completions):
        request = {f: columns[f][i] for f in fields}
        out.append(judge(request, response).score if request.get("kind") else None)
    return out
