"""The chat task, its gold judge, the simulated labeller and the judged-evaluation metrics: pure
functions, no engines (the end-to-end path is in test_bring_your_own.py)."""

from __future__ import annotations

import math
import random

import pytest

from rewards.judge import Judgement, judge, judge_reward, length_score, tone_score
from rewards.preferences import (
    draw_preference,
    expected_agreement,
    preference_probability,
    temperature_for_agreement,
)
from rollout.chat import HELD_OUT, REQUEST_FIELDS, TEMPLATES, chat_prompts, make_chat
from rollout.evaluation import lc_win_rate, win_rate

TIPS = {"kind": "tips", "topic": "learning to cook", "items": 3}
TIPS_ANSWER = "1. Start with simple recipes.\n2. Taste the food as you cook.\n3. Keep your tools clean."


# the task


def test_chat_split_has_no_template_in_both_halves_and_carries_the_request():
    train, test = make_chat(600, 120, seed=3)
    rm = chat_prompts(200, "rm", seed=3)
    templates = {name: {p.columns["template"] for p in prompts} for name, prompts in [("train", train), ("test", test)]}
    assert not templates["train"] & templates["test"]
    assert templates["test"] == {f"{kind}/{HELD_OUT}" for kind in TEMPLATES}  # every kind is evaluated
    assert {p.columns["template"] for p in rm} <= templates["train"]
    texts = [{p.messages[-1]["content"] for p in prompts} for prompts in (train, rm, test)]
    assert sum(map(len, texts)) == len(train) + len(rm) + len(test)  # distinct, and no prompt in two splits
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    for p in train + test + rm:
        assert p.source == "chat" and p.answer is None and set(p.columns) == set(REQUEST_FIELDS)
        assert p.columns["topic"] in p.messages[-1]["content"]
    assert [p.messages for p in make_chat(600, 120, seed=3)[0]] == [p.messages for p in train]  # seeded
    assert [p.messages for p in make_chat(600, 120, seed=4)[0]] != [p.messages for p in train]


def test_chat_lists_are_a_few_hundred_distinct_items_and_every_tone_is_judged():
    from rewards.judge import TONE_SIGNS
    from rollout.chat_lists import ACTIVITIES, CONCEPTS, RECIPIENTS, TONES, TOPICS, items

    for text in (TOPICS, RECIPIENTS, ACTIVITIES, CONCEPTS):
        assert len(items(text)) >= 100 and len(set(items(text))) == len(items(text))
    assert set(items(TONES)) == set(TONE_SIGNS)


def test_tasks_mix_with_a_plus_and_bad_names_are_refused():
    from rollout.errors import ConfigError
    from rollout.tasks import check_task, make_task

    train, test = make_task("chat+add-1digit", 6, 4, one_shot=True)
    assert [p.source for p in train] == ["chat", "math"] * 6 and [p.source for p in test] == ["chat", "math"] * 4
    assert len(train[0].messages) == 1 and len(train[1].messages) == 3  # one-shot applies to the math task only
    train, test = make_task("chat+add-1digit", 2000, 100)  # add-1digit has 80 training and 20 test questions
    assert [p.source for p in train] == ["chat", "math"] * 80 and [p.source for p in test] == ["chat", "math"] * 20
    for bad, says in [("chat+nope", r"unknown task 'nope' in 'chat\+nope'"), ("chat+chat", "names a task twice")]:
        with pytest.raises(ConfigError, match=says):
            check_task(bad)


# the judge, against hand-scored examples


def test_judge_scores_a_tips_answer_as_computed_by_hand():
    j = judge(TIPS, TIPS_ANSWER)
    # 14 words (start with simple recipes taste the food as you cook keep your tools clean), 5
    # stop words (with the as you your: 0.36, inside 0.25-0.65); "learning to cook": learn, cook ->
    # only cook is used; 3 items of 3; the last line of 4+ words ends with "."; nothing repeated
    length = (14 / 60) * math.exp(1 - 14 / 60)
    expected = {"coverage": 0.5, "asked": 1.0, "fluency": 1.0, "finished": 1.0, "length": length, "repetition": 1.0}
    assert {k: j.parts[k] for k in expected} == pytest.approx(expected)
    assert j.counts == {"words": 14, "list_items": 3}
    assert j.score == pytest.approx(0.25 * 0.5 + 0.25 + 0.20 + 0.10 + 0.20 * length)  # 0.7755


def test_judge_against_answers_built_to_fool_it():
    good = judge(TIPS, TIPS_ANSWER).score
    # keyword stuffing: every requested word, no sentence: 3-grams repeat (repetition 2/4), no
    # stop word (function words 0), no list, no final "."
    stuffed = judge(TIPS, "cook learning cook learning cook learning")
    length = 0.1 * math.exp(0.9)
    assert stuffed.parts["coverage"] == 1.0 and stuffed.parts["repetition"] == 0.5
    assert stuffed.score == pytest.approx(0.5 * (0.25 + 0.20 * 0.5 + 0.20 * length))
    assert stuffed.score < good / 3
    # the same answer three times: 1/3 of the sentences distinct, the score a third or less
    repeated = judge(TIPS, "\n".join([TIPS_ANSWER] * 3))
    assert repeated.parts["repetition"] == pytest.approx(1 / 3) and repeated.score < good / 2
    # an unfinished last sentence (cut at the token limit)
    cut = judge(TIPS, TIPS_ANSWER[:-1] + " and the")
    assert cut.parts["finished"] == 0.0  # -0.10, +0.2 * the length term's gain for 2 more words
    assert cut.score == pytest.approx(good - 0.10 + 0.20 * (length_score(16, 60) - length_score(14, 60)))
    # a very long answer: past its moderate length (60 words for 3 tips), the length term falls
    moderate = TIPS_ANSWER + (
        "\nCooking gets easier with practice, so cook a little every day. Read a recipe twice before you start, "
        "and set out everything you need. Ask a friend to cook with you now and then."
    )
    long = (
        moderate
        + "\n"
        + " ".join(
            f"On day {d} of the first month, try a new dish from a different country and write down what went well."
            for d in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
        )
    )
    short_j, long_j = judge(TIPS, moderate), judge(TIPS, long)
    assert long_j.counts["words"] > 3 * short_j.counts["words"] and long_j.score < short_j.score
    assert long_j.parts["length"] == pytest.approx(length_score(long_j.counts["words"], 60))
    assert length_score(60, 60) == 1.0 and length_score(240, 60) == pytest.approx(4 * math.exp(-3))
    # where it is fooled: it cannot tell a true explanation from a false one of the same shape
    ask = {"kind": "explain", "topic": "photosynthesis", "age": 6}
    true = "Plants make food from sunlight, water and air. This is photosynthesis. It happens in green leaves."
    false = "Plants make food from moonlight, sand and rocks. This is photosynthesis. It happens in the roots."
    assert judge(ask, false).score >= judge(ask, true).score  # 0.90 against 0.88
    # an empty answer
    assert judge(TIPS, "") == Judgement(0.0, judge(TIPS, "").parts, {"words": 0})


def test_judge_tone_and_child_terms():
    assert tone_score("positive", 0.5) == 1.0 and tone_score("positive", 0.2) == pytest.approx(0.5)
    assert tone_score("negative", -0.2) == pytest.approx(0.5) and tone_score("negative", 0.5) == 0.0
    assert tone_score("neutral", 0.6) == 1.0 and tone_score("neutral", -0.8) == pytest.approx(0.5)
    note = (
        "Dear neighbour,\nThank you for the wonderful evening of jazz. I loved hearing about the history of jazz "
        "and I am so grateful you shared it.\nBest wishes,\nAna"
    )
    warm = judge({"kind": "note", "topic": "the history of jazz", "recipient": "my neighbour", "tone": "warm"}, note)
    sad = judge({"kind": "note", "topic": "the history of jazz", "recipient": "my neighbour", "tone": "sad"}, note)
    assert warm.counts["polarity"] > 0.6 and warm.parts["asked"] == 1.0 and sad.parts["asked"] == 0.0
    assert warm.parts["coverage"] == 1.0 and warm.parts["finished"] == 1.0  # the sign-off lines are not checked
    child = {"kind": "explain", "topic": "gravity", "age": 7}
    plain = judge(child, "Gravity pulls things down. When you drop a ball, it falls. The Earth pulls on it.")
    dense = judge(
        child,
        "Gravitational interaction constitutes a fundamental phenomenon whereby massive objects experience "
        "mutual attraction proportional to their respective masses and inversely proportional to distance.",
    )
    assert plain.parts["asked"] == 1.0 and dense.parts["asked"] < 0.3


def test_judge_refuses_a_request_without_its_fields_and_scores_as_a_reward_function():
    with pytest.raises(ValueError, match="'kind' must be one of"):
        judge({"topic": "x"}, "text")
    with pytest.raises(ValueError, match="needs the field 'recipient'"):
        judge({"kind": "note", "topic": "x", "tone": "warm"}, "text")
    columns = {
        "kind": ["tips", None],
        "topic": ["learning to cook", None],
        "items": [3, None],
        "recipient": [None, None],
        "tone": [None, None],
        "age": [None, None],
    }
    assert judge_reward(["p", "q"], [TIPS_ANSWER, "4"], **columns) == [judge(TIPS, TIPS_ANSWER).score, None]


# the simulated labeller


def test_bradley_terry_labels_temperature_and_length_bias():
    assert preference_probability(0.6, 0.5, 0.1) == pytest.approx(1 / (1 + math.exp(-1)))
    assert preference_probability(0.6, 0.5, 0.0) == 1.0 and preference_probability(0.5, 0.5, 0.0) == 0.5
    assert preference_probability(0.5, 0.5, 0.1, length_bias=1.0, len_a=150, len_b=50) == pytest.approx(
        1 / (1 + math.exp(-1))
    )
    # equal differences d: agreement sigmoid(d / T) = 0.75 at T = d / ln 3
    assert temperature_for_agreement([0.1, -0.1, 0.1], 0.75) == pytest.approx(0.1 / math.log(3), rel=1e-6)
    assert expected_agreement([0.1, 0.0, -0.1], 0.1 / math.log(3)) == pytest.approx(0.75)
    rng = random.Random(0)
    draws = [draw_preference(rng, 0.6, 0.5, 0.1 / math.log(3)) for _ in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(0.75, abs=0.03)


def test_label_pairs_and_reward_model_accuracy_against_the_judge():
    from launch.reward_pairs import label_pairs, rm_pair_accuracy
    from rollout.records import Sample

    answers = [TIPS_ANSWER, "cook learning cook learning cook learning", TIPS_ANSWER, TIPS_ANSWER]
    samples = [
        Sample("p", [], [], [], "stop", 0, response_text=a, source="chat", columns={**TIPS, "tone": None})
        for a in answers
    ]
    records, summary = label_pairs(samples, 0.0, 0.0, random.Random(0))  # T = 0: the judge's order
    assert summary["pairs"] == 1 and summary["identical_pairs_left_out"] == 1 and summary["agreement"] == 1.0
    (r,) = records
    assert r["chosen"] == TIPS_ANSWER and r["judge_agrees"] and r["kind"] == "tips" and "tone" not in r
    assert r["judge_chosen"] == judge(TIPS, TIPS_ANSWER).score
    rows = [
        {"judge_chosen": 0.9, "judge_rejected": 0.1, "judge_agrees": True},
        {"judge_chosen": 0.2, "judge_rejected": 0.8, "judge_agrees": False},
        {"judge_chosen": 0.5, "judge_rejected": 0.5, "judge_agrees": None},
    ]
    # the RM ranks chosen above rejected in all three: right against the labels 3/3, against the judge 1/2
    acc = rm_pair_accuracy(rows, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert acc["accuracy_vs_labels"] == 1.0 and acc["accuracy_vs_judge"] == 0.5
    assert acc["label_agreement_with_judge"] == 0.5 and acc["pairs_judge_differs"] == 2


# judged evaluation


def test_lc_win_rate_against_a_hand_computation():
    """4 answers 10 tokens longer than the baseline's (3 wins, 1 loss) and 4 answers 10 tokens
    shorter (2 wins, 2 losses). tanh of the standardized difference takes two values +-c, so the
    fit is saturated: a + bc = logit(3/4), a - bc = logit(1/2), a = ln(3) / 2, LC = sigmoid(a) =
    sqrt(3) / (1 + sqrt(3)); Var(a) = (1/(4 * 3/4 * 1/4) + 1/(4 * 1/2 * 1/2)) / 4 = 7/12."""
    model = [1, 1, 1, 0, 1, 1, 0, 0]
    base = [0.5] * 8
    model_len, base_len = [20] * 4 + [0] * 4, [10] * 8
    lc, se = lc_win_rate(model, base, model_len, base_len, ridge=0.0)
    p = math.sqrt(3) / (1 + math.sqrt(3))
    assert lc == pytest.approx(p, abs=1e-9) and se == pytest.approx(p * (1 - p) * math.sqrt(7 / 12), rel=1e-6)
    assert lc_win_rate(model, base, model_len, base_len)[0] == pytest.approx(p, abs=1e-4)  # the default ridge
    rate, rate_se = win_rate(model, base)
    assert rate == 5 / 8 and rate_se == pytest.approx(math.sqrt((5 / 8) * (3 / 8) / 7))
    # ties count one half; all ties: 0.5; a model that always wins stays finite (the ridge)
    assert win_rate([0.3, 0.5], [0.3, 0.1])[0] == 0.75
    assert lc_win_rate([0.3] * 4, [0.3] * 4, [1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(0.5)
    assert 0.99 < lc_win_rate([1.0] * 6, [0.0] * 6, [5] * 6, [5] * 6)[0] < 1.0


def test_bad_chat_commands_are_one_line_before_ray(capsys, tmp_path):
    from launch.cli import USER_ERROR, main

    for args, says in [
        (["eval", "tiny-llama", "--task", "chat+add-1digit"], "evaluate chat on its own"),
        (["eval", "tiny-llama", "--task", "chat", "--beam", "2"], "--beam and --value apply to math tasks only"),
        (["eval", "tiny-llama", "--task", "add-1digit", "--baseline", "tiny-llama"], "apply to --task chat only"),
        (["eval", "tiny-llama", "--task", "chat", "--reward-model", str(tmp_path)], "no config.json"),
        (["chat-pairs", "tiny-llama", "--out", str(tmp_path), "--samples", "3"], "an even number of answers"),
        (["chat-pairs", "tiny-llama", "--out", str(tmp_path), "--label-temperature", "hot"], "a number >= 0 or auto"),
        (["rm-check", str(tmp_path), "--pairs", "x.jsonl"], "no config.json"),
    ]:
        assert main(args) == USER_ERROR, args
        err = capsys.readouterr().err
        assert err.startswith("syncrl: ") and says in err and err.count("\n") == 1, (args, err)


def test_generation_in_chunks_seeds_each_prompt_as_one_call():
    from launch.evaluate import generate_in_chunks

    calls = []

    class Engines:  # records the calls (the engines themselves: test_bring_your_own.py)
        def generate(self, prompts, n, seed, **sampling):
            calls.append((list(prompts), n, seed))
            return [(p, seed + i) for i, p in enumerate(prompts) for _ in range(n)]

    prompts = list(range(10))
    out = generate_in_chunks(Engines(), prompts, 4, 100, max_tokens=4096, temperature=1.0)
    assert [len(c[0]) for c in calls] == [1] * 10  # 16384 tokens a call: one prompt of 4 x 4096
    assert out == [(p, 100 + p) for p in prompts for _ in range(4)]
    calls.clear()
    generate_in_chunks(Engines(), prompts, 2, 7, max_tokens=2048)
    assert [(c[0], c[2]) for c in calls] == [([0, 1, 2, 3], 7), ([4, 5, 6, 7], 11), ([8, 9], 15)]


def test_generation_in_chunks_resumes_from_its_store(tmp_path):
    """A stored generation killed half way (after a call, or while a call was written) resumes
    after its whole calls with the same seeds; a store of other settings is refused by name."""
    from launch.evaluate import generate_in_chunks
    from rollout.errors import ConfigError
    from rollout.records import Prompt, Sample

    calls = []

    class Engines:
        def __init__(self, fail_at=None):
            self.fail_at = fail_at

        def generate(self, prompts, n, seed, **sampling):
            if len(calls) == self.fail_at:
                raise RuntimeError("killed")
            calls.append(seed)
            return [
                Sample(p.id, [1], [seed + i, k], [-0.5, -0.25], "stop", 0)
                for i, p in enumerate(prompts)
                for k in range(n)
            ]

    prompts = [Prompt(f"p{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(10)]
    whole = generate_in_chunks(Engines(), prompts, 2, 7, max_tokens=2048)  # calls of 4 prompts
    calls.clear()
    store = tmp_path / "answers.jsonl"
    with pytest.raises(RuntimeError):
        generate_in_chunks(Engines(fail_at=2), prompts, 2, 7, store=store, key={"model": "m"}, max_tokens=2048)
    assert calls == [7, 11] and len(store.read_text().splitlines()) == 1 + 16
    with store.open("a") as f:  # a call cut while it was written
        f.write('{"prompt_id": "p8", "prompt_ids"')
    calls.clear()
    resumed = generate_in_chunks(Engines(), prompts, 2, 7, store=store, key={"model": "m"}, max_tokens=2048)
    assert calls == [15] and resumed == whole
    calls.clear()
    again = generate_in_chunks(Engines(), prompts, 2, 7, store=store, key={"model": "m"}, max_tokens=2048)
    assert calls == [] and again == whole and len(store.read_text().splitlines()) == 1 + 20
    with pytest.raises(ConfigError, match=r"answers\.jsonl: answers of other settings \(key, seed differ\)"):
        generate_in_chunks(Engines(), prompts, 2, 8, store=store, key={"model": "other"}, max_tokens=2048)


def test_a_python_route_names_the_judge():
    """The judge as a reward route (labelling, control arms): the chat samples of a mixed batch,
    scored in the route's grader process, get the judge's score; math goes to math_verify."""
    from rewards.router import RewardRouter
    from rollout.records import Sample

    chat = Sample("c", [], [], [], "stop", 0, response_text=TIPS_ANSWER, source="chat", columns=dict(TIPS))
    math_ = Sample("m", [], [], [], "stop", 0, response_text="\\boxed{4}", answer="4", source="math")
    routes = {"math": {"kind": "math_verify"}, "chat": {"kind": "python", "function": "rewards.judge:judge_reward"}}
    router = RewardRouter(routes, default="math")
    try:
        results = router.score([chat, math_])
    finally:
        router.close()
    assert results[0].reward == pytest.approx(judge(TIPS, TIPS_ANSWER).score) and results[1].reward == 1.0
