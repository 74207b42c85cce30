"""Estimate: one candidate configuration of a job (sites x GPUs x mode) priced by the cost model.

A candidate uses one GPU type, ``m_s`` GPUs at each of its ``k`` sites (sizes may differ), and
one mode. Which candidates a job gets, filtered by the feasibility rule (geo/feasibility.py),
scored and pruned, is geo/options.py.
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
    return ladder(lo, hi)


def ladder(lo: int, hi: int) -> list[int]:
    """``lo``, ``hi`` and the powers of two between, at most 4 (``lo <= hi``)."""
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


def multi_site(model: Model, job: Job, mode: str, sites: list[str], gtype: str,
               m: int | list[int] | tuple[int, ...]) -> Candidate:
    """data-parallel / local-sgd: hierarchical all-reduce; pipeline: one stage per site.

    ``m``: GPUs per site, one number for all or one per site (in ``sites`` order; sizes may
    differ). The batch (data-parallel, local-SGD) or the layers (pipeline) are split in
    proportion to the GPUs, so every site's compute share takes W / (n F mfu)
    (``cost_model.split_compute_s``); the all-reduce inside a site is paced by the largest
    site, the WAN ring moves the whole gradient whatever a site's size, and each site reads
    its share m_s / n of the data (docs/geo-cost-model.md)."""
    k = len(sites)
    ms = [m] * k if isinstance(m, int) else list(m)
    n = sum(ms)
    F = tflops(model.spec, gtype) * 1e12
    mfu = model.spec.defaults.mfu
    G = job.params * job.grad_bytes_per_param
    W = job_work_flop(job)
    egress_iter = 0.0
    t_comp = cm.split_compute_s(W, ms, F, mfu)
    if mode in ("data-parallel", "local-sgd"):
        H = job.local_sgd_h if mode == "local-sgd" else 1
        beta, alpha = model.wan.ring(sites)
        step = t_comp + cm.hierarchical_allreduce_s(
            G, ms, model.beta_intra, model.alpha_intra, beta, alpha, H)
        per_site = cm.allreduce_wan_bytes_per_site(G, k) / H
        for i, s in enumerate(sites):
            egress_iter += per_site / 1e9 * model.wan.get(s, sites[(i + 1) % k]).egress_usd_per_gb
        reads = [_read(model, job, s, ms[i] / n) for i, s in enumerate(sites)]
    else:  # pipeline: k stages, m_s GPUs data-parallel inside stage s
        mb = job.microbatches
        act_total = job_tokens(job) * job.hidden_size * 2.0  # bf16 activations per iteration
        act_mb = act_total / mb
        step = t_comp * cm.pipeline_bubble_factor(k, mb) + \
            cm.pipeline_stage_allreduce_s(G, ms, model.beta_intra, model.alpha_intra)
        for a, b in zip(sites, sites[1:]):
            fwd, back = model.wan.get(a, b), model.wan.get(b, a)
            step += cm.pipeline_boundary_s(act_mb, mb, min(fwd.beta_Bps, back.beta_Bps),
                                           max(fwd.alpha_s, back.alpha_s))
            egress_iter += act_total / 1e9 * (fwd.egress_usd_per_gb + back.egress_usd_per_gb)
        reads = [_read(model, job, sites[0], 1.0)]
    read_s = max(r[0] for r in reads)
    read_usd = sum(r[1] for r in reads)
    return _finish(model, job, mode, gtype, tuple(zip(sites, ms)), step, read_s,
                   egress_iter, read_usd)


def fill(total: int, caps: list[int], prices: list[float], M: int | None = None
         ) -> tuple[int, ...] | None:
    """GPUs per site for ``total`` over sites with ``caps``: one at every site, the rest to the
    cheapest sites first, none above min(cap, M); None when that cannot hold ``total``."""
    lim = [min(c, M) if M is not None else c for c in caps]
    if not lim or min(lim) < 1 or not len(lim) <= total <= sum(lim):
        return None
    out = [1] * len(lim)
    rest = total - len(lim)
    for i in sorted(range(len(lim)), key=lambda i: (prices[i], i)):
        add = min(rest, lim[i] - 1)
        out[i] += add
        rest -= add
    return tuple(out)


def level(total: int, caps: list[int]) -> int:
    """The smallest largest site: min M with sum_s min(cap_s, M) >= total (water-filling)."""
    lo, hi = 1, max(caps)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(min(c, mid) for c in caps) >= total:
            hi = mid
        else:
            lo = mid + 1
    return lo


def group_sizes(job: Job, caps: list[int], prices: list[float]) -> list[tuple[int, ...]]:
    """Per-site GPUs to try on one site group: totals min, max and powers of two between (at
    most 4, as ``gpu_sizes``), each as evenly as the pools allow (the smallest largest site:
    the intra-site all-reduce is paced by the largest), cheapest sites first at that level;
    and the smallest total with the cheapest sites filled first (the cheapest candidate)."""
    k = len(caps)
    lo, hi = max(job.min_gpus, k), min(job.max_gpus, sum(caps))
    if hi < lo:
        return []
    out = []
    for t in ladder(lo, hi):
        a = fill(t, caps, prices, level(t, caps))
        if a is not None and a not in out:
            out.append(a)
    a = fill(lo, caps, prices)
    if a is not None and a not in out:
        out.append(a)
    return out


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
