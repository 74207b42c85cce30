"""The cluster in virtual time: the live router's decision and recovery logic (``route.py``,
``recovery.py``) over many simulated GPUs, each the daemon's own scheduler core and simulated
GPU (``scheduler_daemon.simulation.VirtualRun``) on one shared virtual clock.

What it models of the live path: the router binds each arriving job to a daemon, holds it or
sends it (at most ``window`` in flight per daemon); a daemon acknowledges a job the moment it is
sent (no network delay) and reports it finished when its core does; the router learns service
times from those reports. A failure kills ``fail_gpus`` GPUs at ``fail_at``: they answer nothing
more; the router learns of it ``detect_s`` later (the health check), when the dead GPUs'
not-started jobs are routed again and their started ones fail. Ground truth the live path lacks
is counted too: jobs failed as started that had not yet started on the GPU.

What it leaves out: network and client costs (the router's own decision time is measured, in
wall time), other routers, and daemons restarting.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from gpusched.cluster.recovery import Rep, recover
from gpusched.cluster.route import NoReplica, Router
from gpusched.cluster.workload import BENCH_GPU, bench_services, capacity_per_gpu
from gpusched.experiments.arrivals import arrival_times
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.core.jobs import DONE, Job
from scheduler_daemon.core.policies import make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.simgpu import SimGpu
from scheduler_daemon.simulation import VirtualRun


@dataclass
class SimConfig:
    gpus: int = 1000
    policy: str = "expected-completion"
    load: float = 0.8                 # of the fluid capacity of all GPUs
    jobs: int = 20_000
    arrivals: str = "trace:azure-conv"
    window: int = 4
    seed: int = 0
    gpu: str = BENCH_GPU
    daemon_policy: str = "slo-srpt"   # the daemon's default
    fail_at: float | None = None      # virtual seconds; None: no failure
    fail_gpus: int = 0
    detect_s: float = 1.5             # health check: 3 misses of a 0.5 s period


def simulate(cfg: SimConfig) -> dict:
    services = bench_services(cfg.gpu)
    spec = gpu_spec(cfg.gpu)
    rate = cfg.load * capacity_per_gpu(cfg.gpu, services) * cfg.gpus
    times = arrival_times(cfg.arrivals, rate, cfg.jobs, cfg.seed)
    rng = random.Random(cfg.seed + 7)
    which = rng.choices(range(len(services)), weights=[s.share for s in services], k=cfg.jobs)

    from scheduler_daemon.clock import Environment
    env = Environment()
    runs, entries = [], []
    keys = [f"gpu-{g:04d}" for g in range(cfg.gpus)]
    for g in range(cfg.gpus):
        core = SchedulerCore(make_policy(cfg.daemon_policy), spec.capacity, max_extra=2)
        run = VirtualRun(core, SimGpu(spec), env)
        entries.append([core.make_model(s.name, s.name, list(s.kernels)) for s in services])
        run.on_finished = _finisher(g, lambda g, job: finished(g, job))
        runs.append(run)

    router = Router(cfg.policy, window=cfg.window, seed=cfg.seed)
    router.set_routes({s.name: {k: s.solo_s for k in keys} for s in services})
    placement = {k: [Rep(s.name, s.zoo_model, s.batch, round(rate * s.share / cfg.gpus, 3),
                         s.slo_ms) for s in services] for k in keys}
    types = {k: cfg.gpu for k in keys}
    dead: set[int] = set()
    sent_at: dict[int, int] = {}        # token -> GPU it was last sent to
    jobs_on: dict[int, Job] = {}        # token -> its Job on that GPU
    outcome: dict[int, str] = {}
    latency: dict[int, float] = {}
    resent = [0]
    decision_ns = [0, 0]

    def send(pairs) -> None:
        now = env.now
        for key, tok in pairs:
            g = router.index[key]
            sent_at[tok] = g
            if g in dead:       # a black hole until the health check notices
                continue
            s = which[tok]
            job = Job(tok, s, entries[g][s], services[s].slo_ms, now)
            jobs_on[tok] = job
            router.accepted(tok)
            runs[g].submit(job)

    def arrive(tok: int) -> None:
        t0 = time.perf_counter_ns()
        try:
            pairs = router.submit(tok, services[which[tok]].name)
        except NoReplica:
            outcome[tok] = "unroutable"
            return
        decision_ns[0] += time.perf_counter_ns() - t0
        decision_ns[1] += 1
        send(pairs)

    def finished(g: int, job: Job) -> None:
        if g in dead or sent_at.get(job.id) != g:
            return
        tok = job.id
        ok = job.state is DONE
        outcome[tok] = "done" if ok else "failed"
        if ok:
            latency[tok] = env.now - times[tok]
        service = (job.finish - job.first_start) if job.first_start is not None else None
        send(router.finished(tok, service))

    for tok, t in enumerate(times):
        env.call_at(t, arrive, tok)

    failure = {}
    if cfg.fail_at is not None and cfg.fail_gpus > 0:
        victims = list(range(cfg.gpus - cfg.fail_gpus, cfg.gpus))

        def fail() -> None:
            dead.update(victims)

        def detect() -> None:
            started_failed = not_started_failed = 0
            for g in victims:
                pairs, failed, unroutable = router.mark_down(keys[g])
                for tok in failed:
                    job = jobs_on.get(tok)
                    outcome[tok] = "failed-running"
                    if job is not None and job.first_start is not None:
                        started_failed += 1
                    else:
                        not_started_failed += 1
                for tok, _e in unroutable:
                    outcome[tok] = "unroutable"
                resent[0] += len(pairs)
                send(pairs)
            alive = {keys[g] for g in range(cfg.gpus) if g not in dead}
            rec = recover(placement, types, alive)
            for k, reps in rec.changed.items():
                placement[k] = reps
            failure.update({"failed_running": started_failed,
                            "failed_not_started": not_started_failed,
                            "lost_models": len({r.name for r in rec.lost})})

        env.call_at(cfg.fail_at, lambda _: fail(), None)
        env.call_at(cfg.fail_at + cfg.detect_s, lambda _: detect(), None)

    wall = time.perf_counter()
    env.run()
    wall = time.perf_counter() - wall
    met = sum(1 for tok, lat in latency.items()
              if lat * 1e3 <= services[which[tok]].slo_ms)
    span = times[-1] - times[0]
    res = {"gpus": cfg.gpus, "policy": cfg.policy, "jobs": cfg.jobs, "offered_rps": round(rate, 1),
           "goodput_rps": met / span if span else 0.0,
           "slo_attainment": met / cfg.jobs,
           "completed": len(latency),
           "decision_us": decision_ns[0] / max(1, decision_ns[1]) / 1e3,
           "wall_s": round(wall, 2)}
    if failure:
        lost = cfg.jobs - len(outcome)
        res["failure"] = {"gpus": cfg.fail_gpus, "at_s": cfg.fail_at, "detect_s": cfg.detect_s,
                          "resent": resent[0], "lost": lost, **failure}
    return res


def _finisher(g: int, fn):
    return lambda job: fn(g, job)
