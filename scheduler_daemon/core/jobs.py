"""The job model: kernels, registered models, and one state object per job."""
from __future__ import annotations

import enum
from typing import Any

from scheduler_daemon.core.estimates import DurationEstimates
from scheduler_daemon.core.gpu_specs import Resources, kernel_demand
from scheduler_daemon.wire.kernels import KernelSpec


class ModelEntry:
    """A registered model: its kernel list, their SM demand and their learned durations."""

    __slots__ = ("key", "name", "kernels", "demands", "shares", "estimates", "type_id",
                 "jobs_done")
    _fields = __slots__   # (what pickles: compiled, __slots__ is not kept)

    def __init__(self, key: Any, name: str, kernels: list[KernelSpec], capacity: Resources,
                 type_id: int = 0):
        if not kernels:
            raise ValueError(f"model {name!r} has no kernels")
        self.key = key
        self.name = name
        self.kernels = tuple(kernels)
        self.demands = tuple(kernel_demand(k.grid, k.block, k.smem, k.regs, capacity)
                             for k in kernels)
        self.shares = tuple(d.share_of(capacity) for d in self.demands)  # 1.0 = whole GPU
        self.estimates = DurationEstimates([k.est_us * 1e-6 for k in kernels])
        self.type_id = type_id
        # jobs finished: until one has, the estimates are the registration's guesses, and
        # the core dispatches this model kernel by kernel (``SchedulerCore`` quantum)
        self.jobs_done = 0

    def __reduce__(self):
        return (_restore, (ModelEntry, {f: getattr(self, f) for f in ModelEntry._fields}))



class JobState(enum.Enum):
    QUEUED = "queued"      # no kernel on the device; waiting for the next to be dispatched
    RUNNING = "running"    # kernels on the device (Paella: at most one per job)
    DONE = "done"
    CANCELLED = "cancelled"
    SHED = "shed"          # dropped by the slo policy: it could no longer meet its SLO
    FAILED = "failed"


TERMINAL = frozenset({JobState.DONE, JobState.CANCELLED, JobState.SHED, JobState.FAILED})
# the states as plain module constants: the core tests them by identity (an enum member's hash
# is a Python-level call)
QUEUED, RUNNING, DONE = JobState.QUEUED, JobState.RUNNING, JobState.DONE
CANCELLED, SHED, FAILED = JobState.CANCELLED, JobState.SHED, JobState.FAILED


def is_terminal(state: JobState) -> bool:
    return state is DONE or state is CANCELLED or state is SHED or state is FAILED


class Job:
    """Everything the scheduler and the daemon know about one request."""

    __slots__ = ("id", "tenant", "model", "slo_s", "priority", "arrival", "deadline",
                 "next_kernel", "done_kernels", "outstanding", "cur", "run_len", "stop", "stream", "state", "exec_s", "first_start", "finish", "late",
                 "qseq", "in_queue", "extra", "payload", "owner", "error",
                 "nbytes")
    _fields = __slots__   # (what pickles: compiled, __slots__ is not kept)

    def __init__(self, id: Any, tenant: str, model: ModelEntry, slo_ms: float, arrival: float,
                 priority: int = 0, payload: Any = None, owner: Any = None):
        self.id = id
        self.tenant = tenant
        self.model = model
        self.slo_s = slo_ms / 1000.0
        self.priority = priority
        self.arrival = arrival
        self.deadline = arrival + self.slo_s if slo_ms > 0 else float("inf")
        self.next_kernel = 0       # next kernel to dispatch
        self.done_kernels = 0      # kernels completed (they complete in order)
        self.outstanding = 0       # kernels dispatched, not yet completed
        self.cur = 0               # the kernel being launched (set by next_dispatch)
        self.run_len = 1           # kernels cur.. that launch as one dispatch (core quantum)
        self.stop = False          # the core asks the device to end that run early
        self.stream = -1           # stream of the kernel being launched
        self.state = QUEUED
        self.exec_s = 0.0          # summed kernel execution time on the device
        self.first_start: float | None = None
        self.finish: float | None = None
        self.late = False          # flagged by the slo policy as unable to meet its SLO
        self.qseq = 0              # version of this job's live ready-queue entry
        self.in_queue = False      # whether that entry is live
        self.extra = False         # its kernel in flight was dispatched beyond free resources
        self.payload = payload     # backend data (input tensors); opaque to the scheduler
        self.owner = owner         # the daemon's session; opaque to the scheduler
        self.error: str | None = None
        self.nbytes = 0            # input bytes the daemon holds for it

    def remaining_s(self) -> float:
        return self.model.estimates.remaining(self.next_kernel)

    @property
    def total_s(self) -> float:
        return (self.finish or 0.0) - self.arrival

    @property
    def queue_s(self) -> float:
        return max(0.0, self.total_s - self.exec_s)

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.model.name}, {self.state.value}, k={self.next_kernel})"

    def __reduce__(self):
        return (_restore, (Job, {f: getattr(self, f) for f in Job._fields}))



def _restore(cls, fields: dict):
    """A pickled ``Job`` or ``ModelEntry`` (compiled they are extension types: explicit)."""
    obj = cls.__new__(cls)
    for name, value in fields.items():
        setattr(obj, name, value)
    return obj
