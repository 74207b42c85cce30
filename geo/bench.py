"""``gpusched bench geo``: CP-SAT vs decomposed vs the baselines on instances built from the
measured cloud regions (geo/instances.py), each against a proven upper bound (geo/bound.py:
``gap_to_bound``), on the bench instances, a seed sweep and held-out specs; re-plan after a
site failure, the placement of an arriving job, and the plan invariants over random event
steps (geo/invariants.py). Objective: weighted throughput, serving jobs first. Timings are wall
seconds on this machine.
"""
from __future__ import annotations

import logging
import statistics
import time
from contextlib import nullcontext

from geo.bound import throughput_bound
from geo.candidates import Model
from geo.instances import held_out_spec, make_instance
from geo.planner import plan
from geo.protocol import Event
from geo.replan import apply_event, initial_plan, place_arrival, replan

log = logging.getLogger("geo.bench")

DEFAULT_SIZES = ((50, 10), (200, 20), (1000, 50), (10000, 50))
QUICK_SIZES = ((30, 6), (100, 10), (1000, 50))
# the gap sweep: more seeds at <= 200 jobs, CP-SAT vs decomposed (seed = 2, 3, ...)
SWEEP_SIZES = ((30, 6), (40, 7), (50, 8), (60, 9), (80, 10), (100, 10), (120, 12), (150, 15),
               (200, 20))
METHODS = ("cpsat", "decomposed", "greedy", "single-region")
# held-out specs (geo/instances.py held_out_spec): seeds no development run used; the shapes
# (jobs, sites, load, multi-site and budget shares, fleet budget) are drawn from them too
HELD_OUT_SEEDS = tuple(range(771_301, 771_313))
HELD_OUT_CPSAT_S = 10.0  # CP-SAT's time limit on them (a reference, up to 200 jobs)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            j, s = part.lower().split("x")
            out.append((int(j), int(s)))
        except ValueError:
            raise ValueError(f"bad size {part!r}: use JOBSxSITES, e.g. 200x20") from None
        if out[-1][0] < 1 or not 1 <= out[-1][1] <= 60:
            raise ValueError(f"bad size {part!r}: at least 1 job and 1 to 60 sites")
    return out


def served(spec, p) -> float:
    """Priority of the jobs a plan starts now (what every planner maximises first)."""
    pri = {j.name: j.priority for j in spec.jobs}
    return sum(pri[j.name] for j in p.jobs if j.running)


LEVELS_MAX_JOBS = 2000  # above: one LP (the most served); plans serving less get U at sigma 0


def bound_for(model: Model, plans: list, time_limit_s: float | None):
    """The proven bound (geo/bound.py) at the most priority any of ``plans`` serves, W; up to
    LEVELS_MAX_JOBS jobs also at each smaller level a plan serves (``b.levels``)."""
    from geo.bound import columns

    cols = columns(model)
    levels = sorted({served(model.spec, p) for p in plans}, reverse=True)
    W = levels[0]
    b = throughput_bound(model, served=W, time_limit_s=time_limit_s, plans=tuple(plans),
                         cols=cols)
    b.levels = {W: b.value}
    if len(model.spec.jobs) <= LEVELS_MAX_JOBS:
        for w in levels[1:]:
            b.levels[w] = throughput_bound(model, served=w, time_limit_s=time_limit_s,
                                           plans=tuple(plans), cols=cols).value
    return b, W


def gap_to_bound(spec, p, b, W) -> tuple[float | None, float]:
    """(gap, the bound it is measured against): (U - objective) / U, U the bound over the plans
    that serve at least as much priority as ``p`` (``b.levels``), else (a plan that serves less
    than W, above LEVELS_MAX_JOBS jobs) the bound over every plan, whatever it serves."""
    w = served(spec, p)
    ref = b.levels.get(w, b.value if w >= W - 1e-9 else b.any_served)
    return (round((ref - p.objective_value) / ref, 5) if ref > 0 else None), ref


def _case(p, jobs, sites, method, cpsat_obj, spec=None, b=None, W=None):
    gap = p.gap if method == "cpsat" else (
        None if cpsat_obj is None else round((cpsat_obj - p.objective_value) / cpsat_obj, 5))
    out = {"jobs": jobs, "sites": sites, "method": method,
           "solve_time_s": round(p.solve_time_s, 4),
           "objective": round(p.objective_value, 3), "gap": gap,
           "max_demand_supply": round(p.max_demand_supply, 3),
           "cost_per_hour": round(p.cost_per_hour, 1), "makespan_h": round(p.makespan_h, 2),
           "status": p.status, "running": sum(1 for j in p.jobs if j.running)}
    if b is not None:
        g, ref = gap_to_bound(spec, p, b, W)
        out.update(gap_to_bound=g, bound=round(ref, 3), bound_lp_optimal=b.optimal,
                   served=served(spec, p), served_max=W)
    return out


def _replan_case(n_jobs: int, n_sites: int, seed: int) -> dict:
    spec = make_instance(n_jobs, n_sites, seed=seed)
    initial_plan(spec, "throughput", "decomposed")
    gpus: dict[str, int] = {}
    for j in spec.jobs:
        for s, ts in (j.running or {}).items():
            gpus[s] = gpus.get(s, 0) + sum(ts.values())
    down = max(gpus, key=gpus.get)
    victims = {j.name for j in spec.jobs if j.running and down in j.running}
    t0 = time.perf_counter()
    reason = apply_event(spec, Event("site-down", site=down), {})
    p, diff = replan(spec, "throughput", reason, improve=False)
    dt = time.perf_counter() - t0
    moved = {d.job for d in diff if d.change in ("moved", "stopped")}
    return {"jobs": n_jobs, "sites": n_sites, "failed_site": down, "replan_s": round(dt, 4),
            "jobs_on_failed_site": len(victims), "moved": sum(d.change == "moved" for d in diff),
            "stopped": sum(d.change == "stopped" for d in diff),
            "resized_in_place": sum(d.change == "resized" for d in diff),
            "moved_from_elsewhere": len(moved - victims)}


def _arrival_case(n_jobs: int, n_sites: int, seed: int, arrivals: int = 50) -> dict:
    """Place jobs one by one into a running fleet with 10% of its jobs just finished."""
    spec = make_instance(n_jobs + arrivals, n_sites, seed=seed)
    late = spec.jobs[n_jobs:]
    spec.jobs = spec.jobs[:n_jobs]
    initial_plan(spec, "throughput", "decomposed")
    spec.jobs = spec.jobs[n_jobs // 10:]  # finished: their GPUs are free
    model = Model(spec)
    times, placed = [], 0
    for job in late:
        spec.jobs.append(job)
        t0 = time.perf_counter()
        c, _ = place_arrival(model, job, "throughput")
        times.append(time.perf_counter() - t0)
        placed += c is not None
    times.sort()
    return {"running_jobs": len(spec.jobs) - arrivals, "sites": n_sites, "arrivals": arrivals,
            "placed": placed, "median_ms": round(statistics.median(times) * 1e3, 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3, 3),
            "max_ms": round(times[-1] * 1e3, 3)}


def _service_arrival_case(n_jobs: int, n_sites: int, seed: int, arrivals: int = 50) -> dict:
    """The same arrivals as ``_arrival_case``, submitted to a running geo service over its
    ZeroMQ socket: each timing is the client's round trip (decode, checks, placement, the
    state on disk, the whole plan in the answer). ``path`` per answer: "arrival" (fast path)
    or "replan" (the job did not fit in the free GPUs, or others wait where it would go)."""
    import gc
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    from geo.replan import replan as _replan
    from geo.service import GeoClient
    from geo.state import GeoState, save_state

    spec = make_instance(n_jobs + arrivals, n_sites, seed=seed)
    late = spec.jobs[n_jobs:]
    spec.jobs = spec.jobs[:n_jobs]
    initial_plan(spec, "throughput", "decomposed")
    spec.jobs = spec.jobs[n_jobs // 10:]  # finished: their GPUs are free
    plan, diff = _replan(spec, "throughput", f"{n_jobs // 10} jobs finished", improve=False)
    folder = tempfile.mkdtemp(prefix="geo-bench-")
    proc = None
    try:
        path = os.path.join(folder, "state.json")
        save_state(GeoState(spec=spec, objective="throughput", solver="decomposed", plan=plan,
                            diff=diff), path)
        ep = f"ipc://{folder}/geo.sock"
        # the service in its own process, as it runs (`gpusched geo serve`)
        proc = subprocess.Popen([sys.executable, "-m", "gpusched.cli", "--log-level", "WARNING",
                                 "geo", "serve", "--endpoint", ep, "--state", path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not os.path.exists(f"{folder}/geo.sock"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("geo bench: the geo service did not start")
            time.sleep(0.02)
        times: dict[str, list[float]] = {"arrival": [], "replan": []}
        placed = 0
        gc.collect()
        gc.freeze()  # this process's instances are long-lived: no full collection mid-timing
        with GeoClient(ep, timeout_s=60) as c:
            c.status()  # connected
            for job in late:
                t0 = time.perf_counter()
                r = c.submit(job)
                times.setdefault(r.path, []).append(time.perf_counter() - t0)
                jp = r.plan.job(job.name)
                placed += bool(jp.sites) and jp.start_h == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)

    def stats(v):
        if not v:
            return {"n": 0}
        v = sorted(v)
        return {"n": len(v), "median_ms": round(statistics.median(v) * 1e3, 3),
                "p99_ms": round(v[min(len(v) - 1, int(len(v) * 0.99))] * 1e3, 3),
                "max_ms": round(v[-1] * 1e3, 3)}
    return {"running_jobs": len(spec.jobs), "sites": n_sites, "arrivals": arrivals,
            "placed_now": placed, "fast_path": stats(times["arrival"]),
            "replan": stats(times["replan"])}


def _sweep_case(n_jobs: int, n_sites: int, seed: int, time_limit_s: float) -> dict:
    """CP-SAT and decomposed on one more seed: ``gap`` against CP-SAT where it proves its
    optimum (over its pruned, warm-started candidates: a reference, not a bound), and
    ``gap_to_bound`` against the proven bound of geo/bound.py."""
    spec = make_instance(n_jobs, n_sites, seed=seed, time_limit_s=time_limit_s)
    model = Model(spec)
    exact = plan(spec, "throughput", "cpsat", model=model, time_limit_s=time_limit_s)
    fast = plan(spec, "throughput", "decomposed", model=model)
    gap = round((exact.objective_value - fast.objective_value) / exact.objective_value, 5) \
        if exact.status == "optimal" else None
    b, W = bound_for(model, [exact, fast], None)
    return {"jobs": n_jobs, "sites": n_sites, "seed": seed, "cpsat_status": exact.status,
            "cpsat_s": round(exact.solve_time_s, 3),
            "cpsat_objective": round(exact.objective_value, 3),
            "decomposed_s": round(fast.solve_time_s, 4),
            "decomposed_objective": round(fast.objective_value, 3), "gap": gap,
            "bound": round(b.value, 3), "bound_lp_optimal": b.optimal,
            "gap_to_bound": gap_to_bound(spec, fast, b, W)[0],
            "cpsat_gap_to_bound": gap_to_bound(spec, exact, b, W)[0],
            "max_demand_supply": [round(exact.max_demand_supply, 3),
                                  round(fast.max_demand_supply, 3)]}


def _held_out_case(seed: int, time_limit_s: float, cpsat_max_jobs: int) -> dict:
    """One held-out spec (geo/instances.py ``held_out_spec``): every method, the bound, and
    each method's gap to it."""
    spec, shape = held_out_spec(seed, time_limit_s=time_limit_s)
    model = Model(spec)
    plans = {}
    for method in METHODS:
        if method == "cpsat" and len(spec.jobs) > cpsat_max_jobs:
            continue
        plans[method] = plan(spec, "throughput", method, model=model, time_limit_s=time_limit_s)
    b, W = bound_for(model, list(plans.values()), None)
    rows = []
    for method, p in plans.items():
        g, ref = gap_to_bound(spec, p, b, W)
        rows.append({"method": method, "objective": round(p.objective_value, 3),
                     "served": served(spec, p), "running": sum(1 for j in p.jobs if j.running),
                     "solve_time_s": round(p.solve_time_s, 4), "gap_to_bound": g,
                     "status": p.status, "cost_per_hour": round(p.cost_per_hour, 1)})
    return {"seed": seed, **shape, "held_out": True, "bound": round(b.value, 3),
            "bound_lp_optimal": b.optimal, "served_max": W, "methods": rows}


def _invariant_case(steps: int, seed: int = 0) -> dict:
    """``steps`` random events over random fleets, the plan invariants checked after each
    (geo/invariants.py), the four solvers in turn for the plan each fleet starts from."""
    from geo.invariants import run_steps

    done, bad, by, k = 0, [], {}, 0
    per = 25
    while done < steps:
        solver = METHODS[k % len(METHODS)]
        try:
            n, b = run_steps(seed + k, min(per, steps - done), solver)
        except Exception as e:  # a crash is a broken invariant too: said, not fatal
            n, b = 0, [f"{seed + k}/{solver}: {type(e).__name__}: {e}"]
        done += n
        bad += b
        by[solver] = by.get(solver, 0) + n
        k += 1
        if n == 0 and k > 10 * (steps // per + 1):
            break  # every request refused: do not spin
    return {"steps": done, "fleets": k, "steps_by_solver": by, "violations": len(bad),
            "first_violations": bad[:10]}


def run_bench(quick: bool = False, sizes: str | None = None, cpsat_max_jobs: int = 200,
              time_limit_s: float = 30.0, seed: int = 1, progress: bool = True,
              sweep: int | None = None, held_out: int | None = None,
              invariant_steps: int | None = None, bound_time_s: float | None = 600.0) -> dict:
    todo = parse_sizes(sizes) if sizes else list(QUICK_SIZES if quick else DEFAULT_SIZES)
    sweep = (3 if quick else len(SWEEP_SIZES)) if sweep is None else sweep
    sweep_todo = [(j, n, seed + 1 + k) for k, (j, n) in enumerate(SWEEP_SIZES[:sweep])]
    held_out = (3 if quick else len(HELD_OUT_SEEDS)) if held_out is None else held_out
    held_todo = HELD_OUT_SEEDS[:held_out]
    invariant_steps = (500 if quick else 10_000) if invariant_steps is None else invariant_steps
    steps = sum(len(METHODS) if j <= cpsat_max_jobs else len(METHODS) - 1 for j, _ in todo) + 3 \
        + len(sweep_todo) + len(todo) + len(held_todo) + (1 if invariant_steps else 0)
    cases, bounds = [], []
    if progress:
        from rich.progress import Progress
        bar = Progress(transient=True)
    else:
        bar = nullcontext()
    with bar as pr:
        task = pr.add_task("geo bench", total=steps) if progress else None

        def tick(what):
            if progress:
                pr.update(task, advance=1, description=what)

        for n_jobs, n_sites in todo:
            spec = make_instance(n_jobs, n_sites, seed=seed, time_limit_s=time_limit_s)
            model = Model(spec)
            cpsat_obj = None
            plans = {}
            for method in METHODS:
                if method == "cpsat" and n_jobs > cpsat_max_jobs:
                    continue
                p = plan(spec, "throughput", method, model=model, time_limit_s=time_limit_s)
                if method == "cpsat" and p.status == "optimal":
                    cpsat_obj = p.objective_value
                plans[method] = p
                log.info("geo: bench %dx%d %s %.3fs", n_jobs, n_sites, method, p.solve_time_s)
                tick(f"{n_jobs}x{n_sites} {method}")
            b, W = bound_for(model, list(plans.values()), bound_time_s)
            tick(f"{n_jobs}x{n_sites} bound")
            for method, p in plans.items():
                cases.append(_case(p, n_jobs, n_sites, method, cpsat_obj, spec, b, W))
            bounds.append({"jobs": n_jobs, "sites": n_sites, "bound": round(b.value, 3),
                           "any_served": round(b.any_served, 3), "served_max": W,
                           "lp_optimal": b.optimal, "rounds": b.rounds,
                           "candidates": b.candidates, "columns": b.columns,
                           "seconds": round(b.seconds, 1)})
        gap_sweep = []
        for j, n, sd in sweep_todo:
            gap_sweep.append(_sweep_case(j, n, sd, time_limit_s))
            tick(f"sweep {j}x{n} seed {sd}")
        held = []
        for sd in held_todo:
            held.append(_held_out_case(sd, min(time_limit_s, HELD_OUT_CPSAT_S), cpsat_max_jobs))
            tick(f"held-out seed {sd}")
        invariants = _invariant_case(invariant_steps) if invariant_steps else None
        if invariant_steps:
            tick("invariants")
        rp = (200, 20) if quick else (1000, 50)
        replan_case = _replan_case(*rp, seed)
        tick("re-plan")
        arrival = _arrival_case(*rp, seed)
        tick("arrivals")
        service_arrival = _service_arrival_case(*rp, seed)
        tick("service arrivals")
    return {"cases": cases, "bounds": bounds, "replan": replan_case, "arrival": arrival,
            "service_arrival": service_arrival, "gap_sweep": gap_sweep,
            "held_out": held, "held_out_summary": _held_summary(held),
            "invariants": invariants, "objective": "throughput", "seed": seed,
            "cpsat_time_limit_s": time_limit_s}


def _held_summary(held: list[dict]) -> dict:
    """Per method over the held-out specs: how many, the median and largest gap to the bound,
    and how many are above 2%."""
    out = {}
    for h in held:
        for r in h["methods"]:
            if r["gap_to_bound"] is not None:
                out.setdefault(r["method"], []).append(r["gap_to_bound"])
    return {m: {"specs": len(v), "median_gap_to_bound": round(statistics.median(v), 5),
                "max_gap_to_bound": max(v), "above_2pct": sum(g > 0.02 for g in v)}
            for m, v in out.items()}
