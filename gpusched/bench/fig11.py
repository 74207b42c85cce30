"""``gpusched bench fig11`` (also ``bench paella``): Paella's Fig. 11 on the simulated GPU.

Paella's experiment, exactly where this project can run it (anchors.md): its eight-model mix at
batch 1, compiled kernels (``fused``: TVM fuses like TensorRT); open-loop log-normal arrivals
(``mu = ln(IAT) - sigma^2 / 2``, sigma 1.5 and 2), 3,000 jobs a point; clients capped per
model (141 jobs in flight), extra jobs waiting in the client, latency from the intended
arrival; every system behind the same caps, with its own host costs (gpusched/experiments/
host.py). The x axis is absolute: the offered rates are one grid in jobs/s for every policy,
the same arrival draw scaled to each rate, and each point is labelled with the throughput it
achieved (completed jobs over the time to the last completion). Several seeds give the spread.

Headline per (GPU, sigma): each policy's knee, the most jobs/s it achieves with p99 <= 75 ms
(Paella's y limit), and the most with >= 99% of jobs within their SLO (5x solo); and the p99
of ``cuda-ms`` and ``triton`` over our best policy's at 80% and 100% of ``cuda-ms``'s knee.
The rate grid runs from 10% to 150% of the best burst throughput of the policies (measured
first, on the same costs and caps), so it covers 1.5x the best knee; where a policy's burst is
under half the best, a second grid of as many rates covers it too (``rate_grid``).
"""
from __future__ import annotations

import os
import statistics
import threading
from concurrent.futures import ProcessPoolExecutor

from gpusched.experiments.clients import PAELLA_CAPS
from gpusched.experiments.host import HostCosts, default_costs
from gpusched.experiments.mixes import mix as make_mix
from gpusched.experiments.runner import Scenario, make_arrivals, run_point, scaled
from scheduler_daemon.core.gpu_specs import gpu_spec

POLICIES = ("cuda-ss", "cuda-ms", "mps", "triton", "paella", "srpt", "slo-srpt")
OURS = ("paella", "srpt", "slo-srpt")
BASELINES = ("cuda-ss", "cuda-ms", "mps", "triton")
P99_LIMIT_MS = 75.0
SLO_TARGET = 0.99


def _point(task):
    key, sc, policy = task
    return key, policy, run_point(sc, policy)


def burst_rps(sc: Scenario, policy: str, n: int) -> float:
    """Throughput of ``n`` jobs all arriving at once (caps and costs as in the sweep)."""
    burst = Scenario(**{**sc.__dict__, "arrivals": tuple((0.0, m) for _, m in sc.arrivals[:n])})
    res = run_point(burst, policy)
    return res["throughput_rps"]


def plan(gpus, rates: int, policies, costs: HostCosts | None,
         engine: str = "fused", burst_jobs: int = 600, map_fn=map, progress=None) -> dict:
    """Lay the sweep out: per GPU the mix, the costs, the burst throughputs and the rate grid."""
    out = {}
    for gpu in gpus:
        spec = gpu_spec(gpu)
        mix = tuple(make_mix("paella-mix", gpu, engine=engine))
        c = costs or default_costs(spec)
        probe = Scenario(gpu, mix, make_arrivals(mix, "lognormal:2", 1.0, burst_jobs, 0),
                         costs=c, caps=PAELLA_CAPS)
        best = {}
        for p, rps in map_fn(_burst_task, [(probe, p, burst_jobs) for p in policies]):
            best[p] = rps
            if progress:
                progress()
        grid = rate_grid(best.values(), rates)
        out[gpu] = {"mix": mix, "costs": c, "burst_rps": best, "rates": grid}
    return out


def rate_grid(bursts, rates: int) -> list[float]:
    """``rates`` offered rates from 10% to 150% of the best burst throughput; and, when some
    policy's burst is under half the best (the grid would put at most a few points below its
    capacity, as ours at 1,500 jobs/s against cuda-ms's 26,000 on the H100), as many again
    from 10% to 150% of the lowest burst, so that every curve has its knee inside the grid."""
    def line(top):
        return [top * (0.1 + 1.4 * i / (rates - 1)) for i in range(rates)] if rates > 1 \
            else [top]
    top, low = max(bursts), min(bursts)
    grid = line(top)
    if 0 < low < 0.5 * top:
        grid = sorted(set(grid) | set(line(low)))
    return grid


def _burst_task(arg):
    sc, policy, n = arg
    return policy, burst_rps(sc, policy, n)


def run_fig11(gpus=("T4",), sigmas=(1.5, 2.0), seeds: int = 3, jobs: int = 3000,
              rates: int = 15, policies=POLICIES, costs: HostCosts | None = None,
              engine: str = "fused", workers: int | None = None, progress=None,
              on_total=None) -> dict:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}: choose from {', '.join(POLICIES)}")
    if jobs < 50 or rates < 3 or seeds < 1 or any(not 0 < s <= 5 for s in sigmas):
        raise ValueError("--jobs must be >= 50, --rates >= 3, --seeds >= 1, sigmas in (0, 5]")
    workers = workers or min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as ex:
        try:
            return _run(ex, gpus, sigmas, seeds, jobs, rates, policies, costs, engine,
                        progress, on_total)
        except BaseException:   # Ctrl-C: stop at once, do not wait for queued points
            stop_pool(ex)
            raise


def stop_pool(ex: ProcessPoolExecutor) -> None:
    """Cancel what is queued and end the workers now (shutdown(wait=False) forgets them;
    they hold nothing worth a clean exit, and SIGTERM would make each print a traceback).
    The pool's manager thread may then fail reading from a killed worker: that is this
    shutdown, not an error, so its traceback is not printed (it once reached Ctrl-C's
    one-line message in CI)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    manager = getattr(ex, "_executor_manager_thread", None)
    if manager is not None:
        before = threading.excepthook

        def hook(args, before=before):
            if args.thread is not manager:
                before(args)
        threading.excepthook = hook
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.kill()


def _run(ex, gpus, sigmas, seeds, jobs, rates, policies, costs, engine, progress, on_total):
    n_extra = 0 if "cuda-ms" not in policies else (   # the ratio points (_ratios)
        len(gpus) * len(sigmas) * seeds * 2 * len([p for p in policies
                                                   if p in OURS + ("cuda-ms", "triton")]))
    if on_total:   # a GPU's grid may double once its bursts are known (rate_grid): counted then
        on_total(len(gpus) * len(policies) + len(gpus) * len(sigmas) * seeds * rates
                 * len(policies) + n_extra)
    layout = plan(gpus, rates, policies, costs, engine,
                  map_fn=ex.map, progress=progress)
    if on_total:
        on_total(len(gpus) * len(policies) + n_extra + sum(
            len(layout[g]["rates"]) for g in gpus) * len(sigmas) * seeds * len(policies))
    tasks, scen = [], {}
    for gpu in gpus:
        lay = layout[gpu]
        for sigma in sigmas:
            for seed in range(seeds):
                unit = make_arrivals(lay["mix"], f"lognormal:{sigma:g}", 1.0, jobs, seed)
                scen[(gpu, sigma, seed)] = unit
                for ri, rate in enumerate(lay["rates"]):
                    sc = Scenario(gpu, lay["mix"], scaled(unit, rate), costs=lay["costs"],
                                  caps=PAELLA_CAPS)
                    tasks += [((gpu, sigma, seed, ri), sc, p) for p in policies]
    points = {}
    for key, policy, res in ex.map(_point, tasks, chunksize=1):
        points[(key, policy)] = res
        if progress:
            progress()
    cases = []
    for gpu in gpus:
        lay = layout[gpu]
        for sigma in sigmas:
            per_seed = []
            for seed in range(seeds):
                rows = {p: [points[((gpu, sigma, seed, ri), p)]
                            for ri in range(len(lay["rates"]))] for p in policies}
                per_seed.append(_headline(rows, policies))
            extra = _ratios(ex, gpu, sigma, seeds, lay, scen, per_seed, policies, progress)
            cases.append(_case(gpu, sigma, seeds, lay, per_seed, extra, points, policies))
    return {"jobs": jobs, "engine": engine, "p99_limit_ms": P99_LIMIT_MS,
            "slo_target": SLO_TARGET, "cases": cases}


def knee(rows: list[dict], ok) -> float:
    """The most jobs/s achieved at a point that meets ``ok`` (0.0 when none does)."""
    return max((r["throughput_rps"] for r in rows if ok(r)), default=0.0)


def _headline(rows: dict, policies) -> dict:
    return {"knee_rps": {p: knee(rows[p], lambda r: r["p99_ms"] is not None
                                 and r["p99_ms"] <= P99_LIMIT_MS) for p in policies},
            "slo99_rps": {p: knee(rows[p], lambda r: r["slo_attainment"] >= SLO_TARGET)
                          for p in policies}}


def _ratios(ex, gpu, sigma, seeds, lay, scen, per_seed, policies, progress) -> list[dict]:
    """Per seed, at 80% and 100% of cuda-ms's knee: the p99 of each policy."""
    if "cuda-ms" not in policies:
        return [{} for _ in range(seeds)]
    want = [p for p in policies if p in OURS + ("cuda-ms", "triton")]
    tasks = []
    for seed in range(seeds):
        k = per_seed[seed]["knee_rps"]["cuda-ms"]
        for frac in (0.8, 1.0):
            if k <= 0:
                continue
            sc = Scenario(gpu, lay["mix"], scaled(scen[(gpu, sigma, seed)], frac * k),
                          costs=lay["costs"], caps=PAELLA_CAPS)
            tasks += [((seed, frac), sc, p) for p in want]
    out = [{} for _ in range(seeds)]
    for (seed, frac), policy, res in ex.map(_point, tasks):
        out[seed].setdefault(frac, {})[policy] = res
        if progress:
            progress()
    return out


def _case(gpu, sigma, seeds, lay, per_seed, extra, points, policies) -> dict:
    def spread(vals):
        return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
    knees = {p: [h["knee_rps"][p] for h in per_seed] for p in policies}
    slo99 = {p: [h["slo99_rps"][p] for h in per_seed] for p in policies}
    ours = [p for p in policies if p in OURS]
    ratios = {}
    for frac, name in ((0.8, "p99_ratio_at_80pct"), (1.0, "p99_ratio_at_100pct")):
        vals = {b: [] for b in ("cuda-ms", "triton") if b in policies}
        for e in extra:
            at = e.get(frac)
            if not at or not ours:
                continue
            best = min((at[p]["p99_ms"] for p in ours if at[p]["p99_ms"] is not None),
                       default=None)
            for b in vals:
                if best and at[b]["p99_ms"] is not None:
                    vals[b].append(at[b]["p99_ms"] / best)
        ratios[name] = {b: statistics.fmean(v) for b, v in vals.items() if v}
    curves = {p: [{"offered_rps": lay["rates"][ri],
                   **{k: _mean([points[((gpu, sigma, s, ri), p)][k] for s in range(seeds)])
                      for k in ("throughput_rps", "p50_ms", "p99_ms", "slo_attainment",
                                "jain")},
                   "p99_ms_min": min(_nz(points[((gpu, sigma, s, ri), p)]["p99_ms"])
                                     for s in range(seeds)),
                   "p99_ms_max": max(_nz(points[((gpu, sigma, s, ri), p)]["p99_ms"])
                                     for s in range(seeds)),
                   "per_model_p99_ms": points[((gpu, sigma, 0, ri), p)]["per_model_p99_ms"]}
                  for ri in range(len(lay["rates"]))] for p in policies}
    return {"gpu": gpu, "sigma": sigma, "seeds": seeds,
            "knee_rps": {p: statistics.fmean(v) for p, v in knees.items()},
            "knee_rps_spread": {p: spread(v) for p, v in knees.items()},
            "slo99_rps": {p: statistics.fmean(v) for p, v in slo99.items()},
            "slo99_rps_spread": {p: spread(v) for p, v in slo99.items()},
            **ratios,
            "burst_rps": lay["burst_rps"], "rates_rps": lay["rates"],
            "costs_us": lay["costs"].__dict__, "curves": curves}


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def _nz(v):
    return float("inf") if v is None else v


# -- Fig. 13: Paella's fairness threshold ------------------------------------------------------
THRESHOLDS = (0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def _fair_task(arg):
    threshold, sc = arg
    sc = Scenario(**{**sc.__dict__, "paella_threshold": threshold})
    return threshold, run_point(sc, "paella")


def run_fig13(gpu: str = "T4", sigma: float = 2.0, jobs: int = 3000, seed: int = 0,
              load: float = 0.8, thresholds=THRESHOLDS, costs: HostCosts | None = None,
              engine: str = "fused", workers: int | None = None, progress=None) -> dict:
    """Paella's Fig. 13: the deficit threshold swept from 0.01 (always the most starved model
    first) to 1e5 (SRPT), at ``load`` times paella's burst throughput: per-model p99 and Jain's
    fairness index of the per-model slowdowns."""
    if not 0 < load <= 3 or jobs < 50:
        raise ValueError("--load must be in (0, 3] and --jobs >= 50")
    spec = gpu_spec(gpu)
    mix = tuple(make_mix("paella-mix", gpu, engine=engine))
    c = costs or default_costs(spec)
    unit = make_arrivals(mix, f"lognormal:{sigma:g}", 1.0, jobs, seed)
    probe = Scenario(gpu, mix, unit, costs=c, caps=PAELLA_CAPS)
    rate = load * burst_rps(probe, "paella", min(600, jobs))
    sc = Scenario(gpu, mix, scaled(unit, rate), costs=c, caps=PAELLA_CAPS)
    rows = []
    with ProcessPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1)) as ex:
        try:
            for threshold, res in ex.map(_fair_task, [(t, sc) for t in thresholds]):
                rows.append({"threshold": threshold, **res})
                if progress:
                    progress()
        except BaseException:   # Ctrl-C: stop at once
            stop_pool(ex)
            raise
    return {"gpu": gpu, "sigma": sigma, "jobs": jobs, "rate_rps": rate, "rows": rows}
