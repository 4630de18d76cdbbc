"""A local `syncrl train` (no cluster to attach to) starts Ray with its dashboard on 127.0.0.1,
prints its address once, and that address serves the dashboard's API with the run's actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[1]


def actor_classes(url: str) -> set[str]:
    """The classes of the live actors the dashboard's state API lists (signed in with the Ray
    token, as `ray get-auth-token` prints it, when token authentication is on)."""
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token.is_file() else {}
    request = urllib.request.Request(f"{url}/api/v0/actors?limit=100", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        actors = json.loads(answer.read())["data"]["result"]["result"]
    return {a["class_name"] for a in actors if a["state"] == "ALIVE"}


def test_local_train_prints_a_dashboard_that_lists_the_runs_actors(tiny_llama, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(Path("/tmp", f"syncrl-dash-{os.getpid()}")), PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "launch",
        "train",
        "tiny-grpo",
        "--output",
        str(tmp_path / "run"),
        "--set",
        f"model.path={tiny_llama}",
        "--set",
        "steps=3",
        "--set",
        "data.prompts_per_step=2",
        "--set",
        "rollout.max_new_tokens=8",
        "--set",
        "rollout.cpu_kv_cache_gib=0.25",
        "--set",
        "logging.progress_bar=false",
    ]
    run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True)
    reader.start()
    try:
        deadline, seen = time.monotonic() + 600, set()
        while time.monotonic() < deadline and run.poll() is None:
            urls = [line.split("Ray dashboard: ", 1)[1].split()[0] for line in list(lines) if "Ray dashboard: " in line]
            if urls:
                try:
                    seen = actor_classes(urls[0])
                except OSError:
                    seen = set()
                if {"LearnerWorker", "RolloutWorker", "Controller"} <= seen:
                    break
            time.sleep(1)
        assert run.wait(timeout=600) == 0, "".join(lines)[-4000:]
    finally:
        run.kill()
    reader.join(timeout=10)
    printed = [line for line in lines if "Ray dashboard: " in line]
    assert len(printed) == 1 and printed[0].split("Ray dashboard: ")[1].startswith("http://127.0.0.1:"), printed
    assert {"LearnerWorker", "RolloutWorker", "Controller"} <= seen, seen


def test_logging_dashboard_false_starts_ray_without_it(tmp_path):
    """`--no-dashboard` (logging.dashboard=false): the local cluster has no dashboard, nothing printed."""
    script = (
        "from launch.cluster import connect_ray\n"
        "from launch.config import load_config\n"
        "import ray\n"
        "assert connect_ray(load_config('tiny-grpo', ['logging.dashboard=false']))\n"
        "print('url=' + repr(ray._private.worker.global_worker.node.webui_url))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(Path("/tmp", f"syncrl-nodash-{os.getpid()}")), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray dashboard: " not in done.stdout
    assert "url=''" in done.stdout, done.stdout  # with the dashboard: url='127.0.0.1:8265'
