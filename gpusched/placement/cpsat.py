"""Exact placement with OR-Tools CP-SAT, over the same configurations and rule as the heuristic.

Sets: models ``i``, configurations ``k in K_i`` (``estimate.py``), GPUs ``g`` (each of a pool
type; of type ``t`` at most ``floor(cost_h / price_t)`` (at most ``MAX_GPUS`` more than the
heuristic used), ``cost_h`` the cost of the heuristic's plan, which is then a feasible start
and no cheaper plan is cut off; every GPU of the pool, if at most ``FALLBACK_GPUS``, when the
heuristic found no plan).
Variables: ``x[k,g]`` in {0..N_k} (replicas of configuration k on GPU g, ``N_k`` at most
``MAX_PER_GPU``), ``one[k,g]``, ``many[k,g]`` in {0,1} (``x = 1``, ``x >= 2``), ``s[k,g]`` >= 0
the requests/s they serve together (integer, in units of ``1/RATE_SCALE``), ``y[g]`` in {0,1}
(GPU used).

    minimise   sum_g price_g y[g]                                          (cost; = GPUs if one type)
    s.t.       sum_{k in K_i, g} s[k,g] >= rate_i                          every model served
               lam_min_k x[k,g] <= s[k,g] <= lam_max_k x[k,g]              batches fill, replicas not overloaded
               x[k,g] <= N_k y[g];  y[g] >= y[g+1] (same type)             symmetry breaking
               one[k,g] + many[k,g] <= 1;  one => x = 1;  many => x >= 2;  x >= 1 => one or many
               U_g = sum_k tau_k s[k,g] <= u_max y[g]                      busy time
               C_g = sum_k tau_k c_k s[k,g] <= c_max;  M_g = sum_k tau_k m_k s[k,g] <= m_max
               O_g = sum_k tau_k o_k a_k s[k,g] <= o_max                   resource shares
               sum_k f_k x[k,g] <= mem_frac * memory_g                     memory
               K_g = sum_k tau_k L_k s[k,g]                                longest kernels
               p[i,g] <=> sum_{k in K_i} x[k,g] >= 1;  p2[i,g] <=> ... >= 2  model i on g (twice)
               one[k,g]  => kappa (A_k (U_g - tau_k s) + B_k (C_g - tau_k c_k s)
                                   + D_k (M_g - tau_k m_k s) + E_k (K_g - tau_k L_k s))
                            <= a_k - 1                                      slowdown within budget
               one[k,g] and p[j,g] (j != i; p2[i,g] for j = i) => the same
                            + Z_kj <= a_k - 1                               one neighbour's tail on top
               many[k,g] => the same with s replaced by lam_min_k           (a replica's own share is
                                                                            at least that: conservative)
               Z_kj = max over model j's configurations l of beta99_kl (margin delta times
               min(1, lam_max_l tau_l)): the fit rule's tail term (max over neighbours of
               beta99 + min(1, u) delta - u beta) bounded above by the p99 excess of the worst
               configuration of each model present at its highest busy share, so a CP-SAT plan
               always passes the fit rule (and is a little more cautious than it)
               sum_g cap y[g] >= sum_i rate_i min_{k in K_i} tau_k d_k      for (U, 1), (C, c), (M, m),
                                                                            (O, o a): redundant cuts

Coefficients are scaled to integers (``SCALE``, ``RATE_SCALE``, ``COEF``; prices in cents),
rounded so the integer model is never looser: demands (tau, f, A, B, D, E) up, caps down, and the
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
MAX_PER_GPU = 4        # replicas of one configuration on one GPU


def solve(models: tuple[ModelSpec, ...], table: list[list[Config]], pool: tuple[GpuType, ...],
          knobs: Knobs = DEFAULT, time_limit_s: float = 60.0, workers: int = 2,
          start: Plan | None = None) -> Plan:
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    price_of = {t.name: _cents(t) for t in pool}
    gpus: list[GpuType] = []
    fail: SpecError | None = None
    try:
        own = heuristic_solve(models, table, pool, knobs)
        if start is None or _plan_cost(own) < _plan_cost(start):
            start = own  # the caller's start was made for another pool: this one is cheaper
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
    x, s, one, many, s_hi = {}, {}, {}, {}, {}
    for i, cfgs in enumerate(table):
        for ki, k in enumerate(cfgs):
            for g, t in enumerate(gpus):
                if t.name != k.gpu:
                    continue
                cap = min(MAX_PER_GPU, int(t.memory_mb * knobs.mem_frac // k.footprint_mb),
                          max(1, math.ceil(models[i].rate / k.rate_max)))
                x[i, ki, g] = n = m.NewIntVar(0, cap, f"x{i}_{ki}_{g}")
                one[i, ki, g] = o1 = m.NewBoolVar(f"one{i}_{ki}_{g}")
                hi = math.floor(k.rate_max * RATE_SCALE)
                lo = math.ceil(k.rate_min * RATE_SCALE)
                s[i, ki, g] = r = m.NewIntVar(0, hi * cap, f"s{i}_{ki}_{g}")
                s_hi[i, ki, g] = hi * cap
                m.Add(r <= hi * n)
                m.Add(r >= lo * n)
                m.Add(n <= cap * y[g])
                m.Add(n == 1).OnlyEnforceIf(o1)
                if cap > 1:
                    many[i, ki, g] = mm = m.NewBoolVar(f"many{i}_{ki}_{g}")
                    m.Add(n >= 2).OnlyEnforceIf(mm)
                    m.Add(o1 + mm <= 1)
                    m.Add(n == 0).OnlyEnforceIf([o1.Not(), mm.Not()])
                else:
                    m.Add(n == 0).OnlyEnforceIf(o1.Not())
    for i, ms in enumerate(models):
        m.Add(sum(r for (ii, _, _), r in s.items() if ii == i) >= math.ceil(ms.rate * RATE_SCALE))
    # per-unit-of-s contributions to U, C, M (rounded up: the integer model is never looser)
    tau = {(i, ki): k.tau / RATE_SCALE * SCALE for i, cfgs in enumerate(table)
           for ki, k in enumerate(cfgs)}
    # the tail term: the worst p99 excess of a neighbouring model, over that model's configurations
    tz = {}
    for i, cfgs in enumerate(table):
        for ki, k in enumerate(cfgs):
            for i2, cfgs2 in enumerate(table):
                tz[i, ki, i2] = math.ceil(COEF * max(
                    (k.TA + k.TB * j.compute + k.TD * j.memory + k.TE * j.longest_ms
                     + min(1.0, j.rate_max * j.tau) * k.TM
                     for j in cfgs2 if j.gpu == k.gpu), default=0.0))
    for g, t in enumerate(gpus):
        here = [(i, ki) for (i, ki, gg) in x if gg == g]
        present, twice = {}, {}
        for i in {i for i, _ in here}:
            mine = [x[i, ki, g] for ii, ki in here if ii == i]
            present[i] = p = m.NewBoolVar(f"p{i}_{g}")    # model i has a replica on g
            m.Add(sum(mine) >= 1).OnlyEnforceIf(p)
            m.Add(sum(mine) == 0).OnlyEnforceIf(p.Not())
            twice[i] = p2 = m.NewBoolVar(f"p2{i}_{g}")    # ... two or more
            m.Add(sum(mine) >= 2).OnlyEnforceIf(p2)
            m.Add(sum(mine) <= 1).OnlyEnforceIf(p2.Not())
        # the GPU's totals as variables of their own: every slowdown constraint below names
        # them, and a sum written out in each would make building the model quadratic
        tot = {}
        for name, dem, cap in (("U", lambda k: 1.0, knobs.u_max), ("C", lambda k: k.compute,
                                knobs.c_max), ("M", lambda k: k.memory, knobs.m_max),
                               ("O", lambda k: k.held, knobs.o_max),
                               ("K", lambda k: k.longest_ms, None)):
            terms = [(math.ceil(tau[i, ki] * dem(table[i][ki])), s[i, ki, g]) for i, ki in here]
            if cap is not None:
                hi = math.floor(cap * SCALE)
            else:  # K <= max L * U + (rounding: at most 1 a unit of s), U <= u_max: no plan cut
                hi = (math.ceil(max((table[i][ki].longest_ms for i, ki in here), default=0.0)
                                * knobs.u_max * SCALE)
                      + sum(s_hi[i, ki, g] for i, ki in here))
            tot[name] = v = m.NewIntVar(0, hi, f"{name}{g}")
            m.Add(v == cp_model.LinearExpr.WeightedSum([v for _, v in terms],
                                                         [c for c, _ in terms]))
            if cap is not None:
                m.Add(v <= hi * y[g])
        U, C, M, K = tot["U"], tot["C"], tot["M"], tot["K"]
        m.Add(sum(math.ceil(table[i][ki].footprint_mb) * x[i, ki, g] for i, ki in here)
              <= math.floor(t.memory_mb * knobs.mem_frac))
        for i, ki in here:
            k = table[i][ki]
            a, b, d, e = (math.ceil(knobs.kappa * v * COEF) for v in (k.A, k.B, k.D, k.E))
            self_coef = (a * math.floor(tau[i, ki]) + b * math.floor(tau[i, ki] * k.compute)
                         + d * math.floor(tau[i, ki] * k.memory)
                         + e * math.floor(tau[i, ki] * k.longest_ms))
            cap = math.floor((k.alpha - 1) * COEF * SCALE)
            mean = a * U + b * C + d * M + e * K
            own = [(one[i, ki, g], mean - self_coef * s[i, ki, g])]
            if (i, ki, g) in many:  # each of several replicas serves at least lam_min
                own.append((many[i, ki, g],
                            mean - self_coef * math.floor(k.rate_min * RATE_SCALE)))
            for lit, pressure in own:
                m.Add(pressure <= cap).OnlyEnforceIf(lit)
                for i2, p in present.items():   # beside model i2: its tail on top
                    if tz[i, ki, i2]:
                        m.Add(pressure + SCALE * tz[i, ki, i2] <= cap).OnlyEnforceIf(
                            [lit, twice[i2] if i2 == i else p])
        if g + 1 < len(gpus) and gpus[g + 1].name == t.name:
            m.Add(y[g] >= y[g + 1])
    # lower bounds for the relaxation: each resource's total needs this many GPUs
    for cap, dem in ((knobs.u_max, lambda k: 1.0), (knobs.c_max, lambda k: k.compute),
                     (knobs.m_max, lambda k: k.memory), (knobs.o_max, lambda k: k.held)):
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
        n, rate = solver.Value(v), solver.Value(s[i, ki, g]) / RATE_SCALE
        if n and rate:  # replicas given no requests are idle
            for _ in range(n):
                out[g].add(Replica(models[i].name, table[i][ki], rate / n))
    out = [g for g in out if g.replicas]
    notes = {"bound_cost_per_hour": solver.BestObjectiveBound() / 100}
    if start is not None and _plan_cost(start) < _plan_cost(Plan("cpsat", out)):
        # the model's tail bound is stricter than the fit rule: the heuristic's plan may pass
        # the rule and cost less than anything CP-SAT can prove
        return Plan("cpsat", start.gpus, time.perf_counter() - t0, False,
                    {**notes, "status": "HEURISTIC_CHEAPER"})
    return Plan("cpsat", out, time.perf_counter() - t0, status == cp_model.OPTIMAL, notes)


def _plan_cost(plan: Plan) -> int:
    return sum(_cents(g.type) for g in plan.gpus if g.replicas)


def _cents(t: GpuType) -> int:
    """The objective's integer price of a GPU type (a free GPU still costs a cent: used GPUs
    are minimised among equal prices)."""
    return round(t.price_per_hour * 100) or 1


def _hint(m, start: Plan, table, gpus, x, s, y) -> None:
    """Start from the heuristic's plan (mapped onto the GPU list in order of type)."""
    slot: dict[str, list[int]] = {}
    for g, t in enumerate(gpus):
        slot.setdefault(t.name, []).append(g)
    used: set[int] = set()
    count: dict[tuple[int, int, int], list[float]] = {}
    for gs in start.gpus:
        g = slot[gs.type.name].pop(0)
        used.add(g)
        for r in gs.replicas:
            key = (r.cfg.model, table[r.cfg.model].index(r.cfg), g)
            if key in x:
                count.setdefault(key, []).append(r.rate)
    for key, rates in count.items():
        m.AddHint(x[key], len(rates))
        m.AddHint(s[key], math.ceil(sum(rates) * RATE_SCALE))
    for g, v in enumerate(y):
        m.AddHint(v, 1 if g in used else 0)
