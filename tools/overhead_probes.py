"""The probes behind docs/models.md "Where the time went" (registered-model overhead, issue 17).

    .venv/bin/python tools/overhead_probes.py [--json]

1. ``round trip``: a bare worker hand-off as the torch device does it per dispatch (a
   ``ThreadPoolExecutor`` worker posts to the ``Mailbox``, the loop polls its fd with ZeroMQ's
   poller and submits the next), no torch: the floor of one dispatch's cost on this machine.
2. ``replay``: bert-base (zoo, batch 1) forward locally, then its captured graph replayed in
   this process without the op guard, with it, and with the guard and a tenant ledger: what the
   daemon's checks add per op, without any thread crossing.
3. ``gc``: a full garbage collection after the op guard's first use (its lazy imports), without
   and with ``gc.freeze()`` of what was alive before: the pause the daemon's freeze removes.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def round_trip_us(n: int = 20000) -> float:
    import zmq

    from scheduler_daemon.devices.mailbox import Mailbox
    mb, pool = Mailbox(), ThreadPoolExecutor(1)
    poller = zmq.Poller()
    poller.register(mb.fileno(), zmq.POLLIN)
    done = 0
    t0 = time.perf_counter()
    pool.submit(mb.post, 0)
    while done < n:
        for _ in poller.poll(1000):
            for _ in mb.drain():
                done += 1
                pool.submit(mb.post, done)
    dt = time.perf_counter() - t0
    pool.shutdown()
    mb.close()
    return dt / n * 1e6


def replay_ms(reps: int = 15) -> dict:
    import torch

    from client_lib.capture import trace
    from profilers.zoo_models import build
    from scheduler_daemon.core.ledger import Ledger
    from scheduler_daemon.devices.graph_exec import LoadedGraph
    from scheduler_daemon.devices.op_guard import OpGuard
    from scheduler_daemon.wire.graph import decode_graph, encode_graph
    model, inputs = build("bert-base")
    args = list(inputs(1))
    c = trace(model, tuple(args), {})
    g = decode_graph(encode_graph(c.graph))
    ws = [w.detach().clone().contiguous() for w in c.weights]
    plain, ledgered = LoadedGraph(g, ws), LoadedGraph(g, ws, "cpu", Ledger(8 << 30))

    def run(graph, guard):
        env = graph.start(list(args))
        with torch.no_grad():
            for i in range(len(graph.fns)):
                graph.run_op(i, env, guard, 8 << 30)
        graph.finish(env)

    def local():
        with torch.no_grad():
            model(*args)
    fns = {"local": local, "graph": lambda: run(plain, None),
           "graph + guard": lambda: run(plain, OpGuard()),
           "graph + guard + quota": lambda: run(ledgered, OpGuard())}
    for f in fns.values():
        f()
    ts: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            time.sleep(0.1)
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in ts.items()} | {"ops": len(plain.fns)}


def gc_ms() -> dict:
    import torch

    from scheduler_daemon.devices.op_guard import OpGuard
    gc.collect()
    before = len(gc.get_objects())
    OpGuard().warm()                      # the lazy imports of the guard's first meta run
    added = len(gc.get_objects()) - before
    t0 = time.perf_counter()
    gc.collect()
    full = (time.perf_counter() - t0) * 1e3
    gc.freeze()
    t0 = time.perf_counter()
    gc.collect()
    frozen = (time.perf_counter() - t0) * 1e3
    gc.unfreeze()
    del torch
    return {"objects_added_by_first_guard_use": added, "full_gc_ms": full,
            "full_gc_after_freeze_ms": frozen}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    res = {"round_trip_us": round_trip_us(), "gc": gc_ms(), "replay_ms": replay_ms()}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"worker hand-off round trip: {res['round_trip_us']:.1f} us")
        g = res["gc"]
        print(f"first guard use adds {g['objects_added_by_first_guard_use']} objects; full GC "
              f"{g['full_gc_ms']:.1f} ms, after freeze {g['full_gc_after_freeze_ms']:.1f} ms")
        r = res["replay_ms"]
        print(f"bert-base b1 ({r.pop('ops')} ops): " +
              ", ".join(f"{k} {v:.1f} ms" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
