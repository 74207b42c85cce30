"""Exact placement with OR-Tools CP-SAT, over the same configurations and rule as the heuristic.

Sets: models ``i``, configurations ``k in K_i`` (``estimate.py``), GPUs ``g`` (each of a pool
type; of type ``t`` at most ``floor(cost_h / price_t)`` (at most ``MAX_GPUS`` more than the
heuristic used), ``cost_h`` the cost of the heuristic's plan, which is then a feasible start
and no cheaper plan is cut off; every GPU of the pool, if at most ``FALLBACK_GPUS``, when the
heuristic found no plan).
Variables: ``x[k,g]`` in {0,1} (a replica of configuration k on GPU g), ``s[k,g]`` >= 0 the
requests/s it serves (integer, in units of ``1/RATE_SCALE``), ``y[g]`` in {0,1} (GPU used).

    minimise   sum_g price_g y[g]                                          (cost; = GPUs if one type)
    s.t.       sum_{k in K_i, g} s[k,g] >= rate_i                          every model served
               lam_min_k x[k,g] <= s[k,g] <= lam_max_k x[k,g]              batch fills, replica not overloaded
               sum_{k in K_i} x[k,g] <= 1                                  one replica of a model per GPU
               x[k,g] <= y[g];  y[g] >= y[g+1] (same type)                 symmetry breaking
               U_g = sum_k tau_k s[k,g] <= u_max y[g]                      busy time
               C_g = sum_k tau_k c_k s[k,g] <= c_max;  M_g = sum_k tau_k m_k s[k,g] <= m_max
               O_g = sum_k tau_k o_k s[k,g] <= o_max                        resource shares
               sum_k f_k x[k,g] <= mem_frac * memory_g                     memory
               x[k,g] => kappa (A_k (U_g - tau_k s) + B_k (C_g - tau_k c_k s)
                                + D_k (M_g - tau_k m_k s)) <= a_k - 1       slowdown within budget
               sum_g cap y[g] >= sum_i rate_i min_{k in K_i} tau_k d_k      for (U, 1), (C, c), (M, m),
                                                                            (O, o): redundant cuts

Coefficients are scaled to integers (``SCALE``, ``RATE_SCALE``, ``COEF``; prices in cents),
rounded so the integer model is never looser: demands (tau, f, A, B, D) up, caps down, and the
replica's own share subtracted from its GPU's totals rounded down.
"""
from __future__ import annotations

import math
import time

from gpusched.placement.estimate import Config
from gpusched.placement.fit import GpuState, Replica
from gpusched.placement.heuristic import infeasible
from gpusched.placement.heuristic import solve as heuristic_solve
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.plan import Plan
from gpusched.placement.pool import GpuType
from gpusched.placement.spec import ModelSpec, SpecError

RATE_SCALE = 10        # s in 0.1 req/s
SCALE = 10 ** 8        # busy-time units: 1e-8 GPU-seconds per second
COEF = 1000            # interference coefficients in thousandths
FALLBACK_GPUS = 64     # GPUs CP-SAT searches on its own when the heuristic found no plan
MAX_GPUS = 256         # per type, beyond what the heuristic used (near-free GPU types)


def solve(models: tuple[ModelSpec, ...], table: list[list[Config]], pool: tuple[GpuType, ...],
          knobs: Knobs = DEFAULT, time_limit_s: float = 60.0, workers: int = 2,
          start: Plan | None = None) -> Plan:
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    price_of = {t.name: _cents(t) for t in pool}
    gpus: list[GpuType] = []
    fail: SpecError | None = None
    try:
        start = start or heuristic_solve(models, table, pool, knobs)
    except SpecError as e:  # the heuristic found no plan: search a small pool on CP-SAT's own
        if sum(t.count for t in pool) > FALLBACK_GPUS:
            raise
        start, fail = None, e
        for t in pool:
            gpus += [t] * t.count
    if start is not None:  # a plan cheaper than the heuristic's has at most this many of type t
        budget = sum(price_of[g.type.name] for g in start.gpus)
        for t in pool:
            used = sum(1 for g in start.gpus if g.type.name == t.name)
            gpus += [t] * min(t.count, max(used, min(budget // price_of[t.name], MAX_GPUS)))
    m = cp_model.CpModel()
    y = [m.NewBoolVar(f"y{g}") for g in range(len(gpus))]
    x, s = {}, {}
    for i, cfgs in enumerate(table):
        for ki, k in enumerate(cfgs):
            for g, t in enumerate(gpus):
                if t.name != k.gpu:
                    continue
                x[i, ki, g] = v = m.NewBoolVar(f"x{i}_{ki}_{g}")
                hi = math.floor(k.rate_max * RATE_SCALE)
                lo = math.ceil(k.rate_min * RATE_SCALE)
                s[i, ki, g] = r = m.NewIntVar(0, hi, f"s{i}_{ki}_{g}")
                m.Add(r <= hi * v)
                m.Add(r >= lo * v)
                m.AddImplication(v, y[g])
    for i, ms in enumerate(models):
        m.Add(sum(r for (ii, _, _), r in s.items() if ii == i) >= math.ceil(ms.rate * RATE_SCALE))
    # per-unit-of-s contributions to U, C, M (rounded up: the integer model is never looser)
    tau = {(i, ki): k.tau / RATE_SCALE * SCALE for i, cfgs in enumerate(table)
           for ki, k in enumerate(cfgs)}
    for g, t in enumerate(gpus):
        here = [(i, ki) for (i, ki, gg) in x if gg == g]
        for i in {i for i, _ in here}:
            m.Add(sum(x[i, ki, g] for ii, ki in here if ii == i) <= 1)
        U = sum(math.ceil(tau[i, ki]) * s[i, ki, g] for i, ki in here)
        C = sum(math.ceil(tau[i, ki] * table[i][ki].compute) * s[i, ki, g] for i, ki in here)
        M = sum(math.ceil(tau[i, ki] * table[i][ki].memory) * s[i, ki, g] for i, ki in here)
        O = sum(math.ceil(tau[i, ki] * table[i][ki].occupancy) * s[i, ki, g]
                for i, ki in here)
        m.Add(U <= math.floor(knobs.u_max * SCALE) * y[g])
        m.Add(C <= math.floor(knobs.c_max * SCALE) * y[g])
        m.Add(M <= math.floor(knobs.m_max * SCALE) * y[g])
        m.Add(O <= math.floor(knobs.o_max * SCALE) * y[g])
        m.Add(sum(math.ceil(table[i][ki].footprint_mb) * x[i, ki, g] for i, ki in here)
              <= math.floor(t.memory_mb * knobs.mem_frac))
        for i, ki in here:
            k = table[i][ki]
            a, b, d = (math.ceil(knobs.kappa * v * COEF) for v in (k.A, k.B, k.D))
            if a == b == d == 0:
                continue
            self_coef = (a * math.floor(tau[i, ki]) + b * math.floor(tau[i, ki] * k.compute)
                         + d * math.floor(tau[i, ki] * k.memory))
            m.Add(a * U + b * C + d * M - self_coef * s[i, ki, g]
                  <= math.floor((k.alpha - 1) * COEF * SCALE)).OnlyEnforceIf(x[i, ki, g])
        if g + 1 < len(gpus) and gpus[g + 1].name == t.name:
            m.Add(y[g] >= y[g + 1])
    # lower bounds for the relaxation: each resource's total needs this many GPUs
    for cap, dem in ((knobs.u_max, lambda k: 1.0), (knobs.c_max, lambda k: k.compute),
                     (knobs.m_max, lambda k: k.memory), (knobs.o_max, lambda k: k.occupancy)):
        need = sum(min(k.tau * dem(k) for k in cfgs) * ms.rate for ms, cfgs in zip(models, table))
        m.Add(sum(math.floor(cap * SCALE) * v for v in y) >= math.floor(need * SCALE))
    m.Minimize(sum(price_of[t.name] * v for t, v in zip(gpus, y)))
    if start is not None:
        _hint(m, start, table, gpus, x, s, y)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    status = solver.Solve(m)
    if start is None and status == cp_model.INFEASIBLE:
        raise infeasible(models, table, pool, "cpsat (proven)")
    if start is None and status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise fail
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        plan = start  # time ran out before CP-SAT found anything: the heuristic's plan stands
        return Plan("cpsat", plan.gpus, time.perf_counter() - t0, False,
                    {"status": solver.StatusName(status)})
    out = [GpuState(t, knobs) for t in gpus]
    for (i, ki, g), v in x.items():
        if solver.Value(v) and solver.Value(s[i, ki, g]):  # a replica given no requests is idle
            out[g].add(Replica(models[i].name, table[i][ki], solver.Value(s[i, ki, g]) / RATE_SCALE))
    return Plan("cpsat", [g for g in out if g.replicas], time.perf_counter() - t0,
                status == cp_model.OPTIMAL,
                {"bound_cost_per_hour": solver.BestObjectiveBound() / 100})


def _cents(t: GpuType) -> int:
    """The objective's integer price of a GPU type (a free GPU still costs a cent: used GPUs
    are minimised among equal prices)."""
    return round(t.price_per_hour * 100) or 1


def _hint(m, start: Plan, table, gpus, x, s, y) -> None:
    """Start from the heuristic's plan (mapped onto the GPU list in order of type)."""
    slot: dict[str, list[int]] = {}
    for g, t in enumerate(gpus):
        slot.setdefault(t.name, []).append(g)
    used, seen = set(), set()
    for gs in start.gpus:
        g = slot[gs.type.name].pop(0)
        used.add(g)
        for r in gs.replicas:
            ki = table[r.cfg.model].index(r.cfg)
            if (r.cfg.model, ki, g) in seen or (r.cfg.model, ki, g) not in x:
                continue
            seen.add((r.cfg.model, ki, g))
            m.AddHint(x[r.cfg.model, ki, g], 1)
            m.AddHint(s[r.cfg.model, ki, g], math.ceil(r.rate * RATE_SCALE))
    for g, v in enumerate(y):
        m.AddHint(v, 1 if g in used else 0)
