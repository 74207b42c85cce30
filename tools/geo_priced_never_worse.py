"""decomposed with and without step 4 (the packing at the LP's prices) on random fleets
(``geo.invariants.random_spec``): how many plans step 4 makes worse and better by (priority
served, objective). The figure docs/geo.md quotes: ``tools/geo_priced_never_worse.py 1000``.
"""
import argparse
import logging
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from geo import decomposed  # noqa: E402
from geo.bench import served  # noqa: E402
from geo.invariants import random_spec  # noqa: E402
from geo.planner import plan  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("fleets", type=int, help="random fleets: random_spec seeds 0..N-1")
args = ap.parse_args()
logging.disable(logging.WARNING)
worse, better = [], 0
for seed in range(args.fleets):
    got = []
    for cap in (1, decomposed.PRICED_MAX_JOBS):   # a cap of 1 job: step 4 never runs
        spec = random_spec(random.Random(seed))
        decomposed.PRICED_MAX_JOBS = cap
        p = plan(spec, "throughput", "decomposed")
        got.append((served(spec, p), round(p.objective_value, 9)))
    decomposed.PRICED_MAX_JOBS = cap
    if got[1] < got[0]:
        worse.append((seed, *got))
    better += got[1] > got[0]
print(f"{args.fleets} fleets: step 4 worse on {len(worse)}, better on {better}")
for w in worse:
    print("  worse: seed %d, without %s, with %s" % w)
