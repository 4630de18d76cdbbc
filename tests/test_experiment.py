"""``syncrl experiment``: arms x seeds run on the tiny model, resumable, summarized from the runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from launch.config import ConfigError
from launch.experiment import (
    arm_configs,
    arm_run_dir,
    for_experiment,
    load_experiments,
    main,
    mean_pm_se,
    mean_se,
    merge,
    overrides_tree,
    summarize,
    transfer_configs,
    transfer_file,
)

SPEC = {
    "recipe": "tiny-grpo",
    "seeds": [0, 1],
    "transfer": {"eval": {"task": "add-1digit"}},  # the runs' own task: must repeat their evaluations
    "experiments": {
        "mini": {
            "title": "Mini",
            "claim": "none",
            "arms": {
                "grpo": {"algorithm": {"name": "grpo"}},
                "offline-dpo": {"algorithm": {"name": "dpo"}, "sync": {"interval": "inf"}},
            },
        }
    },
}
TINY = [
    "steps=2",
    "rollout.max_new_tokens=8",
    "rollout.cpu_kv_cache_gib=0.25",
    "logging.progress_bar=false",
    "eval.at_start=true",
    "eval.at_end=true",
    "eval.num_questions=5",
]


def test_merge_and_arm_configs():
    assert merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "e": 3}) == {
        "a": {"b": 1, "c": [2]},
        "d": 1,
        "e": 3,
    }
    configs = arm_configs(SPEC, "mini", [0, 3], {"learner": {"lr": 0.5}})
    assert list(configs) == [("grpo", 0), ("offline-dpo", 0), ("grpo", 3), ("offline-dpo", 3)]  # seed by seed
    dpo = configs["offline-dpo", 3]
    assert (dpo.algorithm.name, dpo.sync.interval, dpo.learner.lr) == ("dpo", float("inf"), 0.5)
    assert (dpo.seed, dpo.rollout.seed, dpo.learner.seed, dpo.data.task) == (3, 3, 3, "add-1digit")  # recipe kept
    with pytest.raises(ConfigError, match="unknown experiment"):
        arm_configs(SPEC, "other", [0])
    bad = merge(SPEC, {"experiments": {"mini": {"arms": {"grpo": {"algorithm": {"nme": "x"}}}}}})
    with pytest.raises(ConfigError, match="arm grpo"):
        arm_configs(bad, "mini", [0])
    # equal arms of two experiments share their run directory; different settings or seeds do not
    other = merge(
        SPEC,
        {
            "experiments": {
                "other": {
                    "title": "",
                    "claim": "",
                    "arms": {"grpo": {"algorithm": {"name": "grpo"}}, "dpo": {"algorithm": {"name": "dpo"}}},
                }
            }
        },
    )
    again = arm_configs(other, "other", [0, 3], {"learner": {"lr": 0.5}})
    out = Path("/out")
    assert arm_run_dir(out, "grpo", again["grpo", 3]) == arm_run_dir(out, "grpo", configs["grpo", 3])
    assert arm_run_dir(out, "grpo", again["grpo", 3]).parent != arm_run_dir(out, "dpo", again["dpo", 3]).parent
    assert arm_run_dir(out, "grpo", again["grpo", 0]).parent == arm_run_dir(out, "grpo", again["grpo", 3]).parent
    assert arm_run_dir(out, "grpo", again["grpo", 0]).name == "seed0"
    assert arm_run_dir(out, "grpo", arm_configs(other, "other", [0])["grpo", 0]) != arm_run_dir(
        out, "grpo", again["grpo", 0]
    )
    assert [c.eval.task for c in transfer_configs(SPEC)] == ["add-1digit"] and transfer_configs(
        {**SPEC, "transfer": None}
    ) == []
    with pytest.raises(ConfigError, match="transfer: needs eval.task"):
        transfer_configs({**SPEC, "transfer": {"eval": {"num_questions": 3}}})
    # a transfer result's name hashes only the settings off their defaults (a new option keeps it)
    (plain,) = transfer_configs(SPEC)
    (explicit,) = transfer_configs({**SPEC, "transfer": {"eval": {"task": "add-1digit", "beam_max_steps": 16}}})
    assert transfer_file(plain) == transfer_file(explicit)
    (other,) = transfer_configs({**SPEC, "transfer": {"eval": {"task": "add-1digit", "num_questions": 7}}})
    assert transfer_file(other) != transfer_file(plain)
    # ... so the transfer results kept in git (docs/results) are found by today's schema, which
    # has gained options with defaults since they were written
    kept = Path(__file__).parents[1] / "docs" / "results" / "runs" / "base"
    (g2d,) = transfer_configs(for_experiment(load_experiments("paper"), "g2d"))
    assert (kept / transfer_file(g2d)).is_file(), sorted(p.name for p in kept.iterdir())
    two = transfer_configs({**SPEC, "transfer": [{"eval": {"task": "chat"}}, {"eval": {"task": "add-2digit"}}]})
    assert [c.eval.task for c in two] == ["chat", "add-2digit"]
    with pytest.raises(ConfigError, match="transfer 1: needs eval.task"):
        transfer_configs({**SPEC, "transfer": [{"eval": {"task": "chat"}}, {"eval": {"num_questions": 3}}]})
    assert mean_se([1.0, 2.0, 3.0]) == (2.0, pytest.approx((1 / 3) ** 0.5))
    assert mean_pm_se([1.0, 2.0, 3.0]) == "2.000 +- 0.577" and mean_pm_se([0.25], "{:.2f}") == "0.25"


def test_summary_tabulates_the_value_model_of_arms_that_train_one(tmp_path):
    """Records alone (as docs/results keeps them): the value table lists the arms whose last
    evaluation has the value diagnostics, with their mean +- SE over seeds, and only those."""
    configs = arm_configs(SPEC, "mini", [0, 1])
    step = {"reward_mean": 0.5, "response_len_mean": 4.0, "time_gen_s": 1.0, "time_score_s": 0.0}
    step |= {"time_train_s": 1.0, "time_sync_s": 0.0, "pushed_after": 0}
    aucs = {0: (0.6, 0.8), 1: (0.7, 0.9)}
    for (arm, seed), cfg in configs.items():
        run = arm_run_dir(tmp_path, arm, cfg)
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({**step, "step": 1}) + "\n")
        last = {"step": 1, "accuracy": 0.5, "response_len_mean": 4.0}
        if arm == "grpo":
            s0, end = aucs[seed]
            last |= {"value_auc_s0": s0, "value_auc_last": end, "value_mse_last": 0.1 * seed, "value_mse_constant": 0.2}
        evals = [{"step": 0, "accuracy": 0.25, "response_len_mean": 4.0}, last]
        (run / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
        (run / "finished.json").write_text("{}")
    table = summarize(SPEC, "mini", configs, tmp_path, "cmd").split("Value model")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "AUC" not in line]
    assert rows == ["| grpo | 0.650 +- 0.050 | 0.850 +- 0.050 | 0.050 +- 0.050 | 0.200 +- 0.000 |"]


@pytest.mark.system
def test_every_shipped_experiment_validates():
    """launch/experiments/paper.yaml: every arm of every experiment is a valid configuration (with
    its own recipe where it names one), and arms differ in what they set."""
    spec = load_experiments("paper")
    for name in spec["experiments"]:
        own = for_experiment(spec, name)
        configs = arm_configs(own, name, own["seeds"])
        assert len(configs) == len(own["experiments"][name]["arms"]) * len(own["seeds"]), name
        dirs = {arm_run_dir(Path("out"), arm, cfg).parent.name.rsplit("-", 1)[1] for (arm, _), cfg in configs.items()}
        assert len(dirs) == len(own["experiments"][name]["arms"]), name  # no two arms the same run
        transfer_configs(own)


def test_experiment_runs_every_arm_and_seed_once(ray_cluster, tiny_llama, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    overrides = [f"model.path={tiny_llama}", *TINY]
    assert main(str(spec), "mini", None, str(tmp_path / "out"), overrides, summary_only=False) == 0
    printed = capsys.readouterr().out  # seed by seed: each round's transfer right after its runs
    assert [
        line.split(" seed ")[-1][0] if "transfer" not in line else "t"
        for line in printed.splitlines()
        if line.startswith("[experiment]")
    ] == ["0", "0", "t", "1", "1", "t"]
    assert "transfer: add-1digit on 3 models" in printed and "transfer: add-1digit on 2 models" in printed
    out = tmp_path / "out"
    configs = arm_configs(SPEC, "mini", [0, 1], overrides_tree(overrides))
    table = (out / "mini.md").read_text()
    starts, ends = [], {}
    header = next(line for line in table.splitlines() if line.startswith("| arm |")).split(" | ")
    for arm in ("grpo", "offline-dpo"):
        finals, pushes = [], []
        for seed in (0, 1):
            run = arm_run_dir(out, arm, configs[arm, seed])
            assert (run / "final" / "config.json").is_file()
            evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
            assert [e["step"] for e in evals] == [0, 2]
            finals.append(evals[-1]["accuracy"])
            starts.append(evals[0]["accuracy"])
            steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            pushes.append(sum(1 for r in steps if r["pushed_after"] > 0))
        ends[arm] = finals
        row = next(line for line in table.splitlines() if line.startswith(f"| {arm} |")).split(" | ")
        mean, se = mean_se(finals)
        assert row[1] == "2" and f"{mean:.3f} +- {se:.3f}" == row[3]
        # s=1 pushes after every step, offline never
        assert pushes == ([2, 2] if arm == "grpo" else [0, 0]), pushes
        assert row[header.index("pushes")] == mean_pm_se([float(p) for p in pushes], "{:.1f}")
    assert (out / "mini.png").stat().st_size > 0
    # transfer: every final model and the base model on the task's held-out questions, in one engine
    # start; here the training task with the run's settings, so it must give the runs' own evaluations
    transfer = [line for line in table.split("Transfer:")[1].splitlines() if line.startswith("| ")][1:]
    assert len(set(starts)) == 1 and transfer[0].split(" | ")[:3] == [
        "| base model",
        "1",
        f"{starts[0]:.3f}",
    ]  # one value: no SE
    for arm, line in zip(("grpo", "offline-dpo"), transfer[1:]):
        mean, se = mean_se(ends[arm])
        assert line.split(" | ")[:3] == [f"| {arm}", "2", f"{mean:.3f} +- {se:.3f}"]
    capsys.readouterr()
    main(str(spec), "mini", None, str(tmp_path / "out"), overrides, summary_only=False)  # nothing left to run
    again = capsys.readouterr().out
    assert again.count("done before, kept") == 4 and "[experiment] transfer" not in again
    # the records alone (what docs/results keeps in git, without the model folders) are a finished
    # experiment: nothing runs again and the table is the same; a lost transfer result is an error
    for run in out.glob("runs/*/seed*"):
        assert json.loads((run / "finished.json").read_text())["steps"] == 2
        shutil.rmtree(run / "final")
    main(str(spec), "mini", None, str(tmp_path / "out"), overrides, summary_only=False)
    kept = capsys.readouterr().out
    assert kept.count("done before, kept") == 4 and "[experiment] transfer" not in kept
    assert (out / "mini.md").read_text() == table
    lost = arm_run_dir(out, "grpo", configs["grpo", 1])
    (lost / transfer_file(transfer_configs(SPEC, overrides_tree(overrides))[0])).unlink()
    with pytest.raises(ConfigError, match=f"{lost}.*no final model"):
        main(str(spec), "mini", None, str(tmp_path / "out"), overrides, summary_only=False)
