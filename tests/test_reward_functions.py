"""Reward functions in Python (kind: python): TRL's calling convention, weighted sums, None, and
every failure (an exception, a hang, a wrong length, a non-finite value) named with the function
and the sample; checked before Ray starts by the CLI; in a real reward worker."""

import math
import textwrap

import pytest

from launch.config import ConfigError, load_config
from rewards.python_function import PythonReward, RewardFunctionError
from rewards.router import RewardRouter
from rollout.records import Sample

FUNCTIONS = """
import math, time

def exact(prompts, completions, answer, **columns):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def length(prompts, completions, **columns):
    return [len(c) / 10 for c in completions]

def only_chat(prompts, completions, source, **columns):
    return [None if s != "chat" else 2.0 for s in source]

def seen(prompts, completions, difficulty, prompt_messages, **columns):
    return [d * 10 + len(m) for d, m in zip(difficulty, prompt_messages)]

def raises_on_b(prompts, completions, **columns):
    if any(c == "b" for c in completions):
        raise ValueError("cannot score b")
    return [0.0] * len(completions)

def hangs(prompts, completions, **columns):
    time.sleep(60)

def short(prompts, completions, **columns):
    return [1.0]

def nan(prompts, completions, **columns):
    return [math.nan for _ in completions]
"""


def sample(response: str, answer: str = "4", source: str = "math", prompt_id: str = "p0", **columns) -> Sample:
    return Sample(
        prompt_id=prompt_id,
        prompt_ids=[1],
        response_ids=[2],
        logprobs=[0.0],
        finish_reason="stop",
        policy_version=0,
        prompt_text="2 + 2?",
        response_text=response,
        answer=answer,
        source=source,
        prompt_messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "2 + 2?"}],
        columns=columns,
    )


@pytest.fixture(scope="module")
def functions(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("fns") / "my_rewards.py"
    path.write_text(FUNCTIONS)
    return str(path)


def test_weighted_sum_none_and_columns(functions):
    f = PythonReward([f"{functions}:exact", f"{functions}:length", f"{functions}:only_chat"], [1.0, 0.5, 3.0])
    try:
        results = f.score([sample("4"), sample("12345", source="chat")])
        assert results[0].reward == pytest.approx(1.0 + 0.5 * 0.1)  # only_chat gave None: not part of the sum
        assert results[1].reward == pytest.approx(0.0 + 0.5 * 0.5 + 3.0 * 2.0)
        assert results[0].info[f"{functions}:exact"] == 1.0 and f"{functions}:only_chat" not in results[0].info
    finally:
        f.close()
    g = PythonReward([f"{functions}:seen"])
    try:  # the data set's own columns and the prompt's chat arrive as keyword lists
        assert [r.reward for r in g.score([sample("x", difficulty=1), sample("y", difficulty=3)])] == [12.0, 32.0]
    finally:
        g.close()


@pytest.mark.parametrize(
    "name, cause",
    [
        ("raises_on_b", r"raised on sample 1 of the batch \(prompt 'p1'\): ValueError: cannot score b"),
        ("hangs", r"took longer than timeout_s=1 s on a batch of 2 samples"),
        ("short", r"returned 1 values for 2 samples"),
        ("nan", r"returned nan for sample 0 of the batch \(prompt 'p0'\): a reward must be a finite number"),
        ("only_chat", r"no function of route 'chat' scored sample of prompt 'p0'"),
    ],
)
def test_each_failure_names_the_function_and_the_sample(functions, name, cause):
    f = PythonReward([f"{functions}:{name}"], timeout_s=1.0, route="chat")
    try:
        with pytest.raises(RewardFunctionError, match=cause) as err:
            f.score([sample("a", prompt_id="p0"), sample("b", prompt_id="p1")])
        if name != "only_chat":
            assert f"reward function {functions}:{name} (route 'chat')" in str(err.value)
    finally:
        f.close()


def test_on_error_zero_scores_zero_and_counts(functions):
    f = PythonReward([f"{functions}:raises_on_b", f"{functions}:length"], on_error="zero")
    try:
        results = f.score([sample("a"), sample("bbbbb"), sample("b")])
        assert [r.reward for r in results] == pytest.approx([0.1, 0.5, 0.1])  # raises_on_b's part is 0 for all
        assert all("cannot score b" in r.info["error"] for r in results) and f.stats()["errors"] == 3
    finally:
        f.close()


def test_a_module_function_and_the_router(tmp_path, monkeypatch, functions):
    (tmp_path / "pkg_rewards").mkdir()
    (tmp_path / "pkg_rewards" / "__init__.py").write_text("")
    (tmp_path / "pkg_rewards" / "fmt.py").write_text(
        textwrap.dedent("""
        def boxed(prompts, completions, **kw):
            return [1.0 if "\\\\boxed" in c else 0.0 for c in completions]
    """)
    )
    monkeypatch.chdir(tmp_path)
    router = RewardRouter(
        {
            "default": {"kind": "math_verify"},
            "chat": {
                "kind": "python",
                "function": ["pkg_rewards.fmt:boxed", f"{functions}:length"],
                "weights": [1.0, -0.1],
            },
        }
    )
    try:
        scored = router.apply([sample("\\boxed{4}"), sample("\\boxed{5}", source="chat")])
        assert scored[0].reward == 1.0 and scored[0].reward_info["route"] == "default"
        assert scored[1].reward == pytest.approx(1.0 - 0.1 * 0.9) and scored[1].reward_info["route"] == "chat"
    finally:
        router.close()


def test_route_fields_are_checked():
    with pytest.raises(ConfigError, match=r"reward.routes.chat: .*kind 'python' needs function"):
        load_config(None, ["reward.routes={chat: {kind: python}, default: {kind: math_verify}}"])
    with pytest.raises(ConfigError, match=r"weights: 1 weights for 2 functions"):
        load_config(None, ["reward.routes.default={kind: python, function: [a:b, c:d], weights: [1]}"])


def test_bad_functions_are_one_line_before_ray(tmp_path, functions):
    from tests.test_bad_input import assert_one_line, syncrl

    route = "reward.routes.default={kind: python, function: %s}"
    assert_one_line(
        syncrl("train", "tiny-grpo", "--set", route % f"{tmp_path}/none.py:f"),
        "reward.routes.default.function",
        "none.py:f",
        "no file",
    )
    assert_one_line(
        syncrl("train", "tiny-grpo", "--set", route % f"{functions}:missing"),
        "reward.routes.default.function",
        "'missing' is not defined",
    )
    assert_one_line(
        syncrl("train", "tiny-grpo", "--set", route % "no_such_module_x:f"), "cannot import module 'no_such_module_x'"
    )
    assert_one_line(syncrl("train", "tiny-grpo", "--set", route % "nocolon"), "must look like 'pkg.module:name'")


@pytest.mark.system
def test_a_failing_function_in_a_reward_worker_is_reported_by_name(ray_cluster, functions):
    import ray

    from actors.faults import Supervisor
    from actors.reward import RewardGroup

    cfg = load_config(None, [f"reward.routes.default={{kind: python, function: '{functions}:raises_on_b'}}"]).reward
    group = RewardGroup(cfg, Supervisor(load_config().fault_tolerance))
    try:
        assert [s.reward for s in group.score([sample("a")])] == [0.0]
        with pytest.raises(
            RewardFunctionError, match=r"raises_on_b \(route 'default'\) raised on sample 1 .*prompt 'p1'"
        ):
            group.score([sample("a", prompt_id="p0"), sample("b", prompt_id="p1")])
        assert not math.isnan(ray.get(group.workers[0].stats.remote())["default"]["scored"])  # the worker lives on
    finally:
        group.shutdown()


def test_a_function_that_does_not_import_on_the_worker_fails_its_start(tmp_path):
    path = tmp_path / "gone.py"
    path.write_text("def f(prompts, completions, **kw):\n    return [0.0] * len(prompts)\n")
    f = PythonReward([f"{path}:f"])
    path.unlink()  # checked by the CLI, then gone where the worker runs
    try:
        with pytest.raises(
            RewardFunctionError, match=r"reward function .*gone.py:f \(route 'python'\) does not import .*no file"
        ):
            f.start()
    finally:
        f.close()
