"""Memory of ZeRO-3 ranks at load, at a push's export and at a save, against the model's size.

Two real DeepSpeed ranks (ZeRO-3, gloo, one process each, as ``LearnerRank``) on CPU, where the
device is the host: a thread in each rank samples its anonymous resident memory (``RssAnon`` of
/proc/self/status: what the process allocated, not the model file's page-cache pages that a load
maps) every millisecond, and each phase's figure is the peak above the level before the phase
(for an export and a save, of the memory less the output rank 0 has finished copying by then: a
copy in progress counts as extra).
So that resident memory follows what is allocated, the ranks run with glibc's malloc mapping every
block of 64 KiB or more on its own and unmapping it when freed (``MALLOC_MMAP_THRESHOLD_``; by default
it keeps freed blocks of up to 32 MB in its heap, which hid a phase's peak or showed one that was not
there), and ``malloc_trim`` hands back the rest before each phase. The phases, each the learner's
own code:

- load: ``LearnerRank(...)`` with a reference model, with ``deepspeed.zero.Init`` (the learner's
  ``sharded_loading``) and without it (the same code with ``sharded_loading`` a no-op: every rank
  loads the whole model, DeepSpeed partitions it at initialize), each in fresh processes: each
  ``from_pretrained`` alone (what a rank holds of the model it loads), then the whole start with
  DeepSpeed's engines (ZeRO-3 keeps the partitions, their fp32 master copy and a gradient buffer
  of a partition's size: 3 half-models a rank here, and the reference's half). The rank's
  first-step reservation of gradients and AdamW moments (``reserve_memory``) is left out of both;
- export: ``host_weights()``, the gather loop of an export for a push (``export_weights`` then
  stores it): rank 0 ends with the whole model on the host (the output, which an object-store
  push ships); the extra is the peak beyond that output. The other rank keeps nothing;
- collective push: ``actors.weight_sync._send``'s gather loop without a broadcast group (each
  parameter gathered, copied by ``named_full_weights`` and handed on, nothing kept): any memory
  here is extra;
- save: ``save_hf(folder)``: rank 0 writes the Hugging Face folder from its host copy (the output),
  the other rank keeps nothing.

Figures are in MB and as ratios to the model's size and to its largest parameter (the most a
gather of one parameter holds whole).

    python bench/push_memory.py --model smollm2
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import torch
from common import machine, print_table

MB = 1e6


class Sampler:
    """Peaks of this process's RssAnon (what it allocated) and VmRSS (that and the file pages it
    maps, e.g. a checkpoint's) since ``start``, sampled every millisecond by a thread."""

    def __init__(self) -> None:
        self.peak, self.peak_rss = self.now(), self.now("VmRSS")
        self.running = True
        threading.Thread(target=self._loop, daemon=True).start()

    @staticmethod
    def now(field: str = "RssAnon") -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024

    kept = 0  # bytes of output the phase has finished so far (counted out of the RssAnon peak)

    def _loop(self) -> None:
        while self.running:
            self.sample()
            time.sleep(0.001)

    def sample(self) -> None:
        self.peak, self.peak_rss = max(self.peak, self.now() - self.kept), max(self.peak_rss, self.now("VmRSS"))

    def start(self) -> tuple[int, int]:
        """Collect garbage, hand freed memory back to the kernel, reset the peaks and the output;
        returns the levels now."""
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.kept = 0
        self.peak, self.peak_rss = self.now(), self.now("VmRSS")
        return self.peak, self.peak_rss

    def extra(self, levels: tuple[int, int]) -> int:
        """The peak of RssAnon less the output finished by then, above ``levels``."""
        time.sleep(0.005)  # one more sample
        self.sample()
        return self.peak - levels[0]

    def extra_rss(self, levels: tuple[int, int]) -> int:
        """The peak VmRSS above ``levels``."""
        return max(self.peak_rss, self.now("VmRSS")) - levels[1]


def rank_main(rank: int, port: int, model: str, zero_init: bool, out: str, dtype: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import learner.trainer as trainer
    from launch.config import LearnerConfig

    sampler = Sampler()
    trainer.reserve_memory = lambda nbytes: None  # the first step's memory is not the load's
    if not zero_init:
        trainer.sharded_loading = lambda config: contextlib.nullcontext()
    cfg = LearnerConfig(num_ranks=2, zero_stage=3, cpu_threads=1)
    import deepspeed  # noqa: F401  (imported before the load's level: its memory is not the model's)
    from transformers import AutoModelForCausalLM

    loads, inner = [], Sampler()
    original = AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):  # the model loads alone (policy, reference): their own peaks
        levels = inner.start()
        built = original(cls, *args, **kwargs)
        loads.append((inner.extra(levels), inner.extra_rss(levels), inner.start()[0] - levels[0]))
        return built

    AutoModelForCausalLM.from_pretrained = classmethod(from_pretrained)
    level = sampler.start()
    settings = types.SimpleNamespace(dtype=dtype, attn_implementation="auto", trust_remote_code=False)
    learner = trainer.LearnerRank(model, cfg, rank, 2, "127.0.0.1", port, needs_reference=True, model=settings)
    figures = {"load": sampler.extra(level), "load_rss": sampler.extra_rss(level), "loads": loads}
    figures["load_kept"] = sampler.start()[0] - level[0]
    if zero_init:
        from actors.weight_sync import _send

        gathered = learner.gathered_weights

        def counted(engine=None):  # host_weights' loop: rank 0's copy of a parameter is output once it is done
            for name, tensor, partitioned in gathered(engine):
                yield name, tensor, partitioned
                sampler.kept += tensor.numel() * tensor.element_size() if rank == 0 else 0

        learner.gathered_weights = counted

        level = sampler.start()
        weights = learner.host_weights()
        figures["export"] = sampler.extra(level) + sampler.kept  # the table shows the output apart
        figures["export_output"] = sum(t.numel() * t.element_size() for t in (weights or {}).values())
        del weights
        level = sampler.start()
        learner.gathered_weights = gathered
        _send(learner, False)
        figures["send"] = sampler.extra(level)
        learner.gathered_weights = counted
        with tempfile.TemporaryDirectory() as folder:
            level = sampler.start()
            learner.save_hf(os.path.join(folder, "hf"))
            figures["save"] = sampler.extra(level) + sampler.kept
            if rank == 0:
                figures["save_output"] = sum(f.stat().st_size for f in Path(folder, "hf").glob("*.safetensors"))
    Path(out, f"{'init' if zero_init else 'plain'}-{rank}.json").write_text(json.dumps(figures))
    sampler.running = False


def model_sizes(path: str) -> tuple[int, int, str]:
    """The model's elements (each parameter once), its largest parameter's elements and name, read
    from the checkpoint's headers (safetensors), without loading the tensors."""
    from safetensors import safe_open

    sizes = {}
    for file in Path(path).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                sizes[name] = math.prod(f.get_slice(name).get_shape())
    largest = max(sizes, key=sizes.get)
    return sum(sizes.values()), sizes[largest], largest


def build_deep(folder: Path) -> str:
    """A random (seeded) Llama of 12 layers, hidden size 1024 and a 512-token vocabulary, saved in
    fp32: its largest parameter (an MLP matrix, 8.4 MB) is 2% of it, where SmolLM2's embedding is 21%."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=512,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model",
        default="smollm2",
        help="smollm2, tiny-llama, deep (a random 12-layer Llama with a "
        "512-token vocabulary, ~430 MB fp32: no parameter near the model's size) or a Hugging Face folder",
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the models' dtype on the ranks (model.dtype; bfloat16: a GPU learner's default)",
    )
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch.multiprocessing as mp

    from actors.placement import free_port
    from launch.models import resolve_model

    print(machine())
    scratch = tempfile.TemporaryDirectory()
    path = build_deep(Path(scratch.name, "deep")) if args.model == "deep" else resolve_model(args.model)
    numel, largest_numel, name = model_sizes(path)
    size = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    total, largest = numel * size, largest_numel * size
    results = {}
    os.environ.update(MALLOC_MMAP_THRESHOLD_=str(64 * 1024), MALLOC_TRIM_THRESHOLD_=str(64 * 1024))  # for the ranks
    with tempfile.TemporaryDirectory() as out:
        for zero_init in (True, False):
            mp.spawn(rank_main, args=(free_port(), path, zero_init, out, args.dtype), nprocs=2)
        for file in Path(out).glob("*.json"):
            results[file.stem] = json.loads(file.read_text())
    print(f"{args.model} in {args.dtype}: {total / MB:.0f} MB of parameters; largest {name}, {largest / MB:.1f} MB")
    init, plain = [results[f"init-{r}"] for r in (0, 1)], [results[f"plain-{r}"] for r in (0, 1)]

    def load_row(what: str, how: str, rank: int, peak: int, mapped: int, kept: int) -> list:
        return [what, how, rank, peak / MB, peak / total, peak / largest, mapped / MB, kept / MB, kept / total]

    rows = []
    for r in (0, 1):
        for i, model_name in enumerate(("policy", "reference")):
            for how, runs in (("zero.Init", init), ("none", plain)):
                rows.append(load_row(f"from_pretrained of the {model_name}", how, r, *runs[r]["loads"][i]))
        for how, runs in (("zero.Init", init), ("none", plain)):
            rows.append(
                load_row(
                    "LearnerRank start (both loads, DeepSpeed's engines)",
                    how,
                    r,
                    runs[r]["load"],
                    runs[r]["load_rss"],
                    runs[r]["load_kept"],
                )
            )
    print_table(
        f"ZeRO-3, 2 ranks on CPU, {args.model} in {args.dtype}: a rank's memory at load, above the start",
        [
            "load",
            "zero.Init",
            "rank",
            "peak allocated MB",
            "/ model",
            "/ largest param",
            "peak with mapped checkpoint pages MB",
            "allocated after MB",
            "after / model",
        ],
        rows,
    )

    def row(what: str, rank: int, nbytes: int, output: int = 0) -> list:
        extra = nbytes - output
        return [what, rank, nbytes / MB, output / MB, extra / MB, extra / total, extra / largest]

    rows = []
    for r in (0, 1):
        rows.append(row("export for a push: host_weights()", r, init[r]["export"], init[r]["export_output"]))
        rows.append(row("collective push: _send's gather loop", r, init[r]["send"]))
        rows.append(row("save_hf", r, init[r]["save"], init[r].get("save_output", 0)))
    print_table(
        f"ZeRO-3, 2 ranks on CPU, {args.model} in {args.dtype}: peak memory of a push's export and a save",
        ["phase", "rank", "peak MB", "output MB", "extra MB", "extra / model", "extra / largest param"],
        rows,
    )


if __name__ == "__main__":
    main()
