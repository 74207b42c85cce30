"""The scheduler core: pure policy, no I/O and no clock of its own.

The live daemon and the simulator both drive this class, passing ``now`` in:
``add`` a job, ``next_dispatch`` to get the next kernel to launch (or None), ``on_complete``
when the device reports it finished, ``abort`` to cancel (idempotent).

Paella's dispatch rule (``policy.bounded``), as its artifact does it: at most one kernel per
job is outstanding; the head job's next kernel is dispatched when it fits (its SM demand fits
in what the core's dispatched kernels leave free, and, where the device can tell, its blocks
fit on the SMs as they are: ``fits``, the per-SM test Paella makes from its block notices), or,
if it does not, as one of at most ``max_extra`` kernels beyond them; an extra slot is freed when
all blocks of that kernel have started (``on_started``), not when it completes. So the device's
own queues stay short and the software policy, not the hardware, decides the order.

The baselines are policies of this same core that give the decision back to the hardware
(``bounded = False``): every queued kernel is dispatched at once onto the policy's stream
(one stream, one per job, per tenant or per model instance), optionally behind a gate that lets
one job at a time run on the GPU, or ``policy.instances(model)`` per model, each instance on
its own stream (``policy.gate``: Triton's instance groups).
"""
from __future__ import annotations

import logging
from collections import deque

from scheduler_daemon.core.gpu_specs import ZERO, Resources
from scheduler_daemon.core.jobs import TERMINAL, Job, JobState, ModelEntry
from scheduler_daemon.core.policies import Policy
from scheduler_daemon.wire.kernels import KernelSpec

log = logging.getLogger("gpusched.core")

STREAM_POOL = 500  # Paella gives each kernel its own stream from a pool of 500


class SchedulerCore:
    def __init__(self, policy: Policy, capacity: Resources, max_extra: int = 2,
                 shed: bool = False, fits=None):
        self.policy = policy
        self.fits = fits   # kernel spec -> bool | None: the device's per-SM fit test
        self.capacity = capacity
        self.max_extra = max_extra
        self.shed = shed or policy.sheds
        self.bounded = policy.bounded
        self.max_out = policy.per_job_outstanding or 1 << 30
        self.queue = policy.make_queue()
        self.used: Resources = ZERO
        self.extra = 0
        self.inflight = 0
        self._finished: list[Job] = []
        self._type_ids: dict[str, int] = {}
        self._streams = 0
        self._tenant_streams: dict[str, int] = {}
        self._holders: dict = {}                 # gate key -> [job or None] per instance
        self._parked: dict = {}                  # gate key -> deque of jobs waiting for it

    # -- models -----------------------------------------------------------------------------
    def make_model(self, key, name: str, kernels: list[KernelSpec]) -> ModelEntry:
        type_id = self._type_ids.setdefault(name, len(self._type_ids))
        return ModelEntry(key, name, kernels, self.capacity, type_id)

    # -- jobs -------------------------------------------------------------------------------
    def add(self, job: Job, now: float) -> None:
        if job.state in TERMINAL:  # aborted before it arrived
            return
        if self.policy.admission and self.policy.hopeless(job, now):
            self._end(job, JobState.SHED, now)  # Clockwork: refuse what cannot make it
            return
        job.state = JobState.QUEUED
        self.queue.push(job, now)

    def abort(self, job: Job, now: float, state: JobState = JobState.CANCELLED) -> bool:
        """Cancel a job. Returns False if it had already ended. Kernels already on the
        device still run out; their resources are freed in ``on_complete``."""
        if job.state in TERMINAL:
            return False
        if job.in_queue:
            self.queue.discard(job)
        job.state = state
        job.finish = now
        self._release_gate(job, now)
        return True

    def queued_jobs(self):
        """Jobs waiting in the ready queue or parked behind a gate."""
        parked = [j for p in list(self._parked.values()) for j in p if j.state not in TERMINAL]
        return list(self.queue.jobs()) + parked

    def _gate(self, job: Job):
        g = self.policy.gate
        return None if g is None else ("gpu" if g == "gpu" else job.model.key)

    def next_dispatch(self, now: float) -> Job | None:
        """The job whose kernel ``job.cur`` should launch now on ``job.stream``, or None."""
        queue, policy = self.queue, self.policy
        if policy.gate == "gpu" and self._holders.get("gpu", [None])[0] is not None:
            job = self._holders["gpu"][0]   # one job on the GPU: only it may go on
            if not job.in_queue:
                return None
            queue.discard(job)
            return self._dispatch(job, now)
        while True:
            job = queue.peek()
            if job is None:
                return None
            if policy.checks_slack and not job.late and policy.hopeless(job, now):
                queue.pop()
                if self.shed:
                    self._end(job, JobState.SHED, now)
                    log.debug("core: shed job=%s model=%s", job.id, job.model.name)
                else:
                    job.late = True
                    queue.push(job, now)
                continue
            if policy.gate is not None and job.first_start is None:
                gate = self._gate(job)
                if None not in self._slots(gate, job):  # all busy: wait, in pop order
                    queue.pop()
                    self._parked.setdefault(gate, deque()).append(job)
                    continue
            if self.bounded:
                demand = job.model.demands[job.next_kernel]
                if demand.fits_with(self.used, self.capacity) and self._fits_sms(job):
                    job.extra = False
                elif self.extra < self.max_extra:
                    job.extra = True
                    self.extra += 1
                else:
                    return None
                self.used = self.used.plus(demand)
            queue.pop()
            return self._dispatch(job, now)

    def _slots(self, gate, job: Job) -> list:
        slots = self._holders.get(gate)
        if slots is None:
            n = 1 if gate == "gpu" else self.policy.instances(job.model.name)
            slots = self._holders[gate] = [None] * n
        return slots

    def _fits_sms(self, job: Job) -> bool:
        fits = self.fits
        return fits is None or fits(job.model.kernels[job.next_kernel]) is not False

    def on_started(self, job: Job, now: float) -> None:
        """All blocks of ``job``'s outstanding kernel have been dispatched: an extra slot it
        held is free (Paella frees it here, not at completion)."""
        if job.extra:
            self.extra -= 1
            job.extra = False

    def _dispatch(self, job: Job, now: float) -> Job:
        job.cur = job.next_kernel
        job.next_kernel += 1
        job.outstanding += 1
        self.inflight += 1
        job.state = JobState.RUNNING
        if job.first_start is None:
            job.first_start = now
            if self.policy.gate is not None:
                slots = self._slots(self._gate(job), job)
                i = slots.index(None)
                slots[i] = job
                if self.policy.stream == "model":   # each instance has its own stream
                    job.stream = job.model.type_id * 4096 + i
        job.stream = self._stream(job)
        if job.outstanding < self.max_out and job.next_kernel < len(job.model.kernels):
            self.queue.push(job, now)  # the hardware will order its next kernel too
        return job

    def _stream(self, job: Job) -> int:
        mode = self.policy.stream
        if mode == "kernel":
            self._streams += 1
            return self._streams % STREAM_POOL
        if job.stream >= 0:
            return job.stream
        if mode == "job":
            self._streams += 1
            return self._streams
        if mode == "single":
            return 0
        if mode == "tenant":
            return self._tenant_streams.setdefault(job.tenant, len(self._tenant_streams))
        return job.model.type_id * 4096  # "model" without a gate: one stream per model

    def on_complete(self, job: Job, now: float, duration_s: float) -> None:
        """The device finished ``job``'s oldest outstanding kernel after ``duration_s``."""
        idx = job.done_kernels
        self._release(job, idx)
        if job.state is not JobState.FAILED:  # after a failure the kernel order is unknown
            job.model.estimates.observe(idx, duration_s)
        job.exec_s += duration_s
        job.done_kernels = idx + 1
        if job.state in TERMINAL:  # aborted while its kernel ran
            return
        if job.done_kernels == len(job.model.kernels):
            self._end(job, JobState.DONE, now)
        elif job.outstanding == 0:
            job.state = JobState.QUEUED
            if not job.in_queue:
                self.queue.push(job, now)

    def on_fail(self, job: Job, now: float, error: str) -> None:
        """The device could not run ``job``'s kernel: that job fails, nothing else."""
        self._release(job, job.done_kernels)
        if job.state in TERMINAL:
            return
        if job.in_queue:
            self.queue.discard(job)
        job.error = error
        self._end(job, JobState.FAILED, now)

    def _release(self, job: Job, idx: int) -> None:
        self.inflight -= 1
        job.outstanding -= 1
        if self.bounded:
            self.used = self.used.minus(job.model.demands[idx])
            if job.extra:
                self.extra -= 1
                job.extra = False

    def _end(self, job: Job, state: JobState, now: float) -> None:
        job.state = state
        job.finish = now
        self._finished.append(job)
        self._release_gate(job, now)

    def _release_gate(self, job: Job, now: float) -> None:
        if self.policy.gate is None or job.first_start is None:
            return
        gate = self._gate(job)
        slots = self._holders.get(gate, [])
        if job not in slots:
            return
        slots[slots.index(job)] = None
        parked = self._parked.get(gate)
        while parked:  # the next job that waited for this gate goes back to the queue
            nxt = parked.popleft()
            if nxt.state not in TERMINAL:
                self.queue.push(nxt, now)
                break

    def has_finished(self) -> bool:
        return bool(self._finished)

    def drain_finished(self) -> list[Job]:
        """Jobs that reached DONE, SHED or FAILED since the last call."""
        done, self._finished = self._finished, []
        return done

    def __len__(self) -> int:
        # list(): the metrics thread reads this while the loop may add a gate
        return len(self.queue) + sum(len(p) for p in list(self._parked.values()))
