"""The reward side: answer extraction, the math verifier (directly and inside Ray workers, with
a real input that makes math-verify hang), the grader process, the reward model against a
plain Hugging Face forward, and routing of a mixed batch.

No mocks: math-verify and sympy grade every answer; the reward model is a tiny classifier
built locally.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from launch.config import RewardRoute
from rewards.base import RewardResult
from rewards.grader_process import GraderError, GraderProcess, GraderTimeout
from rewards.math_verify import MathVerifier, extract_answer
from rewards.router import RewardRouter
from rollout.records import Sample

# Checking this against any answer makes sympy evaluate 9^(9^(9^9)): it never finishes.
HANGING = r"So the answer is \boxed{9^{9^{9^{9}}}}"

# (response, reference answer, expected reward, expected extracted answer)
MATH_CASES = [
    # equivalent forms of one answer
    (r"The answer is \boxed{\frac{1}{2}}.", "0.5", 1.0, r"\frac{1}{2}"),
    ("Half of it: 1/2.", r"\frac{1}{2}", 1.0, "1/2"),
    ("So we get 0.5", "1/2", 1.0, "0.5"),
    (r"\boxed{5}", "5", 1.0, "5"),
    ("The answer is 5.", r"\boxed{5}", 1.0, "5"),
    ("10.0", "10", 1.0, "10.0"),
    (r"Total: \boxed{10}", "10.0", 1.0, "10"),
    ("She has 1,000 apples left.", "1000", 1.0, "1000"),
    (r"3 - 8 = \boxed{-5}", "-5", 1.0, "-5"),
    # wrong answers
    (r"\boxed{6}", "5", 0.0, "6"),
    ("The answer is 0.51", "1/2", 0.0, "0.51"),
    (r"First \boxed{5}, no wait: \boxed{6}", "5", 0.0, "6"),  # the last box counts
    (r"I add 2 and 3 and get \boxed{5}, so 7 apples remain", "7", 0.0, "5"),  # a box beats numbers
    # no answer at all
    ("I do not know.", "5", 0.0, None),
    ("", "5", 0.0, None),
    # malformed LaTeX
    (r"\boxed{\frac{1}{", "1/2", 0.0, r"\frac{1}{"),
    (r"\boxed{)(}", "3", 0.0, ")("),
    (r"\boxed{\frac{}{2}}", "1", 0.0, r"\frac{}{2}"),
]


def sample(response: str = "", answer: str | None = None, source: str = "default", prompt: str = "") -> Sample:
    return Sample(
        prompt_id="p",
        prompt_ids=[],
        response_ids=[],
        logprobs=[],
        finish_reason="stop",
        policy_version=0,
        prompt_text=prompt,
        response_text=response,
        answer=answer,
        source=source,
    )


def check_math_results(results: list[RewardResult]) -> None:
    assert len(results) == len(MATH_CASES)
    for (response, answer, reward, extracted), result in zip(MATH_CASES, results, strict=True):
        case = f"{response!r} vs {answer!r}: {result.info}"
        assert result.reward == reward, case
        assert result.info["extracted"] == extracted, case
        assert result.info["correct"] is (reward == 1.0), case
        assert result.info["timed_out"] is False and result.info["error"] is None, case


# ---------------------------------------------------------------- answer extraction (pure)


@pytest.mark.parametrize(
    ("response", "text", "source"),
    [
        (r"a \boxed{3} then \boxed{\frac{1}{2}} done", r"\frac{1}{2}", "boxed"),
        (r"\boxed{\sqrt{x^{2}}}", r"\sqrt{x^{2}}", "boxed"),
        (r"cut off in \boxed{\frac{1}{", r"\frac{1}{", "boxed_unclosed"),
        ("3 + 4 = 7.", "7", "number"),
        ("it is -3.", "-3", "number"),
        ("7-2 is 5, times 2,000 is 10,000", "10000", "number"),
        ("one / two: 1 / 2", "1/2", "number"),
    ],
)
def test_extract_answer(response, text, source):
    found = extract_answer(response)
    assert found is not None and (found.text, found.source) == (text, source)


def test_extract_answer_none():
    assert extract_answer("no digits here") is None
    assert extract_answer("") is None


# ---------------------------------------------------------------- the grader process


def test_grader_process_reports_errors_and_survives():
    grader = GraderProcess("json:loads")
    try:
        assert grader.call('{"a": [1, 2]}', timeout_s=10) == {"a": [1, 2]}
        with pytest.raises(GraderError, match="JSONDecodeError"):
            grader.call("{not json", timeout_s=10)
        assert grader.call("[3]", timeout_s=10) == [3]
        assert grader.starts == 1  # an exception in the function does not cost the process
    finally:
        grader.kill()


def test_grader_process_kills_and_restarts_on_timeout():
    grader = GraderProcess("time:sleep")
    try:
        grader.start()
        first_pid = grader.pid
        began = time.monotonic()
        with pytest.raises(GraderTimeout):
            grader.call(60, timeout_s=0.5)
        assert time.monotonic() - began < 3
        assert grader.pid is None  # killed
        assert grader.call(0, timeout_s=10) is None
        assert grader.pid not in (None, first_pid) and grader.starts == 2
    finally:
        grader.kill()


# ---------------------------------------------------------------- the math verifier, no Ray


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=1.0)
    yield v
    v.close()


def test_verifier_direct(verifier):
    check_math_results(verifier.score([sample(r, a) for r, a, _, _ in MATH_CASES]))
    missing = verifier.grade(r"\boxed{5}", None)
    assert missing.reward == 0.0 and missing.info["error"] == "no reference answer"


def test_verifier_requiring_the_box_counts_only_boxed_answers():
    strict = MathVerifier(timeout_s=5.0, require_boxed=True)
    try:
        cases = ["So 3 + 4 = \\boxed{7}.", "3 + 4 = 7", "3 + 4 = \\boxed{8}", "It is \\boxed{7"]
        got = [
            (r.reward, r.info["source"], r.info.get("unboxed_correct"))
            for r in strict.score([sample(c, "7") for c in cases])
        ]
        assert got == [(1.0, "boxed", None), (0.0, "number", True), (0.0, "boxed", None), (0.0, "boxed_unclosed", True)]
    finally:
        strict.close()


def test_verifier_batch_of_64_is_fast(verifier):
    batch = [sample(f"{i} + {i} = \\boxed{{{2 * i}}}", str(2 * i + (i % 4 == 0))) for i in range(64)]
    verifier.start()
    began = time.monotonic()
    results = verifier.score(batch)
    elapsed = time.monotonic() - began
    assert [r.reward for r in results] == [0.0 if i % 4 == 0 else 1.0 for i in range(64)]
    assert elapsed < 2.0, f"64 answers took {elapsed:.2f} s"


def test_verifier_times_out_in_a_thread(verifier):
    """math-verify's own timeout (signal.alarm) cannot work off the main thread; this one does."""
    before = verifier.stats()
    began = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        hung, after_hang = pool.submit(verifier.score, [sample(HANGING, "5"), sample(r"\boxed{5}", "5")]).result()
    assert time.monotonic() - began < 5
    assert hung.reward == 0.0 and hung.info["timed_out"] is True and hung.info["extracted"] == "9^{9^{9^{9}}}"
    assert after_hang.reward == 1.0
    after = verifier.stats()
    assert after["timed_out"] - before["timed_out"] == 1
    assert after["restarts"] - before["restarts"] == 1
    assert after["errors"] == before["errors"]


def test_verifier_survives_a_crashed_grader():
    """The grader process dies in the middle of an answer: error, counted, and the next works."""
    import os
    import signal

    verifier = MathVerifier(timeout_s=30.0)  # the hang would last 30 s: only the crash ends it early
    try:
        verifier.start()
        killer = threading.Timer(0.3, os.kill, (verifier.grader_pid, signal.SIGKILL))
        killer.start()
        began = time.monotonic()
        crashed = verifier.grade(HANGING, "5")
        assert time.monotonic() - began < 5
        assert crashed.reward == 0.0 and crashed.info["timed_out"] is False
        assert "exited with code -9" in crashed.info["error"]
        assert verifier.grade("The answer is 12", "12").reward == 1.0
        expected = {"graded": 2, "correct": 1, "no_answer": 0, "timed_out": 0, "errors": 1, "restarts": 1}
        assert verifier.stats() == expected
    finally:
        killer.cancel()
        verifier.close()


# ---------------------------------------------------------------- the reward model, no Ray


@pytest.fixture(scope="module")
def reward_model_path(tiny_reward_model) -> str:
    return tiny_reward_model


def chat_samples(n: int = 7) -> list[Sample]:
    """Open-ended samples of clearly different lengths (so batches need padding)."""
    return [
        sample(
            prompt=f"Write something about the number {i}.",
            response=" ".join(["The answer is", str(i)] + ["and then some more"] * i),
            source="chat",
        )
        for i in range(n)
    ]


def hf_scores(model_path: str, samples: list[Sample]) -> list[float]:
    """Reference scores: one unpadded Hugging Face forward per sample, written out by hand."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch.float32).eval()
    scores = []
    for s in samples:
        chat = [{"role": "user", "content": s.prompt_text}, {"role": "assistant", "content": s.response_text}]
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            scores.append(model(input_ids=ids).logits[0, 0].item())
    return scores


def test_reward_model_is_deterministic_batched_and_matches_hf(reward_model_path):
    from rewards.reward_model import RewardModelScorer

    samples = chat_samples(7)
    batched = RewardModelScorer(reward_model_path, batch_size=3)
    assert not batched.model.training
    first = batched.score(samples)
    second = batched.score(samples)
    assert [r.reward for r in first] == [r.reward for r in second]
    lengths = [r.info["tokens"] for r in first]
    assert len(set(lengths[:3])) == 3, "each batch must mix lengths, so padding is exercised"
    assert batched.stats() == {"scored": 14, "truncated": 0, "batches": 6}

    one_by_one = RewardModelScorer(reward_model_path, batch_size=1).score(samples)
    reference = hf_scores(reward_model_path, samples)
    assert len(set(round(x, 4) for x in reference)) == len(samples), "scores should differ between samples"
    for b, o, ref in zip(first, one_by_one, reference, strict=True):
        assert b.reward == pytest.approx(o.reward, abs=1e-5)
        assert b.reward == pytest.approx(ref, abs=1e-5)


def test_reward_model_text_without_chat_template(reward_model_path):
    from rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(reward_model_path, batch_size=2)
    s = sample(prompt="Q: 2+2? ", response="A: 4")
    assert scorer.text(s).startswith("<|im_start|>user\nQ: 2+2? <|im_end|>")
    scorer.tokenizer.chat_template = None
    assert scorer.text(s) == "Q: 2+2? A: 4"
    assert isinstance(scorer.score([s])[0].reward, float)


def spread_samples(n: int = 12) -> list[Sample]:
    """Chat samples from a few tokens to a few hundred, in no order of length."""
    words = [3, 150, 10, 80, 1, 40, 120, 5, 60, 20, 100, 0]
    return [
        sample(
            prompt=f"Tell me about {i}.", response=" ".join(["word"] * words[i % len(words)] + [str(i)]), source="chat"
        )
        for i in range(n)
    ]


def test_batches_formed_by_tokens_give_the_scores_of_one_padded_batch(reward_model_path):
    from rewards.reward_model import RewardModelScorer, token_batches

    samples = spread_samples(12)
    padded = RewardModelScorer(reward_model_path, batch_size=64)  # every sample in one padded batch
    by_tokens = RewardModelScorer(reward_model_path, batch_size=4, batch_tokens=400)
    assert by_tokens.dtype == padded.dtype and str(padded.dtype) == "torch.float32"  # CPU: fp32
    one = padded.score(samples)
    many = by_tokens.score(samples)
    assert padded.stats()["batches"] == 1 and by_tokens.stats()["batches"] > 3
    assert [r.info["tokens"] for r in one] == [r.info["tokens"] for r in many]  # input order kept
    for a, b in zip(one, many, strict=True):
        assert a.reward == pytest.approx(b.reward, abs=1e-5)
    assert [r.reward for r in many] == pytest.approx(hf_scores(reward_model_path, samples), abs=1e-5)

    lengths = [r.info["tokens"] for r in one]
    batches = token_batches(lengths, 4, 400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 400)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert token_batches([5, 500, 7], 4, 100) == [[1], [2, 0]]  # a row longer than the budget is a batch alone
    assert token_batches([5, 500, 7], 2) == [[0, 1], [2]]  # rows only: input order


@pytest.fixture(scope="module")
def two_label_model(reward_model_path, tmp_path_factory) -> str:
    """A random two-label classifier (id2label bad/good) with the tiny tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(reward_model_path)
    config.id2label, config.label2id = {0: "bad", 1: "good"}, {"bad": 0, "good": 1}
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("two-label-rm")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(reward_model_path).save_pretrained(folder)
    return str(folder)


def hf_logits(model_path: str, samples: list[Sample]):
    """Every logit of a plain, unpadded forward per sample (reward_text's tokens)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rewards.reward_model import reward_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([reward_token_ids(tokenizer, s.messages, s.response_text)])).logits[0].tolist()
            for s in samples
        ]


def test_a_two_label_classifier_is_read_through_label_index_or_refused(two_label_model, reward_model_path):
    from rewards.reward_model import RewardModelScorer
    from rollout.errors import ConfigError

    samples = chat_samples(4)
    reference = hf_logits(two_label_model, samples)
    assert all(len(row) == 2 for row in reference)  # loaded with its own two labels
    for label in (0, 1):
        scorer = RewardModelScorer(two_label_model, batch_size=3, label_index=label)
        assert [r.reward for r in scorer.score(samples)] == pytest.approx([row[label] for row in reference], abs=1e-5)
    router = RewardRouter({"default": {"kind": "reward_model", "model_path": two_label_model, "label_index": 1}})
    assert [s.reward for s in router.apply(samples)] == pytest.approx([row[1] for row in reference], abs=1e-5)
    with pytest.raises(
        ConfigError, match=r"2 labels \(id2label \{'0': 'bad', '1': 'good'\}\).*reward\.routes\.<name>\.label_index"
    ):
        RewardModelScorer(two_label_model)
    with pytest.raises(ConfigError, match="label_index: 2 is out of range"):
        RewardModelScorer(two_label_model, label_index=2)
    # a one-label model: label_index 0 is its logit, any other is refused
    one = RewardModelScorer(reward_model_path, label_index=0).score(samples)
    assert [r.reward for r in one] == pytest.approx(hf_scores(reward_model_path, samples), abs=1e-5)
    with pytest.raises(ConfigError, match="label_index: 1 is out of range .* 1 label"):
        RewardModelScorer(reward_model_path, label_index=1)


def test_check_reward_model_names_the_field_and_the_fix(two_label_model, reward_model_path, tiny_llama, tmp_path):
    import subprocess
    import sys

    from rewards.reward_model import check_reward_model
    from rollout.errors import ConfigError

    field = "reward.routes.chat.model_path"
    cases = [
        (str(tmp_path / "nowhere"), None, "reward.routes.chat.model_path: '.*nowhere' does not exist"),
        (str(tmp_path), None, "has no config.json: not a Hugging Face model folder"),
        (tiny_llama, None, r"is a causal LM \(LlamaForCausalLM\).*`algorithm.name: reward_model`"),
        (two_label_model, None, r"2 labels .*'good'.*reward\.routes\.chat\.label_index \(0 to 1\)"),
        (two_label_model, 5, "reward.routes.chat.label_index: 5 is out of range"),
        (reward_model_path, 1, "reward.routes.chat.label_index: 1 is out of range"),
    ]
    for path, label, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_reward_model(path, label, field)
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(ConfigError, match=r"not a sequence-classification model .*\['BertModel'\]"):
        check_reward_model(str(tmp_path), None, field)
    for path, label in [(reward_model_path, None), (reward_model_path, 0), (two_label_model, 1)]:
        check_reward_model(path, label, field)
    # the CLI runs it before Ray starts: config.json only, torch is not imported
    code = (
        "import sys; from rewards.reward_model import check_reward_model; "
        f"check_reward_model({reward_model_path!r}, None, 'f');"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- routing, no Ray


def test_router_validates_routes_and_builds_lazily(reward_model_path):
    with pytest.raises(ValueError, match="default route"):
        RewardRouter({"math": RewardRoute()}, default="default")
    with pytest.raises(ValueError, match="unknown reward kind"):
        RewardRouter({"default": {"kind": "coin_flip"}})
    with pytest.raises(ValueError, match="needs model_path"):
        RewardRouter({"default": {"kind": "reward_model"}})

    routes = {"math": RewardRoute(timeout_s=2), "chat": {"kind": "reward_model", "model_path": reward_model_path}}
    router = RewardRouter(routes, "math")
    try:
        assert router.stats() == {}  # nothing is built before it is needed
        assert router.route_name(sample(source="chat")) == "chat"
        assert router.route_name(sample(source="never-heard-of")) == "math"
        scored = router.apply([sample("so 4", "4", source="gsm8k"), sample(r"\boxed{3}", "4", source="math")])
        assert [s.reward for s in scored] == [1.0, 0.0]
        assert [s.reward_info["route"] for s in scored] == ["math", "math"]
        assert list(router.stats()) == ["math"]  # the reward model was never loaded
        router.start()  # a reward worker's start: every route built, the grader process up
        assert sorted(router.stats()) == ["chat", "math"] and router.scorer("math").grader_pid is not None
    finally:
        router.close()


# ---------------------------------------------------------------- inside Ray workers


@pytest.fixture(scope="module")
def reward_workers(ray_cluster, reward_model_path):
    """Two RewardWorker actors with a math route (1 s time limit, also the default) and a
    reward-model route, configured from the real config classes."""
    from actors.reward import RewardWorker
    from launch.config import RewardConfig

    config = RewardConfig(
        num_workers=2,
        routes={
            "math": RewardRoute(kind="math_verify", timeout_s=1.0),
            "chat": RewardRoute(kind="reward_model", model_path=reward_model_path, batch_size=2),
        },
        default="math",
    )
    workers = [RewardWorker.remote(config.routes, config.default) for _ in range(config.num_workers)]
    yield workers
    for worker in workers:
        ray_cluster.kill(worker)


def test_verifier_in_ray_worker(ray_cluster, reward_workers):
    worker = reward_workers[0]
    before = ray_cluster.get(worker.stats.remote()).get("math", {})
    scored = ray_cluster.get(worker.score.remote([sample(r, a, source="math") for r, a, _, _ in MATH_CASES]))
    check_math_results([RewardResult(s.reward, s.reward_info) for s in scored])
    after = ray_cluster.get(worker.stats.remote())["math"]
    assert after["graded"] - before.get("graded", 0) == len(MATH_CASES)
    assert after["correct"] - before.get("correct", 0) == sum(c[2] for c in MATH_CASES)
    assert after["no_answer"] - before.get("no_answer", 0) == 2
    assert after["restarts"] == before.get("restarts", 0)  # the grader process lives across calls


def test_timeout_in_ray_worker(ray_cluster, reward_workers):
    worker = reward_workers[0]
    ray_cluster.get(worker.score.remote([sample(r"\boxed{1}", "1", source="math")]))  # worker and grader up
    before = ray_cluster.get(worker.stats.remote())["math"]
    batch = [
        sample(r"\boxed{2}", "2", source="math"),
        sample(HANGING, "5", source="math"),
        sample(r"\boxed{\frac{3}{4}}", "0.75", source="math"),
        sample(r"\boxed{3}", "4", source="math"),
    ]
    began = time.monotonic()
    scored = ray_cluster.get(worker.score.remote(batch))
    elapsed = time.monotonic() - began
    assert elapsed < 5, f"a batch with one hanging answer took {elapsed:.1f} s with a 1 s limit"
    assert [s.reward for s in scored] == [1.0, 0.0, 1.0, 0.0]
    assert scored[1].reward_info["timed_out"] is True and "longer than 1.0 s" in scored[1].reward_info["error"]
    assert not any(s.reward_info["timed_out"] for s in scored[2:])
    after = ray_cluster.get(worker.stats.remote())["math"]
    assert after["timed_out"] - before["timed_out"] == 1
    assert after["restarts"] - before["restarts"] == 1
    assert after["errors"] == before["errors"]
    # and it keeps grading correctly afterwards
    again = ray_cluster.get(worker.score.remote([sample(r, a, source="math") for r, a, _, _ in MATH_CASES]))
    check_math_results([RewardResult(s.reward, s.reward_info) for s in again])


def test_a_reward_worker_refuses_a_route_naming_it(ray_cluster, two_label_model):
    from actors.reward import RewardWorker

    worker = RewardWorker.remote({"chat": RewardRoute(kind="reward_model", model_path=two_label_model)}, "chat")
    with pytest.raises(ray_cluster.exceptions.RayActorError, match=r"reward\.routes\.chat\.label_index"):
        ray_cluster.get(worker.stats.remote(), timeout=120)


def test_reward_group_is_placed_and_a_replacement_takes_its_bundle(ray_cluster, reward_model_path):
    """Reward workers hold a placement group like the engines, a bundle each (the worker's
    CPUs); a replaced worker starts in its predecessor's bundle."""
    from actors.reward import RewardGroup
    from launch.config import RewardConfig

    cfg = RewardConfig(
        num_workers=2,
        num_cpus_per_worker=0.5,
        routes={"chat": RewardRoute(kind="reward_model", model_path=reward_model_path, batch_tokens=256)},
        default="chat",
    )
    group = RewardGroup(cfg)
    try:
        assert group.placement.ask.bundle == {"CPU": 0.5} and group.placement.ask.count == 2
        table = ray_cluster.util.placement_group_table(group.placement.group)
        assert table["state"] == "CREATED" and table["strategy"] == "PACK"
        chats = chat_samples(5)
        expected = hf_scores(reward_model_path, chats)
        assert [s.reward for s in group.score(chats)] == pytest.approx(expected, abs=1e-5)
        in_bundle = lambda obj: ray_cluster.get_runtime_context().get_placement_group_id()  # noqa: E731
        before = ray_cluster.get(group.workers[1].call.remote(in_bundle))
        group.restart(1)
        assert ray_cluster.get(group.workers[1].call.remote(in_bundle)) == before == group.placement.group.id.hex()
        assert [s.reward for s in group.score(chats)] == pytest.approx(expected, abs=1e-5)
    finally:
        group.shutdown()


def test_mixed_batch_routing_in_ray_workers(ray_cluster, reward_workers, reward_model_path):
    """Math and chat samples interleaved, split over two workers: every sample gets the reward
    of its own route, in the original order."""
    chats = chat_samples(5)
    batch = [
        sample(r"\boxed{4}", "4", source="math"),
        chats[0],
        sample("The answer is 7", "8", source="math"),
        chats[1],
        chats[2],
        sample("so 12", "12", source="unknown-source"),  # unknown source: the default route (math)
        chats[3],
        sample(r"\boxed{0.5}", r"\frac{1}{2}", source="math"),
        chats[4],
    ]
    halves = [batch[:5], batch[5:]]
    parts = ray_cluster.get([w.score.remote(h) for w, h in zip(reward_workers, halves, strict=True)])
    scored = parts[0] + parts[1]

    assert [s.response_text for s in scored] == [s.response_text for s in batch]
    routes = ["math", "chat", "math", "chat", "chat", "math", "chat", "math", "chat"]
    assert [s.reward_info["route"] for s in scored] == routes
    math_rewards = [s.reward for s in scored if s.reward_info["route"] == "math"]
    assert math_rewards == [1.0, 0.0, 1.0, 1.0]
    chat_rewards = [s.reward for s in scored if s.reward_info["route"] == "chat"]
    assert chat_rewards == pytest.approx(hf_scores(reward_model_path, chats), abs=1e-5)
    for worker in reward_workers:
        assert set(ray_cluster.get(worker.stats.remote())) == {"math", "chat"}
