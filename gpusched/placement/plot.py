"""The placement picture: per GPU three stacked bars - busy time U (as a share of its cap
``u_max``), compute C and memory-bandwidth M share - each segment one replica's time-averaged
use, coloured by model; each bar's cap as a black tick across its top."""
from __future__ import annotations

from gpusched.placement.knobs import DEFAULT
from gpusched.placement.plan import Plan

MAX_LEGEND = 40  # models named in the legend; more would hide the bars


# a qualitative palette (Okabe-Ito, distinguishable with colour-blindness) and, past its
# eight colours, hatches: model i is (PALETTE[i % 8], HATCHES[i // 8 % 4]), so 32 models look
# different before anything repeats (tab20's pairs of light and dark shades did not)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")
HATCHES = ("", "///", "...", "xxx")


def series_style(i: int) -> tuple[str, str]:
    return PALETTE[i % len(PALETTE)], HATCHES[i // len(PALETTE) % len(HATCHES)]


def plot_plan(plan: Plan, path: str, title: str = "") -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = [g for g in plan.gpus if g.replicas]
    names = sorted({r.name for g in gpus for r in g.replicas})
    look = {n: series_style(i) for i, n in enumerate(names)}   # (colour, hatch) per model
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
                colour, hatch = look[r.name]
                ax.bar(pos, h, w * 0.95, bottom=bottom, color=colour, edgecolor="white",
                       linewidth=0.5, hatch=hatch)
                bottom += h
            ax.hlines(cap, pos - w / 2, pos + w / 2, colors="black", linewidth=1.2,
                      linestyles="solid" if label == "U" else "dashed")
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
    # one entry per distinct line: U's cap (u_max, drawn at 1) is not C's and M's
    handles = [plt.Line2D([], [], color="black", linewidth=1.2),
               plt.Line2D([], [], color="black", linewidth=1.2, linestyle="dashed")]
    legend = [f"U cap (busy {kn.u_max:g})", f"C cap {kn.c_max:g}, M cap {kn.m_max:g}"
              if kn.c_max != kn.m_max else f"C, M cap {kn.c_max:g}"]
    if len(names) <= MAX_LEGEND:
        handles += [plt.Rectangle((0, 0), 1, 1, facecolor=look[n][0], hatch=look[n][1],
                                  edgecolor="white") for n in names]
        legend += names
    ax.legend(handles=handles, labels=legend, fontsize=7, ncol=1 + len(legend) // 21,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
