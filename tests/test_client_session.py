"""The client's session core (client_lib/session.py) driven without sockets: encoded reply
frames and ``now`` values in, resolved futures and frames to send out. Then both front ends
(sync ``Client``, asyncio ``AsyncClient``) against a fake daemon (a raw ROUTER in a thread) that
restarts or falls silent: they must behave the same."""
import asyncio
import threading
import time

import msgspec
import numpy as np
import pytest
import zmq

from client_lib import AsyncClient, Client, DaemonRestarted, DaemonUnavailable, RequestError
from client_lib._common import JobResult, cuda_model
from client_lib.errors import ConnectError, GpuschedError
from client_lib.session import ClientSession
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.kernels import KernelSpec
from scheduler_daemon.wire.tensors import TensorMeta

LIMITS = P.Limits(max_frame_bytes=1 << 20, max_input_bytes=1 << 24, max_inputs=16,
                  max_kernels=64, max_models=16, max_queued=100)
KERNELS = [KernelSpec(name="k0", est_us=10.0, grid=1, block=32)]
CUDA = {"source": 'extern "C" __global__ void f(float* a) {}',
        "buffers": [{"name": "a", "dtype": "float32", "shape": [4], "role": "output"}],
        "launches": [{"kernel": "f", "grid": [1], "block": [4],
                      "args": [{"type": "buf", "index": 0}]}]}


def welcome(daemon_id="d1", heartbeat_s=0.5):
    return P.Welcome(version=P.PROTOCOL_VERSION, daemon_id=daemon_id, device="fake",
                     policy="fifo", heartbeat_s=heartbeat_s, limits=LIMITS)


def frames(msg, *raw):
    return P.encode(msg) + list(raw)


class Fut:
    """A future that counts every resolution attempt; a second one is refused like a real
    future's (InvalidStateError)."""

    def __init__(self, cancelled=False):
        self.outcomes = [("cancelled", None)] if cancelled else []
        self.attempts = 0
        self.job_id = None

    def done(self):
        return bool(self.outcomes)

    def _set(self, kind, value):
        self.attempts += 1
        if self.outcomes:
            raise RuntimeError(f"already {self.outcomes[0][0]}")
        self.outcomes.append((kind, value))

    def set_result(self, r):
        self._set("result", r)

    def set_exception(self, e):
        self._set("exception", e)

    @property
    def value(self):
        assert len(self.outcomes) == 1 and self.attempts == 1, (self.outcomes, self.attempts)
        return self.outcomes[0][1]


def session(now=0.0, timeout=1.0, heartbeat_s=0.5):
    s = ClientSession("ipc:///nowhere", "t", "tok", timeout, now)
    s.handshake(frames(welcome(heartbeat_s=heartbeat_s)), now)
    return s


def submit(s, now, fut=None):
    fut = fut or Fut()
    rid = s.next_id()
    s.track(rid, "submit", fut, now)
    return rid, fut


def register(s, msg, now, raw=()):
    """A registration the daemon accepts (remembered for replay)."""
    fut = Fut()
    s.request("register", msg, fut, now, raw)
    assert s.on_reply(frames(P.Registered(req_id=msg.req_id, model=msg.model, kernels=1)),
                      now) is None
    assert fut.value.model == msg.model
    return msg


def decode_requests(messages):
    return [(P.decode(m[0], m[1], P.REQUESTS), m[2:]) for m in messages]


# -- the core ---------------------------------------------------------------------------------
def test_handshake_welcome_and_clear_refusals():
    s = ClientSession("ipc:///nowhere", "t", "tok", 1.0, 0.0)
    hello = P.decode(*s.hello(), P.REQUESTS)
    assert (hello.tenant, hello.token, hello.version) == ("t", "tok", P.PROTOCOL_VERSION)
    s.handshake(frames(welcome("abc", 0.2)), 3.0)
    assert (s.daemon_id, s.heartbeat_s, s.last_heard, s.max_frame) == ("abc", 0.2, 3.0, 1 << 20)
    with pytest.raises(ConnectError, match="refused the connection: AUTH: bad token"):
        s.handshake(frames(P.Error(req_id=0, code="AUTH", message="bad token")), 0.0)
    with pytest.raises(ConnectError, match="unexpected Pong instead of WELCOME"):
        s.handshake(frames(P.Pong(seq=0, daemon_id="x")), 0.0)
    with pytest.raises(ConnectError, match="unreadable"):
        s.handshake([b"WELCOME", b"\xc1"], 0.0)
    assert "gpusched daemon" in str(s.no_answer()) and "CURVE" in str(s.no_answer())


def test_replies_route_to_their_request():
    s = session()
    rid, fut = submit(s, now=1.0)
    other, untouched = submit(s, now=1.0)
    assert s.on_reply(frames(P.Accepted(req_id=rid, job_id="j7")), 1.1) is None
    assert fut.job_id == "j7" and not fut.done()
    out = np.arange(4, dtype=np.float32)
    done = P.Done(req_id=rid, job_id="j7", status="done", exec_ms=2.0,
                  outputs=[TensorMeta(dtype="float32", shape=[4])])
    assert s.on_reply(frames(done, out.tobytes()), 1.5) is None
    res = fut.value
    assert isinstance(res, JobResult) and res.exec_ms == 2.0
    assert res.latency_ms == pytest.approx(500.0)  # now - t0, both from the front end
    assert np.array_equal(res.outputs[0], out)
    assert not untouched.done() and list(s.pending) == [other]

    s.on_reply(frames(P.Error(req_id=other, code="UNKNOWN_MODEL", message="no such model")), 2)
    assert isinstance(untouched.value, RequestError) and untouched.value.code == "UNKNOWN_MODEL"

    st = Fut()
    s.request("status", P.Status(req_id=0), st, 2.0)
    s.on_reply(frames(P.StatusReply(req_id=max(s.pending), queued=3)), 2.1)
    assert st.value.queued == 3

    eager = Fut()
    s.request("eager", P.EagerSync(req_id=1, fetch=[1]), eager, 2.0)
    s.on_reply(frames(P.EagerResult(req_id=max(s.pending)), b"raw"), 2.1)
    assert isinstance(eager.value[0], P.EagerResult) and eager.value[1] == [b"raw"]
    assert not s.pending


def test_zmq_frames_received_without_copy_route_too():
    s = session()
    rid, fut = submit(s, 0.0)
    s.on_reply([zmq.Frame(f) for f in frames(P.Done(req_id=rid, job_id="j", status="done"))],
               0.1)
    assert fut.value.job_id == "j"


def test_each_request_is_resolved_exactly_once():
    s = session()
    rid, fut = submit(s, 0.0)
    done = frames(P.Done(req_id=rid, job_id="j", status="done"))
    s.on_reply(done, 0.1)
    s.on_reply(done, 0.2)                                      # a duplicate answer: dropped
    s.on_reply(frames(P.Error(req_id=rid, code="INTERNAL", message="late")), 0.3)
    assert fut.attempts == 1 and fut.outcomes[0][0] == "result"
    s.fail_all(DaemonUnavailable("closed"))                   # it is no longer pending
    assert fut.attempts == 1

    rid2, gave_up = submit(s, 0.0, Fut(cancelled=True))       # an asyncio waiter gave up
    s.on_reply(frames(P.Done(req_id=rid2, job_id="j2", status="done")), 0.1)
    assert gave_up.outcomes == [("cancelled", None)] and not s.pending

    rid3, forgotten = submit(s, 0.0)
    s.forget(rid3)                                              # a sync waiter timed out
    s.on_reply(frames(P.Done(req_id=rid3, job_id="j3", status="done")), 0.1)
    assert not forgotten.done() and forgotten.attempts == 0

    s.on_reply([b"NOPE", b""], 0.4)                             # undecodable: logged, dropped
    s.on_reply([b"DONE", b"\xc1"], 0.4)
    assert s.last_heard == 0.4


def test_real_futures_already_done_are_left_as_they_are():
    from concurrent.futures import Future

    async def go():
        s = session()
        gave_up = asyncio.get_running_loop().create_future()
        gave_up.cancel()
        rid, _ = submit(s, 0.0, gave_up)
        s.on_reply(frames(P.Done(req_id=rid, job_id="j", status="done")), 0.1)
        assert gave_up.cancelled()
        done = Future()
        done.set_result("already")
        submit(s, 0.0, done)
        s.fail_all(DaemonUnavailable("closed"))
        assert done.result() == "already" and not s.pending
    asyncio.run(go())


def test_failed_job_statuses_become_their_exceptions():
    from client_lib import JobCancelled, JobFailed, JobShed
    s = session()
    for status, exc in (("cancelled", JobCancelled), ("shed", JobShed), ("failed", JobFailed)):
        rid, fut = submit(s, 0.0)
        s.on_reply(frames(P.Done(req_id=rid, job_id="j", status=status, error="boom")), 0.1)
        assert isinstance(fut.value, exc)


def _registered_three(s):
    """A kernel model, a captured graph (with weight frames) and a CUDA model."""
    register(s, P.Register(req_id=0, model="k", kernels=KERNELS), 0.0)
    graph = P.RegisterGraph(req_id=0, model="g", graph=b"graph-bytes",
                            weights=[TensorMeta(dtype="float32", shape=[2])])
    register(s, graph, 0.0, raw=[b"w" * 8])
    cuda = cuda_model("c", ptx="", instrument=False, options=(), **CUDA)
    register(s, P.RegisterCuda(req_id=0, model="c", cuda=cuda), 0.0)


def _assert_hello_then_replay(s, out):
    assert out is not None and out.reconnect
    msgs = decode_requests(out.messages)
    hello, _ = msgs[0]
    assert isinstance(hello, P.Hello) and hello.tenant == "t" and hello.token == "tok"
    by_model = {m.model: (type(m), raw) for m, raw in msgs[1:]}
    assert by_model == {"k": (P.Register, []), "g": (P.RegisterGraph, [b"w" * 8]),
                        "c": (P.RegisterCuda, [])}
    replay_ids = {m.req_id for m, _ in msgs[1:]}
    assert set(s.pending) == replay_ids       # tracked, with fresh ids and nobody waiting
    assert all(s.pending[r].future is None for r in replay_ids)
    return msgs


@pytest.mark.parametrize("how", ["pong from another daemon", "NOT_CONNECTED for a request",
                                 "NOT_CONNECTED for nothing"])
def test_restart_fails_pending_then_hello_and_every_model(how):
    s = session()
    _registered_three(s)
    rid, a = submit(s, 1.0)
    _, b = submit(s, 1.0)
    reply = {"pong from another daemon": P.Pong(seq=0, daemon_id="d2"),
             "NOT_CONNECTED for a request": P.Error(req_id=rid, code=P.Code.NOT_CONNECTED,
                                                    message="say HELLO first"),
             "NOT_CONNECTED for nothing": P.Error(req_id=0, code=P.Code.NOT_CONNECTED,
                                                  message="say HELLO first")}[how]
    out = s.on_reply(frames(reply), 2.0)
    assert isinstance(a.value, DaemonRestarted) and isinstance(b.value, DaemonRestarted)
    msgs = _assert_hello_then_replay(s, out)
    assert s.last_heard == s.last_sent == 2.0

    # the new daemon welcomes us and accepts the replays: nothing is pending, ids match now
    assert s.on_reply(frames(welcome("d2")), 2.1) is None
    for m, _ in msgs[1:]:
        s.on_reply(frames(P.Registered(req_id=m.req_id, model=m.model, kernels=1)), 2.2)
    assert not s.pending and s.daemon_id == "d2"
    assert s.on_reply(frames(P.Pong(seq=0, daemon_id="d2")), 2.3) is None
    assert set(s.models) == {"k", "g", "c"}


def test_only_accepted_registrations_are_replayed_and_the_latest_wins():
    s = session()
    register(s, P.Register(req_id=0, model="m", kernels=KERNELS), 0.0)
    refused = Fut()
    s.request("register", P.Register(req_id=0, model="bad", kernels=KERNELS), refused, 0.0)
    s.on_reply(frames(P.Error(req_id=max(s.pending), code="BAD_MODEL", message="no")), 0.1)
    assert isinstance(refused.value, RequestError)
    cuda = cuda_model("m", ptx="", instrument=False, options=(), **CUDA)
    register(s, P.RegisterCuda(req_id=0, model="m", cuda=cuda), 0.2)   # "m" is now CUDA
    out = s.reconnect(1.0)
    msgs = decode_requests(out.messages)
    assert [type(m) for m, _ in msgs] == [P.Hello, P.RegisterCuda]


def test_a_failed_replay_is_logged_not_raised(caplog):
    s = session()
    register(s, P.Register(req_id=0, model="m", kernels=KERNELS), 0.0)
    out = s.reconnect(1.0)
    rid = decode_requests(out.messages)[1][0].req_id
    s.on_reply(frames(P.Error(req_id=rid, code="BAD_MODEL", message="not on this GPU")), 1.1)
    assert "client: replaying a model" in caplog.text and "not on this GPU" in caplog.text
    assert not s.pending and "m" in s.models   # still the user's model: replayed next time


def test_heartbeat_is_due_one_heartbeat_after_the_last_send():
    s = session(now=0.0, timeout=10.0, heartbeat_s=0.5)   # no silence in this test
    assert s.heartbeat_s == 0.5
    assert s.tick(0.4) is None
    out = s.tick(0.5)
    assert not out.reconnect and [P.decode(*m, P.REQUESTS) for m in out.messages] == [P.Ping()]
    assert s.tick(0.9) is None                 # the ping was a send
    submit(s, 0.95)                            # so is a request
    assert s.tick(1.2) is None
    assert s.tick(1.45).messages == out.messages
    s.sent(1.6)                                # and a message without an answer (EAGER_OPS)
    assert s.tick(2.0) is None


def test_silence_with_nothing_pending_only_pings():
    s = session(now=0.0, timeout=1.0, heartbeat_s=0.5)
    for now in (0.5, 1.0, 5.0, 50.0):
        out = s.tick(now)
        assert out is not None and not out.reconnect


def test_silence_with_requests_pending_fails_them_and_reconnects():
    s = session(now=0.0, timeout=1.0, heartbeat_s=0.5)
    _registered_three(s)
    _, fut = submit(s, 0.2)
    s.on_reply(frames(P.Pong(seq=0, daemon_id="d1")), 0.3)   # heard at 0.3
    assert not s.tick(1.3).reconnect                          # 1.0 s silent: not yet
    assert not fut.done()
    out = s.tick(1.31)
    assert isinstance(fut.value, DaemonUnavailable) and not isinstance(fut.value,
                                                                       DaemonRestarted)
    assert "a request sent 1.1s ago (its last answer came 1.0s ago)" in str(fut.value)
    _assert_hello_then_replay(s, out)
    # the new connection gets a full timeout before the (pending) replays count as silence
    assert not s.tick(2.0).reconnect
    again = s.tick(2.4)
    assert again.reconnect   # still nobody: try a fresh connection again, replays and all
    _assert_hello_then_replay(s, again)


# -- the front ends against a fake daemon -----------------------------------------------------
class FakeDaemon:
    """A raw ROUTER speaking just enough protocol: WELCOME to HELLO, REGISTERED to every
    registration, DONE to SUBMITs of model "quick", PONG to PING while ``pong``; silent to the
    rest. ``daemon_id`` may change under the clients (a restart, as they see it)."""

    def __init__(self, endpoint):
        self.endpoint, self.daemon_id, self.pong = endpoint, "fake-1", False
        self.seen = []   # (peer identity, message)
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._bound.wait(5)

    def _run(self):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        self._bound.set()
        while not self._stop.is_set():
            if not sock.poll(10):
                continue
            ident, tag, body, *_ = sock.recv_multipart()
            msg = P.decode(tag, body, P.REQUESTS)
            self.seen.append((ident, msg))
            reply = self._answer(msg)
            if reply is not None:
                sock.send_multipart([ident, *P.encode(reply)])
        sock.close(0)
        ctx.term()

    def _answer(self, msg):
        t = type(msg)
        if t is P.Hello:
            return welcome(self.daemon_id, heartbeat_s=0.05)
        if t in (P.Register, P.RegisterCuda, P.RegisterGraph):
            return P.Registered(req_id=msg.req_id, model=msg.model, kernels=1)
        if t is P.Submit and msg.model == "quick":
            return P.Done(req_id=msg.req_id, job_id=f"j{msg.req_id}", status="done")
        if t is P.Ping and self.pong:
            return P.Pong(seq=msg.seq, daemon_id=self.daemon_id)
        return None

    def after_last_hello(self):
        """What the newest connection sent: its HELLO and everything after it."""
        hellos = [i for i, (_, m) in enumerate(self.seen) if isinstance(m, P.Hello)]
        ident = self.seen[hellos[-1]][0]
        return ident, [m for i, m in self.seen[hellos[-1]:] if i == ident]

    def close(self):
        self._stop.set()
        self._thread.join(5)


class SyncFront:
    async def open(self, ep):
        self.c = Client(ep, tenant="t", timeout=0.5)

    async def register(self):
        return [self.c.register_model("m", KERNELS), self.c.register_cuda("c", **CUDA)]

    async def submit(self, model):
        return self.c.submit(model)

    async def wait(self, fut, timeout):
        try:
            return fut.result(timeout)
        except (GpuschedError, TimeoutError) as e:
            return e

    async def close(self):
        self.c.close()


class AsyncFront(SyncFront):
    async def open(self, ep):
        self.c = AsyncClient(ep, tenant="t", timeout=0.5)
        await self.c.connect()

    async def register(self):
        return [await self.c.register_model("m", KERNELS),
                await self.c.register_cuda("c", **CUDA)]

    async def submit(self, model):
        return self.c.submit_nowait(model)

    async def wait(self, fut, timeout):
        try:
            return await asyncio.wait_for(fut, timeout)
        except (GpuschedError, TimeoutError) as e:
            return e

    async def close(self):
        await self.c.close()


async def _scenario(front, fake, event):
    """Register two models, leave a job pending, then ``event`` (restart or silence): what
    happens to the job, what the client sends next, and whether it works afterwards."""
    await front.open(fake.endpoint)
    try:
        first_ident = fake.seen[0][0]
        assert await front.register() == [1, 1]
        assert (await front.wait(await front.submit("quick"), 5)).job_id
        pending = await front.submit("long")
        t0 = time.monotonic()
        if event == "restart":
            fake.pong = True
            await asyncio.sleep(0.2)
            fake.daemon_id = "fake-2"
        err = await front.wait(pending, 10)
        failed_after = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while True:  # the new connection's HELLO and both replays reach the daemon
            ident, sent = fake.after_last_hello()
            if ident != first_ident and len(sent) >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        again = await front.wait(await front.submit("quick"), 5)
        return {"error": type(err).__name__, "fast": failed_after < 3,
                "new connection": ident != first_ident,
                "sent on it": sorted(type(m).__name__ for m in sent[:3]),
                "replayed": sorted(m.model for m in sent[1:3]),
                "works again": isinstance(again, JobResult),
                "daemon id": front.c.daemon_id}
    finally:
        await front.close()


@pytest.mark.parametrize("front", [SyncFront, AsyncFront], ids=["sync", "async"])
@pytest.mark.parametrize("event", ["restart", "silence"])
def test_front_ends_behave_the_same(tmp_path, front, event):
    fake = FakeDaemon(f"ipc://{tmp_path}/fake.sock")
    try:
        got = asyncio.run(_scenario(front(), fake, event))
    finally:
        fake.close()
    assert got == {"error": "DaemonRestarted" if event == "restart" else "DaemonUnavailable",
                   "fast": True, "new connection": True,
                   "sent on it": ["Hello", "Register", "RegisterCuda"],
                   "replayed": ["c", "m"], "works again": True,
                   "daemon id": "fake-2" if event == "restart" else "fake-1"}


def test_async_send_errors_fail_the_request(tmp_path, monkeypatch):
    """submit_nowait cannot await its send: a send that fails later fails its request."""
    fake = FakeDaemon(f"ipc://{tmp_path}/fake.sock")

    async def go():
        async with AsyncClient(fake.endpoint, tenant="t", timeout=0.5) as c:
            loop = asyncio.get_running_loop()

            def failing_send(frames, *a, **kw):
                sent = loop.create_future()
                loop.call_soon(sent.set_exception, zmq.ZMQError(zmq.EHOSTUNREACH))
                return sent
            monkeypatch.setattr(c._sock, "send_multipart", failing_send)
            fut = c.submit_nowait("quick")
            with pytest.raises(DaemonUnavailable, match="sending the request .* failed"):
                await asyncio.wait_for(fut, 5)
            with pytest.raises(DaemonUnavailable, match="sending the request .* failed"):
                await c.status()
            assert c.pending() == 0
            monkeypatch.undo()
            assert (await c.submit("quick")).job_id   # the client still works
    try:
        asyncio.run(go())
    finally:
        fake.close()


def test_cuda_model_errors_name_the_model():
    with pytest.raises(ValueError, match="CUDA model 'x'"):
        cuda_model("x", "src", [{"name": "a", "role": "weird"}], [], "", (), False)
    assert isinstance(cuda_model("x", ptx="", options=(), instrument=False, **CUDA),
                      msgspec.Struct)


def test_silence_after_a_reconnect_states_the_real_times():
    """Issue 20: after a reconnect the message said "has not answered for 5.0s" of a request
    sent 3 s before; it now gives the request's own wait and the daemon's last answer."""
    s = session(now=0.0, timeout=1.0, heartbeat_s=0.5)
    _registered_three(s)
    s.on_reply(frames(P.Pong(seq=0, daemon_id="d1")), 0.3)   # its last answer, at 0.3
    submit(s, 0.4)
    assert s.tick(1.4).reconnect                              # silent 1.1 s: reconnect at 1.4
    _, fut = submit(s, 2.0)                                   # 0.6 s after the reconnect
    out = s.tick(2.35)
    assert out is None or not out.reconnect
    assert s.tick(2.5).reconnect                              # 1.1 s after the reconnect
    msg = str(fut.value)
    assert "a request sent 0.5s ago" in msg and "its last answer came 2.2s ago" in msg, msg
