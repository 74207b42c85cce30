"""``gpusched bench fuzz``: random and mutated frames against a live daemon.

Three peers speak to one daemon (zero-duration device): one that said HELLO, one that did not,
and one that says HELLO again now and then. Each message is random bytes, a valid request with
random field values, or a valid request with its body mutated (bytes flipped, cut, extended).
Every message must get exactly one answer (``ACCEPTED`` notices aside; a valid ``BYE`` has
none), the daemon must not die, and afterwards a well-behaved client must still get correct
results. RSS of the daemon is read from /proc before and after.
"""
from __future__ import annotations

import random
import time

import zmq

from gpusched.procs import start_daemon, stop_daemon
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.kernels import KernelSpec

MODEL = [KernelSpec(name="k", est_us=0.0)]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _valid(rng: random.Random) -> P.Msg:
    rid = rng.randrange(1, 1 << 20)
    kind = rng.randrange(7)
    if kind == 0:
        return P.Submit(req_id=rid, model=rng.choice(["m", "ghost", "m"]),
                        slo_ms=rng.choice([0.0, 1.0, 100.0]), ack=rng.random() < 0.2)
    if kind == 1:
        return P.Register(req_id=rid, model=rng.choice(["m", "x", "y"]), kernels=MODEL)
    if kind == 2:
        return P.Cancel(req_id=rid, target=rng.randrange(1, 1 << 20))
    if kind == 3:
        return P.Status(req_id=rid, target=rng.choice([None, rng.randrange(1, 100)]))
    if kind == 4:
        return P.Ping(seq=rng.randrange(100))
    if kind == 5:
        return P.Hello(version=rng.choice([1, 1, 2]), tenant=rng.choice(["fz", "fz2"]))
    return P.Submit(req_id=rid, model="m", inputs=[P.TensorMeta(dtype="float32", shape=[2])])


def _mutate(rng: random.Random, body: bytes) -> bytes:
    b = bytearray(body)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(3)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        else:
            b += rng.randbytes(rng.randrange(1, 16))
    return bytes(b)


def fuzz_message(rng: random.Random) -> tuple[list[bytes], int]:
    """(frames, answers expected)."""
    r = rng.random()
    if r < 0.3:  # random frames
        tags = list(P.REQUESTS) + [b"", b"\xff" * 4, b"NOPE"]
        frames = [rng.choice(tags) if rng.random() < 0.7 else rng.randbytes(rng.randrange(8))]
        frames += [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(0, 4))]
        msg = None
    else:
        msg = _valid(rng)
        frames = P.encode(msg)
        if r < 0.65:
            frames[1] = _mutate(rng, frames[1])
        elif isinstance(msg, P.Submit) and msg.inputs and rng.random() < 0.5:
            frames.append(rng.randbytes(rng.choice([8, 7, 9])))
    try:  # what the daemon will read: a valid BYE is the one request without an answer
        if len(frames) >= 2 and isinstance(P.decode(frames[0], frames[1], P.REQUESTS), P.Bye):
            return frames, 0
    except P.ProtocolError:
        pass
    return frames, 1


def run_fuzz(messages: int = 100_000, seed: int = 0, batch: int = 256) -> dict:
    proc, ep = start_daemon("--backend", "fluid", "--speed", "0")
    try:
        return _fuzz(proc, ep, messages, random.Random(seed), batch)
    finally:  # interrupted too: the daemon goes with the bench
        stop_daemon(proc)


def _fuzz(proc, ep: str, messages: int, rng: random.Random, batch: int) -> dict:
    ctx = zmq.Context.instance()
    peers = []
    for i in range(3):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ep)
        if i != 1:
            s.send_multipart(P.encode(P.Hello(version=P.PROTOCOL_VERSION, tenant=f"fz{i}")))
            s.recv_multipart()
            s.send_multipart(P.encode(P.Register(req_id=1, model="m", kernels=MODEL)))
            s.recv_multipart()
        peers.append(s)
    poller = zmq.Poller()
    for s in peers:
        poller.register(s, zmq.POLLIN)
    rss_start = rss_mb(proc.pid)
    expected = received = sent = 0
    t0 = time.perf_counter()

    def drain(timeout_ms: int) -> None:
        nonlocal received
        while True:
            ready = poller.poll(timeout_ms)
            if not ready:
                return
            for s, _ in ready:
                while True:
                    try:
                        f = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if f[0] != b"ACCEPTED":
                        received += 1
            timeout_ms = min(timeout_ms, 50)

    while sent < messages:
        for _ in range(min(batch, messages - sent)):
            frames, want = fuzz_message(rng)
            rng.choice(peers).send_multipart(frames)
            expected += want
            sent += 1
        drain(5)
    deadline = time.perf_counter() + 10
    while received < expected and time.perf_counter() < deadline:
        drain(200)
    elapsed = time.perf_counter() - t0
    alive = proc.poll() is None
    rss_end = rss_mb(proc.pid) if alive else 0.0
    correct = False
    if alive:  # a well-behaved client: every job of a burst done, and counted as its tenant's
        from client_lib import Client
        with Client(ep, tenant="after-fuzz") as c:
            c.register_model("m", MODEL)
            futs = [c.submit("m") for _ in range(20)]
            done = [f.result(10) for f in futs]
            mine = {t.tenant: t for t in c.status().tenants}.get("after-fuzz")
            correct = (len(done) == 20 and all(r.exec_ms >= 0 for r in done)
                       and mine is not None and mine.completed == 20)
    for s in peers:
        s.close(0)
    code = stop_daemon(proc)
    return {"messages": sent, "crashes": int(not alive or code not in (0, None)),
            **answer_counts(expected, received),
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "seconds": elapsed,
            "messages_per_s": sent / elapsed, "served_after": correct}


def answer_counts(expected: int, received: int) -> dict:
    """Lost and extra answers, each >= 0 (an extra answer never hides a lost one's count as a
    negative number)."""
    return {"lost_answers": max(0, expected - received),
            "extra_answers": max(0, received - expected)}


def print_measures(res: dict, title: str) -> None:
    """A two-column table of a benchmark's flat result (fuzz, soak)."""
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in res.items():
        t.add_row(k, f"{v:.1f}" if isinstance(v, float) else str(v))
    Console().print(t)


# -- coverage-guided fuzzing of the decoders with atheris (where it installs) -------------------
_TAGS = list(P.REQUESTS) + [b"", b"NOPE"]


def atheris_one_input(data: bytes) -> bool | None:
    """One atheris input. The first byte picks the decoder (bit 7: the geo service's, else the
    daemon's), and whether the body is the input's own bytes or (bit 6) a valid request made
    from the next 8 bytes and XORed with the rest: so the fuzzer reaches the field checks, not
    only the msgpack framing. A decoder may only answer with its protocol error. Returns
    whether the input decoded (None for an empty input)."""
    from geo import protocol as G

    if not data:
        return None
    pick, body = data[0], data[1:]
    if pick & 0x40:
        valid = P.encode(_valid(random.Random(body[:8])))
        rest = body[8:]
        tag = valid[0]
        body = bytes(x ^ y for x, y in zip(valid[1], rest)) + valid[1][len(rest):]
    else:
        tag = _TAGS[pick % len(_TAGS)]
    if pick & 0x80:  # the geo service's decoder
        tags = list(G.REQUESTS) + [b"NOPE"]
        try:
            G.decode([tags[pick % len(tags)], body], G.REQUESTS)
        except G.GeoProtocolError as e:
            assert e.code in ("BAD_FRAME", "BAD_MESSAGE") and e.message
            return False
        return True
    try:
        msg = P.decode(tag, body, P.REQUESTS)
    except P.ProtocolError as e:
        assert e.code in (P.Code.BAD_FRAME, P.Code.BAD_MESSAGE) and e.message
        return False
    P.encode(msg)  # whatever decodes must encode again
    return True


# the modules whose Python code a decoded message runs through (msgspec's decoding is C:
# libFuzzer sees it only through what it makes this code do)
_DECODER_MODULES = ("scheduler_daemon.wire.protocol", "scheduler_daemon.wire.tensors",
                    "scheduler_daemon.wire.eager", "scheduler_daemon.wire.cuda",
                    "scheduler_daemon.wire.graph", "geo.protocol", "geo.spec",
                    __name__)


def _instrument(atheris) -> int:
    """Coverage counters in the decoders' functions and methods only (instrument_all would
    take minutes over torch). Returns how many functions were instrumented."""
    import importlib
    import inspect
    n = 0
    for name in _DECODER_MODULES:
        mod = importlib.import_module(name)
        for obj in list(vars(mod).values()):
            funcs = [obj] if inspect.isfunction(obj) else \
                [f for f in vars(obj).values() if inspect.isfunction(f)] if inspect.isclass(obj) else []
            for f in funcs:
                if f.__module__ == name:
                    atheris.instrument_func(f)
                    n += 1
    return n


def run_atheris(runs: int, seed: int = 1) -> None:
    """``python -m gpusched.bench.fuzz atheris RUNS``: coverage-guided (atheris/libFuzzer)
    fuzzing of both decoders. Exits 0 when no input made a decoder raise anything but its
    protocol error; otherwise atheris prints the exception and the input and exits non-zero."""
    import sys

    import atheris

    _instrument(atheris)
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-max_len=512"],
                  atheris_one_input)
    atheris.Fuzz()


if __name__ == "__main__":  # python -m gpusched.bench.fuzz atheris RUNS (as bench fuzz --atheris)
    import sys
    if sys.argv[1:2] != ["atheris"] or len(sys.argv) > 3:
        sys.exit("usage: python -m gpusched.bench.fuzz atheris [RUNS]   "
                 "(or gpusched bench fuzz --atheris RUNS)")
    run_atheris(int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
