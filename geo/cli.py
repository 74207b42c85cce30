"""``gpusched geo ...`` and ``gpusched bench geo``: parsers and entry points (issue 6).

Scaffold: the planner is being built; these commands say so and exit 2.
"""
from __future__ import annotations

import argparse


def add_geo_parser(sub) -> None:
    sub.add_parser("geo", help="geo-distributed training planner (not built yet)")


def add_geo_bench_parser(bsub) -> None:
    bsub.add_parser("geo", help="geo planner benchmark (not built yet)")


def run_geo(args: argparse.Namespace) -> int:
    raise ValueError("the geo planner is not built yet (issue 6)")


def run_geo_bench(args: argparse.Namespace) -> int:
    raise ValueError("the geo benchmark is not built yet (issue 6)")
