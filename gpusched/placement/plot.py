"""The placement picture: per GPU three stacked bars - busy time U (as a share of its cap
``u_max``), compute C and memory-bandwidth M share - each segment one replica's time-averaged
use, coloured by model; each bar's cap as a black tick across its top."""
from __future__ import annotations

from gpusched.placement.knobs import DEFAULT
from gpusched.placement.plan import Plan

MAX_LEGEND = 40  # models named in the legend; more would hide the bars


def plot_plan(plan: Plan, path: str, title: str = "") -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = [g for g in plan.gpus if g.replicas]
    names = sorted({r.name for g in gpus for r in g.replicas})
    cmap = plt.get_cmap("tab20")
    colour = {n: cmap(i % 20) for i, n in enumerate(names)}
    kn = gpus[0].knobs if gpus else DEFAULT
    bars = (("U", lambda r: r.u / kn.u_max, 1.0), ("C", lambda r: r.u * r.cfg.compute, kn.c_max),
            ("M", lambda r: r.u * r.cfg.memory, kn.m_max))
    fig, ax = plt.subplots(figsize=(min(40.0, max(7.0, 1.1 * len(gpus) + 4)), 4.8))
    w = 0.28
    ticks, labels = [], []
    for x, g in enumerate(gpus):
        for j, (label, share, cap) in enumerate(bars):
            pos = x + (j - 1) * w
            bottom = 0.0
            for r in g.replicas:
                h = share(r)
                ax.bar(pos, h, w * 0.95, bottom=bottom, color=colour[r.name], edgecolor="white",
                       linewidth=0.5)
                bottom += h
            ax.hlines(cap, pos - w / 2, pos + w / 2, colors="black", linewidth=1.2)
            ticks.append(pos)
            labels.append(label)
        ax.text(x, -0.09, f"GPU {x} ({g.type.name})", ha="center", va="top", fontsize=8,
                transform=ax.get_xaxis_transform())
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.tick_params(axis="x", length=0)
    ax.set_ylabel(f"share of the cap (U: busy time / {kn.u_max:g})\nor of the GPU (C, M)")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.6, len(gpus) - 0.4)
    ax.set_title(title or f"{plan.solver}: {plan.gpus_used} GPUs, ${plan.cost_per_hour:.2f}/h"
                 "\nbars: U busy time, C compute, M memory bandwidth", fontsize=10)
    handles = [plt.Line2D([], [], color="black", linewidth=1.2)]
    legend = ["cap"]
    if len(names) <= MAX_LEGEND:
        handles += [plt.Rectangle((0, 0), 1, 1, color=colour[n]) for n in names]
        legend += names
    ax.legend(handles=handles, labels=legend, fontsize=7, ncol=1 + len(legend) // 21,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
