"""Render benchmark JSON (from `gpusched bench ... --json`) as markdown tables for the docs.

    python tools/bench_tables.py overhead out/overhead.json
    python tools/bench_tables.py paella out/paella_T4.json
    python tools/bench_tables.py calibrate out/calibrate.json
    python tools/bench_tables.py sim-speed out/sim_speed.json
"""
from __future__ import annotations

import json
import sys


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def overhead(r: dict) -> str:
    rows = [("raw ZeroMQ DEALER/ROUTER round trip", f"{r['zmq_rtt_us']:.1f} us", ""),
            ("daemon round trip, 1-kernel job, zero-duration device", f"{r['daemon_rtt_us']:.1f} us", ""),
            ("ratio daemon / raw ZeroMQ", f"{r['rtt_ratio']:.2f}x", "<= 1.5x"),
            ("same through `client_lib.Client.run`", f"{r['client_rtt_us']:.1f} us ({r['client_rtt_ratio']:.2f}x)", ""),
            ("sustained jobs/s, 4 client processes", f"{r['jobs_per_s']:.0f}", "")]
    rows += [(f"decision time, {int(n):,} queued jobs", f"{v:.2f} us", "<= 10 us" if n == "10000" else "")
             for n, v in r["decision_us"].items()]
    out = ["| measure | value | target |", "|---|---:|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out += ["", "| policy | 10 queued | 1,000 queued | 10,000 queued |", "|---|---:|---:|---:|"]
    out += [f"| {p} | " + " | ".join(f"{row[n]:.2f} us" for n in ("10", "1000", "10000")) + " |"
            for p, row in r["decision_us_by_policy"].items()]
    return "\n".join(out)


def paella(r: dict) -> str:
    out = [f"{r['workload']} on simulated {r['gpu']}, {r['arrivals']} arrivals, {r['jobs']} jobs "
           f"per load, saturation {r['saturation_rps']:.0f} jobs/s, SLO {r['slo_factor']}x solo"
           + (", hopeless jobs shed" if r.get("shed") else ""), "",
           "| load | policy | jobs/s | p50 ms | p99 ms | SLO met | Jain |",
           "|---:|---|---:|---:|---:|---:|---:|"]
    for x in r["points"]:
        out.append(f"| {x['offered_load']:g} | {x['policy']} | {x['throughput_rps']:.0f} | "
                   f"{_f(x['p50_ms'])} | {_f(x['p99_ms'])} | {100 * x['slo_attainment']:.1f}% | "
                   f"{x['jain']:.3f} |")
    return "\n".join(out)


def calibrate(r: dict) -> str:
    out = ["| model | GPU | precision | batch | reference | published ms | simulated ms | ratio | within 25% |",
           "|---|---|---|---:|---|---:|---:|---:|---|"]
    for x in r["rows"]:
        out.append(f"| {x['model']} | {x['gpu']} | {x['precision']} | {x['batch']} | {x['source']} | "
                   f"{x['published_ms']:.3f} | {x['simulated_ms']:.3f} | {x['ratio']:.2f} | "
                   f"{'yes' if x['within_25pct'] else '**no**'} |")
    return "\n".join(out)


def sim_speed(r: dict) -> str:
    out = ["| policy | kernels | seconds | kernels/s |", "|---|---:|---:|---:|"]
    out += [f"| {p} | {x['kernels']:,} | {x['seconds']:.2f} | {x['kernels_per_s']:,.0f} |"
            for p, x in r["by_policy"].items()]
    return "\n".join(out)


if __name__ == "__main__":
    kinds = {"overhead": overhead, "paella": paella, "calibrate": calibrate, "sim-speed": sim_speed}
    if len(sys.argv) != 3 or sys.argv[1] not in kinds:
        sys.exit(f"usage: python tools/bench_tables.py {{{'|'.join(kinds)}}} FILE.json")
    with open(sys.argv[2]) as f:
        print(kinds[sys.argv[1]](json.load(f)))
