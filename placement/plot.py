"""The placement picture: per GPU three stacked bars - busy time (as a share of its cap
``u_max``), compute and memory-bandwidth share - each segment one replica's time-averaged use,
coloured by model; the compute/memory cap as a dashed line."""
from __future__ import annotations

from .knobs import DEFAULT
from .plan import Plan


def plot_plan(plan: Plan, path: str, title: str = "") -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = [g for g in plan.gpus if g.replicas]
    names = sorted({r.name for g in gpus for r in g.replicas})
    cmap = plt.get_cmap("tab20")
    colour = {n: cmap(i % 20) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(gpus) + 3), 4.5))
    w = 0.27
    kn = gpus[0].knobs if gpus else DEFAULT
    for x, g in enumerate(gpus):
        for dx, attr in ((-w, None), (0.0, "compute"), (w, "memory")):
            bottom = 0.0
            for r in g.replicas:
                h = r.u * getattr(r.cfg, attr) if attr else r.u / kn.u_max
                ax.bar(x + dx, h, w, bottom=bottom, color=colour[r.name], edgecolor="white",
                       linewidth=0.5)
                bottom += h
    ax.axhline(kn.c_max, ls="--", lw=0.8, color="grey")
    ax.set_xticks(range(len(gpus)), [f"{i}\n{g.type.name}\nU C M" for i, g in enumerate(gpus)],
                  fontsize=7)
    ax.set_ylabel(f"U: busy time / {kn.u_max:g};  C, M: share of the GPU")
    ax.set_ylim(0, 1.0)
    ax.set_title(title or f"{plan.solver}: {plan.gpus_used} GPUs, ${plan.cost_per_hour:.2f}/h")
    if len(names) <= 24:
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colour[n]) for n in names],
                  labels=names, fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
