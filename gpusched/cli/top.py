"""``gpusched top``: a live view of the daemon's tenants, queues and latencies."""
from __future__ import annotations

from gpusched.cli.common import UsageError, add_endpoint


def add_parser(sub) -> None:
    tp = sub.add_parser("top", help="live view of the daemon's tenants, queues and latencies")
    add_endpoint(tp)
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")


def run(args) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from client_lib import Client
    from gpusched.report import status_table
    from scheduler_daemon.transport.sockets import default_endpoint

    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    with Client(args.endpoint or default_endpoint(), tenant="gpusched-top", timeout=3) as c:
        if args.once:
            Console().print(status_table(c.status()))
            return 0
        with Live(status_table(c.status()), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(status_table(c.status()))
