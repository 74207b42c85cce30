"""Open-loop load generator: N client processes submit a workload's jobs at Poisson times.

Each client is a separate process (``python -m gpusched.loadgen WORKER-JSON``) that prints one
JSON line of results; the parent aggregates per tenant. Every job's latency is kept on both
clocks (docs/protocol.md, "Latency and SLO attainment"): the client's, submit() to answer, and
the daemon's ``total_ms`` from its DONE.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from gpusched.workloads import workload
from scheduler_daemon.wire.latency import attainment, missed_slo, percentile


@dataclass
class WorkerConfig:
    endpoint: str
    workload: str
    tenant_index: int
    rate: float          # this client's arrivals per second
    duration: float
    seed: int
    drain_s: float = 10.0
    timeout: float = 5.0
    start_at: float = 0.0  # wall-clock time (time.time()) when all clients begin together


def run_worker(cfg: WorkerConfig) -> dict:
    from concurrent.futures import TimeoutError as FutureTimeout

    from client_lib import Client, GpuschedError

    load = workload(cfg.workload)[cfg.tenant_index]
    rng = random.Random(cfg.seed)
    futs = []
    with Client(cfg.endpoint, tenant=load.tenant, timeout=cfg.timeout) as c:
        c.register_model(load.model, list(load.kernels))
        while (wait := cfg.start_at - time.time()) > 0:  # start together, after all imports
            c.poll(min(wait, 0.1))
        start = time.perf_counter()
        end = start + cfg.duration
        t_next = start + rng.expovariate(cfg.rate) if cfg.rate > 0 else end
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if now >= t_next:
                futs.append(c.submit(load.model, slo_ms=load.slo_ms))
                t_next += rng.expovariate(cfg.rate)
            else:
                c.poll(min(t_next, end) - now)
        deadline = time.perf_counter() + cfg.drain_s
        row = new_row(load.tenant, load.slo_ms)
        for f in futs:
            try:
                r = f.result(timeout=max(0.0, deadline - time.perf_counter()))
            except (GpuschedError, FutureTimeout) as e:
                tally(row, exc=e)
                continue
            tally(row, r)
    return row


def new_row(model: str, slo_ms: float) -> dict:
    """A worker's numbers for one model (or tenant), in ``summarize``'s shape."""
    return {"tenant": model, "slo_ms": slo_ms, "submitted": 0, "completed": 0, "failed": 0,
            "latencies_ms": [], "daemon_ms": [], "missed": {"client": 0, "daemon": 0},
            "ended": {"client": 0, "daemon": 0}, "errors": {}}


def tally(row: dict, res=None, exc: BaseException | None = None) -> None:
    """Count one job into ``row`` by wire/latency.py's rules: a result on both clocks (client
    latency, the daemon's ``total_ms``); a cancelled job neither hit nor miss; a shed or failed
    one the daemon answered a miss on both; one without an answer (``DaemonRestarted``,
    ``NoReplica``, a timeout) a miss by the client's clock."""
    from client_lib import JobCancelled, JobFailed, JobShed
    row["submitted"] += 1
    if exc is None:
        row["completed"] += 1
        row["latencies_ms"].append(res.latency_ms)
        row["daemon_ms"].append(res.total_ms)
        for side, ms in (("client", res.latency_ms), ("daemon", res.total_ms)):
            row["ended"][side] += 1
            row["missed"][side] += missed_slo("done", ms, row["slo_ms"])
        return
    row["failed"] += 1
    row["errors"][type(exc).__name__] = row["errors"].get(type(exc).__name__, 0) + 1
    sides = () if isinstance(exc, JobCancelled) else \
        ("client", "daemon") if isinstance(exc, JobShed | JobFailed) else ("client",)
    for side in sides:
        row["ended"][side] += 1
        row["missed"][side] += missed_slo("failed", 0.0, row["slo_ms"])


def summarize(name: str, rows: list[dict]) -> dict:
    """One tenant's (or everyone's) numbers by the definitions of wire/latency.py, from both
    clocks: ``client_*`` submit() to answer, ``daemon_*`` the daemon's total_ms of the same
    jobs; ``gap_*`` = client - daemon per job: the transport both ways and the queues in
    either process."""
    lat = sorted(x for r in rows for x in r["latencies_ms"])
    dlat = sorted(x for r in rows for x in r["daemon_ms"])
    gap = sorted(c - d for r in rows for c, d in zip(r["latencies_ms"], r["daemon_ms"]))
    out = {"tenant": name, "submitted": sum(r["submitted"] for r in rows),
           "completed": sum(r["completed"] for r in rows),
           "failed": sum(r["failed"] for r in rows)}
    for side, xs in (("client", lat), ("daemon", dlat)):
        out[f"{side}_p50_ms"] = percentile(xs, 0.50, presorted=True)
        out[f"{side}_p99_ms"] = percentile(xs, 0.99, presorted=True)
        out[f"{side}_slo_attainment"] = attainment(sum(r["missed"][side] for r in rows),
                                                   sum(r["ended"][side] for r in rows))
    out["gap_min_ms"] = gap[0] if gap else None
    out["gap_p50_ms"] = percentile(gap, 0.50, presorted=True)
    out["gap_max_ms"] = gap[-1] if gap else None
    return out


def run_load(endpoint: str, workload_name: str, clients: int, rate: float, duration: float,
             seed: int = 0, timeout: float = 5.0) -> dict:
    """Start ``clients`` worker processes and aggregate their results."""
    tenants = workload(workload_name)
    if clients < 1:
        raise ValueError("--clients must be at least 1")
    if rate < 0 or duration <= 0:
        raise ValueError("--rate must be >= 0 and --duration > 0")
    per_tenant = [sum(1 for i in range(clients) if i % len(tenants) == t) for t in range(len(tenants))]
    total_w = sum(t.weight for t, n in zip(tenants, per_tenant) if n)
    procs = []
    start_at = time.time() + 1.0 + 0.3 * clients
    for i in range(clients):
        t = i % len(tenants)
        cfg = WorkerConfig(endpoint, workload_name, t,
                           rate * tenants[t].weight / total_w / per_tenant[t], duration,
                           seed * 1000 + i, timeout=timeout, start_at=start_at)
        procs.append(subprocess.Popen([sys.executable, "-m", "gpusched.loadgen",
                                       json.dumps(asdict(cfg))],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows, errors = [], []
    try:
        for p in procs:
            out, err = p.communicate(timeout=duration + 90 + 0.3 * clients)
            if p.returncode != 0:
                errors.append(err.strip().splitlines()[-1] if err.strip()
                              else f"exit {p.returncode}")
                continue
            rows.append(json.loads(out.strip().splitlines()[-1]))
    except BaseException:  # Ctrl-C, SIGTERM, a hung client: no client may outlive us
        for p in procs:
            if p.poll() is None:
                p.kill()
        raise
    if errors and not rows:
        raise ValueError(f"every client failed; first error: {errors[0]}")
    result = {"workload": workload_name, "clients": clients, "rate": rate, "duration": duration,
              "tenants": [summarize(t.tenant, [r for r in rows if r["tenant"] == t.tenant])
                          for t in tenants if any(r["tenant"] == t.tenant for r in rows)],
              "overall": summarize("overall", rows), "client_errors": errors}
    return result


if __name__ == "__main__":
    try:
        res = run_worker(WorkerConfig(**json.loads(sys.argv[1])))
    except Exception as e:  # noqa: BLE001 - reported to the parent on stderr, one line
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(res))
