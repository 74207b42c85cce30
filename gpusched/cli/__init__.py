"""The ``gpusched`` command. Expected mistakes exit 2 with a one-line message, no traceback.

One module per command, each with ``add_parser(subparsers)`` and ``run(args) -> int``. Building
the parser imports nothing heavy (no torch, numpy, zmq, rich, devices or solvers): every
daemon and client subprocess pays for it, so heavy imports happen inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from gpusched.cli.common import Parser, UsageError

__all__ = ["UsageError", "build_parser", "main"]

EXAMPLES = """examples:
  gpusched daemon                               # serve on the default ipc socket
  gpusched daemon --endpoint tcp://127.0.0.1:5555 --policy srpt
  gpusched submit --workload mixed --clients 3 --rate 60 --duration 5
  gpusched status --json
  gpusched bench overhead --json
  gpusched demo                                 # daemon + 3 clients + a latency table
"""

# in the order --help lists them; each is the module gpusched.cli.<name>
COMMANDS = ("daemon", "submit", "profile", "keys", "status", "top", "bench", "place", "geo",
            "cluster", "demo")

# Errors that are a mistake of the user's or a refusal, as (module, class). They are looked up
# only in modules already loaded: an exception of a module never imported cannot have been
# raised, and importing zmq or the daemon up front would cost the startup this package saves.
_EXPECTED = (("zmq", "ZMQError"), ("client_lib.errors", "GpuschedError"),
             ("scheduler_daemon.daemon", "DaemonError"), ("concurrent.futures", "TimeoutError"))


def _command(name: str):
    return importlib.import_module(f"gpusched.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="gpusched", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="A user-space GPU kernel scheduler daemon, its load generator and "
                "benchmarks.", epilog=EXAMPLES, log_level_default="INFO")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    for name in COMMANDS:
        _command(name).add_parser(sub)
    return ap


def _expected(e: Exception) -> bool:
    if isinstance(e, (UsageError, ValueError, OSError)):
        return True
    for module, name in _EXPECTED:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# servers: Ctrl-C drains them (their own handlers); the watcher is for commands that end
_SERVERS = ("daemon", "geo serve")


def _name(args) -> str:
    sub = getattr(args, "geo_cmd", None) or getattr(args, "bench", None) or \
        getattr(args, "cluster_cmd", None)
    return f"{args.cmd} {sub}" if isinstance(sub, str) else args.cmd


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.cmd is None:
        ap.print_help()
        return 2
    name = _name(args)
    watcher = None
    if threading.current_thread() is threading.main_thread():
        if args.cmd in ("bench", "demo", "submit"):
            # SIGTERM unwinds like Ctrl-C, so the daemons these commands started are stopped
            signal.signal(signal.SIGTERM, _raise_interrupt)
        if name not in _SERVERS:
            from gpusched.cli.interrupt import Watcher
            watcher = Watcher(name)
    try:
        return _command(args.cmd).run(args)
    except KeyboardInterrupt:
        from gpusched.cli import interrupt
        interrupt.say()
        if watcher is not None:   # leave now: a pool's exit hook must not hold the process
            interrupt.hard_exit(130)
        return 130
    except BrokenPipeError:   # `gpusched ... | head`: the reader left, nothing to say
        import os
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except Exception as e:
        if not _expected(e):
            raise
        if isinstance(e, OSError) and e.strerror and not isinstance(e, BrokenPipeError):
            from gpusched.cli.common import describe_os_error
            text = describe_os_error(e)
        else:
            text = str(e) or type(e).__name__
        print(f"gpusched {args.cmd}: error: {text}", file=sys.stderr)
        return 2
    finally:
        if watcher is not None:
            watcher.close()
