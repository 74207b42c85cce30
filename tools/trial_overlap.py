"""How much of the Azure trace that ``bench usher``'s replays draw from the baselines' partition
trials also see (gpusched/placement/replay.py ``attainment_alone``): per workload, the share of
the replayed inter-arrival gaps that lie inside the trials' stretch of the trace. Every trial
starts at the same place (``TRIAL_SEED``) and is at most its model's rate x 1 s long, so the
stretch is taken at the workload's largest rate: an upper bound. Also each Azure trace's
coefficient of variation of its gaps.

    .venv/bin/python tools/trial_overlap.py [--seed 0]
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpusched.bench.usher import HELD_OUT_SEEDS  # noqa: E402
from gpusched.experiments.arrivals import parse, trace_gaps  # noqa: E402
from gpusched.placement.replay import TRACE, TRIAL_SEED, TRIAL_TRACE  # noqa: E402
from gpusched.placement.workloads import make_held_out, make_workload  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--seed", type=int, default=0, help="the replays' seed (bench usher --seed)")
args = ap.parse_args()
assert TRIAL_TRACE == TRACE, "the trials draw from another trace: no overlap"
L = len(trace_gaps(parse(TRACE)[1]))
trial = random.Random(TRIAL_SEED).randrange(L)
cases = [(make_workload(12, "H100", args.seed, 200.0), 1.0),
         (make_workload(100, "H100", args.seed, 200.0), 0.5)]
cases += [(make_held_out(s, "H100"), 0.5) for s in HELD_OUT_SEEDS]
for name in ("trace:azure-conv", "trace:azure-code"):   # why not the other trace: burstiness
    g = trace_gaps(parse(name)[1])
    mean = sum(g) / len(g)
    cv = (sum((x - mean) ** 2 for x in g) / len(g)) ** 0.5 / mean
    print(f"trace {name}: {len(g)} gaps, coefficient of variation {cv:.2f}")
for w, horizon in cases:
    span = int(max(m.rate for m in w.models) * 1.0) + 1      # the longest trial, 1 s
    inside = total = 0
    for i, m in enumerate(w.models):
        start = random.Random(args.seed + 7919 * i).randrange(L)   # as replay.tasks_of draws
        n = int(m.rate * horizon)
        inside += sum((start + k - trial) % L < span for k in range(n))
        total += n
    print(f"{w.source}: at most {inside / total:.1%} of {total} replayed gaps in the trials' "
          f"stretch ({span} of {L} gaps)")
