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


def run(args) -> int:
    from gpusched.loadgen import run_load
    from gpusched.report import load_table, print_table
    from scheduler_daemon.transport.sockets import default_endpoint

    res = run_load(args.endpoint or default_endpoint(), args.workload, args.clients, args.rate,
                   args.duration, args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(load_table(res))
        for e in res["client_errors"]:
            print(f"client error: {e}", file=sys.stderr)
    return 0 if not res["client_errors"] else 1
