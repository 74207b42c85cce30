"""``gpusched bench cluster``: routing and recovery on a live local cluster, and in virtual time
over 1,000 simulated GPUs.

Live part: a local Ray cluster of 3 nodes x 2 logical T4s (``ray.cluster_utils.Cluster``,
region labels, health checks tuned to 0.5 s x 3), the controller and 6 simulated-GPU daemons,
every bench service (``cluster/workload.py``) admitted on every daemon at the rates of the load.

- **Routing**: one client per policy (expected-completion, random, round-robin), the same
  arrivals (the Azure conversation trace's gaps rescaled to ``load`` x the fluid capacity of the
  six GPUs, models drawn by share): goodput is the jobs that met their SLO per second of arrivals.
- **Recovery**: expected-completion at ``recovery_load``; a third of the way in, one worker node
  (two daemons) is removed. ``recovery_s``: from the removal until the client routes around the
  lost daemons and the controller's directory shows every model served with the lost daemons'
  replicas placed elsewhere. ``lost_not_started``: jobs never answered, or failed although they
  had not been acknowledged by a daemon (must be 0); ``failed_running``: acknowledged jobs on
  the lost daemons, failed with ``DaemonRestarted``.

Simulation part (``cluster/sim.py``): the same router over 1,000 simulated GPUs in virtual time,
the three policies on one arrival draw; ``decision_us`` is the wall time of one routing decision
(bookkeeping included) of expected-completion.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from typing import Self

from gpusched.cluster.workload import BENCH_GPU, bench_services, capacity_per_gpu

POLICIES = ("expected-completion", "random", "round-robin")
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


class LocalCluster:
    """A 3-node local Ray cluster with the controller and a daemon per logical GPU, for the
    benchmark and the tests: ``with LocalCluster() as lc: lc.directory, lc.server_key``."""

    def __init__(self, nodes: int = 3, gpus_per_node: int = 2, gpu_type: str = BENCH_GPU,
                 regions=("eu", "us", "ap"), backend: str = "sim", log_level: str = "WARNING"):
        self.nodes, self.gpus, self.gpu_type = nodes, gpus_per_node, gpu_type
        self.regions = regions
        self.backend, self.log_level = backend, log_level
        self.cluster = None
        self.ray = None

    def __enter__(self) -> Self:
        import zmq

        from gpusched.cluster import ops
        self.ray = ray = ops.import_ray()
        from ray.cluster_utils import Cluster
        common = {"num_cpus": 1, "num_gpus": self.gpus, "object_store_memory": 80 << 20}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            **common, "include_dashboard": False, "_system_config": HEALTH,
            "labels": {"region": self.regions[0], "gpu-type": self.gpu_type}})
        try:
            self.workers = [self.cluster.add_node(**common, labels={
                "region": self.regions[i % len(self.regions)], "gpu-type": self.gpu_type})
                for i in range(1, self.nodes)]
            self.cluster.wait_for_nodes()
            ops.connect(self.cluster.address)
            public, secret = zmq.curve_keypair()
            self.server_key = public.decode()
            cfg = {"name": "bench", "secret": secret.decode(), "public": self.server_key,
                   "backend": self.backend, "gpu_type": self.gpu_type,
                   "health_period_s": 0.25, "down_after_s": 1.0, "log_level": self.log_level}
            self.status = ops.up(ray, cfg, 180)
            self.directory = self.status["directory"]
            self.controller = ops.controller(ray)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        from gpusched.cluster import ops
        try:
            if self.ray is not None and self.ray.is_initialized():
                try:
                    ops.down(self.ray)
                except Exception:  # noqa: BLE001, S110
                    pass
                self.ray.shutdown()
        finally:
            if self.cluster is not None:
                self.cluster.shutdown()
                self.cluster = None

    def call(self, method: str, *args, timeout: float = 120.0):
        from gpusched.cluster import ops
        return ops.call(self.ray, getattr(self.controller, method).remote(*args), timeout)

    def node_of(self, key: str) -> str:
        return next(d["node_id"] for d in self.call("directory")["daemons"] if d["key"] == key)

    def remove_worker(self, index: int = 0) -> str:
        """Remove a worker node at once (no draining), as a crash; returns its node id."""
        node = self.workers.pop(index)
        self.cluster.remove_node(node, allow_graceful=False)
        return node.node_id

    def client(self, policy: str = "expected-completion", **kw):
        from gpusched.cluster.client import ClusterClient
        return ClusterClient(self.directory, server_key=self.server_key, policy=policy, **kw)


def everywhere(lc: LocalCluster, services, jobs_per_s: float) -> dict:
    """Every service on every daemon, the job rate spread evenly: a plan report to apply."""
    daemons = [d for d in lc.call("directory")["daemons"] if d["alive"]]
    per = jobs_per_s / len(daemons)
    return {"assignments": [{"gpu": i, "type": d["gpu_type"],
                             "replicas": [s.replica(per * s.share).as_dict() for s in services]}
                            for i, d in enumerate(daemons)]}


def arrivals(services, rate: float, duration: float, seed: int, spec: str = "trace:azure-conv"):
    from gpusched.experiments.arrivals import arrival_times
    n = int(rate * duration * 1.5) + 10
    times = [t for t in arrival_times(spec, rate, n, seed) if t < duration]
    rng = random.Random(seed + 7)
    which = rng.choices(range(len(services)), weights=[s.share for s in services], k=len(times))
    return list(zip(times, which))


def drive(client, services, plan, on_time=None) -> list:
    """Submit ``plan`` [(t, service index)] open-loop from now; returns [(t, index, future)].
    ``on_time(t)`` is called as time passes (the recovery run removes a node from it)."""
    start = time.perf_counter()
    out = []
    for t, i in plan:
        while (d := start + t - time.perf_counter()) > 0:
            if on_time is not None:
                on_time(time.perf_counter() - start)
            time.sleep(min(d, 0.002))
        s = services[i]
        out.append((t, i, client.submit(s.name, slo_ms=s.slo_ms)))
    return out


def settle(services, sent: list, span: float, drain_s: float = 30.0) -> dict:
    from concurrent.futures import TimeoutError as FutureTimeout

    import numpy as np
    deadline = time.perf_counter() + drain_s
    met = done = 0
    errors: dict[str, int] = {}
    lat = []
    for _t, i, f in sent:
        try:
            r = f.result(timeout=max(0.0, deadline - time.perf_counter()))
            done += 1
            lat.append(r.latency_ms)
            met += r.latency_ms <= services[i].slo_ms
        except FutureTimeout:
            errors["unanswered"] = errors.get("unanswered", 0) + 1
        except Exception as e:  # noqa: BLE001
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if lat else (lambda q: None)
    return {"jobs": len(sent), "completed": done, "slo_met": met, "p50_ms": pct(50),
            "p99_ms": pct(99),
            "goodput_rps": met / span if span else 0.0,
            "slo_attainment": met / len(sent) if sent else 0.0, "errors": errors}


def warm(lc: LocalCluster, services) -> None:
    """Each service once on each daemon (its kernels registered, its first job run)."""
    with lc.client("round-robin", window=1) as c:
        n = len(c.directory.daemons)
        futs = [c.submit(s.name, slo_ms=s.slo_ms) for s in services for _ in range(n)]
        for f in futs:
            f.result(60)


def run_live(duration: float = 12.0, load: float = 0.8, recovery_load: float = 0.5,
             seed: int = 0) -> dict:
    services = bench_services(BENCH_GPU)
    cap = capacity_per_gpu(BENCH_GPU, services)
    with LocalCluster() as lc:
        n = len(lc.status["daemons"])
        rate = load * cap * n
        # routes only: the interference model refuses this co-location at this load (see
        # docs/cluster.md); the daemons run what they are sent either way
        lc.call("apply", everywhere(lc, services, rate), None, "heuristic", False, timeout=600)
        warm(lc, services)
        plan = arrivals(services, rate, duration, seed)
        span = plan[-1][0] - plan[0][0]
        routing = {}
        for policy in POLICIES:
            with lc.client(policy, seed=seed) as c:
                sent = drive(c, services, plan)
                routing[policy] = settle(services, sent, span)
                routing[policy]["router"] = dict(c.stats)
            time.sleep(1.0)
        rec = recovery(lc, services, recovery_load * cap * n, duration, seed + 1)
    return {"gpus": n, "gpu": BENCH_GPU, "capacity_rps": round(cap * n, 1),
            "offered_rps": round(rate, 1), "duration_s": duration, "load": load,
            "routing": routing, "recovery": rec}


def recovery(lc: LocalCluster, services, rate: float, duration: float, seed: int) -> dict:
    lc.call("apply", everywhere(lc, services, rate), None, "heuristic", False, timeout=600)
    plan = arrivals(services, rate, duration, seed)
    span = plan[-1][0] - plan[0][0]
    victim: dict = {"node": None, "t": None, "wall": None, "keys": []}
    marks: dict[str, float] = {}

    with lc.client("expected-completion", seed=seed) as c:
        node = lc.workers[0].node_id
        victim["keys"] = [d.key for d in c.directory.daemons if d.node_id == node]

        def on_time(t: float) -> None:
            if victim["t"] is None and t >= duration / 3:
                victim["t"], victim["wall"] = time.perf_counter(), time.time()
                victim["node"] = lc.remove_worker(0)
            if victim["t"] is not None and "routes" not in marks and all(
                    c._conns[k].down_since for k in victim["keys"] if k in c._conns):
                marks["routes"] = time.perf_counter()

        sent = drive(c, services, plan, on_time)
        res = settle(services, sent, span)
        stats = dict(c.stats)
    events = [e for e in lc.call("status")["events"] if e["t"] >= victim["wall"]]
    done = next((e for e in events if e["event"] == "recovered"), None)
    d = lc.call("directory")
    gone = [x for x in d["daemons"] if x["key"] in victim["keys"]]
    routes = marks.get("routes", float("nan")) - victim["t"]
    placed = (done["t"] - victim["wall"]) if done is not None else None
    restored = placed is not None and not d["unserved"] and all(not x["replicas"] for x in gone)
    lost = res["errors"].get("unanswered", 0) + res["errors"].get("DaemonUnavailable", 0)
    return {"load_rps": round(rate, 1), "removed_node": victim["node"],
            "lost_daemons": victim["keys"], "routes_moved_s": round(routes, 3),
            "placement_restored_s": None if placed is None else round(placed, 3),
            "placement_restored": restored,
            "recovery_s": round(max(routes, placed) if restored else routes, 3),
            "events": [{**e, "t": round(e["t"] - victim["wall"], 3)} for e in events][:12],
            "jobs": res, "router": stats,
            "lost_not_started": lost, "failed_running": res["errors"].get("DaemonRestarted", 0)}


def run_sim(gpus: int = 1000, jobs: int = 200_000, load: float = 0.8, seed: int = 0) -> dict:
    from gpusched.cluster.sim import SimConfig, simulate
    by = {}
    for policy in POLICIES:
        by[policy] = simulate(SimConfig(gpus=gpus, jobs=jobs, load=load, policy=policy,
                                        seed=seed))
    fail = simulate(SimConfig(gpus=gpus, jobs=jobs, load=load, seed=seed,
                              fail_at=0.3 * jobs / (load * capacity_per_gpu(
                                  BENCH_GPU, bench_services()) * gpus), fail_gpus=max(1, gpus // 125)))
    ec, rnd = by["expected-completion"], by["random"]
    return {"gpus": gpus, "jobs": jobs, "load": load,
            "decision_us": round(ec["decision_us"], 2),
            "goodput_vs_random": round(ec["goodput_rps"] / rnd["goodput_rps"], 3)
            if rnd["goodput_rps"] else None,
            "goodput_rps": {p: round(r["goodput_rps"], 1) for p, r in by.items()},
            "slo_attainment": {p: round(r["slo_attainment"], 4) for p, r in by.items()},
            "failure": fail.get("failure"), "wall_s": sum(r["wall_s"] for r in by.values())}


@contextlib.contextmanager
def _stdout_to_stderr():
    """Ray writes what it has to say about a lost raylet on the driver's stdout: sent to stderr,
    so that stdout stays the benchmark's JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_cluster_bench(duration: float = 12.0, load: float = 0.8, sim_gpus: int = 1000,
                      sim_jobs: int = 200_000, seed: int = 0, live: bool = True) -> dict:
    t = time.perf_counter()
    out: dict = {}
    if live:
        with _stdout_to_stderr():
            lv = run_live(duration, load, seed=seed)
        rc = lv["recovery"]
        out.update({"goodput_rps": {p: round(r["goodput_rps"], 2)
                                    for p, r in lv["routing"].items()},
                    "recovery_s": rc["recovery_s"],
                    "lost_not_started": rc["lost_not_started"],
                    "failed_running": rc["failed_running"], "live": lv})
    out["sim"] = run_sim(sim_gpus, sim_jobs, load, seed)
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


def print_cluster_bench(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console()
    if "live" in res:
        lv = res["live"]
        t = Table(title=f"live: {lv['gpus']} simulated {lv['gpu']} daemons on a 3-node local Ray "
                  f"cluster, Azure conversation trace at {100 * lv['load']:.0f}% "
                  f"({lv['offered_rps']} jobs/s), {lv['duration_s']:g} s")
        for c in ("routing", "jobs", "p50 ms", "p99 ms", "SLO met", "goodput jobs/s",
                  "vs random", "errors"):
            t.add_column(c, justify="left" if c in ("routing", "errors") else "right")
        rnd = lv["routing"]["random"]["goodput_rps"] or float("nan")
        for p, r in lv["routing"].items():
            t.add_row(p, str(r["jobs"]), str(r["p50_ms"]), str(r["p99_ms"]),
                      f"{100 * r['slo_attainment']:.1f}%",
                      f"{r['goodput_rps']:.1f}", f"{r['goodput_rps'] / rnd:.2f}x",
                      ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "-")
        con.print(t)
        rc = lv["recovery"]
        con.print(f"recovery ({rc['load_rps']} jobs/s, node removed: {len(rc['lost_daemons'])} "
                  f"daemons): every model served again after {rc['recovery_s']} s (routes moved "
                  f"{rc['routes_moved_s']} s, lost replicas re-admitted "
                  f"{rc['placement_restored_s']} s); not-started jobs lost: "
                  f"{rc['lost_not_started']}; running jobs failed (DaemonRestarted): "
                  f"{rc['failed_running']}; re-routed: {rc['router'].get('resent', 0)}")
    s = res["sim"]
    t = Table(title=f"simulation: {s['gpus']} simulated GPUs in virtual time, {s['jobs']} jobs "
              f"at {100 * s['load']:.0f}%")
    for c in ("routing", "goodput jobs/s", "SLO met"):
        t.add_column(c, justify="left" if c == "routing" else "right")
    for p, g in s["goodput_rps"].items():
        t.add_row(p, f"{g:,.0f}", f"{100 * s['slo_attainment'][p]:.2f}%")
    con.print(t)
    con.print(f"router decision: {s['decision_us']:.1f} us; goodput vs random: "
              f"{s['goodput_vs_random']}x; failure of {s['failure']['gpus']} GPUs: "
              f"{s['failure']}")
