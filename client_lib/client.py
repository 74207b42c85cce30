"""The synchronous client: ``Client(endpoint, tenant=...)``.

The thread that waits does the socket I/O (no I/O thread in the hot path: handing frames to a
background thread roughly doubled the round trip in our measurements). A small keeper thread
wakes every heartbeat to ping the daemon, deliver replies nobody is waiting on, and fail pending
futures when the daemon dies or restarts. The socket is only touched under ``_lock``; a thread
that wants the lock while another polls interrupts the poll through a pipe.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import zmq

from client_lib._common import kernel_specs, resolve_done, submit_frames
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

log = logging.getLogger("gpusched.client")


class JobFuture(Future):
    """A ``concurrent.futures.Future`` whose waiting thread pumps the client's socket."""

    def __init__(self, client: "Client", req_id: int):
        super().__init__()
        self.client = client
        self.req_id = req_id
        self.job_id: str | None = None
        self.t0 = time.perf_counter()

    def result(self, timeout: float | None = None):
        self.client._wait(self, timeout)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None):
        self.client._wait(self, timeout)
        return super().exception(timeout=0)

    def cancel(self) -> bool:
        """Ask the daemon to cancel the job; True if it was cancelled."""
        if self.done():
            return False
        return self.client.cancel(self)


class _Pending:
    __slots__ = ("kind", "future", "t0")

    def __init__(self, kind: str, future: Future, t0: float):
        self.kind, self.future, self.t0 = kind, future, t0


class Client:
    """Connects to a daemon, says HELLO as ``tenant``, and submits jobs.

    ``timeout`` bounds the handshake and how long the daemon may stay silent while requests
    are pending before they fail with ``DaemonUnavailable``. ``server_key`` (or
    ``GPUSCHED_SERVER_KEY``): the daemon's CURVE public key, or a file holding it, when the
    daemon encrypts its connections.
    """

    def __init__(self, endpoint: str | None = None, tenant: str = "default",
                 timeout: float = 5.0, token: str | None = None, server_key: str | None = None):
        self.endpoint = check_endpoint(endpoint or default_endpoint())
        self.tenant = tenant
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("GPUSCHED_TOKEN", "")
        server_key = server_key or os.environ.get("GPUSCHED_SERVER_KEY")
        self.server_key = read_key(server_key) if server_key else None
        self._ctx = zmq.Context()
        self._lock = threading.RLock()
        self._waiters = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._models: dict[str, list] = {}  # replayed after a daemon restart
        self._graph_models: dict[str, tuple] = {}  # name -> (RegisterGraph, weight frames)
        self._eager = None  # the intercept path's session (client_lib/intercept.py), lazily
        self._cuda_models: dict = {}  # name -> CudaModel, replayed after a daemon restart
        self._closed = False
        self._sock: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self.daemon_id = ""
        self.welcome: P.Welcome | None = None
        self._last_heard = self._last_sent = time.monotonic()
        self._count_lock = threading.Lock()
        try:
            self._connect()
        except BaseException:  # do not leak the socket, the context and the pipe
            if self._sock is not None:
                self._sock.close(0)
            self._ctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="gpusched-client-keeper",
                                        daemon=True)
        self._keeper.start()

    # -- connection ---------------------------------------------------------------------------
    def _open_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._sock = make_socket(self._ctx, zmq.DEALER, self.endpoint, bind=False, max_frame=0,
                                 curve_server_key=self.server_key)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._sock.send_multipart(P.encode(P.Hello(version=P.PROTOCOL_VERSION,
                                                   tenant=self.tenant, token=self.token)))

    def _connect(self) -> None:
        """First connection: HELLO and wait for WELCOME (or a clear refusal)."""
        self._open_socket()
        if not self._sock.poll(int(self.timeout * 1000)):
            raise ConnectError(f"no daemon answered at {self.endpoint} within {self.timeout}s: "
                               "start one with 'gpusched daemon' or pass the right endpoint"
                               + ("" if self.server_key else " (a daemon with a CURVE key "
                                  "answers only clients given its public key: server_key= or "
                                  "GPUSCHED_SERVER_KEY)"))
        frames = self._sock.recv_multipart()
        msg = P.decode(frames[0], frames[1], P.REPLIES)
        if isinstance(msg, P.Error):
            raise ConnectError(f"the daemon refused the connection: {msg.code}: {msg.message}")
        if not isinstance(msg, P.Welcome):
            raise ConnectError(f"unexpected {type(msg).__name__} instead of WELCOME")
        self._welcomed(msg)

    def _welcomed(self, msg: P.Welcome) -> None:
        self.welcome = msg
        self.daemon_id = msg.daemon_id
        self._last_heard = time.monotonic()
        log.debug("client: connected tenant=%s daemon=%s", self.tenant, msg.daemon_id)

    def _reconnect(self) -> None:
        """A new socket, HELLO, then the known models again, without waiting: one connection
        keeps order, so the daemon sees them before any later SUBMIT. WELCOME arrives later."""
        self._open_socket()
        for name, specs in self._models.items():
            req = next(self._ids)
            self._pending[req] = _Pending("register", Future(), time.perf_counter())
            self._sock.send_multipart(P.encode(P.Register(req_id=req, model=name, kernels=specs)))
        for name, model in self._cuda_models.items():
            req = next(self._ids)
            self._pending[req] = _Pending("register", Future(), time.perf_counter())
            self._sock.send_multipart(P.encode(P.RegisterCuda(req_id=req, model=name,
                                                              cuda=model)))
        for name, (msg, frames) in self._graph_models.items():
            msg.req_id = next(self._ids)
            self._pending[msg.req_id] = _Pending("register", Future(), time.perf_counter())
            self._sock.send_multipart(P.encode(msg) + frames, copy=False)
        self._last_heard = time.monotonic()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._stop.set()
        self._acquire()
        try:
            try:
                self._sock.send_multipart(P.encode(P.Bye()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._fail_all(DaemonUnavailable("the client was closed"))
            self._closed = True  # after the futures failed: waiters see a result, not a timeout
            self._sock.close(0)
        finally:
            self._lock.release()
        self._keeper.join(timeout=2)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- requests -----------------------------------------------------------------------------
    def register_model(self, name: str, kernels, example_inputs=None, slo_ms: float = 0.0):
        """Register (or replace) a model. Given a kernel list: returns the kernel count. Given a
        torch module and ``example_inputs``: captures its aten ops, ships graph and weights once
        and returns a ``ModelHandle`` (see client_lib/models.py)."""
        if example_inputs is not None:
            return self._register_module(name, kernels, example_inputs, slo_ms)
        specs = kernel_specs(kernels)
        n = self._call("register", P.Register(req_id=0, model=name, kernels=specs)).kernels
        self._models[name] = specs
        self._graph_models.pop(name, None)
        self._cuda_models.pop(name, None)
        return n

    def _register_module(self, name: str, module, example_inputs, slo_ms: float):
        from client_lib.models import ModelHandle, register_graph_frames
        msg, frames, n_ops = register_graph_frames(name, module, example_inputs,
                                                   self.welcome.limits.max_frame_bytes)
        self._check_open()
        msg.req_id = next(self._ids)
        fut = JobFuture(self, msg.req_id)
        self._acquire()
        try:
            self._pending[msg.req_id] = _Pending("register", fut, fut.t0)
            self._sock.send_multipart(P.encode(msg) + frames, copy=False)
            self._last_sent = time.monotonic()
        finally:
            self._lock.release()
        fut.result(self.timeout * 2 + 60)
        self._graph_models[name] = (msg, frames)   # replayed after a daemon restart
        self._models.pop(name, None)
        return ModelHandle(self, name, n_ops, slo_ms)

    def register_cuda(self, name: str, source: str = "", buffers=(), launches=(), ptx: str = "",
                      options=(), instrument: bool = False) -> int:
        """Register raw CUDA kernels (CUDA C++ ``source`` or ``ptx``): the ``buffers`` one job
        uses (``CudaBuffer`` or dicts: name, dtype, shape, role input/output/scratch) and its
        ``launches`` in order (``CudaLaunch`` or dicts: kernel, grid, block, smem, args as
        ``{"type": "buf", "index": i}`` / ``{"type": "scalar", "dtype": "int32", "value": n}``
        or ``Buf``/``Scalar``). The daemon compiles with NVRTC
        and checks every launch; a compile error raises ``RequestError`` with the compiler's
        log. ``submit(name, inputs)`` then runs it; outputs are the output buffers. Returns
        the number of launches."""
        import msgspec

        from scheduler_daemon.wire.cuda import CudaModel
        try:
            model = msgspec.convert(msgspec.to_builtins(
                {"source": source, "ptx": ptx, "options": list(options), "instrument": instrument,
                 "buffers": list(buffers), "launches": list(launches)}), CudaModel)
        except msgspec.ValidationError as e:
            raise ValueError(f"CUDA model {name!r}: {e}") from None
        msg = P.RegisterCuda(req_id=0, model=name, cuda=model)
        n = self._call("register", msg).kernels
        self._cuda_models[name] = model
        self._models.pop(name, None)
        self._graph_models.pop(name, None)
        return n

    def intercept(self, slo_ms: float = 0.0, priority: int = 0):
        """``with client.intercept(): y = model(x)``: every aten op of an unmodified eager
        model runs in the daemon (needs ``--backend torch``); see client_lib/intercept.py."""
        from client_lib.intercept import EagerSession, intercept
        self._check_open()
        if self._eager is None:
            self._eager = EagerSession(self)
        return intercept(self._eager, slo_ms, priority)

    def submit(self, model: str, inputs=(), slo_ms: float = 0.0, priority: int = 0,
               ack: bool = False) -> JobFuture:
        """Queue one job; the future resolves to a ``JobResult`` or raises (see errors.py)."""
        self._check_open()
        req_id = next(self._ids)
        fut = JobFuture(self, req_id)
        frames = submit_frames(req_id, model, inputs, slo_ms, priority, ack,
                               self.welcome.limits.max_frame_bytes)
        self._acquire()
        try:
            self._pending[req_id] = _Pending("submit", fut, fut.t0)
            self._send(frames)
        finally:
            self._lock.release()
        return fut

    def run(self, model: str, inputs=(), slo_ms: float = 0.0, priority: int = 0,
            timeout: float | None = None):
        """Submit and wait: returns the ``JobResult``."""
        return self.submit(model, inputs, slo_ms, priority).result(timeout)

    def cancel(self, job) -> bool:
        """Cancel a submitted job (its future or req_id); idempotent."""
        target = job.req_id if isinstance(job, JobFuture) else int(job)
        return self._call("cancel", P.Cancel(req_id=0, target=target)).cancelled

    def status(self, job=None):
        """The daemon summary (``StatusReply``), or one unfinished job's ``JobStatus``."""
        target = None if job is None else (job.req_id if isinstance(job, JobFuture) else int(job))
        reply = self._call("status", P.Status(req_id=0, target=target))
        return reply.job if target is not None else reply

    def admit(self, replicas, replace: bool = False) -> list[dict]:
        """Ask the daemon to admit model replicas ``(name, zoo model, batch, rate, slo_ms)``;
        it refuses (``RequestError`` with code ``ADMISSION``) if its interference model predicts
        that any admitted replica would miss its SLO. Returns each replica's prediction."""
        msg = P.Admit(req_id=0, replicas=[P.AdmitReplica(n, m, int(b), float(r), float(slo))
                                          for n, m, b, r, slo in replicas], replace=replace)
        reply = self._call("admit", msg)
        return [{"name": r.name, "predicted_slowdown": r.predicted_slowdown,
                 "predicted_latency_ms": r.predicted_latency_ms} for r in reply.replicas]

    def poll(self, timeout: float = 0.0) -> int:
        """Handle replies that arrive within ``timeout`` seconds; returns how many."""
        self._acquire()
        try:
            return self._pump(timeout)
        finally:
            self._lock.release()

    def pending(self) -> int:
        return len(self._pending)

    # -- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DaemonUnavailable("this client is closed")

    def _call(self, kind: str, msg, timeout: float | None = -1.0):
        """Send one request and wait for its answer (``timeout`` None: as long as the daemon
        stays alive; the keeper fails the request when it falls silent)."""
        self._check_open()
        msg.req_id = next(self._ids)
        fut = JobFuture(self, msg.req_id)
        self._acquire()
        try:
            self._pending[msg.req_id] = _Pending(kind, fut, fut.t0)
            self._send(P.encode(msg))
        finally:
            self._lock.release()
        try:
            return fut.result(self.timeout * 2 if timeout == -1.0 else timeout)
        except FutureTimeout:
            self._pending.pop(msg.req_id, None)  # a late answer is dropped, not kept forever
            raise

    def _send_raw(self, frames: list) -> None:
        """Send a message that gets no answer of its own (EAGER_OPS)."""
        self._check_open()
        self._acquire()
        try:
            self._sock.send_multipart(frames, copy=False)
            self._last_sent = time.monotonic()
        finally:
            self._lock.release()

    def _send(self, frames: list) -> None:
        self._sock.send_multipart(frames, copy=len(frames) <= 2)
        self._last_sent = time.monotonic()

    def _acquire(self) -> None:
        if not self._lock.acquire(blocking=False):
            with self._count_lock:
                self._waiters += 1
            try:
                os.write(self._wake_w, b"x")  # interrupt the thread polling the socket
            except (BlockingIOError, OSError):
                pass
            self._lock.acquire()
            with self._count_lock:
                self._waiters -= 1

    def _pump(self, timeout: float) -> int:
        """Under the lock: poll up to ``timeout`` and handle everything that is ready."""
        n = 0
        events = dict(self._poller.poll(int(timeout * 1000))) if timeout > 0 else {
            self._sock: zmq.POLLIN}
        if self._wake_r in events:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        while True:  # self._sock is re-read: a restart replaces it
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return n
            self._handle(frames)
            n += 1

    def _wait(self, fut: Future, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not fut.done():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                raise FutureTimeout(f"no answer within {timeout}s")
            if self._closed:
                return
            if self._waiters == 0 and self._lock.acquire(blocking=False):
                try:
                    if not fut.done():
                        self._pump(left)
                finally:
                    self._lock.release()
                if self._waiters:
                    time.sleep(0)  # let a thread that asked for the lock take it
            else:
                with fut._condition:  # another thread is pumping; it will resolve us
                    if not fut.done():
                        fut._condition.wait(min(left, 0.005))

    def _handle(self, frames: list) -> None:
        self._last_heard = time.monotonic()
        try:
            msg = P.decode(frames[0].bytes, frames[1].buffer, P.REPLIES)
        except (P.ProtocolError, IndexError) as e:
            log.warning("client: undecodable reply dropped: %s", e)
            return
        t = type(msg)
        if t is P.Pong:
            if msg.daemon_id != self.daemon_id:
                self._restarted()
            return
        if t is P.Accepted:
            p = self._pending.get(msg.req_id)
            if p is not None:
                p.future.job_id = msg.job_id
            return
        if t is P.Welcome:
            self._welcomed(msg)
            return
        p = self._pending.pop(msg.req_id, None)
        if p is None:
            if t is P.Error and msg.code == P.Code.NOT_CONNECTED:
                self._restarted()
            elif t is P.Error:
                log.warning("client: daemon error without a pending request: %s %s", msg.code,
                            msg.message)
            return
        fut = p.future
        if t is P.Done:
            fut.job_id = msg.job_id
            res, exc = resolve_done(msg, frames[2:], p.t0)
            fut.set_exception(exc) if exc is not None else fut.set_result(res)
        elif t is P.Error:
            if msg.code == P.Code.NOT_CONNECTED:
                fut.set_exception(DaemonRestarted(
                    "the daemon no longer knows this client (it restarted or dropped us as "
                    "silent); the request was lost: submit it again"))
                self._restarted()
            else:
                fut.set_exception(RequestError(msg.code, msg.message))
        elif t is P.EagerResult:
            fut.set_result((msg, frames[2:]))
        else:
            fut.set_result(msg)

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(exc)

    def _restarted(self) -> None:
        """The daemon is a new one: fail what the old one held, then HELLO and re-register."""
        log.warning("client: daemon at %s restarted; failing %d pending request(s) and "
                    "reconnecting", self.endpoint, len(self._pending))
        self._fail_all(DaemonRestarted(f"the daemon at {self.endpoint} restarted; the request "
                                       "was lost: submit it again"))
        if self._eager is not None:  # its tensors died with the old daemon
            self._eager.reset()
        self._reconnect()

    def _keep(self) -> None:
        """Heartbeats, liveness, and replies nobody is waiting for."""
        hb = self.welcome.heartbeat_s if self.welcome else 0.25
        while not self._stop.wait(hb):
            self._acquire()
            try:
                if self._closed:
                    return
                self._pump(0)
                now = time.monotonic()
                if now - self._last_sent >= hb:
                    self._send(P.encode(P.Ping(seq=0)))
                if self._pending and now - self._last_heard > self.timeout:
                    self._fail_all(DaemonUnavailable(
                        f"the daemon at {self.endpoint} has not answered for "
                        f"{now - self._last_heard:.1f}s; is it still running?"))
                    self._reconnect()
            except Exception:
                log.exception("client: keeper error")
            finally:
                self._lock.release()

