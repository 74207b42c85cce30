"""Open-loop load on a cluster (``gpusched submit --cluster``): client processes, each a
``ClusterClient``, submit jobs of the placed models by name at the arrival process's times; the
router picks each job's replica. A job is one batch of its replica's size; models are drawn in
proportion to their placed job rates (requests/s over batch).

Each client is a process (``python -m gpusched.cluster.load WORKER-JSON``) printing one JSON
line (counted by ``loadgen.tally``, as ``gpusched submit``'s own clients count); the parent
aggregates per model with ``gpusched submit``'s summary (``loadgen.summarize``):
the one definition of percentiles and SLO attainment (``scheduler_daemon/wire/latency.py``,
docs/protocol.md) on both clocks. Client latency runs from submit to answer (routing and
re-routing included); daemon latency is the serving daemon's ``total_ms``. A job failed with
``DaemonRestarted`` or ``NoReplica``, or never answered, misses by the client's clock only.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time


def placed_models(directory) -> dict[str, dict]:
    """``{model: {"jobs_per_s": x, "slo_ms": s, "live": n}}`` from a directory."""
    out: dict[str, dict] = {}
    for d in directory.daemons:
        for r in d.replicas:
            e = out.setdefault(r.model, {"jobs_per_s": 0.0, "slo_ms": r.slo_ms, "live": 0})
            e["jobs_per_s"] += r.rate / max(1, r.batch)
            e["live"] += int(d.alive)
    return out


def check_models(placed: dict[str, dict], wanted: list[str]) -> list[str]:
    """The models to load (all placed ones by default); ValueError naming the fix."""
    if not placed:
        raise ValueError("nothing is placed on the cluster: place models first ('gpusched "
                         "place MODELS.yaml --cluster')")
    names = wanted or sorted(placed)
    missing = [m for m in names if m not in placed]
    if missing:
        raise ValueError(f"no daemon serves {', '.join(repr(m) for m in missing)} (placed: "
                         f"{', '.join(sorted(placed))}): place it first ('gpusched place "
                         "MODELS.yaml --cluster')")
    dead = [m for m in names if not placed[m]["live"]]
    if dead:
        raise ValueError(f"no live replica of {', '.join(repr(m) for m in dead)}: its daemons "
                         "are down; see 'gpusched cluster status'")
    return names


def run_worker(cfg: dict) -> dict:
    from concurrent.futures import TimeoutError as FutureTimeout

    from client_lib import GpuschedError
    from gpusched.cluster.client import ClusterClient
    from gpusched.cluster.route import NoReplica
    from gpusched.experiments.arrivals import arrival_times
    from gpusched.loadgen import new_row, tally

    rng = random.Random(cfg["seed"])
    with ClusterClient(cfg.get("cluster"), tenant=cfg["tenant"], policy=cfg["route"],
                       window=cfg["window"], seed=cfg["seed"]) as c:
        placed = placed_models(c.directory)
        names = check_models(placed, cfg["models"])
        weights = [placed[m]["jobs_per_s"] for m in names]
        n = max(1, int(cfg["rate"] * cfg["duration"] * 2) + 10)
        times = [t for t in arrival_times(cfg["arrivals"], cfg["rate"], n, cfg["seed"])
                 if t < cfg["duration"]] if cfg["rate"] > 0 else []
        picks = rng.choices(names, weights=weights, k=len(times))
        while (wait := cfg["start_at"] - time.time()) > 0:
            time.sleep(min(wait, 0.05))
        start = time.perf_counter()
        futs = []
        for t, m in zip(times, picks):
            while (d := start + t - time.perf_counter()) > 0:
                time.sleep(min(d, 0.002))
            futs.append((m, c.submit(m)))
        deadline = time.perf_counter() + cfg["drain_s"]
        rows = {m: new_row(m, placed[m]["slo_ms"]) for m in names}
        for m, f in futs:
            try:
                res = f.result(timeout=max(0.0, deadline - time.perf_counter()))
            except (GpuschedError, NoReplica, FutureTimeout) as e:
                tally(rows[m], exc=e)
            else:
                tally(rows[m], res)
        return {"rows": list(rows.values()), "routing": dict(c.stats)}


def run_load(cluster: str | None, models: list[str], clients: int, rate: float,
             duration: float, seed: int = 0, route: str = "expected-completion",
             window: int = 4, arrivals: str = "poisson") -> dict:
    from gpusched.cluster.client import ClusterClient
    from gpusched.loadgen import summarize

    if clients < 1:
        raise ValueError("--clients must be at least 1")
    if rate < 0 or duration <= 0:
        raise ValueError("--rate must be >= 0 and --duration > 0")
    with ClusterClient(cluster, tenant="gpusched-submit") as c:   # check before starting
        placed = placed_models(c.directory)
    names = check_models(placed, models)
    start_at = time.time() + 2.0 + 0.5 * clients
    procs = []
    for i in range(clients):
        cfg = {"cluster": cluster, "tenant": f"load-{i}", "models": names,
               "rate": rate / clients, "duration": duration, "seed": seed * 1000 + i,
               "route": route, "window": window, "arrivals": arrivals, "start_at": start_at,
               "drain_s": 30.0}
        procs.append(subprocess.Popen([sys.executable, "-m", "gpusched.cluster.load",
                                       json.dumps(cfg)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    rows, errors, routing = [], [], {}
    for p in procs:
        out, err = p.communicate(timeout=duration + 120)
        if p.returncode != 0:
            errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
            continue
        res = json.loads(out.strip().splitlines()[-1])
        rows.extend(res["rows"])
        for k, v in res["routing"].items():
            routing[k] = routing.get(k, 0) + v
    if errors and not rows:
        raise ValueError(f"every client failed; first error: {errors[0]}")
    per_model = []
    for m in names:
        mine = [r for r in rows if r["tenant"] == m]
        s = summarize(m, mine)
        s["errors"] = {}
        for r in mine:
            for k, v in r["errors"].items():
                s["errors"][k] = s["errors"].get(k, 0) + v
        per_model.append(s)
    return {"workload": "cluster", "route": route, "clients": clients, "rate": rate,
            "duration": duration, "tenants": per_model, "overall": summarize("overall", rows),
            "routing": routing, "client_errors": errors}


def print_load(res: dict) -> None:
    """``gpusched submit``'s table (both clocks, per model), then the errors and the routing."""
    from rich.console import Console

    from gpusched.report import load_table, print_table
    print_table(load_table(res, title=f"cluster load ({res['route']}): {res['clients']} clients, "
                           f"{res['rate']:g} jobs/s for {res['duration']:g} s (a job is one "
                           "batch; SLO: the placed model's)"))
    con = Console()
    for row in res["tenants"]:
        if row.get("errors"):
            con.print(f"{row['tenant']}: " + ", ".join(f"{k} {v}" for k, v in
                                                        sorted(row["errors"].items())))
    r = res["routing"]
    con.print(f"routing: {r.get('submitted', 0)} jobs, {r.get('resent', 0)} re-routed, "
              f"{r.get('failed_running', 0)} failed on a lost daemon, "
              f"{r.get('unroutable', 0)} with no live replica, "
              f"{r.get('daemons_lost', 0)} daemon loss(es) seen")


if __name__ == "__main__":
    try:
        res = run_worker(json.loads(sys.argv[1]))
    except Exception as e:  # noqa: BLE001 (reported to the parent on stderr, one line)
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(res))
