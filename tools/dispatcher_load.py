"""What our dispatcher thread does in a burst of Paella's mix (issue 15): dispatches, kernels a
dispatch (runs: the core's quantum), and the share of the burst the one dispatcher thread is
busy (a notice per completion and per freed extra slot, ``notice_us`` each, plus ``launch_us``
for each launch of a run after its first), against the GPU's thread occupancy.

    python tools/dispatcher_load.py [--gpu T4] [--jobs 3000] [--quantum-us 120,0]

The burst is the one ``bench fig11`` measures: the first ``--jobs`` of its arrival draw (sigma 2,
seed 0), all at time 0, behind Paella's caps, with the preset's default host costs.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from gpusched.experiments.clients import PAELLA_CAPS
from gpusched.experiments.host import default_costs
from gpusched.experiments.mixes import mix as make_mix
from gpusched.experiments.runner import Scenario, make_arrivals, run_scenario
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.devices.simgpu import SimGpu


class CountingGpu(SimGpu):
    """The simulated GPU, counting what the dispatcher thread pays for."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.dispatches = self.later_launches = self.extra_notices = 0

    def start(self, env, on_complete, on_fail, on_started=None):
        def started(job, now):
            self.extra_notices += bool(job.extra)   # VirtualRun notices only these
            on_started(job, now)
        super().start(env, on_complete, on_fail, started if on_started else None)

    def launch(self, job):
        self.dispatches += 1
        self.later_launches += max(0, job.run_len - 1)
        super().launch(job)


def solo_run_length(mix, quantum_us: float, cap: int = 64) -> float:
    """Kernels a dispatch, share-weighted over the mix, if runs were cut by the kernels' solo
    estimates (as the core's ``_run_len`` cuts them by the learned ones)."""
    kernels = runs = 0.0
    for m in mix:
        est = [k.est_us for k in m.kernels]
        n, i = 0, 0
        while i < len(est):
            left, j = quantum_us - est[i], i + 1
            while j < len(est) and j - i < cap and est[j] <= left:
                left -= est[j]
                j += 1
            n, i = n + 1, j
        kernels += m.share * len(est)
        runs += m.share * n
    return kernels / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", default="T4")
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--quantum-us", default="120,0", help="quanta to compare, comma-separated")
    ap.add_argument("--policy", default="srpt")
    args = ap.parse_args()
    mix = tuple(make_mix("paella-mix", args.gpu, engine="fused"))
    burst = tuple((0.0, m) for _, m in make_arrivals(mix, "lognormal:2", 1.0, args.jobs, 0))
    print("| quantum us | jobs/s | kernels | dispatches | kernels a dispatch | dispatcher busy "
          "| GPU thread occupancy |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for q in (float(x) for x in args.quantum_us.split(",")):
        costs = replace(default_costs(gpu_spec(args.gpu)), quantum_us=q)
        sc = Scenario(args.gpu, mix, burst, costs=costs, caps=PAELLA_CAPS)
        out = run_scenario(sc, args.policy, device=CountingGpu)
        dev = out.dev
        span = max(out.noticed.values())
        busy = ((dev.dispatches + dev.extra_notices) * costs.notice_us
                + dev.later_launches * costs.launch_us) * 1e-6
        print(f"| {q:g} | {len(out.jobs) / span:,.0f} | {dev.kernels_done:,} | "
              f"{dev.dispatches:,} | {dev.kernels_done / dev.dispatches:.1f} | "
              f"{100 * busy / span:.0f}% | {100 * dev.busy_s / span:.0f}% |")
    for q in (float(x) for x in args.quantum_us.split(",")):
        if q:
            print(f"\nquantum {q:g} us with the solo estimates: "
                  f"{solo_run_length(mix, q):.1f} kernels a dispatch")


if __name__ == "__main__":
    main()
