"""Regenerate the model zoo's cached kernel profiles: profilers/data/zoo/<name>_b<batch>.json.

    python tools/build_zoo.py                      # every zoo model x batches 1,2,4,8,16,32
    python tools/build_zoo.py --models resnet50 gpt2 --batches 1 8

Each model is traced on the meta device (no weights, no GPU): a few seconds in all.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profilers.zoo import BATCHES, DATA_DIR, ZOO_MODELS, save_profiles, trace_profiles  # noqa: E402

log = logging.getLogger("build_zoo")


def build_all(models: list[str], batches: list[int], out: Path, console: Console) -> int:
    """Trace and write every (model, batch); returns the total bytes written."""
    total = 0
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("tracing", total=len(models) * len(batches))
        for name in models:
            for batch in batches:
                bar.update(task, description=f"{name} b{batch}")
                path = out / f"{name}_b{batch}.json"
                save_profiles(path, name, batch, trace_profiles(name, batch))
                total += path.stat().st_size
                bar.advance(task)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO_MODELS), choices=ZOO_MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--out", type=Path, default=DATA_DIR,
                    help=f"output folder (default {DATA_DIR})")
    args = ap.parse_args(argv)
    if any(b < 1 for b in args.batches):
        ap.error("batches must be positive integers, e.g. --batches 1 8")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    size = build_all(args.models, args.batches, args.out, console)
    console.print(f"wrote {len(args.models) * len(args.batches)} files, {size / 1e6:.2f} MB, "
                  f"to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
