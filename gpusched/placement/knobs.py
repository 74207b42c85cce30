"""The placement model's constants, in one place so that every solver and the replay agree."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Knobs:
    # A batch may wait behind one earlier batch of its replica: latency budget for execution
    # and queueing is ``queue_factor * l * alpha`` (the rule Nexus and Clockwork use).
    queue_factor: float = 2.0
    # Busy fraction allowed for one replica (keeps its own queue short).
    rho_max: float = 0.7
    # Solo GPU time a GPU may be asked for per second, summed over its replicas. Above 1 the
    # replicas' kernels must overlap, which small kernels on a big GPU do; the resource caps
    # below and the slowdown budgets are what bound a GPU's load.
    u_max: float = 2.0
    # Caps on the time-averaged share of the GPU's SM slots (occupancy), arithmetic (compute)
    # and DRAM bandwidth (memory) the replicas of one GPU use together (USHER's two
    # dimensions, plus the SM slots that decide whether kernels can run side by side).
    o_max: float = 0.85
    c_max: float = 0.85
    m_max: float = 0.85
    # Tail weighting of a neighbour's interference: a neighbour busy a fraction u of the time
    # slows a request it overlaps by its full pairwise amount, and about kappa*u of requests
    # see such an overlap at the tail, so it counts kappa*u times (kappa >= 1: conservative).
    kappa: float = 1.0
    # Slowdown budgets a replica may be configured with (alpha_max); 1.0 = must run alone.
    alphas: tuple[float, ...] = (1.0, 1.1, 1.25, 1.5, 2.0)
    # Memory each replica process holds besides weights and activations (CUDA context, caches).
    context_mb: float = 500.0
    # Share of a GPU's memory placements may fill.
    mem_frac: float = 0.9


DEFAULT = Knobs()
