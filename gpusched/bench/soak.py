"""``gpusched bench soak``: many client processes, each a raw protocol peer that keeps a window
of jobs in flight, against one daemon on the simulated GPU.

Each worker counts the answers per request id, so a lost or doubled answer is seen; the daemon's
RSS is read before and after. Jobs carry an SLO far above their solo latency, so the p99 shows
whether the daemon keeps up.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from gpusched.bench.fuzz import rss_mb
from gpusched.procs import start_daemon, stop_daemon

SLO_MS = 200.0
KERNELS = 4
EST_US = 20.0


def worker(endpoint: str, jobs: int, window: int, seconds: float, tenant: str) -> dict:
    import zmq

    from scheduler_daemon.wire import protocol as P
    from scheduler_daemon.wire.kernels import KernelSpec

    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send_multipart(P.encode(P.Hello(version=P.PROTOCOL_VERSION, tenant=tenant)))
    s.recv_multipart()
    s.send_multipart(P.encode(P.Register(req_id=1, model="m", kernels=[
        KernelSpec(name=f"k{i}", est_us=EST_US, grid=8, block=256) for i in range(KERNELS)])))
    s.recv_multipart()
    answers: dict[int, int] = {}
    sent_at: dict[int, float] = {}
    lat = []
    completed = 0
    statuses: dict[str, int] = {}
    last_heard = time.perf_counter()
    nxt, end = 2, time.perf_counter() + seconds
    outstanding = 0
    while (nxt - 2 < jobs and time.perf_counter() < end) or outstanding:
        while outstanding < window and nxt - 2 < jobs and time.perf_counter() < end:
            sent_at[nxt] = time.perf_counter()
            s.send_multipart(P.encode(P.Submit(req_id=nxt, model="m", slo_ms=SLO_MS)))
            nxt += 1
            outstanding += 1
        if not s.poll(250):  # like client_lib: a heartbeat while waiting, so not "silent"
            if time.perf_counter() - last_heard > 10:
                break  # the daemon stopped answering: what is missing counts as lost
            s.send_multipart(P.encode(P.Ping(seq=0)))
            continue
        last_heard = time.perf_counter()
        f = s.recv_multipart()
        msg = P.decode(f[0], f[1], P.REPLIES)
        if isinstance(msg, P.Pong):
            continue
        rid = getattr(msg, "req_id", 0)
        answers[rid] = answers.get(rid, 0) + 1
        if answers[rid] == 1 and rid in sent_at:
            outstanding -= 1
            status = msg.status if isinstance(msg, P.Done) else type(msg).__name__
            statuses[status] = statuses.get(status, 0) + 1
            if isinstance(msg, P.Done) and msg.status == "done":
                completed += 1
                lat.append((time.perf_counter() - sent_at[rid]) * 1e3)
    submitted = nxt - 2
    return {"submitted": submitted, "answered": sum(1 for r in sent_at if answers.get(r)),
            "duplicates": sum(v - 1 for v in answers.values() if v > 1), "completed": completed,
            "statuses": statuses, "latencies_ms": lat}


def run_soak(duration: float = 60.0, clients: int = 64, jobs: int = 1000, window: int = 4,
             grace_s: float = 180.0) -> dict:
    """``grace_s``: how long after ``duration`` a client may still take; one that takes longer
    is killed and reported in ``client_errors`` (its jobs in ``lost_answers``, as if none was
    answered: it never said how many it sent). The daemon and every client are stopped
    whatever happens."""
    proc, ep = start_daemon("--backend", "sim", "--gpu-spec", "H100")
    procs: list[subprocess.Popen] = []
    try:
        rss_start = rss_mb(proc.pid)
        procs = [subprocess.Popen([sys.executable, "-m", "gpusched.bench.soak", ep, str(jobs),
                                   str(window), str(duration), f"soak{i % 8}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(clients)]
        rows, errors, failed = collect_clients(procs, time.monotonic() + duration + grace_s,
                                               grace_s)
        alive = proc.poll() is None
        rss_end = rss_mb(proc.pid) if alive else 0.0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        stop_daemon(proc)
    lat = np.array([x for r in rows for x in r["latencies_ms"]])
    submitted = sum(r["submitted"] for r in rows)
    answered = sum(r["answered"] for r in rows)
    return {"clients": clients, "messages": submitted + failed * jobs, "answered": answered,
            "completed": sum(r["completed"] for r in rows),
            "statuses": {k: sum(r["statuses"].get(k, 0) for r in rows)
                         for k in sorted({k for r in rows for k in r["statuses"]})},
            "lost_answers": submitted - answered + failed * jobs,
            "duplicate_answers": sum(r["duplicates"] for r in rows),
            "crashes": int(not alive), "client_errors": errors,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "slo_ms": SLO_MS, "rss_start_mb": rss_start, "rss_end_mb": rss_end}


def collect_clients(procs: list, deadline: float, grace_s: float) -> tuple[list, list, int]:
    """Each client's JSON row; a client still running at ``deadline`` is killed and reported.
    Returns (rows, errors, failed clients)."""
    rows, errors, failed = [], [], 0
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            errors.append(f"client {p.pid} still running {grace_s:g} s after the end: killed")
            failed += 1
            continue
        if p.returncode == 0:
            rows.append(json.loads(out.strip().splitlines()[-1]))
        else:
            errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
            failed += 1
    return rows, errors, failed


if __name__ == "__main__":
    ep, jobs, window, seconds, tenant = sys.argv[1:6]
    print(json.dumps(worker(ep, int(jobs), int(window), float(seconds), tenant)))
