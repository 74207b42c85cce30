"""The daemon process: a ZeroMQ ROUTER socket around the I/O-free ``Server``.

One thread, one poll loop (a thread handing frames over a queue roughly doubled the round trip
when measured): read every ready message, hand it to the server, send the replies it returns,
let the server run due device events, reap silent clients. The loop polls the socket, the
socket's monitor (a closed connection ends its session at once), the ZAP handler (every new
connection is authenticated here, before libzmq takes a byte of its messages), a self-pipe
(signal handlers only set a flag and write to it), the device's wake fd and the CUDA
compiler's (tenants' compiles run sandboxed off the loop: server/compiler.py).

Connections, not routing ids, are who a session belongs to: the ZAP handler gives each
connection its own id (ZAP's User-Id, read back from every message's metadata), so a peer that
claims another's routing id is not that peer; libzmq's own routing ids are made unpredictable
(its counter starts from C ``rand()``, which the daemon seeds from the OS first).
"""
from __future__ import annotations

import ctypes
import itertools
import logging
import os
import secrets
import signal
import stat

import zmq

from scheduler_daemon.clock import Environment, RealtimeEnvironment
from scheduler_daemon.devices.base import Device
from scheduler_daemon.devices.factory import make_device
from scheduler_daemon.server.compiler import Compiler, sandboxed
from scheduler_daemon.server.config import DaemonConfig
from scheduler_daemon.server.server import AdmissionFactory, ConfigError, Server
from scheduler_daemon.transport.sockets import make_socket
from scheduler_daemon.wire import protocol as P

log = logging.getLogger("gpusched.daemon")

_NOBLOCK, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)
_SNDMORE, _RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)


class DaemonError(Exception):
    """A daemon that cannot start (endpoint in use, bad option)."""


class Daemon:
    def __init__(self, config: DaemonConfig, device: Device | None = None,
                 env: Environment | None = None, admission: AdmissionFactory | None = None):
        self.config = config
        self.env = env or RealtimeEnvironment()
        device = device or make_device(config.backend, config.gpu_spec, config.speed,
                                       config.torch_device, config.hw_queues)
        try:
            # CUDA compiles run on worker threads (each waits on its sandboxed child)
            self.server = Server(config, device, self.env, admission,
                                 Compiler(sandboxed(config.max_compile_s), inline=False))
        except ConfigError as e:
            device.close()
            raise DaemonError(str(e)) from None
        self.ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._owns_socket_file = False
        self._metrics = None
        self._stop = False
        self._zap: zmq.Socket | None = None
        self._conn_ids = itertools.count(1)
        self._live = 0                          # connections accepted and not yet closed
        self._conn_of_fd: dict[int, str] = {}   # learnt at HELLO, forgotten at disconnect
        self._key_tenants = {_z85(k): t for t, k in config.tenant_keys.items()}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # the server's state, for the metrics endpoint and callers that inspect a daemon
    @property
    def core(self):
        return self.server.core

    @property
    def device(self):
        return self.server.device

    @property
    def daemon_id(self) -> str:
        return self.server.daemon_id

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
        # every connection is authenticated by our ZAP handler (bound before the socket, so
        # none gets past it)
        self._zap = self.ctx.socket(zmq.ROUTER)   # REP would need one reply per request read
        self._zap.linger = 0
        self._zap.bind("inproc://zeromq.zap.01")
        _seed_routing_ids()
        try:
            self.sock = make_socket(self.ctx, zmq.ROUTER, ep, bind=True,
                                    max_frame=self.config.limits.max_frame_bytes,
                                    curve_secret=self.config.curve_secret, zap=True)
        except (zmq.ZMQError, OSError) as e:
            raise DaemonError(f"cannot bind {ep}: {e}") from None
        self._owns_socket_file = ep.startswith("ipc://")
        # connections opened and closed (a killed client) are seen through the socket monitor
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_ACCEPTED
                                                     | zmq.EVENT_DISCONNECTED)
        if self.config.metrics_port is not None:
            from scheduler_daemon.metrics import PrometheusMetrics
            try:
                self._metrics = self.server.metrics = PrometheusMetrics(
                    self.server, self.config.metrics_port, self.config.metrics_addr,
                    self.config.metrics_redact)
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
            self.server.drain_deadline = float("-inf")
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if self._zap is not None:
            self._zap.close(0)
            self._zap = None
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        self.server.close()
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
        sock, env, server = self.sock, self.env, self.server
        poller = zmq.Poller()
        # the monitor first: a disconnect must be handled before a later HELLO that reuses its
        # file descriptor (poll reports ready sockets in registration order)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._zap, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        dev_fd = self.device.wake_fd()
        if dev_fd is not None:
            poller.register(dev_fd, zmq.POLLIN)
        poller.register(server.compiler.wake_fd(), zmq.POLLIN)   # taken by server.advance()
        check_every = min(0.25, self.config.client_timeout_s / 4,
                          self.config.disconnect_grace_s / 2)
        next_check = env.now + check_every
        recv, events, send = self._recv, sock.getsockopt, self._send_all
        while True:
            now = env.tick()
            if self._stop and not server.draining:
                send(server.begin_drain(now))
            if server.draining and (server.drained() or now >= server.drain_deadline):
                send(server.end_drain(now))
                break
            wait = min(env.peek(), next_check) - now
            ready = poller.poll(0 if wait <= 0 else int(wait * 1000) if wait < 3600
                                else 3_600_000)
            # read the clock after the wait: a SUBMIT's arrival is when it was read, not when the
            # loop went to sleep (that inflated total_ms by the idle wait, up to check_every)
            env.tick()
            for fd, _ in ready:
                if fd is sock:
                    for _ in range(512):  # bounded, so device events are not starved
                        try:
                            identity, frames, conn, key_tenant = recv()
                        except zmq.Again:
                            break
                        if frames is not None:  # each message stamped when read, not per batch
                            send(server.handle_frames(identity, frames, env.tick(), conn,
                                                      key_tenant))
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
                elif fd is self._zap:
                    self._on_zap()
            env.tick()
            send(server.advance())
            # reap only with the socket drained: a backlog must not make live clients look silent
            if now >= next_check and not events(_EVENTS) & _POLLIN:
                send(server.reap_silent(now))
                next_check = now + check_every
        log.info("daemon: stopped")

    # -- frames -------------------------------------------------------------------------------
    def _recv(self) -> tuple:
        """One message: (identity, frames, connection, tenant of its CURVE key). Type and body
        are bytes (small: copying is cheaper than a Frame object), raw payload frames
        zero-copy ``zmq.Frame``s; the type frame is read as a Frame for the connection's
        metadata. A message over the whole-message limits is read to its end and refused
        (frames None)."""
        recv, more = self.sock.recv, self.sock.getsockopt
        lim = self.config.limits
        identity = recv(_NOBLOCK)
        if not more(_RCVMORE):
            return identity, [], "", None
        head = recv(_NOBLOCK, copy=False)
        conn, key_tenant = _conn_of(head)
        frames: list = [head.bytes]
        size, parts = len(frames[0]), 1
        while more(_RCVMORE):
            f = recv(_NOBLOCK) if len(frames) < 2 else recv(_NOBLOCK, copy=False)
            size += len(f)
            parts += 1
            if parts <= lim.max_message_parts and size <= lim.max_message_bytes:
                frames.append(f)
        if parts > lim.max_message_parts or size > lim.max_message_bytes:
            self._send_all(self._refuse_large(identity, frames, conn, parts, size))
            return identity, None, conn, key_tenant
        if frames[0] == b"HELLO":
            # closes seen before this HELLO must be applied first: its fd may be a reused one
            self._on_monitor(self.env.now)
            self._conn_of_fd[_srcfd(head)] = conn
        return identity, frames, conn, key_tenant

    def _refuse_large(self, identity: bytes, frames: list, conn: str, parts: int, size: int):
        from scheduler_daemon.wire.protocol import Code
        lim = self.config.limits
        log.warning("daemon: refused a message of %d frames, %d bytes from client=%s", parts,
                    size, identity.hex())
        self.server.error(identity, 0, Code.TOO_LARGE,
                          f"a message of {parts} frames and {size} bytes; the limits are "
                          f"{lim.max_message_parts} frames and {lim.max_message_bytes} bytes")
        return self.server.take_replies()

    def _send_all(self, replies: list) -> None:
        send = self.sock.send
        for identity, msg, raw in replies:
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

    def _on_monitor(self, now: float) -> None:
        from zmq.utils.monitor import recv_monitor_message
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            if ev["event"] == zmq.EVENT_ACCEPTED:
                self._live += 1
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self._live = max(0, self._live - 1)
                conn = self._conn_of_fd.pop(int(ev["value"]), None)
                if conn is not None:
                    self._send_all(self.server.connection_closed(conn, now))

    def _on_zap(self) -> None:
        """ZAP (RFC 27): admit a new connection or not, and name it. Runs before libzmq
        accepts any message of the connection."""
        self._on_monitor(self.env.tick())  # the connection count must be current
        reqs = []
        while True:
            try:
                reqs.append(self._zap.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        for i, req in enumerate(reqs):
            # [peer, b"", version, request id, domain, address, identity, mechanism, *creds]
            head, body = req[:2], req[2:]
            version, rid, mechanism, creds = body[0], body[1], body[5], body[6:]
            # connections still waiting behind this one are not counted against it
            try:
                status, text, user = self._authorise(mechanism, creds, len(reqs) - 1 - i)
            except Exception:  # never let a bug here take the daemon down: refuse that one
                log.exception("daemon: internal error authorising a connection")
                status, text, user = b"500", b"internal error", b""
            self._zap.send_multipart(head + [version, rid, status, text, user, b""])

    def _authorise(self, mechanism: bytes, creds: list, waiting: int
                   ) -> tuple[bytes, bytes, bytes]:
        cfg = self.config
        live = self._live - waiting
        if live > cfg.max_connections:
            log.warning("daemon: refused a connection: %d live (limit %d)", live,
                        cfg.max_connections)
            return b"400", b"too many connections", b""
        if self.server.unauthenticated(live) > cfg.max_unauthenticated:
            log.warning("daemon: refused a connection: %d have not said HELLO (limit %d)",
                        self.server.unauthenticated(live), cfg.max_unauthenticated)
            return b"400", b"too many connections without HELLO", b""
        conn = str(next(self._conn_ids))
        if self._key_tenants:
            key = creds[0] if mechanism == b"CURVE" and creds else b""
            tenant = self._key_tenants.get(key)
            if tenant is None:
                log.warning("daemon: refused a connection with an unknown CURVE key")
                return b"400", b"unknown client key", b""
            conn = f"{conn}:{tenant}"
        return b"200", b"OK", conn.encode()


def _conn_of(frame) -> tuple[str, str | None]:
    """The connection id our ZAP handler gave the message's connection, and its key's tenant."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return "", None
    conn, _, tenant = user.partition(":")
    return conn, tenant or None


def _z85(key: str | bytes) -> bytes:
    """A z85 CURVE public key as the 32 raw bytes ZAP hands over."""
    import zmq.utils.z85
    return zmq.utils.z85.decode(key.encode() if isinstance(key, str) else key)


def _seed_routing_ids() -> None:
    """libzmq numbers the connections of a ROUTER from C ``rand()``; unseeded, every daemon
    hands out the same ids in the same order (a peer could claim the next ones and make
    libzmq abort on the collision). Seed it from the OS before the socket is made."""
    try:
        ctypes.CDLL(None).srand(secrets.randbits(32))
    except (OSError, AttributeError):  # no libc symbol table: ids stay predictable
        log.warning("daemon: could not seed libzmq's routing ids; they are predictable")


def _srcfd(frame: zmq.Frame) -> int:
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, AttributeError, ValueError):
        return -1


def _daemon_answers(ctx: zmq.Context, endpoint: str, curve_secret: bytes | None = None,
                    timeout_ms: int = 300) -> bool:
    server_key = zmq.curve_public(curve_secret) if curve_secret else None
    s = make_socket(ctx, zmq.DEALER, endpoint, bind=False, curve_server_key=server_key)
    try:
        s.send_multipart(P.encode(P.Ping(seq=0)))
        return bool(s.poll(timeout_ms))
    finally:
        s.close(0)
