"""Open-loop arrival processes at a target rate ``rate`` (jobs/s).

- ``poisson``: exponential inter-arrival times, mean ``1/rate``.
- ``lognormal:SIGMA``: log-normal inter-arrival times with the same mean ``1/rate``:
  ``mu = ln(1/rate) - SIGMA^2 / 2`` (Paella uses SIGMA 1.5 and 2: bursty).
- ``trace:PATH``: the inter-arrival times of a CSV trace (``.csv`` or ``.csv.gz``) with a
  ``TIMESTAMP`` column, rescaled so their mean is ``1/rate``, cycled if too short;
  ``trace:azure-conv`` and ``trace:azure-code`` are the packaged Azure LLM inference traces
  (gpusched/experiments/data/README.md).
"""
from __future__ import annotations

import csv
import gzip
import math
import random
from datetime import datetime
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
PACKAGED_TRACES = {"azure-conv": DATA / "azure_llm_2023_conv.csv.gz",
                   "azure-code": DATA / "azure_llm_2023_code.csv.gz"}


def parse(spec: str) -> tuple[str, object]:
    if spec == "poisson":
        return "poisson", None
    if spec.startswith("lognormal:"):
        try:
            sigma = float(spec.split(":", 1)[1])
        except ValueError:
            sigma = -1.0
        if not 0 < sigma <= 5:
            raise ValueError(f"bad arrivals {spec!r}: use lognormal:SIGMA with 0 < SIGMA <= 5")
        return "lognormal", sigma
    if spec.startswith("trace:"):
        name = spec.split(":", 1)[1]
        return "trace", str(PACKAGED_TRACES.get(name, name))
    raise ValueError(f"bad arrivals {spec!r}: use poisson, lognormal:SIGMA or trace:PATH")


@lru_cache(maxsize=8)
def trace_gaps(path: str) -> tuple[float, ...]:
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"cannot read arrival trace {path!r}: {e}") from None
    if not rows or "TIMESTAMP" not in rows[0]:
        raise ValueError(f"arrival trace {path!r} needs a TIMESTAMP column")
    ts = sorted(datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp() for r in rows)
    gaps = tuple(max(0.0, b - a) for a, b in zip(ts, ts[1:]))
    if not gaps or sum(gaps) <= 0:
        raise ValueError(f"arrival trace {path!r} has fewer than two distinct timestamps")
    return gaps


def arrival_times(spec: str, rate: float, n: int, seed: int) -> list[float]:
    """``n`` arrival times starting near 0."""
    kind, arg = parse(spec)
    if not rate > 0:
        raise ValueError(f"arrival rate must be > 0 jobs/s, got {rate}")
    rng = random.Random(seed)
    if kind == "poisson":
        gaps = [rng.expovariate(rate) for _ in range(n)]
    elif kind == "lognormal":
        mu = math.log(1.0 / rate) - arg * arg / 2
        gaps = [rng.lognormvariate(mu, arg) for _ in range(n)]
    else:
        src = trace_gaps(arg)
        scale = (1.0 / rate) / (sum(src) / len(src))
        start = rng.randrange(len(src))
        gaps = [src[(start + i) % len(src)] * scale for i in range(n)]
    t, out = 0.0, []
    for g in gaps:
        t += g
        out.append(t)
    return out
