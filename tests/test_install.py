"""The GPU install resolves: ``pip install --dry-run`` of the ``gpu`` extra against the package
index (no GPU needed), with the versions the code is tested against and no source build that
needs torch (flash-attn's sdist is a best-effort step of install.sh, not part of the extra)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source distributions that build without torch (pure Python, or DeepSpeed without its ops),
# which the CPU install builds too.
KNOWN_SDISTS = {"deepspeed", "cellpylib", "pycosat", "zss"}


def test_the_gpu_extra_resolves_to_the_tested_versions(tmp_path):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{ROOT}[gpu]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    assert versions["vllm"] == "0.32.0"
    assert versions["torch"].split("+")[0] == "2.13.0"  # vLLM's pin (a CPU machine's index may serve the +cpu build)
    assert "flash-attn" not in versions and "flash_attn" not in versions
    sdists = {i["metadata"]["name"].lower() for i in installs if not i["download_info"]["url"].endswith(".whl")}
    assert sdists - {"syncrl"} <= KNOWN_SDISTS, sdists
