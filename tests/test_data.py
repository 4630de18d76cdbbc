"""Data sets in the layouts users have (rollout/data.py), read with the datasets library: verl's
parquet (chat prompt, data_source, reward_model.ground_truth), TRL's preference data saved with
save_to_disk, column mapping, and bad columns named with the file, the row and the columns."""

import json

import pytest

from launch.cli import USER_ERROR
from launch.config import ConfigError, load_config
from rollout.data import groups_of, prompts_of, read_data, read_run_data

datasets = pytest.importorskip("datasets")

VERL_ROWS = [
    {
        "data_source": "math",
        "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "5"},
        "extra_info": {"index": 0, "split": "train"},
    },
    {
        "data_source": "chat",
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        "ability": "chat",
        "reward_model": {"style": "model", "ground_truth": "hi"},
        "extra_info": {"index": 1, "split": "train"},
    },
]
VERL_KEYS = ["data.source_key=data_source", "data.answer_key=reward_model.ground_truth"]


def verl_parquet(tmp_path) -> str:
    path = str(tmp_path / "train.parquet")
    datasets.Dataset.from_list(VERL_ROWS).to_parquet(path)
    return path


def test_verl_parquet_with_nested_keys_and_extra_columns(tmp_path):
    cfg = load_config(None, [f"data.path={verl_parquet(tmp_path)}", *VERL_KEYS])
    prompts = prompts_of(read_run_data(cfg).file)
    assert [(p.source, p.answer) for p in prompts] == [("math", "5"), ("chat", "hi")]
    assert prompts[1].messages == VERL_ROWS[1]["prompt"]
    # every other column travels with the prompt (the nested one whose field is the answer too)
    assert prompts[0].columns["ability"] == "math" and prompts[0].columns["extra_info"] == {
        "index": 0,
        "split": "train",
    }
    assert prompts[0].columns["reward_model"]["style"] == "rule" and "prompt" not in prompts[0].columns


def test_trl_pairs_saved_to_disk_explicit_and_implicit_prompt(tmp_path):
    from transformers import AutoTokenizer

    from launch.models import build_tokenizer

    explicit = datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "2 + 2?"}],
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}],
            }
        ]
    )
    implicit = datasets.Dataset.from_list(
        [
            {
                "chosen": [{"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "6"}],
                "rejected": [{"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "7"}],
            }
        ]
    )
    datasets.DatasetDict({"train": explicit, "test": implicit}).save_to_disk(str(tmp_path / "prefs"))
    for split, (question, chosen, rejected) in {"train": ("2 + 2?", "4", "5"), "test": ("3 + 3?", "6", "7")}.items():
        data = read_data(str(tmp_path / "prefs"), split=split)
        assert data.kind == "pairs" and data.records[0].messages == [{"role": "user", "content": question}]
        assert data.records[0].responses == [(chosen, 1.0), (rejected, 0.0)]
    build_tokenizer().save_pretrained(tmp_path / "tok")
    (group,) = groups_of(read_data(str(tmp_path / "prefs")), AutoTokenizer.from_pretrained(tmp_path / "tok"))
    assert [s.reward for s in group] == [1.0, 0.0] and group[0].prompt_ids == group[1].prompt_ids
    with pytest.raises(ConfigError, match=r"data.split: .*prefs has no split 'dev'; its splits: train, test"):
        read_data(str(tmp_path / "prefs"), split="dev")


def test_column_keys_map_other_names(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"question": "1 + 1?", "label": 2, "task": "arith", "uid": "q1"}]))
    cfg = load_config(
        None,
        [
            f"data.path={path}",
            "data.prompt_key=question",
            "data.answer_key=label",
            "data.source_key=task",
            "data.id_key=uid",
        ],
    )
    (p,) = prompts_of(read_run_data(cfg).file)
    assert (p.id, p.answer, p.source, p.messages[0]["content"], p.columns) == ("q1", "2", "arith", "1 + 1?", {})


def test_a_missing_or_ill_typed_column_names_file_row_column_and_columns(tmp_path):
    path = verl_parquet(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"train.parquet row 1: no 'question' column .*\[the data's columns: "
        r"data_source, prompt, ability, reward_model, extra_info\]",
    ):
        read_run_data(load_config(None, [f"data.path={path}", "data.prompt_key=question"]))
    with pytest.raises(
        ConfigError, match=r"train.parquet row 1: 'ability' must be a non-empty string \(it picks the reward route\)"
    ):
        rows = [{**r, "ability": 3} for r in VERL_ROWS]
        datasets.Dataset.from_list(rows).to_parquet(path)
        read_run_data(load_config(None, [f"data.path={path}", "data.source_key=ability"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "answer": {"a": 1}}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: 'answer' must be a string or a number"):
        read_run_data(load_config(None, [f"data.path={bad}"]))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"unknown format '.txt'"):
        read_run_data(load_config(None, [f"data.path={tmp_path / 'x.txt'}"]))


def test_the_cli_reads_a_bad_parquet_column_before_ray(tmp_path):
    from tests.test_bad_input import assert_one_line, syncrl

    done = syncrl(
        "train",
        "tiny-grpo",
        "--set",
        f"data.path={verl_parquet(tmp_path)}",
        "--set",
        "data.answer_key=reward_model.truth",
        "--set",
        "data.prompt_key=query",
        "--output",
        str(tmp_path / "run"),
    )
    assert done.returncode == USER_ERROR
    assert_one_line(done, "train.parquet row 1", "'query'", "the data's columns: data_source, prompt")
    assert not (tmp_path / "run").exists()
