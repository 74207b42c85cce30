"""Per-tenant and per-client state kept by the daemon."""
from __future__ import annotations

from collections import deque

from scheduler_daemon.core.jobs import Job, ModelEntry
from scheduler_daemon.core.ledger import Ledger


class Tenant:
    """A tenant's registered models (shared by its client processes) and its counters."""

    __slots__ = ("name", "models", "clients", "unfinished", "ledger", "compiling", "completed",
                 "cancelled", "failed", "shed", "slo_missed", "latencies_ms")

    def __init__(self, name: str, quota: int = 1 << 62, window: int = 10_000):
        self.name = name
        self.models: dict[str, ModelEntry] = {}
        self.clients = 0
        self.unfinished = 0
        # every byte it holds in the daemon: job inputs, models' weights, intercepted tensors
        self.ledger = Ledger(quota)
        self.compiling = False  # one CUDA compile at a time per tenant (each may take seconds)
        self.completed = self.cancelled = self.failed = self.shed = self.slo_missed = 0
        self.latencies_ms: deque[float] = deque(maxlen=window)

    @property
    def bytes_held(self) -> int:
        return self.ledger.used

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


class Session:
    """One client connection that said HELLO, and its unfinished jobs.

    Bound to the connection it said HELLO on (``conn``, the daemon's own id for it): a message
    from another connection under the same routing id is not this session's, and the session
    ends the moment its connection closes."""

    __slots__ = ("identity", "tenant", "last_seen", "jobs", "conn", "eager", "gone")

    def __init__(self, identity: bytes, tenant: Tenant, now: float, conn: str = ""):
        self.identity = identity
        self.tenant = tenant
        self.last_seen = now
        self.conn = conn
        self.gone = False  # its connection closed: nothing more is sent to its routing id
        self.jobs: dict[int, Job] = {}  # SUBMIT req_id -> unfinished job
        self.eager = None  # its intercepted tensors and op batches (eager.EagerState)
