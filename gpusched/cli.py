"""The ``gpusched`` command. Expected mistakes exit 2 with a one-line message, no traceback."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

EXAMPLES = """examples:
  gpusched daemon                               # serve on the default ipc socket
  gpusched daemon --endpoint tcp://127.0.0.1:5555 --policy srpt
  gpusched submit --workload mixed --clients 3 --rate 60 --duration 5
  gpusched status --json
  gpusched bench overhead --json
  gpusched demo                                 # daemon + 3 clients + a latency table
"""


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit code 2."""


def _common_endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help="daemon endpoint: ipc:///path or tcp://127.0.0.1:PORT "
                   "(default: an ipc socket in the per-user runtime dir, or $GPUSCHED_ENDPOINT)")


def build_parser() -> argparse.ArgumentParser:
    from gpusched.workloads import WORKLOADS
    from scheduler_daemon.core.gpu_specs import PRESETS
    from scheduler_daemon.core.policies import ALL_POLICIES
    from scheduler_daemon.devices import BACKENDS

    ap = argparse.ArgumentParser(
        prog="gpusched", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A user-space GPU kernel scheduler daemon, its load generator and benchmarks.",
        epilog=EXAMPLES)
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    d = sub.add_parser("daemon", help="run the scheduler daemon in the foreground",
                       description="Run the scheduler daemon. SIGTERM/SIGINT drain it: queued "
                       "jobs are answered as cancelled, started ones get --drain-grace seconds "
                       "to finish; a second signal stops at once.")
    _common_endpoint(d)
    d.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: a GPU through torch if NVML sees one, else the simulated GPU")
    d.add_argument("--policy", default="slo-srpt", choices=sorted(ALL_POLICIES),
                   help="scheduling policy (default: slo-srpt, shortest remaining first among jobs "
                   "that can still meet their SLO); the baselines "
                   "(cuda-ss, cuda-ms, mps, triton, clockwork, fifo-jbj, fifo-kbk) are for "
                   "experiments")
    d.add_argument("--gpu-spec", default="T4", choices=sorted(PRESETS),
                   help="GPU preset of the simulated device (default T4)")
    d.add_argument("--hw-queues", type=int, default=8,
                   help="simulated GPU: hardware queues, CUDA_DEVICE_MAX_CONNECTIONS (1-32)")
    d.add_argument("--shed", action="store_true",
                   help="slo policy: drop jobs that can no longer meet their SLO (default: flag "
                   "them and run them after the others)")
    d.add_argument("--max-extra", type=int, default=2,
                   help="kernels dispatched beyond free SM resources (Paella: 2)")
    d.add_argument("--speed", type=float, default=1.0,
                   help="sim and fluid devices: kernel duration multiplier (0 = zero-duration)")
    d.add_argument("--drain-grace", type=float, default=10.0,
                   help="seconds started jobs may run on after SIGTERM")
    d.add_argument("--torch-device", help="torch backend device, e.g. cpu, cuda, cuda:1")
    d.add_argument("--client-timeout", type=float, default=5.0,
                   help="seconds of silence after which a client's jobs are cancelled (a client "
                   "whose connection closes, e.g. a killed process, is dropped within ~0.75 s)")
    d.add_argument("--token", default=None, help="require this token in HELLO "
                   "(default: $GPUSCHED_TOKEN if set)")
    d.add_argument("--tenant-tokens", metavar="FILE", help="YAML 'tenant: token' lines: a "
                   "client may say HELLO as a tenant only with that tenant's token, and STATUS "
                   "shows it only its own tenant (instead of one shared --token)")
    d.add_argument("--max-queued", type=int, default=20_000,
                   help="unfinished jobs per tenant before submits are refused")
    d.add_argument("--max-frame-bytes", type=int, default=64 << 20,
                   help="largest frame accepted (libzmq drops a client that sends a larger one; "
                   "the client library refuses to send it with a clear error)")
    d.add_argument("--max-tenant-bytes", type=int, default=1 << 30,
                   help="input bytes held for one tenant's unfinished jobs")
    d.add_argument("--curve-secret", metavar="FILE", help="encrypt connections with this CURVE "
                   "secret key (make one with 'gpusched keys'); clients need daemon.key")
    d.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics")

    s = sub.add_parser("submit", help="open-loop load generator over a built-in workload")
    _common_endpoint(s)
    s.add_argument("--workload", default="mixed", choices=sorted(WORKLOADS))
    s.add_argument("--clients", type=int, default=3, help="client processes (tenants round-robin)")
    s.add_argument("--rate", type=float, default=60.0, help="total arrivals per second")
    s.add_argument("--duration", type=float, default=5.0, help="seconds of arrivals")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    pf = sub.add_parser("profile", help="profile zoo models, or fit the interference model",
                        description="Profile zoo models (latency, FLOPs, bytes, compute and "
                        "memory demand, footprint) into the profile store, or with --pairs run "
                        "every pair of models together on the simulated GPU, fit the "
                        "interference model and report its error on held-out pairs.")
    pf.add_argument("models", nargs="*", help="zoo models (default with --pairs: a mixed set)")
    pf.add_argument("--device", default="sim:T4",
                    help="roofline:GPU, sim:GPU or torch:cpu|cuda (GPU: T4, V100, A100, H100)")
    pf.add_argument("--batch", default="1", help="batch sizes, comma-separated")
    pf.add_argument("--pairs", action="store_true", help="measure pairs and fit interference "
                    "(sim:GPU in virtual time, or torch:cpu: the models for real, two at once)")
    pf.add_argument("--jobs", type=int, default=6, help="--pairs: jobs per model per pair")
    pf.add_argument("--db", help="profile store (default $GPUSCHED_PROFILE_DB or "
                    "~/.cache/gpusched/profiles.sqlite)")
    pf.add_argument("--json", action="store_true")

    ky = sub.add_parser("keys", help="make the daemon's CURVE key pair",
                        description="Write daemon.key_secret (owner-only; for 'gpusched daemon "
                        "--curve-secret') and daemon.key (public; for clients: server_key= or "
                        "GPUSCHED_SERVER_KEY).")
    ky.add_argument("--out", default=".", help="folder for the two files")
    ky.add_argument("--force", action="store_true", help="replace existing keys")

    st = sub.add_parser("status", help="the daemon's queues and per-tenant counters")
    _common_endpoint(st)
    st.add_argument("--json", action="store_true")

    tp = sub.add_parser("top", help="live view of the daemon's tenants, queues and latencies")
    _common_endpoint(tp)
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")

    b = sub.add_parser("bench", help="benchmarks (print a table, or JSON with --json)")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH")
    bo = bsub.add_parser("overhead", help="ZeroMQ vs daemon round trip, jobs/s, decision time")
    bo.add_argument("--rounds", type=int, default=2000, help="round trips per RTT figure")
    bo.add_argument("--seconds", type=float, default=3.0, help="duration of the jobs/s run")
    bo.add_argument("--json", action="store_true")

    from gpusched.bench.paella import POLICY_ORDER
    bp = bsub.add_parser("paella", help="every policy on the same arrivals on the simulated GPU, "
                         "swept over load (CSV, plots, table)",
                         description="Reproduce Paella's experiment on the simulated GPU: each "
                         "load is a fraction of the GPU's measured saturation rate; every policy "
                         "runs the same arrival sequence in virtual time.")
    bp.add_argument("--gpu", default="T4", choices=sorted(PRESETS))
    bp.add_argument("--workload", default="paella-mix", choices=["paella-mix", "orion-v100"])
    bp.add_argument("--arrivals", default="lognormal:2",
                    help="lognormal:SIGMA, poisson, or trace:PATH (a CSV with TIMESTAMP)")
    bp.add_argument("--loads", default="0.5,0.7,0.9",
                    help="fractions of the saturation load, comma-separated")
    bp.add_argument("--jobs", type=int, default=1000, help="jobs per load point")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--policies", default=",".join(POLICY_ORDER),
                    help=f"comma-separated, from: {', '.join(POLICY_ORDER)}")
    bp.add_argument("--slo-factor", default="5",
                    help="each model's SLO is this many times its solo latency; A,B makes the "
                    "models (in mix order) alternate between A and B, so SLOs differ")
    bp.add_argument("--shed", action="store_true",
                    help="the slo policy drops jobs that can no longer make their SLO")
    bp.add_argument("--hw-queues", type=int, default=8)
    bp.add_argument("--out", default="out/paella", help="folder for points.csv and the PNGs")
    bp.add_argument("--json", action="store_true")

    bc = bsub.add_parser("calibrate", help="simulated vs published / measured latencies")
    bc.add_argument("--json", action="store_true")

    bf = bsub.add_parser("fuzz", help="random and mutated frames against a live daemon")
    bf.add_argument("--messages", type=int, default=100_000,
                    help="frames to throw at the daemon (random, mutated, well-formed but wrong)")
    bf.add_argument("--seed", type=int, default=0, help="random seed (a run is reproducible)")
    bf.add_argument("--atheris", type=int, metavar="RUNS",
                    help="instead: coverage-guided fuzzing of both decoders for RUNS inputs "
                         "with atheris (dev extra, x86_64 CPython 3.11); exits non-zero with "
                         "the input if a decoder raises anything but its protocol error")
    bf.add_argument("--json", action="store_true",
                    help="print {messages, crashes, lost_answers, rss_start_mb, rss_end_mb, ...}")

    bk = bsub.add_parser("soak", help="many client processes against one daemon")
    bk.add_argument("--duration", type=float, default=60.0,
                    help="seconds of submitting at most (each client stops after --jobs)")
    bk.add_argument("--clients", type=int, default=64, help="client processes")
    bk.add_argument("--jobs", type=int, default=1000, help="jobs per client")
    bk.add_argument("--json", action="store_true",
                    help="print {messages, crashes, lost_answers, rss_start_mb, rss_end_mb, ...}")

    bu = bsub.add_parser("usher", help="placement methods on Azure-rate workloads, replayed")
    bu.add_argument("--quick", action="store_true",
                    help="12 models only, 0.5 s replay, 100-model heuristic scale case")
    bu.add_argument("--gpu", default="H100", choices=sorted(PRESETS), help="the pool's GPU type")
    bu.add_argument("--scale", type=float, default=200.0,
                    help="request rates = the trace's per-minute rates x this")
    bu.add_argument("--horizon", type=float, default=None,
                    help="seconds replayed per plan (default 1 for 12 models, 0.5 for 100)")
    bu.add_argument("--cpsat-limit", type=float, default=60.0, help="CP-SAT seconds per workload")
    bu.add_argument("--seed", type=int, default=0)
    bu.add_argument("--json", action="store_true")

    bs = bsub.add_parser("sim-speed", help="simulated kernel completions per second")
    bs.add_argument("--gpu", default="T4", choices=sorted(PRESETS))
    bs.add_argument("--jobs", type=int, default=1000)
    bs.add_argument("--json", action="store_true")

    # Sub-commands that live with their package: each module adds its parser and runs it.
    from geo.cli import add_geo_bench_parser, add_geo_parser
    from gpusched.bench.models import add_models_bench_parser
    from gpusched.place_cmd import add_place_parser
    add_place_parser(sub)
    add_geo_parser(sub)
    add_geo_bench_parser(bsub)
    add_models_bench_parser(bsub)

    dm = sub.add_parser("demo", help="start a daemon, run the mixed workload, print latencies")
    dm.add_argument("--duration", type=float, default=5.0)
    dm.add_argument("--rate", type=float, default=60.0)
    dm.add_argument("--policies", default="fifo,slo-srpt",
                    help="comma-separated policies to compare (default fifo,slo-srpt)")
    return ap



def _tenant_tokens(path):
    if not path:
        return {}
    from scheduler_daemon.server.config import load_tenant_tokens
    try:
        return load_tenant_tokens(path)
    except ValueError as e:
        raise UsageError(str(e)) from None

def _daemon(args) -> int:
    import os

    from scheduler_daemon.daemon import Daemon
    from scheduler_daemon.server.config import DaemonConfig
    from scheduler_daemon.transport.keys import read_key
    from scheduler_daemon.transport.sockets import check_endpoint, default_endpoint

    cfg = DaemonConfig(endpoint=check_endpoint(args.endpoint or default_endpoint()),
                       backend=args.backend, policy=args.policy, gpu_spec=args.gpu_spec,
                       shed=args.shed, max_extra=args.max_extra, speed=args.speed,
                       torch_device=args.torch_device, client_timeout_s=args.client_timeout,
                       hw_queues=args.hw_queues, metrics_port=args.metrics_port,
                       drain_grace_s=args.drain_grace,
                       curve_secret=read_key(args.curve_secret) if args.curve_secret else None,
                       token=args.token if args.token is not None else os.environ.get("GPUSCHED_TOKEN", ""),
                       tenant_tokens=_tenant_tokens(args.tenant_tokens))
    if args.speed < 0 or args.max_extra < 0 or args.client_timeout <= 0:
        raise UsageError("--speed and --max-extra must be >= 0, --client-timeout > 0")
    if not 1 <= args.hw_queues <= 32:
        raise UsageError("--hw-queues must be 1..32 (CUDA_DEVICE_MAX_CONNECTIONS)")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be 0..65535")
    if args.drain_grace < 0:
        raise UsageError("--drain-grace must be >= 0")
    if args.max_queued < 1 or args.max_tenant_bytes < 1:
        raise UsageError("--max-queued and --max-tenant-bytes must be >= 1")
    cfg.limits.max_queued = args.max_queued
    cfg.limits.max_tenant_bytes = args.max_tenant_bytes
    if not 1024 <= args.max_frame_bytes <= 1 << 31:
        raise UsageError("--max-frame-bytes must be 1024..2147483648")
    cfg.limits.max_frame_bytes = args.max_frame_bytes
    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    try:
        daemon.bind()
        daemon.serve()
    finally:
        daemon.close()
    return 0


def _submit(args) -> int:
    from gpusched.loadgen import run_load
    from gpusched.report import load_table, print_table
    from scheduler_daemon.transport.sockets import default_endpoint

    res = run_load(args.endpoint or default_endpoint(), args.workload, args.clients, args.rate,
                   args.duration, args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(load_table(res))
        for e in res["client_errors"]:
            print(f"client error: {e}", file=sys.stderr)
    return 0 if not res["client_errors"] else 1


def _status(args) -> int:
    import msgspec

    from client_lib import Client
    from gpusched.report import print_table, status_table
    from scheduler_daemon.transport.sockets import default_endpoint

    with Client(args.endpoint or default_endpoint(), tenant="gpusched-status", timeout=3) as c:
        st = c.status()
    if args.json:
        print(json.dumps(msgspec.to_builtins(st), indent=2))
    else:
        print_table(status_table(st))
    return 0


PAIR_MODELS = ("mobilenetv2", "resnet18", "resnet50", "squeezenet1.1", "densenet121", "bert-base")


def _profile(args) -> int:
    from profilers.profile import parse_device, profile
    from profilers.store import ProfileStore

    try:
        batches = [int(b) for b in args.batch.split(",") if b]
    except ValueError:
        raise UsageError(f"--batch {args.batch!r}: give sizes like 1,8") from None
    source, target = parse_device(args.device)
    store = ProfileStore(args.db)
    if args.pairs:
        from rich.progress import Progress

        from profilers.interference import run_pairs
        from profilers.interference_cpu import run_pairs_cpu
        if source == "roofline" or (source == "torch" and target != "cpu"):
            raise UsageError("--pairs runs on the simulated GPU (--device sim:GPU) or for real "
                             "in torch on this machine's CPU (--device torch:cpu)")
        models = args.models or list(PAIR_MODELS)
        n = len(models) * len(batches)
        with Progress(transient=True, disable=args.json) as bar:
            task = bar.add_task("co-locating pairs", total=n * (n + 1) // 2)
            if source == "torch":
                res = run_pairs_cpu(models, batches, progress=lambda: bar.advance(task))
            else:
                res = run_pairs(models, batches, target, jobs=args.jobs,
                                progress=lambda: bar.advance(task))
        store.put_interference(args.device, res)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print(f"interference model on {args.device}, {res['pairs']} pairs: held-out MAPE "
                  f"{100 * res['held_out']['mape']:.1f}%, p90 relative error "
                  f"{100 * res['held_out']['p90_rel_error']:.1f}% (assuming no interference: "
                  f"{100 * res['held_out_if_no_interference']['mape']:.1f}%); saved to {store.path}")
        return 0
    if not args.models:
        raise UsageError("name at least one zoo model (or use --pairs)")
    out = []
    for m in args.models:
        for b in batches:
            p = profile(m, b, args.device)
            store.put(p)
            out.append(p)
    if args.json:
        import msgspec
        print(json.dumps(msgspec.to_builtins(out), indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        t = Table(title=f"profiles on {args.device} (saved to {store.path})")
        for c in ("model", "batch", "latency ms", "GFLOP", "MB moved", "compute", "memory",
                  "occupancy", "footprint MB"):
            t.add_column(c, justify="left" if c == "model" else "right")
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        for p in out:
            t.add_row(p.model, str(p.batch), f"{p.latency_ms:.3f}", f"{p.flops / 1e9:.2f}",
                      f"{p.bytes / 2**20:.1f}", f(p.compute_demand), f(p.memory_demand),
                      f(p.occupancy), f"{p.footprint_mb:.0f}")
        Console().print(t)
    return 0


def _keys(args) -> int:
    from scheduler_daemon.transport.keys import make_keys
    secret, public = make_keys(args.out, args.force)
    print(f"wrote {secret} (keep it secret: gpusched daemon --curve-secret {secret})")
    print(f"wrote {public} (give it to clients: GPUSCHED_SERVER_KEY={public})")
    return 0


def _top(args) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from client_lib import Client
    from gpusched.report import status_table
    from scheduler_daemon.transport.sockets import default_endpoint

    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    with Client(args.endpoint or default_endpoint(), tenant="gpusched-top", timeout=3) as c:
        if args.once:
            Console().print(status_table(c.status()))
            return 0
        with Live(status_table(c.status()), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(status_table(c.status()))


def _bench(args) -> int:
    if args.bench == "overhead":
        from gpusched.bench.overhead import print_overhead, run_overhead
        res = run_overhead(rounds=args.rounds, seconds=args.seconds)
        print(json.dumps(res, indent=2)) if args.json else print_overhead(res)
        return 0
    if args.bench == "paella":
        return _bench_paella(args)
    if args.bench == "calibrate":
        from gpusched.bench.calibrate import print_calibrate, run_calibrate
        res = run_calibrate()
        print(json.dumps(res, indent=2)) if args.json else print_calibrate(res)
        return 0
    if args.bench == "sim-speed":
        from gpusched.bench.sim_speed import print_sim_speed, run_sim_speed
        res = run_sim_speed(args.gpu, args.jobs)
        print(json.dumps(res, indent=2)) if args.json else print_sim_speed(res)
        return 0
    if args.bench in ("fuzz", "soak"):
        from gpusched.bench.fuzz import print_measures, run_fuzz
        from gpusched.bench.soak import run_soak
        if args.bench == "fuzz" and args.atheris is not None:
            from gpusched.bench.fuzz import run_atheris
            if args.atheris < 1:
                raise UsageError("--atheris must be >= 1")
            try:
                import atheris  # noqa: F401
            except ImportError:
                raise UsageError("atheris is not installed: it comes with the dev extra "
                                 "(pip install -e '.[dev]') on x86_64 CPython 3.11") from None
            run_atheris(args.atheris, args.seed or 1)  # libFuzzer ends the process itself
            return 0
        if args.bench == "fuzz":
            if args.messages < 1:
                raise UsageError("--messages must be >= 1")
            res = run_fuzz(args.messages, args.seed)
        else:
            if args.clients < 1 or args.jobs < 1 or args.duration <= 0:
                raise UsageError("--clients and --jobs must be >= 1, --duration > 0")
            res = run_soak(args.duration, args.clients, args.jobs)
        print(json.dumps(res, indent=2)) if args.json else print_measures(
            res, f"gpusched bench {args.bench}")
        return 0
    if args.bench == "usher":
        return _bench_usher(args)
    if args.bench == "geo":
        from geo.cli import run_geo_bench
        return run_geo_bench(args)
    if args.bench == "models":
        from gpusched.bench.models import run_models_bench
        return run_models_bench(args)
    raise UsageError("name a benchmark: overhead, paella, calibrate, sim-speed, fuzz, soak, "
                     "usher, geo or models "
                     "(see gpusched bench --help)")


def _bench_usher(args) -> int:
    from rich.progress import Progress

    from gpusched.bench.usher import print_usher, run_usher, steps
    if args.scale <= 0 or args.cpsat_limit <= 0 or (args.horizon is not None and args.horizon <= 0):
        raise UsageError("--scale, --cpsat-limit and --horizon must be > 0")
    sizes, large = ((12,), 100) if args.quick else ((12, 100), 1000)
    horizons = {12: 0.5} if args.quick else None
    if args.horizon:
        horizons = {n: args.horizon for n in sizes}
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task("placing and replaying", total=steps(sizes, large))
        res = run_usher(sizes, gpu=args.gpu, scale=args.scale, seed=args.seed,
                        horizons=horizons, cpsat_limit_s=args.cpsat_limit, large=large,
                        large_pool=400 if args.quick else 200,
                        progress=lambda: bar.advance(task))
    print(json.dumps(res, indent=2)) if args.json else print_usher(res)
    return 0


def _bench_paella(args) -> int:
    import os

    from rich.progress import Progress

    from gpusched.bench.paella import print_paella, run_paella, write_outputs

    try:
        loads = tuple(float(x) for x in args.loads.split(",") if x)
    except ValueError:
        raise UsageError(f"--loads {args.loads!r}: give fractions like 0.5,0.7,0.9") from None
    policies = tuple(p for p in args.policies.split(",") if p)
    if not 1 <= args.hw_queues <= 32:
        raise UsageError("--hw-queues must be 1..32")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: {e}") from None
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task("simulating", total=len(loads) * len(policies))
        res = run_paella(args.gpu, args.workload, args.arrivals, loads, args.jobs, args.seed,
                         policies, args.slo_factor, args.hw_queues,
                         progress=lambda: bar.advance(task), shed=args.shed)
    paths = write_outputs(res, args.out)  # --out was checked before the simulation ran
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_paella(res)
        print("wrote " + ", ".join(paths))
    return 0


def _demo(args) -> int:
    from gpusched.demo import run_demo
    from scheduler_daemon.core.policies import ALL_POLICIES
    policies = [p for p in args.policies.split(",") if p]
    bad = [p for p in policies if p not in ALL_POLICIES]
    if bad or not policies:
        raise UsageError(f"unknown policies {bad}: choose from {', '.join(ALL_POLICIES)}")
    return run_demo(args.duration, args.rate, policies)


def _place(args) -> int:
    from gpusched.place_cmd import run_place
    return run_place(args)


def _geo(args) -> int:
    from geo.cli import run_geo
    return run_geo(args)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.cmd is None:
        ap.print_help()
        return 2
    from concurrent.futures import TimeoutError as FutureTimeout

    import zmq

    from client_lib.errors import GpuschedError
    from scheduler_daemon.daemon import DaemonError
    if args.cmd in ("bench", "demo", "submit") and threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so the daemons these commands started are stopped
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return {"daemon": _daemon, "submit": _submit, "status": _status, "top": _top,
                "keys": _keys, "profile": _profile, "bench": _bench, "demo": _demo,
                "geo": _geo, "place": _place}[args.cmd](args)
    except (UsageError, ValueError, GpuschedError, DaemonError, OSError, zmq.ZMQError,
            FutureTimeout) as e:
        print(f"gpusched {args.cmd}: error: {e or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
