"""MAST's demand/supply balance as a CP-SAT objective (``--objective balance``).

Every job that has a candidate is assigned one, capacity or not; a pool's (site x GPU type)
demand is the GPUs assigned to it. Over- and under-load are penalised asymmetrically:
  minimise  sum_p OVER * over_p + UNDER * under_p,
  over_p >= sum_{j,c} n[c,p] * x[j,c] - cap_p,   under_p >= cap_p - sum_{j,c} n[c,p] * x[j,c]
with OVER > UNDER (a queue hurts more than an idle GPU). Then, highest priority first, a job
starts now if its pools still have room; the others wait where they are assigned.
"""
from __future__ import annotations

import logging
import time

from .candidates import Candidate, JobOptions, Model

log = logging.getLogger("geo.balance")

OVER, UNDER = 4, 1


def balance_penalty(model: Model, demand: dict[tuple[str, str], int]) -> float:
    """(OVER * overload + UNDER * idle GPUs) / all GPUs: 0 = demand matches supply everywhere."""
    total = sum(n for n, _ in model.pools.values()) or 1
    pen = 0
    for key, (cap, _) in model.pools.items():
        d = demand.get(key, 0)
        pen += OVER * max(0, d - cap) + UNDER * max(0, cap - d)
    for key, d in demand.items():
        if key not in model.pools:
            pen += OVER * d
    return pen / total


def solve_balance(model: Model, options: dict[str, JobOptions], *, time_limit_s: float,
                  workers: int, hint: dict[str, Candidate] | None = None
                  ) -> tuple[dict[str, Candidate], dict[str, Candidate], str, float]:
    """Returns (start now, wait, status, relative gap)."""
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    x = {}
    use: dict[tuple[str, str], list] = {}
    for name, o in options.items():
        if not o.candidates:
            continue
        row = []
        for i, c in enumerate(o.candidates):
            v = m.NewBoolVar(f"x[{name},{i}]")
            x[(name, i)] = v
            row.append(v)
            for s, n in c.alloc:
                use.setdefault((s, c.gpu_type), []).append((n, v))
        m.AddExactlyOne(row)
    terms = []
    for key, items in use.items():
        cap = model.capacity(*key)
        top = sum(n for n, _ in items)
        over = m.NewIntVar(0, max(0, top - cap), f"over{key}")
        under = m.NewIntVar(0, cap, f"under{key}")
        d = sum(n * v for n, v in items)
        m.Add(over >= d - cap)
        m.Add(under >= cap - d)
        terms += [OVER * over, UNDER * under]
    idle = sum(cap for key, (cap, _) in model.pools.items() if key not in use)
    m.Minimize(sum(terms) + UNDER * idle)
    for name, c in (hint or {}).items():
        for i, cc in enumerate(options[name].candidates if name in options else []):
            if cc is c:
                m.AddHint(x[(name, i)], 1)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = 1
    t0 = time.perf_counter()
    st = solver.Solve(m)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        log.warning("geo: balance CP-SAT found no assignment in %.1fs", time.perf_counter() - t0)
        return {}, {}, "unknown", float("nan")
    assigned = {name: options[name].candidates[i] for (name, i), v in x.items()
                if solver.BooleanValue(v)}
    free = {k: v[0] for k, v in model.pools.items()}
    now, wait = {}, {}
    for name in sorted(assigned, key=lambda n: -options[n].job.priority):
        c = assigned[name]
        if all(free.get((s, c.gpu_type), 0) >= n for s, n in c.alloc):
            for s, n in c.alloc:
                free[(s, c.gpu_type)] -= n
            now[name] = c
        else:
            wait[name] = c
    val, bound = solver.ObjectiveValue(), solver.BestObjectiveBound()
    gap = abs(val - bound) / max(abs(val), 1e-9) if val else 0.0
    return now, wait, "optimal" if st == cp_model.OPTIMAL else "feasible", gap
