"""A placement plan and its report (the JSON of ``gpusched place --json``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from gpusched.placement.fit import GpuState
from gpusched.placement.spec import ModelSpec


@dataclass
class Plan:
    solver: str
    gpus: list[GpuState]            # the GPUs used, each with its replicas
    solve_time_s: float = 0.0
    optimal: bool | None = None     # CP-SAT proved it (None: not an exact solver)
    notes: dict = field(default_factory=dict)

    @property
    def gpus_used(self) -> int:
        return sum(1 for g in self.gpus if g.replicas)

    @property
    def cost_per_hour(self) -> float:
        return sum(g.type.price_per_hour for g in self.gpus if g.replicas)


def predicted_latency_ms(g: GpuState, r, offered: float | None = None) -> float:
    """Batching delay (time for a batch to fill at the ``offered`` rate, default the planned
    one, capped by the timeout) + interfered execution."""
    k, rate = r.cfg, offered or r.rate
    fill = min(k.timeout_ms, (k.batch - 1) / rate * 1000.0) if k.batch > 1 else 0.0
    return fill + k.latency_ms * g.alpha(r)


def offered_rates(plan: Plan, models: tuple[ModelSpec, ...]) -> dict[int, float]:
    """Requests/s each replica (by ``id``) really gets: its model's rate spread over its replicas
    in proportion to their planned rates (as the replay and a frontend do). A plan may reserve
    more than the rate (CP-SAT keeps a replica at least at the rate that fills its batch in
    time): the busy time and slowdown then stay conservative, but the batches fill slower."""
    total: dict[str, float] = {}
    for g in plan.gpus:
        for r in g.replicas:
            total[r.name] = total.get(r.name, 0.0) + r.rate
    return {id(r): r.rate * models[r.cfg.model].rate / total[r.name] if total[r.name] else 0.0
            for g in plan.gpus for r in g.replicas}


def report(plan: Plan, models: tuple[ModelSpec, ...]) -> dict:
    """``rate`` is what a replica was planned (and is admitted) for, ``offered_rate`` what it
    gets; the predicted latency's batching delay is at the offered rate."""
    offered = offered_rates(plan, models)
    assignments = []
    for n, g in enumerate(x for x in plan.gpus if x.replicas):
        assignments.append({
            "gpu": n, "type": g.type.name,
            "busy": round(g.U, 4), "compute": round(g.C, 4), "memory": round(g.M, 4),
            "memory_mb": round(g.F, 1),
            "replicas": [{"model": r.name, "zoo_model": models[r.cfg.model].model,
                          "batch": r.cfg.batch, "rate": round(r.rate, 3),
                          "offered_rate": round(offered[id(r)], 3),
                          "timeout_ms": round(r.cfg.timeout_ms, 3),
                          "slo_ms": models[r.cfg.model].slo_ms,
                          "predicted_slowdown": round(g.alpha(r), 4),
                          "predicted_latency_ms": round(
                              predicted_latency_ms(g, r, offered[id(r)]), 3),
                          # its MPS partition (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE / 100), if any
                          **({"mps_share": r.share} if r.share is not None else {})}
                         for r in g.replicas],
            # the lowest SLO attainment of the trial that let it take more than the model allows
            **({"trial_attainment": round(g.trial, 5)} if g.trial is not None else {})})
    out = {"gpus_used": plan.gpus_used, "cost_per_hour": round(plan.cost_per_hour, 4),
           "assignments": assignments, "solver": plan.solver,
           "solve_time_s": round(plan.solve_time_s, 4)}
    if plan.optimal is not None:
        out["optimal"] = plan.optimal
    out.update(plan.notes)
    return out
