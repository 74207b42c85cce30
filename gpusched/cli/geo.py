"""``gpusched geo ...``: the geo planner's commands; their parsers and code live in geo.cli."""
from __future__ import annotations

from geo.cli import add_geo_parser


def add_parser(sub) -> None:
    add_geo_parser(sub)


def run(args) -> int:
    from geo.cli import run_geo
    return run_geo(args)
