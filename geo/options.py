"""Estimate: the candidates of one job (``job_options``), kept by the feasibility rule
(geo/feasibility.py), scored by the objective and pruned so that the solver's model stays small.

Candidates, built from the pools a job may use (``cap``, default the spec's):
  single-site  every site s with GPU type g in gpu_types, n GPUs for n in ``gpu_sizes``
               (min_gpus, max_gpus, powers of two between; at most 4);
  multi-site   for every multi-site mode, type g and k = 2..max_sites_per_job: site groups
               (all k-subsets of the sites with g while there are at most ALL_GROUPS of them;
               else each site with its best-connected neighbours, and every k-subset of the
               k + 1 largest pools), with per-site sizes from ``group_sizes`` (totals min, max
               and powers of two between, as even as the pools allow; and the cheapest fill of
               the smallest total). Sizes may differ between sites: one small site does not cap
               the group.
A job none of whose candidates meets the rule gets the exact search (``exact_candidates``,
against the spec's pools only) before it is declared infeasible: every single-site size, and for
every k-subset of sites (every site order that changes the time: rings up to rotation,
pipelines up to reversal, for k <= 4) and every total n, the cheapest fill of n with no site
above M for every M from the smallest possible largest site up. That fill dominates every
other split of n with largest site <= M: its GPU $/h is the least, its step no slower (compute
depends on n only, the intra-site all-reduce grows with the largest site), the WAN terms the
same. So for a job without remote data it is exact for capacity, deadline and budget: the job is
infeasible only when no combination of allowed sites can host it (tests/test_geo_options.py
checks it against a brute force over every split). The search stops after EXACT_EVALS
evaluations and then says so in the reason.
"""
from __future__ import annotations

import itertools
import logging
import math

from geo.candidates import (
    Candidate,
    JobOptions,
    Model,
    fill,
    gpu_sizes,
    group_sizes,
    ideal_speed,
    level,
    multi_site,
    score,
    single_site,
)
from geo.feasibility import fleet_budget, meets
from geo.spec import Job

log = logging.getLogger("geo.options")

MULTI_MODES = ("data-parallel", "local-sgd", "pipeline")
ALL_GROUPS = 40  # k-subsets of sites tried in full up to this many (per type and k)
EXACT_EVALS = 20_000  # cost-model evaluations the exact search may spend (~0.15 s)


def _nearest_order(model: Model, group: list[str]) -> list[str]:
    """The group as a chain: from its first site, each time the best-connected site left."""
    out, left = [group[0]], set(group[1:])
    while left:
        nxt = max(sorted(left), key=lambda b: model.wan.get(out[-1], b).beta_Bps)
        out.append(nxt)
        left.discard(nxt)
    return out


def site_groups(model: Model, t: str, k: int, cap: dict[tuple[str, str], int]) -> list[list[str]]:
    """Site groups of size k for GPU type t (see the module docstring), each in ring/pipeline
    order."""
    have = [s for s in model.sites if cap.get((s, t), 0) > 0]
    if len(have) < k:
        return []
    if math.comb(len(have), k) <= ALL_GROUPS:
        return [_nearest_order(model, list(g)) for g in itertools.combinations(have, k)]
    out, seen = [], set()

    def add(g):
        key = frozenset(g)
        if key not in seen:
            seen.add(key)
            out.append(g)

    for anchor in have:
        add([anchor] + [b for b in model.near[anchor] if cap.get((b, t), 0) > 0][:k - 1])
    big = sorted(have, key=lambda s: (-cap[(s, t)], s))[:k + 1]
    for g in itertools.combinations(big, k):
        add(_nearest_order(model, list(g)))
    return out


def generate(model: Model, job: Job, cap: dict[tuple[str, str], int],
             multi_site_modes: bool = True) -> list[Candidate]:
    """The candidates of the main path (module docstring), before the rule."""
    cands: list[Candidate] = []
    if "single-site" in job.modes:
        for s in model.sites:
            for t in job.gpu_types:
                for n in gpu_sizes(job, cap.get((s, t), 0)):
                    cands.append(single_site(model, job, s, t, n))
    if not multi_site_modes:
        return cands
    kmax = min(model.spec.planner.max_sites_per_job, len(model.sites))
    modes = [m for m in MULTI_MODES if m in job.modes]
    if not modes:
        return cands
    for t in job.gpu_types:
        for k in range(2, kmax + 1):
            for group in site_groups(model, t, k, cap):
                caps = [cap[(s, t)] for s in group]
                prices = [model.price(s, t) for s in group]
                for sizes in group_sizes(job, caps, prices):
                    for mode in modes:
                        cands.append(multi_site(model, job, mode, group, t, sizes))
    return cands


def _orders(group: tuple[str, ...], mode: str) -> list[list[str]]:
    """Site orders that can change a candidate's time: rings up to rotation (both directions),
    pipelines up to reversal; for k > 4 the group's own order only."""
    k = len(group)
    if k == 2 or k > 4:
        return [list(group)]
    if mode == "pipeline":
        return [list(p) for p in itertools.permutations(group) if p[0] < p[-1]]
    return [[group[0], *p] for p in itertools.permutations(group[1:])]


def exact_candidates(model: Model, job: Job, cap: dict[tuple[str, str], int],
                     multi_site_modes: bool = True, limit: int = EXACT_EVALS):
    """Every candidate the exact search tries (module docstring), as a generator; its
    ``return`` value (StopIteration.value) is True when it ended before ``limit``."""
    evals = 0
    if "single-site" in job.modes:
        for s in model.sites:
            for t in job.gpu_types:
                for n in range(job.min_gpus, min(job.max_gpus, cap.get((s, t), 0)) + 1):
                    evals += 1
                    yield single_site(model, job, s, t, n)
    kmax = min(model.spec.planner.max_sites_per_job, len(model.sites))
    modes = [m for m in MULTI_MODES if m in job.modes] if multi_site_modes else []
    for t in job.gpu_types:
        have = [s for s in model.sites if cap.get((s, t), 0) > 0]
        for k in range(2, min(kmax, len(have)) + 1):
            for group in itertools.combinations(have, k):
                caps = [cap[(s, t)] for s in group]
                lo, hi = max(job.min_gpus, k), min(job.max_gpus, sum(caps))
                for mode in modes:
                    for order in _orders(group, mode):
                        oc = [cap[(s, t)] for s in order]
                        op = [model.price(s, t) for s in order]
                        for n in range(lo, hi + 1):
                            free_fill = fill(n, oc, op)
                            for M in range(level(n, oc), max(oc) + 1):
                                a = fill(n, oc, op, M)
                                if a is None:
                                    continue
                                if evals >= limit:
                                    return False
                                evals += 1
                                yield multi_site(model, job, mode, order, t, a)
                                if a == free_fill:
                                    break  # a larger M fills the same way
    return True


def _reason(job: Job, cands: list[Candidate], cap, model: Model, budget, complete: bool
            ) -> str:
    """Which row of the rule removed the last candidate (capacity, deadline, budget, fleet)."""
    where = "" if complete else (f" (the exact search stopped after {EXACT_EVALS:,} "
                                 f"combinations: a larger one may host it)")
    if not cands:
        pools = [f"{s}/{t}={cap.get((s, t), 0)}" for s in model.sites for t in job.gpu_types
                 if cap.get((s, t), 0) > 0]
        multi = [m for m in MULTI_MODES if m in job.modes]
        span = (f"no combination of up to {model.spec.planner.max_sites_per_job} sites"
                if multi else "no site")
        return (f"capacity: {span} can host job {job.name!r}: it needs {job.min_gpus} "
                f"GPUs of {'/'.join(job.gpu_types)} in modes {', '.join(job.modes)}; "
                f"available: {', '.join(pools[:6]) or 'none of those types'}{where}")
    ok = [c for c in cands if meets(job, c.finish_h, float("-inf"))]
    if not ok:
        best = min(cands, key=lambda c: c.finish_h)
        return (f"deadline: job {job.name!r} has deadline_h {job.deadline_h:g} but its "
                f"fastest plan ({best.mode} on {best.gpus} {best.gpu_type}) finishes "
                f"in {best.finish_h:.3g} h{where}")
    ok2 = [c for c in ok if meets(job, float("-inf"), c.total_usd)]
    if not ok2:
        best = min(ok, key=lambda c: c.total_usd)
        return (f"budget: job {job.name!r} has budget_usd {job.budget_usd:g} but its "
                f"cheapest plan{' that meets its deadline' if job.deadline_h else ''} costs "
                f"${best.total_usd:,.0f}{where}")
    best = min(ok2, key=lambda c: c.cost_per_hour)
    return (f"fleet-budget: job {job.name!r} costs at least ${best.cost_per_hour:,.2f}/h, "
            f"above the fleet's budget_usd_per_hour {budget:g}{where}")


def job_options(model: Model, job: Job, objective: str = "throughput", *,
                max_candidates: int | None = None, multi_site_modes: bool = True,
                capacity: dict[tuple[str, str], int] | None = None,
                exact: bool | None = None, prune_to: bool = True) -> JobOptions:
    """All candidates of one job that meet the rule, scored and pruned to ``max_candidates``
    (``prune_to=False``: all of them, e.g. for the bound).

    ``capacity`` (default: the spec's pools) bounds the GPUs a candidate may ask of a pool.
    ``exact`` (default: when ``capacity`` is the spec's): the exact search before a job is
    declared infeasible.
    """
    spec = model.spec
    K = max_candidates or spec.planner.max_candidates
    cap = capacity if capacity is not None else {k: v[0] for k, v in model.pools.items()}
    exact = capacity is None if exact is None else exact
    B = fleet_budget(model)
    cands = generate(model, job, cap, multi_site_modes)
    ok = [c for c in cands if meets(job, c.finish_h, c.total_usd, c.cost_per_hour, B)]
    complete = True
    if not ok and exact:
        gen = exact_candidates(model, job, cap, multi_site_modes)
        seen = []
        while True:
            try:
                c = next(gen)
            except StopIteration as e:
                complete = bool(e.value)
                break
            seen.append(c)
            if meets(job, c.finish_h, c.total_usd, c.cost_per_hour, B):
                ok.append(c)
                if len(ok) >= 4 * K:
                    break
        cands = cands + seen
        if ok:
            log.debug("geo: %s: the exact search found %d candidates the main path missed",
                      job.name, len(ok))
    opts = JobOptions(job)
    if not ok:
        opts.reason = _reason(job, cands, cap, model, B, complete)
        return opts
    opts.ref_speed = ideal_speed(model, job)
    for c in ok:
        c.score = score(c, objective, opts.ref_speed, job.priority)
        if not c.moved and job.running:
            c.score += abs(c.score) * 1e-3 + 1e-9  # ties keep a running job where it is
    opts.candidates = prune(ok, K) if prune_to else ok
    return opts


def prune(cands: list[Candidate], K: int) -> list[Candidate]:
    """Keep the K best by score, but first the best and the smallest per site set, so that the
    solver can still spread jobs over sites when the best sites fill up."""
    by_set: dict[tuple, list[Candidate]] = {}
    for c in cands:
        by_set.setdefault((c.mode, tuple(s for s, _ in c.alloc)), []).append(c)
    keep: list[Candidate] = []
    seen = set()
    firsts = sorted((max(g, key=lambda c: c.score) for g in by_set.values()),
                    key=lambda c: -c.score)
    smalls = sorted((min(g, key=lambda c: (c.gpus, -c.score)) for g in by_set.values()),
                    key=lambda c: -c.score)
    rest = sorted(cands, key=lambda c: -c.score)
    mixed = [c for pair in zip(firsts, smalls) for c in pair]
    for pool in (mixed, rest):
        for c in pool:
            if len(keep) >= K:
                return keep
            if id(c) not in seen:
                seen.add(id(c))
                keep.append(c)
    return keep
