"""The picture of a plan (PNG): per-site utilisation bars and a site x job table of GPU use."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers

import matplotlib.pyplot as plt  # noqa: E402

from geo.plan import Plan  # noqa: E402

MAX_JOBS_DRAWN = 40  # a bigger plan draws its largest jobs and sums the rest as "other"


# jobs told apart by colour (Okabe-Ito: distinguishable with colour-blindness) and, past its
# eight colours, by hatching (tab20's light/dark pairs looked alike); the placement picture
# uses the same scheme
_OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
              "#000000")
_HATCHES = ("", "///", "...", "xxx")


def plot_plan(plan: Plan, path: str, title: str = "") -> str:
    sites = [s.name for s in plan.sites]
    placed = [j for j in plan.jobs if j.sites]
    placed.sort(key=lambda j: -sum(j.sites.values()))
    drawn, rest = placed[:MAX_JOBS_DRAWN], placed[MAX_JOBS_DRAWN:]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, max(4.5, 0.55 * len(sites) + 2.0)),
                                   gridspec_kw={"width_ratios": [1, 2]})
    y = range(len(sites))
    util = [s.gpus_used / s.gpus_total if s.gpus_total else 0.0 for s in plan.sites]
    ratio = [s.demand_supply_ratio for s in plan.sites]
    ax1.barh(y, util, color="tab:blue", label="GPUs used / total")
    ax1.scatter(ratio, y, color="tab:red", marker="D", s=40, zorder=3, label="demand / supply")
    for yi, (u, site) in enumerate(zip(util, plan.sites)):
        ax1.text(0.02, yi, f"{site.gpus_used}/{site.gpus_total}", va="center", fontsize=8,
                 color="white" if u > 0.25 else "black")
    ax1.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax1.set_yticks(list(y), sites, fontsize=9)
    ax1.invert_yaxis()
    ax1.set_xlabel("utilisation")
    ax1.set_xlim(0, max(1.1, max(ratio, default=1.0) * 1.05))
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax1.set_title("per-site utilisation")
    # stacked GPUs per job at each site: a job split over sites shows in each of its rows
    left = [0.0] * len(sites)
    for k, j in enumerate(drawn):
        w = [j.sites.get(s, 0) for s in sites]
        ax2.barh(y, w, left=left, color=_OKABE_ITO[k % 8], hatch=_HATCHES[k // 8 % 4],
                 edgecolor="white", lw=0.5, label=f"{j.name} ({j.mode})")
        left = [a + b for a, b in zip(left, w)]
    if rest:
        w = [sum(j.sites.get(s, 0) for j in rest) for s in sites]
        ax2.barh(y, w, left=left, color="lightgrey", label=f"{len(rest)} other jobs")
        left = [a + b for a, b in zip(left, w)]
    ax2.barh(y, [s.gpus_total for s in plan.sites], color="none", edgecolor="black", lw=1.0,
             ls="--", zorder=3, label="GPUs at site")
    xmax = max([s.gpus_total for s in plan.sites] + left + [1])
    for yi, site in enumerate(sites):  # name the jobs on segments wide enough to hold it
        x0 = 0.0
        for j in drawn:
            w = j.sites.get(site, 0)
            if w >= 0.09 * xmax:
                ax2.text(x0 + w / 2, yi, j.name, ha="center", va="center", fontsize=7,
                         clip_on=True)
            x0 += w
    ax2.set_yticks(list(y), [""] * len(sites))
    ax2.invert_yaxis()
    ax2.set_xlabel("GPUs")
    ax2.set_title("GPU use per job")
    ax2.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
               ncol=1 if len(drawn) <= 20 else 2)
    fig.suptitle(title or f"{plan.solver} plan, objective {plan.objective}: "
                 f"${plan.cost_per_hour:,.0f}/h, makespan {plan.makespan_h:.1f} h")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
