"""Render benchmark JSON (from `gpusched bench ... --json`) as markdown tables for the docs.

    python tools/bench_tables.py overhead out/overhead.json
    python tools/bench_tables.py fig11 out/fig11_T4.json
    python tools/bench_tables.py calibrate out/calibrate.json
    python tools/bench_tables.py sim-speed out/sim_speed.json
    python tools/bench_tables.py usher docs/results/usher/bench_usher.json
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
            ("sustained jobs/s, 4 client processes", f"{r['jobs_per_s']:.0f}", ""),
            ("daemon cost per kernel (notice, decision, launch)",
             f"{r['kernel_overhead_us']:.1f} us", "")]
    rows += [(f"decision time, {int(n):,} queued jobs", f"{v:.2f} us", "<= 10 us" if n == "10000" else "")
             for n, v in r["decision_us"].items()]
    out = ["| measure | value | target |", "|---|---:|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out += ["", "| policy | 10 queued | 1,000 queued | 10,000 queued |", "|---|---:|---:|---:|"]
    out += [f"| {p} | " + " | ".join(f"{row[n]:.2f} us" for n in ("10", "1000", "10000")) + " |"
            for p, row in r["decision_us_by_policy"].items()]
    return "\n".join(out)


def fig11(r: dict) -> str:
    """Per (GPU, sigma): each policy's knee (mean and min-max over seeds), SLO99, the p99 ratios."""
    out = []
    for c in r["cases"]:
        costs = c["costs_us"]
        out += [f"{c['gpu']}, sigma {c['sigma']:g}, {c['seeds']} seeds x {r.get('jobs', 3000)} jobs a point; "
                f"host costs (us): launch {costs['launch_us']:g}, our notice "
                f"{costs['notice_us']:g}, rpc {costs['rpc_us']:g}, poll {costs['poll_us']:g}"
                + (f"; our quantum {costs['quantum_us']:g} us" if "quantum_us" in costs else ""),
                "",
                f"| policy | burst jobs/s | knee jobs/s (p99 <= {r.get('p99_limit_ms', 75):g} ms) "
                "| min-max | "
                "SLO99 jobs/s |", "|---|---:|---:|---:|---:|"]
        for p, k in c["knee_rps"].items():
            s = c["knee_rps_spread"][p]
            out.append(f"| {p} | {c['burst_rps'][p]:,.0f} | {k:,.0f} | {s['min']:,.0f}-"
                       f"{s['max']:,.0f} | {c['slo99_rps'][p]:,.0f} |")
        for name, label in (("p99_ratio_at_80pct", "80%"), ("p99_ratio_at_100pct", "100%")):
            ratio = c.get(name) or {}
            if ratio:
                out.append("")
                out.append(f"p99 of the baseline over ours at {label} of cuda-ms's knee: "
                           + ", ".join(f"{b} {v:.3f}x" for b, v in ratio.items()))
        out.append("")
    return "\n".join(out).rstrip()


def calibrate(r: dict) -> str:
    out = ["| model | GPU | precision | batch | reference | published ms | simulated ms | ratio | within 25% |",
           "|---|---|---|---:|---|---:|---:|---:|---|"]
    for x in r["rows"]:
        out.append(f"| {x['model']} | {x['gpu']} | {x['precision']} | {x['batch']} | {x['source']} | "
                   f"{x['published_ms']:.3f} | {x['simulated_ms']:.3f} | {x['ratio']:.2f} | "
                   f"{'yes' if x['within_25pct'] else '**no**'} |")
    return "\n".join(out)


def sim_speed(r: dict) -> str:
    out = ["| policy | kernels | wall s | CPU s | kernels/s (wall) | kernels/CPU-s |",
           "|---|---:|---:|---:|---:|---:|"]
    out += [f"| {p} | {x['kernels']:,} | {x['seconds']:.2f} | {x.get('cpu_seconds', 0):.2f} | "
            f"{x['kernels_per_s']:,.0f} | "
            f"{x['kernels'] / x['cpu_seconds'] if x.get('cpu_seconds') else 0:,.0f} |"
            for p, x in r["by_policy"].items()]
    return "\n".join(out)


def usher(r: dict) -> str:
    """The summary (GPUs per method, lowest attainment when under 100%, each of ours against
    the best baseline that holds), then a table per workload."""
    methods = [m["method"] for m in r["workloads"][0]["methods"]]

    def gpus(row):
        if row.get("gpus_used") is None:
            return "-"
        att = row.get("min_slo_attainment", 1.0)
        return f"{row['gpus_used']}" + ("" if att >= 1.0 else f" ({100 * att:.2f}%)")

    def ratio(h):
        return "-" if h["ratio"] is None else f"{h['ratio']:.2f}x" + ("" if h["met"] else " (missed)")
    out = ["| workload | " + " | ".join(methods) + " | best baseline >= 99% | "
           "baseline / heuristic | baseline / heuristic-trial |",
           "|---|" + "---|" * (len(methods) + 3)]
    for w in r["workloads"]:
        hl = w["headline"]
        rows = {m["method"]: m for m in w["methods"]}
        best = f"{hl['best_baseline']} {hl['best_baseline_gpus']}" if hl["best_baseline"] else "none"
        kind = "held out" if w["held_out"] else "in sample"
        out.append(f"| {w['name']} ({w['models']} models, {kind}) | "
                   + " | ".join(gpus(rows[m]) for m in methods)
                   + f" | {best} | {ratio(hl)} | {ratio(hl['trial'])} |")
    for w in r["workloads"]:
        out += ["", f"{w['name']} ({w['models']} models, {w['total_rate']:,.0f} req/s, "
                f"{'**held out**' if w['held_out'] else 'in sample'}, replayed {w['horizon_s']:g} s)",
                "", "| method | GPUs | $/h | lowest per-model SLO attainment | mean | solve s | note |",
                "|---|---:|---:|---:|---:|---:|---|"]
        for m in w["methods"]:
            note = m.get("skipped") or m.get("error") or (
                f"CP-SAT {m['status']}: the heuristic's plan stands" if "status" in m else "")
            if "trial" in m:
                t = m["trial"]
                note = (f"{t['closed']} GPU{'' if t['closed'] == 1 else 's'} closed in "
                        f"{t['trials']} trials ({t['stopped']})")
            if m.get("gpus_used") is None:
                out.append(f"| {m['method']} | - | - | - | - | - | {note[:90]} |")
                continue
            out.append(f"| {m['method']} | {m['gpus_used']} | {m['cost_per_hour']:.2f} | "
                       f"{100 * m['min_slo_attainment']:.2f}% | {100 * m['mean_slo_attainment']:.2f}% | "
                       f"{m['solve_time_s']:.2f} | {note} |")
    return "\n".join(out)


if __name__ == "__main__":
    kinds = {"overhead": overhead, "fig11": fig11, "calibrate": calibrate, "sim-speed": sim_speed,
             "usher": usher}
    if len(sys.argv) != 3 or sys.argv[1] not in kinds:
        sys.exit(f"usage: python tools/bench_tables.py {{{'|'.join(kinds)}}} FILE.json")
    with open(sys.argv[2]) as f:
        print(kinds[sys.argv[1]](json.load(f)))
