"""decomposed's gap to the proven bound (geo/bound.py) on held-out specs (geo/instances.py
``held_out_spec``) from the seeds given, decomposed alone (its gap is taken against the bound
at the priority it serves, as in ``gpusched bench geo``).

    .venv/bin/python tools/geo_held_out_gaps.py [--no-priced] OUT.json SEED...
"""
import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from geo import decomposed  # noqa: E402
from geo.bench import bound_for, gap_to_bound, served  # noqa: E402
from geo.candidates import Model  # noqa: E402
from geo.instances import held_out_spec  # noqa: E402
from geo.planner import plan  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("out", help="JSON file to write: per seed its gap, objective, bound, time, shape")
ap.add_argument("seeds", nargs="+", type=int, help="held-out spec seeds")
ap.add_argument("--no-priced", action="store_true",
                help="without step 4 (the packing at the LP's prices): decomposed as before it")
args = ap.parse_args()
if args.no_priced:
    decomposed.PRICED_MAX_JOBS = 1   # step 4 runs on plans of 2 jobs or more
logging.disable(logging.WARNING)
out = {}
for sd in args.seeds:
    spec, shape = held_out_spec(sd, time_limit_s=10)
    model = Model(spec)
    t = time.time()
    p = plan(spec, "throughput", "decomposed", model=model)
    dt = time.time() - t
    b, W = bound_for(model, [p], None)
    g, ref = gap_to_bound(spec, p, b, W)
    out[sd] = dict(gap=g, obj=round(p.objective_value, 3), served=served(spec, p),
                   bound=round(ref, 3), s=round(dt, 2), **shape)
    print(sd, out[sd], flush=True)
with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
