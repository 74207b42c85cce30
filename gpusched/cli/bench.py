"""``gpusched bench ...``: the benchmarks; each prints a table, or JSON with --json."""
from __future__ import annotations

import json

from geo.cli import add_geo_bench_parser
from gpusched.cli import bench_compat, choices
from gpusched.cli.bench_fig11 import add_parsers as add_fig11_parsers
from gpusched.cli.bench_fig11 import run_fig11_cmd, run_fig13_cmd
from gpusched.cli.common import UsageError


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks (print a table, or JSON with --json)")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH")
    bo = bsub.add_parser("overhead", help="ZeroMQ vs daemon round trip, jobs/s, decision time")
    bo.add_argument("--rounds", type=int, default=2000, help="round trips per RTT figure")
    bo.add_argument("--seconds", type=float, default=3.0, help="duration of the jobs/s run")
    bo.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_fig11_parsers(bsub)
    bc = bsub.add_parser("calibrate", help="simulated vs published / measured latencies")
    bc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_fuzz_soak(bsub)
    _add_usher(bsub)
    bs = bsub.add_parser("sim-speed", help="simulated kernel completions per second")
    bs.add_argument("--gpu", default="T4", choices=choices.GPU_PRESETS,
                    help="GPU preset simulated")
    bs.add_argument("--jobs", type=int, default=1000, help="jobs simulated")
    bs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_geo_bench_parser(bsub)
    _add_models(bsub)
    _add_cluster(bsub)
    bench_compat.add_parser(bsub)


def _add_fuzz_soak(bsub) -> None:
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
                    help="print {clients, messages, answered, completed, statuses, lost_answers, "
                    "duplicate_answers, crashes, client_errors, p50_ms, p99_ms (client latency: "
                    "send to answer), slo_ms, rss_start_mb, rss_end_mb}")


def _add_usher(bsub) -> None:
    bu = bsub.add_parser("usher", help="placement methods on Azure-rate workloads, replayed")
    bu.add_argument("--quick", action="store_true",
                    help="12 models and one held-out list only, 0.5 s replay, 100-model "
                    "heuristic scale case")
    bu.add_argument("--gpu", default="H100", choices=choices.GPU_PRESETS,
                    help="the pool's GPU type")
    bu.add_argument("--scale", type=float, default=200.0,
                    help="request rates = the trace's per-minute rates x this")
    bu.add_argument("--horizon", type=float, default=None,
                    help="seconds replayed per plan (default 1 for 12 models, 0.5 for the rest)")
    bu.add_argument("--held-out", default=None, metavar="SEEDS",
                    help="seeds of the held-out model lists, comma-separated (default "
                    "101,102,103; 'none' for none)")
    bu.add_argument("--cpsat-limit", type=float, default=10.0,
                    help="CP-SAT seconds per workload (it runs on workloads of at most 20 models)")
    bu.add_argument("--workers", type=int, default=None,
                    help="replay processes (default: one per CPU)")
    bu.add_argument("--seed", type=int, default=0, help="random seed of the azure workloads")
    bu.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_models(bsub) -> None:
    p = bsub.add_parser("models", help="model latency: local vs registered through the daemon")
    p.add_argument("--models", default="resnet18,bert-base", help="comma-separated zoo model names")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--reps", type=int, default=5, help="timed runs per path (median reported)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_cluster(bsub) -> None:
    p = bsub.add_parser("cluster", help="routing and recovery on a local 3-node Ray cluster, "
                        "and over 1,000 simulated GPUs in virtual time")
    p.add_argument("--duration", type=float, default=12.0,
                   help="seconds of arrivals per live run (one per routing policy, then the "
                   "node-removal run)")
    p.add_argument("--load", type=float, default=0.8,
                   help="offered load, of the fluid capacity of the GPUs")
    p.add_argument("--sim-gpus", type=int, default=1000, help="GPUs of the simulation")
    p.add_argument("--sim-jobs", type=int, default=200_000,
                   help="jobs of each simulated run (200 a GPU: its queue reaches steady state)")
    p.add_argument("--sim-only", action="store_true", help="skip the live cluster (no Ray)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the arrivals")
    p.add_argument("--json", action="store_true",
                   help='print {"goodput_rps": {...}, "recovery_s", "lost_not_started", '
                   '"failed_running", "sim": {...}, ...}')


def _cluster(args) -> int:
    if args.duration <= 0 or not 0 < args.load <= 2 or args.sim_gpus < 1 or args.sim_jobs < 1:
        raise UsageError("--duration must be > 0, --load in (0, 2], --sim-gpus and --sim-jobs "
                         ">= 1")
    from gpusched.bench.cluster import print_cluster_bench, run_cluster_bench
    res = run_cluster_bench(args.duration, args.load, args.sim_gpus, args.sim_jobs, args.seed,
                            live=not args.sim_only)
    print(json.dumps(res, indent=2)) if args.json else print_cluster_bench(res)
    return 0


def run(args) -> int:
    if args.bench == "cluster":
        return _cluster(args)
    if args.bench == "overhead":
        from gpusched.bench.overhead import print_overhead, run_overhead
        res = run_overhead(rounds=args.rounds, seconds=args.seconds)
        print(json.dumps(res, indent=2)) if args.json else print_overhead(res)
        return 0
    if args.bench in ("fig11", "paella"):
        return run_fig11_cmd(args)
    if args.bench == "fig13":
        return run_fig13_cmd(args)
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
        return _fuzz_soak(args)
    if args.bench == "usher":
        return _usher(args)
    if args.bench == "geo":
        from geo.cli import run_geo_bench
        return run_geo_bench(args)
    if args.bench == "models":
        from gpusched.bench.models import run_models_bench
        return run_models_bench(args)
    if args.bench == "compat":
        return bench_compat.run(args)
    raise UsageError("name a benchmark: overhead, fig11 (or paella), fig13, calibrate, "
                     "sim-speed, fuzz, soak, usher, geo, models or compat "
                     "(see gpusched bench --help)")


def _fuzz_soak(args) -> int:
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


def _usher(args) -> int:
    from rich.progress import Progress

    from gpusched.bench.usher import HELD_OUT_SEEDS, print_usher, run_usher, steps
    if args.scale <= 0 or args.cpsat_limit <= 0 or (args.horizon is not None and args.horizon <= 0):
        raise UsageError("--scale, --cpsat-limit and --horizon must be > 0")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be >= 1")
    held_out = HELD_OUT_SEEDS[:1] if args.quick else HELD_OUT_SEEDS
    if args.held_out is not None:
        try:
            held_out = () if args.held_out == "none" else tuple(
                int(x) for x in args.held_out.split(",") if x.strip())
        except ValueError:
            raise UsageError(f"--held-out {args.held_out!r}: give seeds like 101,102 (or "
                             "'none')") from None
    sizes, large = ((12,), 100) if args.quick else ((12, 100), 1000)
    horizons = {12: 0.5} if args.quick else None
    if args.horizon:
        horizons = {n: args.horizon for n in sizes}
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task("placing, then replaying", total=steps(sizes, held_out, large))
        res = run_usher(sizes, held_out, gpu=args.gpu, scale=args.scale, seed=args.seed,
                        horizons=horizons, held_out_horizon=args.horizon or 0.5,
                        cpsat_limit_s=args.cpsat_limit, large=large,
                        large_pool=400, workers=args.workers,
                        progress=lambda: bar.advance(task))
    print(json.dumps(res, indent=2)) if args.json else print_usher(res)
    return 0
