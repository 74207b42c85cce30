"""Drive the scheduler core and a device in virtual time (no sockets, no wall clock).

This is the same core, device and dispatch pump the daemon runs; only the environment differs.
Used by the policy tests, the experiments, placement replay and profiling.
"""
from __future__ import annotations

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.base import Device
from scheduler_daemon.pump import Pump


class VirtualRun:
    def __init__(self, core: SchedulerCore, device: Device, env: Environment | None = None):
        if core.fits is None:   # the core sees what the device observes per SM
            core.fits = device.fits_now
        self.core = core
        self.device = device
        self.env = env or Environment()
        self.pump = Pump(core, device, self.env)
        self.finished: list[Job] = []
        device.start(self.env, self._complete, self._fail, self._started)

    def _complete(self, job: Job, now: float, duration_s: float) -> None:
        self.core.on_complete(job, now, duration_s)
        self._pump()

    def _started(self, job: Job, now: float) -> None:
        if job.extra:   # only a freed extra slot can let more work go
            self.core.on_started(job, now)
            self._pump()

    def _fail(self, job: Job, now: float, message: str) -> None:
        self.core.on_fail(job, now, message)
        self._pump()

    def _pump(self) -> None:
        self.pump.dispatch(self.env.now)
        self.finished.extend(self.core.drain_finished())

    def submit_at(self, job: Job) -> None:
        """Schedule ``job`` to arrive at ``job.arrival``."""
        def arrive(job=job):
            self.core.add(job, self.env.now)
            self._pump()
        self.env.schedule_at(job.arrival, arrive)

    def run(self, until: float | None = None) -> list[Job]:
        self.env.run(until)
        return self.finished
