"""The stand-in simulated GPU: kernels share the SMs as a fluid.

Each resident kernel takes a share of the GPU equal to its SM demand over capacity; while the
shares sum to more than one, every kernel runs proportionally slower (processor sharing).
It runs in whatever environment it is given: virtual time for experiments and tests, real time
under the daemon. ``speed`` scales every kernel's duration (0 gives a zero-duration device,
used to measure the daemon's own overhead).
"""
from __future__ import annotations

import math

from scheduler_daemon.clock import Timer
from scheduler_daemon.core.gpu_specs import GpuSpec
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.devices.base import Device


class _Running:
    __slots__ = ("job", "work", "share", "start")

    def __init__(self, job: Job, work: float, share: float, start: float):
        self.job, self.work, self.share, self.start = job, work, share, start


class FluidDevice(Device):
    name = "fluid"

    def __init__(self, spec: GpuSpec, speed: float = 1.0):
        self.spec = spec
        self.speed = speed
        self._running: list[_Running] = []
        self._last = 0.0
        self._load = 0.0
        self._timer: Timer | None = None
        self.busy_s = 0.0  # integral of min(1, load) dt, for utilisation

    def _advance(self, now: float) -> None:
        dt = now - self._last
        if dt > 0 and self._running:
            rate = 1.0 / max(1.0, self._load)
            for r in self._running:
                r.work -= dt * rate
            self.busy_s += dt * min(1.0, self._load)
        self._last = now

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._running:
            return
        rate = 1.0 / max(1.0, self._load)
        nxt = min(r.work for r in self._running)
        self._timer = self.env.schedule(max(0.0, nxt) / rate, self._finish_due)

    def launch(self, job: Job) -> None:
        now = self.env.now
        if self._running:
            self._advance(now)
        else:
            self._last = now
        k = job.cur
        work = job.model.kernels[k].est_us * 1e-6 * self.speed
        share = job.model.shares[k]
        self._running.append(_Running(job, work, share, now))
        self._load += share
        self._reschedule()

    def _finish_due(self) -> None:
        self._timer = None
        now = self.env.now
        self._advance(now)
        running = self._running
        # "finished" within float resolution of the clock: an absolute epsilon livelocks once
        # the spacing of floats near `now` exceeds it (virtual times of days)
        tol = 1e-12 + 4 * math.ulp(now)
        if len(running) == 1 and running[0].work <= tol:  # the common case, made cheap
            done, self._running, self._load = running, [], 0.0
        else:
            done = [r for r in running if r.work <= tol]
            if done:
                self._running = [r for r in running if r.work > tol]
                self._load = sum(r.share for r in self._running)
        self._reschedule()
        for r in done:
            self.on_complete(r.job, now, now - r.start)

    def utilisation(self) -> float:
        return min(1.0, self._load)
