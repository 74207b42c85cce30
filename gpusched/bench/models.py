"""``gpusched bench models``: local vs registered vs intercepted model latency (issue 4).

Scaffold: the registered and intercept paths are being built; the command says so and exits 2.
"""
from __future__ import annotations


def add_models_bench_parser(bsub) -> None:
    bsub.add_parser("models", help="model latency: local vs through the daemon (not built yet)")


def run_models_bench(args) -> int:
    raise ValueError("the models benchmark is not built yet (issue 4)")
