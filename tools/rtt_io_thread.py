"""Why the daemon and the client do socket I/O in the waiting thread: measure a ZeroMQ round
trip done directly, and the same through a background I/O thread fed by a queue and a pipe.

    python tools/rtt_io_thread.py [ROUNDS]
"""
from __future__ import annotations

import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from multiprocessing import Process

import zmq


def echo(ep: str) -> None:
    s = zmq.Context().socket(zmq.ROUTER)
    s.bind(ep)
    while True:
        f = s.recv_multipart(copy=False)
        if f[1].bytes == b"Q":
            return
        s.send_multipart(f, copy=False)


def direct(d: zmq.Socket, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        d.send_multipart([b"T", b"x" * 40])
        d.recv_multipart()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def via_io_thread(d: zmq.Socket, n: int) -> float:
    q: queue.SimpleQueue = queue.SimpleQueue()
    r, w = os.pipe()
    pending: dict = {}

    def io() -> None:
        p = zmq.Poller()
        p.register(d, zmq.POLLIN)
        p.register(r, zmq.POLLIN)
        while True:
            ev = dict(p.poll())
            if r in ev:
                os.read(r, 4096)
                while not q.empty():
                    item = q.get()
                    if item is None:
                        return
                    key, fut = item
                    pending[key] = fut
                    d.send_multipart([b"T", key])
            if d in ev:
                while True:
                    try:
                        f = d.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    pending.pop(f[1]).set_result(1)

    th = threading.Thread(target=io, daemon=True)
    th.start()
    ts = []
    for i in range(n):
        t = time.perf_counter()
        fut: Future = Future()
        q.put((str(i).encode(), fut))
        os.write(w, b"x")
        fut.result()
        ts.append(time.perf_counter() - t)
    q.put(None)
    os.write(w, b"x")
    th.join()
    return statistics.median(ts) * 1e6


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    ep = f"ipc://{tempfile.mkdtemp()}/echo.sock"
    p = Process(target=echo, args=(ep,))
    p.start()
    time.sleep(0.3)
    d = zmq.Context().socket(zmq.DEALER)
    d.connect(ep)
    print(f"direct round trip           {direct(d, n):7.1f} us")
    print(f"through an I/O thread       {via_io_thread(d, n):7.1f} us")
    print(f"direct round trip (again)   {direct(d, n):7.1f} us")
    d.send_multipart([b"Q", b"Q"])
    p.join()
