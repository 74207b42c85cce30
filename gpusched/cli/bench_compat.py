"""``gpusched bench compat``: unmodified models through the daemon, both client paths."""
from __future__ import annotations

from gpusched.cli.common import UsageError


def add_parser(bsub) -> None:
    p = bsub.add_parser(
        "compat", help="architectures from configs (random weights) through a --backend torch "
        "daemon: registered, intercepted, generation; errors and daemon/local time",
        description="Builds each architecture from its config (no downloads, small sizes), "
        "runs it registered (batch 1, then batch 8) and intercepted through a --backend torch "
        "daemon it starts, compares every output tensor with the local forward, generates 16 "
        "tokens with decoder-only models and times registered and intercepted runs against "
        "local ones.")
    p.add_argument("--quick", action="store_true",
                   help="every architecture, one timed run each (a look, not the result)")
    p.add_argument("--models", default=None,
                   help="comma-separated names (default: all; see --list)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed runs per path (median; default 5, 2 with --quick)")
    p.add_argument("--list", action="store_true", help="print the architectures and exit")
    p.add_argument("--overhead", action="store_true",
                   help="instead: registered vs local for bert-base and GPT-2 (real sizes) at "
                        "batch 1 and 8, per thread setup of daemon and client (OpenMP threads "
                        "and wait policy) and with every op its own dispatch (--quantum-us 0)")
    p.add_argument("--wait", action="store_true",
                   help="instead: what the scheduling quantum costs other tenants: a small "
                        "model's latency alone and beside bert-base running back to back, per "
                        "--quantum-us (0, the default, 4000)")
    p.add_argument("--json", action="store_true",
                   help='print {"models": [{"name", "family", "registered_ok", "intercept_ok", '
                        '"max_abs_err", "generate_ok", "registered_ratio", ...}], "summary"}')


def run(args) -> int:
    from gpusched.bench.compat_models import ALL
    if args.list:
        print("\n".join(ALL))
        return 0
    names = list(ALL)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        bad = [n for n in names if n not in ALL]
        if bad or not names:
            raise UsageError(f"unknown architecture(s) {', '.join(bad) or '(none given)'}; "
                             f"choose from {', '.join(ALL)}")
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    if not 1 <= reps <= 100:
        raise UsageError("--reps must be in 1..100")
    try:
        from gpusched.bench.compat_env import ensure_torchvision
        ensure_torchvision()
        import torchvision  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UsageError(f"bench compat needs torch, torchvision and transformers ({e}): "
                         "install the test extra (pip install -e '.[torch,test]')") from None
    from gpusched.bench.compat import print_compat, run_compat, to_json
    if args.wait:
        from gpusched.bench.compat_overhead import print_wait, run_wait
        res = run_wait()
        print(to_json(res)) if args.json else print_wait(res)
        return 0
    if args.overhead:
        from gpusched.bench.compat_overhead import print_overhead, run_overhead
        res = run_overhead(reps=args.reps or 5)
        print(to_json(res)) if args.json else print_overhead(res)
        return 0
    if args.json:
        print(to_json(run_compat(names, reps)))
        return 0
    from rich.progress import Progress
    with Progress(transient=True) as bar:
        task = bar.add_task("compat", total=len(names))
        res = run_compat(names, reps, progress=lambda _n: bar.advance(task))
    print_compat(res)
    return 0
