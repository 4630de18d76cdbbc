"""A run's progress as a PNG: training reward per step and held-out accuracy at each evaluation
(a reward-model run: its pair accuracy per step, on the training pairs and the held-out ones)."""

from __future__ import annotations

from pathlib import Path

from launch.metrics import read_jsonl


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    steps = read_jsonl(run_dir / "metrics.jsonl")
    evals = [e for e in read_jsonl(run_dir / "eval.jsonl") if "beam" not in e]
    if not steps:
        raise FileNotFoundError(f"{run_dir}/metrics.jsonl: no steps to plot")
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["step"] for r in steps]
    reward_model = "rm_accuracy" in steps[0]  # the data's rewards are the pairs' 1 and 0: show what was learned
    key, what = ("rm_accuracy", "pair accuracy") if reward_model else ("reward_mean", "train reward")
    ax.plot(x, [r[key] for r in steps], color="tab:blue", alpha=0.5, label=f"{what} (per step)")
    window = max(1, len(x) // 10)
    smooth = [
        sum(r[key] for r in steps[max(0, i - window + 1) : i + 1]) / len(steps[max(0, i - window + 1) : i + 1])
        for i in range(len(steps))
    ]
    ax.plot(x, smooth, color="tab:blue", label=f"{what} ({window}-step mean)")
    held = [(r["step"], r["heldout_accuracy"]) for r in steps if r.get("heldout_accuracy") is not None]
    if held:
        ax.plot(*zip(*held), color="tab:red", marker="o", linestyle="none", label="held-out pair accuracy")
    if evals:
        ax.errorbar(
            [e["step"] for e in evals],
            [e["accuracy"] for e in evals],
            yerr=[e["accuracy_stderr"] for e in evals],
            color="tab:red",
            marker="o",
            capsize=3,
            label=f"held-out accuracy ({evals[0]['questions']} questions)",
        )
    ax.set_xlabel("learner step")
    if all(0 <= r[key] <= 1 for r in steps):  # verifier rewards and accuracies share [0, 1]
        ax.set_ylim(-0.02, 1.02)
    stages = sorted({r["stage"] for r in steps}, key=[r["stage"] for r in steps].index)
    intervals = sorted({str(r["sync_interval"]) for r in steps})
    ax.set_title(f"{run_dir.name}: stages {', '.join(stages)}; sync interval {', '.join(intervals)}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    out = Path(out or run_dir / "progress.png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
