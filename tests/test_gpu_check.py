"""bench/gpu_check.sh, the learner's checks for a GPU machine (torch, transformers, deepspeed; no
Ray, no vLLM), run here on the CPU in fp32 on a tiny model: every check passes, one PASS line each,
and a failing check makes the script fail."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[1]
CHECKS = ["load", "packed = padded log-probs", "export memory", "train step"]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_gpu_check_passes_on_the_cpu():
    done = gpu_check("--device", "cpu")
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = [f"PASS sdpa zero{z} float32 {c}" for z in (0, 3) for c in CHECKS] + [
        "PASS sdpa zero3 float32 log-probs = zero0's",
        "PASS no ray or vllm imported",
    ]
    assert sorted(line.split(":")[0] for line in lines) == sorted(expected), lines
    assert done.stdout.rstrip().splitlines()[-1].startswith("ALL PASSED")


def test_gpu_check_fails_when_a_check_fails(tmp_path):
    """A model folder that does not load: each configuration's check fails, the others still run,
    and the script exits 1; a missing wheel folder is an error before anything runs."""
    done = gpu_check("--device", "cpu", "--model", str(tmp_path))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL sdpa zero0:" in done.stdout and "FAIL sdpa zero3:" in done.stdout
    assert "PASS no ray or vllm imported" in done.stdout and "FAILED: sdpa zero0, sdpa zero3" in done.stdout
    missing = gpu_check("--wheels", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
