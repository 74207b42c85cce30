"""Consolidation by trial: close GPUs that the interference model keeps open when a simulated
trial of the GPUs that would take over their replicas shows every SLO still met.

The model (``fit.py``) is conservative by construction: budgets, caps and a tail margin, each
an upper bound. A GSLICE-style tuner does not predict, it tries a configuration under load and
keeps it if the SLO holds (``baselines._tuned`` sizes gslice's and gpulet's partitions that
way). Here the heuristic's plan is the start, and a GPU is tried the same way:

1. take the least busy GPU (``U``) and spread its replicas, largest first, each onto the GPU of
   its type with the least busy time that has room in memory (``mem_frac``);
2. replay each GPU that took a replica for ``TRIAL_HORIZON_S`` on trial arrivals
   (``replay.attainment_together``: the trial seed, not the replays'); if every model there
   meets its SLO on at least ``TRIAL_ATTAINMENT`` of its requests, the GPU is closed;
3. otherwise undo and stop (the next GPU is busier), as also when ``max_trials`` trials are
   spent.

Such a plan is not what the daemons' admission control accepts: it admits by the model
(``admission.py``), which refuses the replicas a trial added, so ``gpusched place`` refuses to
``--apply`` it.
"""
from __future__ import annotations

import logging

from gpusched.placement.fit import GpuState, Replica
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.replay import TRIAL_ATTAINMENT, attainment_together
from gpusched.placement.spec import ModelSpec

log = logging.getLogger("gpusched.place")

TRIAL_HORIZON_S = 1.0   # simulated seconds a trial replays (the partition trials' horizon)
MAX_TRIALS = 12         # simulations per plan, ~0.5-3 s each: a bound on solve time


def consolidate(gpus: list[GpuState], models: tuple[ModelSpec, ...], knobs: Knobs = DEFAULT,
                max_trials: int = MAX_TRIALS) -> tuple[list[GpuState], dict]:
    """(the GPUs left, {"closed", "trials", "stopped"}); ``gpus`` are left as they were."""
    gpus = [g.copy() for g in gpus if g.replicas]
    closed = trials = 0
    stopped = "one GPU left"
    while len(gpus) > 1:
        if trials >= max_trials:
            stopped = f"{max_trials} trials spent"
            break
        victim = min(gpus, key=lambda g: g.U)
        others = [g for g in gpus if g is not victim]
        before = {id(g): g.trial for g in others}
        moved = _spread(victim.replicas, others, knobs)
        ok = moved is not None
        if ok:
            for g in {id(g): g for g, _ in moved}.values():
                trials += 1
                att = attainment_together(g, models, TRIAL_HORIZON_S)
                if att < TRIAL_ATTAINMENT:
                    ok = False
                    stopped = (f"a trial met {100 * att:.1f}% of a model's SLOs, under "
                               f"{100 * TRIAL_ATTAINMENT:g}%")
                    break
                g.trial = att if g.trial is None else min(g.trial, att)
        if not ok:
            for g, r in moved or ():
                g.discard(r)
            for g in others:
                g.trial = before[id(g)]
            if moved is None:
                stopped = "no GPU has memory for the least busy GPU's replicas"
            break
        gpus = others
        closed += 1
    log.info("place: trial consolidation closed %d GPUs in %d trials (%s)", closed, trials, stopped)
    return gpus, {"closed": closed, "trials": trials, "stopped": stopped}


def _spread(replicas: list[Replica], gpus: list[GpuState],
            knobs: Knobs) -> list[tuple[GpuState, Replica]] | None:
    """Each replica (largest busy time first) onto the least busy GPU of its type with room in
    memory; None (nothing moved) if one has nowhere to go."""
    moved: list[tuple[GpuState, Replica]] = []
    for r in sorted(replicas, key=lambda r: -r.u):
        room = [g for g in gpus if g.type.name == r.cfg.gpu
                and g.F + r.cfg.footprint_mb <= g.type.memory_mb * knobs.mem_frac]
        if not room:
            for g, x in moved:
                g.discard(x)
            return None
        g = min(room, key=lambda g: g.U)
        g.add(r)
        moved.append((g, r))
    return moved
