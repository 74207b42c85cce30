"""The one feasibility rule: may this replica join this GPU? Shared by the heuristic, the
baselines that model interference, the CP-SAT model (the same inequalities, the tail term
bounded, see ``cpsat.py``) and the daemon's admission control.

For GPU totals ``U = sum u_j``, ``C = sum u_j c_j``, ``M = sum u_j m_j``, ``O = sum u_j o_j a_j``
(SM slots held, each replica's kernels stretched by up to its budget), ``K = sum u_j L_j``
(longest kernels), ``F = sum f_j`` a set of replicas (several may be of one model) fits when

    F <= mem_frac * memory;   U <= u_max;   C <= c_max;   M <= m_max;   O <= o_max;
    for every replica r:  alpha_r <= a_r, where
        alpha_r = 1 + kappa (A_r (U - u_r) + B_r (C - u_r c_r) + D_r (M - u_r m_r)
                             + E_r (K - u_r L_r))
                    + max_{j != r} (beta99_rj + min(1, u_j) delta - u_j beta_rj)^+

(``estimate.py``: the mean excess of every neighbour plus one neighbour's tail; ``alpha_r <=
a_r`` says its predicted p99 slowdown, with the out-of-sample margin ``delta``, stays within
the budget its batching timeout was sized for, so its latency stays within its SLO; a replica
with budget 1.0 must be alone). ``delta`` was measured with the neighbour busy all the time, so
it counts in full for such a neighbour and for the share ``u_j`` of it otherwise (why:
``estimate.py``).
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
    share: float | None = None   # its MPS partition's share of the SMs (gslice, gpulet); None:
    #                              it may use every SM, shared by the interference model

    @property
    def u(self) -> float:
        return self.rate * self.cfg.tau


def beta(x: Replica, y: Replica) -> float:
    """Mean pairwise excess slowdown of ``x`` beside ``y`` busy all the time."""
    k, o = x.cfg, y.cfg
    return k.A + k.B * o.compute + k.D * o.memory + k.E * o.longest_ms


def beta99(x: Replica, y: Replica) -> float:
    """p99 pairwise excess slowdown of ``x`` beside ``y`` busy all the time, with the margin
    in full (what the margin was measured on)."""
    k, o = x.cfg, y.cfg
    return k.TA + k.TB * o.compute + k.TD * o.memory + k.TE * o.longest_ms + k.TM


def tail_extra(x: Replica, y: Replica) -> float:
    """What ``y`` adds to ``x``'s p99 slowdown as its worst neighbour, beyond its mean share:
    its p99 excess, the margin for the share of time it is busy (``estimate.py``: why), less
    the mean share already counted."""
    k, o, u = x.cfg, y.cfg, y.u
    return max(0.0, k.TA + k.TB * o.compute + k.TD * o.memory + k.TE * o.longest_ms
               + min(1.0, u) * k.TM - u * beta(x, y))


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
    K: float = 0.0
    worst: dict[int, float] = field(default_factory=dict)  # id(replica) -> max_j tail_extra
    # set when replicas were added beyond what check() allows because a simulated trial of
    # the GPU held (``trial.py``): the lowest SLO attainment that trial measured
    trial: float | None = None

    def _excess(self, r: Replica, U: float, C: float, M: float, K: float) -> float:
        """kappa * (mean pressure from everything but r itself) for totals U, C, M, K."""
        u, k = r.u, r.cfg
        return self.knobs.kappa * (k.A * (U - u) + k.B * (C - u * k.compute)
                                   + k.D * (M - u * k.memory) + k.E * (K - u * k.longest_ms))

    def alpha(self, r: Replica) -> float:
        """Predicted p99 slowdown of ``r`` (one of this GPU's replicas)."""
        return 1.0 + self._excess(r, self.U, self.C, self.M, self.K) + self.worst.get(id(r), 0.0)

    def check(self, new: Replica) -> str | None:
        """None if ``new`` fits, else why not (naming the model whose SLO would break)."""
        k, kn = new.cfg, self.knobs
        if k.gpu != self.type.name:
            return f"{new.name} is configured for {k.gpu}, this GPU is {self.type.name}"
        if self.F + k.footprint_mb > self.type.memory_mb * kn.mem_frac:
            return (f"memory: {self.F + k.footprint_mb:.0f} MB would exceed "
                    f"{self.type.memory_mb * kn.mem_frac:.0f} MB")
        u = new.u
        U, C, M = self.U + u, self.C + u * k.compute, self.M + u * k.memory
        K = self.K + u * k.longest_ms
        if U > kn.u_max + 1e-9:
            return f"busy time: {U:.2f} GPU-s/s would exceed {kn.u_max:.2f}"
        for what, v, cap in (("compute", C, kn.c_max), ("memory bandwidth", M, kn.m_max),
                             ("SM slots", self.O + u * k.held, kn.o_max)):
            if v > cap + 1e-9:
                return f"{what}: {v:.2f} of the GPU would exceed {cap:.2f}"
        # tail_extra(new, r) and tail_extra(r, new) written out: this is the solvers' inner loop
        tail = 0.0
        for r in self.replicas:
            o = r.cfg
            ur = r.rate * o.tau
            t = ((k.TA + k.TB * o.compute + k.TD * o.memory + k.TE * o.longest_ms)
                 + min(1.0, ur) * k.TM
                 - ur * (k.A + k.B * o.compute + k.D * o.memory + k.E * o.longest_ms))
            tail = max(tail, t)
        mine = 1.0 + self._excess(new, U, C, M, K) + tail
        if mine > k.alpha + 1e-9:
            return (f"{new.name} would be slowed {mine:.2f}x, more than the {k.alpha:.2f}x its "
                    f"SLO allows at batch {k.batch}")
        nc, nm, nl = k.compute, k.memory, k.longest_ms
        for r in self.replicas:
            o = r.cfg
            t = ((o.TA + o.TB * nc + o.TD * nm + o.TE * nl) + min(1.0, u) * o.TM
                 - u * (o.A + o.B * nc + o.D * nm + o.E * nl))
            theirs = 1.0 + self._excess(r, U, C, M, K) + max(self.worst.get(id(r), 0.0), t, 0.0)
            if theirs > r.cfg.alpha + 1e-9:
                return (f"{r.name} (already here) would be slowed {theirs:.2f}x, more than the "
                        f"{r.cfg.alpha:.2f}x its SLO allows")
        return None

    def add(self, r: Replica) -> None:
        u = r.u
        for x in self.replicas:
            self.worst[id(x)] = max(self.worst.get(id(x), 0.0), tail_extra(x, r))
        self.worst[id(r)] = max((tail_extra(r, x) for x in self.replicas), default=0.0)
        self.replicas.append(r)
        self.U += u
        self.C += u * r.cfg.compute
        self.M += u * r.cfg.memory
        self.O += u * r.cfg.held
        self.F += r.cfg.footprint_mb
        self.K += u * r.cfg.longest_ms

    def copy(self) -> GpuState:
        out = GpuState(self.type, self.knobs, trial=self.trial)
        for r in self.replicas:
            out.add(r)
        return out

    def remove(self, name: str) -> int:
        """Take every replica of model ``name`` off this GPU; how many there were."""
        keep = [r for r in self.replicas if r.name != name]
        gone = len(self.replicas) - len(keep)
        self._rebuild(keep)
        return gone

    def discard(self, replica: Replica) -> None:
        """Take this one replica (by identity) off this GPU."""
        self._rebuild([r for r in self.replicas if r is not replica])

    def _rebuild(self, keep: list[Replica]) -> None:
        self.replicas, self.worst = [], {}
        self.U = self.C = self.M = self.O = self.F = self.K = 0.0
        for r in keep:
            self.add(r)
