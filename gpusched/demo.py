"""``gpusched demo``: a daemon on the default device, three tenants' clients, a latency table."""
from __future__ import annotations

import logging

from rich.console import Console

from gpusched.loadgen import run_load
from gpusched.procs import start_daemon, stop_daemon
from gpusched.report import load_table

log = logging.getLogger("gpusched.demo")


def run_demo(duration: float, rate: float, policies: list[str]) -> int:
    con = Console()
    con.print(f"[bold]gpusched demo[/]: workload 'mixed' (tenants short/medium/long, SLOs "
              f"5/30/200 ms), 3 client processes, {rate:g} req/s for {duration:g}s per policy")
    rc = 0
    for policy in policies:
        proc, ep = start_daemon("--policy", policy, log_level="WARNING")
        try:
            with con.status(f"policy {policy}: running clients against {ep} ..."):
                res = run_load(ep, "mixed", clients=3, rate=rate, duration=duration)
        finally:
            code = stop_daemon(proc)
        con.print(load_table(res, title=f"policy {policy} (daemon exited with {code})"))
        if code != 0 or res["client_errors"]:
            rc = 1
            for e in res["client_errors"]:
                con.print(f"[red]client error:[/] {e}")
    return rc
