"""The asyncio client: ``async with AsyncClient(endpoint, tenant=...) as c: await c.submit(...)``.

One reader task resolves the futures; one heartbeat task pings the daemon and fails pending
futures when it goes silent or restarts.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import time

import zmq
import zmq.asyncio

from client_lib._common import JobResult, kernel_specs, resolve_done, submit_frames
from client_lib.errors import (
    ConnectError,
    DaemonRestarted,
    DaemonUnavailable,
    RequestError,
)
from scheduler_daemon.transport.keys import read_key
from scheduler_daemon.transport.sockets import (
    check_endpoint,
    default_endpoint,
    make_socket,
)
from scheduler_daemon.wire import protocol as P


class AsyncClient:
    def __init__(self, endpoint: str | None = None, tenant: str = "default",
                 timeout: float = 5.0, token: str | None = None, server_key: str | None = None):
        self.endpoint = check_endpoint(endpoint or default_endpoint())
        self.tenant = tenant
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("GPUSCHED_TOKEN", "")
        server_key = server_key or os.environ.get("GPUSCHED_SERVER_KEY")
        self.server_key = read_key(server_key) if server_key else None
        self._models: dict[str, list] = {}  # replayed after a daemon restart
        self._ctx = zmq.asyncio.Context()
        self._sock = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future, float]] = {}
        self._tasks: list[asyncio.Task] = []
        self.welcome: P.Welcome | None = None
        self._last_heard = time.monotonic()

    async def __aenter__(self) -> "AsyncClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _open_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._sock = make_socket(self._ctx, zmq.DEALER, self.endpoint, bind=False, max_frame=0,
                                 curve_server_key=self.server_key)

    async def connect(self) -> None:
        self._open_socket()
        await self._sock.send_multipart(P.encode(P.Hello(version=P.PROTOCOL_VERSION,
                                                         tenant=self.tenant, token=self.token)))
        try:
            frames = await asyncio.wait_for(self._sock.recv_multipart(), self.timeout)
        except asyncio.TimeoutError:
            self._sock.close(0)
            self._sock = None
            raise ConnectError(f"no daemon answered at {self.endpoint} within {self.timeout}s: "
                               "start one with 'gpusched daemon' or pass the right endpoint") from None
        msg = P.decode(frames[0], frames[1], P.REPLIES)
        if not isinstance(msg, P.Welcome):
            self._sock.close(0)
            self._sock = None
            detail = f"{msg.code}: {msg.message}" if isinstance(msg, P.Error) else type(msg).__name__
            raise ConnectError(f"the daemon refused the connection: {detail}")
        self.welcome = msg
        self._last_heard = time.monotonic()
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._heartbeat())]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_all(DaemonUnavailable("the client was closed"))
        if self._sock is not None:
            try:
                await self._sock.send_multipart(P.encode(P.Bye()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(0)
            self._sock = None
        self._ctx.term()

    async def register_model(self, name: str, kernels) -> int:
        specs = kernel_specs(kernels)
        reply = await self._call(P.Register(req_id=0, model=name, kernels=specs))
        self._models[name] = specs
        return reply.kernels

    def _restarted(self) -> None:
        """A new daemon: fail what the old one held, HELLO again and re-register the models
        on a new socket (one connection keeps their order ahead of later submits)."""
        self._fail_all(DaemonRestarted(f"the daemon at {self.endpoint} restarted; the request "
                                       "was lost: submit it again"))
        self._open_socket()
        loop = asyncio.get_running_loop()
        self._sock.send_multipart(P.encode(P.Hello(version=P.PROTOCOL_VERSION,
                                                   tenant=self.tenant, token=self.token)))
        for name, specs in self._models.items():
            rid = next(self._ids)
            self._pending[rid] = (loop.create_future(), time.perf_counter())
            self._sock.send_multipart(P.encode(P.Register(req_id=rid, model=name, kernels=specs)))
        self._last_heard = time.monotonic()

    def submit_nowait(self, model: str, inputs=(), slo_ms: float = 0.0,
                      priority: int = 0) -> asyncio.Future:
        """Queue a job; returns an asyncio future of its ``JobResult``."""
        if self._sock is None:
            raise DaemonUnavailable("connect() first, or use 'async with'")
        req_id = next(self._ids)
        frames = submit_frames(req_id, model, inputs, slo_ms, priority, False,
                               self.welcome.limits.max_frame_bytes)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (fut, time.perf_counter())
        self._sock.send_multipart(frames, copy=len(frames) <= 2)  # queued at once by zmq
        return fut

    async def submit(self, model: str, inputs=(), slo_ms: float = 0.0,
                     priority: int = 0) -> JobResult:
        return await self.submit_nowait(model, inputs, slo_ms, priority)

    async def status(self) -> P.StatusReply:
        return await self._call(P.Status(req_id=0))

    async def _call(self, msg):
        msg.req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg.req_id] = (fut, time.perf_counter())
        await self._sock.send_multipart(P.encode(msg))
        return await asyncio.wait_for(fut, self.timeout * 2)

    async def _reader(self) -> None:
        while True:
            sock = self._sock
            try:
                frames = await sock.recv_multipart(copy=False)
            except zmq.ZMQError:
                if sock is not self._sock:
                    continue  # the socket a restart replaced and closed
                raise
            if sock is not self._sock:
                continue  # from the socket a restart replaced
            self._last_heard = time.monotonic()
            try:
                msg = P.decode(frames[0].bytes, frames[1].buffer, P.REPLIES)
            except (P.ProtocolError, IndexError):
                continue
            if isinstance(msg, P.Welcome):
                self.welcome = msg
                continue
            if isinstance(msg, P.Pong):
                if msg.daemon_id != self.welcome.daemon_id:
                    self._restarted()
                continue
            if isinstance(msg, P.Error) and msg.code == P.Code.NOT_CONNECTED:
                self._restarted()  # the daemon no longer knows us: it restarted
                continue
            entry = self._pending.pop(getattr(msg, "req_id", -1), None)
            if entry is None:
                continue
            fut, t0 = entry
            if fut.done():
                continue
            if isinstance(msg, P.Done):
                res, exc = resolve_done(msg, frames[2:], t0)
                fut.set_exception(exc) if exc is not None else fut.set_result(res)
            elif isinstance(msg, P.Error):
                fut.set_exception(RequestError(msg.code, msg.message))
            else:
                fut.set_result(msg)

    async def _heartbeat(self) -> None:
        hb = self.welcome.heartbeat_s
        while True:
            await asyncio.sleep(hb)
            await self._sock.send_multipart(P.encode(P.Ping(seq=0)))
            if self._pending and time.monotonic() - self._last_heard > self.timeout:
                self._fail_all(DaemonUnavailable(f"the daemon at {self.endpoint} stopped answering"))
                self._last_heard = time.monotonic()

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(exc)
