"""USHER's placement heuristic: size replicas, classify, balance, multi-dimensional best fit.

1. Per model, on the GPU type that serves a request most cheaply, take the configuration with
   the least GPU time per request (the largest batch whose batching timeout still fills it) and
   ``n = ceil(rate / lam_max)`` replicas sharing the rate evenly.
2. Classify replicas compute-heavy (``c >= m``) or memory-heavy and interleave the two classes,
   largest busy time first, so that GPUs are filled with complementary replicas.
3. Best fit: each replica joins the open GPU where it fits (``fit.GpuState.check``) and which
   ends up fullest (its most used resource, as a share of its cap) and most balanced (least
   ``|C - M|``); else a new GPU is opened.
4. Repeated for each slowdown budget ``a`` (one for all models, then each model its own with
   the least busy time), then with random budgets per model and a jittered order for a short
   time (``search_s``); the cheapest plan wins.
5. Consolidate: try to empty the least-busy GPUs one by one, moving their replicas to the
   others by the same best fit; a GPU is closed only if all of its replicas find a place.
"""
from __future__ import annotations

import math
import random
import time
from collections import Counter

from gpusched.placement.estimate import Config
from gpusched.placement.fit import GpuState, Replica
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.plan import Plan
from gpusched.placement.pool import GpuType
from gpusched.placement.spec import ModelSpec, SpecError


def size_replicas(ms: ModelSpec, cfgs: list[Config]) -> list[Replica]:
    """The fewest-GPU-seconds way to serve ``ms.rate`` with configurations ``cfgs``."""
    best = None
    for k in cfgs:
        n = max(1, math.ceil(ms.rate / k.rate_max - 1e-9))
        lam = ms.rate / n
        if lam < k.rate_min:
            continue
        key = (k.tau, n, -k.alpha)
        if best is None or key < best[0]:
            best = (key, k, n, lam)
    if best is None:
        return []
    _, k, n, lam = best
    return [Replica(ms.name, k, lam) for _ in range(n)]


def order(replicas: list[Replica], rng: random.Random | None = None) -> list[Replica]:
    """Compute-heavy and memory-heavy replicas alternately, each class largest first (sizes
    jittered by up to 25% when ``rng`` is given, for the restarts)."""
    size = {id(r): r.u * (rng.uniform(0.8, 1.25) if rng else 1.0) for r in replicas}
    key = lambda r: -size[id(r)]
    comp = sorted((r for r in replicas if r.cfg.compute >= r.cfg.memory), key=key)
    mem = sorted((r for r in replicas if r.cfg.compute < r.cfg.memory), key=key)
    out = []
    for i in range(max(len(comp), len(mem))):
        out.extend(sorted((x[i] for x in (comp, mem) if i < len(x)), key=key))
    return out


def best_fit(replicas: list[Replica], pool: tuple[GpuType, ...], knobs: Knobs) -> list[GpuState] | None:
    by_type = {t.name: t for t in pool}
    opened: dict[str, list[GpuState]] = {t.name: [] for t in pool}
    for r in replicas:
        gpus = opened[r.cfg.gpu]
        best = _fit_into(r, gpus, knobs)
        if best is None:
            if len(gpus) >= by_type[r.cfg.gpu].count:
                return None
            best = GpuState(by_type[r.cfg.gpu], knobs)
            gpus.append(best)
        best.add(r)
    return [g for t in pool for g in opened[t.name]]


def _fit_into(r: Replica, gpus: list[GpuState], knobs: Knobs) -> GpuState | None:
    best, best_score = None, -math.inf
    u, c, m, o = r.u, r.u * r.cfg.compute, r.u * r.cfg.memory, r.u * r.cfg.held
    for g in gpus:
        if g.type.name != r.cfg.gpu or g.U + u > knobs.u_max or g.check(r) is not None:
            continue
        full = max((g.C + c) / knobs.c_max, (g.M + m) / knobs.m_max, (g.O + o) / knobs.o_max)
        score = full - abs(g.C + c - g.M - m)
        if score > best_score:
            best, best_score = g, score
    return best


def consolidate(gpus: list[GpuState], knobs: Knobs) -> list[GpuState]:
    """Close GPUs whose replicas all fit elsewhere (least busy first)."""
    gpus = list(gpus)
    for victim in sorted(gpus, key=lambda g: g.U):
        others = [g for g in gpus if g is not victim]
        moved: list[tuple[GpuState, Replica]] = []
        for r in sorted(victim.replicas, key=lambda r: -r.u):
            g = _fit_into(r, others, knobs)
            if g is None:
                break
            g.add(r)
            moved.append((g, r))
        else:
            gpus = others
            continue
        for g, r in moved:  # undo: this GPU stays
            g.discard(r)
    return gpus


def cheapest_type(ms: ModelSpec, cfgs: list[Config], pool: tuple[GpuType, ...]) -> list[Config]:
    """Configurations of the pool type that serves this model's requests most cheaply."""
    best, best_cost = [], math.inf
    for t in pool:
        ks = [k for k in cfgs if k.gpu == t.name]
        reps = size_replicas(ms, ks)
        if reps:
            cost = sum(r.u for r in reps) * t.price_per_hour
            if cost < best_cost:
                best, best_cost = ks, cost
    return best


def solve(models: tuple[ModelSpec, ...], table: list[list[Config]], pool: tuple[GpuType, ...],
          knobs: Knobs = DEFAULT, search_s: float = 0.3, seed: int = 0) -> Plan:
    """Steps 1-5 for each budget choice, then randomised restarts (each model a random budget,
    jittered order) until ``search_s`` has passed; the cheapest plan wins. Deterministic for a
    given ``seed`` up to where the time budget cuts the restarts. In a pool of several GPU
    types each model first goes to its cheapest type per request, then every model to one
    type (packing can favour the bigger GPU: a few well-filled ones beat many small ones)."""
    t0 = time.perf_counter()
    typings = [[cheapest_type(ms, cfgs, pool) for ms, cfgs in zip(models, table)]]
    if len(pool) > 1:
        for t in pool:
            one = [[k for k in cfgs if k.gpu == t.name] for cfgs in table]
            if all(one) and one not in typings:
                typings.append(one)
    options = knobs.alphas + (None,)  # None: each model its own least-busy budget
    best: list[GpuState] | None = None
    rng = random.Random(seed)
    tries = [(typed, [a] * len(models)) for typed in typings for a in options]
    first = len(tries)
    for n in range(1000):
        if n >= len(tries):
            if time.perf_counter() - t0 > search_s:
                break
            tries.append((typings[n % len(typings)], [rng.choice(options) for _ in models]))
        typed, budgets = tries[n]
        replicas = _sized(models, typed, budgets)
        if replicas is None:
            continue
        gpus = best_fit(order(replicas, rng if n >= first else None), pool, knobs)
        gpus = consolidate(gpus, knobs) if gpus is not None else None
        if gpus is not None and (best is None or _cost(gpus) < _cost(best)):
            best = gpus
    if best is None:
        raise infeasible(models, table, pool, "heuristic", _needed(models, typings[0], pool, knobs))
    return Plan("heuristic", best, time.perf_counter() - t0)


def _needed(models, typed, pool, knobs) -> dict[str, int] | None:
    """GPUs of each type the first try would take from an unlimited pool (for the error)."""
    replicas = _sized(models, typed, [None] * len(models))
    if replicas is None:
        return None
    unlimited = tuple(GpuType(t.name, 10 ** 9, t.price_per_hour) for t in pool)
    gpus = best_fit(order(replicas), unlimited, knobs) or []
    return dict(Counter(g.type.name for g in consolidate(gpus, knobs)))


def _sized(models, typed, budgets) -> list[Replica] | None:
    out: list[Replica] = []
    for ms, cfgs, a in zip(models, typed, budgets):
        reps = size_replicas(ms, [k for k in cfgs if a is None or k.alpha == a])
        if not reps and a is not None:  # this budget does not suit the model: its own best
            reps = size_replicas(ms, cfgs)
        if not reps:
            return None
        out.extend(reps)
    return out


def _cost(gpus: list[GpuState]) -> tuple[float, int]:
    return (sum(g.type.price_per_hour for g in gpus), len(gpus))


def infeasible(models, table, pool, method: str = "heuristic",
               needed: dict[str, int] | None = None) -> SpecError:
    """Why ``method`` found no plan in ``pool``: how many GPUs it would need (``needed``, per
    type, when the caller knows), else the busy time the rates need; names the neediest model."""
    need = 0.0
    worst, worst_u = None, -1.0
    for ms, cfgs in zip(models, table):
        reps = size_replicas(ms, cfgs)
        u = sum(r.u for r in reps) if reps else math.inf
        need += u
        if u > worst_u:
            worst, worst_u = ms, u
    have = {t.name: t.count for t in pool}
    total = sum(have.values())
    over = {t: n for t, n in (needed or {}).items() if n > have.get(t, 0)}
    if over:
        why = (f"{method} needs " + ", ".join(f"{n} {t}" for t, n in over.items())
               + " GPUs, the pool has " + ", ".join(f"{have[t]} {t}" for t in over))
    elif need / DEFAULT.u_max > total:
        why = f"they need about {need / DEFAULT.u_max:.1f} GPUs of busy time or more, the pool has {total}"
    else:
        why = (f"{method} found no plan on its {total} GPUs (busy time alone needs about "
               f"{need / DEFAULT.u_max:.1f}, but memory, the compute and bandwidth caps and the "
               "SLOs' slowdown budgets limit how many replicas share a GPU)")
    return SpecError(f"the pool ({', '.join(f'{t.name}:{t.count}' for t in pool)}) cannot serve "
                     f"these rates: {why}; the largest is {worst.name!r} (line {worst.line}, "
                     f"{worst.rate:g} req/s); add GPUs or lower rates")
