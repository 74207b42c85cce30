"""The planner: estimate (candidates) -> solve (CP-SAT, or a fast method) -> report (Plan).

``plan(spec, objective, solver)`` is the entry point; ``solve_cpsat`` holds the formulation.
"""
from __future__ import annotations

import logging
import math
import time

from geo.candidates import Candidate, JobOptions, Model, score
from geo.feasibility import trim_to_budget
from geo.lexicographic import serve_weights, solve_two_phase
from geo.options import job_options
from geo.plan import Plan, build_plan
from geo.spec import Spec

log = logging.getLogger("geo.planner")

OBJECTIVES = ("throughput", "cost", "makespan", "balance")
SOLVERS = ("cpsat", "decomposed", "greedy", "single-region")
SCALE = 1000  # throughput weights and hours are scaled to integers (1e-3 resolution)
MAX_OBJECTIVE = 2.0 ** 52  # every weight is scaled down so that the objective stays below this


def estimate(model: Model, objective: str, *, multi_site_modes: bool = True,
             max_candidates: int | None = None) -> dict[str, JobOptions]:
    """Candidates per job, already filtered by deadline and budget and pruned."""
    return {j.name: job_options(model, j, objective, max_candidates=max_candidates,
                                multi_site_modes=multi_site_modes) for j in model.spec.jobs}


def queue_rest(options: dict[str, JobOptions], chosen: dict[str, Candidate]) -> dict[str, Candidate]:
    """Jobs that have candidates but no GPUs now wait at their best single-site candidate."""
    queued = {}
    for name, o in options.items():
        if name in chosen or not o.candidates:
            continue
        single = [c for c in o.candidates if len(c.alloc) == 1]
        queued[name] = max(single or o.candidates, key=lambda c: c.score)
    return queued


def warm_start(model: Model, options: dict[str, JobOptions], objective: str
               ) -> dict[str, Candidate]:
    """The decomposed plan, added to the candidates and given to CP-SAT as its hint: pruning
    cannot make CP-SAT worse than the fast method, and it starts from a good solution."""
    from geo.decomposed import solve_decomposed

    _, chosen, _ = solve_decomposed(model, objective)
    hint = {}
    for name, c in chosen.items():
        o = options.get(name)
        if o is None or not o.candidates:
            continue
        c.score = score(c, objective, o.ref_speed, o.job.priority)
        same = next((cc for cc in o.candidates if (cc.mode, cc.gpu_type, cc.alloc) ==
                     (c.mode, c.gpu_type, c.alloc)), None)
        if same is None:
            o.candidates.append(c)
            same = c
        hint[name] = same
    return hint


def solve_cpsat(model: Model, options: dict[str, JobOptions], objective: str, *,
                time_limit_s: float | None = None, workers: int | None = None,
                hint: dict[str, Candidate] | None = None
                ) -> tuple[dict[str, Candidate], str, float, float]:
    """Choose at most one candidate per job with OR-Tools CP-SAT.

    Symbols (as in the code):
      J          jobs; C_j the candidates of job j (from ``estimate``), each c with
                 n[c,s,g] GPUs of type g at site s, cost per hour h_c, finish f_c (hours),
                 speed v_c; p_j priority; v*_j the job's ideal speed
      x[j,c]     1 if job j runs candidate c now (boolean)
      cap[s,g]   GPUs of type g at site s; B the spec's budget_usd_per_hour (optional)
    Constraints:
      one-of      sum_c x[j,c] <= 1                       (0: the job waits / is unplaced)
      capacity    sum_{j,c} n[c,s,g] * x[j,c] <= cap[s,g]  for every site s and type g
      budget      sum_{j,c} h_c * x[j,c] <= B
      deadline, per-job budget, data locality: in the candidates (a candidate that misses the
                  deadline or budget is never built; remote data reads slow it and cost egress)
    Objective (maximised; integers: weights times SCALE = 1000, then all times one k <= 1
    so that the sum stays below MAX_OBJECTIVE = 2^52):
      throughput  sum p_j * (1 + v_c / v*_j) * x[j,c]   (a running job counts p_j, plus its
                  speed normalised by its ideal: placing jobs comes before speeding them up)
      cost        sum (P_j - $_c) * x[j,c],  P_j = p_j * (1 + sum of every candidate's $)
                  so that placing a job always beats saving money on others
      makespan    sum P_j * x[j,c] - M,  M >= f_c * x[j,c];  P_j = p_j * (1 + max f)
      (balance, MAST's demand/supply objective, is its own model: geo/balance.py)
    Serve first (geo/lexicographic.py): phase 1 maximises sum_j w_j * sum_c x[j,c],
    w_j = round(1000 p_j) (skipped when the hint serves every job); phase 2 keeps that value,
    sum_j w_j * sum_c x[j,c] >= V1, and maximises the objective above. No objective leaves a
    job waiting that the GPUs could host, whatever it would gain for the others.
    Returns (chosen candidates, status, objective bound gap, wall seconds).
    """
    from ortools.sat.python import cp_model

    spec = model.spec
    m = cp_model.CpModel()
    x: dict[tuple[str, int], object] = {}
    use: dict[tuple[str, str], list] = {}
    terms = []
    budget_terms = []
    cands = {name: o.candidates for name, o in options.items() if o.candidates}
    total_usd = sum(c.total_usd for cs in cands.values() for c in cs) + 1
    max_f = max((c.finish_h for cs in cands.values() for c in cs), default=0.0) + 1
    # float weights first, then one factor that keeps every sum inside 64-bit integers
    # (extreme but valid specs, e.g. a run of 1e20 hours, would overflow CP-SAT's model)
    rows: list[tuple[str, list[tuple[object, float, float]]]] = []
    for name, cs in cands.items():
        p = options[name].job.priority
        row = []
        for i, c in enumerate(cs):
            v = m.NewBoolVar(f"x[{name},{i}]")
            x[(name, i)] = v
            for s, n in c.alloc:
                use.setdefault((s, c.gpu_type), []).append((n, v))
            if objective == "throughput":
                w = c.score * SCALE  # p * (1 + v_c / v*_j) (+ stay-put tie-break)
            elif objective == "cost":
                w = p * total_usd - c.total_usd
            else:
                w = p * max_f * SCALE
            row.append((v, w, c.finish_h * SCALE))
            budget_terms.append((math.ceil(c.cost_per_hour * 100 - 1e-6), v))  # cents, up
        rows.append((name, row))
    top = sum(max(abs(w) for _, w, _ in row) for _, row in rows) + max_f * SCALE
    k = min(1.0, MAX_OBJECTIVE / top) if top > 0 else 1.0
    if k < 1.0:
        log.warning("geo: CP-SAT weights scaled by %.3g to fit 64-bit integers", k)
    M = None
    if objective == "makespan":
        M = m.NewIntVar(0, round(max_f * SCALE * k) + 1, "makespan")
    for name, row in rows:
        for v, w, f in row:
            terms.append((round(w * k), v))
            if M is not None:
                m.Add(M >= round(f * k) * v)
        m.AddAtMostOne([v for v, _, _ in row])
    for (s, g), items in use.items():
        cap = model.capacity(s, g)
        if sum(n for n, _ in items) > cap:
            m.Add(sum(n * v for n, v in items) <= cap)
    if spec.planner.budget_usd_per_hour is not None:
        B = math.floor(spec.planner.budget_usd_per_hour * 100 + 1e-6)  # cents, down
        # a candidate dearer than B alone stays excluded at B + 1; the sum stays in 64 bits
        m.Add(sum(min(w, B + 1) * v for w, v in budget_terms) <= B)
    obj = sum(w * v for w, v in terms)
    if M is not None:
        obj = obj - M
    hint_lits = {}
    for name, c in (hint or {}).items():
        for i, cc in enumerate(cands.get(name, [])):
            if cc is c:
                hint_lits[x[(name, i)]] = 1
    weights = serve_weights({name: options[name].job.priority for name in cands})
    served = {name: (weights[name], [v for v, _, _ in row]) for name, row in rows}
    solver, st, v1, ub, proven, wall = solve_two_phase(
        m, served, lambda mm: mm.Maximize(obj), hint_lits, list(x.values()),
        time_limit_s or spec.planner.time_limit_s, workers or spec.planner.workers)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        # Every x = 0 satisfies the model; no answer means the time limit hit before any.
        log.warning("geo: CP-SAT found no solution (%s) in %.1fs", solver.StatusName(st), wall)
        return {}, "unknown", float("nan"), wall
    chosen = {}
    for (name, i), v in x.items():
        if solver.BooleanValue(v):
            chosen[name] = cands[name][i]
    val, bound = solver.ObjectiveValue(), solver.BestObjectiveBound()
    gap = abs(bound - val) / max(abs(val), 1e-9) if val else (0.0 if bound == val else 1.0)
    status = "optimal" if st == cp_model.OPTIMAL and proven else "feasible"
    log.info("geo: cpsat %s jobs=%d vars=%d served=%d/%d obj=%.1f bound=%.1f %.2fs", status,
             len(cands), len(x), v1, ub, val, bound, wall)
    return chosen, status, gap, wall


def plan(spec: Spec, objective: str | None = None, solver: str = "cpsat", *,
         model: Model | None = None, time_limit_s: float | None = None) -> Plan:
    """Estimate, solve and report one spec."""
    objective = objective or spec.planner.objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    model = model or Model(spec)
    if solver == "cpsat" and len(spec.jobs) > 1000:
        log.warning("geo: CP-SAT on %d jobs will be slow; --solver decomposed is built for this",
                    len(spec.jobs))
    t0 = time.perf_counter()
    if solver == "cpsat" and objective == "balance":
        from geo.balance import solve_balance
        options = estimate(model, "throughput")
        hint = warm_start(model, options, "throughput")
        chosen, queued, status, gap = solve_balance(
            model, options, time_limit_s=time_limit_s or spec.planner.time_limit_s,
            workers=spec.planner.workers, hint=hint)
        p = build_plan(model, options, chosen, queued, objective=objective, solver=solver,
                       status=status, solve_time_s=time.perf_counter() - t0)
        p.gap = None if gap != gap else round(gap, 6)
        return p
    if solver == "cpsat":
        options = estimate(model, objective)
        hint = warm_start(model, options, objective)
        chosen, status, gap, _ = solve_cpsat(model, options, objective, time_limit_s=time_limit_s,
                                             hint=hint)
        queued = queue_rest(options, chosen)
        if _over_budget(model, options, chosen, queued):
            status = "feasible"
        p = build_plan(model, options, chosen, queued, objective=objective,
                       solver=solver, status=status, solve_time_s=time.perf_counter() - t0)
        p.gap = None if gap != gap else round(gap, 6)
        return p
    if solver == "decomposed":
        from geo.decomposed import solve_decomposed
        options, chosen, queued = solve_decomposed(model, objective)
    else:
        from geo.baselines import solve_fast
        options, chosen, queued = solve_fast(model, objective, solver)
    _over_budget(model, options, chosen, queued)
    return build_plan(model, options, chosen, queued, objective=objective, solver=solver,
                      status="feasible", solve_time_s=time.perf_counter() - t0)


def _over_budget(model: Model, options: dict[str, JobOptions], chosen: dict[str, Candidate],
                 queued: dict[str, Candidate]) -> dict[str, Candidate]:
    """The fleet budget as every method's last word (geo/feasibility.py ``trim_to_budget``):
    jobs a solver started beyond it wait instead. None does by construction; this keeps the
    rule whatever a solver does."""
    stopped = trim_to_budget(model, chosen, {n: o.job.priority for n, o in options.items()})
    for name, c in stopped.items():
        log.warning("geo: %s would break the fleet budget: it waits", name)
        queued[name] = c
    return stopped
