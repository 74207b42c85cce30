"""``gpusched submit``: the open-loop load generator over a built-in workload."""
from __future__ import annotations

import json
import sys

from gpusched.cli import choices
from gpusched.cli.common import add_endpoint


def add_parser(sub) -> None:
    s = sub.add_parser("submit", help="open-loop load generator over a built-in workload")
    add_endpoint(s)
    s.add_argument("--workload", default="mixed", choices=choices.WORKLOADS,
                   help="built-in workload: its tenants, kernels and SLOs")
    s.add_argument("--clients", type=int, default=3, help="client processes (tenants round-robin)")
    s.add_argument("--rate", type=float, default=60.0, help="total arrivals per second")
    s.add_argument("--duration", type=float, default=5.0, help="seconds of arrivals")
    s.add_argument("--seed", type=int, default=0, help="random seed of the arrivals")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--cluster", nargs="?", const="", metavar="FILE",
                   help="submit the models placed on a cluster by name instead (a router picks "
                   "each job's replica); FILE: its cluster file (default: the one 'gpusched "
                   "cluster up' wrote). --workload and --endpoint do not apply")
    s.add_argument("--route", default="expected-completion", choices=choices.ROUTE_POLICIES,
                   help="--cluster: how the router picks a replica")
    s.add_argument("--models", help="--cluster: comma-separated placed models (default: all, "
                   "in proportion to their placed job rates)")
    s.add_argument("--arrivals", default="poisson",
                   help="--cluster: poisson, lognormal:SIGMA or trace:azure-conv|azure-code|PATH")


def run(args) -> int:
    if args.cluster is not None:
        return _cluster(args)
    from client_lib._common import unreachable
    from gpusched.cli.common import UsageError
    from gpusched.cli.interrupt import note
    from gpusched.loadgen import run_load
    from gpusched.report import load_table, print_table
    from scheduler_daemon.transport.sockets import default_endpoint

    endpoint = args.endpoint or default_endpoint()
    why = unreachable(endpoint)   # before starting client processes: no daemon, say so now
    if why:
        raise UsageError(f"no daemon at {endpoint}: {why}. Start one with 'gpusched daemon' or "
                         "pass the endpoint it serves (--endpoint, GPUSCHED_ENDPOINT)")
    note(f"{args.clients} client processes submitting '{args.workload}' for {args.duration:g}s",
         "no summary; the clients were stopped and the daemon cancels their unfinished jobs")
    res = run_load(endpoint, args.workload, args.clients, args.rate, args.duration, args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(load_table(res))
        for e in res["client_errors"]:
            print(f"client error: {e}", file=sys.stderr)
    return 0 if not res["client_errors"] else 1


def _cluster(args) -> int:
    from gpusched.cluster.load import print_load, run_load

    res = run_load(args.cluster or None, [m for m in (args.models or "").split(",") if m],
                   args.clients, args.rate, args.duration, args.seed, args.route,
                   arrivals=args.arrivals)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_load(res)
        for e in res["client_errors"]:
            print(f"client error: {e}", file=sys.stderr)
    return 0 if not res["client_errors"] else 1

