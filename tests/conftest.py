"""Shared fixtures: tiny models are built once per test session into a temporary folder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A random tiny Llama with tied embeddings and a locally built tokenizer (HF folder)."""
    from launch.models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", tie_word_embeddings=True, seed=0))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    """A random tiny Qwen2 (untied embeddings), a different seed from tiny_llama."""
    from launch.models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", tie_word_embeddings=False, seed=1))


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray cluster for the whole test session (never attaches to another one)."""
    import tempfile

    import ray

    temp_dir = tempfile.mkdtemp(prefix="syncrl-ray-", dir="/tmp")  # short: Ray's socket paths are limited
    ray.init(address="local", num_cpus=8, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> str:
    """A random tiny sequence classifier (one score per text) sharing the tiny tokenizer."""
    from launch.models import build_tiny_reward_model

    return str(build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"), seed=0))
