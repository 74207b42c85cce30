"""Compare heuristic-trial's rules for where a closed GPU's replicas go, on the seeds already
read (the comparison that chose the rule; docs/placement.md):

- ``both`` (the rule): all onto one GPU, spread over several if that trial fails;
- ``spread``: each replica onto the least busy GPU (a trial per GPU that took one);
- ``one``: all onto one GPU, nothing else.

For each workload: the heuristic's GPUs, heuristic-trial's under each rule, the trials' stop
and the lowest per-model SLO attainment when the plan is replayed (bench usher's horizons and
seed). Workloads run in a pool of processes, one process per rule.

    python tools/trial_rules.py [--rules both,spread,one] [--held-out 101,102,...] [--json]
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

READ_SEEDS = (101, 102, 103, 201, 202, 203, 301, 302, 303)


def _run(args) -> dict:
    name, rule = args
    from gpusched.placement import trial
    from gpusched.placement.replay import replay
    from gpusched.placement.solvers import place
    from gpusched.bench.usher import bench_pool, case
    if rule == "spread":
        trial._onto_one = lambda *a: None
    elif rule == "one":
        trial._spread = lambda *a: None
    w, horizon = case(name)
    pool = bench_pool(w.models)
    t = time.perf_counter()
    heur = place(w.models, pool, "heuristic")
    plan = place(w.models, pool, "heuristic-trial", start=heur)
    rep = replay(plan, w.models, horizon, 0, workers=1)
    return {"workload": name, "rule": rule, "heuristic_gpus": heur.gpus_used,
            "gpus": plan.gpus_used, **plan.notes["trial"],
            "min_slo_attainment": round(rep["min_slo_attainment"], 5),
            "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default="both,spread,one", help="comma-separated: both, spread, one")
    ap.add_argument("--held-out", default=",".join(map(str, READ_SEEDS)),
                    help="held-out seeds besides azure-12 and azure-100")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args()
    rules = [r for r in args.rules.split(",") if r]
    if not set(rules) <= {"both", "spread", "one"}:
        ap.error(f"--rules {args.rules!r}: choose from both, spread, one")
    try:
        seeds = [int(s) for s in args.held_out.split(",") if s]
    except ValueError:
        ap.error(f"--held-out {args.held_out!r}: give seeds like 101,102")
    names = ["azure-12", "azure-100"] + [f"held-out-{s}" for s in seeds]
    total = {r: 0 for r in rules}
    # one pool per rule: a rule patches its worker's trial module
    for rule in rules:
        with ProcessPoolExecutor(2) as ex:
            for row in ex.map(_run, [(n, rule) for n in names]):
                total[rule] += row["gpus"]
                print(json.dumps(row) if args.json else
                      f"{row['workload']:>14} {rule:>6}: heuristic {row['heuristic_gpus']:>3}, "
                      f"trial {row['gpus']:>3} ({row['closed']} closed in {row['trials']} trials: "
                      f"{row['stopped']}), replay {100 * row['min_slo_attainment']:.2f}%",
                      flush=True)
    print(json.dumps({"total_gpus": total}) if args.json else f"GPUs in all: {total}")


if __name__ == "__main__":
    main()
