"""``gpusched bench overhead``: what the daemon costs on top of ZeroMQ, measured in one run.

- ``zmq_rtt_us``: raw DEALER -> ROUTER echo (another process) round trip.
- ``daemon_rtt_us``: SUBMIT -> DONE of a one-kernel job on the zero-duration fluid device,
  from a raw protocol DEALER (the daemon's cost alone); ``client_rtt_us`` the same through
  ``client_lib.Client.run`` (adds the library's cost).
- ``jobs_per_s``: sustained completions with 4 client processes, 32 jobs in flight each.
- ``decision_us``: one scheduler decision (pick the next kernel, requeue its job) with 10, 1,000
  and 10,000 jobs queued, for each policy (the headline figure is the daemon's default policy).
All figures are medians.
"""
from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from collections import deque

import zmq

from gpusched.procs import start_daemon, stop_daemon, temp_endpoint, wait_ready
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.core.policies import POLICIES, make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.server.config import DaemonConfig
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.kernels import KernelSpec

TINY = [KernelSpec(name="k0", est_us=0.0, grid=1, block=32)]


def _echo(endpoint: str) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    while True:
        f = s.recv_multipart(copy=False)
        if len(f) == 2 and f[1].bytes == b"QUIT":
            return
        if f[1].bytes == b"PING":  # answer wait_ready's probe like a daemon would
            s.send_multipart([f[0], *P.encode(P.Pong(seq=0, daemon_id="echo"))])
            continue
        s.send_multipart(f, copy=False)


class _EchoPeer:
    """A raw ZeroMQ ROUTER echo in another process: the floor the daemon is compared with."""

    def __init__(self):
        self.endpoint = temp_endpoint("echo")
        self.proc = subprocess.Popen([sys.executable, "-m", "gpusched.bench.overhead", "--echo",
                                      self.endpoint])
        wait_ready(self.endpoint, self.proc)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        self.body = P.encode(P.Submit(req_id=1, model="tiny-net", slo_ms=10.0))

    def round_trips(self, n: int) -> list[float]:
        d, body, ts = self.sock, self.body, []
        for _ in range(n):
            t = time.perf_counter()
            d.send_multipart(body)
            d.recv_multipart()
            ts.append(time.perf_counter() - t)
        return ts

    def close(self) -> None:
        self.sock.send(b"QUIT")
        self.sock.close(0)
        self.proc.wait(5)


class _DaemonPeer:
    """A raw protocol DEALER that submits one-kernel jobs and waits for each DONE."""

    def __init__(self, endpoint: str):
        d = self.sock = zmq.Context.instance().socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(endpoint)
        d.send_multipart(P.encode(P.Hello(version=P.PROTOCOL_VERSION, tenant="bench")))
        d.recv_multipart()
        d.send_multipart(P.encode(P.Register(req_id=1, model="tiny-net", kernels=TINY)))
        d.recv_multipart()
        self.req = 1

    def round_trips(self, n: int) -> list[float]:
        d, ts = self.sock, []
        for _ in range(n):
            self.req += 1
            frames = P.encode(P.Submit(req_id=self.req, model="tiny-net", slo_ms=10.0))
            t = time.perf_counter()
            d.send_multipart(frames)
            reply = d.recv_multipart()
            ts.append(time.perf_counter() - t)
            if reply[0] != b"DONE":
                raise RuntimeError(f"daemon answered {reply[0]!r}, not DONE")
        return ts


def paired_rtts(endpoint: str, rounds: int, batches: int = 10) -> tuple[float, float]:
    """Median raw-ZeroMQ and daemon round trips, measured in alternating batches so that
    machine noise hits both alike."""
    echo, daemon = _EchoPeer(), _DaemonPeer(endpoint)
    try:
        echo.round_trips(200)
        daemon.round_trips(200)
        z, d = [], []
        per = max(1, rounds // batches)
        for _ in range(batches):
            z += echo.round_trips(per)
            d += daemon.round_trips(per)
    finally:
        echo.close()
        daemon.sock.close(0)
    return statistics.median(z) * 1e6, statistics.median(d) * 1e6


def client_rtt(endpoint: str, rounds: int) -> float:
    from client_lib import Client
    with Client(endpoint, tenant="bench-client") as c:
        c.register_model("tiny-net", TINY)
        ts = []
        for i in range(rounds + 200):
            t = time.perf_counter()
            c.run("tiny-net", slo_ms=10.0)
            if i >= 200:
                ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def kernel_overhead(endpoint: str, kernels: int = 2000, runs: int = 7) -> float:
    """The daemon's own cost per kernel: a model of ``kernels`` zero-duration kernels (the
    daemon dispatches them one at a time, each after the previous one's completion), its job
    time over its kernel count, less one request's round trip. The simulated experiments use
    it as our dispatcher's cost per kernel notice (gpusched/experiments/host.py)."""
    from client_lib import Client
    with Client(endpoint, tenant="bench-kernels") as c:
        c.register_model("long-net", [KernelSpec(name=f"k{i}", est_us=0.0) for i in
                                      range(kernels)])
        c.register_model("tiny-net", TINY)
        c.run("long-net")
        per = []
        for _ in range(runs):
            t = time.perf_counter()
            c.run("long-net")
            long_s = time.perf_counter() - t
            t = time.perf_counter()
            c.run("tiny-net")
            tiny_s = time.perf_counter() - t
            per.append((long_s - tiny_s) / (kernels - len(TINY)))
    return statistics.median(per) * 1e6


def _throughput_worker(endpoint: str, seconds: float, window: int) -> int:
    from client_lib import Client
    with Client(endpoint, tenant="bench-tput") as c:
        c.register_model("tiny-net", TINY)
        q: deque = deque(c.submit("tiny-net") for _ in range(window))
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            q.popleft().result(10)
            n += 1
            q.append(c.submit("tiny-net"))
        for f in q:
            f.result(10)
    return n


def jobs_per_s(endpoint: str, clients: int, seconds: float, window: int = 32) -> float:
    procs = [subprocess.Popen([sys.executable, "-m", "gpusched.bench.overhead", "--tput",
                               endpoint, str(seconds), str(window)], stdout=subprocess.PIPE,
                              text=True) for _ in range(clients)]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        total += int(out.strip().splitlines()[-1])
    return total / seconds


def decision_us(policy: str, queued: int, cycles: int = 3000, seed: int = 0) -> float:
    """Median cost of one ``next_dispatch`` + ``on_complete`` (which requeues the job)."""
    rng = random.Random(seed)
    core = SchedulerCore(make_policy(policy), gpu_spec("T4").capacity, max_extra=0)
    models = [core.make_model(i, f"m{i}", [KernelSpec(name="k", est_us=rng.uniform(5, 500),
                                                      grid=40, block=1024)] * 20)
              for i in range(8)]
    now = 0.0

    def new_job(i: int) -> Job:
        return Job(i, "t", rng.choice(models), rng.uniform(1, 1000), now + rng.uniform(0, 1))

    for i in range(queued):
        core.add(new_job(i), now)
    nxt = queued
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(cycles):
            job = core.next_dispatch(now)
            core.on_complete(job, now, 1e-4)
            if job.state.value == "done":  # keep the queue length constant
                core.add(new_job(nxt), now)
                nxt += 1
            core.drain_finished()
        batches.append((time.perf_counter() - t) / cycles)
    return statistics.median(batches) * 1e6


def run_overhead(rounds: int = 2000, seconds: float = 3.0, clients: int = 4) -> dict:
    res: dict = {}
    proc, ep = start_daemon("--backend", "fluid", "--speed", "0")
    try:
        res["zmq_rtt_us"], res["daemon_rtt_us"] = paired_rtts(ep, rounds)
        res["client_rtt_us"] = client_rtt(ep, rounds)
        res["kernel_overhead_us"] = kernel_overhead(ep)
        res["jobs_per_s"] = jobs_per_s(ep, clients, seconds)
    finally:
        stop_daemon(proc)
    res["rtt_ratio"] = res["daemon_rtt_us"] / res["zmq_rtt_us"]
    res["client_rtt_ratio"] = res["client_rtt_us"] / res["zmq_rtt_us"]
    by_policy = {p: {str(n): decision_us(p, n) for n in (10, 1000, 10000)} for p in POLICIES}
    res["decision_us"] = by_policy[DaemonConfig.policy]  # the daemon's default
    res["decision_us_by_policy"] = by_policy
    return res


def print_overhead(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="gpusched bench overhead (medians)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    t.add_row("raw ZeroMQ DEALER/ROUTER round trip", f"{res['zmq_rtt_us']:.1f} us", "")
    t.add_row("daemon round trip, 1-kernel job, zero-duration device",
              f"{res['daemon_rtt_us']:.1f} us", "")
    t.add_row("  ratio to raw ZeroMQ", f"{res['rtt_ratio']:.2f}x", "<= 1.5x")
    t.add_row("same through client_lib.Client.run", f"{res['client_rtt_us']:.1f} us "
              f"({res['client_rtt_ratio']:.2f}x)", "")
    t.add_row("sustained jobs/s, 4 client processes", f"{res['jobs_per_s']:.0f}", "")
    t.add_row("daemon cost per kernel (notice, decision, launch)",
              f"{res['kernel_overhead_us']:.1f} us", "")
    for n, v in res["decision_us"].items():
        t.add_row(f"decision time, {int(n):,} queued jobs ({DaemonConfig.policy})", f"{v:.2f} us",
                  "<= 10 us" if n == "10000" else "")
    Console().print(t)
    t2 = Table(title="decision time by policy (us)")
    t2.add_column("policy")
    for n in ("10", "1000", "10000"):
        t2.add_column(f"{int(n):,} queued", justify="right")
    for p, row in res["decision_us_by_policy"].items():
        t2.add_row(p, *(f"{row[n]:.2f}" for n in ("10", "1000", "10000")))
    Console().print(t2)


if __name__ == "__main__":
    if sys.argv[1] == "--echo":
        _echo(sys.argv[2])
    elif sys.argv[1] == "--tput":
        print(_throughput_worker(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
    else:
        print(json.dumps(run_overhead(), indent=2))
