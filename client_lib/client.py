"""The synchronous client: ``Client(endpoint, tenant=...)``.

A thin front end over the session core (session.py: request ids, the pending table, reply
routing, restart replay, heartbeat and silence decisions); this file owns the socket, the
threads and the clock, and behaves like the asyncio one (aio.py) because both use that core.

The thread that waits does the socket I/O (no I/O thread in the hot path: handing frames to a
background thread roughly doubled the round trip in our measurements). A small keeper thread
wakes every heartbeat to ping the daemon, deliver replies nobody is waiting on, and fail pending
futures when the daemon dies or restarts. The socket is only touched under ``_lock``; a thread
that wants the lock while another polls interrupts the poll through a pipe.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Self

import zmq

from client_lib._common import (
    PROBE_AFTER_S,
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


class JobFuture(Future):
    """A ``concurrent.futures.Future`` whose waiting thread pumps the client's socket."""

    def __init__(self, client: Client, req_id: int):
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


class Client:
    """Connects to a daemon, says HELLO as ``tenant``, and submits jobs.

    ``timeout`` bounds the handshake and how long the daemon may stay silent while requests
    are pending before they fail with ``DaemonUnavailable`` (the client then reconnects).
    ``client_key`` (or ``GPUSCHED_CLIENT_KEY``): the tenant's CURVE secret key (a file from
    ``gpusched keys --client TENANT``) where the daemon lists tenants' keys (--tenant-keys).
    ``server_key`` (or ``GPUSCHED_SERVER_KEY``): the daemon's CURVE public key, or a file
    holding it, when the daemon encrypts its connections.
    """

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
        self._ctx = zmq.Context()
        self._lock = threading.RLock()  # the socket and the session are only touched under it
        self._waiters = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._eager = None  # the intercept path's session (client_lib/intercept.py), lazily
        self._closed = False
        self._sock: zmq.Socket | None = None
        self._poller = zmq.Poller()
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

    @property
    def welcome(self) -> P.Welcome | None:
        return self._s.welcome

    @property
    def daemon_id(self) -> str:
        return self._s.daemon_id

    # -- connection ---------------------------------------------------------------------------
    def _open_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._sock = make_socket(self._ctx, zmq.DEALER, self.endpoint, bind=False, max_frame=0,
                                 curve_server_key=self.server_key,
                                 curve_client_secret=self.client_key)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)

    def _connect(self) -> None:
        """First connection: HELLO and wait for WELCOME (or a clear refusal)."""
        why = unreachable(self.endpoint, connect=False)   # no socket file: no need to wait
        if why is not None:
            raise self._s.no_daemon(why)
        self._open_socket()
        self._sock.send_multipart(self._s.hello())
        first = min(self.timeout, PROBE_AFTER_S)
        if not self._sock.poll(int(first * 1000)):
            why = unreachable(self.endpoint)   # no daemon at all: say so now, not at timeout
            if why is not None:
                raise self._s.no_daemon(why)
            if not self._sock.poll(int((self.timeout - first) * 1000)):
                raise self._s.no_answer()
        self._s.handshake(self._sock.recv_multipart(), time.perf_counter())

    def _apply(self, out: Outbox) -> None:
        """Under the lock: what the session asks for (a fresh socket and/or messages to send).
        One connection keeps order: the daemon sees HELLO and the replayed models before any
        later SUBMIT."""
        if out.reconnect:
            if self._eager is not None:  # its tensors lived in the old connection
                self._eager.reset()
            self._open_socket()
        for m in out.messages:
            self._sock.send_multipart(m, copy=len(m) <= 2)

    def __enter__(self) -> Self:
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
            self._s.fail_all(DaemonUnavailable("the client was closed"))
            self._closed = True  # after the futures failed: waiters see a result, not a timeout
            self._sock.close(0)
        finally:
            self._lock.release()
        self._keeper.join(timeout=2)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- requests -----------------------------------------------------------------------------
    def register_model(self, name: str, kernels, example_inputs=None, slo_ms: float = 0.0,
                       example_kwargs: dict | None = None, max_shapes: int = 8):
        """Register (or replace) a model. Given a kernel list: returns the kernel count. Given a
        torch module and ``example_inputs`` (its positional arguments; ``example_kwargs`` its
        keyword ones; any nesting of tensors, ``None`` and constants): captures its aten ops,
        ships graph and weights once and returns a ``ModelHandle`` (see client_lib/models.py),
        which returns the model's own output structure and captures again, once per new set of
        input shapes (at most ``max_shapes``). Registered models are sent again after a daemon
        restart."""
        if example_inputs is not None or example_kwargs is not None:
            return self._register_module(name, kernels, example_inputs or (), slo_ms,
                                         example_kwargs, max_shapes)
        msg = P.Register(req_id=0, model=name, kernels=kernel_specs(kernels))
        return self._call("register", msg).kernels

    def _register_module(self, name: str, module, example_inputs, slo_ms: float,
                         example_kwargs=None, max_shapes: int = 8):
        from client_lib.capture import CaptureError, trace
        from client_lib.models import ModelHandle, graph_frames
        self._check_open()
        try:
            captured = trace(module, tuple(example_inputs), example_kwargs)
        except CaptureError as e:
            raise CaptureError(f"model {name!r}: {e}") from e.__cause__
        msg, frames = graph_frames(name, captured, self._s.max_frame)
        self._call("register", msg, self.timeout * 2 + 60, raw=frames)
        return ModelHandle(self, name, captured, slo_ms, module, max_shapes)

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
        model = cuda_model(name, source, buffers, launches, ptx, options, instrument)
        return self._call("register", P.RegisterCuda(req_id=0, model=name, cuda=model)).kernels

    def intercept(self, slo_ms: float = 0.0, priority: int = 0):
        """``with client.intercept(): y = model(x)``: every aten op of an unmodified eager
        model runs in the daemon (needs ``--backend torch``); see client_lib/intercept.py."""
        from client_lib.intercept import EagerSession, intercept
        self._check_open()
        if self._eager is None:
            self._eager = EagerSession(self)
        return intercept(self._eager, slo_ms, priority)

    def generate(self, model, input_ids, max_new_tokens: int = 16, **kw):
        """Greedy generation with the model's KV cache kept in the daemon, each token step one
        job of its scheduler; TTFT/TPOT SLOs via ``ttft_slo_ms``/``tpot_slo_ms`` (see
        client_lib/generate.py). Returns a ``Generation`` (tokens, sequences, timings)."""
        from client_lib.generate import generate
        self._check_open()
        return generate(self, model, input_ids, max_new_tokens, **kw)

    def submit(self, model: str, inputs=(), slo_ms: float = 0.0, priority: int = 0,
               ack: bool = False) -> JobFuture:
        """Queue one job; the future resolves to a ``JobResult`` or raises (see errors.py)."""
        self._check_open()
        s = self._s
        req_id = s.next_id()
        fut = JobFuture(self, req_id)
        frames = submit_frames(req_id, model, inputs, slo_ms, priority, ack, s.max_frame)
        self._acquire()
        try:
            s.track(req_id, "submit", fut, fut.t0)
            self._send(frames, req_id)
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
        return admitted(self._call("admit", admit_msg(replicas, replace)))

    def poll(self, timeout: float = 0.0) -> int:
        """Handle replies that arrive within ``timeout`` seconds; returns how many."""
        self._acquire()
        try:
            return self._pump(timeout)
        finally:
            self._lock.release()

    def pending(self) -> int:
        return len(self._s.pending)

    # -- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DaemonUnavailable("this client is closed")

    def _call(self, kind: str, msg, timeout: float | None = -1.0, raw: list = ()):
        """Send one request and wait for its answer (``timeout`` None: as long as the daemon
        stays alive; the keeper fails the request when it falls silent)."""
        self._check_open()
        fut = JobFuture(self, 0)
        self._acquire()
        try:
            frames = self._s.request(kind, msg, fut, fut.t0, raw)
            fut.req_id = msg.req_id
            self._send(frames, msg.req_id)
        finally:
            self._lock.release()
        try:
            return fut.result(self.timeout * 2 if timeout == -1.0 else timeout)
        except FutureTimeout:
            self._acquire()
            try:
                self._s.forget(fut.req_id)  # a late answer is dropped, not kept forever
            finally:
                self._lock.release()
            raise

    def _send_raw(self, frames: list) -> None:
        """Send a message that gets no answer of its own (EAGER_OPS)."""
        self._check_open()
        self._acquire()
        try:
            self._sock.send_multipart(frames, copy=False)
            self._s.sent(time.perf_counter())
        finally:
            self._lock.release()

    def _send(self, frames: list, req_id: int) -> None:
        """Under the lock: send a tracked request; if the send fails nothing waits for it."""
        try:
            self._sock.send_multipart(frames, copy=len(frames) <= 2)
        except BaseException:
            self._s.forget(req_id)
            raise

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
        on_reply = self._s.on_reply
        while True:  # self._sock is re-read: a reconnect replaces it
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return n
            out = on_reply(frames, time.perf_counter())
            if out is not None:
                self._apply(out)
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

    def _keep(self) -> None:
        """Heartbeats, liveness (the session decides), and replies nobody is waiting for."""
        s = self._s
        while not self._stop.wait(s.heartbeat_s):
            self._acquire()
            try:
                if self._closed:
                    return
                self._pump(0)
                out = s.tick(time.perf_counter())
                if out is not None:
                    self._apply(out)
            except Exception:
                log.exception("client: keeper error")
            finally:
                self._lock.release()
