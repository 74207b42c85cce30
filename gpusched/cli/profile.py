"""``gpusched profile``: profile zoo models into the store, or fit the interference model."""
from __future__ import annotations

import json

from gpusched.cli.common import UsageError

PAIR_MODELS = ("mobilenetv2", "resnet18", "resnet50", "squeezenet1.1", "densenet121", "bert-base")


def add_parser(sub) -> None:
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
    pf.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from profilers.profile import parse_device
    from profilers.store import ProfileStore

    try:
        batches = [int(b) for b in args.batch.split(",") if b]
    except ValueError:
        raise UsageError(f"--batch {args.batch!r}: give sizes like 1,8") from None
    source, target = parse_device(args.device)
    store = ProfileStore(args.db)
    if args.pairs:
        if source == "roofline" or (source == "torch" and target != "cpu"):
            raise UsageError("--pairs runs on the simulated GPU (--device sim:GPU) or for real "
                             "in torch on this machine's CPU (--device torch:cpu)")
        return _pairs(args, store, source, target, batches)
    if not args.models:
        raise UsageError("name at least one zoo model (or use --pairs)")
    return _models(args, store, batches)


def _pairs(args, store, source: str, target: str, batches: list[int]) -> int:
    from rich.progress import Progress

    from profilers.interference import run_pairs
    from profilers.interference_cpu import run_pairs_cpu

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


def _models(args, store, batches: list[int]) -> int:
    from profilers.profile import profile

    out = []
    for m in args.models:
        for b in batches:
            p = profile(m, b, args.device)
            store.put(p)
            out.append(p)
    if args.json:
        import msgspec
        print(json.dumps(msgspec.to_builtins(out), indent=2))
        return 0
    print_profiles(out, args.device, store.path)
    return 0


def print_profiles(out, device: str, path: str, width: int | None = None) -> None:
    """One row per profile; short headers explained in the caption so it fits 80 columns."""
    from rich.console import Console

    from gpusched.report import compact, fit
    t = compact(f"profiles on {device} (saved to {path})",
                caption="ms: solo latency; GFLOP and MB: work and memory traffic per batch; "
                "comp, mem: compute and memory-bandwidth demand (share of the GPU); occ: "
                "occupancy; foot MB: memory footprint")
    for c in ("model", "batch", "ms", "GFLOP", "MB", "comp", "mem", "occ", "foot MB"):
        t.add_column(c, justify="left" if c == "model" else "right",
                     overflow="fold" if c == "model" else None, no_wrap=c != "model",
                     min_width=8 if c == "model" else None)
    f = lambda v: "-" if v is None else f"{v:.2f}"
    for p in out:
        t.add_row(p.model, str(p.batch), f"{p.latency_ms:.3f}", f"{p.flops / 1e9:.2f}",
                  f"{p.bytes / 2**20:.1f}", f(p.compute_demand), f(p.memory_demand),
                  f(p.occupancy), f"{p.footprint_mb:.0f}")
    con = Console()
    con.print(fit(t, width or con.width, drop=("occ", "foot MB")))
