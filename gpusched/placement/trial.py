"""Consolidation by trial: close GPUs that the interference model keeps open when a simulated
trial of the GPUs that would take over their replicas shows every SLO still met.

The model (``fit.py``) is conservative by construction: budgets, caps and a tail margin, each
an upper bound. A GSLICE-style tuner does not predict, it tries a configuration under load and
keeps it if the SLO holds (``baselines._tuned`` sizes gslice's and gpulet's partitions that
way). Here the heuristic's plan is the start, and a GPU is tried the same way:

1. take the least busy GPU (``U``) and move all of its replicas onto the least busy GPU of
   their type with room in memory for them (one trial);
2. replay each GPU that took a replica for ``TRIAL_HORIZON_S`` on trial arrivals
   (``replay.attainment_together``: the trial seed, not the replays'); if every model there
   meets its SLO on at least ``TRIAL_ATTAINMENT`` of its requests, the GPU is closed;
3. if that trial fails, undo and spread the replicas instead, largest first, each onto the
   least busy GPU of its type with room (a trial per GPU that took one: less load on each);
4. if that fails too, undo and stop (the next GPU is busier), as also when a move's trials
   would take more than ``max_trials`` in all; a GPU whose replicas fit nowhere else in memory
   is passed over.

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
MAX_TRIALS = 12         # simulations per plan, ~0.5-3 s each: a hard bound on solve time


def consolidate(gpus: list[GpuState], models: tuple[ModelSpec, ...], knobs: Knobs = DEFAULT,
                max_trials: int = MAX_TRIALS) -> tuple[list[GpuState], dict]:
    """(the GPUs left, {"closed", "trials", "stopped"}); ``gpus`` are left as they were. At
    most ``max_trials`` trials: a move whose trials would pass it is not tried."""
    gpus = [g.copy() for g in gpus if g.replicas]
    closed = trials = 0
    stuck: list[GpuState] = []   # their replicas fit on no other GPU of their type
    while True:
        if len(gpus) < 2:
            stopped = "one GPU left"
            break
        left = [g for g in gpus if all(g is not x for x in stuck)]
        if not left:
            stopped = "no GPU's replicas fit in the others' memory (of their type)"
            break
        victim = min(left, key=lambda g: g.U)
        others = [g for g in gpus if g is not victim]
        outcome, tried = None, []   # outcome: "closed", or why not
        for place in (_onto_one, _spread):   # one trial if one GPU takes it all, else spread
            moved = place(victim.replicas, others, knobs)
            if moved is None:
                continue
            key = [(id(g), id(r)) for g, r in moved]
            if key in tried:   # the same move as the one that failed
                _undo(moved)
                continue
            tried.append(key)
            took = list({id(g): g for g, _ in moved}.values())
            if trials + len(took) > max_trials:
                _undo(moved)
                outcome = (f"trial budget: the next move needs {len(took)} "
                           f"trial{'s' if len(took) > 1 else ''}, {max_trials - trials} of "
                           f"{max_trials} left")
                break
            held = []
            for g in took:
                trials += 1
                held.append(attainment_together(g, models, TRIAL_HORIZON_S))
                if held[-1] < TRIAL_ATTAINMENT:
                    break
            if held[-1] >= TRIAL_ATTAINMENT:
                for g, att in zip(took, held):
                    g.trial = att if g.trial is None else min(g.trial, att)
                outcome = "closed"
                break
            _undo(moved)
            outcome = (f"a trial met {100 * held[-1]:.1f}% of a model's SLOs, under "
                       f"{100 * TRIAL_ATTAINMENT:g}%")
        if outcome is None:
            stuck.append(victim)
        elif outcome == "closed":
            gpus = others
            closed += 1
        else:   # its trials failed (the next GPU is busier) or the budget is spent
            stopped = outcome
            break
    log.info("place: trial consolidation closed %d GPUs in %d trials (%s)", closed, trials, stopped)
    return gpus, {"closed": closed, "trials": trials, "stopped": stopped}


def _undo(moved: list[tuple[GpuState, Replica]]) -> None:
    for g, r in moved:
        g.discard(r)


def _onto_one(replicas: list[Replica], gpus: list[GpuState],
              knobs: Knobs) -> list[tuple[GpuState, Replica]] | None:
    """Every replica onto the least busy GPU of their type with room in memory for all of
    them; None if there is none (or they are of several types)."""
    types = {r.cfg.gpu for r in replicas}
    need = sum(r.cfg.footprint_mb for r in replicas)
    room = [g for g in gpus if {g.type.name} == types
            and g.F + need <= g.type.memory_mb * knobs.mem_frac]
    if not room:
        return None
    g = min(room, key=lambda g: g.U)
    moved = []
    for r in sorted(replicas, key=lambda r: -r.u):
        g.add(r)
        moved.append((g, r))
    return moved


def _spread(replicas: list[Replica], gpus: list[GpuState],
            knobs: Knobs) -> list[tuple[GpuState, Replica]] | None:
    """Each replica (largest busy time first) onto the least busy GPU of its type with room in
    memory; None (nothing moved) if one has nowhere to go."""
    moved: list[tuple[GpuState, Replica]] = []
    for r in sorted(replicas, key=lambda r: -r.u):
        room = [g for g in gpus if g.type.name == r.cfg.gpu
                and g.F + r.cfg.footprint_mb <= g.type.memory_mb * knobs.mem_frac]
        if not room:
            _undo(moved)
            return None
        g = min(room, key=lambda g: g.U)
        g.add(r)
        moved.append((g, r))
    return moved
