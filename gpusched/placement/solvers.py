"""One entry point for every placement method: ``place(models, pool, method)``."""
from __future__ import annotations

import dataclasses
import time

from gpusched.placement import baselines, cpsat, heuristic, trial
from gpusched.placement.estimate import estimate
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.plan import Plan
from gpusched.placement.pool import GpuType
from gpusched.placement.spec import ModelSpec

METHODS = ("one-per-gpu", "mem-packing", "gslice", "gpulet", "shepherd", "heuristic",
           "heuristic-trial", "cpsat")
BASELINE_METHODS = ("mem-packing", "gslice", "gpulet", "shepherd")  # one-per-gpu: a reference


def place(models: tuple[ModelSpec, ...], pool: tuple[GpuType, ...], method: str = "heuristic",
          knobs: Knobs = DEFAULT, time_limit_s: float = 60.0, start: Plan | None = None,
          cpsat_threads: int = 2) -> Plan:
    """``cpsat_threads``: CP-SAT's search workers (1 where other processes hold every CPU)."""
    if method not in METHODS:
        raise ValueError(f"unknown placement method {method!r}: choose from {', '.join(METHODS)}")
    if method in ("one-per-gpu", "mem-packing", "gslice"):
        alone = dataclasses.replace(knobs, alphas=(1.0,))
        return baselines.BASELINES[method](models, estimate(models, pool, alone), pool, alone)
    if method == "heuristic-trial":  # the heuristic's plan (``start``, else made here), tried
        start = start or heuristic.solve(models, estimate(models, pool, knobs), pool, knobs)
        t0 = time.perf_counter()
        gpus, info = trial.consolidate(start.gpus, models, knobs)
        return Plan(method, gpus, start.solve_time_s + time.perf_counter() - t0,
                    notes={"trial": info})
    table = estimate(models, pool, knobs)
    if method in ("gpulet", "shepherd"):
        return baselines.BASELINES[method](models, table, pool, knobs)
    if method == "heuristic":
        return heuristic.solve(models, table, pool, knobs)
    return cpsat.solve(models, table, pool, knobs, time_limit_s, cpsat_threads, start)
