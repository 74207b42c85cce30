"""Run one policy on the simulated GPU over one arrival sequence, in virtual time, and score it.

The same ``SchedulerCore`` and policies as the daemon; only the environment is virtual.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import numpy as np

from gpusched.experiments.arrivals import arrival_times
from gpusched.experiments.mixes import MixModel
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.policies import make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.simgpu import SimGpu
from scheduler_daemon.simulation import VirtualRun


@dataclass(frozen=True)
class Scenario:
    gpu: str
    mix: tuple[MixModel, ...]
    arrivals: tuple[tuple[float, int], ...]  # (time, index into mix)
    slo_factors: tuple[float, ...] = (5.0,)  # per model, cycled in mix order
    hw_queues: int = 32
    max_extra: int = 2
    shed: bool = False

    def slo_ms(self, m: MixModel) -> float:
        i = self.mix.index(m)
        return m.solo_s * 1e3 * self.slo_factors[i % len(self.slo_factors)]


def parse_slo_factors(spec: str) -> tuple[float, ...]:
    """``"5"``: every model's SLO is 5x its solo latency; ``"2,10"``: the models (in mix order)
    alternate between 2x and 10x, so SLOs differ across models."""
    try:
        fs = tuple(float(x) for x in str(spec).split(",") if x)
    except ValueError:
        fs = ()
    if not fs or any(f <= 1.0 for f in fs):
        raise ValueError(f"bad SLO factors {spec!r}: give numbers > 1, e.g. 5 or 2,10")
    return fs


def make_arrivals(mix, spec: str, rate: float, n: int, seed: int) -> tuple:
    rng = random.Random(seed + 7)
    weights = [m.share for m in mix]
    times = arrival_times(spec, rate, n, seed)
    models = rng.choices(range(len(mix)), weights=weights, k=n)
    return tuple(zip(times, models))


def simulate(sc: Scenario, policy: str) -> tuple[list[Job], SimGpu]:
    spec = gpu_spec(sc.gpu)
    core = SchedulerCore(make_policy(policy), spec.capacity, max_extra=sc.max_extra,
                         shed=sc.shed)
    dev = SimGpu(spec, hw_queues=sc.hw_queues)
    run = VirtualRun(core, dev)
    entries = [core.make_model(m.name, m.name, list(m.kernels)) for m in sc.mix]
    for i, (t, mi) in enumerate(sc.arrivals):
        m = sc.mix[mi]
        run.submit_at(Job(i, m.name, entries[mi], sc.slo_ms(m), t))
    return run.run(), dev


def ideal(sc: Scenario) -> list[tuple[int, float]]:
    """Idealised reference: preemptive SRPT on a fluid GPU.

    Job ``j`` needs ``W_j = sum_k est_k * s_k`` GPU-seconds, ``s_k`` the share of the GPU its
    kernel ``k`` occupies; the fluid GPU serves the job with the least remaining work at full
    rate, preempting at arrivals; a job never finishes faster than its solo latency.
    Returns (model index, latency s) per job.
    """
    spec = gpu_spec(sc.gpu)
    core = SchedulerCore(make_policy("srpt"), spec.capacity)
    work = []
    for m in sc.mix:
        e = core.make_model(m.name, m.name, list(m.kernels))
        work.append(sum(k.est_us * 1e-6 * s for k, s in zip(m.kernels, e.shares)))
    out: list[tuple[int, float]] = []
    heap: list[tuple[float, int]] = []  # (remaining work, job)
    now = 0.0
    arr = sc.arrivals
    i = 0
    while i < len(arr) or heap:
        nxt = arr[i][0] if i < len(arr) else float("inf")
        if heap and now + heap[0][0] <= nxt:
            rem, j = heapq.heappop(heap)
            now += rem
            t, mi = arr[j]
            out.append((mi, max(now - t, sc.mix[mi].solo_s)))
            continue
        if heap:
            rem, j = heapq.heappop(heap)
            heapq.heappush(heap, (rem - (nxt - now), j))
        now = max(now, nxt)
        heapq.heappush(heap, (work[arr[i][1]], i))
        i += 1
    return out


def score(sc: Scenario, records: list[tuple[int, float | None]]) -> dict:
    """records: (model index, latency s or None if not completed) per job."""
    lat = np.array([r for _, r in records if r is not None]) * 1e3
    met = sum(1 for mi, r in records if r is not None and r * 1e3 <= sc.slo_ms(sc.mix[mi]))
    per_model = {}
    slow = []
    for mi, m in enumerate(sc.mix):
        ls = np.array([r for j, r in records if j == mi and r is not None]) * 1e3
        if ls.size:
            per_model[m.name] = float(np.percentile(ls, 99))
            slow.append(float(ls.mean()) / (m.solo_s * 1e3))
    slow = np.array(slow)
    jain = float(slow.sum() ** 2 / (len(slow) * (slow ** 2).sum())) if slow.size else 0.0
    return {"completed": int(lat.size), "jobs": len(records),
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "slo_attainment": met / len(records), "jain": jain, "per_model_p99_ms": per_model}


def run_point(sc: Scenario, policy: str) -> dict:
    if policy == "ideal":
        recs = ideal(sc)
        span = None
        kernels = 0
    else:
        jobs, dev = simulate(sc, policy)
        by_id = {j.id: j for j in jobs}
        recs = []
        for i, (t, mi) in enumerate(sc.arrivals):
            j = by_id.get(i)
            recs.append((mi, j.total_s if j is not None and j.state is JobState.DONE else None))
        ends = [j.finish for j in jobs if j.state is JobState.DONE]
        span = (max(ends) - sc.arrivals[0][0]) if ends else None
        kernels = dev.kernels_done
    res = score(sc, recs)
    if span is None:  # ideal: its makespan is the last completion
        span = max(sc.arrivals[k][0] + recs[k][1] for k in range(len(recs))) - sc.arrivals[0][0]
    res["throughput_rps"] = res["completed"] / span if span else 0.0
    res["kernels"] = kernels
    return res


def saturation_rate(gpu: str, mix, n: int = 200, seed: int = 0) -> float:
    """Jobs/s the GPU sustains: a burst of ``n`` jobs at t=0, the best of the software
    dispatcher (srpt) and the hardware's own queues (cuda-ms), completions over makespan."""
    rng = random.Random(seed)
    models = rng.choices(range(len(mix)), weights=[m.share for m in mix], k=n)
    sc = Scenario(gpu, tuple(mix), tuple((0.0, mi) for mi in models))
    best = 0.0
    for policy in ("srpt", "cuda-ms"):
        jobs, _ = simulate(sc, policy)
        best = max(best, n / max(j.finish for j in jobs))
    return best
