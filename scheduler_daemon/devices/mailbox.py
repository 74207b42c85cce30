"""Completions posted by a device's worker threads, delivered on the daemon's loop thread.

The loop polls ``fileno()``; a worker ``post``s a completion and writes one byte to wake it.
Both threaded backends (torch workers, CUDA event waiters) share this one mailbox.
"""
from __future__ import annotations

import queue
import socket
from typing import Iterator


class Mailbox:
    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        # a full pipe must not block a worker: a byte already pending wakes the loop anyway
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def post(self, item) -> None:
        """From any thread."""
        self._q.put(item)
        try:
            self._w.send(b"\0")
        except (BlockingIOError, OSError):  # full (the loop will wake) or closed
            pass

    def drain(self) -> Iterator:
        """On the loop thread: every item posted so far, in order."""
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                yield self._q.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._r.close()
        self._w.close()
