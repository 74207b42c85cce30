"""``ClusterClient``: submit jobs by model name to a gpusched cluster; a router picks the replica.

    from gpusched.cluster import client
    with client.ClusterClient(tenant="web") as c:          # the cluster file of 'cluster up'
        r = c.run("web-resnet50")                           # -> client_lib.JobResult

It reads the directory from the cluster's controller (every daemon, its health and the replicas
admitted there), keeps one connection per daemon (the client library's session core,
``client_lib.session``, one per daemon, all on one thread and one poller), and asks the router
(``route.py``, the same object the simulation drives) where each job goes. Each connection is a
plain client of its daemon: ``client_lib.Client`` keeps working unchanged against one daemon.

Recovery: a daemon that falls silent, restarts, or that the directory reports down is taken out
of the routes at once. Jobs it had not acknowledged (or that the router still held) go to a live
replica; jobs it had acknowledged fail with ``DaemonRestarted`` naming the daemon, since they
may have run. The directory is read again every ``refresh_s`` and whenever a daemon is lost, so
a restarted daemon is found at its new endpoint (never a cached one).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future

import zmq

from client_lib._common import kernel_specs, submit_frames
from client_lib.errors import ConnectError, DaemonRestarted, DaemonUnavailable
from client_lib.session import ClientSession
from gpusched.cluster import protocol as CP
from gpusched.cluster.route import NoReplica, Router
from scheduler_daemon.transport.keys import read_key
from scheduler_daemon.transport.sockets import make_socket
from scheduler_daemon.wire import protocol as P

log = logging.getLogger("gpusched.cluster")
_PING = P.encode(P.Ping(seq=0))


class ClusterFuture(Future):
    """A job's future: resolves to a ``JobResult`` (latency from submit to answer, routing
    included) or raises; ``daemon`` names where it ran, ``resent`` counts its re-routings."""

    def __init__(self, token: int, model: str):
        super().__init__()
        self.token, self.model = token, model
        self.daemon: str | None = None
        self.resent = 0
        self.t0 = time.perf_counter()


class _Sent:
    """The session core's future for one send of a job (duck-typed: done, set_result,
    set_exception, job_id): it hands what happens to the cluster client."""
    __slots__ = ("_done", "_job_id", "client", "key", "token")

    def __init__(self, client: ClusterClient, token: int, key: str):
        self.client, self.token, self.key = client, token, key
        self._done = False
        self._job_id = None

    def done(self) -> bool:
        return self._done

    @property
    def job_id(self):
        return self._job_id

    @job_id.setter
    def job_id(self, value) -> None:
        if self._job_id is None:
            self._job_id = value
            self.client._accepted(self)

    def set_result(self, res) -> None:
        self._done = True
        self.client._answered(self, res, None)

    def set_exception(self, exc) -> None:
        self._done = True
        self.client._answered(self, None, exc)


class _Noop:
    """The future of a registration nobody waits on."""
    job_id = None

    def done(self) -> bool:
        return False

    def set_result(self, res) -> None:
        pass

    def set_exception(self, exc) -> None:
        if not isinstance(exc, DaemonUnavailable):   # a lost daemon: registered again later
            log.warning("cluster client: a registration failed: %s", exc)


class _Conn:
    def __init__(self, info: CP.DaemonInfo, sock, session: ClientSession):
        self.key, self.info, self.sock, self.s = info.key, info, sock, session
        self.registered: set[str] = set()
        self.down_since = 0.0          # > 0: taken out of the routes locally at that time
        self.pinged = 0.0
        self.dead_id = ""              # the daemon id that died


@dataclasses.dataclass
class _Job:
    fut: ClusterFuture
    model: str
    inputs: tuple
    slo_ms: float
    priority: int
    sent: _Sent | None = None


def _resolve(cluster, server_key):
    """(directory endpoint, server key) from a cluster file, an endpoint, or the default."""
    from gpusched.cluster.ops import read_cluster_file
    if cluster and str(cluster).startswith("tcp://"):
        if not server_key:
            raise ConnectError("a directory endpoint needs the cluster's public key: "
                               "server_key= (the 'server_key' of the cluster file)")
        return cluster, server_key
    st = read_cluster_file(cluster if cluster else None)
    return st["directory"], server_key or st["server_key"]


class ClusterClient:
    """``cluster``: a cluster file (default: the one ``gpusched cluster up`` wrote) or a
    directory endpoint ``tcp://HOST:PORT`` with ``server_key`` (the cluster's public key).
    ``policy``: ``expected-completion`` (default), ``random`` or ``round-robin``; ``window``:
    jobs in flight per daemon (the rest wait in the router). ``timeout``: the handshake, and how
    long a daemon may stay silent with jobs pending before it counts as lost."""

    def __init__(self, cluster: str | None = None, tenant: str = "default",
                 policy: str = "expected-completion", window: int = 4, timeout: float = 5.0,
                 server_key: str | None = None, token: str | None = None,
                 refresh_s: float = 0.25, status_s: float = 0.2, silence_s: float = 1.0,
                 seed: int = 0):
        self.endpoint, key = _resolve(cluster, server_key)
        self.server_key = read_key(key)
        self.tenant = tenant
        self.timeout = timeout
        self.silence_s = silence_s
        self.token = token if token is not None else os.environ.get("GPUSCHED_TOKEN", "")
        self.refresh_s, self.status_s = refresh_s, status_s
        self.router = Router(policy, window=window, seed=seed)
        self.stats = {"submitted": 0, "resent": 0, "failed_running": 0, "unroutable": 0,
                      "daemons_lost": 0}
        self._ctx = zmq.Context()
        self._conns: dict[str, _Conn] = {}
        self._jobs: dict[int, _Job] = {}
        self._kernels: dict[str, list] = {}
        self._next = 0
        self._cmds: deque = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.directory: CP.Directory | None = None
        self._lookup_at = 0.0
        self._lookup_out = False
        self._status_at = 0.0
        self._status_ids: dict[int, str] = {}
        self._closed = False
        self._dir = make_socket(self._ctx, zmq.DEALER, self.endpoint, bind=False, max_frame=0,
                                curve_server_key=self.server_key)
        try:
            self._dir.send_multipart(CP.encode(CP.Lookup(req_id=1)))
            if not self._dir.poll(int(timeout * 1000)):
                raise ConnectError(f"no cluster directory answered at {self.endpoint} within "
                                   f"{timeout:g}s: is the cluster up ('gpusched cluster up', "
                                   "'gpusched cluster status')?")
            frames = self._dir.recv_multipart()
            # the kernels first (the zoo's profiles load in seconds), the connections after:
            # a daemon drops a client that says HELLO and then nothing for its client timeout
            self._prepare_kernels(frames)
            self._on_directory(frames, time.perf_counter())
        except BaseException:
            self._dir.close(0)
            self._ctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpusched-cluster-io",
                                        daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def models(self) -> dict[str, dict]:
        """Placed models: ``{name: {"replicas": n, "live": m, "slo_ms": s}}``."""
        out: dict[str, dict] = {}
        for d in self.directory.daemons:
            for r in d.replicas:
                e = out.setdefault(r.model, {"replicas": 0, "live": 0, "slo_ms": r.slo_ms,
                                             "rate": 0.0})
                e["replicas"] += 1
                e["live"] += d.alive
                e["rate"] += r.rate
        return out

    def register_model(self, name: str, kernels) -> None:
        """The kernels of ``name`` on every daemon (default: the placed zoo model's, at the
        replica's batch, on the daemon's GPU type)."""
        self._kernels[name] = kernel_specs(kernels)

    def submit(self, model: str, inputs=(), slo_ms: float | None = None,
               priority: int = 0) -> ClusterFuture:
        if self._closed:
            raise DaemonUnavailable("this cluster client is closed")
        with self._lock:
            self._next += 1
            tok = self._next
        fut = ClusterFuture(tok, model)
        if slo_ms is None:
            slo_ms = next((r.slo_ms for d in self.directory.daemons for r in d.replicas
                           if r.model == model), 0.0)
        self._cmds.append(_Job(fut, model, tuple(inputs), float(slo_ms), priority))
        self._wake()
        return fut

    def run(self, model: str, inputs=(), slo_ms: float | None = None, priority: int = 0,
            timeout: float | None = None):
        return self.submit(model, inputs, slo_ms, priority).result(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        for c in self._conns.values():
            try:
                c.sock.send_multipart(P.encode(P.Bye()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            c.sock.close(0)
        for job in self._jobs.values():
            if not job.fut.done():
                job.fut.set_exception(DaemonUnavailable("the cluster client was closed"))
        self._dir.close(0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the I/O thread ---------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _loop(self) -> None:
        hb = 0.0
        while not self._stop.is_set():
            poller = zmq.Poller()
            poller.register(self._wake_r, zmq.POLLIN)
            poller.register(self._dir, zmq.POLLIN)
            conns = list(self._conns.values())
            for c in conns:
                poller.register(c.sock, zmq.POLLIN)
            try:
                events = dict(poller.poll(50))
            except zmq.ZMQError:
                break
            now = time.perf_counter()
            try:
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                while self._cmds:
                    self._route(self._cmds.popleft())
                if self._dir in events:
                    while self._dir.poll(0):
                        self._on_directory(self._dir.recv_multipart(), now)
                for c in conns:
                    if c.sock in events and self._conns.get(c.key) is c:
                        self._read(c, now)
                if now - hb >= 0.1:
                    hb = now
                    for c in list(self._conns.values()):
                        if c.down_since:
                            continue
                        if now - c.pinged >= c.s.heartbeat_s:
                            # a ping per heartbeat even while jobs go out (the session pings
                            # only when nothing was sent): a busy daemon answers it between
                            # jobs, so only a dead or stuck one falls silent
                            c.pinged = now
                            try:
                                c.sock.send_multipart(_PING, zmq.NOBLOCK)
                            except zmq.ZMQError:
                                pass
                        out = c.s.tick(now)
                        if out is not None:
                            self._apply(c, out)
                if now >= self._lookup_at and (not self._lookup_out or
                                               now - self._lookup_at > 2.0):
                    self._dir.send_multipart(CP.encode(CP.Lookup(req_id=1)))
                    self._lookup_out = True
                    self._lookup_at = now + self.refresh_s
                if self.status_s and now >= self._status_at and self.router.jobs:
                    self._status_at = now + self.status_s
                    self._ask_status()
            except Exception:
                log.exception("cluster client: I/O loop error")

    def _read(self, c: _Conn, now: float) -> None:
        while True:
            try:
                frames = c.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if self._conns.get(c.key) is not c:
                return
            tag = frames[0].bytes
            if tag == b"STATUS_REPLY":
                self._on_status(c, frames, now)
                continue
            out = c.s.on_reply(frames, now)
            if out is not None and self._conns.get(c.key) is c:
                self._apply(c, out)

    def _apply(self, c: _Conn, out) -> None:
        if out.reconnect:
            # the daemon restarted or fell silent: its jobs are settled (the session failed
            # them, which took it out of the routes); reconnect, and route to it again once
            # the directory says it is alive
            self._lost(c, "it restarted or fell silent")
            c.sock.close(0)
            c.sock = self._socket(c.info.endpoint)
            c.registered = set()
        for m in out.messages:
            c.sock.send_multipart(m, copy=len(m) <= 2)

    def _socket(self, endpoint: str):
        return make_socket(self._ctx, zmq.DEALER, endpoint, bind=False, max_frame=0,
                           curve_server_key=self.server_key)

    # -- directory -------------------------------------------------------------------------------
    def _on_directory(self, frames: list, now: float) -> None:
        self._lookup_out = False
        try:
            msg = CP.decode(frames[0], frames[1], CP.REPLIES)
        except (CP.ProtocolError, IndexError) as e:
            log.warning("cluster client: unreadable directory reply: %s", e)
            return
        if isinstance(msg, CP.Error):
            raise ConnectError(f"the cluster directory refused: {msg.code}: {msg.message}")
        first = self.directory is None
        if not first and msg.epoch == self.directory.epoch and \
                all(not c.down_since for c in self._conns.values()):
            return
        self.directory = msg
        routes: dict[str, dict[str, float]] = {}
        for d in msg.daemons:
            for r in d.replicas:
                prior = (r.predicted_latency_ms or r.slo_ms / 5) / 1e3
                routes.setdefault(r.model, {})[d.key] = prior
            c = self._conns.get(d.key)
            if not d.alive:
                if c is not None and not c.down_since:
                    self._lost(c, "the cluster reports it down")
                continue
            if c is None or c.info.endpoint != d.endpoint:
                if c is not None:
                    if not c.down_since:
                        self._lost(c, f"it moved to {d.endpoint}")
                    c.sock.close(0)
                self._connect(d, now)
            elif c.down_since and (d.daemon_id != c.dead_id or now - c.down_since > 2.0):
                c.sock.close(0)     # back: a fresh session (a restarted daemon forgot us)
                self._connect(d, now)
            else:
                c.info = d
        for key in list(self._conns):
            if key not in {d.key for d in msg.daemons}:
                self._lost(self._conns[key], "it left the cluster")
        self.router.set_routes(routes)

    def _connect(self, d: CP.DaemonInfo, now: float) -> None:
        s = ClientSession(d.endpoint, self.tenant, self.token, self.silence_s, now,
                          encrypted=True)
        c = _Conn(d, self._socket(d.endpoint), s)
        c.sock.send_multipart(s.hello())
        self._conns[d.key] = c
        self.router.mark_up(d.key)

    def _lost(self, c: _Conn, why: str) -> None:
        """Take the daemon out of the routes: its not-started jobs go elsewhere, its started
        ones fail."""
        if c.down_since:
            return
        c.down_since = time.perf_counter()
        c.dead_id = c.s.daemon_id or c.info.daemon_id
        self.stats["daemons_lost"] += 1
        self._lookup_at = 0.0      # read the directory again now
        send, failed, unroutable = self.router.mark_down(c.key)
        where = f"{c.key} ({c.info.gpu_type} on node {c.info.node_id[:12]}, {c.info.endpoint})"
        for tok in failed:
            job = self._jobs.pop(tok, None)
            if job is not None:
                self.stats["failed_running"] += 1
                _settle(job.fut, None, DaemonRestarted(
                    f"daemon {where} was lost while job {tok} ({job.model}) ran there ({why}); "
                    "it may have run, so it was not sent again: submit it again"))
        for tok, err in unroutable:
            job = self._jobs.pop(tok, None)
            if job is not None:
                self.stats["unroutable"] += 1
                _settle(job.fut, None, err)
        for tok in {t for _k, t in send}:
            job = self._jobs.get(tok)
            if job is not None:
                job.fut.resent += 1
                self.stats["resent"] += 1
        self._send(send)
        log.warning("cluster client: lost daemon %s (%s): %d job(s) re-routed, %d failed",
                    where, why, len(send), len(failed))
        c.s.fail_all(DaemonUnavailable("lost"))   # the rest of its table: nothing left there

    # -- jobs ---------------------------------------------------------------------------------------
    def _route(self, job: _Job) -> None:
        tok = job.fut.token
        self._jobs[tok] = job
        self.stats["submitted"] += 1
        try:
            pairs = self.router.submit(tok, job.model)
        except NoReplica as e:
            self._jobs.pop(tok, None)
            self.stats["unroutable"] += 1
            _settle(job.fut, None, e)
            return
        self._send(pairs)

    def _send(self, pairs) -> None:
        for key, tok in pairs:
            job = self._jobs.get(tok)
            c = self._conns.get(key)
            if job is None:
                continue
            if c is None or c.down_since:   # cannot happen: the router routes to live ones
                self._fail(tok, DaemonUnavailable(f"daemon {key} is not connected"))
                continue
            self._ensure_model(c, job.model)
            s = c.s
            sent = _Sent(self, tok, key)
            job.sent = sent
            job.fut.daemon = key
            rid = s.next_id()
            frames = submit_frames(rid, job.model, job.inputs, job.slo_ms, job.priority, True,
                                   s.max_frame if s.welcome else 64 << 20)
            s.track(rid, "submit", sent, time.perf_counter())
            try:
                c.sock.send_multipart(frames, copy=len(frames) <= 2)
            except zmq.ZMQError as e:
                s.forget(rid)
                self._fail(tok, DaemonUnavailable(f"sending to {key} failed: {e}"))

    def _prepare_kernels(self, frames: list) -> None:
        """Build the placed models' kernels now (the zoo's profiles load in seconds): not in
        the I/O loop, where it would hold every reply and heartbeat that long."""
        from gpusched.cluster.workload import model_kernels
        try:
            msg = CP.decode(frames[0], frames[1], CP.REPLIES)
        except (CP.ProtocolError, IndexError):
            return
        for d in getattr(msg, "daemons", ()):
            for r in d.replicas:
                if r.model not in self._kernels:
                    try:
                        model_kernels(r.zoo_model, r.batch, d.gpu_type)
                    except Exception as e:   # noqa: BLE001 (said again, to the job, if it is submitted)
                        log.warning("cluster client: no kernels for %s on %s: %s", r.model,
                                    d.gpu_type, e)

    def _ensure_model(self, c: _Conn, model: str) -> None:
        if model in c.registered:
            return
        kernels = self._kernels.get(model)
        if kernels is None:
            rep = next((r for r in c.info.replicas if r.model == model), None)
            if rep is None:   # bound here while the routes changed: any replica's shape
                rep = next(r for d in self.directory.daemons for r in d.replicas
                           if r.model == model)
            from gpusched.cluster.workload import model_kernels
            kernels = list(model_kernels(rep.zoo_model, rep.batch, c.info.gpu_type))
        msg = P.Register(req_id=0, model=model, kernels=kernels)
        c.sock.send_multipart(c.s.request("register", msg, _Noop(), time.perf_counter()))
        c.registered.add(model)

    def _accepted(self, sent: _Sent) -> None:
        job = self._jobs.get(sent.token)
        if job is not None and job.sent is sent:
            self.router.accepted(sent.token)

    def _answered(self, sent: _Sent, res, exc) -> None:
        job = self._jobs.get(sent.token)
        if job is None or job.sent is not sent:
            return   # settled already (its daemon was lost), or re-sent elsewhere
        if exc is not None and isinstance(exc, DaemonUnavailable):
            c = self._conns.get(sent.key)
            if c is not None:
                self._lost(c, str(exc).split(";")[0])
            return
        del self._jobs[sent.token]
        pairs = self.router.finished(sent.token, res.exec_ms / 1e3 if res is not None else None)
        if res is not None:
            res = dataclasses.replace(res, latency_ms=(time.perf_counter() - job.fut.t0) * 1e3)
        _settle(job.fut, res, exc)
        self._send(pairs)

    def _fail(self, tok: int, exc: Exception) -> None:
        job = self._jobs.pop(tok, None)
        if job is not None:
            self._send(self.router.withdraw(tok))
            _settle(job.fut, None, exc)

    # -- queue state from the daemons ---------------------------------------------------------------
    def _ask_status(self) -> None:
        for c in self._conns.values():
            if c.down_since or not c.s.welcome:
                continue
            rid = c.s.next_id()
            self._status_ids[rid] = c.key
            try:
                c.sock.send_multipart(P.encode(P.Status(req_id=rid)), zmq.NOBLOCK)
            except zmq.ZMQError:
                self._status_ids.pop(rid, None)

    def _on_status(self, c: _Conn, frames, now: float) -> None:
        c.s.last_heard = now
        try:
            msg = P.decode(frames[0].bytes, frames[1].buffer, P.REPLIES)
        except P.ProtocolError:
            return
        if self._status_ids.pop(msg.req_id, None) != c.key:
            return
        mine = len(self.router.sent_to(c.key))
        self.router.set_external(c.key, msg.queued - mine)


def _settle(fut: Future, res, exc) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(res)
    else:
        fut.set_exception(exc)
