"""A probe for the next round (issue 15): what Paella's one-kernel-per-job rule costs at this
daemon's host costs, against letting a job keep K kernels on its own stream (fewer notices in
the critical path, coarser preemption). Not a product policy: a measurement.

    python tools/run_ahead.py [--k 4] [--gpu T4] [--jobs 1000] [--rates 189,566,943,1310]

Same arrival draw (Paella's mix, log-normal sigma 2, seed 0) and the default host costs of the
GPU preset (T4: launch 4.5 us, notice 12 us, rpc 175 us, poll 20 us), each policy paying its
family's; prints achieved jobs/s, p50, p99 and
SLO attainment per rate.
"""
from __future__ import annotations

import argparse

from gpusched.experiments.clients import PAELLA_CAPS
from gpusched.experiments.host import default_costs
from gpusched.experiments.mixes import mix as make_mix
from gpusched.experiments.runner import Scenario, make_arrivals, run_point, scaled
from scheduler_daemon.core import policies
from scheduler_daemon.core.gpu_specs import gpu_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=4, help="kernels one job may have outstanding")
    ap.add_argument("--gpu", default="T4")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rates", default="189,566,943,1310", help="offered jobs/s")
    args = ap.parse_args()

    class SrptK(policies.ALL_POLICIES["srpt"]):
        per_job_outstanding = args.k
        stream = "job"     # a job's kernels depend on each other: one stream keeps their order

    name = f"srpt-k{args.k}"
    policies.ALL_POLICIES[name] = SrptK
    mix = tuple(make_mix("paella-mix", args.gpu, engine="fused"))
    unit = make_arrivals(mix, "lognormal:2", 1.0, args.jobs, 0)
    costs = default_costs(gpu_spec(args.gpu))   # srpt-k4 pays srpt's: the class's ``host``
    print("| offered jobs/s | policy | achieved jobs/s | p50 ms | p99 ms | SLO met |")
    print("|---:|---|---:|---:|---:|---:|")
    for rate in (float(r) for r in args.rates.split(",")):
        sc = Scenario(args.gpu, mix, scaled(unit, rate), costs=costs, caps=PAELLA_CAPS)
        for p in ("cuda-ms", "srpt", name):
            r = run_point(sc, p)
            print(f"| {rate:g} | {p} | {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | "
                  f"{r['p99_ms']:.1f} | {100 * r['slo_attainment']:.1f}% |")


if __name__ == "__main__":
    main()
