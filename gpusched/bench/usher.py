"""``gpusched bench usher``: every placement method on the same workloads, each plan replayed.

Workloads (``gpusched/placement/workloads.py``), all on a pool of one GPU type:

- ``azure-12`` and ``azure-100``: the workloads placement was developed on (in sample: the
  knobs in ``placement/knobs.py`` were calibrated by replaying them);
- ``held-out-<seed>``: model lists drawn from seeds that no development run used
  (``make_held_out``; ``held_out: true`` in the JSON).

For each method: GPUs, cost, the lowest per-model SLO attainment when the plan is replayed on
simulated GPUs, and the solve time. Every plan of every workload is replayed in one pool of
processes (``replay_many``). The headline per workload is the heuristic against the best
baseline (gslice, gpulet, shepherd, mem-packing) whose plan replays at >= 99% for every model;
one-per-gpu is a reference line only. Then the heuristic alone on 1,000 models and a 400-GPU
pool (solve time only), and the interference model's out-of-sample errors.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed

from gpusched.placement.estimate import WEIGHTS_DIR
from gpusched.placement.pool import parse_pool
from gpusched.placement.replay import attainment_alone, replay_many
from gpusched.placement.solvers import BASELINE_METHODS, METHODS, place
from gpusched.placement.spec import SpecError
from gpusched.placement.workloads import make_held_out, make_workload

HELD_OUT_SEEDS = (101, 102, 103)   # never used while placement was developed (dev: 1-8)
ATTAINMENT = 0.99                  # a plan "holds" when every model meets its SLO this often
TARGET_RATIO = 1.3                 # on azure-100 and the held-out lists
CPSAT_MAX_MODELS = 20              # beyond this CP-SAT found nothing better than its hint in 60 s
HORIZONS = {12: 1.0, 100: 0.5}     # simulated seconds each in-sample workload is replayed
HELD_OUT_HORIZON = 0.5


def run_usher(sizes=(12, 100), held_out=HELD_OUT_SEEDS, gpu: str = "H100", scale: float = 200.0,
              seed: int = 0, horizons=None, held_out_horizon: float = HELD_OUT_HORIZON,
              cpsat_limit_s: float = 10.0, large: int = 1000, large_pool: int = 400,
              workers: int | None = None, progress=None) -> dict:
    t_start = time.perf_counter()
    horizons = horizons or HORIZONS
    out = {"gpu": gpu, "scale": scale, "attainment_target": ATTAINMENT, "workloads": []}
    cases = [(make_workload(n, gpu, seed, scale), False, horizons.get(n, HELD_OUT_HORIZON))
             for n in sizes]
    cases += [(make_held_out(s, gpu), True, held_out_horizon) for s in held_out]
    # the plans in a pool of processes: gslice's and gpulet's each a task of its own (their
    # partition trials are simulations), the other methods of a workload one task (CP-SAT
    # starts from the heuristic's plan); the largest workloads first
    tasks = [(wi, ms) for wi, _ in sorted(enumerate(cases), key=lambda c: -len(c[1][0].models))
             for ms in (("gslice",), ("gpulet",), tuple(m for m in METHODS
                                                        if m not in ("gslice", "gpulet")))]
    got: dict = {}
    left = Counter(wi for wi, _ in tasks)

    def take(wi, result):
        got.update({(wi, row["method"]): (row, plan) for row, plan in result})
        left[wi] -= 1
        if progress and not left[wi]:   # a workload's plans are all made
            progress()
    workers = workers or os.cpu_count() or 1
    args = [(cases[wi][0], ms, gpu, cpsat_limit_s) for wi, ms in tasks]
    if workers > 1:
        with ProcessPoolExecutor(min(workers, len(tasks))) as ex:
            futs = {ex.submit(_plan_methods, a): wi for (wi, _), a in zip(tasks, args)}
            for f in as_completed(futs):
                take(futs[f], f.result())
    else:
        for (wi, _), a in zip(tasks, args):
            take(wi, _plan_methods(a))
    plans = []   # (workload index, row, plan)
    for wi, (w, is_held_out, horizon) in enumerate(cases):
        rows = [got[wi, m][0] for m in METHODS]
        out["workloads"].append({"name": w.source, "held_out": is_held_out,
                                 "models": len(w.models),
                                 "total_rate": round(sum(m.rate for m in w.models), 1),
                                 "horizon_s": horizon, "methods": rows})
        plans.extend((wi, row, got[wi, row["method"]][1]) for row in rows
                     if got[wi, row["method"]][1] is not None)
    t_replay = time.perf_counter()
    # attainment only: each GPU's replay stops at its last deadline (late=False)
    reps = replay_many([(p, cases[wi][0].models, cases[wi][2], seed, None)
                        for wi, _, p in plans], workers, late=False)
    for (wi, row, _), rep in zip(plans, reps):
        row["min_slo_attainment"] = round(rep["min_slo_attainment"], 5)
        row["mean_slo_attainment"] = round(rep["mean_slo_attainment"], 5)
        row["worst_model"] = min(rep["models"], key=lambda m: m["slo_attainment"])["model"]
    out["replay_wall_s"] = round(time.perf_counter() - t_replay, 1)
    for w in out["workloads"]:
        w["headline"] = headline(w)
    if progress:
        progress()
    if large:
        w = make_workload(large, gpu, seed, scale)
        t = time.perf_counter()
        out["large"] = {"models": large, "pool": large_pool}
        try:
            plan = place(w.models, parse_pool(f"{gpu}:{large_pool}"), "heuristic")
            out["large"]["gpus_used"] = plan.gpus_used
        except SpecError as e:  # the pool is too small: say so, keep the rest of the report
            out["large"].update(gpus_used=None, error=str(e))
        out["large"]["solve_time_s"] = round(time.perf_counter() - t, 3)
        if progress:
            progress()
    out["interference"] = interference_errors(gpu)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    return out


def case(name: str, gpu: str = "H100") -> tuple:
    """(workload, replay horizon in s) of the default run's workload ``name``: ``azure-N`` or
    ``held-out-SEED`` (for tools that rerun one of its workloads)."""
    kind, _, num = name.rpartition("-")
    if kind == "azure" and num.isdigit():
        return make_workload(int(num), gpu, 0, 200.0), HORIZONS.get(int(num), HELD_OUT_HORIZON)
    if kind == "held-out" and num.isdigit():
        return make_held_out(int(num), gpu), HELD_OUT_HORIZON
    raise ValueError(f"workload {name!r}: write azure-N or held-out-SEED")


def bench_pool(models, gpu: str = "H100") -> tuple:
    """The pool every method plans in: ``max(4n, 64)`` GPUs for ``n`` models, room enough that
    no method is refused for the pool's size (tools that replan a workload use the same)."""
    return parse_pool(f"{gpu}:{max(4 * len(models), 64)}")


def _plan_methods(args) -> list[tuple[dict, object]]:
    """The plans of ``methods`` (in order) for one workload: [(its JSON row without the replay,
    the plan or None)]."""
    w, methods, gpu, cpsat_limit_s = args
    # a worker runs many tasks: trials cached by another method's task would shorten this
    # one's solve time by luck of scheduling
    attainment_alone.cache_clear()
    n = len(w.models)
    pool = bench_pool(w.models, gpu)
    out, heur = [], None
    for method in methods:
        row = {"method": method}
        out.append((row, None))
        if method == "cpsat" and n > CPSAT_MAX_MODELS:
            row.update(gpus_used=None, skipped=f"more than {CPSAT_MAX_MODELS} models: CP-SAT "
                       "found nothing better than the heuristic's plan in 60 s on 100")
            continue
        try:
            # one CP-SAT thread: the pool's other processes hold the other CPUs
            plan = place(w.models, pool, method, time_limit_s=cpsat_limit_s, start=heur,
                         cpsat_threads=1)
        except SpecError as e:
            row.update(gpus_used=None, error=str(e))
            continue
        if method == "heuristic":
            heur = plan
        if "trial" in plan.notes:
            row["trial"] = plan.notes["trial"]
        row.update(gpus_used=plan.gpus_used, cost_per_hour=round(plan.cost_per_hour, 2),
                   solve_time_s=round(plan.solve_time_s, 4))
        for k in ("budgets", "shares", "replay_policy"):
            if k in plan.notes:
                row[k] = plan.notes[k]
        if plan.optimal is not None:
            row["optimal"] = plan.optimal
            if "status" in plan.notes:  # no CP-SAT solution in time: the hint (heuristic) stands
                row["status"] = plan.notes["status"]
            else:
                row["bound_gpus"] = plan.notes["bound_cost_per_hour"] / pool[0].price_per_hour
        out[-1] = (row, plan)
    return out


def headline(w: dict) -> dict:
    """The heuristic against the best baseline that holds (every model >= ``ATTAINMENT``);
    the same for heuristic-trial under ``trial``."""
    rows = {r["method"]: r for r in w["methods"]}
    holding = [r for m, r in rows.items() if m in BASELINE_METHODS and r.get("gpus_used")
               and r.get("min_slo_attainment", 0.0) >= ATTAINMENT]
    best = min(holding, key=lambda r: (r["gpus_used"], r["method"])) if holding else None
    target = TARGET_RATIO if (w["held_out"] or w["models"] >= 100) else None
    out = {"best_baseline": best and best["method"], "best_baseline_gpus": best and best["gpus_used"],
           "target_ratio": target}
    one = rows.get("one-per-gpu", {}).get("gpus_used")
    for method, into in (("heuristic", out), ("heuristic-trial", out.setdefault("trial", {}))):
        h = rows.get(method, {})
        into.update({"heuristic_gpus": h.get("gpus_used"),
                     "heuristic_holds": h.get("min_slo_attainment", 0.0) >= ATTAINMENT,
                     "ratio": None})
        if one and h.get("gpus_used"):
            into["vs_one_per_gpu"] = round(one / h["gpus_used"], 3)
        if best and h.get("gpus_used"):
            into["ratio"] = round(best["gpus_used"] / h["gpus_used"], 3)
        ratio = into["ratio"]
        into["met"] = bool(into["heuristic_holds"] and (ratio is None or ratio > 1.0) and (
            target is None or ratio is None or ratio >= target))
    return out


def interference_errors(gpu: str) -> dict | None:
    """The shipped fit's errors for ``gpu``: in sample, leave one model out, leave one batch out."""
    try:
        fit = json.loads((WEIGHTS_DIR / f"{gpu}.json").read_text())
    except OSError:
        return None
    if "p99" not in fit:
        return {"note": "a fit of the first version: mean only, no out-of-sample report"}
    out = {"pairs": fit["pairs"], "policy": fit.get("policy"), "margin": fit.get("margin")}
    for target in ("mean", "p99"):
        t = fit[target]
        out[target] = {
            "in_sample_mape": t["in_sample"]["held_out"]["mape"],
            "in_sample_p99_rel_error": t["in_sample"]["held_out"]["p99_rel_error"],
            "no_interference_mape": t["in_sample"]["held_out_if_no_interference"]["mape"],
            "leave_one_model_out_mape": t["leave_one_model_out"]["mape"],
            "leave_one_model_out_p99_rel_error": t["leave_one_model_out"]["p99_rel_error"],
            "leave_one_model_out_no_interference_mape":
                t["leave_one_model_out"]["mape_if_no_interference"],
            "leave_one_batch_out_mape": t["leave_one_batch_out"]["mape"],
            "leave_one_batch_out_p99_rel_error": t["leave_one_batch_out"]["p99_rel_error"]}
    return out


def steps(sizes, held_out, large: int) -> int:
    return len(sizes) + len(held_out) + 1 + (1 if large else 0)


def print_usher(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    for w in res["workloads"]:
        hl = w["headline"]
        t = Table(title=f"gpusched bench usher: {w['name']} ({w['models']} models, "
                  f"{w['total_rate']:g} req/s, {'held out' if w['held_out'] else 'in sample'}) "
                  f"on {res['gpu']}, replayed {w['horizon_s']:g} s")
        for c in ("method", "GPUs", "$/h", "lowest SLO met", "worst model", "solve s"):
            t.add_column(c, justify="left" if c in ("method", "worst model") else "right")
        for r in w["methods"]:
            name = r["method"] + ("" if "optimal" not in r else
                                  (" (optimal)" if r["optimal"] else " (not proven)"))
            if r.get("gpus_used") is None:
                t.add_row(name, "-", "-", "-", (r.get("error") or r.get("skipped", ""))[:60], "-")
                continue
            t.add_row(name, str(r["gpus_used"]), f"{r['cost_per_hour']:.2f}",
                      f"{100 * r['min_slo_attainment']:.2f}%", r.get("worst_model", ""),
                      f"{r['solve_time_s']:.3f}")
        con.print(t)
        for method, h in (("heuristic", hl), ("heuristic-trial", hl["trial"])):
            if h["heuristic_gpus"] is None:
                continue
            if hl["best_baseline"]:
                con.print(f"  {method} {h['heuristic_gpus']} GPUs vs {hl['best_baseline']} "
                          f"{hl['best_baseline_gpus']} (the best baseline that holds >= 99%): "
                          f"{h['ratio']:.2f}x; {'met' if h['met'] else 'MISSED'}")
            else:
                con.print(f"  no baseline holds >= 99% on this workload; {method} "
                          f"{'holds' if h['heuristic_holds'] else 'does NOT hold'}")
    if "large" in res:
        lg = res["large"]
        con.print(f"heuristic on {lg['models']} models, {lg['pool']}-GPU pool: "
                  + (f"{lg['gpus_used']} GPUs" if lg["gpus_used"] else lg["error"])
                  + f" in {lg['solve_time_s']:.2f} s")
    ie = res.get("interference")
    if ie and "p99" in ie:
        for target in ("mean", "p99"):
            e = ie[target]
            con.print(f"interference model ({target}): in-sample MAPE "
                      f"{100 * e['in_sample_mape']:.1f}%, leave-one-model-out "
                      f"{100 * e['leave_one_model_out_mape']:.1f}% (p99 error "
                      f"{100 * e['leave_one_model_out_p99_rel_error']:.1f}%; no interference "
                      f"{100 * e['leave_one_model_out_no_interference_mape']:.1f}%), "
                      f"leave-one-batch-out {100 * e['leave_one_batch_out_mape']:.1f}%")
        con.print(f"tail margin added to every pair: {ie['margin']:.3f} (slowdown)")
    con.print(f"wall time {res['wall_s']:.0f} s (replays {res['replay_wall_s']:.0f} s)")
