"""Tenants' CUDA compiles, off the daemon's loop.

A compile runs NVRTC on a tenant's text in a sandboxed child (``cuda/sandbox.py``) and may take
its whole time limit, so the loop must not wait for it: ``Compiler`` runs each on a worker
thread (the thread only waits on the child) and says so on a pipe the daemon polls; the server
takes the results with ``take_done`` and answers the REGISTER_CUDA then. ``inline=True`` runs
each compile at ``submit`` (the in-process tests: no threads, same answers).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("gpusched.daemon.compiler")

Done = tuple[object, object, BaseException | None]   # (tag, result, error)


def sandboxed(time_s: float = 30.0) -> Callable:
    """A compile function: the model compiled in the sandbox, stopped after ``time_s``."""
    def run(model, arch):
        from scheduler_daemon.cuda.sandbox import compile_isolated
        return compile_isolated(model, arch, time_s=time_s)
    return run


class Compiler:
    def __init__(self, run: Callable | None = None, workers: int = 2, inline: bool = True):
        self._run = run or sandboxed()
        self._inline = inline
        self._done: list[Done] = []
        self._lock = threading.Lock()
        self._pending: dict[int, object] = {}    # id(tag) -> tag, submitted, not yet taken
        self._closed = False
        self._pool = None if inline else ThreadPoolExecutor(workers, "gpusched-compile")
        self._wake_r = self._wake_w = None
        if not inline:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)

    def submit(self, tag, model, arch: str | None) -> None:
        """Compile ``model`` for ``arch``; ``(tag, compiled, None)`` or ``(tag, None, error)``
        comes out of ``take_done`` later."""
        with self._lock:
            self._pending[id(tag)] = tag
        if self._inline:
            self._finish(tag, model, arch)
            return
        try:
            self._pool.submit(self._finish, tag, model, arch)
        except BaseException:   # (a pool already shut down) nothing is out: forget it
            with self._lock:
                self._pending.pop(id(tag), None)
            raise

    def _finish(self, tag, model, arch) -> None:
        try:
            out: Done = (tag, self._run(model, arch), None)
        except Exception as e:          # the server turns it into the client's answer
            out = (tag, None, e)
        with self._lock:
            if self._closed:
                return
            self._done.append(out)
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"x")
                except BlockingIOError:     # the pipe is full: the loop is already woken
                    pass

    def wake_fd(self) -> int | None:
        return self._wake_r

    def take_done(self) -> list[Done]:
        # every loop pass comes here: nothing to do unless a compile is out (only this thread
        # submits, so the unlocked look is safe)
        if not self._pending:
            return []
        with self._lock:   # the wake byte is read under the lock _finish writes it under, so
            if self._wake_r is not None:   # none is left behind to spin the loop
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            out, self._done = self._done, []
            for tag, _, _ in out:
                self._pending.pop(id(tag), None)
        return out

    def busy(self) -> bool:
        """Compiles submitted and not yet taken."""
        with self._lock:
            return bool(self._pending)

    def abandon(self) -> list:
        """The tags of compiles not yet taken, now given up (their results will be dropped)."""
        with self._lock:
            out = list(self._pending.values())
            self._pending.clear()
            self._closed = True
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
        if self._pool is not None:
            # children stop at their own time limit; waiting here would hold a stop that long
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
