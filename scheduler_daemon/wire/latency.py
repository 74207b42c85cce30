"""The one definition of latency percentiles and SLO attainment (docs/protocol.md, "Latency and
SLO attainment"), shared by the daemon's STATUS, the client summary (``gpusched submit``),
``gpusched top`` and the docs. Pure Python: both sides of the wire import it.

- A job **misses its SLO** when it has one (``slo_ms`` > 0), was not cancelled, and did not end
  ``done`` within ``slo_ms`` (shed and failed jobs miss it). A job without an SLO never misses.
- **SLO attainment** = 1 - missed / ended, over the jobs that ended other than cancelled.
- **Percentiles** are nearest-rank over the completed (``done``) jobs' latencies: the p-th
  percentile of n sorted values is the one at rank ceil(p/100 * n).

Which span "latency" is depends on who measures: the daemon's (``total_ms``: the daemon read
the SUBMIT -> the job's last kernel completed) or the client's (``latency_ms``: ``submit()``
called -> the answer handled); the client's adds the transport both ways.
"""
from __future__ import annotations

import math


def percentile(values, q: float, presorted: bool = False) -> float | None:
    """Nearest-rank ``q``-quantile (``q`` in (0, 1]) of ``values`` (any iterable of numbers;
    ``presorted``: a sorted sequence); None when there are none."""
    xs = values if presorted else sorted(values)
    n = len(xs)
    if n == 0:
        return None
    return xs[min(n, max(1, math.ceil(q * n - 1e-9))) - 1]


def missed_slo(status: str, latency_ms: float, slo_ms: float) -> bool:
    """Did one job miss its SLO? (``status``: done, shed, failed or cancelled)"""
    if slo_ms <= 0 or status == "cancelled":
        return False
    return status != "done" or latency_ms > slo_ms


def attainment(missed: int, ended: int) -> float | None:
    """SLO attainment from the jobs that missed and those that ended (cancelled ones aside)."""
    return None if ended <= 0 else 1.0 - missed / ended
