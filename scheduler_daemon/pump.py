"""The one dispatch pump: what turns the core's decisions into device launches.

The live daemon (real time) and every virtual-time run (``simulation.VirtualRun``, the
experiments, placement replay, profiling) drive the core through this class, so a launch error
is handled the same everywhere: it fails that job, never the loop.
"""
from __future__ import annotations

import logging
from typing import Callable

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.base import Device

log = logging.getLogger("gpusched.pump")


class Pump:
    def __init__(self, core: SchedulerCore, device: Device, env: Environment,
                 launch: Callable[[Job], None] | None = None):
        """``launch``: what launches a job's dispatch (default ``device.launch``; a virtual
        run adds its host's cost of launching)."""
        self.core, self.device, self.env = core, device, env
        self._launch = device.launch if launch is None else launch

    def dispatch(self, now: float) -> None:
        """Launch every kernel the core picks at ``now``."""
        core = self.core
        job = core.next_dispatch(now)
        while job is not None:
            self.launch(job, now, self._launch)
            job = core.next_dispatch(now)

    def launch(self, job: Job, now: float, launch) -> bool:
        """``launch(job)``; a device error fails that job, not the loop (False)."""
        try:
            launch(job)
        except Exception as e:
            log.exception("pump: launch failed job=%s", job.id)
            self.core.on_fail(job, now, f"launch failed: {type(e).__name__}: {e}")
            return False
        return True

    def advance(self, on_finished: Callable[[Job], None]) -> None:
        """Run due device events, dispatch, hand finished jobs to ``on_finished``, until
        nothing more is due at the current time (finishing can queue more work)."""
        env, core = self.env, self.core
        while True:
            now = env.now
            if env.peek() <= now:
                env.run_due()
            self.dispatch(now)
            if core.has_finished():
                for job in core.drain_finished():
                    try:
                        on_finished(job)
                    except Exception:  # one job's answer failing must not lose the others'
                        log.exception("pump: answering job=%s failed", job.id)
                continue
            if env.peek() > now:
                return
