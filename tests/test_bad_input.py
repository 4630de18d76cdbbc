"""Bad input, as a new user gives it: one ``syncrl: ...`` line naming the file, the line and the
field, a failing exit status and no traceback, before Ray or any actor starts. And the kind of a
data file (prompts, preference pairs, scored responses), decided from every record."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import USER_ERROR
from launch.config import ConfigError
from rollout.data import file_kind, groups_of, prompts_of, read_data

PAIR = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
PROMPT = {"prompt": "What is 2 + 2?", "answer": 4}
SCORED = {"prompt": "What is 2 + 2?", "response": "4", "reward": 1.0}


def write(path, *lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def syncrl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    # A timeout, not a hang, if a check ever let the command go on to start Ray.
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def assert_one_line(done: subprocess.CompletedProcess, *parts: str) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == USER_ERROR != 0, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("syncrl: "), done.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert done.stdout == ""
    return lines[0]


# the real command, in a subprocess


def test_train_with_a_line_that_is_not_json(tmp_path):
    data = write(tmp_path / "prompts.jsonl", PROMPT, '{"prompt": oops}')
    done = syncrl("train", "tiny-grpo", "--set", f"data.path={data}", "--output", str(tmp_path / "run"))
    assert_one_line(done, f"{data}:2: not JSON")
    assert not (tmp_path / "run").exists()  # nothing written, no run directory


def test_train_with_a_pair_without_rejected(tmp_path):
    data = write(tmp_path / "pairs.jsonl", PAIR, PAIR, {"prompt": "x", "chosen": "y"})
    done = syncrl(
        "train",
        "tiny-dpo",
        "--set",
        f"data.path={data}",
        "--set",
        "sync.interval=inf",
        "--output",
        str(tmp_path / "run"),
    )
    assert_one_line(done, f"{data}:3: 'rejected'", "missing", "chosen, prompt")
    assert not (tmp_path / "run").exists()


def test_train_with_a_file_of_pairs_whose_every_record_lacks_rejected(tmp_path):
    """It was taken for a file of prompts (the run generated its own responses)."""
    data = write(tmp_path / "pairs.jsonl", {"prompt": "x", "chosen": "y"}, {"prompt": "z", "chosen": "w"})
    assert_one_line(syncrl("train", "tiny-grpo", "--set", f"data.path={data}"), f"{data}:1: 'rejected'", "missing")


def test_train_with_a_data_file_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such.jsonl"
    done = syncrl("train", "tiny-grpo", "--set", f"data.path={missing}", "--output", str(tmp_path / "run"))
    assert_one_line(done, "data.path", str(missing))
    assert not (tmp_path / "run").exists()


def test_train_with_a_model_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-model"
    done = syncrl("train", "tiny-grpo", "--set", f"model.path={missing}", "--output", str(tmp_path / "run"))
    assert_one_line(done, "model.path", str(missing), "does not exist")
    assert not (tmp_path / "run").exists()
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    assert_one_line(syncrl("train", "tiny-grpo", "--set", f"model.path={not_a_model}"), "model.path", "no config.json")


def test_train_with_an_unknown_task(tmp_path):
    done = syncrl("train", "tiny-grpo", "--set", "data.task=no-such-task", "--output", str(tmp_path / "run"))
    assert_one_line(done, "data.task", "'no-such-task'", "add-1digit")
    assert not (tmp_path / "run").exists()


def test_train_with_a_recipe_that_does_not_exist():
    assert_one_line(syncrl("train", "no-such-recipe"), "recipe 'no-such-recipe'", "tiny-grpo")


def test_resume_of_a_folder_that_does_not_exist(tmp_path):
    assert_one_line(syncrl("train", "--resume", str(tmp_path / "no-such-run")), "--resume", "does not exist")


def test_eval_with_a_model_or_task_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-model"
    assert_one_line(syncrl("eval", str(missing), "--task", "add-1digit"), str(missing), "does not exist")
    assert_one_line(syncrl("eval", "tiny-llama", "--task", "no-such-task"), "--task", "'no-such-task'")


def test_experiment_file_that_does_not_exist():
    assert_one_line(syncrl("experiment", "no-such-experiments", "sync-interval"), "'no-such-experiments'")


# the kind of a data file


def test_kinds(tmp_path):
    assert (
        file_kind(write(tmp_path / "p.jsonl", PROMPT, {"messages": [{"role": "user", "content": "hi"}]})) == "prompts"
    )
    assert file_kind(write(tmp_path / "d.jsonl", PAIR, "", PAIR)) == "pairs"  # blank lines are skipped
    assert file_kind(write(tmp_path / "s.jsonl", SCORED, {**SCORED, "reward": 0})) == "samples"
    data = read_data(write(tmp_path / "n.jsonl", PAIR, "   ", PAIR))
    assert data.kind == "pairs" and [r.where.rsplit(":", 1)[1] for r in data.records] == ["1", "3"]


def test_a_pair_without_rejected_is_an_error_naming_the_line(tmp_path):
    path = write(tmp_path / "pairs.jsonl", PAIR, {"prompt": "x", "chosen": "y"})
    with pytest.raises(
        ConfigError, match=r"pairs.jsonl:2: 'rejected' must be a non-empty string and is missing"
    ) as err:
        file_kind(path)
    assert "the record has chosen, prompt" in str(err.value) and "chosen + rejected" in str(err.value)
    # alone in its file, too: no longer a file of prompts
    with pytest.raises(ConfigError, match=r"one.jsonl:1: 'rejected' .* missing"):
        file_kind(write(tmp_path / "one.jsonl", {"prompt": "x", "chosen": "y"}))
    with pytest.raises(ConfigError, match=r"r.jsonl:1: 'chosen' .* missing"):
        file_kind(write(tmp_path / "r.jsonl", {"prompt": "x", "rejected": "y"}))
    with pytest.raises(ConfigError, match=r"s.jsonl:1: 'reward' .* missing"):
        file_kind(write(tmp_path / "s.jsonl", {"prompt": "x", "response": "y"}))


def test_a_mixed_file_names_the_first_line_of_the_minority_kind(tmp_path):
    path = write(tmp_path / "mixed.jsonl", PROMPT, PROMPT, PAIR, PROMPT, PAIR)
    with pytest.raises(
        ConfigError,
        match=r"mixed.jsonl:3: a preference pair \(the record has chosen, prompt, rejected\) "
        r"in data of prompts \(the first at .*mixed.jsonl:1\)",
    ) as err:
        file_kind(path)
    assert "3 prompts and 2 preference pairs" in str(err.value)
    assert "a scored response needs prompt|messages + response + reward" in str(err.value)
    with pytest.raises(ConfigError, match=r"tie.jsonl:2: a prompt .* in data of scored responses"):
        file_kind(write(tmp_path / "tie.jsonl", SCORED, PROMPT))  # a tie: the kind seen first is the file's


def test_a_line_that_is_not_json_names_its_number(tmp_path):
    with pytest.raises(ConfigError, match=r"bad.jsonl:3: not JSON \(Expecting .* at column 12\)"):
        file_kind(write(tmp_path / "bad.jsonl", PAIR, "", '{"prompt": oops}', PAIR))
    with pytest.raises(ConfigError, match=r"list.jsonl:1: not a JSON object \(got a JSON list\)"):
        file_kind(write(tmp_path / "list.jsonl", "[1, 2]"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "x"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=r"latin1.jsonl:2: not UTF-8"):
        file_kind(str(tmp_path / "latin1.jsonl"))


def test_records_that_fit_no_kind(tmp_path):
    with pytest.raises(
        ConfigError, match=r"q.jsonl:1: no 'prompt\|messages' column \(the record has answer, question\)"
    ):
        file_kind(write(tmp_path / "q.jsonl", {"question": "x", "answer": 1}))
    with pytest.raises(
        ConfigError, match=r"both.jsonl:1: fits no kind: it has fields of a preference pair and of a scored"
    ):
        file_kind(write(tmp_path / "both.jsonl", {**PAIR, "response": "4", "reward": 1}))
    with pytest.raises(ConfigError, match=r"c.jsonl:1: fits no kind: syncrl reads no 'completion'"):
        file_kind(write(tmp_path / "c.jsonl", {"prompt": "x", "completion": "y"}))
    with pytest.raises(ConfigError, match=r"w.jsonl:2: 'reward' must be a finite number, got 'high'"):
        file_kind(write(tmp_path / "w.jsonl", SCORED, {**SCORED, "reward": "high"}))
    with pytest.raises(
        ConfigError, match=r"e.jsonl:1: 'chosen' must be a non-empty string \(or a chat list .*\), got ''"
    ):
        file_kind(write(tmp_path / "e.jsonl", {**PAIR, "chosen": ""}))
    with pytest.raises(ConfigError, match=r"m.jsonl:1: 'messages' must be a non-empty list"):
        file_kind(write(tmp_path / "m.jsonl", {"messages": "hi"}))
    with pytest.raises(ConfigError, match=r"empty.jsonl: no records"):
        file_kind(write(tmp_path / "empty.jsonl", ""))
    with pytest.raises(ConfigError, match=r"data.path: no file"):
        file_kind(str(tmp_path / "no-such.jsonl"))


def test_each_loader_takes_its_own_kind(tmp_path):
    prompts = prompts_of(
        read_data(write(tmp_path / "p.jsonl", PROMPT, {"id": "b", "messages": [{"role": "user", "content": "hi"}]}))
    )
    assert [(p.id, p.answer) for p in prompts] == [("1", "4"), ("b", None)]
    with pytest.raises(ConfigError, match="holds preference pairs, not prompts"):
        prompts_of(read_data(write(tmp_path / "d.jsonl", PAIR)))
    with pytest.raises(ConfigError, match="holds prompts, not responses"):
        groups_of(read_data(write(tmp_path / "p2.jsonl", PROMPT)), tokenizer=None)


def closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_named_cluster_that_does_not_answer_is_one_line_at_once(tmp_path):
    import os
    import time

    from launch.cluster import CURRENT_CLUSTER, check_answers

    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(ConfigError, match=f"remove {CURRENT_CLUSTER}"):
        check_answers(address, str(CURRENT_CLUSTER))
    env = {**os.environ, "RAY_ADDRESS": address}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "launch", "train", "tiny-grpo", "--output", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert_one_line(done, f"the Ray cluster at {address} (named by RAY_ADDRESS) does not answer", "check the address")
    assert time.monotonic() - start < 30  # not Ray's minutes of GCS retries
    assert not (tmp_path / "run").exists()  # nothing written


def test_reward_model_routes_are_checked_before_ray(tmp_path, tiny_llama, tiny_reward_model):
    """A reward_model route's folder: missing, a causal LM, or a classifier whose reward logit is
    not said: one line naming the route's field, before Ray starts (nothing written)."""
    route = "reward.routes.default={kind: reward_model, model_path: %s}"
    done = syncrl("train", "tiny-grpo", "--set", route % (tmp_path / "no-such-rm"), "--output", str(tmp_path / "run"))
    assert_one_line(done, "reward.routes.default.model_path", "no-such-rm", "does not exist")
    assert not (tmp_path / "run").exists()
    assert_one_line(
        syncrl("train", "tiny-grpo", "--set", route % tiny_llama),
        "reward.routes.default.model_path",
        "is a causal LM",
        "algorithm.name: reward_model",
    )
    two = tmp_path / "two-labels"
    two.mkdir()
    config = json.loads((Path(tiny_reward_model) / "config.json").read_text())
    (two / "config.json").write_text(json.dumps({**config, "num_labels": 2, "id2label": {"0": "bad", "1": "good"}}))
    assert_one_line(syncrl("train", "tiny-grpo", "--set", route % two), "2 labels", "reward.routes.default.label_index")
    assert_one_line(syncrl("eval", "tiny-llama", "--task", "add-1digit", "--set", route % two), "2 labels")
