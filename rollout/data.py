"""A run's data, in one place: generated tasks, and data sets in the layouts users have.

``data.path`` is a JSON Lines, JSON, parquet or CSV file, or a folder written by
``datasets.save_to_disk`` (``data.split`` picks its split), read with the ``datasets`` library.
Its records are of one kind:

- a prompt: the run generates the responses (``Prompt``);
- a preference pair: a prompt, a chosen and a rejected response;
- a scored response: a prompt, a response and its reward.

The columns are named by ``data.*_key`` (``ColumnKeys``); a dotted key reaches into a nested
field (verl's ``reward_model.ground_truth``). A prompt is a string or a chat list of
``{"role", "content"}`` (with the default ``prompt_key``, a ``messages`` column serves when the
data has no ``prompt``); a chosen or rejected response is a string or a chat list whose last turn
is the assistant's (TRL's conversational pairs; without a prompt column, the turns before it are
the prompt). Every other column of a record travels with its samples to the reward functions.
Each record is checked as it is read: a ConfigError names the file, the line (JSON Lines) or row,
the column, and the columns the data has. ``read_data`` reads the data once, before Ray starts
(``syncrl train`` calls it in the CLI); the driver then tokenizes what it was given.

Records with the same prompt form one group (a pair's two responses, or every scored response to
a prompt). They become ``Sample`` records (chosen: reward 1, rejected: reward 0) that the
algorithms turn into training batches as they do with rollouts; such data has no behaviour
log-probs, so GRPO's importance ratio is taken against the current policy (ratio 1).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.errors import ConfigError
from rollout.records import Prompt, Sample
from rollout.settings import DataConfig, SyncRLConfig
from rollout.tasks import make_task

OFFLINE_VERSION = -1  # policy_version of samples that no engine generated
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the packages (and launch/recipes/data)
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class ColumnKeys:
    """Which column holds what (``data.*_key``); a dotted key reaches a nested field."""

    prompt: str = "prompt"
    answer: str = "answer"
    source: str = "source"
    id: str = "id"
    chosen: str = "chosen"
    rejected: str = "rejected"
    response: str = "response"
    reward: str = "reward"

    @staticmethod
    def of(data: DataConfig) -> ColumnKeys:
        """The column keys the data settings name (``data.*_key``)."""
        return ColumnKeys(**{k: getattr(data, f"{k}_key") for k in ColumnKeys.__dataclass_fields__})

    def kinds(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """kind: (a record of it, in words; the columns it needs besides the prompt)."""
        return {
            "prompts": ("prompt", ()),
            "pairs": ("preference pair", (self.chosen, self.rejected)),
            "samples": ("scored response", (self.response, self.reward)),
        }

    def prompt_names(self) -> str:
        return f"{self.prompt}|messages" if self.prompt == "prompt" else self.prompt


def kinds_needed(keys: ColumnKeys = ColumnKeys()) -> str:
    """What each kind of record needs, for error messages."""
    return "; ".join(
        f"a {what} needs {' + '.join([keys.prompt_names(), *fields])}" for what, fields in keys.kinds().values()
    )


def lookup(record: dict, key: str) -> Any:
    """``record[key]``, a dotted key going into nested fields; None when any part is missing."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value


def present(record: dict) -> list[str]:
    """The record's columns that hold a value (a JSON Lines file's missing fields read as None)."""
    return sorted(k for k, v in record.items() if v is not None)


def _is_chat(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def _chat(value: list[dict]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in value]


@dataclass
class Record:
    """One checked record: its prompt, and its responses with their rewards (none for a prompt)."""

    where: str  # path:line or "path row N", for later errors
    messages: list[dict[str, str]]
    responses: list[tuple[str, float]] = field(default_factory=list)
    id: str | None = None
    answer: str | None = None
    source: str = "default"
    columns: dict[str, Any] = field(default_factory=dict)


def record_kind(rec: Any, where: str, keys: ColumnKeys = ColumnKeys()) -> str:
    """The kind of one record ('prompts', 'pairs' or 'samples'), its columns checked, or a
    ConfigError naming ``where``, the column, the columns the record has and what each kind needs."""
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: not a JSON object (got a JSON {type(rec).__name__}); {kinds_needed(keys)}")
    has = f"the record has {', '.join(present(rec)) or 'no fields'}"
    prompt = _prompt_value(rec, keys)
    chosen_chat = _is_chat(lookup(rec, keys.chosen))
    if prompt is None and not chosen_chat:  # TRL's implicit prompt: the turns before the chosen answer
        raise ConfigError(f"{where}: no '{keys.prompt_names()}' column ({has}); {kinds_needed(keys)}")
    from_messages = prompt is not None and lookup(rec, keys.prompt) is None
    if from_messages and not _is_chat(prompt):
        raise ConfigError(
            f'{where}: \'messages\' must be a non-empty list of {{"role": str, "content": str}}, got {_short(prompt)}'
        )
    if prompt is not None and not (isinstance(prompt, str) and prompt) and not _is_chat(prompt):
        name = keys.prompt
        raise ConfigError(
            f"{where}: '{name}' must be a non-empty string or a non-empty list of "
            f'{{"role": str, "content": str}}, got {_short(prompt)}'
        )
    if (
        rec.get("completion") is not None
    ):  # a prompt-completion (SFT, KTO) record: not a prompt whose completion is ignored
        raise ConfigError(f"{where}: fits no kind: syncrl reads no 'completion' field ({has}); {kinds_needed(keys)}")
    kinds = keys.kinds()
    fits = [kind for kind, (_, cols) in kinds.items() if any(lookup(rec, c) is not None for c in cols)]
    if not fits:
        return "prompts"
    if len(fits) > 1:
        (a, b), cols = fits, [c for kind in fits for c in kinds[kind][1] if lookup(rec, c) is not None]
        raise ConfigError(
            f"{where}: fits no kind: it has fields of a {kinds[a][0]} and of a {kinds[b][0]} "
            f"({', '.join(cols)}; {has}); {kinds_needed(keys)}"
        )
    (kind,) = fits
    what, cols = kinds[kind]
    for col in cols:
        if lookup(rec, col) is None:
            must = "a finite number" if col == keys.reward and kind == "samples" else "a non-empty string"
            raise ConfigError(
                f"{where}: '{col}' must be {must} and is missing ({has}): a {what} needs "
                f"{' + '.join([keys.prompt_names(), *cols])}"
            )
    if kind == "pairs":
        _response_text(rec, keys.chosen, where)
        _response_text(rec, keys.rejected, where)
    else:
        _response_text(rec, keys.response, where)
        reward = lookup(rec, keys.reward)
        if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
            raise ConfigError(f"{where}: '{keys.reward}' must be a finite number, got {_short(reward)}")
    return kind


def _prompt_value(rec: dict, keys: ColumnKeys) -> Any:
    value = lookup(rec, keys.prompt)
    if value is None and keys.prompt == "prompt":
        value = rec.get("messages")
    return value


def _response_text(rec: dict, key: str, where: str) -> str:
    """A response column: a non-empty string, or a chat list whose last turn is the assistant's."""
    value = lookup(rec, key)
    if isinstance(value, str) and value:
        return value
    if _is_chat(value) and value[-1]["role"] == "assistant" and value[-1]["content"]:
        return value[-1]["content"]
    raise ConfigError(
        f"{where}: '{key}' must be a non-empty string (or a chat list ending with the assistant's turn), "
        f"got {_short(value)}"
    )


def to_record(rec: dict, kind: str, where: str, keys: ColumnKeys) -> Record:
    """A checked record (``record_kind``) as a ``Record``: its prompt messages, responses and columns."""
    prompt = _prompt_value(rec, keys)
    if prompt is None:  # implicit prompt: the chosen chat's turns before the answer
        prompt = lookup(rec, keys.chosen)[:-1]
        if not prompt:
            raise ConfigError(
                f"{where}: no '{keys.prompt_names()}' column, and '{keys.chosen}' has no turns before "
                "the assistant's answer to take as the prompt"
            )
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _chat(prompt)
    responses = []
    if kind == "pairs":
        responses = [(_response_text(rec, keys.chosen, where), 1.0), (_response_text(rec, keys.rejected, where), 0.0)]
    elif kind == "samples":
        responses = [(_response_text(rec, keys.response, where), float(lookup(rec, keys.reward)))]
    answer, source = lookup(rec, keys.answer), lookup(rec, keys.source)
    if answer is not None and (not isinstance(answer, (str, int, float)) or isinstance(answer, bool)):
        raise ConfigError(f"{where}: '{keys.answer}' must be a string or a number, got {_short(answer)}")
    if source is not None and not (isinstance(source, str) and source):
        raise ConfigError(
            f"{where}: '{keys.source}' must be a non-empty string (it picks the reward route), got {_short(source)}"
        )
    rid = lookup(rec, keys.id)
    used = {
        keys.prompt,
        "messages",
        keys.chosen,
        keys.rejected,
        keys.response,
        keys.reward,
        keys.answer,
        keys.source,
        keys.id,
    }
    columns = {k: v for k, v in rec.items() if k not in used}
    return Record(
        where,
        messages,
        responses,
        None if rid is None else str(rid),
        None if answer is None else str(answer),
        source or "default",
        columns,
    )


@dataclass
class DataFile:
    """A data set read and checked: its kind and its records."""

    path: str
    kind: str  # "prompts" | "pairs" | "samples"
    records: list[Record]
    columns: list[str]


def resolve_data_path(path: str) -> str:
    """``data.path`` as given, or, when a relative path is not there from the working directory,
    the same path under syncrl's folder (the data files the recipes name: launch/recipes/data)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
        return str(PROJECT_ROOT / p)
    return str(p)


def check_data_path(path: str) -> None:
    """data.path names a data file or a ``save_to_disk`` folder (a ConfigError otherwise)."""
    p = Path(path)
    if p.is_dir():
        if not any((p / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise ConfigError(
                f"data.path: {path!r} is a folder, but not one written by datasets' save_to_disk "
                "(no dataset_dict.json or state.json in it)"
            )
        return
    if not p.is_file():
        raise ConfigError(f"data.path: no file {path!r}")
    if p.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"data.path: {path!r}: unknown format {p.suffix or '(no suffix)'!r}; syncrl reads "
            f"{', '.join(FORMATS)} files and datasets' save_to_disk folders"
        )


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def load_table(path: str, split: str = "train") -> list[dict]:
    """The rows of a data file or ``save_to_disk`` folder, read with ``datasets`` (JSON Lines
    lines that are not JSON are named by their line)."""
    check_data_path(path)
    datasets = _quiet_datasets()
    p = Path(path)
    if p.is_dir():
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"data.split: {path} has no split {split!r}; its splits: {', '.join(loaded)}")
            loaded = loaded[split]
        return loaded.to_list()
    if p.suffix.lower() == ".jsonl":
        _check_json_lines(path)  # datasets' own errors name no line
    import tempfile

    with tempfile.TemporaryDirectory(prefix="syncrl-data-") as cache:  # no cache left behind in ~/.cache
        try:
            table = datasets.load_dataset(
                FORMATS[p.suffix.lower()],
                data_files=str(p.absolute()),
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
            )
        except Exception as err:  # noqa: BLE001 - pyarrow's and datasets' many parse errors, said in one line
            cause = err.__cause__ or err
            text = " ".join(str(cause).split())[:300]
            raise ConfigError(
                f"{path}: datasets cannot read it as {FORMATS[p.suffix.lower()]} ({type(cause).__name__}: {text})"
            ) from None
        return table.to_list()


def _check_json_lines(path: str) -> None:
    """Every non-blank line of a JSON Lines file is UTF-8 and a JSON object, or a ConfigError naming the line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the file ({err.strerror or err})") from None
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}:{n}: not UTF-8 text ({err.reason} at byte {err.start} of the line)") from None
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{path}:{n}: not JSON ({err.msg} at column {err.colno}); the file needs one JSON object a line"
            ) from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}:{n}: not a JSON object (got a JSON {type(rec).__name__}); {kinds_needed()}")
    if not raw.strip():
        raise ConfigError(f"{path}: no records (the file is empty); {kinds_needed()}")


def row_places(path: str, count: int) -> list[str]:
    """How errors name each row: ``path:LINE`` in a JSON Lines file (blank lines skipped), else ``path row N``."""
    if Path(path).suffix.lower() == ".jsonl":
        lines = [n for n, line in enumerate(Path(path).read_bytes().splitlines(), 1) if line.strip()]
        if len(lines) == count:
            return [f"{path}:{n}" for n in lines]
    return [f"{path} row {i + 1}" for i in range(count)]


def read_data(path: str, keys: ColumnKeys = ColumnKeys(), split: str = "train") -> DataFile:
    """The data set at ``path``, every record checked (``record_kind``). A ConfigError names the
    first bad record, or, in data that mixes kinds, the first record of a kind other than the most
    common one; each names the columns the data has."""
    rows = load_table(path, split)
    if not rows:
        raise ConfigError(f"{path}: no records (the file is empty); {kinds_needed(keys)}")
    columns = list(rows[0])
    places = row_places(path, len(rows))
    try:
        kinds = [record_kind(rec, where, keys) for rec, where in zip(rows, places)]
    except ConfigError as err:
        raise ConfigError(f"{err} [the data's columns: {', '.join(columns)}]") from None
    counts = Counter(kinds)  # most_common breaks ties by first appearance
    main = counts.most_common(1)[0][0]
    if len(counts) > 1:
        i = next(i for i, k in enumerate(kinds) if k != main)
        first = places[kinds.index(main)]
        names = keys.kinds()
        mix = [f"{c} {names[k][0]}{'s' if c > 1 else ''}" for k, c in counts.most_common()]
        mix = ", ".join(mix[:-1]) + " and " + mix[-1]
        raise ConfigError(
            f"{places[i]}: a {names[kinds[i]][0]} (the record has {', '.join(present(rows[i]))}) in data "
            f"of {names[main][0]}s (the first at {first}); data holds one kind, this one {mix} "
            f"({kinds_needed(keys)})"
        )
    return DataFile(path, main, [to_record(rec, main, where, keys) for rec, where in zip(rows, places)], columns)


def file_kind(path: str, keys: ColumnKeys = ColumnKeys()) -> str:
    """'pairs', 'samples' or 'prompts', from every record of the data (see ``read_data``)."""
    return read_data(path, keys).kind


def prompts_of(data: DataFile) -> list[Prompt]:
    """The prompts of a data set of prompts (ids: the id column, else the record's number)."""
    if data.kind != "prompts":
        raise ConfigError(
            f"{data.path}: holds {'preference pairs' if data.kind == 'pairs' else 'scored responses'}, "
            f"not prompts; {kinds_needed()}"
        )
    return [
        Prompt(id=r.id or str(n), messages=r.messages, answer=r.answer, source=r.source, columns=r.columns)
        for n, r in enumerate(data.records, 1)
    ]


def groups_of(data: DataFile, tokenizer: Any) -> list[list[Sample]]:
    """Every group of a data set of preference pairs or scored responses, as tokenized samples."""
    if data.kind == "prompts":
        raise ConfigError(f"{data.path}: holds prompts, not responses to train on; {kinds_needed()}")
    groups: dict[str, list[Sample]] = {}
    for n, r in enumerate(data.records, 1):
        key = f"pair-{n}" if data.kind == "pairs" else (r.id or json.dumps(r.messages, sort_keys=True))
        prompt_ids = list(
            tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
        for text, reward in r.responses:
            response_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            groups.setdefault(key, []).append(
                Sample(
                    prompt_id=key,
                    prompt_ids=prompt_ids,
                    response_ids=response_ids,
                    logprobs=[],
                    finish_reason="stop",
                    policy_version=OFFLINE_VERSION,
                    prompt_text=r.messages[-1]["content"],
                    response_text=text,
                    reward=reward,
                    answer=r.answer,
                    source=r.source,
                    prompt_messages=r.messages,
                    columns=r.columns,
                )
            )
    return list(groups.values())


# generated tasks


def task_splits(data: Any, name: str | None = None) -> tuple[list[Prompt], list[Prompt]]:
    """(train, test) of a generated task (default ``data.task``) under the data settings ``data``."""
    return make_task(name or data.task, data.num_train, data.num_test, data.seed, data.one_shot, data.system_prompt)


def test_prompts(
    cfg: Any, task: str | None = None, built: tuple[list[Prompt], list[Prompt]] | None = None
) -> list[Prompt]:
    """The held-out questions of ``eval.task`` (default ``data.task``), at most eval.num_questions:
    the test split of the same ``make_task`` call that gives training its questions (``built``:
    that call's (train, test) for ``data.task``, when the caller has it already)."""
    d, e = cfg.data, cfg.eval
    name = task or e.task or d.task
    if built is None or name != d.task:
        built = task_splits(d, name)
    test = built[1]
    if not test:
        raise ValueError(f"eval: task {name!r} has no test questions (data.num_test)")
    return test[: e.num_questions]


# what a run trains on


@dataclass
class RunData:
    """What ``read_run_data`` read: a generated task's splits, or a data set (not yet tokenized)."""

    task: tuple[list[Prompt], list[Prompt]] | None = None
    file: DataFile | None = None


def read_run_data(cfg: SyncRLConfig) -> RunData:
    """The run's data, read once and checked (before Ray starts): ``data.task``'s splits, or the
    data set at ``data.path``. Data of responses trains offline: every stage needs s = inf."""
    d = cfg.data
    if d.path is None:
        return RunData(task=task_splits(d))
    data = read_data(resolve_data_path(d.path), ColumnKeys.of(d), d.split)
    online = [s.name for s in cfg.resolved_stages() if s.sync.interval != math.inf]
    if data.kind != "prompts" and online:
        raise ConfigError(
            f"data.path {d.path} holds responses (offline data), so sync.interval must be inf; "
            f"stages with a finite interval: {online}"
        )
    return RunData(file=data)


def check_prompt_lengths(lengths: dict[str, int], limit: int, where: str) -> None:
    """Every prompt (id -> tokens after the chat template) within data.max_prompt_tokens, or a
    ConfigError naming the longest one: a prompt is never cut or dropped silently."""
    over = {k: n for k, n in lengths.items() if n > limit}
    if over:
        worst = max(over, key=over.get)
        raise ConfigError(
            f"data.max_prompt_tokens={limit}: prompt {worst!r} of {where} is {over[worst]} tokens after "
            f"the chat template ({len(over)} of {len(lengths)} prompts are longer than the limit); "
            "raise data.max_prompt_tokens (and rollout.max_model_len) or shorten the prompts"
        )


def prompt_lengths(prompts: list[Prompt], tokenizer: Any) -> dict[str, int]:
    """Tokens of each prompt with the chat template, as the engines apply it."""
    ids = tokenizer.apply_chat_template(
        [p.messages for p in prompts], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return {p.id: len(i) for p, i in zip(prompts, ids)}


def training_items(cfg: SyncRLConfig, run_data: RunData, tokenizer: Any) -> list:
    """The items a run's steps draw from: prompts (a generated task or a data set of prompts), or
    sample groups (a data set of responses), every prompt within data.max_prompt_tokens."""
    d = cfg.data
    if run_data.file is None:
        prompts = run_data.task[0]
        check_prompt_lengths(prompt_lengths(prompts, tokenizer), d.max_prompt_tokens, f"data.task {d.task!r}")
        return prompts
    if run_data.file.kind == "prompts":
        prompts = prompts_of(run_data.file)
        check_prompt_lengths(prompt_lengths(prompts, tokenizer), d.max_prompt_tokens, d.path)
        return prompts
    groups = groups_of(run_data.file, tokenizer)
    check_prompt_lengths({g[0].prompt_id: len(g[0].prompt_ids) for g in groups}, d.max_prompt_tokens, d.path)
    return groups


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
