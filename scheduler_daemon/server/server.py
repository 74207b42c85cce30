"""The daemon without I/O: one ``Server`` takes decoded requests and returns the replies.

``handle(identity, msg, raw, now)`` runs one request of the peer ``identity`` and returns every
reply due (its answer, and DONEs of jobs that ended meanwhile); ``advance()`` runs the device and
the dispatch pump and returns the DONEs of jobs that finished. Sessions, tenants, limits, the
answers (exactly one per request) and the drain live here; the ZeroMQ process
(``scheduler_daemon/daemon.py``) only moves frames, and tests drive this object in-process on a
virtual clock.
"""
from __future__ import annotations

import hmac
import itertools
import logging
import secrets
from functools import partial
from typing import Callable

import msgspec

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.policies import make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.base import Device
from scheduler_daemon.pump import Pump
from scheduler_daemon.server import registration
from scheduler_daemon.server.compiler import Compiler, sandboxed
from scheduler_daemon.server.config import DaemonConfig
from scheduler_daemon.server.eager import EagerStreams
from scheduler_daemon.server.registration import buffer_of
from scheduler_daemon.server.sessions import Session, Tenant
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.protocol import Code, ProtocolError

log = logging.getLogger("gpusched.daemon")

Reply = tuple  # (identity: bytes, message: P.Msg, raw frames: list)
# gpu type name -> an admission controller with .admit(replicas, replace) (placement's)
AdmissionFactory = Callable[[str], object]


class ConfigError(ValueError):
    """A daemon configuration that cannot run (names the option to change)."""


class NullMetrics:
    def job_finished(self, tenant: str, model: str, status: str, total_s: float,
                     slo_missed: bool) -> None:
        pass

    def request_error(self, code: str) -> None:
        pass

    def token(self, tenant: str, first: bool, seconds: float, slo_missed: bool) -> None:
        pass


def _quantum_s(config: DaemonConfig, device: Device) -> float:
    """The core's scheduling quantum: the operator's, else the device's default."""
    q = config.quantum_us
    if q is None:
        return device.default_quantum_s if device.caps.runs else 0.0
    if q > 0 and not device.caps.runs:
        raise ConfigError(f"backend {device.name!r} launches one kernel at a time: "
                          "--quantum-us applies to --backend torch or sim; leave it out or pass 0")
    return q * 1e-6


class Server:
    def __init__(self, config: DaemonConfig, device: Device, env: Environment,
                 admission: AdmissionFactory | None = None, compiler: Compiler | None = None):
        self.config = config
        self.limits = config.limits
        self.env = env
        self.device = device
        policy = make_policy(config.policy)
        if not policy.bounded and not device.caps.concurrent_kernels:
            raise ConfigError(f"policy {policy.name!r} is an experiment baseline for the "
                              f"simulated GPU: it puts a job's kernels on the device at once, "
                              f"which backend {device.name!r} cannot do; use fifo, srpt, edf, "
                              "paella, slo or slo-srpt")
        self.core = SchedulerCore(policy, device.spec.capacity, config.max_extra, config.shed,
                                  device.fits_now, _quantum_s(config, device),
                                  device.stops_runs, device.caps.concurrent_kernels)
        self.pump = Pump(self.core, device, env)
        device.set_alloc_limit(config.limits.max_tenant_bytes)
        work = config.max_op_work or _default_work(device)
        device.set_work_limit(work)
        device.start(env, self.core.on_complete, self._on_fail, self.core.on_started)
        self.daemon_id = secrets.token_hex(8)
        # job ids name jobs in answers and logs; requests name jobs by the client's own req_id,
        # so ids need to be unique, not secret
        self._job_ids = itertools.count(1)
        self.sessions: dict[bytes, Session] = {}
        self.tenants: dict[str, Tenant] = {}
        self.started = env.now
        self.metrics = NullMetrics()
        self.draining = False
        self.drain_deadline = float("inf")
        self._outbox: list[Reply] = []
        self._debug = log.isEnabledFor(logging.DEBUG)
        lim = config.limits
        self._welcome_limits = P.Limits(lim.max_frame_bytes, lim.max_input_bytes, lim.max_inputs,
                                        lim.max_kernels, lim.max_models, lim.max_queued,
                                        lim.max_tenant_bytes)
        self._admission_factory = admission
        # tenants' CUDA compiles (sandboxed; the daemon gives one that runs them off the loop)
        self.compiler = compiler or Compiler(sandboxed(config.max_compile_s), inline=True)
        self._admission = None  # built at the first ADMIT (it loads profiles)
        # the intercept path's per-client op streams
        self.eager = EagerStreams(self, work)
        self._handlers = {P.Register: partial(registration.register_kernels, self),
                          P.RegisterGraph: partial(registration.register_graph, self),
                          P.RegisterCuda: partial(registration.register_cuda, self),
                          P.Submit: self._submit, P.Cancel: self._cancel,
                          P.Status: self._status, P.Ping: self._ping, P.Bye: self._bye,
                          P.Admit: self._admit, P.EagerOps: self.eager.on_ops,
                          P.EagerSync: self.eager.on_sync}

    # -- the public face of the server ----------------------------------------------------------
    def handle_frames(self, identity: bytes, frames: list, now: float, conn: str = "",
                      key_tenant: str | None = None) -> list[Reply]:
        """One message as received, ``frames`` = (type, body, *raw); replies due."""
        msg = None
        try:
            if len(frames) < 2:
                raise ProtocolError(Code.BAD_FRAME, "a message is the frames (type, body, *raw); "
                                    f"got {len(frames)} frame(s)")
            msg = P.decode(frames[0], frames[1], P.REQUESTS)
        except ProtocolError as e:
            if self._session_of(identity, conn) is None:   # strangers learn nothing more
                e = ProtocolError(Code.NOT_CONNECTED, f"send a valid HELLO first ({e.message})")
            self.error(identity, _req_id(msg, frames), e.code, e.message)
            return self.take_replies()
        return self.handle(identity, msg, frames[2:], now, conn, key_tenant)

    def handle(self, identity: bytes, msg: P.Msg, raw: list, now: float, conn: str = "",
               key_tenant: str | None = None) -> list[Reply]:
        """One decoded request of peer ``identity`` that came on connection ``conn`` (the
        process's id for it; ``key_tenant``: the tenant its CURVE key belongs to)."""
        try:
            if not _auto_id(identity):
                raise ProtocolError(Code.AUTH, "client-chosen routing ids (ZMQ_ROUTING_ID) are "
                                    "refused: leave it unset so the daemon assigns one")
            if type(msg) is P.Hello:
                self._hello(identity, msg, now, conn, key_tenant)
            else:
                session = self._session_of(identity, conn)
                if session is None:
                    raise ProtocolError(Code.NOT_CONNECTED, "this client has not said HELLO (or "
                                        "the daemon restarted or dropped it as silent): send "
                                        "HELLO first")
                session.last_seen = now
                self._handlers[type(msg)](session, msg, raw)
        except ProtocolError as e:
            self.error(identity, _req_id(msg, None), e.code, e.message)
        except Exception as e:  # never die on a request; say it was our fault
            log.exception("daemon: internal error handling a request")
            self.error(identity, _req_id(msg, None), Code.INTERNAL,
                       f"internal error ({type(e).__name__}); the daemon logged it")
        return self.take_replies()

    def _session_of(self, identity: bytes, conn: str) -> Session | None:
        """The session of this routing id, if it is the connection that said HELLO."""
        s = self.sessions.get(identity)
        if s is not None and s.conn != conn:
            # the id now names another connection: the one that said HELLO is gone (and its
            # answers must not go to whoever holds the id now)
            self.drop_session(s, "its connection closed", self.env.now, gone=True)
            return None
        return s

    def advance(self) -> list[Reply]:
        """Run due device events, dispatch, answer finished jobs; the replies due."""
        try:
            self.pump.advance(self._finish)
        except Exception:  # a bug in a device callback must not take every tenant down
            log.exception("daemon: internal error while advancing the device")
        for tag, compiled, error in self.compiler.take_done():
            registration.cuda_compiled(self, tag, compiled, error)
        return self.take_replies()

    def take_replies(self) -> list[Reply]:
        out, self._outbox = self._outbox, []
        return out

    def reply(self, identity: bytes, msg: P.Msg, raw: list | None = None) -> None:
        self._outbox.append((identity, msg, raw or []))

    def error(self, identity: bytes, req_id: int, code: str, message: str) -> None:
        self.metrics.request_error(code)
        log.info("daemon: error to client=%s req=%d code=%s: %s", identity.hex(), req_id, code,
                 message)
        self.reply(identity, P.Error(req_id=req_id, code=code, message=message))

    def new_job_id(self) -> str:
        return f"{self.daemon_id}-{next(self._job_ids)}"

    def connection_closed(self, conn: str, now: float) -> list[Reply]:
        """A connection closed (a killed client, BYE, a network error): its session ends at
        once, its jobs are cancelled and their bytes freed."""
        for s in [s for s in self.sessions.values() if s.conn == conn]:
            self.drop_session(s, "its connection closed", now, gone=True)
        return self.take_replies()

    def unauthenticated(self, live_connections: int) -> int:
        """Connections that have not said HELLO (of ``live_connections``)."""
        return max(0, live_connections - len(self.sessions))

    def reap_silent(self, now: float) -> list[Reply]:
        limit = now - self.config.client_timeout_s
        for s in [s for s in self.sessions.values() if s.last_seen < limit]:
            self.drop_session(s, f"silent for {now - s.last_seen:.1f}s", now)
        return self.take_replies()

    # -- draining -----------------------------------------------------------------------------
    def begin_drain(self, now: float) -> list[Reply]:
        """Take no new work; queued jobs are answered as cancelled, started ones run on until
        ``drain_deadline``."""
        self.draining = True
        self.drain_deadline = now + self.config.drain_grace_s
        n = 0
        for job in self.core.queued_jobs():
            if job.first_start is None and self.core.abort(job, now):
                self._finish(job)
                n += 1
        log.info("daemon: draining: cancelled %d queued job(s), letting %d started job(s) finish",
                 n, sum(len(s.jobs) for s in self.sessions.values()))
        return self.take_replies()

    def drained(self) -> bool:
        return not (any(s.jobs for s in self.sessions.values())
                    or self.eager.busy(self.sessions.values()) or self.compiler.busy())

    def end_drain(self, now: float) -> list[Reply]:
        for s in list(self.sessions.values()):
            for job in list(s.jobs.values()):
                if self.core.abort(job, now):
                    job.error = "daemon stopped before the job finished"
                self._finish(job)
        self.eager.abort_all(list(self.sessions.values()), now)
        for s, msg in self.compiler.abandon():
            s.tenant.compiling = False
            if self.sessions.get(s.identity) is s:
                self.error(s.identity, msg.req_id, Code.DRAINING,
                           "the daemon stopped before the CUDA compile finished")
        return self.take_replies()

    def close(self) -> None:
        self.compiler.close()
        self.device.close()

    # -- status -------------------------------------------------------------------------------
    def summary(self, req_id: int = 0) -> P.StatusReply:
        running: dict[str, int] = {}
        queued: dict[str, int] = {}
        for sess in self.sessions.values():
            for job in sess.jobs.values():
                d = running if job.first_start is not None else queued
                d[job.tenant] = d.get(job.tenant, 0) + 1
        tenants = [P.TenantStatus(tenant=t.name, clients=t.clients, queued=queued.get(t.name, 0),
                                  running=running.get(t.name, 0), completed=t.completed,
                                  cancelled=t.cancelled, failed=t.failed, shed=t.shed,
                                  slo_missed=t.slo_missed, p50_ms=t.percentile(0.5),
                                  p99_ms=t.percentile(0.99),
                                  bytes_held=t.bytes_held, **_token_fields(t.tokens))
                   for t in self.tenants.values()]
        return P.StatusReply(req_id=req_id, daemon_id=self.daemon_id,
                             device=self.device.describe(), policy=self.core.policy.name,
                             uptime_s=self.env.now - self.started, queued=len(self.core),
                             inflight=self.core.inflight,
                             utilisation=self.device.utilisation(), tenants=tenants)

    # -- handlers -----------------------------------------------------------------------------
    def _hello(self, identity: bytes, msg: P.Hello, now: float, conn: str,
               key_tenant: str | None) -> None:
        if msg.version != P.PROTOCOL_VERSION:
            raise ProtocolError(Code.VERSION, f"protocol version {msg.version} is not served; "
                                f"this daemon speaks version {P.PROTOCOL_VERSION}: upgrade the "
                                "client library to match the daemon")
        if self.config.tenant_keys and msg.tenant != key_tenant:
            raise ProtocolError(Code.AUTH, f"tenant {msg.tenant!r}: this connection's CURVE key "
                                "is not that tenant's: connect with the tenant's own key pair "
                                "(Client(..., client_key=...) or GPUSCHED_CLIENT_KEY)")
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
        if msg.tenant not in self.tenants and len(self.tenants) >= self.config.max_tenants:
            self._forget_idle_tenants()
            if len(self.tenants) >= self.config.max_tenants:
                raise ProtocolError(Code.LIMIT, f"the daemon serves {len(self.tenants)} tenants "
                                    f"(limit {self.config.max_tenants}): use an existing tenant "
                                    "name or give tenants their own tokens (--tenant-tokens)")
        old = self.sessions.get(identity)
        if old is not None:
            self.drop_session(old, "re-HELLO", now)
        tenant = self.tenants.get(msg.tenant)
        if tenant is None:
            tenant = self.tenants[msg.tenant] = Tenant(msg.tenant, self.limits.max_tenant_bytes)
        tenant.clients += 1
        self.sessions[identity] = Session(identity, tenant, now, conn)
        log.info("daemon: hello client=%s tenant=%s", identity.hex(), msg.tenant)
        self.reply(identity, P.Welcome(version=P.PROTOCOL_VERSION, daemon_id=self.daemon_id,
                                       device=self.device.describe(),
                                       policy=self.core.policy.name,
                                       heartbeat_s=self.config.heartbeat_s,
                                       limits=self._welcome_limits))

    def _submit(self, s: Session, msg: P.Submit, raw: list) -> None:
        if self.draining:
            raise ProtocolError(Code.DRAINING, "the daemon is shutting down and takes no new jobs")
        if msg.req_id in s.jobs:
            raise ProtocolError(Code.DUPLICATE, f"req_id {msg.req_id} is already in use by an "
                                "unfinished job of this client")
        tenant, lim = s.tenant, self.limits
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
            if nbytes > tenant.ledger.room():
                raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} holds "
                                    f"{tenant.bytes_held} bytes (input bytes of unfinished "
                                    f"jobs, models, intercepted tensors); {nbytes} more would "
                                    f"pass the limit of {lim.max_tenant_bytes}: wait for jobs "
                                    "to finish")
        # Device memory quota: where the device allocates per job (the cuda backend: every
        # buffer, at submit), what it holds is counted against the tenant's quota in place of
        # the input bytes (which it includes), from submit to the answer.
        dev_bytes = self.device.job_device_bytes(model)
        if dev_bytes > nbytes:
            if dev_bytes > tenant.ledger.room():
                raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} holds "
                                    f"{tenant.bytes_held} bytes (unfinished jobs, models, "
                                    f"intercepted tensors); this job's {dev_bytes} bytes of "
                                    f"device memory would pass the limit of "
                                    f"{lim.max_tenant_bytes}: wait for jobs to finish")
            nbytes = dev_bytes
        now = self.env.now
        job = Job(self.new_job_id(), tenant.name, model, msg.slo_ms, now, msg.priority, payload,
                  (s, msg.req_id))
        if payload is not None:
            try:
                self.device.prepare(job)
            except (ValueError, TypeError, RuntimeError) as e:
                raise ProtocolError(Code.BAD_INPUT, f"inputs rejected by the device: {e}") from None
        job.nbytes = nbytes
        self.core.add(job, now)
        s.jobs[msg.req_id] = job
        tenant.unfinished += 1
        if nbytes:
            tenant.ledger.charge(("job", job.id), nbytes)
        if msg.ack:
            self.reply(s.identity, P.Accepted(req_id=msg.req_id, job_id=job.id))
        if self._debug:  # per-job lines: read once, so they cost nothing when off
            log.debug("daemon: job queued job=%s tenant=%s model=%s req=%d slo_ms=%g", job.id,
                      tenant.name, model.name, msg.req_id, msg.slo_ms)

    def _inputs(self, msg: P.Submit, raw: list) -> list:
        lim = self.limits
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
        return [(m, buffer_of(f)) for m, f in zip(msg.inputs, raw)]

    def _cancel(self, s: Session, msg: P.Cancel, raw: list) -> None:
        job = s.jobs.get(msg.target)
        ok = job is not None and self.core.abort(job, self.env.now)
        self.reply(s.identity, P.CancelReply(req_id=msg.req_id, target=msg.target, cancelled=ok))
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
                             remaining_ms=self._remaining_s(job) * 1e3)
            self.reply(s.identity, P.StatusReply(req_id=msg.req_id, job=js))
            return
        reply = self.summary(msg.req_id)
        if self.config.tenant_tokens or self.config.tenant_keys:  # a tenant sees only itself
            reply.tenants = [t for t in reply.tenants if t.tenant == s.tenant.name]
        self.reply(s.identity, reply)

    def _remaining_s(self, job: Job) -> float:
        """Estimated time left: the kernels not started, plus (issue 18) what the device's block
        counter says is left of the kernel in flight (instrumented CUDA kernels)."""
        left = job.remaining_s()
        if job.outstanding and job.done_kernels < len(job.model.kernels):
            prog = self.device.progress(job)
            if prog is not None and prog[1] > 0:
                done = min(max(prog[0], 0), prog[1])
                left += job.model.estimates.get(job.done_kernels) * (1 - done / prog[1])
        return left

    def _admit(self, s: Session, msg: P.Admit, raw: list) -> None:
        if self._admission_factory is None:
            raise ProtocolError(Code.ADMISSION, "this daemon was started without admission "
                                "control: start it with 'gpusched daemon'")
        try:
            if self._admission is None:
                self._admission = self._admission_factory(self.device.spec.name)
            got = self._admission.admit([(r.name, r.model, r.batch, r.rate, r.slo_ms)
                                         for r in msg.replicas], msg.replace)
        except ValueError as e:   # AdmissionError included
            log.info("admission: refused for tenant %s: %s", s.tenant.name, e)
            raise ProtocolError(Code.ADMISSION, str(e)) from None
        self.reply(s.identity, P.Admitted(req_id=msg.req_id,
                                          replicas=[P.AdmittedReplica(**g) for g in got]))

    def _ping(self, s: Session, msg: P.Ping, raw: list) -> None:
        self.reply(s.identity, P.Pong(seq=msg.seq, daemon_id=self.daemon_id))

    def _bye(self, s: Session, msg: P.Bye, raw: list) -> None:
        self.drop_session(s, "bye", self.env.now)

    # -- jobs out -----------------------------------------------------------------------------
    def _on_fail(self, job: Job, now: float, message: str, ran: int = 0) -> None:
        log.warning("daemon: kernel failed job=%s tenant=%s model=%s kernel=%d: %s", job.id,
                    job.tenant, job.model.name, job.done_kernels + ran, message)
        self.core.on_fail(job, now, message, ran)

    def _finish(self, job: Job) -> None:
        """Answer a job that reached a terminal state: exactly one DONE per SUBMIT.
        The answer goes out first; the counters are updated after it."""
        if type(job.owner) is not tuple:  # an intercepted op batch: answered at a sync point
            self.eager.finished(job)
            return
        session, req_id = job.owner
        if session.jobs.pop(req_id, None) is None:
            return  # already answered
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
        self.device.finish(job)
        job.payload = None
        total = job.total_s
        met = state is JobState.DONE and (job.slo_s <= 0 or total <= job.slo_s)
        if not session.gone:
            self.reply(session.identity, P.Done(
                req_id=req_id, job_id=job.id, status=state.value, queue_ms=job.queue_s * 1e3,
                exec_ms=job.exec_s * 1e3, total_ms=total * 1e3, slo_met=met, outputs=metas,
                error=job.error or ""), bufs)
        tenant = session.tenant
        tenant.unfinished -= 1
        if job.nbytes:
            tenant.ledger.refund(("job", job.id))
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

    def drop_session(self, s: Session, why: str, now: float, gone: bool = False) -> None:
        """End a client's session: each unfinished job is cancelled and answered on the same
        connection (one that says HELLO again reads it), or not at all when the connection is
        ``gone`` (its routing id may be someone else's by now)."""
        s.gone = gone
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

    def _forget_idle_tenants(self) -> None:
        """Tenants with no client, no job and no model are only a name: let them go."""
        for name in [n for n, t in self.tenants.items()
                     if t.clients == 0 and t.unfinished == 0 and not t.models]:
            del self.tenants[name]


def _token_fields(k) -> dict:
    """A tenant's TokenStats as TenantStatus fields."""
    if not k.tokens:
        return {}
    return {"tokens": k.tokens, "ttft_p50_ms": k.pct(k.ttft_ms, 0.5),
            "ttft_p99_ms": k.pct(k.ttft_ms, 0.99), "tpot_p50_ms": k.pct(k.tpot_ms, 0.5),
            "tpot_p99_ms": k.pct(k.tpot_ms, 0.99), "ttft_slo_missed": k.ttft_missed,
            "tpot_slo_missed": k.tpot_missed}


def _default_work(device: Device) -> float:
    """The bound on one op's work (FLOPs, or elements touched) where none was configured:
    about a second of a CPU core (1e11) or of a GPU (1e14), so one tenant's op cannot hold
    the device for long (a running CPU op or GPU kernel cannot be pre-empted)."""
    return 1e14 if "cuda" in str(getattr(device, "device", "")) else 1e11


def _auto_id(identity: bytes) -> bool:
    """A routing id libzmq assigned (5 bytes, a zero byte first): a peer-chosen one is not."""
    return len(identity) == 5 and identity[0] == 0


def _req_id(msg, frames) -> int:
    rid = getattr(msg, "req_id", None)
    if isinstance(rid, int):
        return rid
    if frames is not None and len(frames) >= 2:  # read req_id out of a body that failed
        try:
            body = msgspec.msgpack.decode(frames[1])
            rid = body.get("req_id") if isinstance(body, dict) else None
            if isinstance(rid, int) and 0 < rid < 2**63:
                return rid
        except Exception:
            pass
    return 0
