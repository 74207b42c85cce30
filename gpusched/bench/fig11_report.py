"""Tables and pictures of ``bench fig11`` / ``bench fig13`` (gpusched/bench/fig11.py)."""
from __future__ import annotations

import os

from gpusched.bench.fig11 import OURS, P99_LIMIT_MS

# one colour and marker per policy (distinguishable in print and for colour-blind readers)
STYLE = {"cuda-ss": ("#7f7f7f", "v", "--"), "cuda-ms": ("#1f77b4", "s", "--"),
         "mps": ("#17becf", "D", "--"), "triton": ("#ff7f0e", "^", "--"),
         "paella": ("#2ca02c", "o", "-"), "srpt": ("#9467bd", "P", "-"),
         "slo-srpt": ("#d62728", "X", "-")}


def print_fig11(res: dict) -> None:
    from rich.console import Console

    from gpusched.report import compact
    con = Console()
    for c in res["cases"]:
        t = compact(f"{c['gpu']}, sigma {c['sigma']:g}: {c['seeds']} seed(s), "
                    f"{res['jobs']} jobs/point")
        t.title_justify = "left"
        for col in ("policy", "knee jobs/s", "(min-max)", "SLO99 jobs/s"):
            t.add_column(col, justify="left" if col == "policy" else "right")
        for p, k in c["knee_rps"].items():
            s = c["knee_rps_spread"][p]
            t.add_row(p, f"{k:.0f}", f"{s['min']:.0f}-{s['max']:.0f}",
                      f"{c['slo99_rps'][p]:.0f}")
        con.print(t)
        for name in ("p99_ratio_at_80pct", "p99_ratio_at_100pct"):
            r = c.get(name) or {}
            if r:
                con.print(f"  {name}: " + ", ".join(f"{b} {v:.2f}x" for b, v in r.items()))
    con.print(f"knee: most jobs/s achieved with p99 <= {res['p99_limit_ms']:g} ms; SLO99: "
              f"with >= {100 * res['slo_target']:g}% of jobs within 5x solo; ratios: the "
              "baseline's p99 over our best policy's, at that fraction of cuda-ms's knee")


def plot_fig11(res: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out, exist_ok=True)
    paths = []
    for c in res["cases"]:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for p, rows in c["curves"].items():
            color, marker, ls = STYLE.get(p, ("k", "o", "-"))
            xs = [r["throughput_rps"] for r in rows]
            ys = [r["p99_ms"] if r["p99_ms"] is not None else float("nan") for r in rows]
            lo = [max(0.0, y - r["p99_ms_min"]) if r["p99_ms"] is not None else 0.0
                  for y, r in zip(ys, rows)]
            hi = [max(0.0, min(r["p99_ms_max"], 1e9) - y) if r["p99_ms"] is not None else 0.0
                  for y, r in zip(ys, rows)]
            ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker=marker, linestyle=ls,
                        markersize=4, capsize=2, label=p + (" (ours)" if p in OURS else ""))
        ax.axhline(P99_LIMIT_MS, color="0.6", linewidth=0.8)
        ax.set(xlabel="achieved throughput (jobs/s)", ylabel="p99 latency (ms)",
               ylim=(0, 2 * P99_LIMIT_MS),
               title=f"Fig. 11 on the simulated {c['gpu']}, lognormal sigma {c['sigma']:g} "
                     f"({c['seeds']} seeds: mean, min-max)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(out, f"fig11_{c['gpu']}_sigma{c['sigma']:g}.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def print_fig13(res: dict) -> None:
    """Per-model p99 columns are numbered (M1, M2, ...) and named in the caption: eight models
    and three summary columns fit 80 columns only that way."""
    from rich.console import Console

    from gpusched.report import compact, fit, ms
    rows = res["rows"]
    models = list(rows[0]["per_model_p99_ms"]) if rows else []
    legend = ", ".join(f"M{i} {m}" for i, m in enumerate(models, 1))
    t = compact(f"Fig. 13: paella's fairness threshold on {res['gpu']}, sigma "
                f"{res['sigma']:g}, {res['rate_rps']:.0f} jobs/s offered",
                caption=f"p99 in ms, overall and per model: {legend}")
    t.title_justify = "left"
    for col in ("threshold", "Jain", "p99", *(f"M{i}" for i in range(1, len(models) + 1))):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(f"{r['threshold']:g}", f"{r['jain']:.3f}", ms(r["p99_ms"]),
                  *(ms(r["per_model_p99_ms"].get(m)) for m in models))
    con = Console()
    con.print(fit(t, con.width, drop=tuple(f"M{i}" for i in range(len(models), 0, -1))))
