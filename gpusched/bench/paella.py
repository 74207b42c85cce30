"""``gpusched bench paella``: every policy on the same arrivals, swept over load.

For each load (a fraction of the GPU's measured saturation rate) one arrival sequence is drawn
and every policy runs on it in virtual time on the simulated GPU. Writes ``points.csv`` and PNG
plots under ``--out`` and returns the points.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor

from gpusched.experiments.mixes import mix as make_mix
from gpusched.experiments.runner import (
    Scenario,
    make_arrivals,
    parse_slo_factors,
    run_point,
    saturation_rate,
)
from scheduler_daemon.core.gpu_specs import gpu_spec

POLICY_ORDER = ("cuda-ss", "cuda-ms", "mps", "triton", "clockwork", "fifo-jbj", "fifo-kbk",
                "paella", "srpt", "edf", "slo", "slo-srpt", "ideal")


def _task(args):
    sc, policy, load = args
    res = run_point(sc, policy)
    return policy, load, res


def run_paella(gpu: str = "T4", workload: str = "paella-mix", arrivals: str = "lognormal:2",
               loads=(0.5, 0.7, 0.9), jobs: int = 1000, seed: int = 0, policies=POLICY_ORDER,
               slo_factor: str = "5", hw_queues: int = 32, workers: int | None = None,
               progress=None, shed: bool = False) -> dict:
    gpu_spec(gpu)  # validates the name
    unknown = [p for p in policies if p not in POLICY_ORDER]
    if unknown:
        raise ValueError(f"unknown policies {unknown}: choose from {', '.join(POLICY_ORDER)}")
    if jobs < 10 or not loads or any(not 0 < x <= 3 for x in loads):
        raise ValueError("--jobs must be >= 10 and --loads fractions in (0, 3]")
    factors = parse_slo_factors(slo_factor)
    mix = tuple(make_mix(workload, gpu))
    sat = saturation_rate(gpu, mix)
    tasks = []
    for li, load in enumerate(loads):
        arr = make_arrivals(mix, arrivals, load * sat, jobs, seed + li)
        sc = Scenario(gpu, mix, arr, slo_factors=factors, hw_queues=hw_queues, shed=shed)
        tasks += [(sc, p, load) for p in policies]
    points = []
    workers = workers or min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for policy, load, res in ex.map(_task, tasks):
            points.append({"policy": policy, "offered_load": load, **res})
            if progress:
                progress()
    order = {p: i for i, p in enumerate(POLICY_ORDER)}
    points.sort(key=lambda r: (r["offered_load"], order[r["policy"]]))
    return {"gpu": gpu, "workload": workload, "arrivals": arrivals, "jobs": jobs, "seed": seed,
            "saturation_rps": sat, "slo_factor": slo_factor, "hw_queues": hw_queues,
            "shed": shed,
            "models": [{"model": m.name, "share": m.share, "solo_ms": m.solo_s * 1e3,
                        "kernels": len(m.kernels), "slo_ms": sc.slo_ms(m)} for m in mix],
            "points": points}


def write_outputs(res: dict, out: str) -> list[str]:
    """points.csv and the plots; returns the paths written."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "points.csv")]
    cols = ["policy", "offered_load", "throughput_rps", "p50_ms", "p99_ms", "slo_attainment",
            "jain", "completed", "jobs", "kernels"]
    with open(paths[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in res["points"]:
            w.writerow([p[c] for c in cols])
    paths += plot(res, out)
    return paths


def plot(res: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = [p for p in POLICY_ORDER if any(x["policy"] == p for x in res["points"])]
    title = f"{res['workload']} on simulated {res['gpu']}, {res['arrivals']} arrivals"
    style = {p: ("-" if p in ("paella", "srpt", "edf", "slo", "slo-srpt", "ideal") else "--")
             for p in pols}
    cmap = plt.get_cmap("tab20")
    color = {p: cmap(POLICY_ORDER.index(p) % 20) for p in pols}  # one colour per policy
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for p in pols:
        xs = [x for x in res["points"] if x["policy"] == p]
        kw = {"marker": "o", "label": p, "color": color[p], "linestyle": style[p]}
        axes[0].plot([x["throughput_rps"] for x in xs], [x["p99_ms"] or float("nan") for x in xs],
                     **kw)
        axes[1].plot([x["offered_load"] for x in xs], [100 * x["slo_attainment"] for x in xs],
                     **kw)
        axes[2].plot([x["offered_load"] for x in xs], [x["jain"] for x in xs], **kw)
    axes[0].set(xlabel="throughput (jobs/s)", ylabel="p99 latency (ms)", yscale="log",
                title="p99 latency vs throughput")
    axes[1].set(xlabel="offered load (fraction of saturation)", ylabel="SLO attainment (%)",
                title=f"SLO attainment (SLO = {res['slo_factor']}x solo)")
    axes[2].set(xlabel="offered load (fraction of saturation)", ylabel="Jain's index",
                title="fairness (per-model slowdown)")
    axes[2].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(os.path.join(out, f"paella_{res['gpu']}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    top = max(x["offered_load"] for x in res["points"])
    at = [x for x in res["points"] if x["offered_load"] == top]
    models = [m["model"] for m in res["models"]]
    fig, ax = plt.subplots(figsize=(12, 4.6))
    width = 0.8 / len(at)
    for i, x in enumerate(at):
        ax.bar([k + i * width for k in range(len(models))],
               [x["per_model_p99_ms"].get(m, float("nan")) for m in models], width,
               label=x["policy"], color=plt.get_cmap("tab20")(POLICY_ORDER.index(x["policy"]) % 20))
    ax.set_xticks([k + 0.4 for k in range(len(models))], models, rotation=20)
    ax.set(ylabel="p99 latency (ms)", yscale="log",
           title=f"per-model p99 at load {top:g}, {title}")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    paths.append(os.path.join(out, f"paella_{res['gpu']}_per_model.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def print_paella(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"gpusched bench paella: {res['workload']} on simulated {res['gpu']}, "
              f"{res['arrivals']}, {res['jobs']} jobs/point, saturation "
              f"{res['saturation_rps']:.0f} jobs/s")
    for c in ("load", "policy", "jobs/s", "p50 ms", "p99 ms", "SLO met", "Jain"):
        t.add_column(c, justify="left" if c == "policy" else "right")
    last = None
    for x in res["points"]:
        if last is not None and x["offered_load"] != last:
            t.add_section()
        last = x["offered_load"]
        f = lambda v, fmt="{:.2f}": "-" if v is None else fmt.format(v)  # noqa: E731
        t.add_row(f"{x['offered_load']:g}", x["policy"], f(x["throughput_rps"], "{:.0f}"),
                  f(x["p50_ms"]), f(x["p99_ms"]), f"{100 * x['slo_attainment']:.1f}%",
                  f"{x['jain']:.3f}")
    Console().print(t)
