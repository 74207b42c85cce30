"""``gpusched bench usher``: every placement method on the same workloads, each plan replayed.

Workloads (``gpusched/placement/workloads.py``): 12 and 100 zoo models with rates from the Azure LLM
inference trace, on a pool of H100s. For each method: GPUs, cost, the lowest per-model SLO
attainment when the plan is replayed on simulated GPUs, and the solve time. Then the
heuristic alone on 1,000 models and a 200-GPU pool (solve time only).
"""
from __future__ import annotations

import time

from gpusched.placement.pool import parse_pool
from gpusched.placement.replay import replay
from gpusched.placement.solvers import METHODS, place
from gpusched.placement.workloads import make_workload


def run_usher(sizes=(12, 100), gpu: str = "H100", scale: float = 200.0, seed: int = 0,
              horizons=None, cpsat_limit_s: float = 60.0, large: int = 1000,
              large_pool: int = 200, progress=None) -> dict:
    horizons = horizons or {12: 1.0, 100: 0.5}
    out = {"gpu": gpu, "scale": scale, "workloads": []}
    for n in sizes:
        w = make_workload(n, gpu, seed, scale)
        pool = parse_pool(f"{gpu}:{max(4 * n, 64)}")
        rows, heur = [], None
        for method in METHODS:
            plan = place(w.models, pool, method, time_limit_s=cpsat_limit_s, start=heur)
            if method == "heuristic":
                heur = plan
            rep = replay(plan, w.models, horizons.get(n, 0.5), seed)
            row = {"method": method, "gpus_used": plan.gpus_used,
                   "cost_per_hour": round(plan.cost_per_hour, 2),
                   "min_slo_attainment": round(rep["min_slo_attainment"], 5),
                   "mean_slo_attainment": round(rep["mean_slo_attainment"], 5),
                   "solve_time_s": round(plan.solve_time_s, 4)}
            if plan.optimal is not None:
                row["optimal"] = plan.optimal
                if "status" in plan.notes:  # no CP-SAT solution in time: the hint (heuristic) stands
                    row["status"] = plan.notes["status"]
                else:
                    row["bound_gpus"] = plan.notes["bound_cost_per_hour"] / pool[0].price_per_hour
            rows.append(row)
            if progress:
                progress()
        out["workloads"].append({"name": f"azure-{n}", "models": n,
                                 "total_rate": round(sum(m.rate for m in w.models), 1),
                                 "horizon_s": horizons.get(n, 0.5), "methods": rows})
    if large:
        w = make_workload(large, gpu, seed, scale)
        t = time.perf_counter()
        plan = place(w.models, parse_pool(f"{gpu}:{large_pool}"), "heuristic")
        out["large"] = {"models": large, "pool": large_pool, "gpus_used": plan.gpus_used,
                        "solve_time_s": round(time.perf_counter() - t, 3)}
        if progress:
            progress()
    return out


def steps(sizes, large: int) -> int:
    return len(sizes) * len(METHODS) + (1 if large else 0)


def print_usher(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    for w in res["workloads"]:
        one = next(r for r in w["methods"] if r["method"] == "one-per-gpu")["gpus_used"]
        t = Table(title=f"gpusched bench usher: {w['name']} ({w['models']} models, "
                  f"{w['total_rate']:g} req/s) on {res['gpu']}, replayed {w['horizon_s']:g} s")
        for c in ("method", "GPUs", "vs one-per-gpu", "$/h", "lowest SLO met", "solve s"):
            t.add_column(c, justify="left" if c == "method" else "right")
        for r in w["methods"]:
            name = r["method"] + ("" if "optimal" not in r else
                                  (" (optimal)" if r["optimal"] else " (not proven)"))
            t.add_row(name, str(r["gpus_used"]), f"{one / r['gpus_used']:.2f}x",
                      f"{r['cost_per_hour']:.2f}", f"{100 * r['min_slo_attainment']:.2f}%",
                      f"{r['solve_time_s']:.3f}")
        con.print(t)
    if "large" in res:
        lg = res["large"]
        con.print(f"heuristic on {lg['models']} models, {lg['pool']}-GPU pool: "
                  f"{lg['gpus_used']} GPUs in {lg['solve_time_s']:.2f} s")
