"""``gpusched bench models``: local vs registered vs intercepted model latency (issue 4).

Each zoo model at each batch: the local eager forward, the same module registered with a
``--backend torch`` daemon (one schedulable kernel per aten op), and the unmodified module
run under ``client.intercept()`` (every aten op sent to the daemon as it is called, pipelined
in batches, the output fetched at the end); medians over ``--reps`` after a warm-up (which
uploads the weights). ``intercept_us_per_op`` = (intercept - local) / ops intercepted.
"""
from __future__ import annotations

import json
import logging
import statistics
import time

log = logging.getLogger("gpusched.bench.models")

# its parser (--models, --batches, --reps, --json) is with the other benchmarks' parsers, in
# gpusched/cli/bench.py


def _parse(args) -> tuple[list[str], list[int]]:
    from profilers.zoo_models import ZOO_NAMES
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ZOO_NAMES]
    if not models or bad:
        raise ValueError(f"unknown zoo model(s) {', '.join(bad) or '(none given)'}; choose from "
                         f"{', '.join(ZOO_NAMES)}")
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--batches must be comma-separated integers, got {args.batches!r}") from None
    if not batches or any(b < 1 or b > 1024 for b in batches):
        raise ValueError("--batches must be integers in 1..1024")
    if not 1 <= args.reps <= 1000:
        raise ValueError("--reps must be in 1..1000")
    return models, batches


def _interleaved(client, module, handle, xs, reps: int, settle_s: float = 0.3):
    """Medians (s) of local, registered and intercepted runs, interleaved rep by rep so that
    the load of a shared machine falls on all three alike, with a pause before each run (the
    daemon's OpenMP threads spin for a while after its last op and would slow a local run
    that starts at once); and the ops one intercepted run sends. A warm-up of each first (the intercept warm-up uploads the weights)."""
    import torch

    def local():
        with torch.no_grad():
            module(*xs)

    def intercepted():
        with client.intercept():
            y = module(*xs)
        (y[0] if isinstance(y, (tuple, list)) else y).cpu()
    paths = (local, lambda: handle(*xs), intercepted)
    for fn in paths:
        fn()
    sess = client._eager
    before = sess.ops_sent
    times: list[list[float]] = [[], [], []]
    for _ in range(reps):
        for fn, ts in zip(paths, times):
            time.sleep(settle_s)   # the other process's spinning OpenMP threads go to sleep
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return (*[statistics.median(ts) for ts in times], (sess.ops_sent - before) // reps)


def _raw_rtt_us(rounds: int = 500) -> float:
    from gpusched.bench.overhead import _EchoPeer
    echo = _EchoPeer()
    try:
        echo.round_trips(100)
        return statistics.median(echo.round_trips(rounds)) * 1e6
    finally:
        echo.close()


def measure(models: list[str], batches: list[int], reps: int, progress=None) -> dict:

    from client_lib import Client
    from gpusched.procs import start_daemon, stop_daemon
    from profilers.zoo_models import build
    rows = []
    # first, before torch runs here: its OpenMP threads spinning after an op slowed the echo
    # thread's round trip 10x when it was measured last
    rtt_us = _raw_rtt_us()
    # each (model, batch) is registered with its own weights: bert-base twice is 0.9 GB, past
    # the default 1 GiB tenant quota that weights now count against
    proc, ep = start_daemon("--backend", "torch", "--torch-device", "cpu",
                            "--max-tenant-bytes", str(8 << 30))
    try:
        with Client(ep, tenant="bench") as c:
            for name in models:
                module, inputs = build(name)
                for b in batches:
                    xs = list(inputs(b))
                    h = c.register_model(f"{name}-b{b}", module, xs)
                    local, reg, icpt, n_ops = _interleaved(c, module, h, xs, reps)
                    rows.append({"model": name, "batch": b, "local_ms": local * 1e3,
                                 "registered_ms": reg * 1e3, "registered_ops": h.n_ops,
                                 "intercept_ms": icpt * 1e3, "intercept_ops": n_ops,
                                 "intercept_us_per_op": (icpt - local) / n_ops * 1e6})
                    log.info("bench models: %s b=%d local=%.2fms registered=%.2fms "
                             "intercept=%.2fms", name, b, local * 1e3, reg * 1e3, icpt * 1e3)
                    if progress:
                        progress()
    finally:
        stop_daemon(proc)
    return {"models": rows, "zmq_rtt_us": rtt_us, "reps": reps}


def run_models_bench(args) -> int:
    models, batches = _parse(args)
    if args.json:
        print(json.dumps(measure(models, batches, args.reps), indent=2))
        return 0
    from rich.console import Console
    from rich.progress import Progress

    from gpusched.report import compact
    with Progress(transient=True) as prog:
        task = prog.add_task("models", total=len(models) * len(batches))
        res = measure(models, batches, args.reps, lambda: prog.advance(task))
    t = compact(f"model latency, medians of {res['reps']} (raw ZeroMQ RTT "
                f"{res['zmq_rtt_us']:.1f} us)", caption="reg.: registered model; icpt: "
                "intercepted; ratio: over local; us/op: intercept overhead per op")
    for col in ("model", "batch", "ops", "local ms", "reg. ms", "ratio", "icpt ms", "ratio",
                "us/op"):
        t.add_column(col, justify="right")
    for r in res["models"]:
        t.add_row(r["model"], str(r["batch"]), str(r["registered_ops"]), f"{r['local_ms']:.2f}",
                  f"{r['registered_ms']:.2f}", f"{r['registered_ms'] / r['local_ms']:.2f}x",
                  f"{r['intercept_ms']:.2f}", f"{r['intercept_ms'] / r['local_ms']:.2f}x",
                  f"{r['intercept_us_per_op']:.1f}")
    Console().print(t)
    return 0
