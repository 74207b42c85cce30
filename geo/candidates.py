"""Estimate: candidate configurations per job (sites x GPUs x mode), scored by the cost model and
pruned so that the solver's model stays small.

A candidate uses one GPU type, the same number of GPUs ``m`` at each of its ``k`` sites, and one
mode. Deadlines and budgets are enforced here, by dropping candidates that miss them; a job left
with no candidate gets a reason saying which constraint removed the last one.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from geo import cost_model as cm
from geo.spec import Job, Spec, checkpoint_bytes, job_tokens, job_work_flop, tflops
from geo.wan import Wan

log = logging.getLogger("geo.candidates")


@dataclass(slots=True)
class Candidate:
    job: str
    mode: str
    gpu_type: str
    alloc: tuple[tuple[str, int], ...]  # (site, GPUs) pairs, sites in ring/pipeline order
    iteration_s: float
    runtime_h: float  # remaining iterations (plus migration) from now
    gpu_usd_per_hour: float
    egress_usd_per_hour: float
    total_usd: float  # GPU-hours * price + egress over the remaining run
    migration_s: float = 0.0
    moved: bool = False  # the job runs now, elsewhere: this candidate migrates it
    score: float = 0.0  # job-local goodness for the objective (higher is better)

    @property
    def gpus(self) -> int:
        return sum(n for _, n in self.alloc)

    @property
    def sites(self) -> dict[str, int]:
        return dict(self.alloc)

    @property
    def cost_per_hour(self) -> float:
        return self.gpu_usd_per_hour + self.egress_usd_per_hour

    @property
    def finish_h(self) -> float:
        return self.runtime_h

    @property
    def speed(self) -> float:
        """Effective iterations per second over the remaining run, migration included."""
        return 1.0 / self.iteration_s if self.runtime_h <= 0 else \
            (self.runtime_h * 3600 - self.migration_s) / self.iteration_s / (self.runtime_h * 3600)


@dataclass
class JobOptions:
    job: Job
    candidates: list[Candidate] = field(default_factory=list)
    reason: str = ""  # why there is no candidate (empty when there is one)
    ref_speed: float = 1.0  # the fastest candidate's speed: throughput is normalised by it


class Model:
    """Everything candidates need about a spec, precomputed once (pools, links, neighbours)."""

    def __init__(self, spec: Spec, wan: Wan | None = None):
        self.spec = spec
        self.wan = wan or Wan(spec)
        self.sites = [s.name for s in spec.sites]
        self.pools: dict[tuple[str, str], tuple[int, float]] = {}  # (site, type) -> (count, $/h)
        self.types_at: dict[str, list[str]] = {}
        for s in spec.sites:
            for g in s.gpus:
                self.pools[(s.name, g.type)] = (g.count, g.usd_per_hour)
            self.types_at[s.name] = [g.type for g in s.gpus if g.count > 0]
        self.storage_tb = {s.name: s.storage_tb for s in spec.sites}
        self.datasets = {d.name: d for d in spec.datasets}
        d = spec.defaults
        self.beta_intra = d.intra_site_gbps * 1e9 / 8
        self.alpha_intra = d.intra_site_latency_us * 1e-6
        # neighbours by bandwidth: multi-site candidates are built from close sites only
        self.near: dict[str, list[str]] = {}
        for a in self.sites:
            others = [b for b in self.sites if b != a]
            others.sort(key=lambda b: -self.wan.get(a, b).beta_Bps)
            self.near[a] = others

    def capacity(self, site: str, gpu_type: str) -> int:
        return self.pools.get((site, gpu_type), (0, 0.0))[0]

    def price(self, site: str, gpu_type: str) -> float:
        return self.pools[(site, gpu_type)][1]


def gpu_sizes(job: Job, cap: int, per_site_div: int = 1) -> list[int]:
    """GPU counts per site to try: min, max and powers of two between, at most 4."""
    lo = math.ceil(job.min_gpus / per_site_div)
    hi = min(job.max_gpus // per_site_div, cap)
    if hi < lo or hi <= 0:
        return []
    sizes = {lo, hi}
    p = 1
    while p < hi:
        if p > lo:
            sizes.add(p)
        p *= 2
    s = sorted(sizes)
    if len(s) > 4:  # keep the ends and two geometric middles
        s = [s[0], s[len(s) // 3], s[2 * len(s) // 3], s[-1]]
    return s


def _read(model: Model, job: Job, site: str, share: float) -> tuple[float, float]:
    """(read seconds per iteration, egress $ over the run) for ``share`` of the dataset."""
    if job.dataset is None:
        return 0.0, 0.0
    ds = model.datasets[job.dataset]
    if site in ds.replicas or ds.size_gb == 0:
        return 0.0, 0.0
    best = max(ds.replicas, key=lambda r: model.wan.get(r, site).beta_Bps)
    ln = model.wan.get(best, site)
    nbytes = ds.size_gb * 1e9 * share * (1 - job.done_iterations / job.iterations)
    left = max(1, job.iterations - job.done_iterations)
    return cm.data_read_s(nbytes, left, ln.beta_Bps), nbytes / 1e9 * ln.egress_usd_per_gb


def _migration(model: Model, job: Job, alloc: tuple[tuple[str, int], ...]) -> tuple[float, float, bool]:
    """(seconds, egress $, moved) for a running job to take ``alloc``; (0, 0, False) to stay."""
    if not job.running:
        return 0.0, 0.0, False
    now = {s: sum(t.values()) for s, t in job.running.items() if sum(t.values()) > 0}
    if now == dict(alloc):
        return 0.0, 0.0, False
    src = max(now, key=now.get) if now else None
    ck = checkpoint_bytes(job)
    wire_s, usd = 0.0, 0.0
    for site, _ in alloc:
        if src is None or site == src:
            continue
        ln = model.wan.get(src, site)
        wire_s = max(wire_s, ln.alpha_s + ck / ln.beta_Bps)
        usd += ck / 1e9 * ln.egress_usd_per_gb
    return wire_s + model.spec.defaults.restart_s, usd, True


def _finish(model, job, mode, gtype, alloc, step_s, read_s, egress_per_iter_usd, read_usd):
    it = cm.iteration_s(step_s, read_s)
    left = job.iterations - job.done_iterations
    mig_s, mig_usd, moved = _migration(model, job, alloc)
    run_h = (left * it + mig_s) / 3600
    gpu_h = cm.gpu_usd_per_hour([(n, model.price(s, gtype)) for s, n in alloc])
    egress_h = egress_per_iter_usd * 3600 / it
    total = gpu_h * run_h + egress_h * left * it / 3600 + read_usd + mig_usd
    return Candidate(job.name, mode, gtype, alloc, it, run_h, gpu_h, egress_h, total,
                     mig_s, moved)


def single_site(model: Model, job: Job, site: str, gtype: str, n: int) -> Candidate:
    step = step_single_s(model, job, gtype, n)
    read_s, read_usd = _read(model, job, site, 1.0)
    return _finish(model, job, "single-site", gtype, ((site, n),), step, read_s, 0.0, read_usd)


def multi_site(model: Model, job: Job, mode: str, sites: list[str], gtype: str, m: int) -> Candidate:
    """data-parallel / local-sgd: hierarchical all-reduce; pipeline: one stage per site."""
    k = len(sites)
    F = tflops(model.spec, gtype) * 1e12
    mfu = model.spec.defaults.mfu
    G = job.params * job.grad_bytes_per_param
    W = job_work_flop(job)
    egress_iter = 0.0
    if mode in ("data-parallel", "local-sgd"):
        H = job.local_sgd_h if mode == "local-sgd" else 1
        beta, alpha = model.wan.ring(sites)
        step = cm.compute_s(W, k * m, F, mfu) + cm.hierarchical_allreduce_s(
            G, [m] * k, model.beta_intra, model.alpha_intra, beta, alpha, H)
        per_site = cm.allreduce_wan_bytes_per_site(G, k) / H
        for i, s in enumerate(sites):
            egress_iter += per_site / 1e9 * model.wan.get(s, sites[(i + 1) % k]).egress_usd_per_gb
        reads = [_read(model, job, s, 1.0 / k) for s in sites]
    else:  # pipeline: k stages, m GPUs data-parallel inside each stage
        mb = job.microbatches
        act_total = job_tokens(job) * job.hidden_size * 2.0  # bf16 activations per iteration
        act_mb = act_total / mb
        step = cm.compute_s(W, k * m, F, mfu) * cm.pipeline_bubble_factor(k, mb) + \
            cm.ring_allreduce_s(G / k, m, model.beta_intra, model.alpha_intra)
        for a, b in zip(sites, sites[1:]):
            fwd, back = model.wan.get(a, b), model.wan.get(b, a)
            step += cm.pipeline_boundary_s(act_mb, mb, min(fwd.beta_Bps, back.beta_Bps),
                                           max(fwd.alpha_s, back.alpha_s))
            egress_iter += act_total / 1e9 * (fwd.egress_usd_per_gb + back.egress_usd_per_gb)
        reads = [_read(model, job, sites[0], 1.0)]
    read_s = max(r[0] for r in reads)
    read_usd = sum(r[1] for r in reads)
    return _finish(model, job, mode, gtype, tuple((s, m) for s in sites), step, read_s,
                   egress_iter, read_usd)


def step_single_s(model: Model, job: Job, gtype: str, n: int) -> float:
    """Compute + intra-site all-reduce of one iteration on n GPUs of one site."""
    F = tflops(model.spec, gtype) * 1e12
    G = job.params * job.grad_bytes_per_param
    return cm.compute_s(job_work_flop(job), n, F, model.spec.defaults.mfu) + \
        cm.ring_allreduce_s(G, n, model.beta_intra, model.alpha_intra)


def ideal_speed(model: Model, job: Job) -> float:
    """Iterations/s on max_gpus of the job's fastest allowed type in one site with local data:
    the yardstick that normalises throughput (a job's weight is at most its priority)."""
    return max(1.0 / step_single_s(model, job, t, job.max_gpus) for t in job.gpu_types)


PLACED = 1.0  # throughput counts a running job's priority once, plus its normalised speed


def score(c: Candidate, objective: str, ref_speed: float, priority: float) -> float:
    if objective in ("throughput", "balance"):  # balance sizes jobs as throughput does
        return priority * (PLACED + c.speed / ref_speed)
    if objective == "cost":
        return -c.total_usd
    return -c.finish_h


def job_options(model: Model, job: Job, objective: str = "throughput", *,
                max_candidates: int | None = None, multi_site_modes: bool = True,
                capacity: dict[tuple[str, str], int] | None = None) -> JobOptions:
    """All candidates of one job, filtered by deadline and budget, scored and pruned.

    ``capacity`` (default: the spec's pools) bounds the GPUs a candidate may ask of a pool.
    """
    spec = model.spec
    K = max_candidates or spec.planner.max_candidates
    cap = capacity if capacity is not None else {k: v[0] for k, v in model.pools.items()}
    types = [t for t in job.gpu_types if any(cap.get((s, t), 0) > 0 for s in model.sites)]
    cands: list[Candidate] = []
    if "single-site" in job.modes:
        for s in model.sites:
            for t in job.gpu_types:
                c_st = cap.get((s, t), 0)
                for n in gpu_sizes(job, c_st):
                    cands.append(single_site(model, job, s, t, n))
    if multi_site_modes:
        kmax = min(spec.planner.max_sites_per_job, len(model.sites))
        for mode in ("data-parallel", "local-sgd", "pipeline"):
            if mode not in job.modes:
                continue
            for t in types:
                for k in range(2, kmax + 1):
                    for anchor in model.sites:
                        if cap.get((anchor, t), 0) <= 0:
                            continue
                        group = [anchor] + [b for b in model.near[anchor]
                                            if cap.get((b, t), 0) > 0][:k - 1]
                        if len(group) < k:
                            continue
                        m_cap = min(cap.get((s, t), 0) for s in group)
                        for m in gpu_sizes(job, m_cap, k):
                            if m * k < job.min_gpus:
                                continue
                            cands.append(multi_site(model, job, mode, group, t, m))
    opts = JobOptions(job)
    if not cands:
        pools = [f"{s}/{t}={cap.get((s, t), 0)}" for s in model.sites for t in job.gpu_types
                 if cap.get((s, t), 0) > 0]
        opts.reason = (f"capacity: no site can host job {job.name!r}: it needs {job.min_gpus} "
                       f"GPUs of {'/'.join(job.gpu_types)} in modes {', '.join(job.modes)}; "
                       f"available: {', '.join(pools[:6]) or 'none of those types'}")
        return opts
    if job.deadline_h is not None:
        ok = [c for c in cands if c.finish_h <= job.deadline_h]
        if not ok:
            best = min(cands, key=lambda c: c.finish_h)
            opts.reason = (f"deadline: job {job.name!r} has deadline_h {job.deadline_h:g} but its "
                           f"fastest plan ({best.mode} on {best.gpus} {best.gpu_type}) finishes "
                           f"in {best.finish_h:.3g} h")
            return opts
        cands = ok
    if job.budget_usd is not None:
        ok = [c for c in cands if c.total_usd <= job.budget_usd]
        if not ok:
            best = min(cands, key=lambda c: c.total_usd)
            opts.reason = (f"budget: job {job.name!r} has budget_usd {job.budget_usd:g} but its "
                           f"cheapest plan costs ${best.total_usd:,.0f}")
            return opts
        cands = ok
    opts.ref_speed = ideal_speed(model, job)
    for c in cands:
        c.score = score(c, objective, opts.ref_speed, job.priority)
        if not c.moved and job.running:
            c.score += abs(c.score) * 1e-3 + 1e-9  # ties keep a running job where it is
    opts.candidates = prune(cands, K)
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
