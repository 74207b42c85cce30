"""``gpusched bench sim-speed``: simulated kernel completions per second of wall time.

Runs Paella's mix on the simulated GPU at 70% of its saturation rate under the daemon's
default policy (``slo``) and the hardware-queue baseline (``cuda-ms``), and divides the kernels
completed by the wall time of the simulation alone: the best of ``repeat`` runs (the machine is
shared; the CPU seconds of that run are reported too). ``compiled``: whether the simulator's
compiled modules ran (``make setup`` builds them; ``GPUSCHED_PURE=1`` runs the sources).
"""
from __future__ import annotations

import time

from gpusched.experiments.mixes import mix as make_mix
from gpusched.experiments.runner import (
    Scenario,
    make_arrivals,
    saturation_rate,
    simulate,
)

POLICIES = ("slo", "cuda-ms")


def _compiled() -> bool:
    """Whether the simulator's compiled modules are the ones imported."""
    from scheduler_daemon.core import scheduler
    from scheduler_daemon.devices import simgpu

    return not (simgpu.__file__.endswith(".py") or scheduler.__file__.endswith(".py"))


def run_sim_speed(gpu: str = "T4", jobs: int = 1000, seed: int = 0, repeat: int = 3) -> dict:
    mix = tuple(make_mix("paella-mix", gpu))
    arr = make_arrivals(mix, "lognormal:2", 0.7 * saturation_rate(gpu, mix), jobs, seed)
    sc = Scenario(gpu, mix, arr)
    by_policy = {}
    for policy in POLICIES:
        runs = []
        for _ in range(max(1, repeat)):
            t, c = time.perf_counter(), time.process_time()
            _, dev = simulate(sc, policy)
            runs.append((time.perf_counter() - t, time.process_time() - c, dev.kernels_done))
        el, cpu, kernels = min(runs)
        by_policy[policy] = {"kernels": kernels, "seconds": el, "cpu_seconds": cpu,
                             "kernels_per_s": kernels / el,
                             "runs_s": [round(r[0], 4) for r in runs]}
    return {"gpu": gpu, "jobs": jobs, "kernels_per_s": by_policy["slo"]["kernels_per_s"],
            "compiled": _compiled(), "repeat": repeat,
            "by_policy": by_policy}


def print_sim_speed(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"gpusched bench sim-speed: paella-mix on simulated {res['gpu']}, "
              f"{res['jobs']} jobs, 70% load, best of {res['repeat']} "
              f"({'compiled' if res['compiled'] else 'interpreted'})")
    for c in ("policy", "kernels", "seconds", "kernels/s"):
        t.add_column(c, justify="left" if c == "policy" else "right")
    for p, r in res["by_policy"].items():
        t.add_row(p, f"{r['kernels']:,}", f"{r['seconds']:.2f}", f"{r['kernels_per_s']:,.0f}")
    Console().print(t)
