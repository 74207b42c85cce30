"""The two baselines, and the vectorised site scoring that ``decomposed`` shares with them.

greedy: jobs in input order, each to its cheapest single site with room (else it waits there).
single-region: everything in the region with the most GPUs, cheapest size first; the rest waits.
"""
from __future__ import annotations

import logging

import numpy as np

from geo.candidates import (
    Candidate,
    JobOptions,
    Model,
    ideal_speed,
    single_site,
    step_single_s,
)
from geo.feasibility import fleet_budget, meets, within_budget
from geo.options import job_options
from geo.spec import Job, checkpoint_bytes

log = logging.getLogger("geo.baselines")

class _Fleet:
    """Per-type vectors over sites: capacity, free GPUs, price; remote-read speeds per dataset."""

    def __init__(self, model: Model, free: dict[tuple[str, str], int] | None = None):
        self.model = model
        self.idx = {s: i for i, s in enumerate(model.sites)}
        types = sorted({t for (_, t) in model.pools})
        S = len(model.sites)
        self.cap = {t: np.zeros(S) for t in types}
        self.price = {t: np.zeros(S) for t in types}
        for (s, t), (n, p) in model.pools.items():
            self.cap[t][self.idx[s]] = n
            self.price[t][self.idx[s]] = p
        self.free = {t: v.copy() for t, v in self.cap.items()}
        if free is not None:
            for (s, t), n in free.items():
                self.free[t][self.idx[s]] = n
        self.max_cap = {t: float(v.max()) if len(v) else 0.0 for t, v in self.cap.items()}
        self.budget = fleet_budget(model)  # $/h for the jobs that run, or None
        self.spend = 0.0  # $/h of the jobs placed in this fleet (and those it started with)
        self._read: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # _site_vectors per (job, type, GPUs): the fleet's prices and links do not change
        # during one solve (copies of a fleet share it); read-only arrays
        self._sv: dict[tuple[str, str, int], tuple] = {}
        self._so: dict[tuple[str, str, int], tuple] = {}  # _site_options, likewise
        self._mig: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per running job
        self._sizes: dict[tuple[str, str], list[int]] = {}  # gpu_sizes per (job, type)

    def copy(self, free: dict | None = None, spend: float | None = None) -> _Fleet:
        """The same fleet (its caches shared: prices and links do not change in a solve) with
        its own free GPUs (``free``: per type, taken as is; else a copy of these) and spend."""
        c = _Fleet.__new__(_Fleet)
        c.__dict__.update(self.__dict__)
        c.free = free if free is not None else {t: v.copy() for t, v in self.free.items()}
        c.spend = self.spend if spend is None else spend
        return c

    def migration(self, job: Job, n: int) -> tuple[np.ndarray | float, np.ndarray | float]:
        """(seconds, egress $) per site for a running job to take n GPUs there, as
        ``candidates._migration`` prices one site: its checkpoint from the site it runs at
        most GPUs on, plus the restart; nothing where it would run exactly as now."""
        if not job.running:
            return 0.0, 0.0
        now = {s: sum(t.values()) for s, t in job.running.items() if sum(t.values()) > 0}
        if not now:
            return 0.0, 0.0
        src = max(now, key=now.get)
        got = self._mig.get(job.name)
        if got is None:
            m = self.model
            ck = checkpoint_bytes(job)
            wire = np.zeros(len(self.idx))
            usd = np.zeros(len(self.idx))
            for s, i in self.idx.items():
                if s != src:
                    ln = m.wan.get(src, s)
                    wire[i] = ln.alpha_s + ck / ln.beta_Bps
                    usd[i] = ck / 1e9 * ln.egress_usd_per_gb
            got = self._mig[job.name] = (wire + m.spec.defaults.restart_s, usd)
        secs, usd = got
        if len(now) == 1 and now[src] == n:  # as it runs now at src: no move
            secs = secs.copy()
            secs[self.idx[src]] = 0.0
        return secs, usd

    def read(self, dataset: str) -> tuple[np.ndarray, np.ndarray]:
        """(best bytes/s, $/GB) to each site from the dataset's nearest replica; inf/0 at one."""
        if dataset not in self._read:
            ds = self.model.datasets[dataset]
            beta = np.full(len(self.idx), np.inf)
            usd = np.zeros(len(self.idx))
            for s, i in self.idx.items():
                if s in ds.replicas:
                    continue
                best = max(ds.replicas, key=lambda r: self.model.wan.get(r, s).beta_Bps)
                ln = self.model.wan.get(best, s)
                beta[i], usd[i] = ln.beta_Bps, ln.egress_usd_per_gb
            self._read[dataset] = (beta, usd)
        return self._read[dataset]


def _site_vectors(fleet: _Fleet, job: Job, t: str, n: int):
    """(iteration s, hours, total $) per site for n GPUs of type t (single-site mode)."""
    key = (job.name, t, n)
    got = fleet._sv.get(key)
    if got is not None:
        return got
    m = fleet.model
    left = job.iterations - job.done_iterations
    step = step_single_s(m, job, t, n)
    if job.dataset is not None and m.datasets[job.dataset].size_gb > 0:
        beta, usd = fleet.read(job.dataset)
        gb = m.datasets[job.dataset].size_gb * (1 - job.done_iterations / job.iterations)
        it = np.maximum(step, gb * 1e9 / max(1, left) / beta)
        read_usd = np.where(np.isinf(beta), 0.0, gb * usd)
    else:
        it = np.full(len(fleet.idx), step)
        read_usd = 0.0
    mig_s, mig_usd = fleet.migration(job, n)
    hours = (left * it + mig_s) / 3600
    got = (it, hours, n * fleet.price[t] * hours + read_usd + mig_usd)
    for v in got:
        v.setflags(write=False)
    fleet._sv[key] = got
    return got


def _site_options(fleet: _Fleet, job: Job, t: str, n: int):
    """``_site_vectors`` plus ``ok`` per site: the pool has n GPUs of type t, and the rule
    (geo/feasibility.py: deadline, budget, $/h within the fleet budget) holds there (free GPUs
    and the fleet's spend are the caller's business)."""
    key = (job.name, t, n)
    got = fleet._so.get(key)
    if got is not None:
        return got
    it, hours, total = _site_vectors(fleet, job, t, n)
    ok = (fleet.cap[t] >= n) & meets(job, hours, total, n * fleet.price[t], fleet.budget)
    ok.setflags(write=False)
    got = fleet._so[key] = (it, hours, total, ok)
    return got


def solve_fast(model: Model, objective: str, method: str, *, jobs: list[Job] | None = None,
               free: dict[tuple[str, str], int] | None = None, spend: float = 0.0
               ) -> tuple[dict[str, JobOptions], dict[str, Candidate], dict[str, Candidate]]:
    """Returns (options, chosen, queued) as ``build_plan`` takes them. ``spend``: $/h the
    fleet runs already (a re-plan's kept jobs), counted against the fleet budget."""
    jobs = list(model.spec.jobs if jobs is None else jobs)
    fleet = _Fleet(model, free)
    allowed = np.ones(len(model.sites), bool)
    region = None
    if method == "single-region":
        totals = [sum(model.capacity(s, t) for t in model.types_at[s]) for s in model.sites]
        region = model.sites[int(np.argmax(totals))]
        allowed[:] = False
        allowed[fleet.idx[region]] = True
    options: dict[str, JobOptions] = {}
    placed: dict[str, tuple[int, str, int]] = {}  # job -> (site index, type, n)
    waits: dict[str, tuple[int, str, int]] = {}
    multi_waits: dict[str, Candidate] = {}
    for job in jobs:
        best = None  # (key, site, type, n, fits)
        for t in job.gpu_types:
            if t not in fleet.cap or fleet.max_cap[t] < job.min_gpus or "single-site" not in job.modes:
                continue
            n = job.min_gpus
            it, hours, total, ok = _site_options(fleet, job, t, n)
            ok = ok & allowed
            if not ok.any():
                continue
            key = np.asarray(total, float)  # both baselines take the cheapest place
            fits = ok & (fleet.free[t] >= n)
            if fleet.budget is not None:  # the fleet's $/h: what does not fit in it waits
                fits &= within_budget(spend, n * fleet.price[t], fleet.budget)
            for mask, f in ((fits, True), (ok, False)):
                if mask.any():
                    i = int(np.argmin(np.where(mask, key, np.inf)))
                    cand = (not f, float(key[i]), i, t, n)
                    if best is None or cand < best:
                        best = cand
                    break
        options[job.name] = JobOptions(job, ref_speed=ideal_speed(model, job))
        if best is not None:
            waiting, _, i, t, n = best
            (waits if waiting else placed)[job.name] = (i, t, n)
            if not waiting:
                fleet.free[t][i] -= n
                spend += n * float(fleet.price[t][i])
            continue
        o = job_options(model, job, objective)  # the exact reason (rare path)
        if o.candidates and method == "single-region":
            options[job.name].reason = (f"capacity: single-region baseline: {region} cannot "
                                        f"host job {job.name!r}")
        elif o.candidates:  # only across sites, or its GPUs are taken: it waits
            single = [c for c in o.candidates if len(c.alloc) == 1] or o.candidates
            multi_waits[job.name] = max(single, key=lambda c: c.score)
        else:
            options[job.name].reason = o.reason
    chosen = {}
    for name, (i, t, n) in placed.items():
        chosen[name] = single_site(model, options[name].job, model.sites[i], t, n)
    queued = {name: single_site(model, options[name].job, model.sites[i], t, n)
              for name, (i, t, n) in waits.items()}
    queued.update(multi_waits)
    for name, c in {**chosen, **queued}.items():
        options[name].candidates = [c]
    log.info("geo: %s placed %d, waiting %d, unplaced %d", method, len(chosen), len(queued),
             len(options) - len(chosen) - len(queued))
    return options, chosen, queued


def _multi_site(model: Model, fleet: _Fleet, job: Job, objective: str,
                spend: float | None = None) -> Candidate | None:
    """The best multi-site candidate of ``job`` in the fleet's free GPUs (and, with ``spend``,
    within what the fleet budget leaves); its GPUs are taken from the fleet."""
    free = {(s, t): int(fleet.free[t][i]) for t in fleet.free for s, i in fleet.idx.items()}
    o = job_options(model, job, objective, capacity=free, max_candidates=1000)
    fits = [c for c in o.candidates if len(c.alloc) > 1 and
            (spend is None or within_budget(spend, c.cost_per_hour, fleet.budget))]
    if not fits:
        return None
    c = max(fits, key=lambda c: c.score)
    for s, n in c.alloc:
        fleet.free[c.gpu_type][fleet.idx[s]] -= n
    return c
