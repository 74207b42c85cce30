"""``decomposed``: the fast method for large instances (10,000 jobs x 50 sites), in the spirit
of MAST's scope decoupling (each job's options scored at every site at once, then regional
packing), without a solver.

  1. estimate, vectorised: for each job, GPU type and size (``gpu_sizes``) that meets the rule
     (geo/feasibility.py), its score at every site at once (numpy over sites): rows with score
     S[j,k], GPUs, pool (a site x GPU type) and the smallest size that works at that site.
  2. regional packing: jobs in an order (``_order``) take the site and type where their best
     size scores best and that still has room for their smallest size there (the potential:
     a fine-tune that could use 8 GPUs goes where its data is, not where 1 GPU scores as well
     anywhere), at that smallest size; jobs no single site can host take the full candidate
     search (multi-site modes, unequal sizes) on what is left; the GPUs still free go to the
     placed jobs where the next size gains the most objective per GPU (or to the job that
     finishes last, for makespan); an exchange pass moves a job to another pool when the GPUs
     it frees let the jobs left behind gain more. Every step keeps the rule, the fleet budget
     included. Step 2 runs in two orders, by priority per GPU ("density": more priority served
     when GPUs are short) and by priority then size; the plan that serves more jobs (by
     priority), then has the better objective, is kept.
  3. local improvement of that plan (``packing.relocate``, throughput, up to 2,000 jobs): the
     sizes inside each pool chosen together by dynamic programming (a multiple-choice
     knapsack over the pool's GPUs), waiting jobs inserted where a pool can still hold them,
     then jobs moved one by one to the pool where they, and the re-sized jobs of both pools,
     gain most, while a move gains. With a fleet budget it is priced in dollars
     (``_relocate_priced``: each job's value less mu times its $/h, mu the budget row's
     Lagrangian price by bisection) and inserts or moves a job only while every job at its
     smallest size still fits the budget, so that shrinking jobs can always repair the plan.
  4. packing at the LP's prices (throughput, a whole plan of 2 to ``PRICED_MAX_JOBS`` jobs):
     the orders of step 2 fill the served priority with the wrong jobs when a flexible job
     takes the scarce GPU type and a job that runs only there waits; undoing it takes chains
     of moves step 3 does not see. So the LP of the bound (geo/bound.py) is solved at W, the
     priority the plan of step 3 serves (``served=W``, column generation stopped after
     ``PRICED_LP_ROUNDS`` rounds), and its row duals (``Bound.duals``) price every row:
       V[r, k] = S[r, k] - N[r, k] (lambda[q] + mu c[r, k]) + sigma p_j
     S the row's score, N its GPUs, q its pool (type x sites + site), c its $/GPU-h, p_j the
     job's priority; lambda the pools' prices, mu the fleet budget's, sigma the serve-first
     row's (``_priced_values``). Jobs in order of their best V take their best row by V that
     fits, rows with V <= 0 never. The LP prices the pools of a GPU type alike, so a flexible
     job's V often ties across sites (rows within ``TIE_REL``, relative, of its best): tried in
     row order ("priced"), it fills the first pools, the only ones some jobs pinned by their
     data can use; so a second packing ("priced_fit", ``PRICED_ROUNDS``) tries the tied rows
     best fit first (``_fit_order``): a pool's room is its free GPUs less the claims of the
     jobs still to come in the order (``_claims``: each job's smallest size split evenly over
     the pools of its tied rows); the tightest pool that still has room after placing the job
     first, over-filled pools last; rows not tied keep V's order. Both packings run and the
     better is kept. In each, the jobs left are packed as in step 2 by density (and,
     with a fleet budget, by dollars at the LP's mu: S - mu H, H a row's $/h), then growth,
     the exchange pass and step 3 as before (``_priced_packings``). The priced plan is kept
     only if it beats the plan of step 3 (priority served, then objective).
An earlier version set per-pool GPU prices by sub-gradient steps on the Lagrangian dual before
packing; on every instance measured its dual never fell below its value at zero prices, so it
packed at zero prices (a no-op, removed). How far a plan is from the optimum is measured
against a proven bound instead (geo/bound.py).
"""
from __future__ import annotations

import logging

import numpy as np

from geo.baselines import _Fleet, _multi_site, _site_options, _site_vectors
from geo.bound import ROUNDS, TOL, throughput_bound
from geo.candidates import (
    PLACED,
    Candidate,
    JobOptions,
    Model,
    gpu_sizes,
    ideal_speed,
    score,
    single_site,
)
from geo.feasibility import within_budget
from geo.options import job_options
from geo.packing import RELOCATE_MAX_JOBS, grow, polish, relocate
from geo.spec import Job

log = logging.getLogger("geo.decomposed")

ORDERS = ("density", "priority")  # the job orders step 2 packs in (``_order``)


def _job_rows(fleet: _Fleet, job: Job, objective: str, ref: float, pools: np.ndarray,
              types: list[str], bonus: float):
    """One job's single-site candidates as arrays (scores, GPUs, pool ids, site ids, type ids,
    smallest GPUs), or None: every size that meets the rule, at every site where it does, with
    the smallest size that works at that site and type (throughput: a job is placed where its
    best size scores best, at its smallest size there, and grows later; cost and makespan: the
    smallest size per type only, as they never grow a job)."""
    place = []
    if "single-site" in job.modes:
        for ti, t in enumerate(types):
            if t not in job.gpu_types:
                continue
            smallest = np.zeros(len(fleet.idx), int)  # per site: its smallest size that works
            for n in gpu_sizes(job, int(fleet.max_cap[t])):
                it, hours, total, ok = _site_options(fleet, job, t, n)
                idx = np.flatnonzero(ok)
                if not len(idx):
                    continue  # too slow or dear at this size: try the next
                smallest[idx[smallest[idx] == 0]] = n
                if objective == "throughput":
                    sc = job.priority * (PLACED + 1 / it[idx] / ref)
                elif objective == "cost":
                    sc = job.priority * bonus - total[idx]
                else:
                    sc = job.priority * bonus - hours[idx]
                if objective == "throughput" or not place or place[-1][4][0] != ti:
                    place.append((sc, np.full(len(idx), n), pools[ti, idx], idx,
                                  np.full(len(idx), ti), smallest[idx]))
    if not place:
        return None
    return tuple(np.concatenate(x) for x in zip(*place))


def solve_decomposed(model: Model, objective: str, *, jobs: list[Job] | None = None,
                     free: dict[tuple[str, str], int] | None = None, spend: float = 0.0,
                     priced: bool = True
                     ) -> tuple[dict[str, JobOptions], dict[str, Candidate], dict[str, Candidate]]:
    """``free``: GPUs per pool left (default: all); ``spend``: $/h already running (a
    re-plan's kept jobs), both counted against the fleet's limits. ``priced``: run the
    packing at the LP's prices (step 4 of the module docstring; throughput, a whole plan of
    2 to ``PRICED_MAX_JOBS`` jobs)."""
    jobs_all = jobs is None
    jobs = list(model.spec.jobs if jobs is None else jobs)
    objective_asked = objective
    if objective == "balance":
        objective = "throughput"  # its prices balance demand and supply already
    fleet = _Fleet(model, free)
    fleet.spend = spend
    types = sorted(fleet.cap)
    S_ = len(model.sites)
    pools = np.arange(len(types) * S_).reshape(len(types), S_)  # pool id = type * sites + site
    options: dict[str, JobOptions] = {}
    data = []
    for job in jobs:
        ref = ideal_speed(model, job)
        options[job.name] = JobOptions(job, ref_speed=ref)
        # cost, makespan: placing a job pays more than anything saved on others
        b = _bonus(fleet, job, objective) if objective != "throughput" else 0.0
        data.append(_job_rows(fleet, job, objective, ref, pools, types, b))
    S, _, _ = _matrix(data)
    # regional packing in several job orders: keep the plan that serves more, then scores more
    best = None
    jobs_by_name = {j.name: j for j in jobs}
    variants = [(o, 0.0) for o in ORDERS]
    H = None
    if fleet.budget is not None:  # a price on dollars too (``_budget_price``; the median
        # value per $/h of a row), so that jobs spend the budget where it buys most
        H = np.zeros_like(S)
        for r, d in enumerate(data):
            if d is not None:
                H[r, :len(d[0])] = d[1] * _row_price(fleet, d, types)
        fin = np.isfinite(S) & (H > 0)
        mu_mid = float(np.median(S[fin] / H[fin])) if fin.any() else 0.0
        mu = _budget_price(S, H, fleet.budget - fleet.spend)
        variants += [(o, f) for o in ("dollars", "density") for f in (mu, mu / 2)] + \
            [("dollars", mu_mid)]
    for order, mu in variants:
        adj = S if mu == 0.0 else S - mu * H
        got = _pack(model, fleet, objective, jobs, data, types, [(adj, order, None)],
                    jobs_by_name, options)
        log.debug("geo: decomposed in order %s at %.3g per $/h: served %s, objective %.4f",
                  order, mu, *got[0])
        if best is None or got[0] > best[0]:
            best = got
    # local improvement of the plan kept: exact sizes per pool, jobs moved between pools
    val, placed, multi, trial = _improve(model, objective, jobs, data, best, jobs_by_name,
                                         options)
    if priced and objective_asked == "throughput" and jobs_all and free is None and \
            spend == 0.0 and 1 < len(jobs) <= PRICED_MAX_JOBS:
        # the packing at the bound's LP prices, at the priority this plan serves
        for got in _priced_packings(model, fleet, jobs, data, S, H, types, val[0],
                                    jobs_by_name, options):
            got = _improve(model, objective, jobs, data, got, jobs_by_name, options)
            log.debug("geo: decomposed at the LP's prices: served %s, objective %.4f "
                      "(kept: %s, %.4f)", *got[0], *val)
            if got[0] > val:
                val, placed, multi, trial = got
    fleet.free, fleet.spend = trial.free, trial.spend
    waits: dict[str, tuple[int, str, int]] = {}
    multi_waits: dict[str, Candidate] = {}
    for r, job in enumerate(jobs):
        if job.name in placed or job.name in multi:
            continue
        d = data[r]
        if d is not None:
            k = int(np.argmax(d[0]))
            waits[job.name] = (int(d[3][k]), types[int(d[4][k])], int(d[5][k]))
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
    log.info("geo: decomposed placed %d, waiting %d, unplaced %d", len(chosen), len(queued),
             len(options) - len(chosen) - len(queued))
    return options, chosen, queued


def _pack(model: Model, fleet: _Fleet, objective: str, jobs: list[Job], data: list, types,
          rounds: list, jobs_by_name: dict[str, Job], options: dict[str, JobOptions]):
    """Step 2 once: ``rounds`` of ``_round``, each (adj, order, rank) packing the jobs the
    rounds before it left on what they left; then the jobs only multi-site hosts, growth and
    the exchange pass. Returns ((priority served, objective), placed, multi, fleet)."""
    placed_k: dict = {}
    trial = fleet
    for adj, how, rank in rounds:
        rows = data if not placed_k else \
            [None if jobs[r].name in placed_k else d for r, d in enumerate(data)]
        got, fr, sp = _round(jobs, rows, adj, trial, types, how, rank)
        placed_k.update(got)
        trial = fleet.copy(fr, sp)
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
        tr, objective, pl, jobs_by_name, options), jobs_by_name, options, objective)
    grow(model, trial, objective, placed, jobs_by_name, options)
    # serving jobs comes first (by priority), then the objective
    val = (sum(jobs_by_name[n].priority for n in [*placed, *multi]),
           _value(trial, objective, placed, jobs_by_name, options))
    return val, placed, multi, trial


def _improve(model: Model, objective: str, jobs: list[Job], data: list, packed,
             jobs_by_name: dict[str, Job], options: dict[str, JobOptions]):
    """Step 3 on a packing from ``_pack``: the local improvement (``_relocate_priced``), with
    the jobs that wait as its insertions; then the waiting jobs that may run across sites
    where they fit, so that plans are compared finished. Returns ((priority served,
    objective of every job placed, multi-site ones included), placed, multi, fleet)."""
    _, placed, multi, trial = packed
    waiting = [job.name for r, job in enumerate(jobs) if data[r] is not None
               and job.name not in placed and job.name not in multi]
    trial, placed = _relocate_priced(trial, objective, placed, jobs_by_name, options, waiting)
    for r, job in enumerate(jobs):
        if job.name not in placed and job.name not in multi and \
                (len(job.modes) > 1 or data[r] is None):
            c = _multi_site(model, trial, job, objective, trial.spend)
            if c is not None:
                multi[job.name] = c
                trial.spend += c.cost_per_hour
    value = _value(trial, objective, placed, jobs_by_name, options)
    if objective == "throughput":
        value += sum(score(c, objective, options[n].ref_speed, jobs_by_name[n].priority)
                     for n, c in multi.items())
    return (sum(jobs_by_name[n].priority for n in [*placed, *multi]), value), placed, multi, trial


# the priced pass (step 4) up to this many jobs: it costs the bound's columns and LP and a
# second step 2 and 3 (1,000 x 50 bench instance: 4.6 s instead of 0.8 s, for +0.02%)
PRICED_MAX_JOBS = 500
# the bound's column generation stops after this many rounds, as the benchmark's bound does
# (a count, not a time: the plan must not depend on the machine's speed; 20 rounds left
# 881412 and 993107 short of the LP's prices)
PRICED_LP_ROUNDS = ROUNDS
# step 4's first rounds (``_round``): a job's rows tied at its best V tried in row order, then
# (a second packing) best fit first (the prototype on the 36 development seeds: both, 8 plans
# better than row order alone and none worse; best fit alone, about half of them worse)
PRICED_ROUNDS = ("priced", "priced_fit")


def _priced_values(fleet: _Fleet, jobs: list[Job], data: list, types, duals, shape):
    """Step 4's estimate: each row's value at the LP's prices, V[r, k] = S[r, k] - N[r, k]
    (lambda[q] + mu c[r, k]) + sigma p_j, -inf where it is not above 0 (or no row)."""
    lam, mu, sigma = duals
    V = np.full(shape, -np.inf)
    for r, d in enumerate(data):
        if d is None:
            continue
        v = d[0] - d[1] * (lam[d[2]] + mu * _row_price(fleet, d, types)) + \
            sigma * jobs[r].priority
        V[r, :len(v)] = np.where(v > TOL, v, -np.inf)
    return V


def _priced_packings(model: Model, fleet: _Fleet, jobs: list[Job], data: list, S: np.ndarray,
                     H: np.ndarray | None, types, W: float, jobs_by_name: dict[str, Job],
                     options: dict[str, JobOptions]):
    """Step 4's packings (module docstring), each as ``_pack`` returns it: the LP bound at
    served priority W (geo/bound.py) for its duals; jobs in order of their best row by
    ``_priced_values`` take it where it fits, rows not above 0 never, its rows tied at its best
    V tried in row order ("priced") and, in a second packing, best fit first ("priced_fit",
    ``_fit_order``), ``PRICED_ROUNDS``; the jobs left are packed by density (S) and, with a
    fleet budget, also by dollars at the LP's mu (S - mu H). Nothing when no LP was solved."""
    b = throughput_bound(model, served=W, rounds=PRICED_LP_ROUNDS)
    if b.duals is None:
        log.info("geo: decomposed: no LP prices (%.2fs): priced pass skipped", b.seconds)
        return
    V = _priced_values(fleet, jobs, data, types, b.duals, S.shape)
    best = V.max(axis=1)
    rank = [int(r) for r in np.argsort(-best, kind="stable") if np.isfinite(best[r])]
    mu = b.duals[1]
    log.info("geo: decomposed: LP prices at served %s (sigma %.3g, mu %.3g, %s): %d of %d "
             "jobs priced above 0, %.2fs", W, b.duals[2], mu,
             "optimal" if b.optimal else "stopped", len(rank), len(jobs), b.seconds)
    fills = [(S, "density")]
    if fleet.budget is not None:
        fills.append((S - mu * H, "dollars"))
    for priced in PRICED_ROUNDS:
        for adj, how in fills:
            yield _pack(model, fleet, "throughput", jobs, data, types,
                        [(V, priced, rank), (adj, how, None)], jobs_by_name, options)


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


def _order(jobs: list[Job], how: str, dollars=None) -> list[int]:
    """The order jobs are placed in. "density": priority per GPU of its smallest size first
    (the greedy of a knapsack: more priority served when GPUs are short); "priority":
    priority first, then jobs with fewer GPU types (fewer places to go), then the small."""
    if how == "density":
        return sorted(range(len(jobs)), key=lambda r: (-jobs[r].priority / jobs[r].min_gpus,
                                                        len(jobs[r].gpu_types), r))
    if how == "dollars":
        return sorted(range(len(jobs)), key=lambda r: (-jobs[r].priority / dollars[r], r))
    return sorted(range(len(jobs)), key=lambda r: (-jobs[r].priority, len(jobs[r].gpu_types),
                                                    jobs[r].min_gpus, r))


def _budget_price(S: np.ndarray, H: np.ndarray, budget: float) -> float:
    """The price mu of a $/h at which the jobs' best rows by S - mu H, each where it pays
    (> 0), spend the budget (bisection; 0 when they fit in it at mu = 0)."""
    rows = np.arange(S.shape[0])

    def spend(mu):
        adj = S - mu * H
        k = np.argmax(adj, axis=1)
        take = adj[rows, k] > 0
        return float(H[rows, k][take].sum())

    if spend(0.0) <= budget:
        return 0.0
    lo, hi = 0.0, 1.0
    while spend(hi) > budget and hi < 1e9:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend(mid) > budget else (lo, mid)
    return hi


def _row_price(fleet: _Fleet, d, types) -> np.ndarray:
    """$/GPU-hour of each row of a job's rows."""
    out = np.empty(len(d[0]))
    for ti, t in enumerate(types):
        sel = d[4] == ti
        out[sel] = fleet.price[t][d[3][sel]]
    return out


def _round(jobs, data, adj, fleet: _Fleet, types, how: str, rank: list[int] | None = None):
    """Jobs in order (``rank``, else ``_order``) take their best candidate by ``adj`` that
    fits (in the free GPUs and what the fleet budget leaves): the site and type where their
    best size scores best, at the smallest size that works there; rows at -inf are never
    taken. A job's rows tied at its best ``adj`` are tried in row order, or, with ``how`` =
    "priced_fit" (step 4), best fit first (``_fit_order``). Returns (placed, free, spend)."""
    free = {t: v.copy() for t, v in fleet.free.items()}
    spend, B = fleet.spend, fleet.budget
    placed = {}
    dollars = None
    if how == "dollars":  # $/h of each job's cheapest row
        dollars = [np.inf if d is None else float(np.min(d[5] * _row_price(fleet, d, types)))
                   for d in data]
    order = rank if rank is not None else _order(jobs, how, dollars)
    if how == "priced_fit":
        ties, claim = _claims(data, adj, order, len(types) * len(fleet.idx))
    for r in order:
        d = data[r]
        if d is None:
            continue
        m = len(d[0])
        rows = np.argsort(-adj[r, :m], kind="stable")
        if how == "priced_fit":   # (``rank`` holds only jobs with a row above -inf)
            rows = _fit_order(d, rows, ties[r], claim, free, types)
        for k in rows:
            if not np.isfinite(adj[r, k]):
                break  # the rest are -inf too (sorted)
            i, t, n = int(d[3][k]), types[int(d[4][k])], int(d[5][k])
            h = n * float(fleet.price[t][i])
            if free[t][i] >= n and within_budget(spend, h, B):
                free[t][i] -= n
                spend += h
                placed[jobs[r].name] = (i, t, n, int(k))
                break
    return placed, free, spend


TIE_REL = 1e-6  # step 4: a job's rows within this (relative) of its best V are tied


def _claims(data, adj, order: list[int], n_pools: int):
    """Step 4's claims: for each job in ``order`` with a row above -inf, its tied rows (V
    within ``TIE_REL`` x max(1, |best|) of its best) and its claim per pool of those
    rows, its smallest size there split evenly over those pools. Returns (ties: job ->
    (rows, {pool: claim}), claim: total claim per pool)."""
    ties, claim = {}, np.zeros(n_pools)
    for r in order:
        d = data[r]
        if d is None:
            continue
        v = adj[r, :len(d[0])]
        best = float(np.max(v))
        if not np.isfinite(best):
            continue
        ks = np.flatnonzero(v >= best - TIE_REL * max(1.0, abs(best)))
        qs = d[2][ks]
        uq = np.unique(qs)
        share = {int(q): float(np.min(d[5][ks][qs == q])) / len(uq) for q in uq}
        ties[r] = (ks, share)
        for q, c in share.items():
            claim[q] += c
    return ties, claim


def _fit_order(d, rows: np.ndarray, tie, claim: np.ndarray, free: dict, types) -> list[int]:
    """The rows a job of step 4's round tries, in order: its tied rows best fit first, a
    pool's room being its free GPUs less the claims (``_claims``) of the jobs still to come
    there (this job's own claim is released first, from ``claim`` in place): the tightest
    pool that still has room after placing the job, then the pools it over-fills, least
    over-filled first; then its other rows in order of V (``rows``)."""
    ks, share = tie
    for q, c in share.items():
        claim[q] -= c

    def key(k):
        room = free[types[int(d[4][k])]][int(d[3][k])] - claim[int(d[2][k])]
        left = room - d[5][k]
        return (left < 0, abs(left), k)

    tied = set(ks.tolist())
    return sorted(tied, key=key) + [int(k) for k in rows if int(k) not in tied]


RELOCATE_PRICES = 8  # local improvements tried at most with a fleet budget (``_relocate_priced``)


def _relocate_priced(fleet: _Fleet, objective: str, placed: dict, jobs: dict[str, Job],
                     options: dict[str, JobOptions], waiting: list[str]):
    """The local improvement (``relocate``) under the fleet budget, priced in dollars: each
    job's value in a pool less mu times its $/h there, mu the Lagrangian price of the budget
    row. At mu = 0 it trades GPUs only (what it does without a fleet budget); when that plan
    spends more than the budget leaves, mu is found by bisection on the budget row (the
    smallest mu at which the improved plan spends no more than is left). Every try is
    repaired to the budget and kept only if it beats the plan before it
    (``within_fleet_budget``); the best (priority served, then objective) is returned as
    (fleet, placed)."""
    def run(mu):
        tr = fleet.copy()
        pl = dict(placed)
        over = []  # $/h the improved plan spends beyond what is left, before the repair

        def step():
            old = sum(n * float(tr.price[t][i]) for i, t, n in pl.values())
            relocate(tr, objective, pl, jobs, options, waiting, mu=mu)
            new = sum(n * float(tr.price[t][i]) for i, t, n in pl.values())
            over.append(0.0 if tr.budget is None else tr.spend - old + new - tr.budget)
        within_fleet_budget(tr, pl, step, jobs, options, objective)
        val = (sum(jobs[n].priority for n in pl), _value(tr, objective, pl, jobs, options))
        return val, tr, pl, (over[0] if over else 0.0)

    best = run(0.0)
    if fleet.budget is None or objective != "throughput" or best[3] <= 0 or \
            not 1 < len(placed) + len(waiting) <= RELOCATE_MAX_JOBS:
        return best[1], best[2]
    # the price's scale: throughput per $/h of the placed jobs (a job's value over its $/h)
    rates = [_value(fleet, objective, {n: p}, jobs, options) / max(1e-9, p[2] * float(
        fleet.price[p[1]][p[0]])) for n, p in placed.items()] or [1.0]
    lo, hi = 0.0, float(np.median(rates))
    tries = 1
    while tries < RELOCATE_PRICES:
        got = run(hi)
        tries += 1
        if got[0] > best[0]:
            best = got
        if got[3] <= 0:
            break
        lo, hi = hi, 2 * hi
    while tries < RELOCATE_PRICES:
        mid = (lo + hi) / 2
        got = run(mid)
        tries += 1
        if got[0] > best[0]:
            best = got
        lo, hi = (mid, hi) if got[3] > 0 else (lo, mid)
    return best[1], best[2]


def within_fleet_budget(fleet: _Fleet, placed: dict, step, jobs: dict[str, Job],
                        options: dict[str, JobOptions], objective: str) -> None:
    """Run ``step`` (an exchange pass, the local improvement: they trade GPUs, not dollars);
    when the single-site jobs of ``placed`` then cost more than the fleet budget leaves, shrink
    jobs where a size step saves the most $/h per objective lost until it holds, and keep the
    result only if it beats the plan before the step; recounts ``fleet.spend``."""
    if fleet.budget is None:
        step()
        return
    before = dict(placed), {t: v.copy() for t, v in fleet.free.items()}
    v0 = _value(fleet, objective, placed, jobs, options)
    old = sum(n * float(fleet.price[t][i]) for i, t, n in placed.values())
    step()
    new = sum(n * float(fleet.price[t][i]) for i, t, n in placed.values())
    while not within_budget(fleet.spend - old, new, fleet.budget):
        best = None  # (objective lost per $/h saved, job, smaller size)
        for name, (i, t, n) in placed.items():
            job = jobs[name]
            smaller = [m for m in gpu_sizes(job, int(fleet.max_cap[t]))
                       if m < n and _site_options(fleet, job, t, m)[3][i]]
            if not smaller:
                continue
            m = smaller[-1]
            save = (n - m) * float(fleet.price[t][i])
            loss = _value(fleet, objective, {name: (i, t, n)}, jobs, options) - \
                _value(fleet, objective, {name: (i, t, m)}, jobs, options)
            if best is None or loss / save < best[0]:
                best = (loss / save, name, m)
        if best is None:
            break
        _, name, m = best
        i, t, n = placed[name]
        placed[name] = (i, t, m)
        fleet.free[t][i] += n - m
        new -= (n - m) * float(fleet.price[t][i])
    if within_budget(fleet.spend - old, new, fleet.budget) and \
            _value(fleet, objective, placed, jobs, options) >= v0:
        fleet.spend += new - old
        return
    placed.clear()
    placed.update(before[0])
    fleet.free = before[1]
