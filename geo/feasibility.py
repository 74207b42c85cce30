"""The one feasibility rule of a geo plan: what every method (cpsat, decomposed, greedy,
single-region), the arrival fast path and every re-plan keep, written once.

Symbols (as in the code): job j with ``gpu_types``, ``modes``, ``min_gpus``, ``max_gpus``,
``deadline_h`` D_j, ``budget_usd`` b_j; a candidate c of j with GPU type g_c, mode m_c, GPUs
n[c, s] at each of its sites s, hours to finish f_c (migration included), total dollars $_c over
the remaining run (GPU-hours, egress, reads, migration) and dollars per hour h_c; pools
cap[s, g]; the fleet budget B = ``planner.budget_usd_per_hour`` (optional).

A job j may run on candidate c when
  type      g_c in gpu_types_j
  mode      m_c in modes_j; one site <=> single-site
  size      min_gpus_j <= sum_s n[c, s] <= max_gpus_j, every n[c, s] >= 1
  deadline  f_c <= D_j
  budget    $_c <= b_j
  fleet     h_c <= B                     (a candidate dearer than the whole budget never runs)
A plan, the set R of jobs that run now with their candidates, is feasible when each of them
may run on its candidate and
  capacity  sum_{j in R} n[c_j, s, g] <= cap[s, g]     for every pool (site s, GPU type g)
  fleet     sum_{j in R} h_{c_j} <= B
A re-plan may keep a running job whose deadline or budget an event broke (a price rise: the
job's own candidate became dearer) only when no candidate that meets the rule is left for it;
the plan then names it in ``at_risk`` with the constraint. Capacity and the fleet budget are
never broken: a job is stopped instead (and named at risk when it has a deadline).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from geo.candidates import Candidate, Model
    from geo.spec import Job

EPS = 1e-9  # relative slack for float sums (hours and dollars are sums of products)


class Violation(NamedTuple):
    job: str  # "" for a fleet-wide constraint (capacity of a pool, the fleet budget)
    constraint: str  # type | mode | size | deadline | budget | fleet-budget | capacity
    reason: str


def _slack(x):
    return EPS * max(1.0, abs(x))


def meets(job: Job, hours, total_usd, usd_per_hour=None, fleet_budget=None):
    """deadline, budget and (with ``fleet_budget``) the per-candidate fleet row, on floats or
    on numpy arrays of them (one value per site): a bool or a bool array."""
    ok = True
    if job.deadline_h is not None:
        ok = (hours <= job.deadline_h + _slack(job.deadline_h)) & ok
    if job.budget_usd is not None:
        ok = (total_usd <= job.budget_usd + _slack(job.budget_usd)) & ok
    if fleet_budget is not None and usd_per_hour is not None:
        ok = (usd_per_hour <= fleet_budget + _slack(fleet_budget)) & ok
    return ok


def fleet_budget(model: Model) -> float | None:
    return model.spec.planner.budget_usd_per_hour


def within_budget(spend: float, add: float, budget: float | None) -> bool:
    """The fleet row: ``spend`` $/h already running plus ``add`` stays within ``budget``."""
    return budget is None or spend + add <= budget + _slack(budget)


def job_violations(job: Job, c: Candidate, budget: float | None = None
                   ) -> list[Violation]:
    """What ``c`` breaks of the rule for ``job`` (empty: it may run there)."""
    out = []
    if c.gpu_type not in job.gpu_types:
        out.append(Violation(job.name, "type", f"runs on {c.gpu_type}, not one of its "
                             f"gpu_types ({', '.join(job.gpu_types)})"))
    if c.mode not in job.modes or (len(c.alloc) == 1) != (c.mode == "single-site"):
        out.append(Violation(job.name, "mode", f"runs {c.mode} on {len(c.alloc)} site(s); its "
                             f"modes: {', '.join(job.modes)}"))
    if not job.min_gpus <= c.gpus <= job.max_gpus or any(n < 1 for _, n in c.alloc):
        out.append(Violation(job.name, "size", f"{c.gpus} GPUs, outside {job.min_gpus}.."
                             f"{job.max_gpus}"))
    if not meets(job, c.finish_h, float("-inf")):
        out.append(Violation(job.name, "deadline", f"finishes in {c.finish_h:.3g} h, after its "
                             f"deadline_h {job.deadline_h:g}"))
    if not meets(job, float("-inf"), c.total_usd):
        out.append(Violation(job.name, "budget", f"costs ${c.total_usd:,.0f} over the run, "
                             f"above its budget_usd {job.budget_usd:,.0f}"))
    if not within_budget(0.0, c.cost_per_hour, budget):
        out.append(Violation(job.name, "fleet-budget", f"costs ${c.cost_per_hour:,.2f}/h alone, "
                             f"above the fleet's budget_usd_per_hour {budget:g}"))
    return out


def may_run(job: Job, c: Candidate, budget: float | None = None) -> bool:
    return not job_violations(job, c, budget)


def trim_to_budget(model: Model, chosen: dict[str, Candidate], priority: dict[str, float],
                   keep: set[str] = frozenset()) -> dict[str, Candidate]:
    """The fleet row as a last word: while the jobs of ``chosen`` cost more per hour than B,
    the one with the least priority per $/h (not in ``keep``) stops. Returns those stopped
    with their candidates (removed from ``chosen``), cheapest loss first. Every method ends
    with it, so a plan never breaks the fleet budget, whatever its solver did."""
    B = fleet_budget(model)
    if B is None:
        return {}
    spend = sum(c.cost_per_hour for c in chosen.values())
    out = {}
    order = sorted((n for n in chosen if n not in keep),
                   key=lambda n: (priority[n] / max(chosen[n].cost_per_hour, 1e-12), n))
    for name in order:
        if within_budget(spend, 0.0, B):
            break
        out[name] = chosen.pop(name)
        spend -= out[name].cost_per_hour
    return out
