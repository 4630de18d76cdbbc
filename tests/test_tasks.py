"""Generated tasks and the resumable prompt stream."""

from __future__ import annotations

import json

import pytest

from rollout.data import prompts_of, read_data
from rollout.tasks import TASKS, ShuffledStream, make_task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_are_seeded_disjoint_and_correct(name):
    train, test = make_task(name, num_train=40, num_test=10, seed=3)
    assert (train, test) == make_task(name, num_train=40, num_test=10, seed=3)
    assert not {p.messages[-1]["content"] for p in train} & {p.messages[-1]["content"] for p in test}
    for p in train[:10]:
        question = p.messages[-1]["content"]
        if name.startswith("chain"):  # "Start with a. Add b, then multiply by c, ...": apply the words in order
            value = int(question.split(".")[0].removeprefix("Start with "))
            for step in (
                question.split(". ", 1)[1].split("?")[0].removesuffix(". What number do you get").split(", then ")
            ):
                n = int(step.split()[-1])
                value = {"add": value + n, "multiply": value * n, "subtract": value - n}[step.split()[0].lower()]
            assert str(value) == p.answer and value > 0
            assert len(question.split(", then ")) == int(name[6])
        elif name != "word-1step":  # "What is a op b?": the reference answer is the arithmetic value
            expr = question.removeprefix("What is ").split("?")[0]
            assert str(eval(expr)) == p.answer  # noqa: S307 - generated digits and one operator
        assert "\\boxed{}" in question and p.source == "math"


def test_small_task_space_keeps_a_test_split():
    train, test = make_task("add-1digit", num_train=2000, num_test=100)
    assert len(train) + len(test) == 100 and len(test) == 20  # only 100 distinct 1-digit sums


def test_one_shot_and_system_prompt():
    (p,), _ = make_task("add-2digit", 1, 0, one_shot=True, system_prompt="Be brief.")
    assert [m["role"] for m in p.messages] == ["system", "user", "assistant", "user"]


def test_prompt_stream_resumes_exactly():
    prompts, _ = make_task("add-2digit", 10, 0)
    full = ShuffledStream(prompts, 4, seed=1)
    order = [[p.id for p in full.next()] for _ in range(6)]  # crosses epochs
    assert sorted(sum(order[:2], []) + order[2][:2]) == sorted(p.id for p in prompts)  # each once per epoch
    resumed = ShuffledStream(prompts, 4, seed=1, position=12)
    assert [[p.id for p in resumed.next()] for _ in range(3)] == order[3:]


def test_load_prompts_errors_name_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "2+2?", "answer": 4}) + "\n" + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        prompts_of(read_data(str(f)))


def test_gsm_symbolic_is_split_by_template_with_the_generators_answers():
    reasoning_gym = pytest.importorskip("reasoning_gym")
    from rollout.tasks import GSM_TEST_TEMPLATES

    train, test = make_task("gsm_symbolic", num_train=60, num_test=20, seed=7)
    assert (len(train), len(test)) == (60, 20) and (train, test) == make_task("gsm_symbolic", 60, 20, seed=7)
    # Independently: regenerate the dataset and look up each question's template and answer.
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=500, seed=7)
    truth = {}
    for i in range(len(ds)):
        truth.setdefault(ds[i]["question"], (ds.task_indices[i], str(ds[i]["answer"])))
    for split, held_out in ((train, False), (test, True)):
        for p in split:
            question = p.messages[-1]["content"].removesuffix(" Put your final answer in \\boxed{}.")
            template, answer = truth[question]
            assert (template % GSM_TEST_TEMPLATES == 0) is held_out and p.answer == answer


def test_chain_tasks_show_one_step_per_line():
    (p,), _ = make_task("chain-3op", 1, 0, one_shot=True)
    example = p.messages[1]["content"]
    assert p.messages[0]["content"].startswith("Start with 4.") and example.count("\n") == 3
    (plain,), _ = make_task("add-2digit", 1, 0, one_shot=True)
    assert plain.messages[1]["content"].startswith("2 + 2 = 4")
