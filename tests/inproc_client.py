"""The real ``client_lib.Client`` on the in-process server harness: no socket, no process.

``InProcClient(harness)`` is a ``Client`` whose socket hands each message to the harness's
``Server`` and lets its virtual clock run until the device is idle, so registered models,
``intercept()`` and ``generate()`` are exercised through the same client code, wire structs
and server as with a daemon (the fast suite may start no process).
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque

import zmq

from client_lib.client import Client
from client_lib.session import ClientSession
from scheduler_daemon.wire import protocol as P
from tests.server_harness import Harness


def torch_harness(**options) -> Harness:
    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.devices.torch_device import TorchDevice
    return WireHarness(device=TorchDevice(gpu_spec("T4"), "cpu"), **options)


class WireHarness(Harness):
    """A Harness that also keeps every reply as the frames a socket would carry."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.wire: dict[bytes, deque] = {}

    def _deliver(self, replies) -> None:
        for identity, msg, raw in replies:
            q = self.wire.get(identity)
            if q is not None:
                q.append(P.encode(msg) + [bytes(b) for b in raw])
        super()._deliver(replies)


class _Socket:
    def __init__(self, h: WireHarness, peer: bytes):
        self.h, self.ident = h, Harness.routing_id(peer)
        self.conn = peer.hex()
        self.q = h.wire.setdefault(self.ident, deque())
        self.lock = threading.Lock()

    def send_multipart(self, frames, flags=0, copy=True):
        with self.lock:
            h = self.h
            h._deliver(h.server.handle_frames(self.ident, [bytes(f) for f in frames], h.env.now,
                                              self.conn))
            h.run()

    def recv_multipart(self, flags=0, copy=True):
        if not self.q:
            raise zmq.Again()
        return self.q.popleft()

    def poll(self, timeout=None, flags=zmq.POLLIN):
        return zmq.POLLIN if self.q else 0

    def close(self, linger=None):
        pass


class _Poller:
    def __init__(self, sock: _Socket):
        self.sock = sock

    def poll(self, timeout=None):
        return {self.sock: zmq.POLLIN} if self.sock.q else {}


class InProcClient(Client):
    def __init__(self, h: WireHarness, tenant: str = "t", peer: bytes = b"client",
                 timeout: float = 5.0):
        self.endpoint, self.tenant, self.timeout, self.token = "inproc://harness", tenant, timeout, ""
        self.server_key = self.client_key = None
        self._s = ClientSession(self.endpoint, tenant, "", timeout, time.perf_counter())
        self._lock = threading.RLock()
        self._waiters = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._eager = None
        self._closed = False
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = _Socket(h, peer)
        self._poller = _Poller(self._sock)
        self.harness = h
        self._sock.send_multipart(self._s.hello())
        self._s.handshake(self._sock.recv_multipart(), time.perf_counter())

    def _open_socket(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._sock.send_multipart(P.encode(P.Bye()))
        self._closed = True
        os.close(self._wake_r)
        os.close(self._wake_w)
