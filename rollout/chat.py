"""The ``chat`` task: open-ended instructions generated from templates, judged by a program.

Each prompt asks for a piece of writing of one of six kinds: a note or an email in a requested
tone to a recipient about a topic, a short story in a tone about a topic, k tips for an
activity, k reasons to enjoy an activity, or a concept explained to a child of a given age. The
items come from the lists in ``rollout/chat_lists.py`` (a few hundred topics, activities and
concepts, a hundred recipients, sixteen tones). Every kind has four phrasings (templates); the
last phrasing of each kind is held out: test prompts use only those six templates and training
prompts only the other eighteen, so no template is in both splits (as ``gsm_symbolic``).

Training-template prompts are further split by a fixed hash of their text into the policy's share
(``train``) and a reward model's share (``rm``, about a quarter): the prompts a reward model's
pairs are made from are never the policy's nor the evaluation's, whatever the sizes asked.

Every prompt has ``source="chat"`` (it picks the reward route) and carries what it asked for in
``Prompt.columns`` (``REQUEST_FIELDS``), which the gold judge (``rewards/judge.py``) reads.
"""

from __future__ import annotations

import hashlib
import random

from rollout.chat_lists import ACTIVITIES, CONCEPTS, RECIPIENTS, TONES, TOPICS, items
from rollout.records import Prompt

SOURCE = "chat"
# The columns every chat prompt carries (None where its kind does not use the field).
REQUEST_FIELDS = ("kind", "template", "topic", "recipient", "tone", "items", "age")

# kind -> its four phrasings; the last one of each is held out for evaluation.
TEMPLATES: dict[str, list[str]] = {
    "note": [
        "Write a short {tone} note to {recipient} about {topic}.",
        "Please write {recipient} a brief {tone} message about {topic}.",
        "Draft {a_tone} note for {recipient} about {topic}.",
        "Could you write {a_tone} little note to {recipient} concerning {topic}?",
    ],
    "email": [
        "Write {a_tone} email to {recipient} about {topic}.",
        "Compose an email to {recipient} about {topic}. Keep the tone {tone}.",
        "I need {a_tone} email for {recipient} regarding {topic}. Please write it.",
        "Help me email {recipient} about {topic}; it should sound {tone}.",
    ],
    "story": [
        "Write a short {tone} story about {topic}.",
        "Tell me a brief {tone} story about {topic}.",
        "Write a little story about {topic} with {a_tone} mood.",
        "Make up a short story, {tone} in tone, about {topic}.",
    ],
    "tips": [
        "Give {items} tips for {topic}.",
        "List {items} tips for {topic}.",
        "What are {items} good tips for {topic}?",
        "Share {items} practical tips for {topic}, one per line.",
    ],
    "reasons": [
        "Give {items} reasons to try {topic}.",
        "List {items} reasons why {topic} is worth it.",
        "What are {items} good reasons to start {topic}?",
        "Convince me to try {topic} with {items} reasons.",
    ],
    "explain": [
        "Explain {topic} to {a_age}-year-old child.",
        "How would you explain {topic} to a child of {age}?",
        "Describe {topic} in words {a_age}-year-old can understand.",
        "My {age}-year-old asked me about {topic}. Explain it simply.",
    ],
}
HELD_OUT = 3  # the phrasing index of each kind that only the test split uses
RM_SHARE = 0.25  # of the training-template prompts: the reward model's share (by a hash of the text)
SPLITS = ("train", "rm", "test")

_LISTS = {
    "topics": items(TOPICS),
    "recipients": items(RECIPIENTS),
    "activities": items(ACTIVITIES),
    "concepts": items(CONCEPTS),
    "tones": items(TONES),
}


def templates(split: str) -> list[tuple[str, int]]:
    """The (kind, phrasing index) templates a split draws from: the held-out phrasing of each
    kind for ``test``, the others for ``train`` and ``rm``."""
    if split not in SPLITS:
        raise ValueError(f"chat split must be one of {SPLITS}, got {split!r}")
    return [
        (kind, i)
        for kind, texts in TEMPLATES.items()
        for i in range(len(texts))
        if (i == HELD_OUT) == (split == "test")
    ]


def is_rm_prompt(text: str) -> bool:
    """Whether a training-template prompt belongs to the reward model's share: a fixed draw from its text."""
    digest = hashlib.sha256(f"chat-rm|{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < RM_SHARE


def _a(word: str) -> str:
    """``word`` after its indefinite article: "an upbeat", "a 6", "an 8"."""
    return f"{'an' if word[0] in 'aeiou8' else 'a'} {word}"


def draw_request(rng: random.Random, kind: str, phrasing: int) -> dict:
    """One request of a template: its fields (``REQUEST_FIELDS``) and its ``text``."""
    fields: dict = dict.fromkeys(REQUEST_FIELDS)
    fields.update(kind=kind, template=f"{kind}/{phrasing}")
    if kind in ("note", "email"):
        fields.update(topic=rng.choice(_LISTS["topics"]), recipient=rng.choice(_LISTS["recipients"]))
        fields["tone"] = rng.choice(_LISTS["tones"])
    elif kind == "story":
        fields.update(topic=rng.choice(_LISTS["topics"]), tone=rng.choice(_LISTS["tones"]))
    elif kind in ("tips", "reasons"):
        fields.update(topic=rng.choice(_LISTS["activities"]), items=rng.randint(3, 5))
    else:  # explain
        fields.update(topic=rng.choice(_LISTS["concepts"]), age=rng.randint(5, 10))
    articles = {"a_tone": _a(fields["tone"] or "-"), "a_age": _a(str(fields["age"]))}
    text = TEMPLATES[kind][phrasing].format(**fields, **articles)
    return {**fields, "text": text[0].upper() + text[1:]}


def chat_requests(num: int, split: str, seed: int = 0) -> list[dict]:
    """``num`` distinct requests of a split (``SPLITS``), the same for the same seed."""
    pool = templates(split)
    rng = random.Random(f"chat-{split}-{seed}")
    seen: dict[str, dict] = {}
    for _ in range(50 * num + 100):
        if len(seen) == num:
            break
        request = draw_request(rng, *rng.choice(pool))
        if split != "test" and is_rm_prompt(request["text"]) != (split == "rm"):
            continue
        seen.setdefault(request["text"], request)
    return list(seen.values())


def chat_prompt(pid: str, request: dict, system_prompt: str | None = None) -> Prompt:
    """A ``Prompt`` of a request: one user message (after the system prompt, if any), source
    ``chat``, the request's fields in ``columns``."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": request["text"]})
    columns = {k: request[k] for k in REQUEST_FIELDS}
    return Prompt(id=pid, messages=messages, answer=None, source=SOURCE, columns=columns)


def chat_prompts(num: int, split: str, seed: int = 0, system_prompt: str | None = None) -> list[Prompt]:
    """``num`` prompts of a split, ids ``chat/<split>/<i>``."""
    return [chat_prompt(f"chat/{split}/{i}", r, system_prompt) for i, r in enumerate(chat_requests(num, split, seed))]


def make_chat(
    num_train: int, num_test: int, seed: int = 0, system_prompt: str | None = None
) -> tuple[list[Prompt], list[Prompt]]:
    """(train, test) prompts of the chat task (the ``rm`` share is neither)."""
    return chat_prompts(num_train, "train", seed, system_prompt), chat_prompts(num_test, "test", seed, system_prompt)
