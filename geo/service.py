"""``gpusched geo serve``: the geo service (ZeroMQ ROUTER), and its client.

One thread owns the socket and the state: each request is decoded into its typed struct
(geo/protocol.py), checked (token, every job field), applied to a copy of the state, re-planned,
saved to disk, and only then swapped in and answered - so an error leaves the state as it was,
and an answer means the change is on disk. A submitted job that fits in the free GPUs, where
nobody waits, takes the arrival fast path instead (``_arrive``: placed alone, the plan updated,
the change appended to the state's journal); the answer's ``path`` says which was used.
Every request gets exactly one answer; a frame that does not decode gets an ERROR, never a
crash. SIGTERM sets a flag; the loop exits cleanly.

Bounds a peer cannot pass (issue 14): a frame over 4 MiB drops the connection (libzmq); a
message over 3 parts or 8 MiB is read to its end without being kept and answered TOO_LARGE;
connections over ``max_connections`` are refused at the handshake by a ZAP handler that counts
live connections through the socket's monitor.
"""
from __future__ import annotations

import gc
import hmac
import itertools
import logging
import os
import signal
import socket
import time

import msgspec
import zmq

from geo.candidates import Model, ideal_speed
from geo.plan import add_arrival
from geo.protocol import (
    REPLIES,
    REQUESTS,
    Error,
    EventReq,
    GeoProtocolError,
    Reply,
    StatusReq,
    Submit,
    check_event,
    decode,
    encode,
)
from geo.replan import (
    IMPROVING,
    add_job,
    apply_event,
    check_new_job,
    clone,
    free_gpus,
    initial_plan,
    place_arrival,
    replan,
)
from geo.spec import GeoSpecError, check_job, load_spec
from geo.state import (
    GeoState,
    append_arrival,
    apply_arrival,
    arrival_record,
    default_state_path,
    journal_path,
    load_state,
    save_state,
)
from geo.wan import Wan
from scheduler_daemon.transport.sockets import make_socket, runtime_dir

log = logging.getLogger("geo.service")
MAX_FRAME = 4 * 1024 * 1024  # a job or an event is small; bigger frames are refused by libzmq
MAX_PARTS = 3                # a REQ peer's delimiter, type, body
MAX_MESSAGE = 2 * MAX_FRAME
JOURNAL_MAX = 1000  # arrivals journaled before a submit saves the whole state (idle saves too)

__all__ = ["GeoService", "GeoClient", "GeoRefused", "GeoServiceError", "claim_endpoint",
           "default_geo_endpoint", "default_state_path"]


def default_geo_endpoint() -> str:
    return os.environ.get("GPUSCHED_GEO_ENDPOINT") or f"ipc://{runtime_dir()}/geo.sock"


class GeoServiceError(ValueError):
    """The service cannot start: its endpoint or its state is taken (the message names the
    fix)."""


def lock_state(state_path: str) -> int:
    """An exclusive lock (fcntl.flock) on ``STATE.lock`` for as long as the service runs: a
    second service on the same state is refused. The lock is a file of its own because every
    save replaces the state file (a new inode). Returns the lock's file descriptor."""
    import fcntl

    folder = os.path.dirname(os.path.abspath(state_path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    lock = state_path + ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GeoServiceError(f"another geo service uses the state {state_path} (it holds "
                              f"{lock}): stop it first, or pass another --state") from None
    return fd


def _unix_listening(path: str) -> bool:
    """Something accepts connections on the unix socket ``path`` (whatever its auth)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # e.g. a full backlog: someone is there
    finally:
        s.close()


def claim_endpoint(endpoint: str) -> None:
    """Refuse an endpoint another process serves (as the daemon's ``bind`` does), before any
    work: for ipc, a socket file something still accepts on (a stale one, of a service that
    died, is removed); for tcp, the bind itself fails with "address in use"."""
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://"):]
    if not os.path.lexists(path):
        return
    import stat
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise GeoServiceError(f"{path} exists and is not a socket: pass another --endpoint")
    if _unix_listening(path):
        raise GeoServiceError(f"a geo service (or another program) is already serving "
                              f"{endpoint}: stop it first, or pass another --endpoint")
    os.unlink(path)  # the socket file of a service that died


class GeoService:
    def __init__(self, endpoint: str, state_path: str, spec_path: str | None = None,
                 token: str = "", solver: str = "auto", objective: str | None = None,
                 curve_secret: bytes | None = None, max_connections: int = 256):
        self.endpoint, self.state_path, self.token = endpoint, state_path, token
        self.curve_secret = curve_secret
        self.max_connections = max_connections
        self._live = 0  # connections accepted and not yet closed (the monitor's count)
        self._stop = False
        self._lock = lock_state(state_path)  # before the state is read: one service per state
        try:
            self._load(state_path, spec_path, solver, objective)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the state's lock (serve_forever does at its end)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _load(self, state_path, spec_path, solver, objective) -> None:
        state = load_state(state_path)
        if state is None:
            if spec_path is None:
                raise ValueError(f"no geo state at {state_path}: start the service with "
                                 f"--spec FILE (the fleet: sites, links, datasets, jobs)")
            spec = load_spec(spec_path)
            obj = objective or spec.planner.objective
            plan, diff = initial_plan(spec, obj, solver)
            state = GeoState(spec=spec, objective=obj, solver=solver, plan=plan, diff=diff)
            save_state(state, state_path)
            log.info("geo: new state from %s saved to %s", spec_path, state_path)
        elif spec_path is not None:
            log.warning("geo: %s holds a state already; --spec %s is ignored", state_path,
                        spec_path)
        if os.path.exists(journal_path(state_path)) and os.path.getsize(journal_path(state_path)):
            save_state(state, state_path)  # the journal's arrivals into the state file
        self.state = state
        self.wan = Wan(state.spec)  # sites and links never change: events change GPUs, prices
        self._model: Model | None = None  # of the state's fleet, for the arrival fast path
        self._free: tuple[GeoState, dict] | None = None  # free GPUs of that state
        self._journal = 0  # arrivals in the journal, not yet in the state file
        self._dirty = True  # requests since the last idle moment
        self._serving = False  # serve_forever runs: this process is the service's own

    def install_signal_handlers(self) -> None:
        def stop(signum, frame):
            self._stop = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def stop(self) -> None:
        self._stop = True

    # -- requests -------------------------------------------------------------------------
    def handle(self, frames: list) -> list[bytes]:
        """One request's frames (without the identity) -> one answer's frames."""
        req_id = 0
        try:
            msg = decode(frames, REQUESTS)
            req_id = msg.req_id
            if self.token and not hmac.compare_digest(msg.token.encode(), self.token.encode()):
                raise GeoProtocolError("DENIED", "wrong or missing token")
            if isinstance(msg, StatusReq):  # a status changes nothing: no diff (the last
                # event's was in its own answer, and is in the state file)
                return encode(Reply(req_id, plan=self.state.plan, events=self.state.events))
            if isinstance(msg, Submit):
                check_job(msg.job, {}, f"job {msg.job.name}", "$")
                check_new_job(self.state.spec, msg.job)
                fast = self._arrive(msg)
                if fast is not None:
                    return fast
            new = msgspec.structs.replace(self.state, spec=clone(self.state.spec),
                                          down={k: dict(v) for k, v in self.state.down.items()})
            if isinstance(msg, Submit):
                reason = add_job(new.spec, msg.job)
                improve = False
            else:
                assert isinstance(msg, EventReq)
                reason = apply_event(new.spec, check_event(msg.event), new.down)
                improve = msg.event.kind in IMPROVING
            t0 = time.perf_counter()
            model = Model(new.spec, self.wan)  # kept for the next arrival's fast path
            plan, diff = replan(new.spec, new.objective, reason, improve=improve, wan=self.wan,
                                model=model)
            new.plan, new.diff, new.events = plan, diff, new.events + 1
            save_state(new, self.state_path)  # on disk before the answer says it happened
            self.state, self._journal, self._model = new, 0, model
            self._free = (new, free_gpus(model))  # here, not in the next arrival's answer
            if self._serving:  # the new state is long-lived: no full collection of the
                gc.freeze()  # garbage collector walks it in the middle of a later request
            log.info("geo: %s -> %d changes in %.3fs", reason, len(diff), time.perf_counter() - t0)
            return encode(Reply(req_id, plan=plan, diff=diff, events=new.events, path="replan"))
        except GeoProtocolError as e:
            return encode(Error(req_id, e.code, e.message))
        except (GeoSpecError, ValueError) as e:
            return encode(Error(req_id, "BAD_REQUEST", str(e)))
        except Exception as e:  # a bug must not take the service down with it
            log.exception("geo: request %d failed", req_id)
            return encode(Error(req_id, "INTERNAL", f"{type(e).__name__}: {e}"))

    # -- connections ------------------------------------------------------------------------
    def _count_connections(self, monitor) -> None:
        from zmq.utils.monitor import recv_monitor_message
        while monitor.poll(0):
            ev = recv_monitor_message(monitor)["event"]
            self._live += 1 if ev == zmq.EVENT_ACCEPTED else -1 if self._live else 0

    def _on_zap(self, zap) -> None:
        """ZAP (RFC 27): admit a new connection unless ``max_connections`` are live."""
        while True:
            try:
                req = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # [peer, b"", version, request id, domain, address, identity, mechanism, *creds]
            ok = self._live <= self.max_connections
            if not ok:
                log.warning("geo: refused a connection: %d live (limit %d)", self._live,
                            self.max_connections)
            zap.send_multipart(req[:2] + [req[2], req[3], b"200" if ok else b"400",
                                          b"OK" if ok else b"too many connections", b"", b""])

    def _fleet_model(self) -> Model:
        """A Model of the state's fleet, kept while the sites are the same objects: the fast
        path shares them (a new jobs list only); every event works on a copy, so a new one."""
        spec = self.state.spec
        if self._model is None or self._model.spec.sites is not spec.sites:
            self._model = Model(spec, self.wan)
        self._model.spec = spec
        return self._model

    def _arrive(self, msg: Submit) -> list[bytes] | None:
        """The fast path for a submitted job (MAST's real-time placement, ``place_arrival``):
        it starts now in GPUs the running jobs leave free, nobody else moves or waits longer,
        and the plan is updated in place of a re-plan; the change goes to the state's journal
        (``geo/state.py``). None (then: a full re-plan) when it does not fit in the free GPUs,
        or when a job waits in a pool it would take (the re-plan decides who goes first), or
        when the plan cannot be updated exactly."""
        t0 = time.perf_counter()
        st = self.state
        if st.plan is None:
            return None
        model = self._fleet_model()
        if self._free is None or self._free[0] is not st:
            self._free = (st, free_gpus(model))
        free = self._free[1]
        job = msgspec.structs.replace(msg.job)  # running is set on this copy only
        c, change = place_arrival(model, job, st.objective, free, st.plan.cost_per_hour)
        if c is None:
            return None
        pools = {(s, c.gpu_type) for s, _ in c.alloc}
        wanted = dict.fromkeys(pools, 0)
        for jp in st.plan.jobs:
            for s, n in jp.sites.items():
                if (s, jp.gpu_type) in wanted:
                    wanted[(s, jp.gpu_type)] += n
        for (s, t), n in wanted.items():  # demand there is only what runs there: none waits
            if n != model.capacity(s, t) - free.get((s, t), 0):
                return None
        plan = add_arrival(st.plan, model, c, ideal_speed(model, job), job.priority,
                           reason=change.reason, solve_time_s=time.perf_counter() - t0)
        if plan is None:
            return None
        rec = arrival_record(st, job, plan, [change])
        new = apply_arrival(st, rec)
        if self._journal >= JOURNAL_MAX:
            save_state(new, self.state_path)
            self._journal = 0
        else:
            append_arrival(rec, self.state_path)  # on disk before the answer says it happened
            self._journal += 1
        self.state = new
        left = dict(free)
        for s, n in c.alloc:
            left[(s, c.gpu_type)] -= n
        self._free = (new, left)
        log.info("geo: job %s placed on arrival (fast path) in %.2f ms", job.name,
                 (time.perf_counter() - t0) * 1e3)
        return encode(Reply(msg.req_id, plan=new.plan, diff=[change], events=new.events,
                            path="arrival"))

    def compact(self) -> None:
        """Fold the journal into the state file (when idle, and at stop); on a disk error the
        journal stays, valid, and the next idle moment tries again."""
        if self._journal:
            try:
                save_state(self.state, self.state_path)
            except OSError:
                log.exception("geo: could not fold the journal into %s (it is kept)",
                              self.state_path)
                return
            self._journal = 0

    def serve_forever(self, poll_ms: int = 200) -> None:
        claim_endpoint(self.endpoint)
        ctx = zmq.Context()
        zap = ctx.socket(zmq.ROUTER)  # bound before the socket, so no connection gets past it
        zap.linger = 0
        zap.bind("inproc://zeromq.zap.01")
        try:
            sock = make_socket(ctx, zmq.ROUTER, self.endpoint, bind=True, max_frame=MAX_FRAME,
                               curve_secret=self.curve_secret, zap=True)
        except zmq.ZMQError as e:
            zap.close(0)
            ctx.term()
            self.close()
            raise GeoServiceError(f"cannot serve {self.endpoint}: {e.strerror}: stop what "
                                  f"serves it, or pass another --endpoint") from None
        ipc = self.endpoint[len("ipc://"):] if self.endpoint.startswith("ipc://") else None
        mine = os.stat(ipc).st_ino if ipc and os.path.exists(ipc) else None
        log.info("geo: serving on %s (state %s)", self.endpoint, self.state_path)
        self._serving = True
        monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        poller = zmq.Poller()
        for s in (monitor, zap, sock):   # closes counted before the handshakes they free
            poller.register(s, zmq.POLLIN)
        gc.collect()
        gc.freeze()  # the state is long-lived (see handle)
        try:
            while not self._stop:
                ready = dict(poller.poll(poll_ms))
                if monitor in ready or zap in ready:
                    self._count_connections(monitor)
                if zap in ready:
                    self._on_zap(zap)
                if sock not in ready:
                    if not ready and self._dirty:  # idle: the journal's arrivals into the
                        self.compact()  # state file, the garbage collected now, not mid-request
                        gc.collect()
                        gc.freeze()
                        self._dirty = False
                    continue
                self._dirty = True
                ident, body, parts, size = _recv_bounded(sock)
                delim = [b""] if body and body[0] == b"" else []  # a REQ peer's delimiter
                if parts > MAX_PARTS or size > MAX_MESSAGE:
                    log.warning("geo: refused a message of %d parts, %d bytes", parts, size)
                    reply = encode(Error(0, "TOO_LARGE", f"a message of {parts} parts and "
                                         f"{size} bytes; a request is (type, body) within "
                                         f"{MAX_MESSAGE} bytes"))
                else:
                    reply = self.handle(body[len(delim):])
                sock.send_multipart([ident, *delim, *reply])
        finally:
            self.compact()
            sock.disable_monitor()
            monitor.close(0)
            zap.close(0)
            sock.close(0)
            ctx.term()
            try:  # only our own socket file: never one another process bound since
                if ipc and mine is not None and os.stat(ipc).st_ino == mine:
                    os.unlink(ipc)
            except OSError:
                pass
            self.close()
            log.info("geo: stopped")


def _recv_bounded(sock) -> tuple[bytes, list[bytes], int, int]:
    """One message: (identity, the parts after it, their count and bytes); parts past the
    limits are read and dropped, never kept."""
    ident = sock.recv()
    body: list[bytes] = []
    parts = size = 0
    while sock.getsockopt(zmq.RCVMORE):
        f = sock.recv()
        parts += 1
        size += len(f)
        if parts <= MAX_PARTS and size <= MAX_MESSAGE:
            body.append(f)
    return ident, body, parts, size


CONNECT_TIMEOUT_S = 2.0


class GeoRefused(ValueError):
    """The service answered ERROR: ``code`` and ``message`` as it sent them."""

    def __init__(self, code: str, message: str):
        super().__init__(f"geo service refused: {code}: {message}")
        self.code, self.message = code, message

    def at_line(self, source: str, job: str, lines: dict[str, int]) -> str:
        """The refusal of a submitted job as a spec error of its file: a message "job NAME:
        FIELD: problem" (geo/spec.py) -> "FILE:LINE: FIELD: problem"."""
        import re
        m = re.match(rf"job {re.escape(job)}: ([\w\[\].]+): (.*)$", self.message, re.S)
        if not m or self.code != "BAD_REQUEST":
            return str(self)
        path = "$." + m.group(1)
        while path not in lines and "." in path:
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
        line = lines.get(path)
        where = f"{source}:{line}" if line else source
        return f"{where}: {m.group(1)}: {m.group(2)} (refused by the geo service)"


def check_listening(endpoint: str, timeout_s: float) -> None:
    """Fail at once (ConnectionError) when nothing listens at ``endpoint``, instead of waiting
    the whole answer timeout: no socket file for ipc, a refused or silent port for tcp."""
    hint = "start one: gpusched geo serve --spec FILE"
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not os.path.exists(path):
            raise ConnectionError(f"no geo service at {endpoint}: {path} does not exist ({hint})")
        return
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"no geo service at {endpoint}: {e.strerror or e} ({hint})") \
            from None


class GeoClient:
    """Blocking client: one request, one answer (ValueError for an ERROR answer)."""

    def __init__(self, endpoint: str, token: str = "", server_key: bytes | None = None,
                 timeout_s: float = 10.0):
        self.endpoint, self.token, self.timeout_s = endpoint, token, timeout_s
        check_listening(endpoint, min(timeout_s, CONNECT_TIMEOUT_S))
        self._ctx = zmq.Context()
        self._sock = make_socket(self._ctx, zmq.DEALER, endpoint, bind=False,
                                 curve_server_key=server_key)
        self._ids = itertools.count(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def _call(self, msg) -> Reply:
        self._sock.send_multipart(encode(msg))
        if not self._sock.poll(int(self.timeout_s * 1000)):
            raise TimeoutError(f"no geo service answered at {self.endpoint} within "
                               f"{self.timeout_s:g} s (start one: gpusched geo serve --spec FILE)")
        ans = decode(self._sock.recv_multipart(), REPLIES)
        if isinstance(ans, Error):
            raise GeoRefused(ans.code, ans.message)
        return ans

    def submit(self, job) -> Reply:
        return self._call(Submit(next(self._ids), job, self.token))

    def event(self, event) -> Reply:
        return self._call(EventReq(next(self._ids), event, self.token))

    def status(self) -> Reply:
        return self._call(StatusReq(next(self._ids), self.token))

    def raw(self, frames: list[bytes]) -> list[bytes]:
        """Send any frames, return the answer's frames (tests of bad input)."""
        self._sock.send_multipart(frames)
        if not self._sock.poll(int(self.timeout_s * 1000)):
            raise TimeoutError("no answer")
        return self._sock.recv_multipart()
