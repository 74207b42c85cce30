"""Report: the plan every method returns, in the JSON schema of issue 6, and the one evaluation
(list scheduling of what waits, demand/supply per site, cost, makespan, objective value) that
all methods share so their numbers compare.
"""
from __future__ import annotations

import heapq
import math
from typing import Optional

import msgspec

from geo.balance import balance_penalty
from geo.candidates import PLACED, Candidate, JobOptions, Model
from geo.feasibility import job_violations


class JobPlan(msgspec.Struct, omit_defaults=False):
    name: str
    mode: str  # a mode, or "unplaced" when no plan can host it
    sites: dict[str, int]
    iteration_s: Optional[float]
    cost_per_hour: float
    finish_h: Optional[float]
    gpu_type: str = ""
    start_h: float = 0.0  # > 0: waits for GPUs held by others (demand above supply)
    moved: bool = False
    reason: str = ""
    running: bool = False  # starts now (else it waits: for GPUs, or for the fleet budget)
    total_usd: float = 0.0  # over the remaining run (GPU-hours, egress, reads, migration)
    at_risk: str = ""  # "constraint: why" when the plan cannot keep its deadline or budget


class SitePlan(msgspec.Struct, omit_defaults=False):
    name: str
    gpus_used: int
    gpus_total: int
    demand_supply_ratio: float  # GPUs wanted here (running + waiting) / GPUs here (MAST)
    gpus_wanted: int = -1  # the ratio's numerator; -1: not known (a state saved before it)


class Infeasible(msgspec.Struct):
    job: str
    constraint: str  # capacity | deadline | budget | fleet-budget
    reason: str


class Risk(msgspec.Struct):
    """A job whose deadline or budget the plan cannot keep (geo/feasibility.py)."""
    job: str
    constraint: str  # deadline | budget
    reason: str


class Plan(msgspec.Struct, omit_defaults=False):
    status: str  # optimal | feasible | infeasible (a job no plan can host) | unknown
    objective: str
    solve_time_s: float
    jobs: list[JobPlan]
    sites: list[SitePlan]
    solver: str = ""
    objective_value: float = 0.0
    gap: Optional[float] = None  # relative, CP-SAT's own bound (cpsat) or vs CP-SAT (bench)
    cost_per_hour: float = 0.0
    makespan_h: float = 0.0
    max_demand_supply: float = 0.0
    infeasible: list[Infeasible] = []
    at_risk: list[Risk] = []  # the jobs whose JobPlan.at_risk is set, in one list

    def job(self, name: str) -> JobPlan:
        return next(j for j in self.jobs if j.name == name)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def objective_value(objective: str, started: list[tuple[Candidate, JobOptions]],
                    makespan_h: float, balance: float = 0.0) -> float:
    """throughput: sum over jobs running now of priority * (1 + speed / ideal speed);
    balance: MAST's asymmetric demand/supply penalty (geo/balance.py);
    cost: $ of what runs now, over its remaining run (GPU-hours and egress); makespan: hours until the last job finishes."""
    if objective == "throughput":
        return sum(o.job.priority * (PLACED + c.speed / o.ref_speed) for c, o in started)
    if objective == "cost":
        return sum(c.total_usd for c, _ in started)
    if objective == "balance":
        return balance
    return makespan_h


def _list_schedule(cap: int, items: list[tuple[int, float, str]], busy: list[tuple[float, int]]
                   ) -> dict[str, float]:
    """Start times of waiting jobs (gpus, hours, name) in order on a pool of ``cap`` GPUs whose
    running jobs free (end_h, gpus) later: a job starts when enough GPUs are free."""
    heap = list(busy)
    heapq.heapify(heap)
    free = cap - sum(g for _, g in busy)
    t = 0.0
    starts = {}
    for gpus, hours, name in items:
        if gpus > cap:
            continue  # can never start here
        while free < gpus and heap:
            end, g = heapq.heappop(heap)
            t = max(t, end)
            free += g
        starts[name] = t
        free -= gpus
        heapq.heappush(heap, (t + hours, gpus))
    return starts


def _budget_starts(B: float, chosen: dict[str, Candidate], queued: dict[str, Candidate],
                   gpu_start: dict[str, float]) -> dict[str, float]:
    """Start times under the fleet budget B ($/h): the waiting jobs, in the order their GPUs
    free up, list-scheduled on B as on a pool whose units are cents per hour."""
    cents = lambda c: math.ceil(c.cost_per_hour * 100 - 1e-6)  # noqa: E731
    busy = [(c.finish_h, cents(c)) for c in chosen.values()]
    order = sorted((n for n in queued if n in gpu_start), key=lambda n: gpu_start[n])
    items = [(cents(queued[n]), queued[n].finish_h, n) for n in order]
    return _list_schedule(math.floor(B * 100 + 1e-6), items, busy)


def risks(job, c: Candidate | None, start_h: float | None, running: bool,
          budget: float | None) -> list[tuple[str, str]]:
    """(constraint, why) for each promise the plan cannot keep for ``job``: a running job whose
    candidate breaks its deadline or budget (a re-plan kept it: nothing that keeps them was
    left), or a waiting job that would finish after its deadline, or that has no start."""
    out = []
    if running and c is not None:
        for v in job_violations(job, c, budget):
            if v.constraint in ("deadline", "budget"):
                out.append((v.constraint, v.reason))
        return out
    if job.deadline_h is None:
        return out
    if c is None or start_h is None:
        out.append(("deadline", f"waits with no start in sight: its deadline_h "
                                f"{job.deadline_h:g} cannot be promised"))
    elif start_h + c.finish_h > job.deadline_h * (1 + 1e-9):
        out.append(("deadline", f"waits {start_h:.3g} h for GPUs or budget and would finish at "
                                f"{start_h + c.finish_h:.3g} h, after its deadline_h "
                                f"{job.deadline_h:g}"))
    return out


def build_plan(model: Model, options: dict[str, JobOptions], chosen: dict[str, Candidate],
               queued: dict[str, Candidate], *, objective: str, solver: str, status: str,
               solve_time_s: float, moved_reason: dict[str, str] | None = None,
               risk_note: dict[str, str] | None = None) -> Plan:
    """``chosen``: jobs that start now (within capacity and the fleet budget); ``queued``: jobs
    that wait at a candidate's place behind them (demand above supply, or the budget). Jobs in
    neither are unplaced. ``risk_note``: more words for a job at risk (a re-plan's why)."""
    jobs: list[JobPlan] = []
    B = model.spec.planner.budget_usd_per_hour
    infeasible = [Infeasible(o.job.name, o.reason.split(":", 1)[0], o.reason)
                  for o in options.values() if not o.candidates]
    demand: dict[tuple[str, str], int] = {}
    busy: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for c in chosen.values():
        for s, n in c.alloc:
            demand[(s, c.gpu_type)] = demand.get((s, c.gpu_type), 0) + n
            busy.setdefault((s, c.gpu_type), []).append((c.finish_h, n))
    waiting: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
    for name, c in queued.items():
        for s, n in c.alloc:
            demand[(s, c.gpu_type)] = demand.get((s, c.gpu_type), 0) + n
            waiting.setdefault((s, c.gpu_type), []).append((n, c.finish_h, name))
    starts: dict[str, float] = {}
    never: set[str] = set()
    for key, items in waiting.items():
        got = _list_schedule(model.capacity(*key), items, busy.get(key, []))
        never.update(name for _, _, name in items if name not in got)
        for name, t in got.items():  # a job waiting on several sites starts when all have room
            starts[name] = max(starts.get(name, 0.0), t)
    for name in never:
        starts.pop(name, None)
    if B is not None and queued:
        got = _budget_starts(B, chosen, queued, starts)
        for name in list(starts):
            if name in got:
                starts[name] = max(starts[name], got[name])
            else:
                del starts[name]  # dearer than the whole budget: never
    makespan = 0.0
    started = []
    at_risk: list[Risk] = []
    notes = risk_note or {}
    for name, o in options.items():
        c = chosen.get(name) or queued.get(name)
        run = name in chosen
        start = 0.0 if run else starts.get(name)
        if o.candidates or run:
            for con, why in risks(o.job, c, start, run, B):
                why = f"{why}; {notes[name]}" if name in notes else why
                at_risk.append(Risk(name, con, f"{con}: job {name!r} {why}"))
        risk = "; ".join(r.reason for r in at_risk if r.job == name)
        if c is None or (not run and start is None):
            why = o.reason or "capacity: waiting for GPUs (no candidate fits the free capacity)"
            jobs.append(JobPlan(name, "unplaced", {}, None, 0.0, None, reason=why,
                                at_risk=risk))
            continue
        if run:
            started.append((c, o))
        fin = start + c.finish_h
        makespan = max(makespan, fin)
        jobs.append(JobPlan(name, c.mode, c.sites, c.iteration_s, c.cost_per_hour, fin,
                            c.gpu_type, start, c.moved, (moved_reason or {}).get(name, ""),
                            running=run, total_usd=c.total_usd, at_risk=risk))
    sites = []
    max_ds = 0.0
    for s in model.sites:
        total = sum(model.capacity(s, t) for t in model.types_at[s])
        want = sum(v for (site, _), v in demand.items() if site == s)
        used = sum(min(v, model.capacity(site, t)) for (site, t), v in demand.items() if site == s)
        ratio = want / total if total else (0.0 if want == 0 else float("inf"))
        max_ds = max(max_ds, ratio)
        sites.append(SitePlan(s, used, total, round(ratio, 4), want))
    cost_h = sum(c.cost_per_hour for c, _ in started)
    return Plan(status="infeasible" if infeasible else status, objective=objective,
                solve_time_s=solve_time_s, jobs=jobs, sites=sites, solver=solver,
                objective_value=objective_value(objective, started, makespan,
                                                balance_penalty(model, demand)),
                cost_per_hour=cost_h, makespan_h=makespan, max_demand_supply=max_ds,
                infeasible=infeasible, at_risk=at_risk)


def add_arrival(plan: Plan, model: Model, c: Candidate, ref_speed: float, priority: float, *,
                reason: str, solve_time_s: float) -> Plan | None:
    """``plan`` with one more job starting now on ``c``, without a re-plan (the service's fast
    path for a submitted job). Exact only when nobody else's numbers change: every pool of
    ``c`` holds running jobs only (no job waits there, checked by the caller) and every site of
    ``c`` has no demand above its supply (``gpus_used == gpus_wanted``); None otherwise, and
    for a plan saved without ``gpus_wanted``. Then each site of ``c`` gains c's GPUs in use and
    in demand, and the objective gains c's term."""
    from geo.balance import UNDER

    at = dict(c.alloc)
    by_name = {sp.name: sp for sp in plan.sites}
    for s in at:
        sp = by_name.get(s)
        if sp is None or sp.gpus_wanted < 0 or sp.gpus_used != sp.gpus_wanted:
            return None
    sites, max_ds = [], plan.max_demand_supply
    for sp in plan.sites:
        n = at.get(sp.name, 0)
        if n:
            want = sp.gpus_wanted + n
            ratio = want / sp.gpus_total if sp.gpus_total else float("inf")
            max_ds = max(max_ds, ratio)
            sp = SitePlan(sp.name, sp.gpus_used + n, sp.gpus_total, round(ratio, 4), want)
        sites.append(sp)
    value = plan.objective_value
    if plan.objective == "throughput":
        value += priority * (PLACED + c.speed / ref_speed)
    elif plan.objective == "cost":
        value += c.total_usd
    elif plan.objective == "balance":  # c takes idle GPUs of pools that are not overloaded
        value -= UNDER * c.gpus / (sum(n for n, _ in model.pools.values()) or 1)
    makespan = max(plan.makespan_h, c.finish_h)
    if plan.objective == "makespan":
        value = makespan
    jp = JobPlan(c.job, c.mode, c.sites, c.iteration_s, c.cost_per_hour, c.finish_h, c.gpu_type,
                 0.0, False, reason, running=True, total_usd=c.total_usd)
    return msgspec.structs.replace(
        plan, jobs=[*plan.jobs, jp], sites=sites, solver="arrival", solve_time_s=solve_time_s,
        objective_value=value, gap=None, cost_per_hour=plan.cost_per_hour + c.cost_per_hour,
        makespan_h=makespan, max_demand_supply=max_ds)
