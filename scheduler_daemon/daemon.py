"""The daemon process: owns the socket and the device, and drives the scheduler core.

One thread, one poll loop (the overhead benchmark showed a thread handing frames over a queue
roughly doubles the round trip): read every ready frame, run due device events, dispatch what
the core picks, answer finished jobs. Signal handlers only set a flag and wake the loop.
"""
from __future__ import annotations

import hmac
import itertools
import logging
import os
import secrets
import signal
import stat

import msgspec
import zmq

from scheduler_daemon.clock import Environment, RealtimeEnvironment
from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.policies import make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices import Device, make_device
from scheduler_daemon.metrics import NullMetrics, PrometheusMetrics
from scheduler_daemon.server.config import DaemonConfig
from scheduler_daemon.server.eager import EagerStreams
from scheduler_daemon.server.sessions import Session, Tenant
from scheduler_daemon.transport.sockets import make_socket
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.protocol import Code, ProtocolError

log = logging.getLogger("gpusched.daemon")

_NOBLOCK, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)
_SNDMORE, _RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)


class DaemonError(Exception):
    """A daemon that cannot start (endpoint in use, bad option)."""


class Daemon:
    def __init__(self, config: DaemonConfig, device: Device | None = None,
                 env: Environment | None = None):
        self.config = config
        self.env = env or RealtimeEnvironment()
        self.device = device or make_device(config.backend, config.gpu_spec, config.speed,
                                            config.torch_device, config.hw_queues)
        policy = make_policy(config.policy)
        if not policy.bounded and self.device.name == "torch":
            # the baselines put all of a job's kernels on the device at once; torch workers would
            # run them concurrently on one job's tensors: wrong results, so refuse
            raise DaemonError(f"policy {policy.name!r} is an experiment baseline for the "
                              "simulated GPU; with --backend torch use fifo, srpt, edf, paella, "
                              "slo or slo-srpt")
        self.core = SchedulerCore(policy, self.device.spec.capacity, config.max_extra, config.shed)
        if hasattr(self.device, "alloc_limit"):  # no single op may allocate past the quota
            self.device.alloc_limit = config.limits.max_tenant_bytes
        self.device.start(self.env, self._on_complete, self._on_fail)
        self.daemon_id = secrets.token_hex(8)
        # job ids name jobs in answers and logs; requests name jobs by the client's own req_id,
        # so ids need to be unique, not secret
        self._job_ids = itertools.count(1)
        self.sessions: dict[bytes, Session] = {}
        self.tenants: dict[str, Tenant] = {}
        self.started = self.env.now
        self.ctx: zmq.Context | None = None
        self._owns_socket_file = False
        self._monitor: zmq.Socket | None = None
        self._hello_fd = -1
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.sock: zmq.Socket | None = None
        self._stop = False
        self._draining = False
        self._drain_deadline = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        lim = config.limits
        self._welcome_limits = P.Limits(lim.max_frame_bytes, lim.max_input_bytes, lim.max_inputs,
                                        lim.max_kernels, lim.max_models, lim.max_queued,
                                        lim.max_tenant_bytes)
        self.metrics = NullMetrics()
        self._handlers = {P.Register: self._register, P.Submit: self._submit,
                          P.Cancel: self._cancel, P.Status: self._status, P.Ping: self._ping,
                          P.Bye: self._bye, P.Admit: self._admit,
                          P.RegisterGraph: self._register_graph}
        self._handlers[P.RegisterCuda] = self._register_cuda
        self.eager = EagerStreams(self)    # the intercept path's per-client op streams
        self._handlers[P.EagerOps] = self.eager.on_ops
        self._handlers[P.EagerSync] = self.eager.on_sync
        self._admission = None  # built at the first ADMIT (it loads profiles)

    # -- life cycle ---------------------------------------------------------------------------
    def bind(self) -> None:
        ep = self.config.endpoint
        self.ctx = zmq.Context()
        if ep.startswith("ipc://") and os.path.lexists(ep[6:]):
            path = ep[6:]
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise DaemonError(f"{path} exists and is not a socket: pass another --endpoint")
            if _daemon_answers(self.ctx, ep, self.config.curve_secret):
                raise DaemonError(f"a daemon is already serving {ep}; stop it first "
                                  f"or pass another --endpoint")
            os.unlink(path)  # stale socket file of a daemon that died
        try:
            self.sock = make_socket(self.ctx, zmq.ROUTER, ep, bind=True,
                                    max_frame=self.config.limits.max_frame_bytes,
                                    curve_secret=self.config.curve_secret)
        except (zmq.ZMQError, OSError) as e:
            raise DaemonError(f"cannot bind {ep}: {e}") from None
        self._owns_socket_file = ep.startswith("ipc://")
        # a closed connection (a killed client) is seen at once through the socket monitor
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        if self.config.metrics_port is not None:
            try:
                self.metrics = PrometheusMetrics(self, self.config.metrics_port)
            except OSError as e:
                raise DaemonError(f"cannot serve metrics on port {self.config.metrics_port}: "
                                  f"{e}; pick a free --metrics-port") from None
            except ImportError:
                raise DaemonError("--metrics-port needs prometheus-client: "
                                  "pip install 'gpusched[metrics]'") from None
        log.info("daemon: serving %s id=%s device=%s policy=%s shed=%s", ep, self.daemon_id,
                 self.device.describe(), self.core.policy.name, self.config.shed)

    def request_stop(self, *_args) -> None:
        """Safe to call from a signal handler or another thread. A second call while draining
        ends the drain at once."""
        if self._stop:
            self._drain_deadline = float("-inf")
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def close(self) -> None:
        if isinstance(self.metrics, PrometheusMetrics):
            self.metrics.close()
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        self.device.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._owns_socket_file:  # only the file this daemon bound: never another's
            try:
                os.unlink(self.config.endpoint[6:])
            except OSError:
                pass

    # -- the loop -------------------------------------------------------------------------------
    def serve(self) -> None:
        if self.sock is None:
            self.bind()
        sock, env = self.sock, self.env
        poller = zmq.Poller()
        # the monitor first: a disconnect must be handled before a later HELLO that reuses its
        # file descriptor (poll reports ready sockets in registration order)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        dev_fd = self.device.wake_fd()
        if dev_fd is not None:
            poller.register(dev_fd, zmq.POLLIN)
        check_every = min(0.25, self.config.client_timeout_s / 4,
                          self.config.disconnect_grace_s / 2)
        next_check = env.now + check_every
        recv, events = self._recv, sock.getsockopt
        while True:
            now = env.tick()
            if self._stop and not self._draining:
                self._begin_drain(now)
            if self._draining and (self._drained() or now >= self._drain_deadline):
                self._end_drain(now)
                break
            wait = min(env.peek(), next_check) - now
            for fd, _ in poller.poll(0 if wait <= 0 else int(wait * 1000) if wait < 3600
                                     else 3_600_000):
                if fd is sock:
                    for _ in range(512):  # bounded, so device events are not starved
                        try:
                            frames = recv()
                        except zmq.Again:
                            break
                        self._on_frames(frames)
                        if not events(_EVENTS) & _POLLIN:  # cheaper than a raised zmq.Again
                            break
                elif fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif fd == dev_fd:
                    self.device.collect()
                elif fd is self._monitor:
                    self._on_monitor(now)
            env.tick()
            try:
                self._advance()
            except Exception:  # a bug in a device callback must not take every tenant down
                log.exception("daemon: internal error while advancing the device")
            # reap only with the socket drained: a backlog must not make live clients look silent
            if now >= next_check and not events(_EVENTS) & _POLLIN:
                self._reap_silent(now)
                next_check = now + check_every
        log.info("daemon: stopped")

    def _advance(self) -> None:
        """Run due device events, dispatch, answer finished jobs, until nothing is due."""
        env, core, launch = self.env, self.core, self.device.launch
        while True:
            now = env.now
            if env.peek() <= now:
                env.run_due()
            job = core.next_dispatch(now)
            while job is not None:
                try:
                    launch(job)
                except Exception as e:  # a device error fails that job, not the daemon
                    log.exception("daemon: launch failed job=%s", job.id)
                    core.on_fail(job, now, f"launch failed: {type(e).__name__}: {e}")
                job = core.next_dispatch(now)
            if core.has_finished():
                for job in core.drain_finished():
                    self._finish(job)
                continue  # finishing can queue more work (an eager stream's next batch)
            if env.peek() > now:
                return

    # -- device callbacks --------------------------------------------------------------------
    def _on_complete(self, job: Job, now: float, duration_s: float) -> None:
        self.core.on_complete(job, now, duration_s)

    def _on_fail(self, job: Job, now: float, message: str) -> None:
        log.warning("daemon: kernel failed job=%s tenant=%s model=%s kernel=%d: %s", job.id,
                    job.tenant, job.model.name, job.done_kernels, message)
        self.core.on_fail(job, now, message)

    # -- frames in ----------------------------------------------------------------------------
    def _recv(self) -> list:
        """One message: identity, type and body as bytes (small: copying is cheaper than a
        Frame object), raw payload frames as zero-copy ``zmq.Frame``s. The identity frame is
        kept aside so that a HELLO can read which connection (fd) it came on."""
        recv, more = self.sock.recv, self.sock.getsockopt
        parts = [recv(_NOBLOCK)]
        while more(_RCVMORE):
            if len(parts) == 2 and parts[1] == b"HELLO":  # which connection it came on
                frame = recv(_NOBLOCK, copy=False)
                self._hello_fd = _srcfd(frame)
                parts.append(frame.bytes)
            else:
                parts.append(recv(_NOBLOCK) if len(parts) < 3 else recv(_NOBLOCK, copy=False))
        return parts

    def _on_monitor(self, now: float) -> None:
        from zmq.utils.monitor import recv_monitor_message
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            if ev["event"] != zmq.EVENT_DISCONNECTED:
                continue
            fd = int(ev["value"])
            # gone unless it speaks within the grace: fds are reused, so a live client that
            # got this fd afterwards survives by its next heartbeat
            limit = now - self.config.client_timeout_s + self.config.disconnect_grace_s
            for s in self.sessions.values():
                if s.fd == fd and s.last_seen > limit:
                    s.last_seen = limit

    def _on_frames(self, frames: list) -> None:
        identity = frames[0]
        msg = None
        try:
            if len(frames) < 3:
                raise ProtocolError(Code.BAD_FRAME, "a message is the frames (type, body, *raw); "
                                    f"got {len(frames) - 1} frame(s)")
            msg = P.decode(frames[1], frames[2], P.REQUESTS)
            if type(msg) is P.Hello:
                self._hello(identity, msg, frames[3:])
                return
            session = self.sessions.get(identity)
            if session is None:
                raise ProtocolError(Code.NOT_CONNECTED, "this client has not said HELLO (or the "
                                    "daemon restarted or dropped it as silent): send HELLO first")
            session.last_seen = self.env.now
            self._handlers[type(msg)](session, msg, frames[3:])
        except ProtocolError as e:
            self._error(identity, _req_id(msg, frames), e.code, e.message)
        except Exception as e:  # never die on a request; say it was our fault
            log.exception("daemon: internal error handling a request")
            self._error(identity, _req_id(msg, frames), Code.INTERNAL,
                        f"internal error ({type(e).__name__}); the daemon logged it")

    def _send(self, identity: bytes, msg: P.Msg, raw: list | None = None) -> None:
        send = self.sock.send
        tag, body = P.encode(msg)
        send(identity, _SNDMORE)
        send(tag, _SNDMORE)
        if raw:
            send(body, _SNDMORE)
            for buf in raw[:-1]:
                send(buf, _SNDMORE, copy=False)
            send(raw[-1], copy=False)
        else:
            send(body)

    def _error(self, identity: bytes, req_id: int, code: str, message: str) -> None:
        self.metrics.request_error(code)
        log.info("daemon: error to client=%s req=%d code=%s: %s", identity.hex(), req_id, code,
                 message)
        self._send(identity, P.Error(req_id=req_id, code=code, message=message))

    # -- handlers -----------------------------------------------------------------------------
    def _hello(self, identity: bytes, msg: P.Hello, raw: list) -> None:
        if msg.version != P.PROTOCOL_VERSION:
            raise ProtocolError(Code.VERSION, f"protocol version {msg.version} is not served; "
                                f"this daemon speaks version {P.PROTOCOL_VERSION}: upgrade the "
                                "client library to match the daemon")
        tokens = self.config.tenant_tokens
        if tokens:   # tenants are identities: each has its own token
            want = tokens.get(msg.tenant)
            if want is None or not hmac.compare_digest(msg.token.encode(), want.encode()):
                raise ProtocolError(Code.AUTH, f"tenant {msg.tenant!r}: unknown tenant or wrong "
                                    "token: pass that tenant's token from the daemon's "
                                    "--tenant-tokens file (Client(..., token=...) or "
                                    "GPUSCHED_TOKEN)")
        elif self.config.token and not hmac.compare_digest(msg.token.encode(),
                                                           self.config.token.encode()):
            raise ProtocolError(Code.AUTH, "wrong or missing token: pass the daemon's token "
                                "(Client(..., token=...) or GPUSCHED_TOKEN)")
        old = self.sessions.get(identity)
        if old is not None:
            self._drop_session(old, "re-HELLO")
        tenant = self.tenants.get(msg.tenant)
        if tenant is None:
            tenant = self.tenants[msg.tenant] = Tenant(msg.tenant)
        tenant.clients += 1
        self.sessions[identity] = Session(identity, tenant, self.env.now, self._hello_fd)
        self._hello_fd = -1
        log.info("daemon: hello client=%s tenant=%s", identity.hex(), msg.tenant)
        self._send(identity, P.Welcome(version=P.PROTOCOL_VERSION, daemon_id=self.daemon_id,
                                       device=self.device.describe(),
                                       policy=self.core.policy.name,
                                       heartbeat_s=self.config.heartbeat_s,
                                       limits=self._welcome_limits))

    def _register(self, s: Session, msg: P.Register, raw: list) -> None:
        lim, tenant = self.config.limits, s.tenant
        if len(msg.kernels) > lim.max_kernels:
            raise ProtocolError(Code.TOO_LARGE, f"model {msg.model!r} has {len(msg.kernels)} "
                                f"kernels; the limit is {lim.max_kernels}")
        if msg.model not in tenant.models and len(tenant.models) >= lim.max_models:
            raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} already has "
                                f"{len(tenant.models)} models (limit {lim.max_models})")
        try:
            self.device.validate(msg.kernels)
        except ValueError as e:
            raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r}: {e}") from None
        self._forget_loaded((tenant.name, msg.model))
        tenant.models[msg.model] = self.core.make_model((tenant.name, msg.model), msg.model,
                                                        msg.kernels)
        log.info("daemon: registered tenant=%s model=%s kernels=%d", tenant.name, msg.model,
                 len(msg.kernels))
        self._send(s.identity, P.Registered(req_id=msg.req_id, model=msg.model,
                                            kernels=len(msg.kernels)))

    def _forget_loaded(self, key, keep: str = "") -> None:
        """A model replaced by another kind: the device drops what it loaded for the old one
        (a registered graph's weights, a CUDA module)."""
        for kind in ("graph", "cuda"):
            forget = getattr(self.device, f"forget_{kind}", None)
            if forget is not None and kind != keep:
                forget(key)

    def _register_graph(self, s: Session, msg: P.RegisterGraph, raw: list) -> None:
        """A captured torch model: each of its ops becomes one schedulable kernel (issue 4)."""
        lim, tenant = self.config.limits, s.tenant
        load = getattr(self.device, "load_graph", None)
        if load is None:
            raise ProtocolError(Code.BAD_MODEL, f"backend {self.device.name!r} cannot run "
                                "registered torch models: start the daemon with --backend torch")
        if msg.model not in tenant.models and len(tenant.models) >= lim.max_models:
            raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} already has "
                                f"{len(tenant.models)} models (limit {lim.max_models})")
        counts = msg.weight_frames or [1] * len(msg.weights)
        if len(counts) != len(msg.weights) or sum(counts) != len(raw):
            raise ProtocolError(Code.BAD_INPUT, f"{len(msg.weights)} weights in {sum(counts)} "
                                f"declared frames but {len(raw)} raw frames sent")
        total, bufs, at = 0, [], 0
        for i, (meta, n) in enumerate(zip(msg.weights, counts)):
            parts = raw[at:at + n]
            at += n
            try:
                want = meta.nbytes()
            except ValueError as e:
                raise ProtocolError(Code.BAD_INPUT, f"weight {i}: {e}") from None
            got = sum(len(f) for f in parts)
            if want != got:
                raise ProtocolError(Code.BAD_INPUT, f"weight {i}: {meta.dtype}{meta.shape} needs "
                                    f"{want} bytes, its frames have {got}")
            total += want
            bufs.append(parts[0].buffer if n == 1 else b"".join(f.buffer for f in parts))
        if total > lim.max_tenant_bytes:
            raise ProtocolError(Code.TOO_LARGE, f"model {msg.model!r}: its weights take {total} "
                                f"bytes, more than tenant {tenant.name!r}'s quota of "
                                f"{lim.max_tenant_bytes} bytes")
        try:
            kernels = load((tenant.name, msg.model), msg.graph,
                           list(zip(msg.weights, bufs)))
        except (ValueError, TypeError, msgspec.ValidationError, msgspec.DecodeError) as e:
            raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r}: {e}") from None
        if len(kernels) > lim.max_kernels:
            raise ProtocolError(Code.TOO_LARGE, f"model {msg.model!r} has {len(kernels)} "
                                f"ops; the limit is {lim.max_kernels}")
        self._forget_loaded((tenant.name, msg.model), keep="graph")
        tenant.models[msg.model] = self.core.make_model((tenant.name, msg.model), msg.model, kernels)
        log.info("daemon: registered graph tenant=%s model=%s ops=%d weight_bytes=%d",
                 tenant.name, msg.model, len(kernels), total)
        self._send(s.identity, P.Registered(req_id=msg.req_id, model=msg.model,
                                            kernels=len(kernels)))

    def _register_cuda(self, s: Session, msg: P.RegisterCuda, raw: list) -> None:
        """Raw CUDA kernels (issue 4): compiled and checked on every backend, so a compile
        error or an impossible launch shape comes back here too; launched by --backend cuda."""
        from scheduler_daemon.cuda import CudaUnavailable
        from scheduler_daemon.cuda.build import build_model
        from scheduler_daemon.cuda.limits import limits_for_spec
        lim, tenant = self.config.limits, s.tenant
        if msg.model not in tenant.models and len(tenant.models) >= lim.max_models:
            raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} already has "
                                f"{len(tenant.models)} models (limit {lim.max_models})")
        if len(msg.cuda.launches) > lim.max_kernels:
            raise ProtocolError(Code.TOO_LARGE, f"model {msg.model!r} has "
                                f"{len(msg.cuda.launches)} launches; the limit is "
                                f"{lim.max_kernels}")
        need = sum(b.nbytes() for b in msg.cuda.buffers)
        if need > lim.max_tenant_bytes:
            raise ProtocolError(Code.TOO_LARGE, f"model {msg.model!r}: one job's buffers take "
                                f"{need} bytes, more than tenant {tenant.name!r}'s quota of "
                                f"{lim.max_tenant_bytes} bytes")
        load = getattr(self.device, "load_cuda", None)
        try:
            if load is None:
                _, kernels = build_model(msg.cuda, limits_for_spec(self.device.spec))
                raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r} compiled "
                                    f"({len(kernels)} launches), but backend "
                                    f"{self.device.name!r} cannot launch CUDA kernels: start "
                                    "the daemon with --backend cuda on a GPU node")
            kernels = load((tenant.name, msg.model), msg.cuda)
        except CudaUnavailable as e:
            raise ProtocolError(Code.BAD_MODEL, str(e)) from None
        except ValueError as e:          # CudaCompileError (with the log) included
            raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r}: {e}") from None
        self._forget_loaded((tenant.name, msg.model), keep="cuda")
        tenant.models[msg.model] = self.core.make_model((tenant.name, msg.model), msg.model,
                                                        kernels)
        log.info("daemon: registered CUDA model tenant=%s model=%s launches=%d", tenant.name,
                 msg.model, len(kernels))
        self._send(s.identity, P.Registered(req_id=msg.req_id, model=msg.model,
                                            kernels=len(kernels)))

    def _submit(self, s: Session, msg: P.Submit, raw: list) -> None:
        if self._draining:
            raise ProtocolError(Code.DRAINING, "the daemon is shutting down and takes no new jobs")
        if msg.req_id in s.jobs:
            raise ProtocolError(Code.DUPLICATE, f"req_id {msg.req_id} is already in use by an "
                                "unfinished job of this client")
        tenant, lim = s.tenant, self.config.limits
        model = tenant.models.get(msg.model)
        if model is None:
            raise ProtocolError(Code.UNKNOWN_MODEL, f"model {msg.model!r} is not registered for "
                                f"tenant {tenant.name!r}: register it first")
        if tenant.unfinished >= lim.max_queued:
            raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} has {tenant.unfinished} "
                                f"unfinished jobs (limit {lim.max_queued}); wait for some to finish")
        payload, nbytes = None, 0
        if msg.inputs or raw:
            payload = self._inputs(msg, raw)
            nbytes = sum(len(b) for _, b in payload)
            if tenant.bytes_held + nbytes > lim.max_tenant_bytes:
                raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} holds "
                                    f"{tenant.bytes_held} input bytes in unfinished jobs; "
                                    f"{nbytes} more would pass the limit of "
                                    f"{lim.max_tenant_bytes}: wait for jobs to finish")
        job = Job(f"{self.daemon_id}-{next(self._job_ids)}", tenant.name, model, msg.slo_ms, self.env.now,
                  msg.priority, payload, (s, msg.req_id))
        if payload is not None:
            try:
                self.device.prepare(job)
            except (ValueError, TypeError, RuntimeError) as e:
                raise ProtocolError(Code.BAD_INPUT, f"inputs rejected by the device: {e}") from None
        job.nbytes = nbytes
        self.core.add(job, self.env.now)
        s.jobs[msg.req_id] = job
        tenant.unfinished += 1
        tenant.bytes_held += nbytes
        if msg.ack:
            self._send(s.identity, P.Accepted(req_id=msg.req_id, job_id=job.id))
        if self._debug:  # per-job lines: read once, so they cost nothing when off
            log.debug("daemon: job queued job=%s tenant=%s model=%s req=%d slo_ms=%g", job.id,
                      tenant.name, model.name, msg.req_id, msg.slo_ms)

    def _inputs(self, msg: P.Submit, raw: list) -> list:
        lim = self.config.limits
        if len(msg.inputs) != len(raw):
            raise ProtocolError(Code.BAD_INPUT, f"{len(msg.inputs)} inputs declared but "
                                f"{len(raw)} raw frames sent: send one frame per input")
        if len(raw) > lim.max_inputs:
            raise ProtocolError(Code.TOO_LARGE, f"{len(raw)} inputs; the limit is {lim.max_inputs}")
        total = 0
        for i, (meta, frame) in enumerate(zip(msg.inputs, raw)):
            try:
                want = meta.nbytes()
            except ValueError as e:
                raise ProtocolError(Code.BAD_INPUT, f"input {i}: {e}") from None
            if want != len(frame):
                raise ProtocolError(Code.BAD_INPUT, f"input {i}: {meta.dtype}{meta.shape} needs "
                                    f"{want} bytes, its frame has {len(frame)}")
            total += want
        if total > lim.max_input_bytes:
            raise ProtocolError(Code.TOO_LARGE, f"inputs total {total} bytes; the limit is "
                                f"{lim.max_input_bytes}")
        return [(m, f.buffer) for m, f in zip(msg.inputs, raw)]

    def _cancel(self, s: Session, msg: P.Cancel, raw: list) -> None:
        job = s.jobs.get(msg.target)
        ok = job is not None and self.core.abort(job, self.env.now)
        self._send(s.identity, P.CancelReply(req_id=msg.req_id, target=msg.target, cancelled=ok))
        if ok:
            self._finish(job)

    def _status(self, s: Session, msg: P.Status, raw: list) -> None:
        if msg.target is not None:
            job = s.jobs.get(msg.target)
            if job is None:
                raise ProtocolError(Code.UNKNOWN_JOB, f"no unfinished job of this client has "
                                    f"req_id {msg.target} (finished jobs were already answered)")
            js = P.JobStatus(job_id=job.id, model=job.model.name, state=job.state.value,
                             kernels_done=job.done_kernels, kernels=len(job.model.kernels),
                             remaining_ms=job.remaining_s() * 1e3)
            self._send(s.identity, P.StatusReply(req_id=msg.req_id, job=js))
            return
        reply = self.summary(msg.req_id)
        if self.config.tenant_tokens:  # a tenant sees only itself
            reply.tenants = [t for t in reply.tenants if t.tenant == s.tenant.name]
        self._send(s.identity, reply)

    def summary(self, req_id: int = 0) -> P.StatusReply:
        running: dict[str, int] = {}
        queued: dict[str, int] = {}
        for sess in self.sessions.values():
            for job in sess.jobs.values():
                d = running if job.first_start is not None else queued
                d[job.tenant] = d.get(job.tenant, 0) + 1
        eager_bytes: dict[str, int] = {}
        for sess in self.sessions.values():
            if sess.eager is not None:
                n = sess.tenant.name
                eager_bytes[n] = eager_bytes.get(n, 0) + sess.eager.bytes
        tenants = [P.TenantStatus(tenant=t.name, clients=t.clients, queued=queued.get(t.name, 0),
                                  running=running.get(t.name, 0), completed=t.completed,
                                  cancelled=t.cancelled, failed=t.failed, shed=t.shed,
                                  slo_missed=t.slo_missed, p50_ms=t.percentile(0.5),
                                  p99_ms=t.percentile(0.99),
                                  bytes_held=t.bytes_held + eager_bytes.get(t.name, 0))
                   for t in self.tenants.values()]
        return P.StatusReply(req_id=req_id, daemon_id=self.daemon_id,
                             device=self.device.describe(), policy=self.core.policy.name,
                             uptime_s=self.env.now - self.started, queued=len(self.core),
                             inflight=self.core.inflight,
                             utilisation=self.device.utilisation(), tenants=tenants)

    def _admit(self, s: Session, msg: P.Admit, raw: list) -> None:
        from gpusched.placement.admission import Admission, AdmissionError
        try:
            if self._admission is None:
                self._admission = Admission(self.device.spec.name)
            got = self._admission.admit([(r.name, r.model, r.batch, r.rate, r.slo_ms)
                                         for r in msg.replicas], msg.replace)
        except (AdmissionError, ValueError) as e:
            log.info("admission: refused for tenant %s: %s", s.tenant.name, e)
            raise ProtocolError(Code.ADMISSION, str(e)) from None
        self._send(s.identity, P.Admitted(req_id=msg.req_id,
                                          replicas=[P.AdmittedReplica(**g) for g in got]))

    def _ping(self, s: Session, msg: P.Ping, raw: list) -> None:
        self._send(s.identity, P.Pong(seq=msg.seq, daemon_id=self.daemon_id))

    def _bye(self, s: Session, msg: P.Bye, raw: list) -> None:
        self._drop_session(s, "bye")

    # -- jobs out -----------------------------------------------------------------------------
    def _finish(self, job: Job) -> None:
        """Answer a job that reached a terminal state: exactly one DONE per SUBMIT.
        The answer goes out first; the counters are updated after it."""
        if type(job.owner) is not tuple:  # an intercepted op batch: answered at a sync point
            self.eager.finished(job)
            return
        session, req_id = job.owner
        if session.jobs.pop(req_id, None) is None:
            return  # already answered, or its client is gone
        state = job.state
        metas, bufs = [], []
        if state is JobState.DONE and job.payload is not None:
            try:
                for meta, buf in self.device.outputs(job):
                    metas.append(meta)
                    bufs.append(buf)
            except Exception as e:  # e.g. a device error copying outputs back
                state = job.state = JobState.FAILED
                job.error, metas, bufs = f"outputs: {type(e).__name__}: {e}", [], []
        job.payload = None
        total = job.total_s
        met = state is JobState.DONE and (job.slo_s <= 0 or total <= job.slo_s)
        self._send(session.identity, P.Done(
            req_id=req_id, job_id=job.id, status=state.value, queue_ms=job.queue_s * 1e3,
            exec_ms=job.exec_s * 1e3, total_ms=total * 1e3, slo_met=met, outputs=metas,
            error=job.error or ""), bufs)
        tenant = session.tenant
        tenant.unfinished -= 1
        tenant.bytes_held -= job.nbytes
        if state is JobState.DONE:
            tenant.completed += 1
            tenant.latencies_ms.append(total * 1e3)
        elif state is JobState.CANCELLED:
            tenant.cancelled += 1
        elif state is JobState.SHED:
            tenant.shed += 1
        else:
            tenant.failed += 1
        missed = not met and job.slo_s > 0 and state is not JobState.CANCELLED
        if missed:
            tenant.slo_missed += 1
        self.metrics.job_finished(tenant.name, job.model.name, state.value, total, missed)
        if self._debug:
            log.debug("daemon: job %s job=%s tenant=%s model=%s total_ms=%.3f exec_ms=%.3f "
                      "slo_met=%s", state.value, job.id, tenant.name, job.model.name, total * 1e3,
                      job.exec_s * 1e3, met)

    def _drop_session(self, s: Session, why: str) -> None:
        """End a client's session: each unfinished job is cancelled and still answered (a
        client that is gone never reads it; one that said HELLO again does)."""
        now = self.env.now
        n = 0
        for job in list(s.jobs.values()):
            if self.core.abort(job, now):
                job.error = f"cancelled: the client's session ended ({why})"
                n += 1
            self._finish(job)  # also a job that ended but was not answered yet (shed, done)
        s.jobs.clear()
        self.eager.drop(s)
        s.tenant.clients -= 1
        self.sessions.pop(s.identity, None)
        log.info("daemon: dropped client=%s tenant=%s (%s), cancelled %d job(s)",
                 s.identity.hex(), s.tenant.name, why, n)

    def _reap_silent(self, now: float) -> None:
        limit = now - self.config.client_timeout_s
        for s in [s for s in self.sessions.values() if s.last_seen < limit]:
            self._drop_session(s, f"silent for {now - s.last_seen:.1f}s")

    # -- draining -----------------------------------------------------------------------------
    def _begin_drain(self, now: float) -> None:
        self._draining = True
        self._drain_deadline = now + self.config.drain_grace_s
        n = 0
        for job in self.core.queued_jobs():
            if job.first_start is None and self.core.abort(job, now):
                self._finish(job)
                n += 1
        log.info("daemon: draining: cancelled %d queued job(s), letting %d started job(s) finish",
                 n, sum(len(s.jobs) for s in self.sessions.values()))

    def _drained(self) -> bool:
        return not (any(s.jobs for s in self.sessions.values())
                    or self.eager.busy(self.sessions.values()))

    def _end_drain(self, now: float) -> None:
        for s in list(self.sessions.values()):
            for job in list(s.jobs.values()):
                if self.core.abort(job, now):
                    job.error = "daemon stopped before the job finished"
                self._finish(job)
        self.eager.abort_all(list(self.sessions.values()), now)


def _srcfd(frame: zmq.Frame) -> int:
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, AttributeError, ValueError):
        return -1


def _req_id(msg, frames) -> int:
    rid = getattr(msg, "req_id", None)
    if isinstance(rid, int):
        return rid
    if len(frames) >= 3:  # best effort: read req_id out of a body that failed validation
        try:
            body = msgspec.msgpack.decode(frames[2])
            rid = body.get("req_id") if isinstance(body, dict) else None
            if isinstance(rid, int) and 0 < rid < 2**63:
                return rid
        except Exception:
            pass
    return 0


def _daemon_answers(ctx: zmq.Context, endpoint: str, curve_secret: bytes | None = None,
                    timeout_ms: int = 300) -> bool:
    server_key = zmq.curve_public(curve_secret) if curve_secret else None
    s = make_socket(ctx, zmq.DEALER, endpoint, bind=False, curve_server_key=server_key)
    try:
        s.send_multipart(P.encode(P.Ping(seq=0)))
        return bool(s.poll(timeout_ms))
    finally:
        s.close(0)
