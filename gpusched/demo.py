"""``gpusched demo``: a daemon on the default device, three tenants' clients, a latency table.

It says what it does as it goes (one line per step, a bar with the time left while the clients
run), so the half minute between tables is never silent.
"""
from __future__ import annotations

import logging
import threading
import time

from rich.console import Console

from gpusched.loadgen import run_load
from gpusched.procs import start_daemon, stop_daemon
from gpusched.report import load_table

log = logging.getLogger("gpusched.demo")

# the load generator's clients start together this long after they are launched (loadgen.py)
_START_S = 1.0 + 0.3 * 3


def run_demo(duration: float, rate: float, policies: list[str], note=None) -> int:
    """``note(doing, kept)`` is told each step (the CLI's Ctrl-C line says it)."""
    con = Console()
    note = note or (lambda doing, kept: None)
    con.print(f"[bold]gpusched demo[/]: workload 'mixed' (tenants short/medium/long, SLOs "
              f"5/30/200 ms), 3 client processes, {rate:g} req/s for {duration:g}s per policy, "
              f"policies {', '.join(policies)}")
    rc = 0
    for i, policy in enumerate(policies, 1):
        kept = (f"the tables of {', '.join(policies[:i - 1])} above; " if i > 1 else "") + \
            "the demo's daemon is stopped"
        step = f"policy {policy} ({i}/{len(policies)})"
        note(f"starting a daemon for {step}", kept)
        con.print(f"{step}: starting a daemon ...")
        t0 = time.monotonic()
        proc, ep = start_daemon("--policy", policy, log_level="WARNING")
        con.print(f"{step}: daemon up at {ep} after {time.monotonic() - t0:.1f}s; 3 clients "
                  f"submit for {duration:g}s")
        note(f"running the clients of {step}", kept)
        try:
            res = _run_with_bar(con, step, ep, rate, duration)
        finally:
            code = stop_daemon(proc)
        con.print(load_table(res, title=f"policy {policy} (daemon exited with {code})"))
        if code != 0 or res["client_errors"]:
            rc = 1
            for e in res["client_errors"]:
                con.print(f"[red]client error:[/] {e}")
    return rc


def _run_with_bar(con: Console, step: str, ep: str, rate: float, duration: float) -> dict:
    """run_load with a bar of the expected time (client start, arrivals, a drain allowance)."""
    from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
    expected = _START_S + duration + 1.0
    with Progress("{task.description}", BarColumn(), TimeElapsedColumn(), "left",
                  TimeRemainingColumn(), console=con, transient=True) as bar:
        task = bar.add_task(f"{step}: clients running", total=expected)
        stop = threading.Event()

        def tick():
            t0 = time.monotonic()
            while not stop.wait(0.25):
                bar.update(task, completed=min(expected * 0.99, time.monotonic() - t0))
        t = threading.Thread(target=tick, daemon=True)
        t.start()
        try:
            return run_load(ep, "mixed", clients=3, rate=rate, duration=duration)
        finally:
            stop.set()
            t.join(1)
