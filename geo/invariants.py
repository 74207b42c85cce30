"""Random fleets, random event sequences, and the invariants every plan keeps after every step:
the property test (tests/test_geo_invariants.py) and ``gpusched bench geo --invariant-steps N``.

``check_plan`` is written from the spec and the plan alone, not from geo/feasibility.py, so it
is a second reading of the rule: for the jobs that run now (``JobPlan.running``)
  state     the spec's ``running`` is what the plan says (and nothing else runs);
  rule      a GPU type and a mode the job allows (one site <=> single-site), min_gpus <= GPUs
            <= max_gpus, at least one GPU per site; iteration seconds and $/h as the cost model
            prices that placement;
  capacity  per pool (site x type), the GPUs in use <= the pool's count now;
  fleet     the $/h of what runs <= planner.budget_usd_per_hour;
  promises  finish_h <= deadline_h and total_usd <= budget_usd, or (re-plans only: a fresh
            plan never breaks them) the job is named at risk with that constraint;
and for every job: at risk only when a promise is broken (a running job over its deadline or
budget; a job that waits with a deadline it would miss or with no start), every such job named,
and ``Plan.at_risk`` the same jobs as the rows'.

``run_steps`` drives a geo service in-process (``GeoService.handle``: the arrival fast path,
re-plans, the state saved after each step) through random events: site-down, site-up,
capacity, preempt, price, job-finished and submit.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile

from geo.candidates import Model, multi_site, single_site
from geo.options import job_options
from geo.plan import Plan
from geo.spec import DEFAULT_TFLOPS, Dataset, GpuPool, Job, Link, Planner, Site, Spec

log = logging.getLogger("geo.invariants")

TYPES = {"H100": (2.5, 4.5), "A100": (1.2, 2.4), "L4": (0.5, 0.9)}
REL = 1e-6


def random_job(rng: random.Random, name: str, types: list[str], sites: list[str],
               datasets: list[str]) -> Job:
    P = rng.choice((3.5e8, 1.3e9, 7e9, 1.3e10))
    lo = rng.choice((1, 2, 4, 8, 16, 32))
    modes = ["single-site"]
    r = rng.random()
    if r < 0.25:
        modes = rng.sample(["data-parallel", "local-sgd", "pipeline"], rng.randint(1, 3))
    elif r < 0.5:
        modes += rng.sample(["data-parallel", "local-sgd", "pipeline"], rng.randint(1, 3))
    T = rng.choice((2.5e5, 1e6, 2e6))
    iters = rng.randint(100, 4000)
    gpu_types = rng.sample(types, rng.randint(1, len(types)))
    hi = lo * rng.choice((1, 2, 4))
    # deadlines and budgets around what the job needs: on lo GPUs of its slowest type at 40%
    # of peak, hours and dollars at a middling price; some tight, some loose
    tf = min(DEFAULT_TFLOPS[t] for t in gpu_types) * 1e12 * 0.4
    hours = 6 * P * T * iters / (lo * tf) / 3600
    usd = hours * lo * sum(sum(TYPES[t]) / 2 for t in gpu_types) / len(gpu_types)
    return Job(name=name, params=P, tokens_per_iter=T, iterations=iters, gpu_types=gpu_types,
               min_gpus=lo, max_gpus=hi, priority=float(rng.choice((1, 1, 2, 3))),
               deadline_h=round(hours * rng.choice((0.3, 0.8, 1.1, 2.0, 5.0)), 3) + 0.01
               if rng.random() < 0.5 else None,
               budget_usd=round(usd * rng.choice((0.5, 0.9, 1.1, 1.5, 3.0)), 2) + 0.01
               if rng.random() < 0.4 else None,
               dataset=rng.choice(datasets) if datasets and rng.random() < 0.3 else None,
               modes=modes, microbatches=rng.choice((4, 8, 32)),
               local_sgd_h=rng.choice((8, 32, 128)))


def random_spec(rng: random.Random) -> Spec:
    """2-5 sites with explicit links, 1-2 GPU pools each, 2-9 jobs with random sizes, modes,
    deadlines, budgets and datasets; a fleet budget in a third of the specs."""
    n = rng.randint(2, 5)
    names = [f"s{i}" for i in range(n)]
    types = rng.sample(list(TYPES), rng.randint(1, 3))
    sites = []
    for s in names:
        pools = []
        for t in rng.sample(types, rng.randint(1, len(types))):
            lo, hi = TYPES[t]
            pools.append(GpuPool(t, rng.choice((0, 8, 16, 24, 32, 48, 64)),
                                 round(rng.uniform(lo, hi), 2), rng.choice((0.0, 0.25, 0.5))))
        sites.append(Site(s, pools))
    links = [Link(a, b, rng.uniform(2, 150), rng.choice((1.0, 10.0, 50.0, 100.0)),
                  rng.choice((0.0, 0.02, 0.09)))
             for i, a in enumerate(names) for b in names[i + 1:]]
    datasets = [Dataset(f"d{i}", float(rng.choice((10, 500, 4000))), rng.sample(names, 1))
                for i in range(rng.randint(0, 2))]
    fleet = sorted({g.type for s in sites for g in s.gpus})  # a job's types: some site has one
    jobs = [random_job(rng, f"j{i}", fleet, names, [d.name for d in datasets])
            for i in range(rng.randint(2, 9))]
    budget = rng.choice((40.0, 150.0, 600.0)) if rng.random() < 0.33 else None
    return Spec(sites=sites, jobs=jobs, links=links, datasets=datasets,
                planner=Planner(budget_usd_per_hour=budget, time_limit_s=2.0, workers=1,
                                max_sites_per_job=rng.choice((2, 3))))


def random_request(rng: random.Random, spec: Spec, down: dict, k: int):
    """One random event (an ``Event``) or a new job (a ``Job``, to submit)."""
    from geo.protocol import Event

    kind = rng.choice(("site-down", "site-up", "capacity", "preempt", "price", "job-finished",
                       "submit", "submit"))
    site = rng.choice(spec.sites)
    if kind == "site-up" and down:
        return Event("site-up", site=rng.choice(sorted(down)))
    if kind in ("site-down", "site-up"):
        return Event("site-down", site=site.name)
    if kind == "capacity":
        g = rng.choice(site.gpus)
        return Event("capacity", site=site.name, gpu_type=g.type,
                     count=rng.choice((0, 8, 16, 32, 64)))
    if kind == "preempt":
        return Event("preempt", site=site.name)
    if kind == "price":
        g = rng.choice(site.gpus)
        lo, hi = TYPES.get(g.type, (0.5, 5.0))
        return Event("price", site=site.name, gpu_type=g.type,
                     usd_per_hour=round(rng.uniform(lo * 0.5, hi * 2), 2))
    if kind == "job-finished" and spec.jobs:
        return Event("job-finished", job=rng.choice(spec.jobs).name)
    types = sorted({g.type for s in spec.sites for g in s.gpus})
    return random_job(rng, f"n{k}", types, [s.name for s in spec.sites],
                      [d.name for d in spec.datasets])


def _priced(model: Model, job: Job, jp) -> object:
    sites = list(jp.sites)
    if jp.mode == "single-site":
        return single_site(model, job, sites[0], jp.gpu_type, jp.sites[sites[0]])
    return multi_site(model, job, jp.mode, sites, jp.gpu_type, [jp.sites[s] for s in sites])


def _over(x: float, limit: float) -> bool:
    return x > limit * (1 + REL) + 1e-9


def check_plan(spec: Spec, plan: Plan, *, fresh: bool,
               before: dict[str, dict] | None = None) -> list[str]:
    """Every invariant the plan breaks (module docstring); empty when it keeps them all.
    ``before``: job -> where it ran before the step (a re-plan's input); a running job may
    break a promise only where it ran already (an event broke it; the re-plan never places,
    moves or shrinks a job into a broken promise) and only when no place that keeps its
    promises is left in the GPUs and budget the others leave."""
    bad: list[str] = []
    jobs = {j.name: j for j in spec.jobs}
    pools = {(s.name, g.type): g.count for s in spec.sites for g in s.gpus}
    model = Model(spec)
    B = spec.planner.budget_usd_per_hour
    use: dict[tuple[str, str], int] = {}
    spend = 0.0
    at_risk = []
    if sorted(jp.name for jp in plan.jobs) != sorted(jobs):
        bad.append("the plan's jobs are not the spec's")
    for jp in plan.jobs:
        job = jobs.get(jp.name)
        if job is None:
            continue
        risk = jp.at_risk
        if not jp.running:
            if job.running:
                bad.append(f"{jp.name}: runs in the state but waits in the plan")
            late = job.deadline_h is not None and (jp.finish_h is None or
                                                   _over(jp.finish_h, job.deadline_h))
            infeasible = any(i.job == jp.name for i in plan.infeasible)
            if late and not infeasible and "deadline" not in risk:
                bad.append(f"{jp.name}: waits and misses its deadline silently")
            if risk and not late:
                bad.append(f"{jp.name}: at risk with no broken promise ({risk})")
            continue
        want = {s: {jp.gpu_type: n} for s, n in jp.sites.items()}
        if job.running != want:
            bad.append(f"{jp.name}: the state runs it on {job.running}, the plan on {want}")
        if jp.gpu_type not in job.gpu_types:
            bad.append(f"{jp.name}: type {jp.gpu_type} not allowed")
        if jp.mode not in job.modes or (len(jp.sites) == 1) != (jp.mode == "single-site"):
            bad.append(f"{jp.name}: mode {jp.mode} on {len(jp.sites)} sites not allowed")
        n = sum(jp.sites.values())
        if not job.min_gpus <= n <= job.max_gpus or min(jp.sites.values()) < 1:
            bad.append(f"{jp.name}: {jp.sites} outside {job.min_gpus}..{job.max_gpus} GPUs")
        for s, k in jp.sites.items():
            use[(s, jp.gpu_type)] = use.get((s, jp.gpu_type), 0) + k
        spend += jp.cost_per_hour
        if (jp.gpu_type in job.gpu_types and all((s, jp.gpu_type) in pools for s in jp.sites)
                and jp.mode in job.modes):
            c = _priced(model, job, jp)
            if abs(c.iteration_s - jp.iteration_s) > REL * c.iteration_s or \
                    abs(c.cost_per_hour - jp.cost_per_hour) > REL * max(1.0, c.cost_per_hour):
                bad.append(f"{jp.name}: reports {jp.iteration_s} s/it, ${jp.cost_per_hour}/h; "
                           f"the cost model prices it {c.iteration_s}, {c.cost_per_hour}")
        late = job.deadline_h is not None and _over(jp.finish_h, job.deadline_h)
        dear = job.budget_usd is not None and _over(jp.total_usd, job.budget_usd)
        for broken, what in ((late, "deadline"), (dear, "budget")):
            if broken and (fresh or what not in risk):
                bad.append(f"{jp.name}: breaks its {what} " +
                           ("in a fresh plan" if fresh else "and is not named at risk"))
        if risk and not (late or dear):
            bad.append(f"{jp.name}: at risk with no broken promise ({risk})")
        if (late or dear) and before is not None:
            if before.get(jp.name) != job.running:
                bad.append(f"{jp.name}: the re-plan put it where it breaks its "
                           f"{'deadline' if late else 'budget'} ({before.get(jp.name)} -> "
                           f"{job.running})")
            else:
                at_risk.append(jp)
    for jp in at_risk:  # kept where an event broke a promise: nothing better was left?
        job = jobs[jp.name]
        room = {k: pools[k] - use.get(k, 0) for k in pools}
        for s, k in jp.sites.items():
            room[(s, jp.gpu_type)] += k
        o = job_options(model, job, plan.objective, capacity=room, exact=False,
                        max_candidates=1000)
        fits = [c for c in o.candidates
                if B is None or not _over(spend - jp.cost_per_hour + c.cost_per_hour, B)]
        if fits:
            bad.append(f"{jp.name}: kept at risk although {fits[0].mode} on "
                       f"{dict(fits[0].alloc)} {fits[0].gpu_type} keeps its promises")
    for (s, t), k in sorted(use.items()):
        if k > pools.get((s, t), 0):
            bad.append(f"capacity: {k} {t} in use at {s}, which has {pools.get((s, t), 0)}")
    if B is not None and _over(spend, B):
        bad.append(f"fleet budget: ${spend:.2f}/h running, budget ${B:g}/h")
    named = {j.name for j in plan.jobs if j.at_risk}
    if {r.job for r in plan.at_risk} != named:
        bad.append("Plan.at_risk and the rows' at_risk differ")
    run_now = {j.name for j in plan.jobs if j.running}
    stray = [j.name for j in spec.jobs if j.running and j.name not in run_now]
    if stray:
        bad.append(f"running in the state but not in the plan: {stray}")
    return bad


def start_state(seed: int, solver: str, folder: str, objective: str | None = None):
    """A random fleet planned from scratch by ``solver``, saved where a service reloads it.
    Returns (state path, the fresh plan's violations)."""
    from geo.replan import initial_plan
    from geo.state import GeoState, save_state

    rng = random.Random(seed)
    spec = random_spec(rng)
    objective = objective or rng.choice(("throughput", "throughput", "cost", "makespan",
                                         "balance" if solver == "cpsat" else "throughput"))
    plan, diff = initial_plan(spec, objective, solver)
    bad = check_plan(spec, plan, fresh=True)
    path = os.path.join(folder, f"state-{seed}-{solver}.json")
    save_state(GeoState(spec=spec, objective=objective, plan=plan, diff=diff), path)
    return path, bad


def run_steps(seed: int, steps: int, solver: str, folder: str | None = None
              ) -> tuple[int, list[str]]:
    """A random fleet planned by ``solver``, then ``steps`` random events through an
    in-process geo service; the invariants checked after every one. Returns (steps applied,
    violations as 'seed/solver step k: what')."""
    from geo.protocol import EventReq, Reply, Submit, decode, encode
    from geo.service import GeoService

    own = folder is None
    folder = folder or tempfile.mkdtemp(prefix="geo-inv-")
    try:
        path, bad = start_state(seed, solver, folder)
        out = [f"{seed}/{solver} fresh: {b}" for b in bad]
        svc = GeoService(f"ipc://{folder}/unused.sock", path)
        rng = random.Random(seed * 7919 + 1)
        done = 0
        try:
            for k in range(steps):
                req = random_request(rng, svc.state.spec, svc.state.down, k)
                before = {j.name: j.running for j in svc.state.spec.jobs}
                msg = Submit(k + 1, req) if isinstance(req, Job) else EventReq(k + 1, req)
                frames = svc.handle(encode(msg))
                ans = decode(frames, {b"REPLY": Reply, b"ERROR": _error_type()})
                if not isinstance(ans, Reply):
                    if ans.code == "INTERNAL":
                        out.append(f"{seed}/{solver} step {k}: INTERNAL {ans.message}")
                    continue  # a refused event (e.g. a capacity below zero) changes nothing
                done += 1
                for b in check_plan(svc.state.spec, svc.state.plan, fresh=False,
                                    before=before):
                    out.append(f"{seed}/{solver} step {k} ({_what(req)}): {b}")
        finally:
            svc.close()
        return done, out
    finally:
        if own:
            import shutil
            shutil.rmtree(folder, ignore_errors=True)


def _error_type():
    from geo.protocol import Error
    return Error


def _what(req) -> str:
    if isinstance(req, Job):
        return f"submit {req.name}"
    return " ".join(str(v) for v in (req.kind, req.site, req.gpu_type, req.count,
                                     req.usd_per_hour, req.job) if v is not None)
