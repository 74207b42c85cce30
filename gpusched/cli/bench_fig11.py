"""``gpusched bench fig11`` (and its other name ``bench paella``) and ``bench fig13``."""
from __future__ import annotations

import json

from gpusched.cli import choices
from gpusched.cli.common import UsageError, check_output_dir

FIG11_POLICIES = ("cuda-ss", "cuda-ms", "mps", "triton", "paella", "srpt", "slo-srpt")


def add_parsers(bsub) -> None:
    for name in ("fig11", "paella"):
        p = bsub.add_parser(
            name, help="Paella's Fig. 11 on the simulated GPU: p99 vs achieved jobs/s for "
            "every system" + (" (the same as fig11)" if name == "paella" else ""),
            description="Paella's Fig. 11: its 8-model mix, log-normal arrivals, 141 jobs in "
            "flight at most, every system with its own host costs; offered rates are one "
            "absolute grid (jobs/s) for all policies, the same arrival draw at every rate; "
            "prints each policy's knee (most jobs/s with p99 <= 75 ms) and the p99 ratios of "
            "the baselines over our best policy, and draws the figure.")
        p.add_argument("--gpu", default="T4", help="GPU presets, comma-separated "
                       f"({', '.join(choices.GPU_PRESETS)})")
        p.add_argument("--sigma", default="1.5,2", help="log-normal sigmas, comma-separated")
        p.add_argument("--seeds", type=int, default=3, help="arrival draws per point")
        p.add_argument("--jobs", type=int, default=3000, help="jobs per point (Paella: 3000)")
        p.add_argument("--rates", type=int, default=15,
                       help="offered rates per curve, 10%%-150%% of the best burst throughput")
        p.add_argument("--policies", default=",".join(FIG11_POLICIES),
                       help="comma-separated, from: " + ", ".join(FIG11_POLICIES))
        p.add_argument("--engine", default="fused", choices=("fused", "eager"),
                       help="fused: compiled kernels (TVM, as Paella's models); eager: PyTorch's")
        _add_costs(p)
        p.add_argument("--quick", action="store_true",
                       help="one sigma (2), one seed, 600 jobs, 8 rates: a look, not the result")
        p.add_argument("--workers", type=int, default=None,
                       help="processes (default: the CPU count, at most 2)")
        p.add_argument("--out", default="out/fig11", help="folder for fig11.json and the PNGs")
        p.add_argument("--json", action="store_true",
                       help='print {"cases": [{gpu, sigma, seeds, knee_rps, slo99_rps, '
                       'p99_ratio_at_80pct, ...}]}')
    f = bsub.add_parser("fig13", help="Paella's Fig. 13: its fairness threshold, swept",
                        description="Paella's deficit threshold from 0.01 to 1e5 at one load: "
                        "per-model p99 and Jain's fairness index.")
    f.add_argument("--gpu", default="T4", choices=choices.GPU_PRESETS, help="GPU preset")
    f.add_argument("--sigma", type=float, default=2.0, help="log-normal sigma")
    f.add_argument("--jobs", type=int, default=3000, help="jobs")
    f.add_argument("--load", type=float, default=0.8,
                   help="offered rate as a fraction of paella's burst throughput")
    _add_costs(f)
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_costs(p) -> None:
    p.add_argument("--launch-us", type=float, help="kernel launch latency "
                   "(default: the preset's launch floor, 4.5)")
    p.add_argument("--notice-us", type=float, help="our dispatcher's cost per kernel notice "
                   "(default: this daemon's measured kernel_overhead_us)")
    p.add_argument("--rpc-us", type=float, help="a request's round trip, ours and Triton's "
                   "(default: the measured client_rtt_us)")
    p.add_argument("--poll-us", type=float, help="the CUDA baselines' poll period (default 20)")
    p.add_argument("--quantum-us", type=float, help="our dispatcher's run of a job's kernels per "
                   "dispatch (default: ten times the measured notice cost, 120; 0: kernel by "
                   "kernel, as Paella's artifact)")


def _costs(args, gpu):
    from dataclasses import replace

    from gpusched.experiments.host import default_costs
    from scheduler_daemon.core.gpu_specs import gpu_spec
    c = default_costs(gpu_spec(gpu))
    over = {k: getattr(args, k) for k in ("launch_us", "notice_us", "rpc_us", "poll_us",
                                          "quantum_us")
            if getattr(args, k) is not None}
    if any(v < 0 for v in over.values()):
        raise UsageError("host costs (--launch-us, --notice-us, --rpc-us, --poll-us) and "
                         "--quantum-us must be >= 0")
    return replace(c, **over) if over else None


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        vals = ()
    if not vals:
        raise UsageError(f"{what} {text!r}: give numbers, comma-separated")
    return vals


def run_fig11_cmd(args) -> int:
    import os

    from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from gpusched.bench.fig11 import run_fig11
    from gpusched.bench.fig11_report import plot_fig11, print_fig11
    gpus = tuple(g.upper() for g in args.gpu.split(",") if g)
    bad = [g for g in gpus if g not in choices.GPU_PRESETS]
    if bad or not gpus:
        raise UsageError(f"--gpu {args.gpu!r}: choose from {', '.join(choices.GPU_PRESETS)}")
    policies = tuple(p for p in args.policies.split(",") if p)
    unknown = [p for p in policies if p not in FIG11_POLICIES]
    if unknown or not policies:
        raise UsageError(f"--policies: unknown {unknown}; choose from {', '.join(FIG11_POLICIES)}")
    sigmas, seeds, jobs, rates = _floats(args.sigma, "--sigma"), args.seeds, args.jobs, args.rates
    if args.quick:
        sigmas, seeds, jobs, rates = (2.0,), 1, 600, 8
    costs = _costs(args, gpus[0])
    check_output_dir(args.out, "--out")   # before the run, not after minutes of it
    os.makedirs(args.out, exist_ok=True)
    from gpusched.cli.interrupt import note
    note("simulating Fig. 11's points", f"nothing was written to {args.out}: fig11.json and "
         "the plots are written when every point has run")
    with Progress("[progress.description]{task.description}", BarColumn(),
                  "{task.completed}/{task.total} points", TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=True, disable=args.json) as bar:
        task = bar.add_task("Fig. 11: simulating", total=None)
        res = run_fig11(gpus, sigmas, seeds, jobs, rates, policies, costs, args.engine,
                        args.workers, progress=lambda: bar.advance(task),
                        on_total=lambda n: bar.update(task, total=n))
    path = os.path.join(args.out, "fig11.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    paths = [path] + plot_fig11(res, args.out)
    if args.json:
        print(json.dumps({"cases": [{k: c[k] for k in c if k != "curves"}
                                    for c in res["cases"]]}, indent=2))
    else:
        print_fig11(res)
        print("wrote " + ", ".join(paths))
    return 0


def run_fig13_cmd(args) -> int:
    from rich.progress import Progress

    from gpusched.bench.fig11 import THRESHOLDS, run_fig13
    from gpusched.bench.fig11_report import print_fig13
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task("Fig. 13: simulating", total=len(THRESHOLDS))
        res = run_fig13(args.gpu, args.sigma, args.jobs, load=args.load,
                        costs=_costs(args, args.gpu), progress=lambda: bar.advance(task))
    print(json.dumps(res, indent=2)) if args.json else print_fig13(res)
    return 0
