"""The simulated GPU's 0.5 us event grid: its speed-up and its effect on latencies, measured on
150 jobs of Paella's mix at 1,400 jobs/s on the T4 preset.

    python tools/sim_quantum.py
"""
from __future__ import annotations

import time

from gpusched.experiments import runner
from gpusched.experiments.mixes import mix as make_mix
from scheduler_daemon.devices import simgpu

if __name__ == "__main__":
    mix = tuple(make_mix("paella-mix", "T4"))
    arr = runner.make_arrivals(mix, "lognormal:2", 1400, 150, 0)
    orig = simgpu.SimGpu.__init__
    for q in (0.0, 0.5):
        def init(self, spec, hw_queues=8, speed=1.0, quantum_us=0.5, _q=q):
            orig(self, spec, hw_queues, speed, _q)
        simgpu.SimGpu.__init__ = init
        for policy in ("cuda-ms", "slo-srpt"):
            t = time.perf_counter()
            r = runner.run_point(runner.Scenario("T4", mix, arr), policy)
            el = time.perf_counter() - t
            print(f"quantum {q:3.1f} us  {policy:9s} {el:6.2f} s  p50 {r['p50_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:6.2f} ms  SLO met {100 * r['slo_attainment']:5.1f}%")
    simgpu.SimGpu.__init__ = orig
