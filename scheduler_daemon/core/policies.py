"""Scheduling policies: pluggable objects that order the ready queue.

A policy gives each queued job a key when it is (re)queued; smaller keys go first. Keys depend
only on the job and on quantities shared by all jobs, so a heap orders them in O(log n):
least slack ``deadline - now - remaining`` orders the same as ``deadline - remaining``.
"""
from __future__ import annotations

from scheduler_daemon.core.jobs import Job
from scheduler_daemon.core.queues import FairQueue, HeapQueue, KeyOrder

LATE_PENALTY = 1e12  # flagged (hopeless) jobs sort after every job that can still make it


class Policy(KeyOrder):
    # (class attributes, read once by the core; no annotations: compiled, an annotated class
    # attribute would become a typed instance field)
    name = "base"
    checks_slack = False  # whether the core asks ``hopeless`` before dispatching the head
    sheds = False         # drop hopeless jobs whatever the daemon's --shed says
    admission = False     # refuse a job at arrival if it cannot make its SLO
    # the mechanism: Paella's bounded dispatch, or hand everything to the hardware
    bounded = True              # dispatch only what fits, plus max_extra
    per_job_outstanding = 1     # kernels of one job on the device (None: all)
    stream = "kernel"           # kernel (Paella's pool) | job | single | tenant | model
    gate = None                 # None | "gpu" (one job at a time) | "model" (one per model)
    # a dispatch may be a run of a job's kernels (the core's quantum); off where the policy's
    # choice is not its key (Paella's deficits) or kernel by kernel is the point of it
    runs = True
    # what the system pays on the host besides the GPU (experiments/host.py): "dispatcher"
    # (this daemon: a notice per kernel, an RPC per request), "polling" (CUDA streams polled
    # for completion), "rpc" (a serving frontend: an RPC per request)
    host = "dispatcher"

    def key(self, job: Job, now: float) -> float:
        raise NotImplementedError

    def instances(self, model: str) -> int:
        """Jobs of one model that may run at once behind a ``model`` gate."""
        return 1

    def hopeless(self, job: Job, now: float) -> bool:
        """Even started now and run alone, the job would miss its deadline."""
        return now + job.remaining_s() > job.deadline

    def make_queue(self):
        return HeapQueue(self)   # ordered by self.key

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Fifo(Policy):
    """First come, first served (by arrival time; ties by submission order)."""
    name = "fifo"

    def key(self, job, now):
        return job.arrival


class Srpt(Policy):
    """Shortest estimated remaining processing time first (Paella's best policy)."""
    name = "srpt"

    def key(self, job, now):
        return job.remaining_s()


class Edf(Policy):
    """Earliest deadline (arrival + SLO) first."""
    name = "edf"

    def key(self, job, now):
        return job.deadline


class Paella(Srpt):
    """SRPT with Paella's deficit-counter fairness threshold (1e6, i.e. off, as in Paella's
    Figs. 11 and 12; its Fig. 13 sweeps it)."""
    name = "paella"
    runs = False   # the fair queue may choose by deficit, and debits per dispatch

    def __init__(self, threshold: float = 1e6):
        self.threshold = threshold

    def make_queue(self):
        return FairQueue(self, self.threshold)


class Slo(Policy):
    """Least slack first; a job that can no longer meet its SLO is shed or flagged.

    Flagged jobs are not dropped: they move behind every job that can still make its SLO,
    so one hopeless job cannot drag the others past their deadlines (the EDF domino effect).
    """
    name = "slo"
    checks_slack = True

    def key(self, job, now):
        return job.deadline - job.remaining_s() + (LATE_PENALTY if job.late else 0.0)


class SloSrpt(Slo):
    """SRPT among the jobs that can still meet their SLO; a job that cannot is flagged (runs
    after all of them) or shed, as in ``slo``. Least slack spends the GPU on the jobs closest
    to their deadline, which under bursts are often the ones about to miss anyway; shortest
    remaining first finishes the most jobs per GPU-second, and dropping the hopeless keeps it
    from spending time on work that cannot count (measured in docs/simulator.md)."""
    name = "slo-srpt"

    def key(self, job, now):
        return job.remaining_s() + (LATE_PENALTY if job.late else 0.0)


# -- baselines: the same core, with the order left to the (simulated) hardware ----------------
class HardwareOrder(Policy):
    """Launch every kernel at once; the GPU's hardware queues decide what runs."""
    bounded = False
    per_job_outstanding = None
    host = "polling"

    def key(self, job, now):
        return job.arrival


class CudaSingleStream(HardwareOrder):
    """All jobs' kernels on one CUDA stream, in arrival order."""
    name = "cuda-ss"
    stream = "single"


class CudaMultiStream(HardwareOrder):
    """One CUDA stream per job (Paella's MS baseline)."""
    name = "cuda-ms"
    stream = "job"


class Mps(HardwareOrder):
    """MPS-like: each client process (tenant) has its own stream; kernels run concurrently."""
    name = "mps"
    stream = "tenant"


class Triton(HardwareOrder):
    """Triton-like: per-model FIFO, one request at a time per model instance, each instance on
    its own stream (no batching). ``instance_groups``: model name -> instances (Triton's
    ``instance_group count``; Paella ran it equal to the client's per-model caps)."""
    name = "triton"
    host = "rpc"
    stream = "model"
    gate = "model"

    def __init__(self, instance_groups: dict | None = None):
        self.instance_groups = dict(instance_groups or {})

    def instances(self, model: str) -> int:
        return self.instance_groups.get(model, 1)


class FifoJobByJob(HardwareOrder):
    """Paella's ablation: whole jobs in arrival order, one job on the GPU at a time."""
    name = "fifo-jbj"
    stream = "single"
    gate = "gpu"


class FifoKernelByKernel(Fifo):
    """Paella's ablation: its dispatcher with FIFO order, kernel by kernel."""
    name = "fifo-kbk"
    runs = False


class Clockwork(HardwareOrder):
    """Clockwork-like: one job on the GPU at a time, earliest deadline first, and admission
    control: a job that cannot meet its SLO is refused (shed)."""
    name = "clockwork"
    stream = "single"
    gate = "gpu"
    admission = True
    checks_slack = True
    sheds = True

    def key(self, job, now):
        return job.deadline


POLICIES = {p.name: p for p in (Fifo, Srpt, Edf, Paella, Slo, SloSrpt)}
BASELINES = {p.name: p for p in (CudaSingleStream, CudaMultiStream, Mps, Triton, FifoJobByJob,
                                 FifoKernelByKernel, Clockwork)}
ALL_POLICIES = {**POLICIES, **BASELINES}


def make_policy(name: str) -> Policy:
    try:
        return ALL_POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}: choose one of {', '.join(ALL_POLICIES)}") from None
