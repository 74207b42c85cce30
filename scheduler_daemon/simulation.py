"""Drive the scheduler core and a device in virtual time (no sockets, no wall clock).

This is the same core, device and dispatch pump the daemon runs; only the environment differs.
Used by the policy tests, the experiments, placement replay and profiling.

``notice_s`` is the software dispatcher's own cost per kernel: a device's notice (a kernel's
blocks started, a kernel completed) reaches the core that long after it happened, one notice
at a time (one dispatcher thread), and the launches the core then decides go out at that
moment. Zero for the hardware-queue baselines, whose kernels are all launched up front.

``launch_s``: what one more launch of a run costs that thread (a run of ``n`` kernels, the
core's quantum, is ``n`` launches back to back: the first is in the notice's cost, the other
``n - 1`` keep the thread busy ``launch_s`` each; the device's rule R7 lets them reach the GPU
as they are made). A launch the core decides while the thread is still launching a run's
kernels goes out when it is done with them.
"""
from __future__ import annotations

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.base import Device
from scheduler_daemon.pump import Pump


class VirtualRun:
    def __init__(self, core: SchedulerCore, device: Device, env: Environment | None = None,
                 notice_s: float = 0.0, launch_s: float = 0.0):
        if core.fits is None:   # the core sees what the device observes per SM
            core.fits = device.fits_now
        self.core = core
        self.device = device
        self.env = env or Environment()
        self.launch_s = launch_s
        self.pump = Pump(core, device, self.env, self._launch if launch_s else None)
        self.notice_s = notice_s
        self._host_free = 0.0   # when the dispatcher thread is next idle
        self._launch_free = 0.0  # when it has launched the kernels of the runs it started
        self.finished: list[Job] = []
        self.on_finished = None  # called with each finished job, when the core learns of it
        device.start(self.env, self._complete, self._fail, self._started)

    # device notices -> the core (after the dispatcher's cost, one at a time) --------------
    def _later(self, fn, arg) -> None:
        at = max(self.env.now, self._host_free) + self.notice_s
        self._host_free = at
        self.env.call_at(at, fn, arg)

    def _launch(self, job: Job) -> None:
        now = self.env.now
        at = self._launch_free
        if at > now:   # after the launches of the run it is making
            self.env.call_at(at, self._launch_later, job)
        else:
            at = now
            self.device.launch(job)
        if job.run_len > 1:   # the rest of the run's launches, back to back
            busy = (job.run_len - 1) * self.launch_s
            self._launch_free = at + busy
            self._host_free = max(now, self._host_free) + busy

    def _launch_later(self, job: Job) -> None:
        if not self.pump.launch(job, self.env.now, self.device.launch):
            self._pump()   # the job failed: what it held may let another go

    def _complete(self, job: Job, now: float, duration_s: float,
                  per_kernel: list | None = None) -> None:
        if self.notice_s:
            self._later(self._complete_noticed, (job, duration_s, per_kernel))
        else:
            self._on_complete(job, duration_s, per_kernel)

    def _complete_noticed(self, notice: tuple) -> None:
        self._on_complete(notice[0], notice[1], notice[2])

    def _on_complete(self, job: Job, duration_s: float, per_kernel: list | None) -> None:
        self.core.on_complete(job, self.env.now, duration_s, per_kernel)
        self._pump()

    def _started(self, job: Job, now: float) -> None:
        if not job.extra:   # only a freed extra slot can let more work go
            return
        if self.notice_s:
            self._later(self._on_started, job)
        else:
            self._on_started(job)

    def _on_started(self, job: Job) -> None:
        self.core.on_started(job, self.env.now)
        self._pump()

    def _fail(self, job: Job, now: float, message: str) -> None:
        self.core.on_fail(job, now, message)
        self._pump()

    def _pump(self) -> None:
        self.pump.dispatch(self.env.now)
        core = self.core
        if core.has_finished():
            done = core.drain_finished()
            self.finished.extend(done)
            if self.on_finished is not None:
                for job in done:
                    self.on_finished(job)

    # arrivals -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """``job`` arrives now."""
        self.core.add(job, self.env.now)
        self._pump()

    def submit_at(self, job: Job) -> None:
        """Schedule ``job`` to arrive at ``job.arrival``."""
        self.env.call_at(job.arrival, self.submit, job)

    def run(self, until: float | None = None) -> list[Job]:
        self.env.run(until)
        return self.finished
