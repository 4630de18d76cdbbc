"""``syncrl experiment``: arms x seeds of one base recipe, run one after another, then summarized.

An experiments file (``launch/experiments/paper.yaml``) names a base recipe, the seeds, and per
experiment its arms: partial configurations merged over the recipe (an experiment may name its
own ``recipe`` and ``transfer``). Every (arm, seed) run keeps
its run directory under ``OUT/runs/ARM-FINGERPRINT/seedN``, the fingerprint being a hash of the
arm's whole configuration: an arm that two experiments share (same name, same settings) runs once,
and a finished run (``finished.json``) is not run again, so an interrupted experiment continues
where it stopped. A run's records (``config.yaml``, ``metrics.jsonl``, ``eval.jsonl``, the
transfer result, ``finished.json``) are all the summary reads: they can be kept (in git, for
docs/results) without the model folders, and the tables remade from them with
``--summary-only``. Runs go seed by seed (every arm's seed 0 first), so a cut-short experiment
still compares all its arms. The summary (``OUT/EXPERIMENT.md`` and ``OUT/EXPERIMENT.png``)
gives per arm the held-out accuracy before and after (mean +- standard error over seeds), the change,
response length, and compute (generated and trained tokens). A ``transfer`` section (settings
merged over the recipe, naming an ``eval.task``; or a list of them) also evaluates the base model
and every trained model on that task, in one engine start per seed; each result is kept next to
its run. A ``chat`` transfer is judged: win rates against the base model's greedy answers under
the gold judge, and the chat route's reward model's mean score (``launch.evaluate.judged_evaluation``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from launch.config import ConfigError, SyncRLConfig, apply_override, config_from_dict, resolve_recipe
from launch.metrics import mean_or_nan, read_jsonl
from rollout.tasks import CHAT

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"


def merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = (
            merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else copy.deepcopy(value)
        )
    return out


def load_experiments(path: str) -> dict:
    file = Path(path) if Path(path).is_file() else EXPERIMENTS_DIR / f"{path}.yaml"
    if not file.is_file():
        known = ", ".join(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
        raise ConfigError(f"experiments file {path!r} not found (a path, or one of: {known})")
    spec = yaml.safe_load(file.read_text())
    for key in ("recipe", "seeds", "experiments"):
        if key not in spec:
            raise ConfigError(f"{file}: missing {key!r}")
    return spec


def for_experiment(spec: dict, experiment: str) -> dict:
    """The file's settings as one experiment sees them: an experiment may name its own ``recipe``
    and ``transfer`` (``transfer: null``: none)."""
    own = spec["experiments"].get(experiment) or {}
    return {**spec, **{key: own[key] for key in ("recipe", "transfer") if key in own}}


def arm_configs(
    spec: dict, experiment: str, seeds: list[int], overrides: dict | None = None
) -> dict[tuple[str, int], SyncRLConfig]:
    """Every (arm, seed) configuration in run order (seed by seed), validated before anything runs."""
    if experiment not in spec["experiments"]:
        raise ConfigError(f"unknown experiment {experiment!r}; known: {', '.join(spec['experiments'])}")
    base = yaml.safe_load(resolve_recipe(spec["recipe"]).read_text())
    configs = {}
    for seed in seeds:
        for arm, settings in spec["experiments"][experiment]["arms"].items():
            tree = merge(merge(base, settings or {}), overrides or {})
            tree = merge(
                tree, {"name": f"{arm}-seed{seed}", "seed": seed, "rollout": {"seed": seed}, "learner": {"seed": seed}}
            )
            configs[arm, seed] = config_from_dict(tree, f"experiment {experiment}, arm {arm}")
    return configs


def arm_run_dir(out: Path, arm: str, cfg: SyncRLConfig) -> Path:
    """``OUT/runs/ARM-FINGERPRINT/seedN``: the fingerprint hashes the settings that differ from
    the defaults, without the name and seeds, so equal arms of different experiments share their
    runs (and a new option with a default does not orphan the runs made before it)."""
    tree = cfg.model_dump(
        mode="json",
        exclude_defaults=True,
        exclude={"name": True, "seed": True, "rollout": {"seed"}, "learner": {"seed"}},
    )
    fingerprint = hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:8]
    return out / "runs" / f"{arm}-{fingerprint}" / f"seed{cfg.seed}"


FINISHED = "finished.json"  # written when a run ends: a run without it is started again


def run_arms(configs: dict[tuple[str, int], SyncRLConfig], out: Path) -> None:
    from launch.run import run

    for (arm, seed), cfg in configs.items():
        path = arm_run_dir(out, arm, cfg)
        if (path / FINISHED).is_file():
            print(f"[experiment] {arm} seed {seed}: done before, kept ({path})", flush=True)
            continue
        if path.exists():  # an interrupted run: start it again from scratch
            shutil.rmtree(path)
        print(f"[experiment] {arm} seed {seed} -> {path}", flush=True)
        run(cfg, output=str(path))
        steps = read_jsonl(path / "metrics.jsonl")
        (path / FINISHED).write_text(
            json.dumps({"arm": arm, "seed": seed, "steps": len(steps), "time": steps[-1]["time"]}) + "\n"
        )


def transfer_configs(spec: dict, overrides: dict | None = None) -> list[SyncRLConfig]:
    """The ``transfer`` evaluations' settings, each merged over the recipe: ``transfer`` is one
    mapping or a list of them (none: the file has no ``transfer``, or it is null)."""
    transfers = spec.get("transfer") or []
    base = yaml.safe_load(resolve_recipe(spec["recipe"]).read_text())
    configs = []
    for index, transfer in enumerate([transfers] if isinstance(transfers, dict) else transfers):
        where = "experiments file, transfer" + (f" {index}" if not isinstance(transfers, dict) else "")
        cfg = config_from_dict(merge(merge(base, overrides or {}), transfer), where)
        if not cfg.eval.task:
            raise ConfigError(f"{where}: needs eval.task (the task to evaluate the trained models on)")
        configs.append(cfg)
    return configs


def transfer_file(cfg: SyncRLConfig) -> str:
    """The name of a transfer result: the task and a hash of the settings that differ from the
    defaults (as ``arm_run_dir``'s fingerprint: a new option with a default keeps the name)."""
    e = cfg.eval
    parts = [cfg.model.path, e.model_dump(mode="json", exclude_defaults=True)]
    parts.append(cfg.data.model_dump(mode="json", exclude_defaults=True))
    if e.task == CHAT:  # judged: the reward model whose mean score it reports is part of the result
        parts.append(chat_reward_model(cfg))
    settings = json.dumps(parts, sort_keys=True)
    return f"transfer-{e.task}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}.json"


def chat_reward_model(cfg: SyncRLConfig) -> str | None:
    """The reward model folder of the route that scores chat prompts, if that route is one."""
    route = cfg.reward.routes[cfg.reward.route_name(CHAT)]
    return route.model_path if route.kind == "reward_model" else None


def run_transfer(cfg: SyncRLConfig, runs: list[Path], out: Path) -> None:
    """Evaluate the base model and each run's final model on the transfer task, those not done."""
    from launch.cluster import ray_session
    from launch.evaluate import evaluate_models, judged_evaluation
    from launch.models import resolve_model

    targets = [(out / "runs" / "base", resolve_model(cfg.model.path))] + [(r, str(r / "final")) for r in runs]
    todo = [(d, model) for d, model in targets if not (d / transfer_file(cfg)).is_file()]
    if not todo:
        return
    for d, model in todo:
        if not Path(model, "config.json").is_file():
            raise ConfigError(
                f"transfer: run {d} has no {transfer_file(cfg)} and no final model to evaluate "
                f"(records kept without models): delete {d} to run it again"
            )
    print(f"[experiment] transfer: {cfg.eval.task} on {len(todo)} models", flush=True)
    with ray_session(cfg):
        models = [model for _, model in todo]
        if cfg.eval.task == CHAT:  # judged against the base model's greedy answers (README, "Judged evaluation")
            results = judged_evaluation(models, cfg, targets[0][1], chat_reward_model(cfg))
        else:
            results = evaluate_models(models, cfg, cfg.eval.task)
    for (d, _), result in zip(todo, results):
        d.mkdir(parents=True, exist_ok=True)
        (d / transfer_file(cfg)).write_text(json.dumps(result, indent=1))


def run_summary(run_dir: Path) -> dict[str, float]:
    # the run's own evaluations (greedy; beam search has its own records): none where its arms
    # are compared by transfers only (the chat experiments): the accuracy columns are then nan
    evals = [e for e in read_jsonl(run_dir / "eval.jsonl") if "beam" not in e]
    steps = read_jsonl(run_dir / "metrics.jsonl")
    if not steps:
        raise ValueError(f"{run_dir}: no metrics.jsonl")
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    return {
        "accuracy_start": first.get("accuracy", math.nan),
        "accuracy_end": last.get("accuracy", math.nan),
        "gain": last.get("accuracy", math.nan) - first.get("accuracy", math.nan),
        "eval_len_end": last.get("response_len_mean", math.nan),
        "train_len_first": steps[0]["response_len_mean"],
        "train_len_last": steps[-1]["response_len_mean"],
        "reward_last3": sum(s["reward_mean"] for s in steps[-3:]) / len(steps[-3:]),
        "steps_trained": sum(bool(s.get("trained", True)) for s in steps),  # a DPO step without a pair trains nothing
        "tokens_generated": sum(s.get("tokens_generated", 0) for s in steps),
        "tokens_trained": sum(s.get("tokens_trained", 0) for s in steps),
        "minutes": sum(s["time_gen_s"] + s["time_score_s"] + s["time_train_s"] + s["time_sync_s"] for s in steps) / 60,
        "wall_minutes": sum(s.get("time_wall_s", 0.0) for s in steps) / 60,  # step 1's includes the start-up
        # steps that pushed (runs recorded before pushed_after existed: nan)
        "pushes": sum(s["pushed_after"] > 0 for s in steps) if "pushed_after" in steps[0] else math.nan,
        "sync_s": sum(s["time_sync_s"] for s in steps),
        # the mean over steps of drift_kl (the engines' policy against the learner's, on the step's
        # samples, before its update): nan for runs without engine log-probs (offline file rows)
        "drift_kl_mean": mean_or_nan([s["drift_kl"] for s in steps if "drift_kl" in s]),
        # the value model's diagnostics on the last evaluation's answers (runs with a value model)
        **{key: last[key] for key in VALUE_KEYS if key in last},
    }


# an evaluation record's value-model diagnostics (rollout.evaluation.value_diagnostics) the summary tabulates
VALUE_KEYS = ("value_auc_s0", "value_auc_last", "value_mse_last", "value_mse_constant")


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return mean, se


def mean_pm_se(values: list[float], fmt: str = "{:.3f}") -> str:
    """``mean +- SE`` over seeds; the mean alone for a single value (no SE to give)."""
    mean, se = mean_se(values)
    return fmt.format(mean) if math.isnan(se) else f"{fmt.format(mean)} +- {fmt.format(se)}"


def summarize(
    spec: dict,
    experiment: str,
    configs: dict[tuple[str, int], SyncRLConfig],
    out: Path,
    command: str,
    transfers: list[SyncRLConfig] | None = None,
) -> str:
    """The experiment's Markdown table ``OUT/EXPERIMENT.md`` (and a plot next to it), from the runs."""
    exp = spec["experiments"][experiment]
    out.mkdir(parents=True, exist_ok=True)
    header = [
        "arm",
        "seeds",
        "accuracy before",
        "accuracy after",
        "change",
        "steps trained",
        "train len first -> last",
        "eval len after",
        "generated tokens",
        "trained tokens",
        "pushes",
        "time in sync (s)",
        "drift KL (step mean)",
        "wall time (min)",
    ]
    lines = [
        f"## {exp['title']}",
        "",
        f"Claim tested: {exp['claim']}.",
        "",
        f"Command: `{command}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    curves = {}
    for arm in exp["arms"]:
        runs = [arm_run_dir(out, a, cfg) for (a, _), cfg in configs.items() if a == arm]
        runs = [r for r in runs if (r / FINISHED).is_file()]
        if not runs:
            lines.append(f"| {arm} | 0 | not run |" + " |" * (len(header) - 3))
            continue
        sums = [run_summary(r) for r in runs]

        def col(key: str, fmt: str = "{:.3f}") -> str:
            return mean_pm_se([s[key] for s in sums], fmt)

        cells = [
            arm,
            len(runs),
            col("accuracy_start"),
            col("accuracy_end"),
            col("gain"),
            col("steps_trained", "{:.1f}"),
            f"{col('train_len_first', '{:.1f}')} -> {col('train_len_last', '{:.1f}')}",
            col("eval_len_end", "{:.1f}"),
            f"{mean_se([s['tokens_generated'] for s in sums])[0]:.0f}",
            f"{mean_se([s['tokens_trained'] for s in sums])[0]:.0f}",
            col("pushes", "{:.1f}"),
            col("sync_s", "{:.1f}"),
            col("drift_kl_mean", "{:.4f}"),
            col("wall_minutes", "{:.1f}"),
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
        curves[arm] = ([read_jsonl(r / "metrics.jsonl") for r in runs], sums)
    lines += _value_table(curves)
    for transfer in transfers or []:
        lines += _transfer_table(transfer, exp["arms"], configs, out)
    plot = _plot(curves, out / f"{experiment}.png", exp["title"])
    if plot:
        lines += ["", f"![{experiment}]({plot.name})"]
    text = "\n".join(lines) + "\n"
    (out / f"{experiment}.md").write_text(text)
    return text


def _value_table(curves: dict[str, tuple[list[list[dict]], list[dict]]]) -> list[str]:
    """The value model's diagnostics at the last evaluation, for the arms that train one."""
    rows = [(arm, sums) for arm, (_, sums) in curves.items() if all("value_auc_last" in s for s in sums)]
    if not rows:
        return []
    lines = [
        "",
        "Value model at the last evaluation, on the evaluated answers (mean +- standard error over seeds):",
        "",
        "| arm | AUC V(s_0) | AUC V(last) | MSE V(last) | MSE of a constant |",
        "|---|---|---|---|---|",
    ]
    for arm, sums in rows:
        cells = [arm] + [mean_pm_se([s[key] for s in sums]) for key in VALUE_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _transfer_table(
    cfg: SyncRLConfig, arms: dict, configs: dict[tuple[str, int], SyncRLConfig], out: Path
) -> list[str]:
    e = cfg.eval
    tokens = e.max_new_tokens or cfg.rollout.max_new_tokens
    if e.task == CHAT:
        rm = chat_reward_model(cfg)
        columns = [("win rate", "win_rate", "{:.3f}"), ("LC win rate", "lc_win_rate", "{:.3f}")]
        columns += [("judge score", "judge_mean", "{:.3f}")] + ([("RM score", "rm_mean", "{:.3f}")] if rm else [])
        columns += [("response length", "response_len_mean", "{:.1f}"), ("truncated", "truncated_rate", "{:.2f}")]
        intro = (
            f"Judged ({'greedy' if e.temperature == 0 else f'temperature {e.temperature}'}, up to {tokens} new "
            f"tokens) on {e.num_questions} held-out `chat` prompts against the base model's greedy answers: win rate "
            "and length-controlled win rate under the judge (rewards/judge.py), its mean score"
            + (f", the reward model's ({rm})" if rm else "")
            + ", length and truncation; mean +- standard error over seeds."
        )
    else:
        columns = [("accuracy", "accuracy", "{:.3f}"), ("boxed", "boxed_rate", "{:.2f}")]
        columns += [("response length", "response_len_mean", "{:.1f}")]
        intro = (
            f"Transfer: greedy accuracy on {e.num_questions} held-out `{e.task}` questions "
            f"({'one-shot' if cfg.data.one_shot else 'zero-shot'}, up to "
            f"{tokens} new tokens), mean +- standard error over seeds."
        )
    lines = [
        "",
        intro,
        "",
        "| model | seeds | " + " | ".join(name for name, _, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    rows = [("base model", [out / "runs" / "base"])]
    rows += [(arm, [arm_run_dir(out, a, c) for (a, _), c in configs.items() if a == arm]) for arm in arms]
    for name, dirs in rows:
        found = [json.loads((d / transfer_file(cfg)).read_text()) for d in dirs if (d / transfer_file(cfg)).is_file()]
        if not found:
            lines.append(f"| {name} | 0 | not run |" + " |" * (len(columns) - 1))
            continue
        cells = [name, len(found), *(mean_pm_se([r[key] for r in found], fmt) for _, key, fmt in columns)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def _plot(curves: dict[str, tuple[list[list[dict]], list[dict]]], path: Path, title: str) -> Path | None:
    """Training reward, response length, entropy and drift KL per step (mean over seeds), and the held-out
    accuracy after training per arm (mean +- standard error, the dashed line: before)."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_l, ax_e, ax_d, ax_a) = plt.subplots(
        1, 5, figsize=(22, 3.8), gridspec_kw={"width_ratios": [1, 1, 1, 1, 0.8]}
    )
    for index, (arm, (runs, sums)) in enumerate(curves.items()):
        steps = min(len(r) for r in runs)
        for ax, key in ((ax_r, "reward_mean"), (ax_l, "response_len_mean"), (ax_e, "entropy_mean"), (ax_d, "drift_kl")):
            # a step without the key (a DPO step without a pair trains and measures nothing; offline
            # file rows have no drift) is a gap in the arm's curve
            ys = [mean_or_nan([r[i][key] for r in runs if key in r[i]]) for i in range(steps)]
            if not all(math.isnan(y) for y in ys):
                ax.plot(range(1, steps + 1), ys, label=arm, color=f"C{index}", marker=".", markersize=3)
        mean, se = mean_se([s["accuracy_end"] for s in sums])
        ax_a.bar(index, mean, yerr=0 if math.isnan(se) else se, color=f"C{index}", capsize=4)
    before = mean_se([s["accuracy_start"] for _, sums in curves.values() for s in sums])[0]
    ax_a.axhline(before, color="gray", linestyle="--", linewidth=1)
    ax_a.set_xticks(range(len(curves)), list(curves), rotation=25, ha="right", fontsize=7)
    ax_r.set(xlabel="learner step", ylabel="training reward (mean over seeds)")
    ax_l.set(xlabel="learner step", ylabel="response length (tokens)")
    ax_e.set(xlabel="learner step", ylabel="mean token entropy (trained tokens)")
    ax_d.set(xlabel="learner step", ylabel="drift KL, engines vs learner (before the step)")
    ax_a.set(ylabel="held-out accuracy after (before: dashed)")
    ax_r.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overrides_tree(assignments: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` assignments as a partial configuration tree."""
    tree: dict[str, Any] = {}
    for assignment in assignments:
        apply_override(tree, assignment)
    return tree


def main(
    spec_path: str, experiment: str, seeds: list[int] | None, out: str, overrides: list[str], summary_only: bool
) -> int:
    spec = for_experiment(load_experiments(spec_path), experiment)
    tree = overrides_tree(overrides)
    configs = arm_configs(spec, experiment, seeds or spec["seeds"], tree)  # every arm validated before any run
    transfers = transfer_configs(spec, tree)
    if not summary_only:
        # seed by seed, each round with its transfer evaluations: a cut-short experiment leaves
        # complete records (the transfer needs the model folders, which are not kept in git)
        for seed in dict.fromkeys(seed for _, seed in configs):
            round_ = {key: cfg for key, cfg in configs.items() if key[1] == seed}
            run_arms(round_, Path(out))
            for transfer in transfers:
                run_transfer(
                    transfer, [arm_run_dir(Path(out), arm, cfg) for (arm, _), cfg in round_.items()], Path(out)
                )
    command = f"syncrl experiment {spec_path} {experiment}" + "".join(f" --set {o}" for o in overrides)
    print(summarize(spec, experiment, configs, Path(out), command, transfers))
    return 0
