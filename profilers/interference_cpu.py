"""Interference measured on the real device of these machines: zoo models in torch on the CPU.

Estimate: each (model, batch) runs alone, then every pair runs at once, each on its own thread
with one intra-op thread (two model processes sharing the socket: they contend for caches and
DRAM bandwidth, the CPU's counterpart of a GPU's memory interference). Demands come from the
model's own counts over what the machine can do, both measured here:

    c = FLOPs / latency / peak_flops       (peak: a large fp32 matmul)
    m = bytes / latency / peak_bandwidth   (peak: a large tensor copy)

The samples have the same features as ``interference.py``'s, so the same ``fit`` and
``evaluate`` apply, and the held-out pairs are scored the same way.
"""
from __future__ import annotations

import itertools
import random
import statistics
import threading
import time

from profilers.interference import FEATURES, evaluate, fit


def machine_peaks() -> tuple[float, float]:
    """(FLOP/s of a 1024^3 fp32 matmul, bytes/s of a 64 MiB copy), one intra-op thread."""
    import torch
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    src, dst = torch.empty(16 << 20), torch.empty(16 << 20)
    flops = 2 * 1024 ** 3 / _best(lambda: torch.mm(a, b))
    bw = 2 * src.numel() * 4 / _best(lambda: dst.copy_(src))
    return flops, bw


def _best(fn, reps: int = 5) -> float:
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


class _Runner:
    """One zoo model at one batch, ready to run forward passes."""

    def __init__(self, model: str, batch: int):
        import torch

        from profilers import zoo
        from profilers.zoo_models import build
        self.torch = torch
        self.module, inputs = build(model)
        self.x = inputs(batch)
        prof = zoo.load_profiles(model, batch)
        self.flops = float(sum(p.flops for p in prof))
        self.bytes = float(sum(p.bytes for p in prof))

    def once(self) -> float:
        with self.torch.no_grad():
            t = time.perf_counter()
            self.module(*self.x)
            return time.perf_counter() - t


def _loop(runners: tuple[_Runner, ...], seconds: float) -> list[float]:
    """Median latency of each runner while all loop at once for ``seconds``, each on its own
    thread after one warm-up pass (alone: the same loop with one runner, so solo and co-located
    latencies are measured the same way)."""
    lat: list[list[float]] = [[] for _ in runners]
    stop = time.perf_counter() + seconds

    def loop(i, r):
        r.once()
        while time.perf_counter() < stop or len(lat[i]) < 3:
            lat[i].append(r.once())
    ts = [threading.Thread(target=loop, args=(i, r)) for i, r in enumerate(runners)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return [statistics.median(x) for x in lat]


def run_pairs_cpu(models: list[str], batches: list[int], seconds: float = 0.6,
                  holdout: float = 0.3, seed: int = 0, progress=None) -> dict:
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        peak_flops, peak_bw = machine_peaks()
        configs = [(m, b) for m in models for b in batches]
        run = {c: _Runner(*c) for c in configs}
        solo, dem = {}, {}
        for c, r in run.items():
            solo[c] = _loop((r,), seconds)[0]
            dem[c] = (min(1.0, r.flops / solo[c] / peak_flops),
                      min(1.0, r.bytes / solo[c] / peak_bw))
        samples = []
        for ca, cb in itertools.combinations_with_replacement(configs, 2):
            rb = run[cb] if ca != cb else _Runner(*cb)  # a self-pair needs two copies
            la, lb = _loop((run[ca], rb), seconds)
            for me, other, lm in ((ca, cb, la), (cb, ca, lb)):
                (c, m), (cj, mj) = dem[me], dem[other]
                samples.append({"me": me, "other": other,
                                # no per-kernel blocking measure here: its feature is 0
                                "x": [1.0, c, cj, m, mj, c * cj, m * mj, 0.0],
                                "solo_ms": solo[me] * 1e3, "measured_ms": lm * 1e3})
            if progress:
                progress()
    finally:
        torch.set_num_threads(threads)
    pairs = sorted({tuple(sorted((s["me"], s["other"]))) for s in samples})
    random.Random(seed).shuffle(pairs)
    test_pairs = set(pairs[:max(1, int(len(pairs) * holdout))])
    test = [s for s in samples if tuple(sorted((s["me"], s["other"]))) in test_pairs]
    train = [s for s in samples if tuple(sorted((s["me"], s["other"]))) not in test_pairs]
    w = fit(train)
    solo_only = [1.0] + [0.0] * (len(FEATURES) - 1)
    return {"device": "torch:cpu", "features": list(FEATURES), "weights": w,
            "train": evaluate(w, train), "held_out": evaluate(w, test),
            "held_out_if_no_interference": evaluate(solo_only, test),
            "pairs": len(pairs), "configs": [list(c) for c in configs],
            "peak_gflops": peak_flops / 1e9, "peak_gbs": peak_bw / 1e9,
            "slowdowns": [round(s["measured_ms"] / s["solo_ms"], 3) for s in samples]}
