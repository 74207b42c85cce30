"""The scheduler core: pure policy, no I/O and no clock of its own.

The live daemon and the simulator both drive this class, passing ``now`` in:
``add`` a job, ``next_dispatch`` to get the next kernel to launch (or None), ``on_complete``
when the device reports it finished, ``abort`` to cancel (idempotent).

Paella's dispatch rule: at most one kernel per job is outstanding; the head job's next kernel
is dispatched when its SM demand fits in the free SM resources (summed over SMs), or, if it
does not, as one of at most ``max_extra`` kernels beyond them, so the device's own queues stay
short and the software policy, not the hardware, decides the order.
"""
from __future__ import annotations

import logging

from .gpu_specs import ZERO, Resources
from .jobs import TERMINAL, Job, JobState, KernelSpec, ModelEntry
from .policies import Policy

log = logging.getLogger("gpusched.core")


class SchedulerCore:
    def __init__(self, policy: Policy, capacity: Resources, max_extra: int = 2,
                 shed: bool = False):
        self.policy = policy
        self.capacity = capacity
        self.max_extra = max_extra
        self.shed = shed
        self.queue = policy.make_queue()
        self.used: Resources = ZERO
        self.extra = 0
        self.inflight = 0
        self._finished: list[Job] = []
        self._type_ids: dict[str, int] = {}

    # -- models -----------------------------------------------------------------------------
    def make_model(self, key, name: str, kernels: list[KernelSpec]) -> ModelEntry:
        type_id = self._type_ids.setdefault(name, len(self._type_ids))
        return ModelEntry(key, name, kernels, self.capacity, type_id)

    # -- jobs -------------------------------------------------------------------------------
    def add(self, job: Job, now: float) -> None:
        if job.state in TERMINAL:  # aborted before it arrived
            return
        job.state = JobState.QUEUED
        self.queue.push(job, now)

    def abort(self, job: Job, now: float, state: JobState = JobState.CANCELLED) -> bool:
        """Cancel a job. Returns False if it had already ended. A kernel already on the
        device still runs out; its resources are freed in ``on_complete``."""
        if job.state in TERMINAL:
            return False
        if job.state is JobState.QUEUED:
            self.queue.discard(job)
        job.state = state
        job.finish = now
        return True

    def queued_jobs(self):
        return list(self.queue.jobs())

    def next_dispatch(self, now: float) -> Job | None:
        """The job whose next kernel (``job.next_kernel``) should launch now, or None."""
        queue, policy = self.queue, self.policy
        while True:
            job = queue.peek()
            if job is None:
                return None
            if policy.checks_slack and not job.late and policy.hopeless(job, now):
                queue.pop()
                if self.shed:
                    job.state = JobState.SHED
                    job.finish = now
                    self._finished.append(job)
                    log.debug("core: shed job=%s model=%s", job.id, job.model.name)
                else:
                    job.late = True
                    queue.push(job, now)
                continue
            demand = job.model.demands[job.next_kernel]
            if demand.fits_with(self.used, self.capacity):
                job.extra = False
            elif self.extra < self.max_extra:
                job.extra = True
                self.extra += 1
            else:
                return None
            queue.pop()
            self.used = self.used.plus(demand)
            self.inflight += 1
            job.state = JobState.RUNNING
            job.dispatched_at = now
            if job.first_start is None:
                job.first_start = now
            return job

    def _release(self, job: Job) -> None:
        self.used = self.used.minus(job.model.demands[job.next_kernel])
        self.inflight -= 1
        if job.extra:
            self.extra -= 1
            job.extra = False

    def on_complete(self, job: Job, now: float, duration_s: float) -> None:
        """The device finished ``job``'s kernel ``job.next_kernel`` after ``duration_s``."""
        self._release(job)
        job.model.estimates.observe(job.next_kernel, duration_s)
        job.exec_s += duration_s
        if job.state is not JobState.RUNNING:  # aborted while its kernel ran
            return
        job.next_kernel += 1
        if job.next_kernel == len(job.model.kernels):
            job.state = JobState.DONE
            job.finish = now
            self._finished.append(job)
        else:
            job.state = JobState.QUEUED
            self.queue.push(job, now)

    def on_fail(self, job: Job, now: float, error: str) -> None:
        """The device could not run ``job``'s current kernel: that job fails, nothing else."""
        self._release(job)
        if job.state is not JobState.RUNNING:
            return
        job.state = JobState.FAILED
        job.error = error
        job.finish = now
        self._finished.append(job)

    def drain_finished(self) -> list[Job]:
        """Jobs that reached DONE, SHED or FAILED since the last call."""
        done, self._finished = self._finished, []
        return done

    def __len__(self) -> int:
        return len(self.queue)
