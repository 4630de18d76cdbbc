"""Metrics export: every numeric field of a step record is a Ray gauge and a TensorBoard scalar,
and the shipped Grafana dashboard queries only gauges the code emits."""

from __future__ import annotations

import json
import math
import re
import socket
import tempfile
import time
import urllib.request
from types import SimpleNamespace

import pytest

import actors.controller as controller_module
from actors.controller import Controller, metric_name, metric_values, scalar_tag
from launch.metrics import GRAFANA_DASHBOARD, MetricsLog, install_grafana_dashboard, step_record
from rollout.records import Sample, TrainBatch

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
}
BEAM = {**EVAL, "beam": 2, "finished_answers_mean": 1.5}


def sample(
    prompt: str, reward: float, version: int, finish: str = "stop", source: str = "default", length: int = 3
) -> Sample:
    return Sample(
        prompt_id=prompt,
        prompt_ids=[1, 2],
        response_ids=[3] * length,
        logprobs=[-1.0] * length,
        finish_reason=finish,
        policy_version=version,
        reward=reward,
        reward_info={"timed_out": reward < 0},
        source=source,
    )


def full_record(step: int = 0, reward: float = 0.5, sync_interval: float = 2) -> dict:
    """A step record as the driver logs it (step_record, then MetricsLog.write's times and the restarts)."""
    state = SimpleNamespace(step=step, learner_version=step + 1, engine_version=step)
    samples = [sample("a", reward, step), sample("a", -1.0, step, "length"), sample("b", 1.0, step - 1)]
    batch = TrainBatch(sequences=[], counts={"groups": 2, "groups_uniform": 0})
    loss = {
        "loss": 0.3 + step,
        "entropy": 2.5,
        "kl": 0.01,
        "tokens": 96.0,
        "grad_norm": 1.25,
        "lr": 1e-3,
        "grpo_loss": 0.3,
        "clip_frac": 0.125,
        "drift_kl": 0.01,
        "drift_kl_s0": 1e-12,
        "drift_kl_s1": 0.01,
        "drift_ratio_mean": 1.0,
        "drift_ratio_max": 1.5,
        "drift_ess": 0.98,
        "drift_clip_frac": 0.02,
    }
    record = step_record(state, "main", sync_interval, samples, batch, loss, 1.0, 0.5, 2.0, 0.25)
    record.update(time=1_800_000_000.0 + step, time_wall_s=4.0, restarts=[], pushed_after=0)
    return record


def numeric_fields(record: dict) -> set[str]:
    """The metric names (per-source ``reward_mean/<source>``: ``reward_mean_<source>``) of the numeric fields."""
    return {metric_name(k) for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def test_every_numeric_field_of_a_step_record_is_a_gauge_value():
    record = full_record()
    values = metric_values(record)
    assert numeric_fields(record) <= set(values), numeric_fields(record) - set(values)
    assert {k for k in record if metric_name(k) not in values} == {
        "stage",
        "sample_versions",
        "prompts_hash",
        "restarts",
    }
    assert values["trained"] == 1.0 and values["batch_groups"] == 2.0 and values["kl"] == 0.01
    assert metric_values({"sync_interval": "inf"}) == {"sync_interval": 0.0}  # Ray drops a non-finite value
    assert metric_values({"loss": float("nan"), "kl": None, "pass@1": 1}) == {"pass_at_1": 1.0}


class FakeMetric:
    """Stands for ray.util.metrics.Gauge/Counter: records what is set."""

    made: dict[str, FakeMetric] = {}

    def __init__(self, name, description="", tag_keys=()):
        self.name, self.tag_keys, self.values = name, tag_keys, []
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name), name
        assert name not in FakeMetric.made, f"{name} made twice"
        FakeMetric.made[name] = self

    def set(self, value, tags=None):
        assert isinstance(value, float) and math.isfinite(value)
        self.values.append((value, tags))

    inc = set


@pytest.fixture
def fake_metrics(monkeypatch):
    import ray.util.metrics

    FakeMetric.made = {}
    monkeypatch.setattr(ray.util.metrics, "Gauge", FakeMetric)
    monkeypatch.setattr(ray.util.metrics, "Counter", FakeMetric)
    return FakeMetric.made


def test_the_controller_sets_a_gauge_per_numeric_field_each_step(fake_metrics):
    controller = Controller(2, run_name="r1")
    record = full_record()
    controller.report(record)
    set_now = {name for name, g in fake_metrics.items() if g.values}
    assert {f"syncrl_{k}" for k in numeric_fields(record)} <= set_now
    # the names the README shows
    assert {"syncrl_reward_mean", "syncrl_loss", "syncrl_sync_interval"} <= set_now
    assert all(tags == {"run": "r1"} for g in fake_metrics.values() for _, tags in g.values)
    assert fake_metrics["syncrl_loss"].values[-1][0] == record["loss"]

    controller.report_eval({"step": 1, **EVAL})
    controller.report_eval({"step": 1, **BEAM})
    assert fake_metrics["syncrl_eval_accuracy"].values[-1][0] == 0.25
    assert fake_metrics["syncrl_eval_pass_at_1"].values[-1][0] == 0.25
    assert fake_metrics["syncrl_eval_beam_finished_answers_mean"].values[-1][0] == 1.5
    evals = {name: len(g.values) for name, g in fake_metrics.items() if name.startswith("syncrl_eval_")}
    controller.report(full_record(step=1, sync_interval=math.inf))
    assert fake_metrics["syncrl_sync_interval"].values[-1][0] == 0.0
    assert fake_metrics["syncrl_step"].values[-1][0] == 2.0
    # the eval gauges are set again at every step (a gauge not set for ~60 s drops out of a scrape)
    assert all(len(fake_metrics[name].values) == n + 1 for name, n in evals.items())


def test_no_gauges_without_ray_metrics(fake_metrics):
    controller = Controller(2, run_name="r1", export_metrics=False)
    controller.report(full_record())
    controller.report_eval({"step": 1, **EVAL})
    assert fake_metrics == {}


def accumulate(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc, {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_the_records(tmp_path):
    controller = SimpleNamespace(
        report=SimpleNamespace(remote=lambda r: None), report_eval=SimpleNamespace(remote=lambda r: None)
    )
    log = MetricsLog(str(tmp_path), progress_bar=False, total_steps=3, tensorboard=True)
    records = [full_record(step=i, reward=0.1 * i) for i in range(3)]
    for record in records:
        log.write(record, controller)
    log.eval(3, EVAL, controller)
    log.eval(3, BEAM, controller)
    log.close()
    _, scalars = accumulate(tmp_path / "tensorboard")
    for record in records:
        for key, value in metric_values(record, scalar_tag).items():
            if key not in ("step", "time"):  # the event's own step and wall time
                assert scalars[f"train/{key}"][record["step"]] == pytest.approx(value, rel=1e-6), key
    assert set(scalars["train/reward_mean"]) == {1, 2, 3}
    assert scalars["eval/accuracy"] == {3: 0.25} and scalars["eval/pass_at_1"] == {3: 0.25}
    assert scalars["eval_beam/accuracy"] == {3: 0.25} and scalars["eval_beam/beam"] == {3: 2.0}

    # --resume from the checkpoint of step 2: step 3 is written again, and TensorBoard shows the new value
    time.sleep(1.1)  # event files are named by the second they start in
    log = MetricsLog(str(tmp_path), progress_bar=False, total_steps=3, resume_step=2, tensorboard=True)
    log.write(full_record(step=2, reward=0.9), controller)
    log.close()
    _, scalars = accumulate(tmp_path / "tensorboard")
    assert scalars["train/reward_mean"][3] == pytest.approx(full_record(step=2, reward=0.9)["reward_mean"])
    assert scalars["train/reward_mean"][2] == pytest.approx(records[1]["reward_mean"])
    assert "eval/accuracy" not in scalars or 3 not in scalars["eval/accuracy"]  # the eval at step 3 went too


def test_no_tensorboard_folder_when_off(tmp_path):
    MetricsLog(str(tmp_path), progress_bar=False, total_steps=3).close()
    assert not (tmp_path / "tensorboard").exists()


def mixed_record() -> dict:
    """A step of samples from two reward routes, one named with characters Prometheus and
    TensorBoard do not take."""
    state = SimpleNamespace(step=4, learner_version=5, engine_version=4)
    samples = [
        sample("a", 1.0, 4, source="gsm8k", length=2),
        sample("a", 0.0, 4, source="gsm8k", length=4),
        sample("b", 0.25, 4, source="rm/helpful v2", length=6),
    ]
    return step_record(state, "main", 1, samples, TrainBatch(sequences=[]), {"loss": 0.5, "tokens": 8.0}, 1, 1, 1, 1)


def test_step_record_has_per_source_metrics():
    record = mixed_record()
    assert (
        record["reward_mean/gsm8k"] == 0.5 and record["response_len_mean/gsm8k"] == 3.0 and record["samples/gsm8k"] == 2
    )
    assert record["reward_mean/rm/helpful v2"] == 0.25 and record["response_len_mean/rm/helpful v2"] == 6.0
    assert record["samples/rm/helpful v2"] == 1 and record["reward_mean"] == pytest.approx(1.25 / 3)
    assert not any(k.endswith("/default") for k in record)  # only the sources present
    assert json.loads(json.dumps(record))["samples/gsm8k"] == 2  # a metrics.jsonl line
    values = metric_values(record)
    assert values["reward_mean_gsm8k"] == 0.5 and values["samples_rm_helpful_v2"] == 1.0
    assert all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) for k in values)
    tags = metric_values(record, scalar_tag)
    assert tags["reward_mean/gsm8k"] == 0.5 and tags["response_len_mean/rm/helpful_v2"] == 6.0
    assert metric_name("reward_mean/gsm8k") == "reward_mean_gsm8k" and scalar_tag("pass@1") == "pass_at_1"


def test_per_source_gauges(fake_metrics):
    controller = Controller(1, run_name="r1")
    controller.report(mixed_record())
    assert fake_metrics["syncrl_reward_mean_gsm8k"].values[-1] == (0.5, {"run": "r1"})
    assert fake_metrics["syncrl_response_len_mean_rm_helpful_v2"].values[-1][0] == 6.0
    assert fake_metrics["syncrl_samples_rm_helpful_v2"].values[-1][0] == 1.0
    eval_result = {"step": 4, **EVAL, "accuracy/gsm8k": 0.5, "questions/rm/helpful v2": 3}
    controller.report_eval(eval_result)
    assert fake_metrics["syncrl_eval_accuracy_gsm8k"].values[-1][0] == 0.5
    assert fake_metrics["syncrl_eval_questions_rm_helpful_v2"].values[-1][0] == 3.0


def test_per_source_tensorboard_tags(tmp_path):
    controller = SimpleNamespace(
        report=SimpleNamespace(remote=lambda r: None), report_eval=SimpleNamespace(remote=lambda r: None)
    )
    log = MetricsLog(str(tmp_path), progress_bar=False, total_steps=5, resume_step=4, tensorboard=True)
    log.write(mixed_record(), controller)
    log.eval(5, {**EVAL, "accuracy/gsm8k": 0.5, "questions/gsm8k": 2}, controller)
    log.close()
    _, scalars = accumulate(tmp_path / "tensorboard")
    assert scalars["train/reward_mean/gsm8k"] == {5: 0.5} and scalars["train/samples/gsm8k"] == {5: 2.0}
    assert scalars["train/reward_mean/rm/helpful_v2"] == {5: 0.25}
    assert scalars["eval/accuracy/gsm8k"] == {5: 0.5} and scalars["eval/questions/gsm8k"] == {5: 2.0}
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["reward_mean/rm/helpful v2"] == 0.25


def emitted_metric_names() -> set[str]:
    """The Prometheus names the code emits for a run like the test records (Ray prefixes ray_)."""
    names = {f"ray_syncrl_{k}" for k in metric_values(full_record())}
    names |= {f"ray_syncrl_eval_{k}" for k in metric_values({"step": 1, **EVAL})}
    names |= {f"ray_syncrl_eval_beam_{k}" for k in metric_values({"step": 1, **BEAM})}
    names |= {f"ray_syncrl_{k}" for k in controller_module.GAUGES}
    return names | {"ray_syncrl_restarts_total"}  # the Counter syncrl_restarts


DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_grafana_dashboard_has_what_grafana_needs_and_queries_emitted_gauges():
    """The structure Grafana needs (launch/grafana/check_schema.sh checks it against Grafana's own
    schema, with npm; docs/OBSERVABILITY.md ran every query against Prometheus during a run)."""
    d = json.loads(GRAFANA_DASHBOARD.read_text())
    assert d["uid"] and len(d["uid"]) <= 40 and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    used, titles = set(), set()
    for p in d["panels"]:
        assert {"id", "type", "title", "gridPos"} <= set(p), p.get("title")
        grid = p["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"} and grid["x"] + grid["w"] <= 24
        if p["type"] == "row":
            continue
        titles.add(p["title"])
        assert p["datasource"] == DATASOURCE and p["targets"], p["title"]  # the variable, as Ray's dashboards do
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE
            assert t["expr"].count("(") == t["expr"].count(")") and t["expr"].count("{") == t["expr"].count("}")
            assert 'run=~"$run"' in t["expr"], t["expr"]
            used |= set(re.findall(r"ray_syncrl_\w+", t["expr"]))
    for v in variables.values():
        if v["type"] == "query":
            used |= set(re.findall(r"ray_syncrl_\w+", v["query"]["query"]))
    assert used <= emitted_metric_names(), used - emitted_metric_names()
    assert {
        "ray_syncrl_reward_mean",
        "ray_syncrl_loss",
        "ray_syncrl_kl",
        "ray_syncrl_staleness_mean",
        "ray_syncrl_sync_interval",
        "ray_syncrl_learner_version",
        "ray_syncrl_engine_version",
        "ray_syncrl_time_train_s",
        "ray_syncrl_tokens_generated",
        "ray_syncrl_restarts_total",
    } <= used


def test_install_grafana_dashboard_follows_rays_provisioning(tmp_path):
    session = tmp_path / "session_x"
    assert install_grafana_dashboard(str(session)) is None  # no Ray dashboard: no Grafana provisioning
    provisioning = session / "metrics" / "grafana" / "provisioning" / "dashboards"
    provisioning.mkdir(parents=True)
    folder = tmp_path / "elsewhere"  # RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR moves it: default.yml says where
    (provisioning / "default.yml").write_text(
        "apiVersion: 1\nproviders:\n  - name: Ray\n    folder: Ray\n    type: file\n"
        f"    options:\n      path: {folder}\n"
    )
    where = install_grafana_dashboard(str(session))
    assert where == folder / "syncrl_grafana_dashboard.json"
    assert json.loads(where.read_text())["uid"] == json.loads(GRAFANA_DASHBOARD.read_text())["uid"]
    assert install_grafana_dashboard(str(session)) == where  # again at the next run: overwritten


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.system
def test_a_real_scrape_has_every_numeric_field():
    """The Controller in a Ray cluster: each numeric field shows up on the metrics export port."""
    import ray

    from actors.controller import ControllerActor

    started = not ray.is_initialized()  # else the session's cluster (the ray_cluster fixture) serves
    if started:
        temp_dir = tempfile.mkdtemp(prefix="syncrl-ray-", dir="/tmp")  # short: Ray's socket paths are limited
        ray.init(
            address="local", num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, _metrics_export_port=free_port()
        )
    port = ray._private.worker.global_worker.node.metrics_export_port
    controller = ControllerActor.remote(2, "scrape-test")
    try:
        record = full_record()
        want = {f"ray_syncrl_{k}" for k in metric_values(record)} | {
            "ray_syncrl_eval_accuracy",
            "ray_syncrl_eval_pass_at_1",
        }
        ray.get(controller.report_eval.remote({"step": 0, **EVAL}))
        seen: set[str] = set()
        for _ in range(40):
            ray.get(controller.report.remote(record))
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            seen = {m.group(1) for m in re.finditer(r'^(ray_syncrl_\w+)\{[^}]*run="scrape-test"', text, re.M)}
            if want <= seen:
                break
            time.sleep(2)
        assert want <= seen, want - seen
    finally:
        ray.kill(controller)
        if started:
            ray.shutdown()
