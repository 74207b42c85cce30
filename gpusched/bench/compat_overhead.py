"""``gpusched bench compat --overhead``: registered vs local time at real sizes, per thread setup.

bert-base (the zoo's) and GPT-2 (transformers' default config: 12 layers, width 768, random
weights) at batch 1 and 8, local forward vs the registered handle through a ``--backend torch``
daemon, medians of interleaved runs; once per thread setup of the two processes on this
machine's cores: torch's intra-op threads of the daemon and of the client (``OMP_NUM_THREADS``
/ ``torch.set_num_threads``) and OpenMP's wait policy (``OMP_WAIT_POLICY``: ``active`` threads
spin after a parallel region, ``passive`` ones sleep at once), to see whether the OpenMP teams
of the two processes (and the daemon's loop thread) fight over the cores; and once with every op
its own dispatch (``--quantum-us 0``), the daemon before runs.

``--wait`` (``run_wait``) measures what runs cost the other tenants: a second tenant's small
model (a 2-layer MLP) submitted while bert-base requests run back to back, its latency alone and
under that load, per scheduling quantum.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time

log = logging.getLogger("gpusched.bench.compat")

# (label, daemon threads, client threads, OMP_WAIT_POLICY of both (None: torch's default),
# daemon arguments)
SETUPS = (("default", None, None, None, ()),
          ("per-op dispatch", None, None, None, ("--quantum-us", "0")),
          ("daemon 1 thread", 1, None, None, ()),
          ("passive waits", None, None, "passive", ()),
          ("daemon 1 thread, passive", 1, None, "passive", ()))
# --wait: the daemon's scheduling quanta compared (None: its default)
WAIT_QUANTA = (0, None, 4000)


def _models(batch: int, names=("bert-base", "gpt2")):
    import torch

    from gpusched.bench.compat_env import ensure_torchvision
    from profilers.zoo_models import build
    if "bert-base" in names:
        bert, inputs = build("bert-base")
        yield "bert-base", bert, tuple(inputs(batch)), {}
    if "gpt2" not in names:
        return
    ensure_torchvision()
    import transformers as T
    T.logging.set_verbosity_error()
    torch.manual_seed(0)
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config()).eval()
    ids = torch.randint(0, 50257, (batch, 16), generator=torch.Generator().manual_seed(batch))
    yield "gpt2", gpt2, (ids,), {"use_cache": False}


def _one_setup(label, daemon_threads, client_threads, wait, daemon_args, batches, reps,
               settle_s, names=("bert-base", "gpt2")):
    import torch

    from client_lib import Client
    from gpusched.procs import start_daemon, stop_daemon
    env_before = dict(os.environ)
    threads_before = torch.get_num_threads()
    if daemon_threads:
        os.environ["OMP_NUM_THREADS"] = str(daemon_threads)
    if wait:
        os.environ["OMP_WAIT_POLICY"] = wait
    rows = []
    with tempfile.TemporaryFile("w+") as err:
        proc, ep = start_daemon("--backend", "torch", "--torch-device", "cpu",
                                "--max-tenant-bytes", str(8 << 30), *daemon_args, stderr=err)
        os.environ.clear()
        os.environ.update(env_before)
        if client_threads:
            torch.set_num_threads(client_threads)
        try:
            with Client(ep, tenant="overhead", timeout=60.0) as c:
                for b in batches:
                    for name, m, args, kw in _models(b, names):
                        h = c.register_model(f"{name}-b{b}", m, args, example_kwargs=kw)

                        def local(m=m, args=args, kw=kw):
                            with torch.no_grad():
                                m(*args, **kw)
                        fns = (local, lambda h=h, args=args, kw=kw: h(*args, **kw))
                        for fn in fns:
                            fn()
                        ts = [[], []]
                        for _ in range(reps):
                            for fn, t in zip(fns, ts):
                                time.sleep(settle_s)
                                t0 = time.perf_counter()
                                fn()
                                t.append(time.perf_counter() - t0)
                        lo, reg = (statistics.median(t) * 1e3 for t in ts)
                        rows.append({"setup": label, "daemon_args": list(daemon_args),
                                     "daemon_threads": daemon_threads,
                                     "client_threads": client_threads, "omp_wait": wait,
                                     "model": name, "batch": b, "ops": h.n_ops,
                                     "local_ms": lo, "registered_ms": reg, "ratio": reg / lo})
                        log.debug("overhead %s %s b%d: %.1f / %.1f ms", label, name, b, reg, lo)
        finally:
            stop_daemon(proc)
            torch.set_num_threads(threads_before)
    return rows


def run_overhead(batches=(1, 8), reps: int = 5, settle_s: float = 0.3, setups=SETUPS,
                 names=("bert-base", "gpt2")) -> dict:
    rows = []
    for s in setups:
        rows += _one_setup(*s, batches, reps, settle_s, names)
    return {"rows": rows, "reps": reps, "cores": os.cpu_count()}


def print_overhead(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"registered / local on {res['cores']} cores, medians of {res['reps']}")
    for col in ("setup", "model", "batch", "ops", "local ms", "registered ms", "ratio"):
        t.add_column(col, justify="left" if col in ("setup", "model") else "right")
    for r in res["rows"]:
        t.add_row(r["setup"], r["model"], str(r["batch"]), str(r["ops"]), f"{r['local_ms']:.1f}",
                  f"{r['registered_ms']:.1f}", f"{r['ratio']:.2f}x")
    Console().print(t)


def _mlp():
    import torch
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 10)).eval()
    return m, (torch.randn(1, 64),)


def _one_wait(quantum_us, probes: int, gap_s: float) -> dict:
    import threading

    import torch

    from client_lib import Client
    from gpusched.procs import start_daemon, stop_daemon
    from profilers.zoo_models import build
    args = () if quantum_us is None else ("--quantum-us", str(quantum_us))
    with tempfile.TemporaryFile("w+") as err:
        proc, ep = start_daemon("--backend", "torch", "--torch-device", "cpu", "--policy",
                                "srpt", "--max-tenant-bytes", str(8 << 30), *args, stderr=err)
        try:
            with Client(ep, tenant="bert", timeout=60.0) as ca, \
                    Client(ep, tenant="small", timeout=60.0) as cb:
                bert, inputs = build("bert-base")
                xa = tuple(inputs(1))
                ha = ca.register_model("bert-base", bert, xa)
                mlp, xb = _mlp()
                hb = cb.register_model("mlp", mlp, xb)
                with torch.no_grad():
                    want = mlp(*xb)

                def probe() -> float:
                    t0 = time.perf_counter()
                    out = hb(*xb)
                    assert torch.equal(out, want)
                    return (time.perf_counter() - t0) * 1e3
                for _ in range(3):
                    probe()
                    ha(*xa)
                alone = [probe() for _ in range(probes)]
                stop, fwd = threading.Event(), []

                def load():
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        ha(*xa)
                        fwd.append((time.perf_counter() - t0) * 1e3)
                th = threading.Thread(target=load, daemon=True)
                th.start()
                time.sleep(0.5)
                loaded = []
                for _ in range(probes):
                    time.sleep(gap_s)
                    loaded.append(probe())
                stop.set()
                th.join(60)
        finally:
            stop_daemon(proc)
    loaded.sort()
    return {"quantum_us": quantum_us, "probes": probes,
            "alone_p50_ms": statistics.median(alone),
            "loaded_p50_ms": statistics.median(loaded),
            "loaded_p99_ms": loaded[min(len(loaded) - 1, int(0.99 * len(loaded)))],
            "loaded_max_ms": loaded[-1],
            "bert_forward_ms": statistics.median(fwd) if fwd else None}


def run_wait(quanta=WAIT_QUANTA, probes: int = 60, gap_s: float = 0.037) -> dict:
    """Another tenant's small-model latency while bert-base (batch 1) runs back to back, per
    scheduling quantum (srpt; the small model's probes arrive every ``gap_s``)."""
    return {"wait": [_one_wait(q, probes, gap_s) for q in quanta], "cores": os.cpu_count()}


def print_wait(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="a small model's latency (ms) beside bert-base batch 1 running back to back")
    for col in ("quantum us", "alone p50", "loaded p50", "loaded p99", "loaded max",
                "bert-base ms"):
        t.add_column(col, justify="right")
    for r in res["wait"]:
        q = "default" if r["quantum_us"] is None else str(r["quantum_us"])
        t.add_row(q, *(f"{r[k]:.2f}" for k in ("alone_p50_ms", "loaded_p50_ms",
                                                "loaded_p99_ms", "loaded_max_ms")),
                  "-" if r["bert_forward_ms"] is None else f"{r['bert_forward_ms']:.1f}")
    Console().print(t)
