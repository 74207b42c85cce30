"""``gpusched status``: the daemon's queues and per-tenant counters, once."""
from __future__ import annotations

import json

from gpusched.cli.common import add_endpoint


def add_parser(sub) -> None:
    st = sub.add_parser("status", help="the daemon's queues and per-tenant counters")
    add_endpoint(st)
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from client_lib import Client
    from gpusched.report import print_table, status_json, status_table
    from scheduler_daemon.transport.sockets import default_endpoint

    with Client(args.endpoint or default_endpoint(), tenant="gpusched-status", timeout=3) as c:
        st = c.status()
    if args.json:
        print(json.dumps(status_json(st), indent=2))
    else:
        print_table(status_table(st))
    return 0
