"""Start and stop daemon subprocesses (used by the demo, the benchmarks and the tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import zmq

from scheduler_daemon.transport.keys import read_key
from scheduler_daemon.transport.sockets import make_socket
from scheduler_daemon.wire import protocol as P


def temp_endpoint(name: str = "daemon") -> str:
    d = tempfile.mkdtemp(prefix="gpusched-")
    return f"ipc://{os.path.join(d, name + '.sock')}"


def wait_ready(endpoint: str, proc: subprocess.Popen | None = None, timeout: float = 20.0,
               server_key: bytes | None = None) -> None:
    """Block until a daemon answers PING at ``endpoint`` (ERROR NOT_CONNECTED counts)."""
    ctx = zmq.Context.instance()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr and proc.stderr.readable() else ""
            raise RuntimeError(f"daemon exited with {proc.returncode}: {err[-2000:]}")
        s = make_socket(ctx, zmq.DEALER, endpoint, bind=False, max_frame=0,
                        curve_server_key=server_key)
        s.send_multipart(P.encode(P.Ping(seq=0)))
        ok = s.poll(200)
        s.close(0)
        if ok:
            return
    raise RuntimeError(f"no daemon answered at {endpoint} within {timeout}s")


def start_daemon(*args: str, endpoint: str | None = None, log_level: str = "WARNING",
                 stderr=subprocess.PIPE) -> tuple[subprocess.Popen, str]:
    endpoint = endpoint or temp_endpoint()
    proc = subprocess.Popen([sys.executable, "-m", "gpusched.cli", "--log-level", log_level,
                             "daemon", "--endpoint", endpoint, *args],
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    key = None
    if "--curve-secret" in args:
        key = zmq.curve_public(read_key(args[list(args).index("--curve-secret") + 1]))
    try:
        wait_ready(endpoint, proc, server_key=key)
    except BaseException:  # Ctrl-C or SIGTERM while it starts: it must not outlive us
        proc.kill()
        raise
    return proc, endpoint


def stop_daemon(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
