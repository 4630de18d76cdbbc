"""How a rank loads a model folder: the dtype, the attention implementation and the other
``from_pretrained`` arguments of the model settings (``model.*``), for the policy, the reference,
the value model and the reward model alike."""

from __future__ import annotations

import torch

from rollout.settings import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_dtype(setting: str, gpu: bool) -> torch.dtype:
    """``model.dtype``: "auto" is bf16 on GPU, fp32 on CPU (CPUs without AVX-512 bf16 run bf16 ~8x
    slower); an explicit dtype is used as given."""
    if setting == "auto":
        return torch.bfloat16 if gpu else torch.float32
    return DTYPES[setting]


def attn_implementation(setting: str, gpu: bool, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """``model.attn_implementation`` for Hugging Face ``from_pretrained``: "auto" is
    flash_attention_2 on GPU when flash_attn imports and the model runs in bf16 or fp16 (flash
    attention has no fp32 kernels), else None (transformers' default: sdpa where the model has
    it). An explicit flash_attention_2 that cannot run here is an error."""
    half = dtype in (torch.bfloat16, torch.float16)
    if setting == "auto":
        return "flash_attention_2" if gpu and half and _has_flash_attn() else None
    if setting == "flash_attention_2" and not gpu:
        raise ValueError(
            "model.attn_implementation=flash_attention_2 needs a CUDA GPU, and this learner rank has none: "
            "set model.attn_implementation to auto, sdpa or eager"
        )
    if setting == "flash_attention_2" and not half:
        raise ValueError(
            f"model.attn_implementation=flash_attention_2 runs bf16 or fp16 only, and model.dtype gives "
            f"{str(dtype).removeprefix('torch.')}: set model.dtype to bfloat16 (or auto) or the attention to "
            "auto, sdpa or eager"
        )
    if setting == "flash_attention_2" and not _has_flash_attn():
        raise ValueError(
            "model.attn_implementation=flash_attention_2, but the flash_attn package does not import on "
            "this node: install it (pip install flash-attn) or set model.attn_implementation to auto, "
            "sdpa or eager"
        )
    return setting


def load_kwargs(model: ModelConfig | None, gpu: bool) -> dict:
    """The ``from_pretrained`` keyword arguments of the model settings (None: the defaults, every
    setting "auto" and no remote code) for the policy, the reference and the value model."""
    model = model or ModelConfig()
    load = dict(dtype=model_dtype(model.dtype, gpu), trust_remote_code=model.trust_remote_code)
    attn = attn_implementation(model.attn_implementation, gpu, load["dtype"])
    if attn is not None:
        load["attn_implementation"] = attn
    return load


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True
