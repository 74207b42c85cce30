"""The asyncio client: ``async with AsyncClient(endpoint, tenant=...) as c: await c.submit(...)``.

A thin front end over the session core (session.py), like the sync client (client.py), so both
track requests, route replies, replay registered models (kernel lists, captured graphs, CUDA
models) after a daemon restart, ping, and fail pending requests then reconnect when the daemon
falls silent, the same way. This file owns the socket, the tasks and the clock: one reader task
hands every reply to the core, one heartbeat task calls its ``tick``. Every send is awaited, or
(a request's, which ``submit_nowait`` cannot await) chained to the future it answers, so a
failed send fails that request instead of vanishing.

Differences from ``Client``: futures are asyncio futures (``AsyncJobFuture``); cancelling one
only stops waiting, ``await c.cancel(fut)`` cancels the job in the daemon. There is no
``intercept`` (the eager path is synchronous torch dispatch), and ``register_model`` with a
torch module returns the captured op count instead of a ``ModelHandle`` (whose calls block):
run it with ``await c.submit(name, inputs)``.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Self

import zmq
import zmq.asyncio

from client_lib._common import (
    PROBE_AFTER_S,
    JobResult,
    admit_msg,
    admitted,
    cuda_model,
    kernel_specs,
    submit_frames,
    unreachable,
)
from client_lib.errors import DaemonUnavailable
from client_lib.session import ClientSession, Outbox
from scheduler_daemon.transport.keys import read_key
from scheduler_daemon.transport.sockets import (
    check_endpoint,
    default_endpoint,
    make_socket,
)
from scheduler_daemon.wire import protocol as P

log = logging.getLogger("gpusched.client")


class AsyncJobFuture(asyncio.Future):
    """The asyncio future of one request: ``req_id`` names it to ``cancel``/``status``;
    ``job_id`` is set once the daemon names the job."""

    def __init__(self, req_id: int = 0):
        super().__init__(loop=asyncio.get_running_loop())
        self.req_id = req_id
        self.job_id: str | None = None


class AsyncClient:
    """``timeout`` bounds the handshake and how long the daemon may stay silent while requests
    are pending before they fail with ``DaemonUnavailable`` (the client then reconnects).
    ``client_key`` (or ``GPUSCHED_CLIENT_KEY``): the tenant's CURVE secret key (a file from
    ``gpusched keys --client TENANT``) where the daemon lists tenants' keys (--tenant-keys).
    ``server_key`` (or ``GPUSCHED_SERVER_KEY``): the daemon's CURVE public key, or a file
    holding it, when the daemon encrypts its connections."""

    def __init__(self, endpoint: str | None = None, tenant: str = "default",
                 timeout: float = 5.0, token: str | None = None, server_key: str | None = None,
                 client_key: str | None = None):
        self.endpoint = check_endpoint(endpoint or default_endpoint())
        self.tenant = tenant
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("GPUSCHED_TOKEN", "")
        server_key = server_key or os.environ.get("GPUSCHED_SERVER_KEY")
        self.server_key = read_key(server_key) if server_key else None
        client_key = client_key or os.environ.get("GPUSCHED_CLIENT_KEY")
        self.client_key = read_key(client_key) if client_key else None   # the tenant's secret
        self._s = ClientSession(self.endpoint, tenant, self.token, timeout, time.perf_counter(),
                                encrypted=self.server_key is not None)
        self._ctx: zmq.asyncio.Context | None = None
        self._sock = None
        self._tasks: list[asyncio.Task] = []

    @property
    def welcome(self) -> P.Welcome | None:
        return self._s.welcome

    @property
    def daemon_id(self) -> str:
        return self._s.daemon_id

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- connection -------------------------------------------------------------------------
    def _open_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)  # cancels its pending sends and receive (see _reader)
        self._sock = make_socket(self._ctx, zmq.DEALER, self.endpoint, bind=False, max_frame=0,
                                 curve_server_key=self.server_key,
                                 curve_client_secret=self.client_key)

    async def connect(self) -> None:
        """HELLO and wait for WELCOME (``ConnectError`` saying why not)."""
        if self._sock is not None:
            return
        self._ctx = zmq.asyncio.Context()
        try:
            self._open_socket()
            await self._sock.send_multipart(self._s.hello())
            recv = asyncio.ensure_future(self._sock.recv_multipart())
            try:
                try:
                    frames = await asyncio.wait_for(asyncio.shield(recv),
                                                    min(self.timeout, PROBE_AFTER_S))
                except TimeoutError:
                    # no daemon at all: say so now (its TCP probe blocks: off the event loop)
                    why = await asyncio.to_thread(unreachable, self.endpoint)
                    if why is not None:
                        raise self._s.no_daemon(why) from None
                    frames = await asyncio.wait_for(
                        recv, max(0.0, self.timeout - PROBE_AFTER_S))
            except TimeoutError:
                raise self._s.no_answer() from None
            finally:
                if not recv.done():
                    recv.cancel()
            self._s.handshake(frames, time.perf_counter())
        except BaseException:  # do not leak the socket and the context
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None
            self._ctx.term()
            self._ctx = None
            raise
        self._tasks = [asyncio.create_task(self._reader(), name="gpusched-client-reader"),
                       asyncio.create_task(self._heartbeat(), name="gpusched-client-heartbeat")]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("client: %s ended with an error", t.get_name())
        self._s.fail_all(DaemonUnavailable("the client was closed"))
        if self._sock is not None:
            try:
                await self._sock.send_multipart(P.encode(P.Bye()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the daemon notices the silence instead
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _apply(self, out: Outbox) -> None:
        """What the session asks for: a fresh socket and/or messages to send. All sends are
        queued before the first await, so a submit made meanwhile goes after them (the daemon
        sees HELLO and the replayed models first)."""
        if out.reconnect:
            self._open_socket()
        sock = self._sock
        sends = [sock.send_multipart(m, copy=len(m) <= 2) for m in out.messages]
        for sent in sends:
            try:
                await sent
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                return  # a later reconnect closed this socket; it sends its own HELLO

    async def _reader(self) -> None:
        s = self._s
        while True:
            sock = self._sock
            try:
                frames = await sock.recv_multipart(copy=False)
            except (zmq.ZMQError, asyncio.CancelledError):
                if sock is not self._sock and not asyncio.current_task().cancelling():
                    continue  # a reconnect closed this socket under the receive
                raise
            if sock is not self._sock:
                continue  # from the socket a reconnect replaced
            try:
                out = s.on_reply(frames, time.perf_counter())
                if out is not None:
                    await self._apply(out)
            except Exception:
                log.exception("client: error handling a reply")

    async def _heartbeat(self) -> None:
        s = self._s
        while True:
            await asyncio.sleep(s.heartbeat_s)
            try:
                out = s.tick(time.perf_counter())
                if out is not None:
                    await self._apply(out)
            except Exception:
                log.exception("client: heartbeat error")

    # -- requests ---------------------------------------------------------------------------
    async def register_model(self, name: str, kernels, example_inputs=None) -> int:
        """Register (or replace) a model; it is sent again after a daemon restart. Given a
        kernel list: returns the kernel count. Given a torch module and ``example_inputs``: its
        aten ops are captured in a worker thread (capture blocks), graph and weights are shipped
        once, and the op count is returned; run it with ``submit(name, inputs)``."""
        if example_inputs is None:
            msg = P.Register(req_id=0, model=name, kernels=kernel_specs(kernels))
            return (await self._call("register", msg)).kernels
        from client_lib.models import register_graph_frames
        self._check_open()
        msg, frames, n_ops = await asyncio.get_running_loop().run_in_executor(
            None, register_graph_frames, name, kernels, example_inputs, self._s.max_frame)
        await self._call("register", msg, self.timeout * 2 + 60, raw=frames)
        return n_ops

    async def register_cuda(self, name: str, source: str = "", buffers=(), launches=(),
                            ptx: str = "", options=(), instrument: bool = False) -> int:
        """Register raw CUDA kernels; the arguments and errors are ``Client.register_cuda``'s.
        Returns the number of launches."""
        model = cuda_model(name, source, buffers, launches, ptx, options, instrument)
        msg = P.RegisterCuda(req_id=0, model=name, cuda=model)
        return (await self._call("register", msg)).kernels

    def submit_nowait(self, model: str, inputs=(), slo_ms: float = 0.0,
                      priority: int = 0) -> AsyncJobFuture:
        """Queue a job; returns an asyncio future of its ``JobResult``."""
        self._check_open()
        s = self._s
        req_id = s.next_id()
        frames = submit_frames(req_id, model, inputs, slo_ms, priority, False, s.max_frame)
        fut = AsyncJobFuture(req_id)
        s.track(req_id, "submit", fut, time.perf_counter())
        self._send(frames, req_id)
        return fut

    async def submit(self, model: str, inputs=(), slo_ms: float = 0.0,
                     priority: int = 0) -> JobResult:
        return await self.submit_nowait(model, inputs, slo_ms, priority)

    async def cancel(self, job) -> bool:
        """Cancel a submitted job in the daemon (its future or req_id); idempotent."""
        target = job.req_id if isinstance(job, AsyncJobFuture) else int(job)
        return (await self._call("cancel", P.Cancel(req_id=0, target=target))).cancelled

    async def status(self, job=None):
        """The daemon summary (``StatusReply``), or one unfinished job's ``JobStatus``."""
        target = None if job is None else (
            job.req_id if isinstance(job, AsyncJobFuture) else int(job))
        reply = await self._call("status", P.Status(req_id=0, target=target))
        return reply.job if target is not None else reply

    async def admit(self, replicas, replace: bool = False) -> list[dict]:
        """Ask the daemon to admit model replicas; see ``Client.admit``."""
        return admitted(await self._call("admit", admit_msg(replicas, replace)))

    def pending(self) -> int:
        return len(self._s.pending)

    # -- internals --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._sock is None:
            raise DaemonUnavailable("this client is not connected: call connect() first, or "
                                    "use 'async with AsyncClient(...)'")

    async def _call(self, kind: str, msg, timeout: float = -1.0, raw: list = ()):
        """Send one request and wait for its answer (at most ``timeout``, by default twice the
        client's); a late answer is then dropped."""
        self._check_open()
        fut = AsyncJobFuture()
        frames = self._s.request(kind, msg, fut, time.perf_counter(), raw)
        fut.req_id = msg.req_id
        self._send(frames, msg.req_id)
        try:
            return await asyncio.wait_for(fut, self.timeout * 2 if timeout == -1.0 else timeout)
        except (TimeoutError, asyncio.CancelledError):
            self._s.forget(msg.req_id)
            raise

    def _send(self, frames: list, req_id: int) -> None:
        """Send a tracked request; a failed send fails it (awaited through its future)."""
        sent = self._sock.send_multipart(frames, copy=len(frames) <= 2)
        if sent.done():  # the usual case: zmq queued it at once
            self._sent(req_id, sent)
        else:
            sent.add_done_callback(functools.partial(self._sent, req_id))

    def _sent(self, req_id: int, sent: asyncio.Future) -> None:
        if sent.cancelled():  # its socket was closed: a reconnect or close failed it already
            self._s.fail(req_id, DaemonUnavailable(
                f"the connection to {self.endpoint} was replaced before the request was sent: "
                "submit it again"))
            return
        e = sent.exception()
        if e is not None:
            log.warning("client: send to %s failed: %s", self.endpoint, e)
            self._s.fail(req_id, DaemonUnavailable(
                f"sending the request to {self.endpoint} failed ({e}): submit it again"))
