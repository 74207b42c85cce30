"""A raw protocol peer for tests: speaks frames directly, no client library."""
import zmq

from scheduler_daemon.wire import protocol as P


class RawPeer:
    def __init__(self, endpoint: str):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, *frames):
        self.sock.send_multipart([f if isinstance(f, (bytes, memoryview)) else bytes(f) for f in frames])

    def send_msg(self, msg, *raw):
        self.sock.send_multipart(P.encode(msg) + list(raw))

    def recv(self, timeout_ms: int = 3000):
        if not self.sock.poll(timeout_ms):
            raise TimeoutError("no reply")
        frames = self.sock.recv_multipart()
        return P.decode(frames[0], frames[1], P.REPLIES), frames[2:]

    def recv_all(self, quiet_ms: int = 500):
        out = []
        while self.sock.poll(quiet_ms):
            frames = self.sock.recv_multipart()
            out.append((P.decode(frames[0], frames[1], P.REPLIES), frames[2:]))
        return out

    def hello(self, tenant: str = "raw"):
        self.send_msg(P.Hello(version=P.PROTOCOL_VERSION, tenant=tenant))
        msg, _ = self.recv()
        assert isinstance(msg, P.Welcome), msg
        return msg

    def close(self):
        self.sock.close(0)
