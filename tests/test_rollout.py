"""Rollout engines on vLLM: records, and in-place weight updates proven against Hugging Face.

An engine loaded with tiny model A receives the weights of tiny model B (same architecture,
another seed). Afterwards its greedy outputs must equal Hugging Face greedy decoding of B token
for token, and its log-probs must match B's within LOGPROB_TOL. Tied embeddings (Llama fixture)
and untied ones (Qwen2 fixture) are both covered.
"""

from __future__ import annotations

import gc

import pytest
import torch

from launch.config import RolloutConfig
from launch.models import build_tiny_model
from learner.logprobs import token_logprobs_and_entropy
from rollout.records import Prompt

pytestmark = pytest.mark.system

LOGPROB_TOL = 1e-4  # fp32 engine vs fp32 Hugging Face forward; measured ~3e-6
MAX_NEW = 16
CFG = RolloutConfig(max_new_tokens=MAX_NEW, max_model_len=256, samples_per_prompt=3, cpu_kv_cache_gib=0.25, seed=1)
PROMPTS = [
    Prompt(id=f"p{i}", messages=[{"role": "user", "content": q}], answer=str(i), source="math")
    for i, q in enumerate(["What is 2 + 3?", "Sum of 17 and 4", "7 times 6 =", "How many apples are left?"])
]


def load_state(folder) -> list[tuple[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return list(load_file(f"{folder}/model.safetensors").items())


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def assert_matches_hf(samples, model, temperature: float = 1.0):
    """Greedy outputs are compared token for token by the caller; here: every sample's log-probs."""
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logps, _ = token_logprobs_and_entropy(model(ids).logits, ids, temperature)
        hf = logps[0, len(s.prompt_ids) :]
        assert len(s.logprobs) == len(s.response_ids) > 0
        assert (hf - torch.tensor(s.logprobs)).abs().max().item() < LOGPROB_TOL


def hf_greedy(model, prompt_ids: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, len(prompt_ids) :].tolist()


@pytest.fixture(scope="module")
def model_b_llama(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("llama-b"), "llama", tie_word_embeddings=True, seed=7))


@pytest.fixture(scope="module")
def model_b_qwen2(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("qwen2-b"), "qwen2", tie_word_embeddings=False, seed=8))


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from rollout.engine import RolloutEngine

    eng = RolloutEngine(tiny_llama, CFG)
    yield eng
    del eng
    gc.collect()


def test_samples_are_complete_records(engine, tiny_llama):
    samples = engine.generate(PROMPTS[:2])
    assert len(samples) == 2 * CFG.samples_per_prompt
    assert [s.prompt_id for s in samples] == ["p0"] * 3 + ["p1"] * 3
    tok = engine.tokenizer
    for s in samples:
        assert s.policy_version == 0 and s.source == "math" and s.answer in ("0", "1")
        assert s.finish_reason in ("stop", "length") and 0 < s.response_len <= MAX_NEW
        assert tok.decode(s.prompt_ids).startswith("<|im_start|>user\n") and s.prompt_text in tok.decode(s.prompt_ids)
    assert_matches_hf(samples, hf_model(tiny_llama))
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] == 0, "a CPU engine compiles nothing (~4 s at its first generation)"


def test_seeded_batch_larger_than_one_engine_step(engine):
    """More prompt tokens than one engine step takes (4096): on CPU, chunked prefill of a seeded
    request crashed the engine ("CPU Generator does not use offset"). Seeded outputs repeat."""
    long = [Prompt(id=f"l{i}", messages=[{"role": "user", "content": f"What is {i} + {i}? " * 12}]) for i in range(60)]
    first = engine.generate(long, n=2, seed=5, max_tokens=4)
    assert sum(len(s.prompt_ids) for s in first) > 4096 and len(first) == 120
    again = engine.generate(long[:3], n=2, seed=5, max_tokens=4)
    assert [s.response_ids for s in again] == [s.response_ids for s in first[:6]]


def test_weight_update_matches_hf_greedy_of_new_weights(engine, tiny_llama, model_b_llama):
    """Tied embeddings: the CPU backend's prepacked lm_head must follow the new embedding."""
    before = engine.generate(PROMPTS, n=1, temperature=0)
    checksum_a = engine.weights_checksum()
    # Two buckets, loaded as they arrive (a streaming transport's session).
    state = load_state(model_b_llama)
    engine.begin_weight_update()
    assert engine.load_weights(state[:7]) == 7
    assert engine.finish_weight_update(version=5, expected=engine.load_weights(state[7:])) == len(state)

    after = engine.generate(PROMPTS, n=1, temperature=0)
    model_b = hf_model(model_b_llama)
    assert [s.response_ids for s in after] == [hf_greedy(model_b, s.prompt_ids) for s in after]
    assert [s.response_ids for s in after] != [s.response_ids for s in before], "A and B must differ"
    assert all(s.policy_version == 5 for s in after)
    assert engine.weights_checksum() != checksum_a
    assert_matches_hf(after, model_b)
    assert_matches_hf(engine.generate(PROMPTS[:2], temperature=0.7), model_b, temperature=0.7)

    # And back to A: the update is repeatable and exact both ways.
    engine.update_weights(load_state(tiny_llama), version=6)
    assert engine.weights_checksum() == checksum_a
    assert [s.response_ids for s in engine.generate(PROMPTS, n=1, temperature=0)] == [s.response_ids for s in before]


def test_incomplete_update_is_refused_until_a_whole_one_loads(engine, tiny_llama, model_b_llama):
    """Buckets load as they arrive, so an update cut short leaves some layers new: the engine keeps
    its version, refuses to generate, and is whole again after a complete update."""
    version = engine.policy_version
    engine.begin_weight_update()
    engine.load_weights(load_state(model_b_llama)[:3])
    with pytest.raises(Exception, match="incomplete: 3 of 20"):
        engine.finish_weight_update(version=9, expected=20)
    assert engine.policy_version == version
    with pytest.raises(RuntimeError, match="did not complete"):
        engine.generate(PROMPTS[:1], n=1, temperature=0)
    engine.update_weights(load_state(tiny_llama), version=10)
    model_a = hf_model(tiny_llama)
    after = engine.generate(PROMPTS, n=1, temperature=0)
    assert [s.response_ids for s in after] == [hf_greedy(model_a, s.prompt_ids) for s in after]


def test_tensors_are_serialized_as_their_bytes_without_a_copy():
    from actors.common import _tensor_bytes, _tensor_from_bytes

    for t in (
        torch.randn(3, 5),
        torch.randn(4, 2).to(torch.bfloat16),
        torch.arange(6),
        torch.tensor(True),
        torch.randn(6, 4).t(),
        torch.tensor(2.5),
    ):
        data, dtype, shape = state = _tensor_bytes(t)
        back = _tensor_from_bytes(state)
        assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)
        assert back.data_ptr() == data.ctypes.data  # the reader's tensor is a view of the stored bytes
        if t.is_contiguous():
            assert data.ctypes.data == t.data_ptr()  # and the writer's bytes are the tensor's own


def test_weight_update_through_ray_actors(ray_cluster, tiny_qwen2, model_b_qwen2):
    """Two workers (untied Qwen2) behind RolloutGroup; the object-store transport, with the
    tensors put as the learner puts them (``serialize_tensors_zero_copy``)."""
    import ray

    from actors.common import serialize_tensors_zero_copy
    from actors.rollout import RolloutGroup

    group = RolloutGroup(tiny_qwen2, CFG.model_copy(update={"num_workers": 2, "num_cpus_per_worker": 1}))
    try:
        checksums_a = group.weights_checksums()
        serialize_tensors_zero_copy()
        try:
            group.update_weights(load_state(model_b_qwen2), version=3)
        finally:
            ray.util.deregister_serializer(torch.Tensor)
        samples = group.generate(PROMPTS, n=1, temperature=0)
        assert [s.prompt_id for s in samples] == [p.id for p in PROMPTS]  # spread over 2 workers, order kept
        model_b = hf_model(model_b_qwen2)
        assert [s.response_ids for s in samples] == [hf_greedy(model_b, s.prompt_ids) for s in samples]
        assert all(s.policy_version == 3 for s in samples)
        assert_matches_hf(samples, model_b)
        checksums_b = group.weights_checksums()
        assert checksums_b[0] == checksums_b[1] and checksums_b != checksums_a
    finally:
        group.shutdown()
