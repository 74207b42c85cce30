"""The baselines ``gpusched bench usher`` compares against, on the same input.

- ``one-per-gpu``: every replica alone on a GPU (no interference, so slowdown budget 1).
- ``mem-packing``: the same replicas first-fit-decreasing by memory footprint only: blind to
  interference and to busy time (expected to miss SLOs when replayed).
- ``gslice``: GSLICE-like even spatial partitioning: a GPU is cut into ``p`` equal slices, a
  replica owns one slice and runs ``max(1, occupancy * p)`` times slower when it needs more SMs
  than its slice; ``p`` is chosen per plan (the one that needs the fewest GPUs).
- ``gpulet``: gpulet-like: at most two replicas per GPU (two gpulets), each pair admitted by the
  linear pairwise interference model with the partner always busy, greedy by rate.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter

from gpusched.placement.estimate import Config, model_profile
from gpusched.placement.fit import GpuState, Replica
from gpusched.placement.heuristic import cheapest_type, infeasible, size_replicas
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.plan import Plan
from gpusched.placement.spec import SpecError


def _replicas(models, table, pool, alpha: float, method: str) -> list[Replica]:
    out = []
    for ms, cfgs in zip(models, table):
        ks = [k for k in cheapest_type(ms, cfgs, pool) if k.alpha == alpha]
        reps = size_replicas(ms, ks)
        if not reps:
            raise SpecError(f"line {ms.line}: model {ms.name!r}: {method} runs every replica "
                            f"with slowdown budget {alpha:g}, which leaves no batch size that "
                            f"meets its {ms.slo_ms:g} ms SLO at {ms.rate:g} req/s")
        out.extend(reps)
    return out


def _check_counts(gpus: list[GpuState], models, table, pool, method: str) -> list[GpuState]:
    """Raise the pool-too-small error, with the GPUs ``method`` needs, if ``gpus`` overflow it."""
    needed = dict(Counter(g.type.name for g in gpus))
    if any(n > t.count for t in pool for name, n in needed.items() if name == t.name):
        raise infeasible(models, table, pool, method, needed)
    return gpus


def one_per_gpu(models, table_alone, pool, knobs: Knobs = DEFAULT) -> Plan:
    t0 = time.perf_counter()
    by = {t.name: t for t in pool}
    gpus = []
    for r in _replicas(models, table_alone, pool, 1.0, "one-per-gpu"):
        g = GpuState(by[r.cfg.gpu], knobs)
        g.add(r)
        gpus.append(g)
    _check_counts(gpus, models, table_alone, pool, "one-per-gpu")
    return Plan("one-per-gpu", gpus, time.perf_counter() - t0)


def mem_packing(models, table_alone, pool, knobs: Knobs = DEFAULT) -> Plan:
    t0 = time.perf_counter()
    reps = sorted(_replicas(models, table_alone, pool, 1.0, "mem-packing"),
                  key=lambda r: -r.cfg.footprint_mb)
    gpus = _check_counts(_first_fit(reps, pool, knobs, _memory_ok), models, table_alone, pool,
                         "mem-packing")
    return Plan("mem-packing", gpus, time.perf_counter() - t0)


def _memory_ok(g: GpuState, r: Replica) -> bool:
    return g.F + r.cfg.footprint_mb <= g.type.memory_mb * g.knobs.mem_frac


def _first_fit(replicas, pool, knobs: Knobs, fits) -> list[GpuState]:
    """Each replica on the first open GPU of its type where ``fits(gpu, replica)``, else on a
    new one (however many: the caller checks the pool's counts, ``_check_counts``)."""
    by = {t.name: t for t in pool}
    gpus: list[GpuState] = []
    for r in replicas:
        g = next((g for g in gpus if g.type.name == r.cfg.gpu and fits(g, r)), None)
        if g is None:
            g = GpuState(by[r.cfg.gpu], knobs)
            gpus.append(g)
        g.add(r)
    return gpus


def _sliced(k: Config, p: int, models, knobs: Knobs) -> Config | None:
    """Configuration ``k`` on a 1/p slice: slower when the model needs more than 1/p of the SMs."""
    ms = models[k.model]
    occ = model_profile(ms.model, k.batch, k.gpu).occupancy
    lat = k.latency_ms * max(1.0, occ * p)
    T = ms.slo_ms - knobs.queue_factor * lat
    if T <= 0:
        return None
    lam_min = (k.batch - 1) / (T / 1000.0) if k.batch > 1 else 0.0
    lam_max = knobs.rho_max * k.batch / (lat / 1000.0)
    if lam_min > lam_max:
        return None
    return dataclasses.replace(k, latency_ms=lat, timeout_ms=T, rate_min=lam_min,
                               rate_max=lam_max)


def gslice(models, table_alone, pool, knobs: Knobs = DEFAULT) -> Plan:
    t0 = time.perf_counter()
    best = None
    for p in range(1, 9):
        slots: dict[str, int] = {}
        reps: list[Replica] = []
        ok = True
        for ms, cfgs in zip(models, table_alone):
            ks = [s for k in cheapest_type(ms, cfgs, pool) if k.alpha == 1.0
                  for s in [_sliced(k, p, models, knobs)] if s is not None]
            r = size_replicas(ms, ks)
            if not r:
                ok = False
                break
            reps.extend(r)
        if not ok:
            continue
        for r in reps:
            slots[r.cfg.gpu] = slots.get(r.cfg.gpu, 0) + 1
        n = sum(math.ceil(v / p) for v in slots.values())
        if best is None or n < best[0]:
            best = (n, p, reps)
    if best is None:
        raise infeasible(models, table_alone, pool, "gslice")
    _, p, reps = best
    gpus = _first_fit(reps, pool, knobs,  # each GPU holds p slices
                      lambda g, r: len(g.replicas) < p and _memory_ok(g, r))
    _check_counts(gpus, models, table_alone, pool, "gslice")
    return Plan("gslice", gpus, time.perf_counter() - t0, notes={"slices_per_gpu": p})


def gpulet(models, table, pool, knobs: Knobs = DEFAULT, alpha: float = 1.5) -> Plan:
    t0 = time.perf_counter()
    # gpulet's model: a partner is always busy (no tail weighting by its busy time)
    pair = dataclasses.replace(knobs, kappa=1.0)
    reps = sorted(_replicas(models, table, pool, alpha, "gpulet"), key=lambda r: -r.rate)
    gpus = _first_fit(reps, pool, pair, lambda g, r: len(g.replicas) < 2 and _pair_ok(g, r, pair))
    _check_counts(gpus, models, table, pool, "gpulet")
    return Plan("gpulet", gpus, time.perf_counter() - t0)


def _pair_ok(g: GpuState, r: Replica, knobs: Knobs) -> bool:
    """Pairwise prediction with the partner continuously active (busy time 1)."""
    if g.check(r) is not None:  # memory and busy time
        return False
    (o,) = g.replicas
    beta = lambda x, y: x.cfg.A + x.cfg.B * y.cfg.compute + x.cfg.D * y.cfg.memory
    return 1 + beta(r, o) <= r.cfg.alpha and 1 + beta(o, r) <= o.cfg.alpha


BASELINES = {"one-per-gpu": one_per_gpu, "mem-packing": mem_packing, "gslice": gslice,
             "gpulet": gpulet}
