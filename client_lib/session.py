"""The client's session core: everything a connection to the daemon needs except a socket and
a clock. Both front ends (client.py: threads, aio.py: asyncio) own the DEALER socket, read the
clock (``now``: ``time.perf_counter()`` seconds), hand every reply to ``on_reply`` and call
``tick`` about once a heartbeat; they send what the core returns.

The core keeps the request ids, the pending table, what to replay after a reconnect (every
registered model: kernel lists, captured graphs with their weight frames, CUDA models), the
daemon id and the last-heard/last-sent times. It decides which future a reply resolves, when a
heartbeat is due, and when a restarted daemon (NOT_CONNECTED, or a PONG from another daemon id)
or a silent one (no answer for ``timeout`` while requests are pending) fails everything pending
and needs a fresh connection: an ``Outbox`` with ``reconnect`` set and the HELLO, then every
registration again, to send in order on one new socket, so that the daemon knows the models
before any later SUBMIT.

Futures: anything with ``done()``, ``set_result()`` and ``set_exception()`` (concurrent.futures
and asyncio futures alike); ``job_id`` is set on them when the daemon names the job. Each is
resolved at most once: an entry leaves the pending table before its future is resolved, and a
future already done (an asyncio waiter gave up) is left as it is. Replayed registrations have no
future; a failed replay is logged. Not thread-safe: the sync front end calls it under its lock.
"""
from __future__ import annotations

import itertools
import logging

from client_lib._common import resolve_done
from client_lib.errors import ConnectError, DaemonRestarted, DaemonUnavailable, RequestError
from scheduler_daemon.wire import protocol as P

log = logging.getLogger("gpusched.client")

_REGISTRATIONS = (P.Register, P.RegisterGraph, P.RegisterCuda)
_PING = P.encode(P.Ping(seq=0))
_DEFAULT_HEARTBEAT_S = 0.25  # until WELCOME names the daemon's


class Pending:
    """One request waiting for its answer. ``replay``: (message, raw frames) of a registration,
    remembered for replay once the daemon accepts it."""
    __slots__ = ("future", "kind", "replay", "t0")

    def __init__(self, kind: str, future, t0: float, replay: tuple | None = None):
        self.kind, self.future, self.t0, self.replay = kind, future, t0, replay


class Outbox:
    """What a front end must do: open a fresh socket first if ``reconnect`` (and forget state
    the daemon held for the old connection), then send ``messages`` (multipart lists) in order."""
    __slots__ = ("messages", "reconnect")

    def __init__(self, reconnect: bool, messages: list):
        self.reconnect, self.messages = reconnect, messages


class ClientSession:
    def __init__(self, endpoint: str, tenant: str, token: str, timeout: float, now: float,
                 encrypted: bool = False):
        self.endpoint, self.tenant, self.token = endpoint, tenant, token
        self.timeout = timeout
        self.encrypted = encrypted  # only for the hint in a connect error
        self._ids = itertools.count(1)
        self.pending: dict[int, Pending] = {}
        self.models: dict[str, tuple] = {}  # name -> (registration, raw frames), replayed
        self.welcome: P.Welcome | None = None
        self.daemon_id = ""
        self.last_heard = self.last_sent = now
        self.last_answer: float | None = None  # the daemon's last word, any connection

    # -- connection -------------------------------------------------------------------------
    def hello(self) -> list:
        return P.encode(P.Hello(version=P.PROTOCOL_VERSION, tenant=self.tenant, token=self.token))

    def no_answer(self) -> ConnectError:
        """The error for a handshake nobody answered within ``timeout``."""
        return ConnectError(
            f"no daemon answered at {self.endpoint} within {self.timeout}s: start one with "
            "'gpusched daemon' or pass the right endpoint"
            + ("" if self.encrypted else " (a daemon with a CURVE key answers only clients "
               "given its public key: server_key= or GPUSCHED_SERVER_KEY)"))

    def no_daemon(self, why: str) -> ConnectError:
        """The error for an endpoint nothing listens at (a connect check said ``why``)."""
        return ConnectError(f"no daemon at {self.endpoint}: {why}. Start one with 'gpusched "
                            "daemon' or pass the endpoint it serves (--endpoint, "
                            "GPUSCHED_ENDPOINT)")

    def handshake(self, frames: list, now: float) -> P.Welcome:
        """The first reply on a new client: WELCOME, or ``ConnectError`` saying why not."""
        try:
            msg = P.decode(_tag(frames[0]), _body(frames[1]), P.REPLIES)
        except (P.ProtocolError, IndexError) as e:
            raise ConnectError(f"the daemon at {self.endpoint} answered the handshake with "
                               f"something unreadable ({e}): is it a gpusched daemon of the same "
                               "version?") from None
        if isinstance(msg, P.Error):
            raise ConnectError(f"the daemon refused the connection: {msg.code}: {msg.message}")
        if not isinstance(msg, P.Welcome):
            raise ConnectError(f"unexpected {type(msg).__name__} instead of WELCOME")
        self._welcomed(msg, now)
        return msg

    def _welcomed(self, msg: P.Welcome, now: float) -> None:
        self.welcome = msg
        self.daemon_id = msg.daemon_id
        self.last_heard = self.last_answer = now
        log.debug("client: connected tenant=%s daemon=%s", self.tenant, msg.daemon_id)

    @property
    def heartbeat_s(self) -> float:
        return self.welcome.heartbeat_s if self.welcome else _DEFAULT_HEARTBEAT_S

    @property
    def max_frame(self) -> int:
        return self.welcome.limits.max_frame_bytes

    # -- requests ---------------------------------------------------------------------------
    def next_id(self) -> int:
        return next(self._ids)

    def track(self, req_id: int, kind: str, future, now: float) -> None:
        """``req_id`` is being sent now; its answer resolves ``future``."""
        self.pending[req_id] = Pending(kind, future, now)
        self.last_sent = now

    def request(self, kind: str, msg: P.Msg, future, now: float, raw: list = ()) -> list:
        """Give ``msg`` a req_id, track it and return its frames; a registration is remembered
        for replay when the daemon accepts it."""
        msg.req_id = rid = next(self._ids)
        raw = list(raw)
        self.pending[rid] = Pending(kind, future, now,
                                    (msg, raw) if isinstance(msg, _REGISTRATIONS) else None)
        self.last_sent = now
        return P.encode(msg) + raw

    def sent(self, now: float) -> None:
        """A message that gets no answer of its own (EAGER_OPS) was sent."""
        self.last_sent = now

    def forget(self, req_id: int) -> Pending | None:
        """The waiter gave up (or the send failed): a late answer is dropped, not kept."""
        return self.pending.pop(req_id, None)

    def fail(self, req_id: int, exc: Exception) -> None:
        """Fail one request, if still pending (its send failed)."""
        p = self.pending.pop(req_id, None)
        if p is not None:
            _settle(p, None, exc)

    def fail_all(self, exc) -> int:
        """Fail every pending request with ``exc`` (an exception), or with ``exc(pending)``
        when it is a function (each its own message); how many had a waiter."""
        pending, self.pending = self.pending, {}
        for p in pending.values():
            _settle(p, None, exc if isinstance(exc, BaseException) else exc(p))
        return sum(p.future is not None for p in pending.values())

    # -- replies ----------------------------------------------------------------------------
    def on_reply(self, frames: list, now: float) -> Outbox | None:
        """Route one reply (frames: bytes or zmq frames) to its pending request."""
        self.last_heard = self.last_answer = now
        try:
            msg = P.decode(_tag(frames[0]), _body(frames[1]), P.REPLIES)
        except (P.ProtocolError, IndexError) as e:
            log.warning("client: undecodable reply dropped: %s", e)
            return None
        t = type(msg)
        if t is P.Pong:
            if msg.daemon_id != self.daemon_id:
                return self._restarted(now)
            return None
        if t is P.Accepted:
            p = self.pending.get(msg.req_id)
            if p is not None and p.future is not None:
                p.future.job_id = msg.job_id
            return None
        if t is P.Welcome:
            self._welcomed(msg, now)
            return None
        p = self.pending.pop(msg.req_id, None)
        if p is None:
            if t is P.Error and msg.code == P.Code.NOT_CONNECTED:
                return self._restarted(now)
            if t is P.Error:
                log.warning("client: daemon error without a pending request: %s %s", msg.code,
                            msg.message)
            return None  # a late answer to a request its waiter gave up on
        if t is P.Done:
            if p.future is not None:
                p.future.job_id = msg.job_id
            res, exc = resolve_done(msg, frames[2:], p.t0, now)
            _settle(p, res, exc)
        elif t is P.Error:
            if msg.code == P.Code.NOT_CONNECTED:
                _settle(p, None, DaemonRestarted(
                    "the daemon no longer knows this client (it restarted or dropped us as "
                    "silent); the request was lost: submit it again"))
                return self._restarted(now)
            _settle(p, None, RequestError(msg.code, msg.message))
        elif t is P.EagerResult:
            _settle(p, (msg, frames[2:]), None)
        else:
            if t is P.Registered and p.replay is not None:
                self._forget_sharers(msg.model)   # the daemon dropped them (registration.py)
                self.models[msg.model] = p.replay  # the latest registration of a name wins
            _settle(p, msg, None)
        return None

    def _forget_sharers(self, model: str) -> None:
        """``model`` was registered again: the graphs sharing its weights are gone from the
        daemon, so they are not replayed either."""
        gone = [n for n, (m, _) in self.models.items() if getattr(m, "shares", "") == model]
        for n in gone:
            del self.models[n]
            self._forget_sharers(n)

    def _restarted(self, now: float) -> Outbox:
        """The daemon is a new one: fail what the old one held, then HELLO and re-register."""
        n = self.fail_all(DaemonRestarted(f"the daemon at {self.endpoint} restarted; the "
                                          "request was lost: submit it again"))
        log.warning("client: daemon at %s restarted; failed %d pending request(s), "
                    "reconnecting and replaying %d model(s)", self.endpoint, n, len(self.models))
        return self.reconnect(now)

    # -- time -------------------------------------------------------------------------------
    def tick(self, now: float) -> Outbox | None:
        """Call about once a heartbeat: a PING when one is due, or a reconnect when the daemon
        stayed silent past ``timeout`` with requests pending."""
        if self.pending and now - self.last_heard > self.timeout:
            silent = now - (self.last_answer if self.last_answer is not None else
                            self.last_heard)
            # each says how long it waited itself
            n = self.fail_all(lambda p: DaemonUnavailable(self.silence(now, p.t0)))
            # only replays pending: the daemon is still away, say it quietly
            (log.warning if n else log.debug)(
                "client: daemon at %s silent for %.1fs; failed %d pending request(s), "
                "reconnecting", self.endpoint, silent, n)
            return self.reconnect(now)
        if now - self.last_sent >= self.heartbeat_s:
            self.last_sent = now
            return Outbox(False, [_PING])
        return None

    def silence(self, now: float, sent: float) -> str:
        """Why a request sent at ``sent`` failed at ``now``: the times as they were."""
        heard = ("it has not answered since this client connected" if self.last_answer is None
                 else f"its last answer came {now - self.last_answer:.1f}s ago")
        return (f"no answer from the daemon at {self.endpoint} to a request sent "
                f"{now - sent:.1f}s ago ({heard}); is it still running? The client "
                "reconnects; submit the request again")

    def reconnect(self, now: float) -> Outbox:
        """HELLO, then every registered model again, for a fresh socket; WELCOME comes later."""
        messages = [self.hello()]
        for msg, raw in self.models.values():
            msg.req_id = next(self._ids)
            self.pending[msg.req_id] = Pending("register", None, now)
            messages.append(P.encode(msg) + raw)
        self.last_heard = self.last_sent = now  # the new connection gets a full timeout
        return Outbox(True, messages)


def _settle(p: Pending, result, exc: Exception | None) -> None:
    f = p.future
    if f is None:  # a replayed registration: nobody waits on it
        if exc is not None and not isinstance(exc, DaemonUnavailable):
            log.warning("client: replaying a model after a reconnect failed: %s", exc)
        return
    try:  # no done() check first: a concurrent.futures one takes a lock, on every reply
        if exc is None:
            f.set_result(result)
        else:
            f.set_exception(exc)
    except Exception:
        if not f.done():
            raise
        # InvalidStateError: an asyncio waiter gave up and cancelled it


# frames arrive as zmq frames (received with copy=False) or as bytes (tests)
def _tag(f) -> bytes:
    return f if isinstance(f, bytes) else f.bytes


def _body(f):
    return f if isinstance(f, bytes) else f.buffer
