"""Would a less conservative placement model reach issue 16's 1.3x target, and still hold?

The heuristic's model (``placement/fit.py``) is conservative in two terms that were not
calibrated by replays, and in four knobs that were (``placement/knobs.py``):

- the tail margin ``delta`` (``Config.TM``): the 99th percentile of the interference fit's
  leave-one-model-out error, added to the worst neighbour's p99 slowdown;
- the stretch in ``O``: a replica's SM slots count ``occupancy x budget`` (its kernels held up
  to its slowdown budget), not its occupancy alone;
- ``u_max`` (2), ``rho_max`` (0.7), ``queue_factor`` (2), ``o_max`` (0.85).

This tool takes them away, one term at a time, then both, then the knobs loosened on top, plans
each workload with the heuristic as ``bench usher`` does (H100 pool of max(4n, 64)), and
replays every plan as the bench does (arrival seed 0, the bench's horizon, policy ``slo``). A
variant that uses fewer GPUs but breaks an SLO says that term carries weight. Beside each: the
best baseline that held in the stored bench runs and the GPUs the target allows (``floor(best /
1.3)`` on held-out lists and azure-100; one fewer than the best on azure-12). A variant is a
question asked of the replay, not a candidate to ship: none of them is tuned, and the loosened
knobs are round numbers picked before any replay of them. The heuristic's randomised restarts
stop after 0.3 s, so a slower machine may make a different plan.

    python tools/placement_ablation.py [--workloads held-out-301,...] [--workers N] [--json]

By default the workloads are those where the stored runs (docs/results/usher/bench_usher.json
and bench_usher_fresh_seeds.json) record a miss for the heuristic while a baseline held.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STORED = tuple(str(ROOT / "docs/results/usher" / f)
               for f in ("bench_usher.json", "bench_usher_fresh_seeds.json"))

# name: (knob changes, drop the margin, drop the stretch in O). The knobs are loosened on three
# bases: the shipped model (both terms kept), without the margin, without both terms.
LOOSER_KNOBS = {"u_max 3": {"u_max": 3.0}, "rho_max 0.9": {"rho_max": 0.9},
                "queue_factor 1.5": {"queue_factor": 1.5},
                "all four knobs": {"u_max": 3.0, "rho_max": 0.9, "queue_factor": 1.5,
                                   "o_max": 1.0}}
VARIANTS = {
    "shipped": ({}, False, False),
    "no margin": ({}, True, False),
    "no stretch": ({}, False, True),
    "neither": ({}, True, True),
    **{f"{base}, {k}": (v, base != "margin and stretch kept", base == "neither")
       for base in ("margin and stretch kept", "no margin", "neither")
       for k, v in LOOSER_KNOBS.items()},
}


def stored_headlines(paths=STORED) -> dict[str, dict]:
    """Per workload name, its headline row in the stored bench runs (the first file's wins)."""
    out: dict[str, dict] = {}
    for p in paths:
        for w in json.loads(Path(p).read_text(encoding="utf-8"))["workloads"]:
            out.setdefault(w["name"], {**w["headline"], "held_out": w["held_out"],
                                       "models": w["models"]})
    return out


def target_gpus(h: dict) -> int | None:
    """The most GPUs the target allows against the best holding baseline (None: none held)."""
    best = h.get("best_baseline_gpus")
    if not best:
        return None
    ratio = h.get("target_ratio")
    return math.floor(best / ratio + 1e-9) if ratio else best - 1


def loosened_table(models, pool, variant: str):
    """(the configurations per model as ``estimate`` makes them under ``variant``, its knobs)."""
    from gpusched.placement.estimate import estimate
    from gpusched.placement.knobs import DEFAULT
    changes, no_margin, no_stretch = VARIANTS[variant]
    knobs = dataclasses.replace(DEFAULT, **changes)
    return [[dataclasses.replace(
        c, TM=0.0 if no_margin else c.TM,
        # held = occupancy x alpha: dividing by alpha leaves the occupancy alone (the
        # heuristic reads the occupancy only through held)
        occupancy=c.occupancy / c.alpha if no_stretch else c.occupancy) for c in cfgs]
        for cfgs in estimate(models, pool, knobs)], knobs


def loosened_plan(name: str, variant: str):
    """The heuristic's plan for workload ``name`` under ``variant`` (and the workload, horizon)."""
    from gpusched.bench.usher import bench_pool, case
    from gpusched.placement import heuristic
    w, horizon = case(name)
    pool = bench_pool(w.models)
    table, knobs = loosened_table(w.models, pool, variant)
    return heuristic.solve(w.models, table, pool, knobs), w, horizon


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=None,
                    help="comma-separated azure-N / held-out-SEED names (default: the stored "
                         "runs' misses where a baseline held)")
    ap.add_argument("--variants", default=None,
                    help="variant names to run, separated by ';' (they contain commas; default: "
                         "all; --list-variants)")
    ap.add_argument("--list-variants", action="store_true", help="print the variants and exit")
    ap.add_argument("--bench-json", action="append", default=None, metavar="FILE",
                    help="a stored 'bench usher --json' run to read the best baselines from "
                         "(repeatable; default: the two stored under docs/results/usher)")
    ap.add_argument("--workers", type=int, default=None, help="replay processes (default: CPUs)")
    ap.add_argument("--json", action="store_true",
                    help="one JSON line per workload and variant, then one with the summary")
    args = ap.parse_args()
    if args.list_variants:
        for v, (knobs, no_margin, no_stretch) in VARIANTS.items():
            print(f"{v}: margin {'dropped' if no_margin else 'kept'}, stretch "
                  f"{'dropped' if no_stretch else 'kept'}, knobs {knobs or 'as shipped'}")
        return 0
    variants = list(VARIANTS)
    if args.variants:
        variants = [v.strip() for v in args.variants.split(";") if v.strip()]
        bad = [v for v in variants if v not in VARIANTS]
        if bad or not variants:
            print(f"placement_ablation: unknown variant(s) {bad or args.variants!r}: see "
                  "--list-variants", file=sys.stderr)
            return 2
    try:
        heads = stored_headlines(args.bench_json or STORED)
    except (OSError, ValueError, KeyError) as e:
        print(f"placement_ablation: cannot read the stored bench runs ({e}): give files "
              "written by 'gpusched bench usher --json'", file=sys.stderr)
        return 2
    if args.workloads:
        names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    else:
        names = [n for n, h in heads.items() if h.get("best_baseline") and not h["met"]]
    if not names:
        print("placement_ablation: no workloads: give --workloads azure-N,held-out-SEED,...",
              file=sys.stderr)
        return 2
    from gpusched.bench.usher import case
    from gpusched.placement.spec import SpecError
    for n in names:
        try:
            if not case(n)[0].models:
                raise ValueError(f"workload {n!r} has no models: N must be at least 1")
        except ValueError as e:
            print(f"placement_ablation: {e}", file=sys.stderr)
            return 2
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gpusched.placement.replay import replay_many
    t0 = time.perf_counter()
    jobs, rows = [], []
    for n in names:
        for v in variants:
            try:
                plan, w, horizon = loosened_plan(n, v)
            except SpecError as e:   # e.g. a pool too small for the loosened model: say so
                print(f"placement_ablation: {n}, {v}: {e}", file=sys.stderr)
                return 2
            jobs.append((plan, w.models, horizon, 0, "slo"))
            h = heads.get(n, {})
            alone = [g.replicas[0].cfg.alpha for g in plan.gpus if len(g.replicas) == 1]
            rows.append({"workload": n, "variant": v, "gpus": plan.gpus_used,
                         # GPUs holding one replica, and those replicas' slowdown budgets
                         "single_replica_gpus": len(alone),
                         "single_replica_budgets": {f"{a:g}": alone.count(a)
                                                    for a in sorted(set(alone))},
                         "best_baseline": h.get("best_baseline"),
                         "best_baseline_gpus": h.get("best_baseline_gpus"),
                         "target_gpus": target_gpus(h)})
    with Progress("replaying", BarColumn(), MofNCompleteColumn(), "requests",
                  TimeElapsedColumn(), transient=True, disable=args.json) as bar:
        task = bar.add_task("replay", total=None)
        got = replay_many(jobs, args.workers, progress=lambda k: bar.advance(task, k),
                          on_total=lambda k: bar.update(task, total=k), late=False)
    for r, s in zip(rows, got):
        r["min_slo_attainment"] = round(s["min_slo_attainment"], 5)
        r["holds"] = s["min_slo_attainment"] >= 0.99
        r["reaches_target"] = r["target_gpus"] is not None and r["gpus"] <= r["target_gpus"]
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        for n in names:
            head = next(r for r in rows if r["workload"] == n)
            print(f"{n}: best baseline that held {head['best_baseline']} "
                  f"{head['best_baseline_gpus']}, the target allows {head['target_gpus']}")
            for r in (r for r in rows if r["workload"] == n):
                verdict = ("reaches the target and holds" if r["reaches_target"] and r["holds"]
                           else "reaches the target, breaks" if r["reaches_target"]
                           else "holds, short of the target" if r["holds"] else "breaks")
                print(f"  {r['variant']:<34} {r['gpus']:3d} GPUs  lowest "
                      f"{100 * r['min_slo_attainment']:6.2f}%  {verdict}")
    summary = {"plans": len(rows), "hold": sum(r["holds"] for r in rows),
               "reach_target": sum(r["reaches_target"] for r in rows),
               "both": sum(r["reaches_target"] and r["holds"] for r in rows),
               "wall_s": round(time.perf_counter() - t0, 1)}
    if args.json:   # the last line: the run as a whole
        print(json.dumps({"summary": summary}))
    print(f"# {summary['plans']} plans, {summary['hold']} hold (>= 99%), {summary['reach_target']} "
          f"reach the target, {summary['both']} both; {summary['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
