"""Per-tenant and per-client state kept by the daemon."""
from __future__ import annotations

from collections import deque

from scheduler_daemon.core.jobs import Job, ModelEntry
from scheduler_daemon.core.ledger import Ledger
from scheduler_daemon.wire.latency import percentile


class Tenant:
    """A tenant's registered models (shared by its client processes) and its counters."""

    __slots__ = ("name", "models", "clients", "unfinished", "ledger", "compiling", "completed",
                 "cancelled", "failed", "shed", "slo_missed", "latencies_ms", "variants",
                 "tokens")

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
        # model -> the graphs registered to share its weights (its other input shapes)
        self.variants: dict[str, set[str]] = {}
        self.tokens = TokenStats(window)   # generation through the intercept path

    @property
    def bytes_held(self) -> int:
        return self.ledger.used

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the daemon latency (``total_ms``) of the last ``window``
        completed jobs (wire/latency.py: the one definition); 0 when none completed."""
        v = percentile(self.latencies_ms, q)
        return 0.0 if v is None else v


class TokenStats:
    """Time to first token and time per output token of a tenant's generations (the intercept
    path's token steps, server/eager.py), the last ``window`` of each, and their SLO misses."""

    __slots__ = ("tokens", "ttft_ms", "tpot_ms", "ttft_missed", "tpot_missed")

    def __init__(self, window: int = 10_000):
        self.tokens = 0
        self.ttft_ms: deque[float] = deque(maxlen=window)
        self.tpot_ms: deque[float] = deque(maxlen=window)
        self.ttft_missed = self.tpot_missed = 0

    def add(self, first: bool, ms: float, slo_ms: float) -> bool:
        """One token; True when it missed its SLO (``slo_ms`` > 0)."""
        self.tokens += 1
        missed = slo_ms > 0 and ms > slo_ms
        if first:
            self.ttft_ms.append(ms)
            self.ttft_missed += missed
        else:
            self.tpot_ms.append(ms)
            self.tpot_missed += missed
        return missed

    @staticmethod
    def pct(values, q: float) -> float:
        v = percentile(values, q)
        return 0.0 if v is None else v


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
