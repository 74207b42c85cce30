"""Dynamic re-planning: apply an event to the fleet, then re-plan so that running jobs move only
when they must (their GPUs are gone) or when moving pays after the migration penalty
(checkpoint bytes over the WAN plus the restart, in the candidates' time and money).

The spec is the state: each ``Job`` says where it runs now (``running``, ``running_mode``).
Steps of ``replan``, every one within the feasibility rule (geo/feasibility.py):
  1. keep every running job whose GPUs are still there (highest priority first); the others
     are displaced, with the reason (the event that took their GPUs); if the kept jobs cost
     more than the fleet budget (a price rose), those worth least per $/h stop too;
  2. place displaced and waiting jobs in the GPUs and budget left, with the decomposed method
     (fast); a displaced job that fits nowhere may shrink kept jobs of no higher priority in
     one pool, as long as each still meets its deadline and budget (geo/room.py);
  3. a kept job whose own deadline or budget the event broke (a price rose) moves to the best
     place that keeps them; with none it stays and the plan reports it at risk;
  4. only for events that add options (price cut, capacity up, site up, a job finished):
     each kept job moves if its best candidate, migration included, beats staying.
A site failure only removes options, so step 4 is skipped there: no job off the failed site
can gain from moving that did not gain before. Jobs whose deadline or budget the plan cannot
keep are named in ``Plan.at_risk`` (and each job's ``at_risk``), and for the jobs that ran
before the event, in the diff (``at-risk``).
"""
from __future__ import annotations

import logging
import time

import msgspec
import numpy as np

from geo.baselines import _Fleet, _site_options
from geo.candidates import (
    PLACED,
    Candidate,
    JobOptions,
    Model,
    gpu_sizes,
    ideal_speed,
    multi_site,
    single_site,
)
from geo.decomposed import solve_decomposed
from geo.feasibility import fleet_budget, trim_to_budget, within_budget
from geo.plan import Plan, build_plan
from geo.planner import plan as full_plan
from geo.protocol import Change, Event
from geo.room import Room, alloc_str
from geo.spec import GeoSpecError, Job, Spec, check_job_refs
from geo.wan import Wan

log = logging.getLogger("geo.replan")

IMPROVING = ("site-up", "capacity", "price", "job-finished")


def clone(spec: Spec) -> Spec:
    return msgspec.json.decode(msgspec.json.encode(spec), type=Spec)


def where(job: Job) -> str:
    if not job.running:
        return ""
    return ", ".join(f"{s}:{n}x{t}" for s, ts in job.running.items() for t, n in ts.items())


def apply_event(spec: Spec, ev: Event, saved: dict[str, dict[str, int]]) -> str:
    """Change the fleet in place; returns the reason text for the diff. ``saved`` keeps the
    GPU counts of sites that are down, so that site-up restores them."""
    site = next((s for s in spec.sites if s.name == ev.site), None) if ev.site else None
    if ev.site is not None and site is None:
        raise GeoSpecError(f"event {ev.kind}: {ev.site!r} is not a site")
    if ev.kind == "site-down":
        if ev.site not in saved:
            saved[ev.site] = {g.type: g.count for g in site.gpus}
        for g in site.gpus:
            g.count = 0
        return f"site {ev.site} is down"
    if ev.kind == "site-up":
        for g in site.gpus:
            g.count = saved.get(ev.site, {}).get(g.type, g.count)
        saved.pop(ev.site, None)
        return f"site {ev.site} is back"
    if ev.kind == "job-finished":
        before = len(spec.jobs)
        spec.jobs = [j for j in spec.jobs if j.name != ev.job]
        if len(spec.jobs) == before:
            raise GeoSpecError(f"event job-finished: no job {ev.job!r}")
        return f"job {ev.job} finished"
    pools = [g for g in site.gpus if ev.gpu_type in (None, g.type)]
    if not pools:
        raise GeoSpecError(f"event {ev.kind}: site {ev.site} has no {ev.gpu_type} GPUs")
    for g in pools:
        if ev.kind == "capacity":
            g.count = ev.count
        elif ev.kind == "preempt":
            g.count -= round(g.count * g.spot_share)  # the spot share is reclaimed
            g.spot_share = 0.0
        else:
            g.usd_per_hour = ev.usd_per_hour
    what = {"capacity": f"capacity at {ev.site}/{ev.gpu_type} set to {ev.count}",
            "preempt": f"spot GPUs preempted at {ev.site}",
            "price": f"price at {ev.site}/{ev.gpu_type} now ${ev.usd_per_hour}/GPU-h"}
    return what[ev.kind]


def check_new_job(spec: Spec, job: Job) -> None:
    """A submitted job's checks against the fleet (a new name, GPU types, dataset, ...); it
    arrives waiting (no ``running``)."""
    if any(j.name == job.name for j in spec.jobs):
        raise GeoSpecError(f"job {job.name!r} exists already")
    check_job_refs(spec, job, {}, f"job {job.name}", "$")
    job.running, job.running_mode = None, None


def add_job(spec: Spec, job: Job) -> str:
    check_new_job(spec, job)
    spec.jobs.append(job)
    return f"job {job.name} arrived"


def current(model: Model, job: Job) -> Candidate | None:
    """The candidate a running job is on now (no migration); sizes per site as it runs."""
    items = [(s, t, n) for s, ts in job.running.items() for t, n in ts.items() if n > 0]
    if not items:
        return None
    t = items[0][1]
    if len(items) == 1 or job.running_mode in (None, "single-site"):
        s, t, n = items[0]
        return single_site(model, job, s, t, n)
    return multi_site(model, job, job.running_mode, [s for s, _, _ in items], t,
                      [n for _, _, n in items])


def initial_plan(spec: Spec, objective: str, solver: str = "auto", wan: Wan | None = None
                 ) -> tuple[Plan, list[Change]]:
    """Plan from scratch and mark the jobs that start now running (not those that wait, for
    GPUs or for the fleet budget)."""
    if solver == "auto":
        solver = "cpsat" if len(spec.jobs) <= 200 else "decomposed"
    model = Model(spec, wan)
    p = full_plan(spec, objective, solver, model=model)
    diff = []
    by_name = {j.name: j for j in spec.jobs}  # one dict, not a scan per job (10k jobs)
    for jp in p.jobs:
        job = by_name[jp.name]
        if jp.running:
            job.running = {s: {jp.gpu_type: n} for s, n in jp.sites.items()}
            job.running_mode = jp.mode
            diff.append(Change(job.name, "placed", "", where(job), "initial plan"))
        else:
            job.running, job.running_mode = None, None
    return p, diff


def replan(spec: Spec, objective: str, reason: str, *, improve: bool, wan: Wan | None = None,
           affected_site: str | None = None, model: Model | None = None
           ) -> tuple[Plan, list[Change]]:
    """Re-plan after the spec changed (see the module docstring); updates ``running``.
    ``model``: a Model of ``spec`` as it is now (the service keeps it for its next arrival)."""
    t0 = time.perf_counter()
    model = model if model is not None and model.spec is spec else Model(spec, wan)
    B = fleet_budget(model)
    free = {k: v[0] for k, v in model.pools.items()}
    kept: dict[str, Candidate] = {}
    displaced: list[Job] = []
    why: dict[str, str] = {}
    running = sorted((j for j in spec.jobs if j.running), key=lambda j: -j.priority)
    for job in running:
        need = [(s, t, n) for s, ts in job.running.items() for t, n in ts.items()]
        if all(free.get((s, t), 0) >= n for s, t, n in need):
            for s, t, n in need:
                free[(s, t)] -= n
            kept[job.name] = current(model, job)
        else:
            displaced.append(job)
            why[job.name] = reason
    by_name = {j.name: j for j in spec.jobs}
    # the fleet budget (a price rose): the kept jobs worth least per $/h stop until it holds
    for name, c in trim_to_budget(model, kept, {n: by_name[n].priority for n in kept}).items():
        for s, n in c.alloc:
            free[(s, c.gpu_type)] += n
        displaced.append(by_name[name])
        why[name] = f"{reason}; the fleet's ${B:g}/h budget no longer holds it"
    spend = sum(c.cost_per_hour for c in kept.values())
    waiting = [j for j in spec.jobs if not j.running]
    pending = displaced + waiting
    options, chosen, queued = solve_decomposed(model, objective, jobs=pending, free=free,
                                               spend=spend)
    for name, c in chosen.items():
        for s, n in c.alloc:
            free[(s, c.gpu_type)] -= n
        spend += c.cost_per_hour
    diff: list[Change] = []
    room = Room(model, kept, free, spend, diff, by_name)
    for job in sorted(displaced, key=lambda j: -j.priority):
        if job.name not in chosen:
            c = room.make_room(job)
            if c is not None:
                chosen[job.name] = c
                queued.pop(job.name, None)
                options[job.name] = JobOptions(job, candidates=[c], ref_speed=ideal_speed(model, job))
    notes = room.keep_promises(objective, reason)  # kept jobs an event pushed past the rule
    if improve:
        room.improve(objective, reason)
    for name, c in kept.items():
        job = by_name[name]
        options[name] = JobOptions(job, candidates=[c], ref_speed=ideal_speed(model, job))
    all_chosen = {**kept, **chosen}
    for name, c in chosen.items():
        job = by_name[name]
        before = where(job)
        change = "moved" if job.running else "placed"
        diff.append(Change(name, change, before, alloc_str(c),
                           why.get(name, reason if change == "moved" else "waiting job placed")))
    for job in displaced:
        if job.name not in chosen:
            diff.append(Change(job.name, "stopped", where(job), "",
                               f"{why[job.name]}; no free GPUs elsewhere that keep its "
                               f"deadline, budget and the fleet budget: waits"))
    was_running = {j.name for j in running}
    for name, c in all_chosen.items():
        job = by_name[name]
        job.running = {}
        for s, n in c.alloc:
            job.running.setdefault(s, {})[c.gpu_type] = n
        job.running_mode = c.mode
    for name in queued:
        if not by_name[name].running and name not in why:
            diff.append(Change(name, "waiting", "", "", "no free GPUs for it now"))
        by_name[name].running, by_name[name].running_mode = None, None
    for job in displaced:
        if job.name not in all_chosen:
            job.running, job.running_mode = None, None
    p = build_plan(model, options, all_chosen, queued, objective=objective, solver="replan",
                   status="feasible", solve_time_s=time.perf_counter() - t0,
                   moved_reason={d.job: d.reason for d in diff}, risk_note=notes)
    for r in p.at_risk:  # said in the diff too: the promises this re-plan cannot keep
        if r.job in was_running:
            diff.append(Change(r.job, "at-risk", where(by_name[r.job]),
                               where(by_name[r.job]), r.reason))
    moved = {d.job for d in diff if d.change == "moved"}  # a set: not a diff scan per job
    for jp in p.jobs:
        jp.moved = jp.name in moved
    log.info("geo: replan (%s) kept %d, moved %d, placed %d, stopped %d, at risk %d in %.3fs",
             reason, len(kept), sum(d.change == "moved" for d in diff),
             sum(d.change == "placed" for d in diff), sum(d.change == "stopped" for d in diff),
             len(p.at_risk), p.solve_time_s)
    return p, diff


def free_gpus(model: Model) -> dict[tuple[str, str], int]:
    """GPUs per pool (site, type) that the running jobs of ``model.spec`` leave free."""
    free = {k: v[0] for k, v in model.pools.items()}
    for j in model.spec.jobs:
        for s, ts in (j.running or {}).items():
            for t, n in ts.items():
                free[(s, t)] = free.get((s, t), 0) - n
    return free


def running_spend(model: Model) -> float:
    """$/h of the jobs of ``model.spec`` that run now (their candidates as they run)."""
    return sum(c.cost_per_hour for j in model.spec.jobs if j.running
               for c in (current(model, j),) if c is not None)


def place_arrival(model: Model, job: Job, objective: str,
                  free: dict[tuple[str, str], int] | None = None, spend: float | None = None
                  ) -> tuple[Candidate | None, Change]:
    """The fast path for one arriving job (MAST's real-time placement): the GPUs the running
    jobs leave free (``free``, else counted from the spec) and what they leave of the fleet
    budget (``spend``: their $/h, else counted), then the decomposed method on this job alone;
    nobody else moves. ``model`` may be reused between arrivals (the fleet has not changed)."""
    free = dict(free) if free is not None else free_gpus(model)
    if spend is None:
        spend = running_spend(model) if fleet_budget(model) is not None else 0.0
    c, could = _place_one(model, job, objective, free, spend)
    if c is None and could and job.modes == ["single-site"]:
        return None, Change(job.name, "waiting", "", "", "no free GPUs (or fleet budget) for "
                                                           "it now")
    if c is None:  # it may span sites, or no site can ever host it: the decomposed method
        options, chosen, queued = solve_decomposed(model, objective, jobs=[job], free=free,
                                                   spend=spend)
        c = chosen.get(job.name)
        if c is None:
            why = options[job.name].reason or "no free GPUs (or fleet budget) for it now"
            return None, Change(job.name, "waiting", "", "", why)
    job.running = {}
    for s, n in c.alloc:
        job.running.setdefault(s, {})[c.gpu_type] = n
    job.running_mode = c.mode
    return c, Change(job.name, "placed", "", alloc_str(c), "job arrived")


def _place_one(model: Model, job: Job, objective: str, free: dict[tuple[str, str], int],
               spend: float = 0.0) -> tuple[Candidate | None, bool]:
    """One job's best single-site candidate in the free GPUs, by exhaustive search (MAST's
    "each eligible region builds a plan, the plans are compared"): every allowed GPU type and
    size at every site at once (numpy over sites), the rule met (geo/feasibility.py: deadline,
    budget, and the fleet budget after ``spend``), scored by the objective as ``decomposed``
    scores it; None when none fits. The flag: some site could host it if its GPUs (and the
    budget) were free (so it waits for them, not for a constraint)."""
    if "single-site" not in job.modes:
        return None, False
    fleet = _Fleet(model, free)
    ref = ideal_speed(model, job)
    best = None  # (score, site index, type, GPUs)
    could = False
    for t in job.gpu_types:
        if t not in fleet.cap:
            continue
        for n in gpu_sizes(job, int(fleet.max_cap[t])):
            it, hours, total, ok = _site_options(fleet, job, t, n)
            could = could or bool(ok.any())
            ok = ok & (fleet.free[t] >= n) & within_budget(spend, n * fleet.price[t],
                                                           fleet.budget)
            if not ok.any():
                continue
            if objective in ("throughput", "balance"):
                sc = job.priority * (PLACED + 1 / it / ref)
            elif objective == "cost":
                sc = -total
            else:
                sc = -hours
            i = int(np.argmax(np.where(ok, sc, -np.inf)))
            if best is None or sc[i] > best[0]:
                best = (float(sc[i]), i, t, n)
    if best is None:
        return None, could
    _, i, t, n = best
    return single_site(model, job, model.sites[i], t, n), True
