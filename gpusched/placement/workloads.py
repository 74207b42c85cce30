"""Benchmark workloads: zoo models with request rates drawn from the Azure LLM inference trace.

Model ``i`` is zoo model ``i mod 10`` (so every model appears); its rate is the request count
of a random minute of the trace (``conv.csv`` or ``code.csv``, chosen at random) per second,
times ``scale`` (default 100: the trace is one LLM deployment, far heavier per request than
these vision and language models); its SLO is 5x, 10x or 20x its solo latency at batch 1 on
the GPU type.
"""
from __future__ import annotations

import csv
import functools
import gzip
import random
from collections import Counter
from datetime import datetime

from gpusched.experiments.arrivals import PACKAGED_TRACES
from gpusched.placement.estimate import model_profile
from gpusched.placement.spec import ModelSpec, Workload
from profilers.zoo import ZOO_MODELS

SLO_FACTORS = (5.0, 10.0, 20.0)


@functools.cache
def minute_counts(name: str) -> tuple[int, ...]:
    with gzip.open(PACKAGED_TRACES[f"azure-{name}"], "rt", newline="") as f:
        ts = [datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp() for r in csv.DictReader(f)]
    t0 = min(ts)
    c = Counter(int((t - t0) // 60) for t in ts)
    return tuple(c[k] for k in sorted(c))


def make_workload(n: int, gpu: str = "H100", seed: int = 0, scale: float = 100.0) -> Workload:
    rng = random.Random(seed)
    models = []
    for i in range(n):
        zoo = ZOO_MODELS[i % len(ZOO_MODELS)]
        counts = minute_counts(rng.choice(("conv", "code")))
        rate = max(1.0, round(rng.choice(counts) / 60.0 * scale, 1))
        slo = round(model_profile(zoo, 1, gpu).latency_ms * rng.choice(SLO_FACTORS), 3)
        models.append(ModelSpec(f"{zoo}-{i}", zoo, rate, slo, line=i + 1))
    return Workload(tuple(models), None, f"azure-{n}")


HELD_OUT_SIZES = (20, 30, 50)
HELD_OUT_SCALES = (100.0, 200.0, 800.0)   # the trace's per-minute rates x this
HELD_OUT_SLO = (2.0, 25.0)                # SLO / solo latency at batch 1, drawn uniformly


def make_held_out(seed: int, gpu: str = "H100") -> Workload:
    """A model list no part of placement was fitted or tuned on, drawn from ``seed``: its size
    from ``HELD_OUT_SIZES``, one rate scale for the list from ``HELD_OUT_SCALES`` (800: the
    high-rate case where models need many replicas), per model a random zoo model, the request
    count of a random minute of a random Azure trace (per second, times the scale) and an SLO
    drawn uniformly between 2x and 25x its solo latency at batch 1 (2x: a replica must run
    alone, unslowed, at batch 1)."""
    rng = random.Random(f"held-out/{seed}")
    n = rng.choice(HELD_OUT_SIZES)
    scale = rng.choice(HELD_OUT_SCALES)
    models = []
    for i in range(n):
        zoo = rng.choice(ZOO_MODELS)
        counts = minute_counts(rng.choice(("conv", "code")))
        rate = max(1.0, round(rng.choice(counts) / 60.0 * scale, 1))
        slo = round(model_profile(zoo, 1, gpu).latency_ms * rng.uniform(*HELD_OUT_SLO), 3)
        models.append(ModelSpec(f"{zoo}-{i}", zoo, rate, slo, line=i + 1))
    return Workload(tuple(models), None, f"held-out-{seed}")
