"""Weight sync: seconds to push the learner's weights to 1 and 2 rollout engines, per transport.

Built as the Driver builds them (launch/train.py): a ``LearnerGroup`` (one DeepSpeed rank), a
``RolloutGroup`` of 1 or 2 engines and ``make_transport(kind, ...)`` for kind "gloo" and
"object_store"; a push is ``transport.push(learners, rollouts, version)`` (median of ``--repeat``
after a warm-up). The baseline is an in-process memory copy of the same bytes (the model's fp32
parameters, each ``dst.copy_(src)`` into a preallocated buffer, one thread, timed before and after
the pushes: the quicker counts); the ratio push / copy has a goal of 3x. A second table splits one
instrumented push into its phases (learner export or broadcast, object store, the engine's
loading bucket by bucket and its finish): the same calls as a push, with timers in between. A
third table gives each engine process's peak extra anonymous resident memory during that push
(its own allocations, sampled every millisecond; the object store's pages it maps are shared and
not counted), against the model's size and the bucket's (``--bucket-mib``):
the engine loads what arrives as it arrives, so this is about a bucket and a layer, not a model.

    python bench/weight_sync.py --model smollm2 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from common import machine, print_table, timed

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
    weights = learner.export_weights()
    return weights, time.perf_counter() - t0


class PeakAnon:
    """The peak of this process's anonymous resident memory (RssAnon: its own allocations, not the
    object store's shared pages it maps), sampled every millisecond while the block runs, less
    the value before it."""

    def __enter__(self):
        import threading

        self.before = self.peak = self.read()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.001):
            self.peak = max(self.peak, self.read())

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.read())

    @property
    def extra(self) -> int:
        return self.peak - self.before

    @staticmethod
    def read() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def _receive_object_store(engine, stored: list, version: int, bucket_bytes: int) -> dict[str, float]:
    """``RolloutWorker.update_weights`` of the learner's stored buckets (what ``ObjectStoreTransport``
    calls: each bucket fetched from the object store as it is loaded), timed, with the engine
    process's peak extra memory. ``bucket_bytes`` is the learner's (``BUCKET_BYTES``) here."""
    with PeakAnon() as memory:
        t0 = time.perf_counter()
        engine.update_weights(stored, version)
    return {
        "fetch and load bucket by bucket, finish": time.perf_counter() - t0,
        "peak extra resident bytes": memory.extra,
    }


def _send_timed(learner, version: int) -> dict[str, float]:
    """``weight_sync._send`` on rank 0, timed (the gathers and broadcasts as one)."""
    from actors.weight_sync import _send

    t0 = time.perf_counter()
    _send(learner, True, version, keep=True)
    return {"gather, broadcast and keep every tensor": time.perf_counter() - t0}


def _receive_gloo(engine, meta: list, version: int, bucket_bytes: int) -> dict[str, float]:
    """``RolloutEngine.receive_weights`` timed, and the engine's peak extra resident memory."""
    with PeakAnon() as memory:
        t0 = time.perf_counter()
        engine.receive_weights(meta, version, bucket_bytes)
    return {
        "receive and load bucket by bucket, finish": time.perf_counter() - t0,
        "peak extra resident bytes": memory.extra,
    }


def breakdown(kind: str, transport, learners, rollouts, version: int, bucket_bytes: int) -> list[tuple[str, float]]:
    """One push of ``kind`` with its phases timed. Engine phases: the slowest engine's (memory: the largest)."""
    import ray

    t0 = time.perf_counter()
    if kind == "object_store":
        stored, t_export = ray.get(learners.workers[0].call.remote(_export_timed))
        phases = [
            ("learner: export_weights (into the object store)", t_export),
            ("learner: the call and its return", time.perf_counter() - t0 - t_export),
        ]
        engines = ray.get(
            [w.call.remote(_receive_object_store, stored, version, bucket_bytes) for w in rollouts.workers]
        )
    else:
        send = learners.workers[0].call.remote(_send_timed, version)
        receives = [w.call.remote(_receive_gloo, transport.meta, version, bucket_bytes) for w in rollouts.workers]
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
    ap.add_argument(
        "--bucket-mib",
        type=float,
        default=256,
        help="the instrumented gloo push's bucket size "
        "(an object-store push comes in the learner's buckets, rollout.records.BUCKET_BYTES)",
    )
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
    from rollout.records import BUCKET_BYTES

    path = resolve_model(args.model)
    print(machine(), flush=True)
    # The copy is timed before and after the pushes (the quicker counts): on a shared machine one
    # of the two may fall in a busy moment.
    t_copy, nbytes = copy_baseline(path, max(20, args.repeat))
    print(
        f"model {args.model}: {nbytes / 1e6:.1f} MB of fp32 parameters; in-process copy {t_copy * 1e3:.1f} ms",
        flush=True,
    )

    cfg = SyncRLConfig()
    cfg.rollout.cpu_kv_cache_gib = args.kv_gib
    rows = [[args.model, "-", "in-process copy (dst.copy_(src))", t_copy, nbytes / t_copy / 1e9, 1.0]]
    parts: list[list] = []
    memory: list[list] = []
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=args.verbose,
        _temp_dir=tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"),
    )
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
                    for phase, value in breakdown(
                        kind, transport, learners, rollouts, version, int(args.bucket_mib * 2**20)
                    ):
                        if phase.endswith("bytes"):  # memory: against the model's bytes and the bucket's
                            mib = args.bucket_mib if kind == "gloo" else BUCKET_BYTES / 2**20  # the learner's buckets
                            memory.append(
                                [args.model, engines, kind, mib, value / 1e6, value / nbytes, value / (mib * 2**20)]
                            )
                        else:
                            parts.append([args.model, engines, kind, phase, value, value / t_copy])
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
        report(args.model, nbytes, rows, parts, memory)  # what finished, even after a failure


def rescale(rows: list[list], parts: list[list], old: float, new: float, nbytes: int) -> tuple[list, list]:
    """The tables with ``new`` as the copy time."""
    rows = [[*rows[0][:3], new, nbytes / new / 1e9, 1.0]] + [[*r[:5], r[3] / new] for r in rows[1:]]
    parts = [[*p[:5], p[4] / new] for p in parts]
    return rows, parts


def report(model: str, nbytes: int, rows: list[list], parts: list[list], memory: list[list]) -> None:
    print_table(
        f"Weight sync, {model} ({nbytes / 1e6:.0f} MB fp32)",
        ["model", "engines", "transport", "s/push (median)", "GB/s", "ratio vs copy"],
        rows,
    )
    if parts:
        print_table(
            f"Where one push's time goes, {model} (engine rows: the slowest engine)",
            ["model", "engines", "transport", "phase", "seconds", "x copy time"],
            parts,
        )
    if memory:
        print_table(
            f"An engine's peak extra resident memory during one push, {model} (the largest engine's)",
            ["model", "engines", "transport", "bucket MiB", "extra MB", "x model", "x bucket"],
            memory,
        )


if __name__ == "__main__":
    main()
