"""Built-in workloads for the load generator: tenants, their model and SLO.

Kernel ops are ``sleep:US`` so the same workload runs on the simulated GPU (which uses the
estimate) and on the torch backend (which sleeps that long in a worker).
"""
from __future__ import annotations

from dataclasses import dataclass

from scheduler_daemon.wire.kernels import KernelSpec


@dataclass(frozen=True)
class TenantLoad:
    tenant: str
    model: str
    kernels: tuple[KernelSpec, ...]
    slo_ms: float
    weight: float = 1.0  # share of the arrivals

    @property
    def solo_ms(self) -> float:
        return sum(k.est_us for k in self.kernels) / 1e3


def _kernels(n: int, us: float, grid: int, block: int) -> tuple[KernelSpec, ...]:
    return tuple(KernelSpec(name=f"k{i}", est_us=us, grid=grid, block=block, op=f"sleep:{us:g}")
                 for i in range(n))


WORKLOADS: dict[str, tuple[TenantLoad, ...]] = {
    # three tenants: short, medium and long jobs with different SLOs (5-7x their solo time)
    "mixed": (
        TenantLoad("short", "short-net", _kernels(4, 150, 20, 256), slo_ms=5.0, weight=0.5),
        TenantLoad("medium", "medium-net", _kernels(12, 400, 80, 512), slo_ms=30.0, weight=0.3),
        TenantLoad("long", "long-net", _kernels(30, 1000, 160, 1024), slo_ms=200.0, weight=0.2),
    ),
    # one tiny kernel per job: measures the daemon's own overhead
    "tiny": (TenantLoad("tiny", "tiny-net", _kernels(1, 0, 1, 32), slo_ms=0.0),),
}


def workload(name: str) -> tuple[TenantLoad, ...]:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}: choose one of {', '.join(WORKLOADS)}") from None
