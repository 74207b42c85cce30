"""How often would a GPU that heuristic-trial accepted on one trial draw pass another draw?

heuristic-trial (``placement/trial.py``) accepts a GPU when one 1-s trial of it (arrival seed
``replay.TRIAL_SEED``) holds every model at >= 99%. That trial is one sample of a bursty
process. This tool makes heuristic-trial's plan for each workload as ``bench usher`` does,
then tries each GPU it accepted on ``--draws`` further independent draws (other arrival seeds,
same horizon) and prints the share of draws that held, beside that GPU's lowest attainment in
the bench's replay (seed 0, the bench's horizon): a GPU that holds on few draws is a GPU the
replay (one more draw) may break. GPUs are numbered as in the plan.

    python tools/trial_draws.py [--held-out 101,102,...] [--draws 6] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DRAW_SEED = 7_000_003   # draw k's arrival seed: TRIAL_SEED + DRAW_SEED * (k + 1)


def window_rates(width: int = 1000) -> tuple[float, float, float, float]:
    """The trace's local rate over ``width`` consecutive gaps (a second of arrivals at
    ~1,000 req/s), relative to its mean, over windows starting every 97 gaps: (min, 5th
    percentile, 95th percentile, max)."""
    from gpusched.experiments.arrivals import parse, trace_gaps
    from gpusched.placement.replay import TRIAL_TRACE
    gaps = trace_gaps(parse(TRIAL_TRACE)[1])
    n, mean = len(gaps), sum(gaps) / len(gaps)
    r = sorted(mean * width / sum(gaps[(s + i) % n] for i in range(width))
               for s in range(0, n, 97))
    return r[0], r[len(r) // 20], r[-1 - len(r) // 20], r[-1]


def _plan(name: str):
    """(name, [(GPU index in the plan, GPU, its lowest attainment in the bench's replay)] of
    the GPUs a trial accepted)."""
    from gpusched.bench.usher import _plan_methods, case
    from gpusched.placement.replay import _simulate_gpu, score, tasks_of
    w, horizon = case(name)
    (_, plan), = _plan_methods((w, ("heuristic-trial",), "H100", 10.0))
    tasks = tasks_of(plan, w.models, horizon, 0)     # one per GPU that has requests: all here
    assert len(tasks) == len(plan.gpus), "a GPU of the plan got no requests"
    out = []
    for i, (g, task) in enumerate(zip(plan.gpus, tasks)):
        if g.trial is None:
            continue
        lat = _simulate_gpu(task, lambda n: None, late=False)
        here = tuple(m for m in w.models if lat.get(m.name))
        out.append((i, g, score(here, lat, horizon, "slo")["min_slo_attainment"]))
    return name, out


def _draw(args) -> float:
    name, (_, g, _), k = args
    from gpusched.placement.replay import TRIAL_SEED, attainment_together
    from gpusched.placement.trial import TRIAL_HORIZON_S
    from gpusched.bench.usher import case
    return attainment_together(g, case(name)[0].models, TRIAL_HORIZON_S,
                               seed=TRIAL_SEED + DRAW_SEED * (k + 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--held-out", default="101,102,103,201,202,203,301,302,303,401,402,403",
                    help="held-out seeds (comma-separated); azure-12 and azure-100 always run")
    ap.add_argument("--draws", type=int, default=6, help="further draws per accepted GPU")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON line per accepted GPU")
    args = ap.parse_args()
    try:
        names = ["azure-12", "azure-100"] + [f"held-out-{int(s)}" for s in
                                             args.held_out.split(",") if s.strip()]
    except ValueError:
        print(f"trial_draws: --held-out {args.held_out!r}: give seeds like 101,102",
              file=sys.stderr)
        return 2
    from gpusched.placement.replay import TRIAL_ATTAINMENT
    if args.draws < 1:
        print("trial_draws: --draws must be at least 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as ex:
        plans = dict(ex.map(_plan, names))
        tasks = [(n, g, k) for n in names for g in plans[n] for k in range(args.draws)]
        got = list(ex.map(_draw, tasks))
    rows, i = [], 0
    for n in names:
        for gi, g, replayed in plans[n]:
            draws = got[i:i + args.draws]
            i += args.draws
            rows.append({"workload": n, "gpu": gi, "replicas": len(g.replicas),
                         "U": round(g.U, 3), "trial": round(g.trial, 5),
                         "draws": [round(x, 5) for x in draws],
                         "held": sum(x >= TRIAL_ATTAINMENT for x in draws),
                         "replay": round(replayed, 5)})
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        for r in rows:
            print(f"{r['workload']:>14} GPU {r['gpu']:2d}  {r['replicas']:2d} replicas  "
                  f"U {r['U']:.2f}  held {r['held']}/{args.draws}  lowest "
                  f"{100 * min(r['draws']):.1f}%  bench replay {100 * r['replay']:.2f}%")
    total = sum(r["held"] for r in rows)
    print(f"# {len(rows)} accepted GPUs, {total} of {len(rows) * args.draws} further draws "
          f"held (>= {100 * TRIAL_ATTAINMENT:g}%); GPUs that held on every draw: "
          f"{sum(r['held'] == args.draws for r in rows)}; {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    lo, p5, p95, hi = window_rates()
    print(f"# the trace's rate over 1,000 consecutive gaps, relative to its mean: min {lo:.2f}, "
          f"5th percentile {p5:.2f}, 95th {p95:.2f}, max {hi:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
