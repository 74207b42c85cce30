"""Run one policy on the simulated GPU over one arrival sequence, in virtual time, and score it.

The same ``SchedulerCore``, policies and dispatch pump as the daemon; only the environment is
virtual. A run has the parts Paella's experiment has: clients with per-model caps on jobs in
flight (``clients.py``), host costs per system (``host.py``), the simulated GPU (32 hardware
queues, launch latency), and the scheduler core. Latency is from a job's intended arrival until
its client learns that it finished.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import numpy as np

from gpusched.experiments.arrivals import arrival_times
from gpusched.experiments.clients import Clients
from gpusched.experiments.host import FREE, HostCosts
from gpusched.experiments.mixes import MixModel
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.policies import Triton, make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.simgpu import SimGpu
from scheduler_daemon.simulation import VirtualRun


@dataclass(frozen=True)
class Scenario:
    gpu: str
    mix: tuple[MixModel, ...]
    arrivals: tuple[tuple[float, int], ...]  # (intended arrival s, index into mix)
    slo_factors: tuple[float, ...] = (5.0,)  # per model, cycled in mix order
    hw_queues: int = 32
    max_extra: int = 2
    shed: bool = False
    costs: HostCosts = FREE
    caps: dict = field(default_factory=dict)   # model -> jobs in flight (none: no cap)
    paella_threshold: float = 1e6

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
    times = arrival_times(spec, rate, n, seed)
    models = rng.choices(range(len(mix)), weights=[m.share for m in mix], k=n)
    return tuple(zip(times, models))


def scaled(unit: tuple, rate: float) -> tuple:
    """The same arrival draw at ``rate`` jobs/s (drawn at 1 job/s): points of a sweep see the
    same sequence, only faster."""
    return tuple((t / rate, m) for t, m in unit)


@dataclass
class Outcome:
    jobs: list[Job]               # every job, in arrival order
    dev: SimGpu
    noticed: dict                 # job id -> when its client learnt it ended


def run_scenario(sc: Scenario, policy: str, device=SimGpu) -> Outcome:
    """``device``: the simulated GPU's class (a probe may pass a subclass that counts)."""
    spec = gpu_spec(sc.gpu)
    costs = sc.costs.for_policy(policy)
    pol = make_policy(policy)
    if isinstance(pol, Triton):      # as Paella ran it: instance_group count = the caps
        pol = Triton({m: c for m, c in sc.caps.items()})
    if policy == "paella":
        pol.threshold = sc.paella_threshold
    core = SchedulerCore(pol, spec.capacity, max_extra=sc.max_extra, shed=sc.shed,
                         quantum_s=costs.quantum_us * 1e-6,
                         overlapping=device.caps.concurrent_kernels)
    dev = device(spec, hw_queues=sc.hw_queues, launch_us=costs.launch_us)
    run = VirtualRun(core, dev, notice_s=costs.notice_us * 1e-6,
                     launch_s=costs.launch_us * 1e-6)
    entries = [core.make_model(m.name, m.name, list(m.kernels)) for m in sc.mix]
    caps = {m.name: sc.caps.get(m.name, 1 << 30) for m in sc.mix}
    clients = Clients(run, caps, costs.rpc_us * 1e-6, costs.poll_us * 1e-6)
    jobs = []
    for i, (t, mi) in enumerate(sc.arrivals):
        m = sc.mix[mi]
        job = Job(i, m.name, entries[mi], sc.slo_ms(m), t)
        jobs.append(job)
        run.env.schedule_at(t, lambda job=job: clients.arrive(job))
    run.run()
    return Outcome(jobs, dev, clients.noticed)


def simulate(sc: Scenario, policy: str) -> tuple[list[Job], SimGpu]:
    """The finished jobs and the device of one run."""
    out = run_scenario(sc, policy)
    return [j for j in out.jobs if j.finish is not None], out.dev


def ideal(sc: Scenario) -> list[tuple[int, float]]:
    """Idealised reference: preemptive SRPT on a fluid GPU, no host costs, no caps.

    Job ``j`` needs ``W_j = sum_k est_k * s_k`` GPU-seconds, ``s_k`` the share of the GPU its
    kernel ``k`` occupies; the fluid GPU serves the job with the least remaining work at full
    rate, preempting at arrivals; a job never finishes faster than its solo latency.
    Returns (model index, latency s) per job.
    """
    work = job_work(sc.gpu, sc.mix)
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


def job_work(gpu: str, mix) -> list[float]:
    """GPU-seconds each model's job needs at full occupancy: sum of its kernels' estimates
    times the share of the GPU each occupies."""
    spec = gpu_spec(gpu)
    core = SchedulerCore(make_policy("srpt"), spec.capacity)
    out = []
    for m in mix:
        e = core.make_model(m.name, m.name, list(m.kernels))
        out.append(sum(k.est_us * 1e-6 * s for k, s in zip(m.kernels, e.shares)))
    return out


def capacity_rps(gpu: str, mix) -> float:
    """An upper bound on the jobs/s the GPU can sustain for the mix: the inverse of the mean
    job's GPU-seconds (a fluid GPU that never idles). Sweeps are laid out against it."""
    work = job_work(gpu, mix)
    return 1.0 / sum(m.share * w for m, w in zip(mix, work))


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
    first = sc.arrivals[0][0]
    span_offered = sc.arrivals[-1][0] - first
    if policy == "ideal":
        recs = ideal(sc)
        ends = [sc.arrivals[k][0] + recs[k][1] for k in range(len(recs))]
        kernels = 0
    else:
        out = run_scenario(sc, policy)
        recs, ends = [], []
        for job, (t, mi) in zip(out.jobs, sc.arrivals):
            seen = out.noticed.get(job.id)
            ok = seen is not None and job.state is JobState.DONE
            recs.append((mi, seen - t if ok else None))
            if ok:
                ends.append(seen)
        kernels = out.dev.kernels_done
    res = score(sc, recs)
    span = (max(ends) - first) if ends else 0.0
    res["throughput_rps"] = res["completed"] / span if span else 0.0
    res["offered_rps"] = (len(sc.arrivals) - 1) / span_offered if span_offered else 0.0
    res["kernels"] = kernels
    return res


def saturation_rate(gpu: str, mix, n: int = 200, seed: int = 0) -> float:
    """Jobs/s the GPU sustains for a burst of ``n`` jobs at t=0: the best of the software
    dispatcher (srpt) and the hardware's own queues (cuda-ms), completions over makespan, with
    no host costs. (The benchmarks lay their rates out on ``capacity_rps`` instead.)"""
    rng = random.Random(seed)
    models = rng.choices(range(len(mix)), weights=[m.share for m in mix], k=n)
    sc = Scenario(gpu, tuple(mix), tuple((0.0, mi) for mi in models))
    best = 0.0
    for policy in ("srpt", "cuda-ms"):
        jobs, _ = simulate(sc, policy)
        best = max(best, n / max(j.finish for j in jobs))
    return best
