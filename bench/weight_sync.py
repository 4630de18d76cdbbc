"""Weight sync: seconds to push the learner's weights to 1 and 2 rollout engines, per transport.

Built as the Driver builds them (launch/train.py): a ``LearnerGroup`` (one DeepSpeed rank), a
``RolloutGroup`` of 1 or 2 engines and ``make_transport(kind, ...)`` for kind "gloo" and
"object_store"; a push is ``transport.push(learners, rollouts, version)`` (median of ``--repeat``
after a warm-up). The baseline is an in-process memory copy of the same bytes (the model's fp32
parameters, each ``dst.copy_(src)`` into a preallocated buffer, one thread, timed before and after
the pushes: the quicker counts); the ratio push / copy has a goal of 3x. A second table splits one
instrumented push into its phases (learner export or broadcast, object store, the engine's
staging, ``reload_weights`` and the lm_head repack): the same library calls as a push, run one
after the other with timers in between.

    python bench/weight_sync.py --model smollm2 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from common import machine, print_table, timed

import torch

TRANSPORTS = ("gloo", "object_store")


# -- the copy baseline -------------------------------------------------------------------------
def copy_baseline(path: str, repeat: int) -> tuple[float, int]:
    """Median seconds to copy every parameter into a preallocated buffer, and the bytes."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    src = [p.detach() for _, p in model.named_parameters()]  # tied weights once, as the learner sends them
    dst = [torch.empty_like(t) for t in src]
    nbytes = sum(t.numel() * t.element_size() for t in src)

    def copy() -> None:
        for d, s in zip(dst, src):
            d.copy_(s)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: as fast here, and not stalled when a busy machine deschedules a second
    try:
        t, _ = timed(copy, repeat)
    finally:
        torch.set_num_threads(threads)
    return t, nbytes


# -- instrumented pushes: code run inside the actors (through ActorMixin.call) -----------------
def _export_timed(learner) -> tuple[list | None, float]:
    t0 = time.perf_counter()
    weights = learner.export_weights(-1)
    return weights, time.perf_counter() - t0


def _load_timed(worker, expected: int) -> dict[str, float]:
    """``WeightUpdateExtension.syncrl_load_staged`` with a timer between its two steps."""
    worker = getattr(worker, "worker", worker)  # a callable gets vLLM's wrapper; the extension is on its worker
    staged = worker.__dict__.pop("_syncrl_staged", {})
    if len(staged) != expected:
        raise RuntimeError(f"{len(staged)} of {expected} tensors staged")
    t0 = time.perf_counter()
    worker.model_runner.reload_weights(weights_iterator=list(staged.items()))
    t1 = time.perf_counter()
    lm_head = getattr(worker.model_runner.get_model(), "lm_head", None)
    if worker.device.type == "cpu" and lm_head is not None:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
    return {"reload_weights": t1 - t0, "lm_head repack": time.perf_counter() - t1}


def _finish_timed(engine, version: int, expected: int) -> dict[str, float]:
    """``RolloutEngine.finish_weight_update`` with timers."""
    out = engine.llm.collective_rpc(_load_timed, args=(expected,))[0]
    t0 = time.perf_counter()
    engine.llm.reset_prefix_cache()
    engine.policy_version = version
    out["reset_prefix_cache"] = time.perf_counter() - t0
    return out


def _receive_object_store(engine, refs: list, version: int) -> dict[str, float]:
    """``RolloutEngine.update_weights`` of a ref (what ``ObjectStoreTransport`` calls), timed."""
    import ray

    t0 = time.perf_counter()
    weights = ray.get(refs[0])
    t1 = time.perf_counter()
    staged = engine.stage_weights(weights)
    t2 = time.perf_counter()
    out = {"ray.get of the weights (fetch, deserialize)": t1 - t0, "stage_weights": t2 - t1}
    return out | _finish_timed(engine, version, staged)


def _send_timed(learner) -> dict[str, float]:
    """``weight_sync._send(learner, True)`` on rank 0, timed."""
    times = {"iterate named_full_weights": 0.0, "broadcast (send)": 0.0}
    sent = []
    t = time.perf_counter()
    for name, tensor in learner.named_full_weights():
        t1 = time.perf_counter()
        learner.weight_group.broadcast(tensor.contiguous(), 0).wait()
        sent.append((name, tensor))
        times["iterate named_full_weights"] += t1 - t
        times["broadcast (send)"] += time.perf_counter() - t1
        t = time.perf_counter()
    learner.keep_weights(-1, sent)
    times["keep the pushed weights (into the object store)"] = time.perf_counter() - t
    return times


def _receive_gloo(engine, meta: list, version: int) -> dict[str, float]:
    """``weight_sync._receive`` with timers."""
    from actors.weight_sync import BUCKET_BYTES

    times = {"broadcast (receive, incl. waiting for the sender)": 0.0, "stage_weights": 0.0}
    bucket, size, staged = [], 0, 0
    for name, shape, dtype in meta:
        t0 = time.perf_counter()
        tensor = torch.empty(shape, dtype=getattr(torch, dtype))
        engine.weight_group.broadcast(tensor, 0).wait()
        t1 = time.perf_counter()
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= BUCKET_BYTES:
            staged = engine.stage_weights(bucket)
            bucket, size = [], 0
        times["broadcast (receive, incl. waiting for the sender)"] += t1 - t0
        times["stage_weights"] += time.perf_counter() - t1
    if bucket:
        t0 = time.perf_counter()
        staged = engine.stage_weights(bucket)
        times["stage_weights"] += time.perf_counter() - t0
    return times | _finish_timed(engine, version, staged)


def breakdown(kind: str, transport, learners, rollouts, version: int) -> list[tuple[str, float]]:
    """One push of ``kind`` with its phases timed. Engine phases: the slowest engine's."""
    import ray

    t0 = time.perf_counter()
    if kind == "object_store":
        stored, t_export = ray.get(learners.workers[0].call.remote(_export_timed))
        phases = [("learner: export_weights (into the object store)", t_export),
                  ("learner: the call and its return", time.perf_counter() - t0 - t_export)]  # fmt: skip
        engines = ray.get([w.call.remote(_receive_object_store, [stored], version) for w in rollouts.workers])
    else:
        send = learners.workers[0].call.remote(_send_timed)
        receives = [w.call.remote(_receive_gloo, transport.meta, version) for w in rollouts.workers]
        sent, *engines = ray.get([send, *receives])
        phases = [(f"learner: {k}", v) for k, v in sent.items()]
    total = time.perf_counter() - t0
    phases += [(f"engine: {k}", max(e[k] for e in engines)) for k in engines[0]]
    return phases + [("total (instrumented push)", total)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="tiny-llama, smollm2 or a Hugging Face folder")
    ap.add_argument("--engines", type=int, nargs="+", default=[1, 2], help="rollout engine counts")
    ap.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS)
    ap.add_argument("--repeat", type=int, default=3, help="timed pushes per case (after one warm-up)")
    ap.add_argument("--kv-gib", type=float, default=0.5, help="KV cache per engine (rollout.cpu_kv_cache_gib)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the instrumented push")
    ap.add_argument("--verbose", action="store_true", help="show the Ray workers' logs")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    from actors.learner import LearnerGroup
    from actors.rollout import RolloutGroup
    from actors.weight_sync import make_transport
    from launch.config import SyncRLConfig, engine_settings
    from launch.models import resolve_model

    path = resolve_model(args.model)
    print(machine(), flush=True)
    # The copy is timed before and after the pushes (the quicker counts): on a shared machine one
    # of the two may fall in a busy moment.
    t_copy, nbytes = copy_baseline(path, max(20, args.repeat))
    print(f"model {args.model}: {nbytes / 1e6:.1f} MB of fp32 parameters; in-process copy {t_copy * 1e3:.1f} ms", flush=True)

    cfg = SyncRLConfig()
    cfg.rollout.cpu_kv_cache_gib = args.kv_gib
    rows = [[args.model, "-", "in-process copy (dst.copy_(src))", t_copy, nbytes / t_copy / 1e9, 1.0]]
    parts: list[list] = []
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=args.verbose,
             _temp_dir=tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))  # fmt: skip
    learners = rollouts = None
    try:
        learners = LearnerGroup(path, cfg.learner, model=cfg.model)
        version = 0
        for engines in args.engines:
            cfg.rollout.num_workers = engines
            rollouts = RolloutGroup(path, engine_settings(cfg))
            for kind in args.transports:
                transport = make_transport(kind, learners, rollouts)

                def push() -> None:
                    nonlocal version
                    version += 1
                    transport.push(learners, rollouts, version)

                t, times = timed(push, args.repeat)
                print(f"{engines} engine(s), {kind}: " + " ".join(f"{x:.3f}" for x in times) + " s", flush=True)
                rows.append([args.model, engines, kind, t, nbytes / t / 1e9, t / t_copy])
                if not args.no_breakdown:
                    version += 1
                    for phase, seconds in breakdown(kind, transport, learners, rollouts, version):
                        parts.append([args.model, engines, kind, phase, seconds, seconds / t_copy])
            rollouts.shutdown()
            rollouts = None
    finally:
        for group in (rollouts, learners):
            if group is not None:
                group.shutdown()
        ray.shutdown()
        t_after, _ = copy_baseline(path, max(20, args.repeat))
        print(f"in-process copy after the pushes {t_after * 1e3:.1f} ms", flush=True)
        if t_after < t_copy:
            rows, parts = rescale(rows, parts, t_copy, t_after, nbytes)
        report(args.model, nbytes, rows, parts)  # what finished, even after a failure


def rescale(rows: list[list], parts: list[list], old: float, new: float, nbytes: int) -> tuple[list, list]:
    """The tables with ``new`` as the copy time."""
    rows = [[*rows[0][:3], new, nbytes / new / 1e9, 1.0]] + [[*r[:5], r[3] / new] for r in rows[1:]]
    parts = [[*p[:5], p[4] / new] for p in parts]
    return rows, parts


def report(model: str, nbytes: int, rows: list[list], parts: list[list]) -> None:
    print_table(f"Weight sync, {model} ({nbytes / 1e6:.0f} MB fp32)",
                ["model", "engines", "transport", "s/push (median)", "GB/s", "ratio vs copy"], rows)  # fmt: skip
    if parts:
        print_table(f"Where one push's time goes, {model} (engine rows: the slowest engine)",
                    ["model", "engines", "transport", "phase", "seconds", "x copy time"], parts)  # fmt: skip


if __name__ == "__main__":
    main()
