"""Start and stop daemon subprocesses (used by the demo, the benchmarks and the tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import zmq

from scheduler_daemon import protocol as P


def temp_endpoint(name: str = "daemon") -> str:
    d = tempfile.mkdtemp(prefix="gpusched-")
    return f"ipc://{os.path.join(d, name + '.sock')}"


def wait_ready(endpoint: str, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Block until a daemon answers PING at ``endpoint`` (ERROR NOT_CONNECTED counts)."""
    ctx = zmq.Context.instance()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"daemon exited with {proc.returncode}: {err[-2000:]}")
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
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
    try:
        wait_ready(endpoint, proc)
    except Exception:
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
