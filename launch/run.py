"""``syncrl train``: the run directory, Ray, and the driver (``launch.train``) in one command,
the one entry point of a run (the tests take it too).

This module imports only Ray and the configuration: the driver's own modules (torch,
transformers, the actors') load in a thread while the local Ray cluster starts, with the task,
the tokenizer and the data, instead of before it (the imports leave the start-up's critical
path, which runs Ray -> the engines: ``python bench/startup.py``, docs/PERFORMANCE.md section 7).
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launch.checkpoint import RunState, load_state
from launch.cluster import ray_session
from launch.config import ConfigError, SyncRLConfig, dump_config, load_config
from rollout.phases import Phases, imports_without_gc, process_start


def run(
    cfg: SyncRLConfig | None, output: str | None = None, resume: str | None = None, dashboard: bool = True, data=None
) -> Path:
    """Make (or reopen) the run directory, connect to Ray, train (``dashboard`` False: a local
    cluster starts without its dashboard, whatever logging.dashboard says; ``data``: the run's
    data as ``rollout.data.read_run_data`` read it, None: read here)."""
    phases = Phases(process_start())
    phases.mark("command (Python, imports, config)")
    if resume:
        run_dir = Path(resume)
        saved = load_config(run_dir / "config.yaml")
        if cfg is not None and cfg.model_dump() != saved.model_dump():
            raise ConfigError(
                f"--resume {resume}: the run's config.yaml differs from the recipe given; resume without a recipe"
            )
        cfg, state = saved, load_state(str(run_dir))
    else:
        run_dir = Path(output or cfg.logging.output_dir.format(name=cfg.name, time=time.strftime("%Y%m%d-%H%M%S")))
        if (run_dir / "metrics.jsonl").exists():
            raise ConfigError(
                f"run directory {run_dir} already holds a run: use --resume {run_dir} or another --output"
            )
        state = None
    written = cfg
    if not dashboard:
        cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"dashboard": False})})
    with ThreadPoolExecutor(1) as pool:
        prepared = pool.submit(prepare_driver, cfg, str(run_dir), state, phases, data)
        began = time.time()
        with ray_session(cfg):  # connected (or failed to) before anything is written
            phases.add("Ray", began, time.time() - began)
            driver = prepared.result()  # bad data fails here, before anything is written
            fresh = state is None and not run_dir.exists()
            if state is None:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "config.yaml").write_text(dump_config(written))
            try:
                driver.__enter__()
            except BaseException:
                if fresh:  # the actors did not start (a reward model that does not load, ...): no run to leave
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            try:
                driver.run()
            finally:
                driver.__exit__()
    return run_dir


def prepare_driver(cfg: SyncRLConfig, run_dir: str, state: RunState | None, phases: Phases, data=None):
    """The driver's modules, then the driver with its task, tokenizer and data (in the thread)."""
    began = time.time()
    with imports_without_gc():
        from launch.train import Driver

    phases.add("driver's imports (torch, transformers, the actors')", began, time.time() - began)
    return Driver(cfg, run_dir, state, phases, data)
