"""``gpusched demo``: start a daemon, run the mixed workload, print latencies per policy."""
from __future__ import annotations

from gpusched.cli.common import UsageError


def add_parser(sub) -> None:
    dm = sub.add_parser("demo", help="start a daemon, run the mixed workload, print latencies")
    dm.add_argument("--duration", type=float, default=5.0, help="seconds of arrivals per policy")
    dm.add_argument("--rate", type=float, default=60.0, help="total arrivals per second")
    dm.add_argument("--policies", default="fifo,slo-srpt",
                    help="comma-separated policies to compare")


def run(args) -> int:
    from gpusched.demo import run_demo
    from scheduler_daemon.core.policies import ALL_POLICIES
    policies = [p for p in args.policies.split(",") if p]
    bad = [p for p in policies if p not in ALL_POLICIES]
    if bad or not policies:
        raise UsageError(f"unknown policies {bad}: choose from {', '.join(ALL_POLICIES)}")
    from gpusched.cli.interrupt import note
    if args.duration <= 0 or args.rate <= 0:
        raise UsageError("--duration and --rate must be > 0"
                         f" (got --duration {args.duration:g}, --rate {args.rate:g})")
    return run_demo(args.duration, args.rate, policies, note=note)
