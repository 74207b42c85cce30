"""Interference model: a co-located model's slowdown from the resource demands on its GPU.

Estimate (``measure_pairs``): every pair of (model, batch) configurations runs together on the
simulated GPU, each as a closed loop of jobs on its own stream (like two processes under MPS);
a model's slowdown is its mean co-located latency over its solo latency.

Model (``fit``), the explicit linear form of gpulet extended with USHER's balance of compute
against memory: for model ``i`` sharing the GPU with ``j``, with compute and memory-bandwidth
demands ``c`` and ``m`` from its profile (``profilers/profile.py``),

    alpha_i = w0 + w1 c_i + w2 c_j + w3 m_i + w4 m_j + w5 c_i c_j + w6 m_i m_j
    latency_i = solo_i * max(1, alpha_i)

``w`` is fitted by least squares on the training pairs. Report (``evaluate``): the mean
absolute percentage error of the predicted co-located latency on held-out pairs, and the 90th
percentile of the relative error.
"""
from __future__ import annotations

import itertools
import random

import numpy as np

from profilers.profile import ModelProfile, profile

FEATURES = ("1", "c_me", "c_other", "m_me", "m_other", "c_me*c_other", "m_me*m_other")


def features(me: ModelProfile, other: ModelProfile) -> list[float]:
    c, cj, m, mj = me.compute_demand, other.compute_demand, me.memory_demand, other.memory_demand
    return [1.0, c, cj, m, mj, c * cj, m * mj]


def colocated_latencies(a: str, ba: int, b: str, bb: int, gpu: str, jobs: int = 6) -> tuple[float, float]:
    """Mean latency (s) of ``a`` and of ``b`` running together, each a closed loop of ``jobs``."""
    from profilers import zoo
    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.core.jobs import Job
    from scheduler_daemon.core.policies import make_policy
    from scheduler_daemon.core.scheduler import SchedulerCore
    from scheduler_daemon.devices.simgpu import SimGpu
    from scheduler_daemon.simulation import VirtualRun

    spec = gpu_spec(gpu)
    core = SchedulerCore(make_policy("mps"), spec.capacity)
    run = VirtualRun(core, SimGpu(spec))
    models = [core.make_model(("A", a), a, zoo.zoo_kernels(a, ba, spec.name)),
              core.make_model(("B", b), b, zoo.zoo_kernels(b, bb, spec.name))]
    left = [jobs - 1, jobs - 1]
    lat: list[list[float]] = [[], []]
    complete = run._complete

    def on_complete(job, now, dur):  # closed loop: each side submits again when one ends
        complete(job, now, dur)
        if job.state.value == "done":
            side = job.tenant == "B"
            lat[side].append(job.total_s)
            if left[side] > 0:
                left[side] -= 1
                run.submit_at(Job(job.id + 2, job.tenant, models[side], 0.0, now))
    run._complete = on_complete
    run.device.on_complete = on_complete
    run.submit_at(Job(0, "A", models[0], 0.0, 0.0))
    run.submit_at(Job(1, "B", models[1], 0.0, 0.0))
    run.run()
    return float(np.mean(lat[0])), float(np.mean(lat[1]))


def measure_pairs(configs: list[tuple[str, int]], gpu: str, jobs: int = 6,
                  progress=None) -> list[dict]:
    """One sample per model of every unordered pair (self-pairs included)."""
    prof = {c: profile(c[0], c[1], f"sim:{gpu}") for c in configs}
    samples = []
    for ca, cb in itertools.combinations_with_replacement(configs, 2):
        la, lb = colocated_latencies(ca[0], ca[1], cb[0], cb[1], gpu, jobs)
        pa, pb = prof[ca], prof[cb]
        samples.append({"me": ca, "other": cb, "x": features(pa, pb),
                        "solo_ms": pa.latency_ms, "measured_ms": la * 1e3})
        samples.append({"me": cb, "other": ca, "x": features(pb, pa),
                        "solo_ms": pb.latency_ms, "measured_ms": lb * 1e3})
        if progress:
            progress()
    return samples


def fit(samples: list[dict]) -> list[float]:
    """Least squares on ``alpha = measured / solo``."""
    x = np.array([s["x"] for s in samples])
    y = np.array([s["measured_ms"] / s["solo_ms"] for s in samples])
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    return [float(v) for v in w]


def predict_ms(w: list[float], sample: dict) -> float:
    return sample["solo_ms"] * max(1.0, float(np.dot(w, sample["x"])))


def evaluate(w: list[float], samples: list[dict]) -> dict:
    err = np.array([abs(predict_ms(w, s) - s["measured_ms"]) / s["measured_ms"] for s in samples])
    return {"mape": float(err.mean()), "p90_rel_error": float(np.percentile(err, 90)),
            "samples": len(samples)}


def run_pairs(models: list[str], batches: list[int], gpu: str, holdout: float = 0.3,
              seed: int = 0, jobs: int = 6, progress=None) -> dict:
    """Measure, split the pairs (not the samples) into train and held-out, fit, report."""
    configs = [(m, b) for m in models for b in batches]
    samples = measure_pairs(configs, gpu, jobs, progress)
    pairs = sorted({tuple(sorted((s["me"], s["other"]))) for s in samples})
    rng = random.Random(seed)
    rng.shuffle(pairs)
    test_pairs = set(pairs[:max(1, int(len(pairs) * holdout))])
    test = [s for s in samples if tuple(sorted((s["me"], s["other"]))) in test_pairs]
    train = [s for s in samples if tuple(sorted((s["me"], s["other"]))) not in test_pairs]
    w = fit(train)
    solo_only = [1.0] + [0.0] * (len(FEATURES) - 1)  # "no interference" as a yardstick
    return {"device": f"sim:{gpu}", "features": list(FEATURES), "weights": w,
            "train": evaluate(w, train), "held_out": evaluate(w, test),
            "held_out_if_no_interference": evaluate(solo_only, test),
            "pairs": len(pairs), "configs": [list(c) for c in configs]}
