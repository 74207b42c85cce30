"""Ctrl-C ends every command within a second, with one line saying what was interrupted and
what was kept.

Ctrl-C raises ``KeyboardInterrupt`` as usual, so a command unwinds (daemons it started are
stopped, files closed) and ``main`` prints the line. Unwinding can block: a process pool
waits for its workers, a solver runs in C code where Python's handler never gets to run. So
a watcher thread reads the signal from Python's wakeup fd (written by the C-level handler,
whatever the main thread is doing); if the command has not ended ``GRACE_S`` after the
signal (or at a second Ctrl-C) it prints the same line, stops this process's children
(SIGTERM: pool workers, load-generator clients, daemons that then drain) and exits 130.

Commands say what they are doing and what an interruption keeps with ``note(doing, kept)``.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

GRACE_S = 0.5
_WATCHED = (signal.SIGINT, signal.SIGTERM)

# what a command keeps when it is interrupted before it said more (``note``)
_DEFAULTS = {
    "status": ("asking the daemon for its status", "nothing to keep: the daemon is untouched"),
    "top": ("watching the daemon", "nothing to keep: the daemon is untouched"),
    "geo plan": ("planning", "no plan was printed or written"),
    "geo submit": ("submitting the job",
                   "the service may have taken it: 'gpusched geo status' says"),
    "geo event": ("sending the event",
                  "the service may have applied it: 'gpusched geo status' says"),
    "geo status": ("asking the geo service", "nothing to keep: the service is untouched"),
    "profile": ("profiling", "profiles finished before it are in the store"),
    "bench": ("running the benchmark",
              "no results: a benchmark prints them when it ends; any daemon it started stops"),
    "place": ("planning", "nothing was printed or written"),
    "demo": ("starting", "the demo's daemon is stopped"),
    "submit": ("submitting", "no summary; the clients were stopped"),
    "keys": ("writing keys", "check the key files before using them"),
}


class _State:
    def __init__(self) -> None:
        self.command = ""
        self.doing = "running"
        self.kept = "nothing more was printed or written"
        self.said = False
        self.lock = threading.Lock()


_state = _State()


def note(doing: str, kept: str) -> None:
    """What the command is doing now, and what an interruption now would keep."""
    _state.doing, _state.kept = doing, kept


def message() -> str:
    return f"gpusched {_state.command}: interrupted while {_state.doing}; {_state.kept}"


def say() -> None:
    """Print the line once (the main thread and the watcher may both want to)."""
    with _state.lock:
        if _state.said:
            return
        _state.said = True
    try:
        if sys.stderr.isatty():
            sys.stderr.write("\x1b[?25h")   # a progress bar may have hidden the cursor
        sys.stderr.write("\n" + message() + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _children() -> list[int]:
    pids = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return pids


def _cmdline(pid: int | str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def hard_exit(code: int = 130) -> None:
    """Say the line, stop the children, and leave now (nothing blocking runs). Forked copies
    of this process (a process pool's workers) are killed: they hold nothing and would print
    the interruption's traceback; other children (daemons, load-generator clients) get SIGTERM
    so a daemon drains and removes its socket."""
    say()
    me = _cmdline("self")
    for pid in _children():
        try:
            os.kill(pid, signal.SIGKILL if _cmdline(pid) == me else signal.SIGTERM)
        except OSError:
            pass
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


class Watcher:
    """Installed by ``main`` around a command (main thread only); ``close`` removes it."""

    def __init__(self, command: str) -> None:
        _state.command = command
        _state.said = False
        doing, kept = _DEFAULTS.get(command, _DEFAULTS.get(command.split(" ")[0],
                                                            (None, None)))
        if doing:
            note(doing, kept)
        self._done = threading.Event()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="gpusched-interrupt",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        first = None
        while True:
            timeout = None if first is None else max(0.0, first + GRACE_S - time.monotonic())
            import select
            ready, _, _ = select.select([self._r], [], [], timeout)
            if self._done.is_set():
                return
            if not ready:   # the grace ran out and the command is still unwinding
                hard_exit()
            data = os.read(self._r, 64)
            if not data:
                return
            for sig in data:
                if sig in _WATCHED:
                    if first is not None:   # a second Ctrl-C: leave now
                        hard_exit()
                    first = time.monotonic()

    def close(self) -> None:
        self._done.set()
        try:
            signal.set_wakeup_fd(self._old)
        except ValueError:
            pass
        os.write(self._w, b"\0")
        self._thread.join(timeout=1)
        os.close(self._r)
        os.close(self._w)
