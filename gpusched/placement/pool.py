"""GPU pools: types, counts and prices, e.g. ``--pool "H100:8"`` or ``"T4:16@0.53,H100:2"``."""
from __future__ import annotations

from dataclasses import dataclass

from scheduler_daemon.core.gpu_specs import PRESETS

# Memory per GPU (GiB) and an approximate on-demand price per GPU-hour (USD; cloud list prices
# of single-GPU shares of common instances). Override a price with TYPE:COUNT@PRICE.
GPU_MEMORY_GB = {"T4": 16.0, "V100": 16.0, "A100": 40.0, "H100": 80.0}
DEFAULT_PRICE = {"T4": 0.53, "V100": 3.06, "A100": 4.10, "H100": 12.29}


@dataclass(frozen=True)
class GpuType:
    name: str
    count: int
    price_per_hour: float

    @property
    def memory_mb(self) -> float:
        return GPU_MEMORY_GB[self.name] * 1024


def parse_pool(text: str) -> tuple[GpuType, ...]:
    """``TYPE:COUNT[@PRICE]`` items separated by commas."""
    out: list[GpuType] = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        head, _, price = item.partition("@")
        name, _, count = head.partition(":")
        name = name.strip().upper()
        if name not in PRESETS:
            raise ValueError(f"pool {item!r}: unknown GPU type {name!r}; choose from "
                             f"{', '.join(PRESETS)}")
        try:
            n = int(count)
            p = float(price) if price else DEFAULT_PRICE[name]
        except ValueError:
            raise ValueError(f"pool {item!r}: write TYPE:COUNT or TYPE:COUNT@PRICE, "
                             "e.g. H100:8 or T4:16@0.53") from None
        if not 1 <= n <= 100_000:
            raise ValueError(f"pool {item!r}: COUNT must be 1..100000, got {count.strip()}")
        if not 0 <= p <= 1e4:  # also NaN
            raise ValueError(f"pool {item!r}: PRICE must be 0..10000 $/h, got {price.strip()}")
        if any(t.name == name for t in out):
            raise ValueError(f"pool {text!r}: {name} is listed twice")
        out.append(GpuType(name, n, p))
    if not out:
        raise ValueError("empty GPU pool: give e.g. --pool H100:8")
    return tuple(out)
