"""MAST's demand/supply balance as a CP-SAT objective (``--objective balance``).

Every job that has a candidate is assigned one, capacity or not; a pool's (site x GPU type)
demand is the GPUs assigned to it. Over- and under-load are penalised asymmetrically:
  minimise  sum_p OVER * over_p + UNDER * under_p,
  over_p >= sum_{j,c} n[c,p] * x[j,c] - cap_p,   under_p >= cap_p - sum_{j,c} n[c,p] * x[j,c]
with OVER > UNDER (a queue hurts more than an idle GPU). A second Boolean s[j,c] <= x[j,c]
says the job starts now; what starts fits the capacity, and serving jobs comes first
(geo/lexicographic.py): phase 1 maximises the priority-weighted jobs that start, phase 2 keeps
that and minimises the penalty. The others wait where they are assigned.
"""
from __future__ import annotations

import logging
import math

from geo.candidates import Candidate, JobOptions, Model

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

    from geo.lexicographic import serve_weights, solve_two_phase

    m = cp_model.CpModel()
    x, start = {}, {}
    use: dict[tuple[str, str], list] = {}
    run: dict[tuple[str, str], list] = {}
    served = {}
    weights = serve_weights({n: o.job.priority for n, o in options.items() if o.candidates})
    for name, o in options.items():
        if not o.candidates:
            continue
        row, now = [], []
        for i, c in enumerate(o.candidates):
            v = m.NewBoolVar(f"x[{name},{i}]")
            r = m.NewBoolVar(f"s[{name},{i}]")
            m.AddImplication(r, v)  # starts now only where it is assigned
            x[(name, i)], start[(name, i)] = v, r
            row.append(v)
            now.append(r)
            for s, n in c.alloc:
                use.setdefault((s, c.gpu_type), []).append((n, v))
                run.setdefault((s, c.gpu_type), []).append((n, r))
        m.AddExactlyOne(row)
        served[name] = (weights[name], now)
    for key, items in run.items():  # what starts now fits
        cap = model.capacity(*key)
        if sum(n for n, _ in items) > cap:
            m.Add(sum(n * r for n, r in items) <= cap)
    B = model.spec.planner.budget_usd_per_hour
    if B is not None:  # and stays in the fleet's budget, as in solve_cpsat
        B = math.floor(B * 100 + 1e-6)  # cents: the budget rounded down, the costs up
        m.Add(sum(min(math.ceil(o.candidates[i].cost_per_hour * 100 - 1e-6), B + 1) * r
                  for (name, i), r in start.items() for o in (options[name],)) <= B)
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
    hint_lits = {}
    for name, c in (hint or {}).items():
        for i, cc in enumerate(options[name].candidates if name in options else []):
            if cc is c:
                hint_lits[x[(name, i)]] = 1
                hint_lits[start[(name, i)]] = 1
    solver, st, v1, ub, proven, wall = solve_two_phase(
        m, served, lambda mm: mm.Minimize(sum(terms) + UNDER * idle), hint_lits,
        [*x.values(), *start.values()], time_limit_s, workers)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        log.warning("geo: balance CP-SAT found no assignment in %.1fs", wall)
        return {}, {}, "unknown", float("nan")
    free = {k: v[0] for k, v in model.pools.items()}
    now, wait = {}, {}
    for (name, i), v in x.items():
        if solver.BooleanValue(v):
            c = options[name].candidates[i]
            if solver.BooleanValue(start[(name, i)]):
                now[name] = c
                for s, n in c.alloc:
                    free[(s, c.gpu_type)] -= n
            else:
                wait[name] = c
    # a job the solver left waiting that fits after all starts too (phase 1 stopped early)
    spend = sum(c.cost_per_hour for c in now.values())
    budget = model.spec.planner.budget_usd_per_hour
    for name in sorted(wait, key=lambda n: -options[n].job.priority):
        c = wait[name]
        if budget is not None and spend + c.cost_per_hour > budget:
            continue
        if all(free.get((s, c.gpu_type), 0) >= n for s, n in c.alloc):
            spend += c.cost_per_hour
            for s, n in c.alloc:
                free[(s, c.gpu_type)] -= n
            now[name] = wait.pop(name)
    val, bound = solver.ObjectiveValue(), solver.BestObjectiveBound()
    gap = abs(val - bound) / max(abs(val), 1e-9) if val else 0.0
    ok = st == cp_model.OPTIMAL and proven
    log.info("geo: balance %s served=%d/%d penalty=%.0f %.2fs", "optimal" if ok else "feasible",
             v1, ub, val, wall)
    return now, wait, "optimal" if ok else "feasible", gap
