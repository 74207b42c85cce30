"""Serve jobs first, then the objective: the two CP-SAT phases every CP-SAT objective shares.

Phase 1 maximises the priority-weighted number of jobs that start now,
``sum_j w_j * served_j`` with ``w_j = round(p_j * 1000)`` (scaled down only if the sum would
leave 2^52); it is skipped when the hint (the decomposed plan) already serves every job that
has a candidate, since that is the bound. Phase 2 adds ``sum_j w_j * served_j >= V1`` (V1 the
best phase-1 value) and optimises the objective, hinted with the phase-1 solution. So no
objective can leave a servable job waiting to speed up, or save money on, the others: the
maximum demand/supply ratio stays at most 1 whenever the supply can host every job.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("geo.lexicographic")

SCALE = 1000
MAX_OBJECTIVE = 2.0 ** 52


def serve_weights(priorities: dict[str, float]) -> dict[str, int]:
    """Integer weight per job for phase 1 (priority x 1000, the sum inside 2^52)."""
    top = sum(priorities.values()) * SCALE
    k = min(1.0, MAX_OBJECTIVE / top) if top > 0 else 1.0
    return {n: max(1, round(p * SCALE * k)) for n, p in priorities.items()}


def _solver(time_limit_s: float, workers: int):
    from ortools.sat.python import cp_model
    s = cp_model.CpSolver()
    s.parameters.max_time_in_seconds = max(0.05, time_limit_s)
    s.parameters.num_workers = workers
    s.parameters.random_seed = 1  # reproducible plans
    # the LP of every capacity row: proves these packing optima several times sooner
    s.parameters.linearization_level = 2
    return s


def solve_two_phase(m, served: dict[str, tuple[int, list]], set_objective, hint: dict,
                    decisions: list, time_limit_s: float, workers: int):
    """``served``: job -> (weight, its "starts now" literals, at most one true);
    ``set_objective(m)`` sets phase 2's objective; ``hint``: literal -> 1 for a feasible plan
    (the others 0); ``decisions``: every Boolean of the model, hinted from phase 1 in phase 2.

    Returns (solver, status, served value, upper bound, phase-1 proven, wall seconds); status
    is phase 2's CP-SAT status (or phase 1's when phase 1 found nothing and phase 2 neither).
    """
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    ub = sum(w for w, _ in served.values())
    expr = sum(w * sum(lits) for w, lits in served.values() if lits)
    hinted = sum(w for w, lits in served.values() if any(hint.get(v, 0) for v in lits))
    left = lambda: time_limit_s - (time.perf_counter() - t0)  # noqa: E731
    # the hint serving every job is the bound: phase 1 is skipped (but the hint may break a
    # constraint the fast method does not know, e.g. the fleet budget: then phase 1 runs)
    trust_hint = hinted == ub
    while True:
        best_hint, proven, v1 = dict(hint), True, hinted
        if not trust_hint:
            m.Maximize(expr)
            for v, b in hint.items():
                m.AddHint(v, b)
            solver = _solver(left() / 2, workers)
            st = solver.Solve(m)
            m.ClearHints()
            if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                v1 = round(solver.ObjectiveValue())
                proven = st == cp_model.OPTIMAL
                best_hint = {v: int(solver.BooleanValue(v)) for v in decisions}
            else:  # nothing in time: no serve-first constraint
                v1, proven, best_hint = 0, False, {}
            log.info("geo: serve-first phase 1: %d of %d (%s) in %.2fs", v1, ub,
                     solver.StatusName(st), time.perf_counter() - t0)
        if v1 >= ub:  # every job is served: one clause per job propagates far better
            ct = [m.AddBoolOr(lits) for _, lits in served.values() if lits]
        else:
            ct = [m.Add(expr >= v1)] if v1 > 0 else []
        set_objective(m)
        for v, b in best_hint.items():
            m.AddHint(v, b)
        solver = _solver(left(), workers)
        st = solver.Solve(m)
        m.ClearHints()
        if st == cp_model.INFEASIBLE and trust_hint and ct:
            for c in ct:  # the hint was not feasible after all: drop its bound, run phase 1
                c.proto.clear_bool_or()
                c.proto.clear_linear()
            trust_hint = False
            continue
        return solver, st, v1, ub, proven, time.perf_counter() - t0
