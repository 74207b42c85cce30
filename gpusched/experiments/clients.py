"""The client side of Paella's experiment: per-model caps on jobs in flight, requests and their
answers, and when a finished job is noticed.

As in Paella's artifact (Fig. 11), the client caps concurrent jobs per model (36/38/24/13/10/
10/8/2, 141 in all for its mix); a job over its model's cap waits in the client, in arrival
order; latency counts from the job's intended arrival, waiting included. Every system runs
behind the same caps. A request costs half of ``rpc_us`` to reach the server and half for its
answer to come back; the CUDA stream baselines notice a finished job at their poller's next
sweep (``poll_us`` grid).
"""
from __future__ import annotations

import math
from collections import deque

from scheduler_daemon.core.jobs import Job

# Paella's client caps, by model (anchors.md, "Paella's evaluation, exactly")
PAELLA_CAPS = {"mobilenetv2": 36, "resnet18": 38, "resnet34": 24, "squeezenet1.1": 13,
               "resnet50": 10, "densenet121": 10, "googlenet": 8, "inceptionv3": 2}


class Clients:
    def __init__(self, run, caps: dict[str, int], rpc_s: float = 0.0, poll_s: float = 0.0):
        self.run, self.env = run, run.env
        self.caps = caps
        self.rpc_half = rpc_s / 2
        self.poll = poll_s
        self.inflight: dict[str, int] = {m: 0 for m in caps}
        self.waiting: dict[str, deque] = {m: deque() for m in caps}
        self.noticed: dict = {}          # job id -> when its client learnt it ended
        run.on_finished = self._finished

    def arrive(self, job: Job) -> None:
        """``job`` is due now (its intended arrival)."""
        m = job.model.name
        if self.inflight[m] < self.caps[m]:
            self._send(job)
        else:
            self.waiting[m].append(job)

    def _send(self, job: Job) -> None:
        self.inflight[job.model.name] += 1
        if self.rpc_half:
            self.env.schedule(self.rpc_half, lambda: self.run.submit(job))
        else:
            self.run.submit(job)

    def _finished(self, job: Job) -> None:
        now = self.env.now
        at = now + self.rpc_half
        if self.poll:                    # the next sweep of the stream poller
            at = math.ceil(now / self.poll - 1e-9) * self.poll
        if at > now:
            self.env.schedule_at(at, lambda: self._noticed(job))
        else:
            self._noticed(job)

    def _noticed(self, job: Job) -> None:
        self.noticed[job.id] = self.env.now
        m = job.model.name
        self.inflight[m] -= 1
        if self.waiting[m]:
            self._send(self.waiting[m].popleft())
