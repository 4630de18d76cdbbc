"""logging.wandb: MetricsLog logs the TensorBoard scalars and the run's config to a Weights & Biases
run (offline mode here: no network, no API key), and a resumed run continues the same wandb run."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors.controller import metric_values, scalar_tag
from launch.config import ConfigError, load_config
from launch.metrics import MetricsLog, step_record, wandb_run_name
from rollout.records import Sample, TrainBatch

ROOT = Path(__file__).resolve().parents[1]
EVAL = {
    "accuracy": 0.25,
    "accuracy_stderr": 0.1,
    "questions": 4,
    "samples_per_question": 1,
    "response_len_mean": 7.5,
    "boxed_rate": 0.5,
    "correct_any_format": 0.25,
    "truncated_rate": 0.0,
    "pass@1": 0.25,
    "policy_version": 2,
    "time_s": 1.5,
    "accuracy/gsm8k": 0.5,
    "questions/gsm8k": 4,
}
BEAM = {**EVAL, "beam": 2, "finished_answers_mean": 1.5}
CONTROLLER = SimpleNamespace(
    report=SimpleNamespace(remote=lambda r: None), report_eval=SimpleNamespace(remote=lambda r: None)
)


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    """wandb quiet, offline, and its caches and settings under tmp_path."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in (
        "WANDB_MODE",
        "WANDB_DIR",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    for name, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / folder))


def full_record(step: int = 0, reward: float = 0.5, sources: tuple[str, ...] = ("default",)) -> dict:
    """A step record as MetricsLog gets it: one sample per source (the first with ``reward``)."""
    state = SimpleNamespace(step=step, learner_version=step + 1, engine_version=step)
    samples = [
        Sample(
            prompt_id="p",
            prompt_ids=[1],
            response_ids=[2] * (3 + i),
            logprobs=[0.0] * (3 + i),
            finish_reason="stop",
            policy_version=step,
            reward=reward if i == 0 else 0.25,
            source=source,
        )
        for i, source in enumerate(sources)
    ]
    loss = {"loss": 0.5 + step, "entropy": 2.0, "kl": None, "tokens": 40.0, "grpo_loss": 0.5}
    return step_record(
        state, "main", 1, samples, TrainBatch(sequences=[], counts={"groups": 1}), loss, 1.0, 0.5, 2.0, 0.25
    )


def wandb_records(path: Path, timeout_s: float = 60.0) -> list:
    """The records of a finished run's ``run-<id>.wandb`` file, once wandb's service process has
    written them all (its ``exit`` record: ``finish()`` may return before the file is flushed on a
    busy machine), waiting at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_records(path: Path) -> list:
    """The records in a ``run-<id>.wandb`` file now: a 7-byte header (``:W&B``, magic, version),
    then protobuf ``Record``s in a leveldb-style log of 32 KiB blocks, each chunk behind a 7-byte
    header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); a chunk still being written is
    left out."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def key(item) -> str:
    return item.key or "/".join(item.nested_key)


def offline_run(records: list) -> tuple[str, dict, list[dict]]:
    """(run id, config, history rows) of a run's records."""
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {key(u): json.loads(u.value_json) for u in run.config.update}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({key(u): json.loads(u.value_json) for u in r.config.update})
    rows = [
        {key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    return run.run_id, config, rows


def run_folders(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def logged(rows: list[dict], prefix: str) -> list[dict]:
    """The rows with ``prefix/`` keys, without wandb's own keys (``_step``, ``_runtime``, ...)."""
    return [
        {k: v for k, v in row.items() if not k.startswith("_")}
        for row in rows
        if any(k.startswith(prefix + "/") for k in row)
    ]


def expected(prefix: str, record: dict, step: int) -> dict:
    values = {f"{prefix}/{t}": v for t, v in metric_values(record, scalar_tag).items() if t not in ("step", "time")}
    return {"step": step, **values}


def test_offline_wandb_run_gets_the_scalars_and_the_config(offline_env, tmp_path):
    cfg = load_config(
        "tiny-grpo",
        ["logging.wandb.project=syncrl-test", "logging.wandb.mode=offline", "logging.wandb.tags=[unit]", "name=wb"],
    )
    run_dir = tmp_path / "wb-20260101-000000"
    log = MetricsLog(str(run_dir), progress_bar=False, total_steps=3, wandb=cfg.logging.wandb, config=cfg)
    assert "wandb" in sys.modules
    records = [full_record(step=i, reward=0.1 * i) for i in range(3)]
    for record in records:
        log.write(record, CONTROLLER)
    log.eval(3, EVAL, CONTROLLER)
    log.eval(3, BEAM, CONTROLLER)
    log.close()
    assert log.wandb_run is None

    (folder,) = run_folders(run_dir)
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert folder.name.endswith(f"-{run_id}")
    got_id, config, rows = offline_run(wandb_records(folder / f"run-{run_id}.wandb"))
    assert got_id == run_id
    assert {k: v for k, v in config.items() if k != "_wandb"} == cfg.model_dump(mode="json")
    train = logged(rows, "train")
    assert train == [expected("train", r, r["step"]) for r in records]  # the TensorBoard scalars, one row a step
    assert train[0]["train/reward_mean/default"] == records[0]["reward_mean/default"]
    assert logged(rows, "eval") == [expected("eval", EVAL, 3)]
    assert logged(rows, "eval")[0]["eval/accuracy/gsm8k"] == 0.5 and logged(rows, "eval")[0]["eval/pass_at_1"] == 0.25
    assert logged(rows, "eval_beam") == [expected("eval_beam", BEAM, 3)]
    run = next(r.run for r in wandb_records(folder / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, list(run.tags)) == ("syncrl-test", "wb-20260101-000000", ["unit"])

    # --resume from the checkpoint of step 2: the same wandb run, and step 3 logged again
    time.sleep(1.1)  # offline run folders are named by the second they start in
    log = MetricsLog(
        str(run_dir), progress_bar=False, total_steps=3, resume_step=2, wandb=cfg.logging.wandb, config=cfg
    )
    again = full_record(step=4, reward=0.5, sources=("gsm8k", "rm/helpful v2"))  # step 5, two sources
    redo = full_record(step=2, reward=0.9)
    log.write(redo, CONTROLLER)  # adds the times, as it does to every record
    log.write(again, CONTROLLER)
    log.close()
    first, second = run_folders(run_dir)
    assert first == folder and second.name.endswith(f"-{run_id}")
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id
    got_id, _, rows = offline_run(wandb_records(second / f"run-{run_id}.wandb"))
    assert got_id == run_id
    assert logged(rows, "train") == [expected("train", redo, 3), expected("train", again, 5)]
    assert logged(rows, "train")[1]["train/reward_mean/rm/helpful_v2"] == 0.25
    assert logged(rows, "train")[1]["train/samples/gsm8k"] == 1

    # a run from step 0 in the same folder is a new wandb run
    time.sleep(1.1)
    MetricsLog(str(run_dir), progress_bar=False, total_steps=3, wandb=cfg.logging.wandb, config=cfg).close()
    assert (run_dir / "wandb_run_id").read_text().strip() != run_id and len(run_folders(run_dir)) == 3


def test_wandb_dir_and_name(offline_env, tmp_path):
    cfg = load_config(
        None,
        [
            "logging.wandb.project=p",
            "logging.wandb.mode=offline",
            "logging.wandb.name=mine",
            f"logging.wandb.dir={tmp_path / 'elsewhere'}",
        ],
    )
    log = MetricsLog(str(tmp_path / "run"), progress_bar=False, total_steps=1, wandb=cfg.logging.wandb)  # no config
    log.close()
    (folder,) = sorted((tmp_path / "elsewhere" / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "run" / "wandb_run_id").read_text().strip()
    run = next(r.run for r in wandb_records(folder / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "run")
    assert run.display_name == "mine" and not (tmp_path / "run" / "wandb").exists()
    assert wandb_run_name("runs/tiny-grpo-20260101-000000", "tiny-grpo") == "tiny-grpo-20260101-000000"
    assert wandb_run_name("/tmp/out", "tiny-grpo") == "tiny-grpo-out" and wandb_run_name("/tmp/out", None) == "out"


def test_no_wandb_unless_configured(tmp_path):
    assert load_config("tiny-grpo").logging.wandb is None
    log = MetricsLog(str(tmp_path), progress_bar=False, total_steps=1)
    log.write(full_record(), CONTROLLER)
    log.close()
    assert log.wandb_run is None and not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_run_id").exists()
    script = (
        "import sys\nfrom launch.metrics import MetricsLog\n"
        f"MetricsLog({str(tmp_path / 'again')!r}, progress_bar=False, total_steps=1, tensorboard=True).close()\n"
        "assert 'wandb' not in sys.modules, 'wandb imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_wandb_config_is_validated():
    w = load_config(None, ["logging.wandb.project=p"]).logging.wandb
    assert (w.project, w.mode, w.name, w.entity, w.tags, w.dir) == ("p", "online", None, None, [], None)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["logging.wandb.project=p", "logging.wandb.mode=bogus"])
    assert "logging.wandb.mode" in str(err.value) and "bogus" in str(err.value)
    with pytest.raises(ConfigError, match=r"logging\.wandb\.project"):
        load_config(None, ["logging.wandb.mode=offline"])  # the project is required
    with pytest.raises(ConfigError, match=r"logging\.wandb\.projekt: unknown key"):
        load_config(None, ["logging.wandb.project=p", "logging.wandb.projekt=q"])
