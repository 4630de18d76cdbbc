"""Run state, checkpoints and the final model.

A checkpoint (``RUN_DIR/checkpoints/step_N``) holds every learner rank's DeepSpeed state (model,
optimizer, RNG), the driver's ``RunState`` (step, stage, data position, policy versions, live
settings) and, when the engines lag the learner (s > 1), the weights the engines hold, so a
resumed run regenerates exactly what the uninterrupted one would have. It is written to a
temporary folder and renamed into place: a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import ray

from actors.weight_sync import AutoInterval, WeightSync
from launch.config import SyncRLConfig, dump_config
from rollout.records import interval_text, parse_interval

ENGINE_WEIGHTS = "engine_weights.safetensors"


@dataclasses.dataclass
class RunState:
    step: int = 0  # learner steps done, all stages
    stage_index: int = 0
    step_in_stage: int = 0
    learner_version: int = 0
    engine_version: int = 0  # version of the weights the rollout engines hold
    steps_since_sync: int = 0
    sync_interval: float | str = 1
    data_position: int = 0  # prompts (or offline groups) consumed
    auto_sync: AutoInterval = dataclasses.field(default_factory=AutoInterval)  # sync.interval: auto's estimates
    live: dict = dataclasses.field(default_factory=dict)  # the learning knobs set while the run went (syncrl ctl set)

    def begin_stage(self, index: int, interval: float, controller) -> None:
        self.stage_index, self.step_in_stage, self.sync_interval = index, 0, interval
        ray.get(controller.set_sync_interval.remote(interval))

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["sync_interval"] = interval_text(self.sync_interval)
        return json.dumps(fields, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunState:
        fields = json.loads(text)
        fields["sync_interval"] = parse_interval(fields["sync_interval"])
        fields["auto_sync"] = AutoInterval(**fields.get("auto_sync", {}))
        return cls(**fields)


def checkpoints(run_dir: str) -> list[Path]:
    return sorted(Path(run_dir, "checkpoints").glob("step_*"), key=lambda p: int(p.name.removeprefix("step_")))


def save_checkpoint(run_dir: str, cfg: SyncRLConfig, state: RunState, learners, sync: WeightSync) -> Path:
    final = Path(run_dir, "checkpoints", f"step_{state.step:06d}")
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    learners.on_all("save_checkpoint", str(tmp))
    sync.save_engine_weights(tmp / ENGINE_WEIGHTS)
    (tmp / "run_state.json").write_text(state.to_json())
    (tmp / "config.yaml").write_text(dump_config(cfg))
    os.replace(tmp, final)
    for old in checkpoints(run_dir)[: -cfg.checkpoint.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load_state(run_dir: str) -> RunState:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"--resume {run_dir}: no checkpoint in {run_dir}/checkpoints")
    return RunState.from_json((ckpt / "run_state.json").read_text())


def restore(run_dir: str, state: RunState, learners, sync: WeightSync) -> None:
    """Bring the actors of a resumed run to the checkpoint: learner state, then engine weights."""
    if state.step == 0:
        return
    ckpt = latest_checkpoint(run_dir)
    learners.on_all("load_checkpoint", str(ckpt))
    sync.restore_engine_weights(ckpt / ENGINE_WEIGHTS)


def save_final(run_dir: str, cfg: SyncRLConfig, state: RunState, learners, model_path: str) -> Path | None:
    """The trained policy as a Hugging Face folder, with the base model's tokenizer."""
    if not cfg.checkpoint.save_final_hf:
        return None
    out = Path(run_dir, "final")
    learners.on_all("save_hf", str(out))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.save_pretrained(out)
    if (out / "value").is_dir():  # the value model (OREO): a folder of its own, loadable alone
        tokenizer.save_pretrained(out / "value")
    (out / "syncrl_state.json").write_text(state.to_json())
    return out
