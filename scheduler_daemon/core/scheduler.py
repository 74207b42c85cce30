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

A scheduling quantum (``quantum_s``, 0 = off; devices that can run a job's kernels back to back,
``Capabilities.runs``) makes one dispatch a *run*: kernel ``cur`` and the kernels after it while
their estimated durations sum to at most the quantum (the first always goes). The run is one
scheduling point, so a model of many short kernels (a registered torch graph: views, adds,
layer norms of microseconds) does not pay the daemon's per-dispatch cost (a worker hand-off and
a loop pass, ~70 us on the CPU) for each, and a job that waits behind it waits about a quantum.
With other jobs waiting (or where runs cannot be stopped), a model's first job goes kernel by
kernel: until one has finished, its estimates are the registration's guesses, not
measurements. Where the device can stop a run between kernels
(``stoppable``: it reads ``job.stop`` before each), a job alone in the queue gets the rest of
its kernels as one run, and a job that joins the queue (an arrival, or a job whose kernel
finished) asks the runs of the jobs it would be chosen before to stop at their next kernel
boundary: it waits one kernel for the decision, as with no quantum at all.
"""
from __future__ import annotations

import logging
from collections import deque

from scheduler_daemon.core.gpu_specs import Resources
from scheduler_daemon.core.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    SHED,
    Job,
    JobState,
    ModelEntry,
    is_terminal,
)
from scheduler_daemon.core.policies import Policy
from scheduler_daemon.wire.kernels import KernelSpec

log = logging.getLogger("gpusched.core")

STREAM_POOL = 500  # Paella gives each kernel its own stream from a pool of 500
MAX_RUN = 64       # kernels in a run bounded by the quantum
_POOL = STREAM_POOL  # (compiled: a C constant)
_MAX_RUN = MAX_RUN
# policy.stream, as the small integers _stream switches on
_STREAM_MODES = {"kernel": 0, "job": 1, "single": 2, "tenant": 3, "model": 4}


class SchedulerCore:
    def __init__(self, policy: Policy, capacity: Resources, max_extra: int = 2,
                 shed: bool = False, fits=None, quantum_s: float = 0.0,
                 stoppable: bool = False, overlapping: bool = False):
        self.policy = policy
        # runs only where one kernel of a job is out at a time (runs complete as one) and the
        # policy allows them
        self.quantum_s = (quantum_s if policy.per_job_outstanding == 1 and policy.runs
                          else 0.0)
        self.stoppable = stoppable
        # the device runs dispatches at once (``Capabilities.concurrent_kernels``): with ``n``
        # runs out a scheduling point comes as each ends, so each may be ``n + 1`` quanta
        self.overlapping = overlapping
        self._runs: set = set()   # jobs with a run out (their ``stop`` ends it early)
        self.fits = fits   # kernel spec -> bool | None: the device's per-SM fit test
        self.capacity = capacity
        self.max_extra = max_extra
        self.shed = shed or policy.sheds
        self.bounded = policy.bounded
        self.max_out = policy.per_job_outstanding or 1 << 30
        self.queue = policy.make_queue()
        # SM demand of the dispatched kernels (``used``), as four counters
        self._used_threads = self._used_blocks = self._used_regs = self._used_smem = 0
        self.extra = 0
        self.inflight = 0
        self._finished: list[Job] = []
        self._type_ids: dict[str, int] = {}
        self._streams = 0
        self._tenant_streams: dict[str, int] = {}
        self._holders: dict = {}                 # gate key -> [job or None] per instance
        self._parked: dict = {}                  # gate key -> deque of jobs waiting for it
        # the policy's class-level switches, read once
        self._checks_slack = bool(policy.checks_slack)
        self._admission = bool(policy.admission)
        self._gate = policy.gate
        self._stream_mode = _STREAM_MODES.get(policy.stream, 4)

    @property
    def used(self) -> Resources:
        """SM resources held by the kernels this core dispatched (summed over SMs)."""
        return Resources(self._used_threads, self._used_blocks, self._used_regs,
                         self._used_smem)

    # -- models -----------------------------------------------------------------------------
    def make_model(self, key, name: str, kernels: list[KernelSpec]) -> ModelEntry:
        type_id = self._type_ids.setdefault(name, len(self._type_ids))
        return ModelEntry(key, name, kernels, self.capacity, type_id)

    # -- jobs -------------------------------------------------------------------------------
    def add(self, job: Job, now: float) -> None:
        if is_terminal(job.state):  # aborted before it arrived
            return
        if self._admission and self.policy.hopeless(job, now):
            self._end(job, SHED, now)  # Clockwork: refuse what cannot make it
            return
        job.state = QUEUED
        self._ready(job, now)

    def _ready(self, job: Job, now: float) -> None:
        """``job`` joins the ready queue. The runs out of jobs the policy ranks after it stop at
        their next kernel boundary: the decision it would win comes after one kernel, not
        after a run (a run the newcomer would not win goes on: stopping it would only cost
        dispatches, and two jobs would stop each other's runs at every kernel)."""
        self.queue.push(job, now)
        if self._runs:
            policy = self.policy
            k = policy.key(job, now)
            for j in self._runs:
                # ranked as at its next kernel boundary, where the decision would be (its
                # next_kernel is past the whole run, which would understate what remains)
                nk = j.next_kernel
                j.next_kernel = j.done_kernels + 1
                kj = policy.key(j, now)
                j.next_kernel = nk
                if k < kj:
                    j.stop = True

    def abort(self, job: Job, now: float, state: JobState = CANCELLED) -> bool:
        """Cancel a job. Returns False if it had already ended. Kernels already on the
        device still run out (a stoppable run ends at its next kernel boundary); their
        resources are freed in ``on_complete``."""
        if is_terminal(job.state):
            return False
        if job in self._runs:
            job.stop = True
        if job.in_queue:
            self.queue.discard(job)
        job.state = state
        job.finish = now
        self._release_gate(job, now)
        return True

    def queued_jobs(self):
        """Jobs waiting in the ready queue or parked behind a gate."""
        parked = [j for p in list(self._parked.values()) for j in p
                  if not is_terminal(j.state)]
        return list(self.queue.jobs()) + parked

    def _gate_key(self, job: Job):
        g = self._gate
        return None if g is None else ("gpu" if g == "gpu" else job.model.key)

    def next_dispatch(self, now: float) -> Job | None:
        """The job whose kernel ``job.cur`` should launch now on ``job.stream``, or None."""
        queue, policy = self.queue, self.policy
        if self._gate == "gpu":
            slots = self._holders.get("gpu")
            if slots is not None and slots[0] is not None:
                job = slots[0]   # one job on the GPU: only it may go on
                if not job.in_queue:
                    return None
                queue.discard(job)
                return self._dispatch(job, now, 1)   # (gates: baselines, no runs)
        while True:
            job = queue.peek()
            if job is None:
                return None
            if self._checks_slack and not job.late and policy.hopeless(job, now):
                queue.pop()
                if self.shed:
                    self._end(job, SHED, now)
                    log.debug("core: shed job=%s model=%s", job.id, job.model.name)
                else:
                    job.late = True
                    queue.push(job, now)
                continue
            if self._gate is not None and job.first_start is None:
                gate = self._gate_key(job)
                if None not in self._slots(gate, job):  # all busy: wait, in pop order
                    queue.pop()
                    self._parked.setdefault(gate, deque()).append(job)
                    continue
            n = self._run_count(job)
            if self.bounded:
                demand = self._run_demand(job.model, job.next_kernel, n)
                cap = self.capacity
                if (self._used_threads + demand.threads <= cap.threads
                        and self._used_blocks + demand.blocks <= cap.blocks
                        and self._used_regs + demand.regs <= cap.regs
                        and self._used_smem + demand.smem <= cap.smem
                        and self._fits_sms(job)):
                    job.extra = False
                elif self.extra < self.max_extra:
                    job.extra = True
                    self.extra += 1
                else:
                    return None
                self._used_threads += demand.threads
                self._used_blocks += demand.blocks
                self._used_regs += demand.regs
                self._used_smem += demand.smem
            queue.pop()
            return self._dispatch(job, now, n)

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

    def _run_count(self, job: Job) -> int:
        """Kernels the dispatch of ``job`` (the head of the queue) will run: 1 without a
        quantum or for a model's first job; all that is left for a job alone in the queue
        where runs can be stopped; else what ``_run_len`` allows."""
        if self.quantum_s <= 0.0:
            return 1
        cur = job.next_kernel
        if self.stoppable and len(self.queue) == 1:   # (runs: no gates)
            return len(job.model.kernels) - cur   # alone: all of it, until a stop
        if job.model.jobs_done > 0:
            return self._run_len(job.model, cur)
        return 1

    def _run_demand(self, model: ModelEntry, cur: int, n: int) -> Resources:
        """The SM demand a dispatch of kernels ``cur``..``cur + n - 1`` holds until it
        completes: each resource's largest over them (they run one after another, and the
        core hears of none of them until the last has finished)."""
        demands = model.demands
        d = demands[cur]
        if n == 1:
            return d
        t, b, r, m = d.threads, d.blocks, d.regs, d.smem
        for k in range(cur + 1, cur + n):
            d = demands[k]
            t = d.threads if d.threads > t else t
            b = d.blocks if d.blocks > b else b
            r = d.regs if d.regs > r else r
            m = d.smem if d.smem > m else m
        return Resources(t, b, r, m)

    def _dispatch(self, job: Job, now: float, n: int) -> Job:
        cur = job.cur = job.next_kernel
        if n > 1:
            job.stop = False
            self._runs.add(job)
        job.run_len = n
        job.next_kernel = cur + n
        job.outstanding += 1
        self.inflight += 1
        job.state = RUNNING
        if job.first_start is None:
            job.first_start = now
            if self._gate is not None:
                slots = self._slots(self._gate_key(job), job)
                i = slots.index(None)
                slots[i] = job
                if self._stream_mode == 4:   # "model": each instance has its own stream
                    job.stream = job.model.type_id * 4096 + i
        job.stream = self._stream(job)
        if job.outstanding < self.max_out and job.next_kernel < len(job.model.kernels):
            self.queue.push(job, now)  # the hardware will order its next kernel too
        return job

    def _run_len(self, model: ModelEntry, cur: int) -> int:
        """Kernels from ``cur`` whose estimates fit the quantum (at least one, at most
        ``MAX_RUN``: estimates are learned, and a tenant can make them small with cheap
        requests before costly ones, so where a run cannot be stopped the count bounds it).
        On a device that overlaps dispatches the quantum is per run out: with ``n`` others
        out, a job waiting for a scheduling point waits for the first of ``n + 1`` runs to
        end, about one quantum if they are each ``n + 1`` quanta long, and the dispatcher's
        notices stay about one per quantum instead of ``n + 1``."""
        est = model.estimates
        q = self.quantum_s
        if self.overlapping:
            q *= self.inflight + 1
        left = q - est.get(cur)
        k = cur + 1
        n = min(len(model.kernels), cur + _MAX_RUN)
        while k < n:
            e = est.get(k)
            if e > left:
                break
            left -= e
            k += 1
        return k - cur

    def _stream(self, job: Job) -> int:
        mode = self._stream_mode
        if mode == 0:                  # "kernel": Paella's pool
            self._streams += 1
            return self._streams % _POOL
        if job.stream >= 0:
            return job.stream
        if mode == 1:                  # "job"
            self._streams += 1
            return self._streams
        if mode == 2:                  # "single"
            return 0
        if mode == 3:                  # "tenant"
            return self._tenant_streams.setdefault(job.tenant, len(self._tenant_streams))
        return job.model.type_id * 4096  # "model" without a gate: one stream per model

    def on_complete(self, job: Job, now: float, duration_s: float,
                    per_kernel: list | None = None) -> None:
        """The device finished ``job``'s oldest outstanding kernel after ``duration_s``; a run
        (``job.run_len`` > 1) with ``per_kernel``, the duration of each of its kernels."""
        n = 1 if per_kernel is None else len(per_kernel)
        # (a device bug, not a tenant's: checked before anything changes)
        if n != job.run_len and (n == 0 or n > job.run_len or not job.stop):
            raise ValueError(f"a run of {job.run_len} kernels reported {n} completed")
        idx = job.done_kernels
        self._release(job, idx)
        if n < job.run_len:
            job.next_kernel = idx + n   # a stopped run: the rest is dispatched again
        if job.state is not FAILED:  # after a failure the kernel order is unknown
            est = job.model.estimates
            if per_kernel is None:
                est.observe(idx, duration_s)
            else:
                for i in range(n):
                    est.observe(idx + i, per_kernel[i])
        job.exec_s += duration_s
        job.done_kernels = idx + n
        if is_terminal(job.state):  # aborted while its kernel ran
            return
        if job.done_kernels == len(job.model.kernels):
            job.model.jobs_done += 1
            self._end(job, DONE, now)
        elif job.outstanding == 0:
            job.state = QUEUED
            if not job.in_queue:
                self._ready(job, now)

    def on_fail(self, job: Job, now: float, error: str, ran: int = 0) -> None:
        """The device could not run ``job``'s kernel: that job fails, nothing else. ``ran``:
        kernels of its run that finished before the one that failed."""
        self._release(job, job.done_kernels)
        job.done_kernels += ran
        if is_terminal(job.state):
            return
        if job.in_queue:
            self.queue.discard(job)
        job.error = error
        self._end(job, FAILED, now)

    def _release(self, job: Job, idx: int) -> None:
        self.inflight -= 1
        job.outstanding -= 1
        if self._runs:
            self._runs.discard(job)
        if self.bounded:
            demand = self._run_demand(job.model, idx, job.run_len)
            self._used_threads -= demand.threads
            self._used_blocks -= demand.blocks
            self._used_regs -= demand.regs
            self._used_smem -= demand.smem
            if job.extra:
                self.extra -= 1
                job.extra = False

    def _end(self, job: Job, state: JobState, now: float) -> None:
        job.state = state
        job.finish = now
        self._finished.append(job)
        self._release_gate(job, now)

    def _release_gate(self, job: Job, now: float) -> None:
        if self._gate is None or job.first_start is None:
            return
        gate = self._gate_key(job)
        slots = self._holders.get(gate, [])
        if job not in slots:
            return
        slots[slots.index(job)] = None
        parked = self._parked.get(gate)
        while parked:  # the next job that waited for this gate goes back to the queue
            nxt = parked.popleft()
            if not is_terminal(nxt.state):
                self._ready(nxt, now)
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
