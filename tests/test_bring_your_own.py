"""Users' own data and rewards, end to end on a real local Ray cluster with vLLM engines and
DeepSpeed ranks: a verl-layout parquet file trains GRPO with math-verify and a Python reward
function routed by data_source; a TRL-layout preference data set saved with save_to_disk trains
DPO; a reward model trained by syncrl (tiny-rm) scores as its trainer does; a reward model trained
on judge-labelled chat pairs then rewards the chat half of a GRPO run on chat + math (math_verify
for the math half), an experiment arm whose transfer judges its model against the base model as
`syncrl eval --task chat` does."""

from __future__ import annotations

import json

import pytest

from tests.test_train import read_metrics, tiny_config

pytestmark = pytest.mark.system
datasets = pytest.importorskip("datasets")

LENGTH_REWARD = """
def shortness(prompts, completions, source, difficulty, **columns):
    assert set(source) == {"chat"}, source  # the router sends this function only its own source
    return [d / (1 + len(c)) for c, d in zip(completions, difficulty)]
"""


def test_verl_parquet_grpo_with_math_verify_and_a_python_function(ray_cluster, tiny_llama, tmp_path):
    from launch.run import run

    rows = []
    for i in range(8):
        a, b = i, i + 1
        rows.append(
            {
                "data_source": "math",
                "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "difficulty": 1,
            }
        )
        rows.append(
            {
                "data_source": "chat",
                "prompt": [{"role": "user", "content": f"Say {a}."}],
                "reward_model": {"style": "model", "ground_truth": ""},
                "difficulty": 2 + i,
            }
        )
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    (tmp_path / "my_reward.py").write_text(LENGTH_REWARD)
    cfg = tiny_config(
        "tiny-grpo",
        tiny_llama,
        f"data.path={path}",
        "data.source_key=data_source",
        "data.answer_key=reward_model.ground_truth",
        "data.prompts_per_step=8",
        "steps=2",
        "reward.routes={math: {kind: math_verify}, chat: {kind: python, function: "
        f"'{tmp_path}/my_reward.py:shortness'}}}}",
        "reward.default=math",
    )
    run(cfg, str(tmp_path / "run"))
    metrics = read_metrics(tmp_path / "run")
    assert all(r["trained"] for r in metrics)
    for r in metrics:  # both routes scored their own prompts
        assert r["samples/math"] + r["samples/chat"] == 32 and r["samples/chat"] > 0 and r["samples/math"] > 0
        assert 0 < r["reward_mean/chat"] <= 9 and 0 <= r["reward_mean/math"] <= 1


def test_trl_preference_data_saved_to_disk_trains_dpo(ray_cluster, tiny_llama, tmp_path):
    from launch.run import run

    pairs = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 2?"}],
            "chosen": [{"role": "assistant", "content": f"The answer is \\boxed{{{i + 2}}}."}],
            "rejected": [{"role": "assistant", "content": f"{i + 3}"}],
        }
        for i in range(12)
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(pairs)}).save_to_disk(str(tmp_path / "prefs"))
    cfg = tiny_config(
        "tiny-dpo",
        tiny_llama,
        f"data.path={tmp_path / 'prefs'}",
        "sync.interval=inf",
        "steps=5",
        "data.prompts_per_step=6",
        "learner.lr=1e-3",
    )
    run(cfg, str(tmp_path / "run"))
    rows = read_metrics(tmp_path / "run")
    assert all(r["trained"] and r["batch_pairs"] == 6 and r["sample_versions"] == [-1] for r in rows)
    assert rows[-1]["dpo_margin"] > rows[0]["dpo_margin"] + 0.1


def test_tiny_rm_trains_and_scores_as_its_trainer(ray_cluster, tiny_llama, tmp_path):
    """tiny-rm's held-out pair accuracy rises from chance; final/ is a plain one-label
    sequence classifier whose reward-worker scores equal the trainer's forward on the same texts
    (a reward model rewarding a run: test_chat_reward_model_rewards_mixed_grpo_then_judged_eval)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from launch.config import load_config
    from launch.run import run
    from rewards.reward_model import RewardModelScorer, reward_token_ids
    from rollout.data import groups_of, read_data, resolve_data_path

    cfg = load_config(
        "tiny-rm",
        [f"model.path={tiny_llama}", "logging.progress_bar=false", "steps=12", "algorithm.heldout_share=0.25"],
    )
    run(cfg, str(tmp_path / "rm"))
    workers = json.loads((tmp_path / "rm" / "placement.json").read_text())["workers"]
    assert sorted(workers) == ["learner-0"]  # pairs in a file, no evaluation: no engine or reward worker started
    rows = read_metrics(tmp_path / "rm")
    heldout = [r["heldout_accuracy"] for r in rows if r.get("heldout_accuracy") is not None]
    assert rows[0]["rm_accuracy"] < 0.8 and heldout[-1] >= 0.9 and rows[-1]["rm_margin"] > rows[0]["rm_margin"] + 1
    final = str(tmp_path / "rm" / "final")
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert model.config.num_labels == 1
    tokenizer = AutoTokenizer.from_pretrained(final)
    samples = [s for g in groups_of(read_data(resolve_data_path(cfg.data.path)), tokenizer)[:6] for s in g]
    with torch.no_grad():  # the trainer's forward: the texts as reward_model's rows, one at a time
        trainer = [
            model(torch.tensor([reward_token_ids(tokenizer, s.messages, s.response_text)])).logits[0, 0].item()
            for s in samples
        ]
    scorer = RewardModelScorer(final, batch_size=4)
    assert [r.reward for r in scorer.score(samples)] == pytest.approx(trainer, abs=1e-4)
    assert all(trainer[i] > trainer[i + 1] for i in range(0, len(trainer), 2))  # chosen above rejected


def test_chat_reward_model_rewards_mixed_grpo_then_judged_eval(ray_cluster, tiny_llama, tmp_path, capsys):
    """syncrl chat-pairs labels the tiny model's chat answers with the judge (noisily); tiny-rm
    trains on them; rm-check measures it against the judge; a GRPO run on chat + add-1digit is
    rewarded by source (the reward model for chat, math_verify for math); syncrl eval --task chat
    judges the trained model against the base model's greedy answers, with the reward model."""
    from launch.cli import main
    from launch.config import load_config
    from launch.run import run

    engine = ["--set", "rollout.cpu_kv_cache_gib=0.25"]
    pairs = tmp_path / "pairs"
    args = ["--prompts", "8", "--heldout-prompts", "4", "--samples", "4", "--max-new-tokens", "16"]
    assert main(["chat-pairs", tiny_llama, "--out", str(pairs), *args, *engine]) == 0
    summary = json.loads((pairs / "summary.json").read_text())
    assert summary["train"]["pairs"] > 8 and summary["train"]["label_temperature"] == 0.1
    records = [json.loads(line) for line in (pairs / "pairs.jsonl").read_text().splitlines()]
    assert all(r["source"] == "chat" and r["id"].startswith("chat/rm/") and "judge_chosen" in r for r in records)

    rm = load_config(
        "tiny-rm",
        [f"model.path={tiny_llama}", f"data.path={pairs / 'pairs.jsonl'}", "steps=3", "logging.progress_bar=false"],
    )
    run(rm, str(tmp_path / "rm"))
    final = str(tmp_path / "rm" / "final")
    assert main(["rm-check", final, "--pairs", str(pairs / "heldout.jsonl")]) == 0
    assert "reward model accuracy vs the judge:" in capsys.readouterr().out

    # the GRPO run as an experiment arm, whose transfer judges it (and the base model) on chat
    import yaml

    from launch.experiment import arm_configs, arm_run_dir, for_experiment, load_experiments, overrides_tree

    routes = f"reward.routes={{math: {{kind: math_verify}}, chat: {{kind: reward_model, model_path: {final}}}}}"
    spec = {
        "recipe": "tiny-grpo",
        "seeds": [0],
        "transfer": {"eval": {"task": "chat", "num_questions": 6, "max_new_tokens": 16}},
        "experiments": {"mixed": {"title": "Chat and math", "claim": "none", "arms": {"grpo": {}}}},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    overrides = [f"model.path={tiny_llama}", "data.task=chat+add-1digit", "steps=2", routes, "reward.default=math"]
    overrides += ["data.prompts_per_step=4", "rollout.max_new_tokens=12", "learner.lr=5e-3", "eval.at_end=true"]
    overrides += ["rollout.cpu_kv_cache_gib=0.25", "logging.progress_bar=false", "eval.num_questions=4"]
    experiment = [str(tmp_path / "spec.yaml"), "mixed", "--out", str(tmp_path / "exp")]
    assert main(["experiment", *experiment, *(a for o in overrides for a in ("--set", o))]) == 0
    spec_seen = for_experiment(load_experiments(str(tmp_path / "spec.yaml")), "mixed")
    grpo = arm_run_dir(
        tmp_path / "exp", "grpo", arm_configs(spec_seen, "mixed", [0], overrides_tree(overrides))["grpo", 0]
    )
    rows = read_metrics(grpo)
    assert all(r["trained"] and r.get("samples/chat", 0) + r.get("samples/math", 0) == 16 for r in rows)
    assert sum(r.get("samples/chat", 0) for r in rows) and sum(r.get("samples/math", 0) for r in rows)  # both routes
    assert all(r["reward_mean/chat"] == r["reward_mean/chat"] for r in rows if "reward_mean/chat" in r)  # not NaN
    assert all(0 <= r["reward_mean/math"] <= 1 for r in rows if "reward_mean/math" in r)
    capsys.readouterr()

    out = tmp_path / "eval.json"
    models = [tiny_llama, str(grpo / "final"), "--task", "chat", "--reward-model", final]
    assert main(["eval", *models, "--num-questions", "6", "--max-new-tokens", "16", "--output", str(out), *engine]) == 0
    printed = capsys.readouterr().out
    assert "win_rate" in printed and "lc_win_rate" in printed and "rm_mean" in printed
    base, trained = json.loads(out.read_text()).values()
    assert base["win_rate"] == 0.5 and base["lc_win_rate"] == pytest.approx(0.5, abs=1e-6)  # itself
    assert base["questions"] == trained["questions"] == 6 and 0 <= trained["win_rate"] <= 1
    for key in ("judge_mean", "rm_mean", "response_len_mean", "truncated_rate", "lc_win_rate_stderr"):
        assert trained[key] == trained[key], key
    # the experiment's transfer judged the same greedy answers: the same figures, in its table
    (judged,) = grpo.glob("transfer-chat-*.json")
    assert json.loads(judged.read_text()) | {"baseline": None} == trained | {"baseline": None}
    assert json.loads((tmp_path / "exp" / "runs" / "base" / judged.name).read_text())["win_rate"] == 0.5
    table = (tmp_path / "exp" / "mixed.md").read_text().split("Judged")[1]
    row = next(line for line in table.splitlines() if line.startswith("| grpo |")).split(" | ")
    assert row[2:5] == [f"{trained[k]:.3f}" for k in ("win_rate", "lc_win_rate", "judge_mean")]


def test_a_reward_model_that_loads_only_on_a_worker_fails_in_one_line(tiny_reward_model, tmp_path):
    """Its config.json passes the checks before Ray starts; its weights do not load on the reward
    worker: the command ends with one line naming the route and the cause, exit 1, and leaves no
    run directory (the rest of stderr is the workers' own logging)."""
    import shutil
    import subprocess
    import sys

    broken = tmp_path / "broken-rm"
    shutil.copytree(tiny_reward_model, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:1000])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            "train",
            "tiny-grpo",
            "--no-dashboard",
            "--output",
            str(tmp_path / "run"),
            "--set",
            f"reward.routes.default={{kind: reward_model, model_path: {broken}}}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "syncrl: reward route 'default' (reward_model) did not start on a reward worker: SafetensorError"
    ), last
    assert not (tmp_path / "run").exists()


def test_reward_model_on_zero3_ranks_and_from_a_checkpoint(ray_cluster, tiny_llama, tmp_path):
    """The reward model trains on 2 ZeRO-3 ranks as on one ZeRO-0 rank (losses and held-out
    metrics), and a rank group restored from a checkpoint continues with the same losses; its
    saved folder is a one-label classifier."""
    from transformers import AutoModelForSequenceClassification

    from actors.learner import LearnerGroup
    from launch.config import load_config
    from rollout.algorithms import build_reward_model_batch
    from rollout.records import LossSpec, Sample

    samples = [
        Sample(
            prompt_id=f"p{g}",
            prompt_ids=[1],
            response_ids=[2],
            logprobs=[],
            finish_reason="stop",
            policy_version=-1,
            reward=float(k),
        )
        for g in range(6)
        for k in range(2)
    ]
    rows = {id(s): [1, 5 + i % 7, 9, 30 + 3 * (i % 2), 4][: 3 + i % 3] for i, s in enumerate(samples)}
    batch = build_reward_model_batch(samples, lambda s: rows[id(s)], heldout_share=0.3)
    assert batch.heldout and len(batch.heldout) < batch.num_pairs
    spec = LossSpec(bradley_terry_weight=1.0, reward_margin=0.1)
    runs = {}
    for name, ranks, stage in [("one rank", 1, 0), ("zero3", 2, 3)]:
        cfg = load_config(
            "tiny-rm",
            [
                f"learner.num_ranks={ranks}",
                f"learner.zero_stage={stage}",
                "learner.micro_batch_size=4",
                "learner.lr=1e-2",
            ],
        ).learner
        group = LearnerGroup(tiny_llama, cfg, reward_model=True)
        try:
            runs[name] = [group.train_step(batch, spec) for _ in range(2)]
            if name == "zero3":
                group.on_all("save_checkpoint", str(tmp_path / "ckpt"))
                after = [group.train_step(batch, spec)["loss"] for _ in range(2)]
                group.on_all("load_checkpoint", str(tmp_path / "ckpt"))
                assert [group.train_step(batch, spec)["loss"] for _ in range(2)] == pytest.approx(after, rel=1e-5)
                group.on_all("save_hf", str(tmp_path / "final"))
        finally:
            group.shutdown()
    for one, three in zip(runs["one rank"], runs["zero3"]):
        for key in ("loss", "rm_accuracy", "rm_margin", "heldout_accuracy", "heldout_margin"):
            assert three[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert runs["one rank"][1]["loss"] < runs["one rank"][0]["loss"]
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").config.num_labels == 1


def test_reward_model_from_scored_rollouts(ray_cluster, tiny_llama, tiny_reward_model, tmp_path):
    """Pairs built from the engines' samples scored by the run's reward routes: every (above-mean,
    below-mean) pair of a prompt's samples."""
    from launch.run import run

    cfg = tiny_config(
        "tiny-rm",
        tiny_llama,
        "data.path=null",
        "data.task=add-1digit",
        "steps=2",
        "reward.routes.default.kind=reward_model",
        f"reward.routes.default.model_path={tiny_reward_model}",
    )
    run(cfg, str(tmp_path / "run"))
    rows = read_metrics(tmp_path / "run")
    assert all(
        r["trained"] and r["sample_versions"] == [0] and r["batch_pairs"] + r["batch_heldout_pairs"] > 0 for r in rows
    )
    assert all(
        r["batch_pairs"] + r["batch_heldout_pairs"] <= 4 * 2 * 2 for r in rows
    )  # 4 prompts, at most 2 x 2 pairs each


def test_a_reward_model_runs_plot_shows_its_pair_accuracies(tmp_path):
    """progress.png of a reward-model run plots rm_accuracy and heldout_accuracy, not the data's
    constant 0.5 mean reward (a unit test on a written metrics.jsonl)."""
    from launch.plots import plot_run

    rows = [
        {
            "step": i + 1,
            "stage": "main",
            "sync_interval": "inf",
            "reward_mean": 0.5,
            "rm_accuracy": a,
            "heldout_accuracy": h,
        }
        for i, (a, h) in enumerate([(0.4, None), (0.9, 1.0), (1.0, None)])
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_run(tmp_path)
    import matplotlib.image

    assert out.is_file() and matplotlib.image.imread(out).shape[0] > 100
