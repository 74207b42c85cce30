"""Dynamic re-planning: apply an event to the fleet, then re-plan so that running jobs move only
when they must (their GPUs are gone) or when moving pays after the migration penalty
(checkpoint bytes over the WAN plus the restart, in the candidates' time and money).

The spec is the state: each ``Job`` says where it runs now (``running``, ``running_mode``).
Steps of ``replan``:
  1. keep every running job whose GPUs are still there (highest priority first); the others
     are displaced, with the reason (the event that took their GPUs);
  2. place displaced and waiting jobs in the GPUs left, with the decomposed method (fast);
  3. only for events that add options (price cut, capacity up, site up, a job finished):
     each kept job moves if its best candidate, migration included, beats staying.
A site failure only removes options, so step 3 is skipped there: no job off the failed site
can gain from moving that did not gain before.
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
    job_options,
    multi_site,
    score,
    single_site,
)
from geo.decomposed import solve_decomposed
from geo.plan import Plan, build_plan
from geo.planner import plan as full_plan
from geo.protocol import Change, Event
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


def alloc_str(c: Candidate) -> str:
    return ", ".join(f"{s}:{n}x{c.gpu_type}" for s, n in c.alloc)


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


def _current(model: Model, job: Job) -> Candidate | None:
    """The candidate a running job is on now (no migration)."""
    items = [(s, t, n) for s, ts in job.running.items() for t, n in ts.items() if n > 0]
    if not items:
        return None
    t = items[0][1]
    if len(items) == 1 or job.running_mode in (None, "single-site"):
        s, t, n = items[0]
        return single_site(model, job, s, t, n)
    return multi_site(model, job, job.running_mode, [s for s, _, _ in items], t, items[0][2])


def initial_plan(spec: Spec, objective: str, solver: str = "auto", wan: Wan | None = None
                 ) -> tuple[Plan, list[Change]]:
    """Plan from scratch and mark the started jobs running."""
    if solver == "auto":
        solver = "cpsat" if len(spec.jobs) <= 200 else "decomposed"
    model = Model(spec, wan)
    p = full_plan(spec, objective, solver, model=model)
    diff = []
    by_name = {j.name: j for j in spec.jobs}  # one dict, not a scan per job (10k jobs)
    for jp in p.jobs:
        job = by_name[jp.name]
        if jp.sites and jp.start_h == 0:
            job.running = {s: {jp.gpu_type: n} for s, n in jp.sites.items()}
            job.running_mode = jp.mode
            diff.append(Change(job.name, "placed", "", where(job), "initial plan"))
    return p, diff


def replan(spec: Spec, objective: str, reason: str, *, improve: bool, wan: Wan | None = None,
           affected_site: str | None = None, model: Model | None = None
           ) -> tuple[Plan, list[Change]]:
    """Re-plan after the spec changed (see the module docstring); updates ``running``.
    ``model``: a Model of ``spec`` as it is now (the service keeps it for its next arrival)."""
    t0 = time.perf_counter()
    model = model if model is not None and model.spec is spec else Model(spec, wan)
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
            kept[job.name] = _current(model, job)
        else:
            displaced.append(job)
            why[job.name] = reason
    waiting = [j for j in spec.jobs if not j.running]
    pending = displaced + waiting
    options, chosen, queued = solve_decomposed(model, objective, jobs=pending, free=free)
    for name, c in chosen.items():
        for s, n in c.alloc:
            free[(s, c.gpu_type)] -= n
    diff: list[Change] = []
    by_name = {j.name: j for j in spec.jobs}
    for job in sorted(displaced, key=lambda j: -j.priority):
        if job.name not in chosen:
            c = _make_room(model, job, kept, free, diff, by_name)
            if c is not None:
                chosen[job.name] = c
                queued.pop(job.name, None)
                options[job.name] = JobOptions(job, candidates=[c], ref_speed=ideal_speed(model, job))
    if improve:
        _improve(model, objective, kept, free, diff, reason)
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
                               f"{why[job.name]}; no free GPUs elsewhere: waits"))
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
                   moved_reason={d.job: d.reason for d in diff})
    moved = {d.job for d in diff if d.change == "moved"}  # a set: not a diff scan per job
    for jp in p.jobs:
        jp.moved = jp.name in moved
    log.info("geo: replan (%s) kept %d, moved %d, placed %d, stopped %d in %.3fs", reason,
             len(kept), sum(d.change == "moved" for d in diff),
             sum(d.change == "placed" for d in diff), sum(d.change == "stopped" for d in diff),
             p.solve_time_s)
    return p, diff


def _improve(model: Model, objective: str, kept: dict[str, Candidate],
             free: dict[tuple[str, str], int], diff: list[Change], reason: str) -> None:
    """Move a kept job when its best candidate, migration penalty included, beats staying."""
    by_name = {j.name: j for j in model.spec.jobs}
    for name in list(kept):
        stay = kept[name]
        job = by_name[name]
        room = dict(free)
        for s, n in stay.alloc:
            room[(s, stay.gpu_type)] = room.get((s, stay.gpu_type), 0) + n
        o = job_options(model, job, objective, capacity=room, max_candidates=1000)
        if not o.candidates:
            continue
        best = max(o.candidates, key=lambda c: c.score)
        if not best.moved:
            continue  # staying (or a resize in place) is best
        stay_score = score(stay, objective, o.ref_speed, job.priority)
        if best.score <= stay_score:
            continue
        for s, n in stay.alloc:
            free[(s, stay.gpu_type)] += n
        for s, n in best.alloc:
            free[(s, best.gpu_type)] -= n
        kept[name] = best
        gain = {"throughput": f"speed x{best.speed / stay.speed:.2f}",
                "cost": f"saves ${stay.total_usd - best.total_usd:,.0f}",
                "makespan": f"finishes {stay.finish_h - best.finish_h:.2f} h earlier"}[objective]
        diff.append(Change(name, "moved", alloc_str(stay), alloc_str(best),
                           f"{reason}: moving pays ({gain} after {best.migration_s:.0f} s "
                           f"migration)"))


def _make_room(model: Model, job: Job, kept: dict[str, Candidate],
               free: dict[tuple[str, str], int], diff: list[Change],
               by_name: dict[str, Job]) -> Candidate | None:
    """A displaced job with no free place: shrink kept single-site jobs of no higher priority
    that run above their minimum, in one pool, just enough to fit the job at its minimum.
    Shrinking restarts those jobs in place (no WAN move); the diff says so. Only for a job
    that may run in one site."""
    if "single-site" not in job.modes:
        return None
    by_pool: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for n, c in kept.items():
        # pools of a type the job cannot use are skipped below anyway: skip them cheaply first
        if c.gpu_type not in job.gpu_types or len(c.alloc) != 1:
            continue
        if by_name[n].priority <= job.priority:
            surplus = c.gpus - by_name[n].min_gpus
            if surplus > 0:
                by_pool.setdefault((c.alloc[0][0], c.gpu_type), []).append((surplus, n))
    best = None  # (GPUs to take, site, type)
    for (s, t), donors in by_pool.items():
        if t not in job.gpu_types or model.capacity(s, t) < job.min_gpus:
            continue
        need = job.min_gpus - free.get((s, t), 0)
        if need <= 0 or sum(x for x, _ in donors) < need:
            continue
        if best is None or need < best[0]:
            best = (need, s, t)
    if best is None:
        return None
    need, s, t = best
    donors = sorted(by_pool[(s, t)])
    for surplus, n in reversed(donors):
        if need <= 0:
            break
        if surplus <= 0:
            continue
        take = min(surplus, need)
        old = kept[n]
        kept[n] = single_site(model, by_name[n], s, t, old.gpus - take)
        free[(s, t)] = free.get((s, t), 0) + take
        need -= take
        diff.append(Change(n, "resized", alloc_str(old), alloc_str(kept[n]),
                           f"gives {take} GPUs to displaced job {job.name}"))
    c = single_site(model, job, s, t, job.min_gpus)
    free[(s, t)] -= job.min_gpus
    return c


def free_gpus(model: Model) -> dict[tuple[str, str], int]:
    """GPUs per pool (site, type) that the running jobs of ``model.spec`` leave free."""
    free = {k: v[0] for k, v in model.pools.items()}
    for j in model.spec.jobs:
        for s, ts in (j.running or {}).items():
            for t, n in ts.items():
                free[(s, t)] = free.get((s, t), 0) - n
    return free


def place_arrival(model: Model, job: Job, objective: str,
                  free: dict[tuple[str, str], int] | None = None
                  ) -> tuple[Candidate | None, Change]:
    """The fast path for one arriving job (MAST's real-time placement): the GPUs the running
    jobs leave free (``free``, else counted from the spec), then the decomposed method on this
    job alone; nobody else moves. ``model`` may be reused between arrivals (the fleet has not
    changed)."""
    free = dict(free) if free is not None else free_gpus(model)
    c, could = _place_one(model, job, objective, free)
    if c is None and could and job.modes == ["single-site"]:
        return None, Change(job.name, "waiting", "", "", "no free GPUs for it now")
    if c is None:  # it may span sites, or no site can ever host it: the decomposed method
        options, chosen, queued = solve_decomposed(model, objective, jobs=[job], free=free)
        c = chosen.get(job.name)
        if c is None:
            why = options[job.name].reason or "no free GPUs for it now"
            return None, Change(job.name, "waiting", "", "", why)
    job.running = {}
    for s, n in c.alloc:
        job.running.setdefault(s, {})[c.gpu_type] = n
    job.running_mode = c.mode
    return c, Change(job.name, "placed", "", alloc_str(c), "job arrived")


def _place_one(model: Model, job: Job, objective: str, free: dict[tuple[str, str], int]
               ) -> tuple[Candidate | None, bool]:
    """One job's best single-site candidate in the free GPUs, by exhaustive search (MAST's
    "each eligible region builds a plan, the plans are compared"): every allowed GPU type and
    size at every site at once (numpy over sites), deadline and budget met, scored by the
    objective as ``decomposed`` scores it; None when none fits. The flag: some site could host
    it if its GPUs were free (so it waits for GPUs, not for a constraint)."""
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
            ok &= fleet.free[t] >= n
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
