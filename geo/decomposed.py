"""``decomposed``: the MAST-style fast method for large instances (10,000 jobs x 50 sites).

Three steps (MAST's scope decoupling with demand/supply balancing by prices):
  1. estimate, vectorised: for each job and GPU type, its smallest size that meets the deadline
     and budget is scored at every site at once (numpy over sites): Cand[j, k] with score
     S[j,k], GPUs N[j,k] and pool P[j,k] (a site x GPU type).
  2. global balancing: each pool gets a price lambda[pool] per GPU, set on bids for every size
     (``_prices``): pools whose demand is above supply get dearer, fast (overload is penalised
     more than underload: MAST's asymmetric penalties), pools with spare GPUs cheaper, slowly.
  3. regional packing: jobs in priority order (then those with fewer GPU types, then the
     biggest) take their best candidate at those prices, S - lambda[P] * N, that still fits;
     jobs no single site can host take the full candidate search (multi-site modes) on what is
     left; the GPUs still free go to the placed jobs where the next size gains the most
     objective per GPU (or to the job that finishes last, for makespan); an exchange pass moves
     a job to another pool when the GPUs it frees let the jobs left behind gain more.
  Step 3 runs at the prices found, at half of them and at zero; the plan that serves more jobs
  (by priority), then has the better objective, is kept.
  4. local improvement of that plan (``packing.relocate``, throughput, up to 2,000 jobs): the
     sizes inside each pool chosen together by dynamic programming (a multiple-choice
     knapsack over the pool's GPUs), waiting jobs inserted where a pool can still hold them,
     then jobs moved one by one to the pool where they, and the re-sized jobs of both pools,
     gain most, while a move gains.
"""
from __future__ import annotations

import logging

import numpy as np

from geo.baselines import _Fleet, _multi_site, _site_options, _site_vectors
from geo.candidates import (
    PLACED,
    Candidate,
    JobOptions,
    Model,
    gpu_sizes,
    ideal_speed,
    single_site,
)
from geo.feasibility import within_budget
from geo.options import job_options
from geo.packing import grow, polish, relocate
from geo.spec import Job

log = logging.getLogger("geo.decomposed")

ROUNDS = 40
PRICE_SITES = 8  # sites per (type, size) a job bids for when prices are set
UP, DOWN = 1.0, 0.5  # asymmetric price steps: overload raises prices faster than underload cuts
STEP = 0.2  # first step, as a share of the median score per GPU


def _job_rows(fleet: _Fleet, job: Job, objective: str, ref: float, pools: np.ndarray,
              types: list[str], bonus: float):
    """Two views of one job's single-site candidates, each (scores, GPUs, pool ids, site ids,
    type ids) or None: for placement, per GPU type its smallest size that meets the deadline
    and budget, at every site that can; for pricing, every size at its best PRICE_SITES sites.
    One pass over the sizes builds both."""
    place, bid = [], []
    if "single-site" in job.modes:
        for ti, t in enumerate(types):
            if t not in job.gpu_types:
                continue
            first = True
            for n in gpu_sizes(job, int(fleet.max_cap[t])):
                it, hours, total, ok = _site_options(fleet, job, t, n)
                idx = np.flatnonzero(ok)
                if not len(idx):
                    continue  # too slow or dear at this size: try the next
                if objective == "throughput":
                    sc = job.priority * (PLACED + 1 / it[idx] / ref)
                elif objective == "cost":
                    sc = job.priority * bonus - total[idx]
                else:
                    sc = job.priority * bonus - hours[idx]
                row = (sc, np.full(len(idx), n), pools[ti, idx], idx, np.full(len(idx), ti))
                if first:  # the smallest size that works: step 3 grows jobs into what is left
                    place.append(row)
                    first = False
                if len(idx) > PRICE_SITES:
                    top = np.argpartition(-sc, PRICE_SITES)[:PRICE_SITES]
                    row = tuple(x[top] for x in row)
                bid.append(row)
    if not place:
        return None, None
    return tuple(np.concatenate(x) for x in zip(*place)), \
        tuple(np.concatenate(x) for x in zip(*bid))


def solve_decomposed(model: Model, objective: str, *, jobs: list[Job] | None = None,
                     free: dict[tuple[str, str], int] | None = None, spend: float = 0.0
                     ) -> tuple[dict[str, JobOptions], dict[str, Candidate], dict[str, Candidate]]:
    """``free``: GPUs per pool left (default: all); ``spend``: $/h already running (a
    re-plan's kept jobs), both counted against the fleet's limits."""
    jobs = list(model.spec.jobs if jobs is None else jobs)
    if objective == "balance":
        objective = "throughput"  # its prices balance demand and supply already
    fleet = _Fleet(model, free)
    fleet.spend = spend
    types = sorted(fleet.cap)
    S_ = len(model.sites)
    pools = np.arange(len(types) * S_).reshape(len(types), S_)  # pool id = type * sites + site
    cap = np.concatenate([fleet.free[t] for t in types]).astype(float)
    options: dict[str, JobOptions] = {}
    data, bids = [], []
    for job in jobs:
        ref = ideal_speed(model, job)
        options[job.name] = JobOptions(job, ref_speed=ref)
        # cost, makespan: placing a job pays more than anything saved on others
        b = _bonus(fleet, job, objective) if objective != "throughput" else 0.0
        d, bd = _job_rows(fleet, job, objective, ref, pools, types, b)
        data.append(d)
        bids.append(bd)
    S, N, P = _matrix(data)
    lam, dual = _prices(*_matrix(bids), cap)
    # regional packing at the balancing prices and at zero prices: keep the better plan
    best = None
    jobs_by_name = {j.name: j for j in jobs}
    for prices in (lam, 0.5 * lam, np.zeros_like(lam)):
        placed_k, fr, sp = _round(jobs, data, S - prices[P] * N, fleet, types)
        trial = _Fleet.__new__(_Fleet)
        trial.__dict__.update(fleet.__dict__)
        trial.free, trial.spend = fr, sp
        placed = {name: v[:3] for name, v in placed_k.items()}
        multi = {}
        for r, job in enumerate(jobs):  # jobs that only fit across sites, before growth
            if data[r] is None and job.name not in placed:
                c = _multi_site(model, trial, job, objective, trial.spend)
                if c is not None:
                    multi[job.name] = c
                    trial.spend += c.cost_per_hour
        grow(model, trial, objective, placed, jobs_by_name, options)
        within_fleet_budget(trial, placed, lambda tr=trial, pl=placed: polish(
            tr, objective, pl, jobs_by_name, options))
        grow(model, trial, objective, placed, jobs_by_name, options)
        # serving jobs comes first (by priority), then the objective
        val = (sum(jobs_by_name[n].priority for n in [*placed, *multi]),
               _value(trial, objective, placed, jobs_by_name, options))
        if best is None or val > best[0]:
            best = (val, placed, fr, multi, trial)
    _, placed, fleet.free, multi, trial = best
    # local improvement of the plan kept: exact sizes per pool, jobs moved between pools
    waiting = [job.name for r, job in enumerate(jobs) if data[r] is not None
               and job.name not in placed and job.name not in multi]
    within_fleet_budget(trial, placed, lambda: relocate(trial, objective, placed, jobs_by_name,
                                                        options, waiting))
    fleet.free, fleet.spend = trial.free, trial.spend
    waits: dict[str, tuple[int, str, int]] = {}
    multi_waits: dict[str, Candidate] = {}
    for r, job in enumerate(jobs):
        if job.name in placed or job.name in multi:
            continue
        d = data[r]
        if len(job.modes) > 1 or d is None:
            c = _multi_site(model, fleet, job, objective, fleet.spend)
            if c is not None:
                multi[job.name] = c
                fleet.spend += c.cost_per_hour
                continue
        if d is not None:
            k = int(np.argmax(d[0]))
            waits[job.name] = (int(d[3][k]), types[int(d[4][k])], int(d[1][k]))
            continue
        o = job_options(model, job, objective)  # the exact reason (rare path)
        if o.candidates:  # hosts only across sites, and those GPUs are taken: wait
            multi_waits[job.name] = max(o.candidates, key=lambda c: c.score)
        options[job.name].reason = o.reason
    chosen = dict(multi)
    for name, (i, t, n) in placed.items():
        chosen[name] = single_site(model, options[name].job, model.sites[i], t, n)
    queued = {name: single_site(model, options[name].job, model.sites[i], t, n)
              for name, (i, t, n) in waits.items()}
    queued.update(multi_waits)
    for name, c in {**chosen, **queued}.items():
        options[name].candidates = [c]
    log.info("geo: decomposed placed %d, waiting %d, unplaced %d, dual bound %.3f",
             len(chosen), len(queued), len(options) - len(chosen) - len(queued), dual)
    return options, chosen, queued


def _matrix(rows):
    """Ragged per-job rows -> (S, N, P) matrices padded with -inf scores."""
    J = len(rows)
    K = max((len(d[0]) for d in rows if d is not None), default=0) or 1
    S = np.full((J, K), -np.inf)
    N = np.zeros((J, K))
    P = np.zeros((J, K), int)
    for r, d in enumerate(rows):
        if d is not None:
            k = len(d[0])
            S[r, :k], N[r, :k], P[r, :k] = d[0], d[1], d[2]
    return S, N, P


def _prices(S, N, P, cap) -> tuple[np.ndarray, float]:
    """Per-pool GPU prices lambda by sub-gradient descent on the Lagrangian dual of the
    capacity constraints, L(lambda) = sum_j max(0, max_k S - lambda[P] N) + lambda . cap:
    each round every job bids for its best (site, type, size) at the current prices, and
    prices move with (demand - supply) / supply, up faster than down (MAST's asymmetric
    over/under penalties). Returns the prices of the lowest dual value seen, and that value
    (an upper bound on the relaxed objective)."""
    J = S.shape[0]
    lam = np.zeros(len(cap))
    if J == 0:
        return lam, 0.0
    finite = np.isfinite(S)
    base = float(np.median((S / np.maximum(N, 1))[finite])) if finite.any() else 1.0
    rows = np.arange(J)
    best_lam, best_dual = lam.copy(), np.inf
    for k in range(ROUNDS):
        adj = S - lam[P] * N
        pick = np.argmax(adj, axis=1)
        gain = adj[rows, pick]
        take = gain > 0
        dual = float(gain[take].sum() + lam @ cap)
        if dual < best_dual:
            best_lam, best_dual = lam.copy(), dual
        demand = np.bincount(P[rows, pick][take], weights=N[rows, pick][take],
                             minlength=len(cap))
        excess = (demand - cap) / np.maximum(cap, 1)
        step = STEP * base / np.sqrt(k + 1)
        lam = np.maximum(0.0, lam + step * np.where(excess > 0, UP * excess, DOWN * excess))
    return best_lam, best_dual


def _value(fleet: _Fleet, objective: str, placed: dict, jobs: dict[str, Job],
           options: dict[str, JobOptions]) -> float:
    """The objective of the jobs placed (higher is better) as build_plan will count it."""
    total, worst = 0.0, 0.0
    for name, (i, t, n) in placed.items():
        job = jobs[name]
        it, h, usd = (float(v[i]) for v in _site_vectors(fleet, job, t, n))
        if objective == "throughput":
            total += job.priority * (PLACED + 1 / it / options[name].ref_speed)
        elif objective == "cost":
            total += job.priority * _bonus(fleet, job, objective) - usd
        else:
            worst = max(worst, h)
    return total if objective != "makespan" else len(placed) * 1e9 - worst


def _bonus(fleet: _Fleet, job: Job, objective: str) -> float:
    """Larger than any candidate's $ or hours: placing the job pays more than anything saved."""
    worst = 0.0
    for t in job.gpu_types:
        if t in fleet.cap:
            it, hours, total = _site_vectors(fleet, job, t, job.max_gpus)
            it2, hours2, total2 = _site_vectors(fleet, job, t, job.min_gpus)
            v = (total, total2) if objective == "cost" else (hours, hours2)
            worst = max(worst, float(np.max(v[0])), float(np.max(v[1])))
    return 2 * worst + 1.0


def _round(jobs, data, adj, fleet: _Fleet, types):
    """Jobs in priority order take their best candidate by ``adj`` that fits (in the free
    GPUs and what the fleet budget leaves). Returns (placed, free, spend)."""
    free = {t: v.copy() for t, v in fleet.free.items()}
    spend, B = fleet.spend, fleet.budget
    placed = {}
    # priority first; then jobs with fewer GPU types (they have fewer places to go), then big
    order = sorted(range(len(jobs)), key=lambda r: (-jobs[r].priority, len(jobs[r].gpu_types),
                                                    -jobs[r].min_gpus))
    for r in order:
        d = data[r]
        if d is None:
            continue
        m = len(d[0])
        for k in np.argsort(-adj[r, :m]):
            i, t, n = int(d[3][k]), types[int(d[4][k])], int(d[1][k])
            h = n * float(fleet.price[t][i])
            if free[t][i] >= n and within_budget(spend, h, B):
                free[t][i] -= n
                spend += h
                placed[jobs[r].name] = (i, t, n, int(k))
                break
    return placed, free, spend


def within_fleet_budget(fleet: _Fleet, placed: dict, step) -> None:
    """Run ``step`` (an exchange pass, the local improvement: they trade GPUs, not dollars)
    and undo it when the single-site jobs of ``placed`` then cost more than the fleet budget
    leaves; recounts ``fleet.spend``."""
    if fleet.budget is None:
        step()
        return
    before = dict(placed), {t: v.copy() for t, v in fleet.free.items()}
    old = sum(n * float(fleet.price[t][i]) for i, t, n in placed.values())
    step()
    new = sum(n * float(fleet.price[t][i]) for i, t, n in placed.values())
    if within_budget(fleet.spend - old, new, fleet.budget):
        fleet.spend += new - old
        return
    placed.clear()
    placed.update(before[0])
    fleet.free = before[1]
