"""``gpusched top``: a live view of the daemon's tenants, queues and latencies; ``q`` quits."""
from __future__ import annotations

import os
import select
import sys

from gpusched.cli.common import UsageError, add_endpoint


def add_parser(sub) -> None:
    tp = sub.add_parser("top", help="live view of the daemon's tenants, queues and latencies "
                        "(q or Ctrl-C quits)")
    add_endpoint(tp)
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")


class Keys:
    """Single key presses on stdin without Enter (a terminal in cbreak mode, restored on exit);
    from a pipe, whatever is written to it. ``wait(timeout)`` returns the keys pressed within
    ``timeout`` seconds, or as soon as one is."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdin
        self.fd = None
        self._saved = None
        try:
            self.fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        if os.isatty(self.fd):
            import termios
            import tty
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    def wait(self, timeout: float) -> str:
        if self.fd is None:
            import time
            time.sleep(timeout)
            return ""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return ""
        data = os.read(self.fd, 64)
        if not data:   # end of a pipe: no more keys; wait out the interval instead
            self.fd = None
            return ""
        return data.decode(errors="replace")

    def close(self) -> None:
        if self._saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


def run(args) -> int:
    from rich.console import Console
    from rich.live import Live

    from client_lib import Client
    from gpusched.cli.interrupt import note
    from gpusched.report import status_table
    from scheduler_daemon.transport.sockets import default_endpoint

    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    note("watching the daemon", "nothing to keep: the daemon is untouched")
    with Client(args.endpoint or default_endpoint(), tenant="gpusched-top", timeout=3) as c:
        if args.once:
            Console().print(status_table(c.status()))
            return 0
        keys = Keys()
        try:
            with Live(status_table(c.status()), refresh_per_second=4, screen=False,
                      auto_refresh=False) as live:
                live.console.print("q quits", style="dim")
                while True:
                    if "q" in keys.wait(args.interval).lower():
                        return 0
                    live.update(status_table(c.status()), refresh=True)
        finally:
            keys.close()
