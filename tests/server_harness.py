"""The daemon's ``Server`` driven in-process on a virtual clock: requests in, replies out.

No sockets and no subprocess: a test sends decoded messages as peer ``b"a"``, ``b"b"``, ...,
lets virtual time run (``run``), and reads the replies each peer got. The same Server, core,
device and pump as the live daemon; only the frames are not on a socket.
"""
from __future__ import annotations

import hashlib
import select
from collections import defaultdict

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.devices.simgpu import SimGpu
from scheduler_daemon.server.config import DaemonConfig, DaemonLimits
from scheduler_daemon.server.compiler import Compiler
from scheduler_daemon.server.server import Server
from scheduler_daemon.wire import protocol as P


class Harness:
    def __init__(self, device=None, admission=None, compiler=None, **options):
        limits = {k: options.pop(k) for k in list(options) if hasattr(DaemonLimits, k)}
        self.config = DaemonConfig(endpoint="ipc:///nonexistent/harness.sock",
                                   limits=DaemonLimits(**limits), **options)
        self.env = Environment()
        self.device = device or SimGpu(gpu_spec(self.config.gpu_spec))
        # CUDA source compiled in this process, at once (tests/test_cuda_sandbox.py has the
        # sandboxed child and the compiler's threads)
        compiler = compiler or Compiler(_compile_here, inline=True)
        self.server = Server(self.config, self.device, self.env, admission, compiler)
        self.inbox: dict[bytes, list] = defaultdict(list)

    # -- requests -----------------------------------------------------------------------------
    # A peer is named by a short bytes string (b"a"); on the wire it has the routing id libzmq
    # would give it (``routing_id``) and a connection of its own (its name, unless ``conn=``).
    @staticmethod
    def routing_id(peer: bytes) -> bytes:
        if len(peer) == 5 and peer[0] == 0:
            return peer        # already one (attack tests choose their own)
        return b"\x00" + hashlib.blake2b(peer, digest_size=4).digest()

    def send(self, peer: bytes, msg, *raw, conn: str | None = None,
             key_tenant: str | None = None) -> list:
        """One request of ``peer``; returns the replies it got at once."""
        ident = self.routing_id(peer)
        self._deliver(self.server.handle(ident, msg, list(raw), self.env.now,
                                         peer.hex() if conn is None else conn, key_tenant))
        self._deliver(self.server.advance())
        return self.take(peer)

    def send_frames(self, peer: bytes, *frames, conn: str | None = None) -> list:
        self._deliver(self.server.handle_frames(self.routing_id(peer), list(frames),
                                                self.env.now,
                                                peer.hex() if conn is None else conn))
        return self.take(peer)

    def send_as(self, identity: bytes, msg, conn: str = "raw") -> list:
        """A request under a routing id given as it is (a peer-chosen one included)."""
        replies = self.server.handle(identity, msg, [], self.env.now, conn)
        return [r[1] for r in replies if r[0] == identity]

    def close_connection(self, peer: bytes, conn: str | None = None) -> None:
        self._deliver(self.server.connection_closed(peer.hex() if conn is None else conn,
                                                    self.env.now))

    def hello(self, peer: bytes, tenant: str = "t", token: str = "", **kw) -> P.Welcome:
        (msg, _), = self.send(peer, P.Hello(version=P.PROTOCOL_VERSION, tenant=tenant,
                                            token=token), **kw)
        assert isinstance(msg, P.Welcome), msg
        return msg

    def call(self, peer: bytes, msg, *raw, **kw):
        """A request answered at once: its one reply (message only). Other replies the peer
        got meanwhile (DONEs of jobs that ended) stay in its inbox."""
        rid = getattr(msg, "req_id", None)

        def answers(m) -> bool:
            return rid is None or (getattr(m, "req_id", None) == rid
                                   and not isinstance(m, P.Done))
        replies = self.send(peer, msg, *raw, **kw)
        mine = [m for m, _ in replies if answers(m)]
        self.inbox[self.routing_id(peer)][:0] = [(m, r) for m, r in replies if not answers(m)]
        assert len(mine) == 1, replies
        return mine[0]

    # -- time ---------------------------------------------------------------------------------
    def run(self, until: float | None = None, wall_timeout: float = 30.0) -> None:
        """Let virtual time run until nothing is left to do (or ``until``). Devices with worker
        threads (torch) are waited for on their wake fd."""
        env, fd = self.env, self.device.wake_fd()
        while True:
            self._deliver(self.server.advance())
            if fd is not None and self._busy():
                ready, _, _ = select.select([fd], [], [], wall_timeout)
                assert ready, "the device's workers did not finish in time"
                self.device.collect()
                continue
            nxt = env.peek()
            if nxt == float("inf") or (until is not None and nxt > until):
                break
            env.step()
        if until is not None and until > env.now:
            env.now = until
        self._deliver(self.server.advance())

    def _busy(self) -> bool:
        return self.server.core.inflight > 0

    # -- replies ------------------------------------------------------------------------------
    def _deliver(self, replies) -> None:
        for identity, msg, raw in replies:
            # a reply is encoded and decoded as on the wire, so what a test reads is what a
            # client would (and an unencodable reply fails here)
            tag, body = P.encode(msg)
            self.inbox[identity].append((P.decode(tag, body, P.REPLIES), [bytes(b) for b in raw]))

    def take(self, peer: bytes) -> list:
        ident = self.routing_id(peer)
        out, self.inbox[ident] = self.inbox[ident], []
        return out

    def close(self) -> None:
        self.server.close()


def _compile_here(model, arch):
    from scheduler_daemon.cuda.build import compile_model
    return compile_model(model, arch)
