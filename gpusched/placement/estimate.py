"""Estimate: how each model can run as a replica on each GPU type (the solvers' input).

A configuration ``k`` is (model ``i``, GPU type ``t``, batch ``b``, slowdown budget ``a``) with,
from the model's profile on the simulated GPU of type ``t`` (``profilers/profile.py``):

    l_k         solo latency of one batch (ms);  c_k, m_k, o_k  compute, memory and SM-slot demand
    f_k         memory footprint (MB): weights + activations + per-process context
    tau_k       = l_k / b                        solo GPU seconds per request (/1000)
    T_k         = SLO_i - Q l_k a                batching timeout the replica may use (ms)
    lam_max_k   = rho_max b / (l_k a)            requests/s one replica may serve
    lam_min_k   = (b - 1) / T_k                  below this a batch of b does not fill in time

A replica of ``k`` serving ``lam`` requests/s adds to its GPU ``u = lam tau``, ``u c`` and
``u m`` and ``u o`` (solo busy time, compute, memory and SM-slot use). Its predicted slowdown among neighbours
``j`` is ``alpha = 1 + kappa sum_j u_j beta_kj``, ``beta_kj`` the fitted pairwise excess
(``profilers/interference.py``): ``beta_kj = A_k + B_k c_j + D_k m_j`` with
``A_k = w0 - 1 + w1 c_k + w3 m_k``, ``B_k = w2 + w5 c_k``, ``D_k = w4 + w6 m_k`` (each
clipped at 0 so a neighbour never helps), linear in the GPU's totals ``U, C, M``.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import profilers
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.pool import GpuType
from gpusched.placement.spec import ModelSpec, SpecError
from profilers.profile import profile

log = logging.getLogger("gpusched.place")

WEIGHTS_DIR = Path(profilers.__file__).resolve().parent / "data" / "interference"  # packaged


@dataclass(frozen=True)
class Config:
    model: int          # index into the workload's models
    gpu: str            # GPU type
    batch: int
    alpha: float        # slowdown budget a
    latency_ms: float   # l
    compute: float      # c
    occupancy: float    # o: share of the SM slots it holds while it runs
    memory: float       # m
    footprint_mb: float  # f
    timeout_ms: float   # T
    rate_min: float     # lam_min
    rate_max: float     # lam_max
    A: float
    B: float
    D: float

    @property
    def tau(self) -> float:
        """Solo GPU seconds per request."""
        return self.latency_ms / 1000.0 / self.batch


@functools.cache
def model_profile(model: str, batch: int, gpu: str):
    return profile(model, batch, f"sim:{gpu}")


@functools.cache
def interference_weights(gpu: str) -> tuple[float, ...]:
    """Fitted weights for ``sim:GPU``: the profile store's (``gpusched profile --pairs``) if
    present, else the fit shipped with gpusched (``tools/fit_interference.py``)."""
    try:
        from profilers.store import ProfileStore
        stored = ProfileStore().get_interference(f"sim:{gpu}")
        if stored:
            return tuple(stored["weights"])
    except (ValueError, OSError) as e:  # an unreadable store is no reason to stop
        log.warning("place: profile store unusable (%s); using the shipped fit", e)
    path = WEIGHTS_DIR / f"{gpu}.json"
    try:
        return tuple(json.loads(path.read_text())["weights"])
    except OSError:
        raise SpecError(f"no interference model for {gpu}: run 'gpusched profile --pairs "
                        f"--device sim:{gpu} --batch 1,8,32'") from None


def coefficients(w: tuple[float, ...], c: float, m: float) -> tuple[float, float, float]:
    return (max(0.0, w[0] - 1 + w[1] * c + w[3] * m), max(0.0, w[2] + w[5] * c),
            max(0.0, w[4] + w[6] * m))


def configs_for(i: int, ms: ModelSpec, gpu: GpuType, knobs: Knobs = DEFAULT) -> list[Config]:
    w = interference_weights(gpu.name)
    out = []
    for b in ms.batches:
        p = model_profile(ms.model, b, gpu.name)
        f = p.footprint_mb + knobs.context_mb
        if f > gpu.memory_mb * knobs.mem_frac:
            continue
        A, B, D = coefficients(w, p.compute_demand, p.memory_demand)
        for a in knobs.alphas:
            T = ms.slo_ms - knobs.queue_factor * p.latency_ms * a
            if T < 0 or (b > 1 and T <= 0):
                continue
            lam_min = (b - 1) / (T / 1000.0) if b > 1 else 0.0
            lam_max = knobs.rho_max * b / (p.latency_ms * a / 1000.0)
            if lam_min > lam_max:
                continue
            out.append(Config(i, gpu.name, b, a, p.latency_ms, p.compute_demand,
                              p.occupancy, p.memory_demand, f, T, lam_min, lam_max, A, B, D))
    return out


def estimate(models: tuple[ModelSpec, ...], pool: tuple[GpuType, ...],
             knobs: Knobs = DEFAULT) -> list[list[Config]]:
    """Configurations per model (over every GPU type of the pool). A model no configuration
    fits is a mistake in the input: the error says why (its SLO or its memory)."""
    table = []
    for i, ms in enumerate(models):
        cfgs = [c for t in pool for c in configs_for(i, ms, t, knobs)]
        if not cfgs:
            solo = min(model_profile(ms.model, 1, t.name).latency_ms for t in pool)
            need = knobs.queue_factor * solo * min(knobs.alphas)
            raise SpecError(
                f"line {ms.line}: model {ms.name!r}: SLO {ms.slo_ms:g} ms cannot be met on "
                f"{'/'.join(t.name for t in pool)}: its solo latency at batch 1 is {solo:.2f} ms "
                f"and a replica needs at least {need:.2f} ms (queueing and interference "
                "headroom); raise slo_ms or add a faster GPU type")
        table.append(cfgs)
    return table
