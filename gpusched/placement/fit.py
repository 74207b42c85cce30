"""The one feasibility rule: may this replica join this GPU? Shared by the heuristic, the
baselines that model interference, the CP-SAT model (same inequalities, see ``cpsat.py``) and
the daemon's admission control.

For GPU totals ``U = sum u_j``, ``C = sum u_j c_j``, ``M = sum u_j m_j``, ``O = sum u_j o_j``,
``F = sum f_j`` a set of replicas fits when

    at most one replica of a model per GPU;
    F <= mem_frac * memory;   U <= u_max;   C <= c_max;   M <= m_max;   O <= o_max;
    for every replica r:  kappa (A_r (U - u_r) + B_r (C - u_r c_r) + D_r (M - u_r m_r)) <= a_r - 1

(the last is ``alpha_r <= a_r``: its predicted slowdown stays within the budget its batching
timeout was sized for, so its latency stays within its SLO).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gpusched.placement.estimate import Config
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.pool import GpuType


@dataclass
class Replica:
    name: str      # the model's name in the workload
    cfg: Config
    rate: float    # requests/s this replica serves

    @property
    def u(self) -> float:
        return self.rate * self.cfg.tau


@dataclass
class GpuState:
    type: GpuType
    knobs: Knobs = DEFAULT
    replicas: list[Replica] = field(default_factory=list)
    U: float = 0.0
    C: float = 0.0
    M: float = 0.0
    O: float = 0.0
    F: float = 0.0

    def _excess(self, r: Replica, U: float, C: float, M: float) -> float:
        """kappa * (pressure from everything but r itself) for totals U, C, M."""
        u, k = r.u, r.cfg
        return self.knobs.kappa * (k.A * (U - u) + k.B * (C - u * k.compute)
                                   + k.D * (M - u * k.memory))

    def alpha(self, r: Replica) -> float:
        return 1.0 + self._excess(r, self.U, self.C, self.M)

    def check(self, new: Replica) -> str | None:
        """None if ``new`` fits, else why not (naming the model whose SLO would break)."""
        k, kn = new.cfg, self.knobs
        if k.gpu != self.type.name:
            return f"{new.name} is configured for {k.gpu}, this GPU is {self.type.name}"
        if any(r.name == new.name for r in self.replicas):
            return f"{new.name} already has a replica on this GPU (one per GPU: a bigger batch does better)"
        if self.F + k.footprint_mb > self.type.memory_mb * kn.mem_frac:
            return (f"memory: {self.F + k.footprint_mb:.0f} MB would exceed "
                    f"{self.type.memory_mb * kn.mem_frac:.0f} MB")
        u = new.u
        U, C, M = self.U + u, self.C + u * k.compute, self.M + u * k.memory
        if U > kn.u_max + 1e-9:
            return f"busy time: {U:.2f} GPU-s/s would exceed {kn.u_max:.2f}"
        for what, v, cap in (("compute", C, kn.c_max), ("memory bandwidth", M, kn.m_max),
                             ("SM slots", self.O + u * k.occupancy, kn.o_max)):
            if v > cap + 1e-9:
                return f"{what}: {v:.2f} of the GPU would exceed {cap:.2f}"
        if 1.0 + self._excess(new, U, C, M) > k.alpha + 1e-9:
            return (f"{new.name} would be slowed {1 + self._excess(new, U, C, M):.2f}x, more "
                    f"than the {k.alpha:.2f}x its SLO allows at batch {k.batch}")
        for r in self.replicas:
            if 1.0 + self._excess(r, U, C, M) > r.cfg.alpha + 1e-9:
                return (f"{r.name} (already here) would be slowed "
                        f"{1 + self._excess(r, U, C, M):.2f}x, more than the "
                        f"{r.cfg.alpha:.2f}x its SLO allows")
        return None

    def add(self, r: Replica) -> None:
        u = r.u
        self.replicas.append(r)
        self.U += u
        self.C += u * r.cfg.compute
        self.M += u * r.cfg.memory
        self.O += u * r.cfg.occupancy
        self.F += r.cfg.footprint_mb

    def remove(self, name: str) -> int:
        keep = [r for r in self.replicas if r.name != name]
        gone = len(self.replicas) - len(keep)
        self.replicas, self.U, self.C, self.M, self.O, self.F = [], 0.0, 0.0, 0.0, 0.0, 0.0
        for r in keep:
            self.add(r)
        return gone
