"""Synthetic geo instances on the real regions of wan_links.csv (benchmark and tests).

Every site is a measured cloud region, so its WAN links are real; GPU pools, prices, datasets
and jobs are drawn from a seeded ``random.Random`` (nothing is seeded at import). The fleet is
sized so that the jobs' minimum demand is ``load`` x supply: supply allows every job.
"""
from __future__ import annotations

import random

from geo.spec import DEFAULT_TFLOPS, Dataset, GpuPool, Job, Planner, Site, Spec
from geo.wan import known_regions, measured_links

# (name, params, tokens per iteration, iterations, min, max GPUs, weight of the template)
TEMPLATES = (
    ("ft", 3.5e8, 2.5e5, 3000, 1, 8, 5),
    ("b1", 1.3e9, 1.0e6, 5000, 4, 16, 4),
    ("b7", 7.0e9, 2.0e6, 4000, 8, 64, 3),
    ("b13", 1.3e10, 2.0e6, 2000, 16, 64, 1),
)
PRICE = {"H100": (2.5, 4.5), "A100": (1.2, 2.4), "L4": (0.5, 0.9)}


def _regions(n: int, rng: random.Random) -> list[str]:
    meas = measured_links()
    regions = known_regions()
    rng.shuffle(regions)
    out: list[str] = []
    for r in regions:  # only regions measured both ways with every region picked so far
        if all(_ok(meas, r, o) for o in out):
            out.append(r)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} fully measured regions; ask for at most that many sites")


def _ok(meas, a, b) -> bool:
    for x, y in ((a, b), (b, a)):
        v = meas.get((x, y))
        if v is not None and v[0] is not None and v[1] is not None:
            return True
    return False


def make_instance(n_jobs: int, n_sites: int, seed: int = 1, load: float = 0.8,
                  multi_site_share: float = 0.1, time_limit_s: float = 30.0,
                  budget_share: float = 0.0, fleet_budget: float | None = None) -> Spec:
    """``budget_share``: jobs with a budget_usd (between 0.8 and 3 times their cost on their
    minimum of their first type at its mean price); ``fleet_budget``: budget_usd_per_hour as a
    share of the fleet's $/h at full use. With the defaults the draws are those of earlier
    versions (the same instances)."""
    rng = random.Random(seed)
    names = _regions(n_sites, rng)
    datasets = []
    for d in range(max(1, n_sites // 2)):
        reps = rng.sample(names, min(len(names), rng.choice((1, 1, 2))))
        datasets.append(Dataset(f"ds{d}", float(rng.choice((50, 200, 1000, 4000))), reps))
    jobs = []
    weights = [t[-1] for t in TEMPLATES]
    demand = {"H100": 0, "A100": 0, "L4": 0}
    for i in range(n_jobs):
        name, P, T, it, lo, hi, _ = rng.choices(TEMPLATES, weights)[0]
        types = ["H100", "A100"] if P > 2e9 else rng.choice((["A100", "L4"], ["H100", "A100"],
                                                              ["A100"], ["L4"]))
        modes = ["single-site"]
        if P > 2e9 and rng.random() < multi_site_share:
            modes += ["local-sgd", "data-parallel"]
        deadline = None
        if rng.random() < 0.2:
            deadline = float(rng.choice((48, 96, 200)))
        iters = int(it * rng.uniform(0.5, 1.5))
        budget = None
        if budget_share and rng.random() < budget_share:
            hours = 6 * P * T * iters / (lo * DEFAULT_TFLOPS[types[0]] * 1e12 * 0.4) / 3600
            budget = round(hours * lo * sum(PRICE[types[0]]) / 2 * rng.uniform(0.8, 3.0), 2)
        jobs.append(Job(name=f"{name}-{i}", params=P, tokens_per_iter=T,
                        iterations=iters, gpu_types=types,
                        min_gpus=lo, max_gpus=hi, priority=float(rng.choice((1, 1, 2, 3))),
                        deadline_h=deadline, budget_usd=budget, dataset=rng.choice(datasets).name
                        if rng.random() < 0.6 else None, modes=modes))
        demand[types[0]] += lo
    sites = []
    # supply per type = demand / load, spread unevenly over the sites holding that type
    holders = {t: rng.sample(names, max(1, int(len(names) * f)))
               for t, f in (("H100", 0.6), ("A100", 0.8), ("L4", 0.5))}
    pools: dict[str, list[GpuPool]] = {n: [] for n in names}
    for t, where in holders.items():
        supply = max(demand[t] / load, 16)
        shares = [rng.uniform(0.5, 1.5) for _ in where]
        tot = sum(shares)
        lo, hi = PRICE[t]
        for s, w in zip(where, shares):
            count = max(16, int(round(supply * w / tot / 8)) * 8)
            pools[s].append(GpuPool(t, count, round(rng.uniform(lo, hi), 2)))
    for n in names:
        if not pools[n]:
            pools[n].append(GpuPool("A100", 16, round(rng.uniform(*PRICE["A100"]), 2)))
        sites.append(Site(n, pools[n]))
    B = None
    if fleet_budget is not None:
        B = round(fleet_budget * sum(g.count * g.usd_per_hour for s in sites for g in s.gpus), 2)
    return Spec(sites=sites, jobs=jobs, datasets=datasets,
                planner=Planner(time_limit_s=time_limit_s, budget_usd_per_hour=B))


def held_out_spec(seed: int, time_limit_s: float = 30.0) -> tuple[Spec, dict]:
    """A random instance whose shape is drawn from ``seed`` too: 60-400 jobs on 6-24 sites,
    load 0.6-1.6 (above 1: not every job fits), 0-30% multi-site jobs, per-job budgets on
    0-40% of the jobs, a fleet budget on a third. The benchmark's held-out specs come from
    seeds no development run used (geo/bench.py HELD_OUT_SEEDS). Returns (spec, its shape)."""
    rng = random.Random(seed)
    shape = {"jobs": rng.randint(60, 400), "sites": rng.randint(6, 24),
             "load": round(rng.uniform(0.6, 1.6), 2),
             "multi_site_share": round(rng.uniform(0.0, 0.3), 2),
             "budget_share": round(rng.uniform(0.0, 0.4), 2),
             "fleet_budget": round(rng.uniform(0.3, 0.9), 2) if rng.random() < 0.33 else None}
    while True:
        try:  # some draws of regions hold fewer fully measured ones: draw again
            spec = make_instance(shape["jobs"], shape["sites"], seed=rng.randrange(1 << 30),
                                 load=shape["load"], multi_site_share=shape["multi_site_share"],
                                 time_limit_s=time_limit_s, budget_share=shape["budget_share"],
                                 fleet_budget=shape["fleet_budget"])
            return spec, shape
        except ValueError:
            continue
