"""Data placement: the optional slower pass (MAST's daily data placement) that adds dataset
replicas where the plan's jobs read them over the WAN, under each site's storage capacity.

Greedy, re-planning after each replica: for every (dataset, site without it) the gain is what
the jobs running at that site and reading that dataset would gain with local reads (objective
units; for cost, minus the one-time copy's egress), per TB; the best positive one that fits in
the site's storage is added. Stops when nothing gains or after ``max_new`` replicas.
"""
from __future__ import annotations

import logging
from typing import Callable

from geo.candidates import Model, ideal_speed, score, single_site
from geo.plan import Plan
from geo.spec import Spec

log = logging.getLogger("geo.data_placement")


def storage_used_tb(spec: Spec) -> dict[str, float]:
    used = {s.name: 0.0 for s in spec.sites}
    for d in spec.datasets:
        for r in d.replicas:
            used[r] += d.size_gb / 1000
    return used


def _gain(model: Model, p: Plan, objective: str, dataset: str, site: str) -> float:
    """Objective gained if ``site`` held ``dataset``, for the single-site jobs running there."""
    ds = model.datasets[dataset]
    by_name = {j.name: j for j in model.spec.jobs}
    readers = [jp for jp in p.jobs if jp.sites == {site: jp.sites.get(site)} and jp.start_h == 0
               and by_name[jp.name].dataset == dataset]
    if not readers:
        return 0.0
    src = max(ds.replicas, key=lambda r: model.wan.get(r, site).beta_Bps)
    copy_usd = ds.size_gb * model.wan.get(src, site).egress_usd_per_gb
    gain = 0.0
    saved = list(ds.replicas)
    for local in (False, True):
        if local:
            ds.replicas = saved + [site]
        for jp in readers:
            job = by_name[jp.name]
            c = single_site(model, job, site, jp.gpu_type, jp.sites[site])
            v = score(c, objective, ideal_speed(model, job), job.priority)
            gain += v if local else -v
    ds.replicas = saved
    return gain - copy_usd if objective == "cost" else gain


def place_data(spec: Spec, objective: str, plan_fn: Callable[[Spec], Plan], max_new: int = 10
               ) -> tuple[Plan, list[tuple[str, str, float]]]:
    """Adds replicas to ``spec.datasets`` in place; returns (final plan, [(dataset, site,
    gain)]). ``plan_fn`` plans a spec (the same solver as the caller's)."""
    added: list[tuple[str, str, float]] = []
    p = plan_fn(spec)
    for _ in range(max_new):
        model = Model(spec)
        used = storage_used_tb(spec)
        cap = {s.name: s.storage_tb for s in spec.sites}
        best = None
        for d in spec.datasets:
            for s in model.sites:
                if s in d.replicas or used[s] + d.size_gb / 1000 > cap[s] or d.size_gb == 0:
                    continue
                g = _gain(model, p, objective, d.name, s)
                if g > 1e-9 and (best is None or g / d.size_gb > best[0]):
                    best = (g / d.size_gb, d, s, g)
        if best is None:
            break
        _, d, s, g = best
        d.replicas.append(s)
        added.append((d.name, s, g))
        log.info("geo: replica of %s added at %s (gain %.3f)", d.name, s, g)
        p = plan_fn(spec)
    return p, added
