"""The baselines ``gpusched bench usher`` compares against, on the same input.

Each runs with the settings its authors describe; where a setting is a choice per workload
(a share, a partition, a slowdown budget) it is chosen per model, and among the plans each
baseline can make the one with the fewest GPUs is kept, judged by the baseline's own model (not
by replay: the replay is the test).

- ``one-per-gpu``: every replica alone on a GPU (no interference, so slowdown budget 1). A
  reference line only, not a baseline to beat.
- ``mem-packing``: the same replicas first-fit-decreasing by memory footprint only: blind to
  interference and to busy time (expected to miss SLOs when replayed).
- ``gslice``: GSLICE (Dhakal, Kulkarni, Ramakrishnan, SoCC'20) gives each inference function its
  own share of the GPU's SMs (an MPS active-thread percentage) and a batch size, found by its
  self-learning tuner so that latency stays under the SLO at the offered load; functions share
  a GPU while their shares sum to at most 100%, and the shares are its isolation (it has no
  interference model). Here: shares ``p`` in 10% steps; a replica on share ``p`` has the
  latency measured for it alone on ``p`` of the SMs (what the tuner observes; simgpu R8; the
  first version's ``max(1, o / p)``, ``o`` the SM occupancy, was 1.2-1.6x too optimistic
  at 30%), kept only if one replica alone on it meets the SLO for 99% of a trial under load
  (``_tuned``), and the replay confines it to its share as MPS would; per model the (share,
  batch, replica count) with the least total share that meets its SLO and rate - the best point
  its tuner can reach - then first-fit decreasing by share (and memory), several replicas of a
  model on one GPU allowed. The even slicing of the first version (``p`` equal slices per GPU,
  ``p`` per plan) is tried too; fewer GPUs wins.
- ``gpulet``: gpulet (Choi et al., USENIX ATC'22) splits a GPU into at most two
  gpu-lets (MPS partitions); each model gets the smallest partition that serves its rate within
  its SLO, and two gpu-lets share a GPU only when its linear interference model, the partner
  taken as always busy (its p99, with the margin: ``fit.beta99``), predicts that both SLOs
  hold; models are placed in decreasing order of
  rate. Here: partitions ``GPULET_PARTITIONS``, latency on a partition as for gslice, the
  interference model ours (the tail fit with its margin, ``estimate.py``; the paper fits L2 and
  DRAM utilisation the same linear way), and the slowdown budget chosen per model: the plan
  is made with one budget for all (each of ``knobs.alphas``), with each model's budget that
  needs the least GPU share, and with each model's largest budget that needs no more replicas
  than its best (room to pair at no cost); fewest GPUs wins. The budgets are chosen on the
  model's sizes, then each chosen partition is grown by its trial as gslice's is.
- ``shepherd``: SHEPHERD-like (Zhang, Tang, Khandelwal, Stoica, NSDI'23): time sharing, no
  spatial sharing: a GPU runs one batch at a time, earliest deadline first (its Flex
  scheduler), so its busy time is at most ``rho_max`` and a batch may wait for one batch of the
  slowest other model of its GPU: a replica's slowdown budget must cover
  ``(l_k + max_j l_j) / l_k``. Replayed with the core's ``clockwork`` policy (one job on the
  GPU at a time, EDF, hopeless jobs shed); Shepherd also preempts a running batch for a more
  urgent one, which the replay does not, and groups GPUs (Herd) where this packs GPU by GPU.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter

from gpusched.placement.estimate import Config, latency_on_share_ms, model_profile
from gpusched.placement.fit import GpuState, Replica, beta99
from gpusched.placement.heuristic import cheapest_type, infeasible, size_replicas
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.plan import Plan
from gpusched.placement.replay import TRIAL_ATTAINMENT, attainment_alone
from gpusched.placement.spec import SpecError

GSLICE_SHARES = tuple(round(0.1 * i, 1) for i in range(1, 11))
GPULET_PARTITIONS = (0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
SHEPHERD_POLICY = "clockwork"   # the replay's policy for a time-shared GPU
# the replay's policy for MPS-partitioned GPUs (gslice, gpulet): each replica a client process
# with its own stream, its kernels straight to the GPU, confined to its partition
MPS_POLICY = "mps"


def _replicas(models, table, pool, alpha: float, method: str) -> list[Replica]:
    out = []
    for ms, cfgs in zip(models, table):
        ks = [k for k in cheapest_type(ms, cfgs, pool) if k.alpha == alpha]
        reps = size_replicas(ms, ks)
        if not reps:
            raise SpecError(f"line {ms.line}: model {ms.name!r}: {method} runs every replica "
                            f"with slowdown budget {alpha:g}, which leaves no batch size that "
                            f"meets its {ms.slo_ms:g} ms SLO at {ms.rate:g} req/s")
        out.extend(reps)
    return out


def _check_counts(gpus: list[GpuState], models, table, pool, method: str) -> list[GpuState]:
    """Raise the pool-too-small error, with the GPUs ``method`` needs, if ``gpus`` overflow it."""
    needed = dict(Counter(g.type.name for g in gpus))
    if any(n > t.count for t in pool for name, n in needed.items() if name == t.name):
        raise infeasible(models, table, pool, method, needed)
    return gpus


def one_per_gpu(models, table_alone, pool, knobs: Knobs = DEFAULT) -> Plan:
    t0 = time.perf_counter()
    by = {t.name: t for t in pool}
    gpus = []
    for r in _replicas(models, table_alone, pool, 1.0, "one-per-gpu"):
        g = GpuState(by[r.cfg.gpu], knobs)
        g.add(r)
        gpus.append(g)
    _check_counts(gpus, models, table_alone, pool, "one-per-gpu")
    return Plan("one-per-gpu", gpus, time.perf_counter() - t0)


def mem_packing(models, table_alone, pool, knobs: Knobs = DEFAULT) -> Plan:
    t0 = time.perf_counter()
    reps = sorted(_replicas(models, table_alone, pool, 1.0, "mem-packing"),
                  key=lambda r: -r.cfg.footprint_mb)
    gpus = _check_counts(_first_fit(reps, pool, knobs, _memory_ok), models, table_alone, pool,
                         "mem-packing")
    return Plan("mem-packing", gpus, time.perf_counter() - t0)


def _memory_ok(g: GpuState, r: Replica) -> bool:
    return g.F + r.cfg.footprint_mb <= g.type.memory_mb * g.knobs.mem_frac


def _first_fit(replicas, pool, knobs: Knobs, fits) -> list[GpuState]:
    """Each replica on the first open GPU of its type where ``fits(gpu, replica)``, else on a
    new one (however many: the caller checks the pool's counts, ``_check_counts``)."""
    by = {t.name: t for t in pool}
    gpus: list[GpuState] = []
    for r in replicas:
        g = next((g for g in gpus if g.type.name == r.cfg.gpu and fits(g, r)), None)
        if g is None:
            g = GpuState(by[r.cfg.gpu], knobs)
            gpus.append(g)
        g.add(r)
    return gpus


def _on_share(k: Config, share: float, models, knobs: Knobs) -> Config | None:
    """Configuration ``k`` on a share ``p`` of the SMs: its latency measured alone on that
    share (``latency_on_share_ms``), its budget ``a`` (for interference) on top of that."""
    ms = models[k.model]
    lat = k.latency_ms * latency_on_share_ms(ms.model, k.batch, k.gpu, share) \
        / model_profile(ms.model, k.batch, k.gpu).latency_ms
    T = ms.slo_ms - knobs.queue_factor * lat * k.alpha
    if T < 0 or (k.batch > 1 and T <= 0):
        return None
    lam_min = (k.batch - 1) / (T / 1000.0) if k.batch > 1 else 0.0
    lam_max = knobs.rho_max * k.batch / (lat * k.alpha / 1000.0)
    if lam_min > lam_max:
        return None
    return dataclasses.replace(k, latency_ms=lat, timeout_ms=T, rate_min=lam_min,
                               rate_max=lam_max)


def _sized_on_share(ms, cfgs, p: float, models, knobs) -> list[Replica]:
    """``size_replicas`` on a share ``p`` of the SMs, each replica confined to it (its MPS
    partition: the replay enforces it, simgpu R8)."""
    reps = size_replicas(ms, [s for k in cfgs for s in [_on_share(k, p, models, knobs)]
                              if s is not None])
    return [dataclasses.replace(r, share=p) for r in reps]


def _trial(ms, reps: list[Replica]) -> float:
    """The SLO attainment of a replica of ``reps`` (they are alike) alone on its partition, on
    a trial trace: a partition is sized by observing it under load (GSLICE's tuner; gpulet's
    profiled partitions), and a partition has no neighbour's idle SMs to absorb a burst."""
    r = max(reps, key=lambda x: x.rate)
    return attainment_alone(r.cfg.gpu, ms.model, r.cfg.batch, r.cfg.timeout_ms, ms.slo_ms,
                            r.rate, r.share)


def _share_candidates(ms, cfgs, shares, models, knobs) -> list[tuple[float, list[Replica]]]:
    """Per share, the (share, replicas) that serve ``ms`` within its SLO by the model; the
    least total share (``share * replicas``) first, ties: fewer replicas."""
    cands = []
    for p in shares:
        reps = _sized_on_share(ms, cfgs, p, models, knobs)
        if reps:
            cands.append(((p * len(reps), len(reps)), p, reps))
    return [(p, reps) for _, p, reps in sorted(cands, key=lambda c: c[0])]


def _tuned(ms, cands: list[tuple[float, list[Replica]]]) -> tuple[float, list[Replica]]:
    """The first of ``cands`` whose trial (``_trial``) meets ``TRIAL_ATTAINMENT``, as a tuner
    that watches its partition under load grows it; when none does, the one its trial liked
    best (the tuner settles where it saw the fewest misses; the first of equals)."""
    for p, reps in cands:
        if _trial(ms, reps) >= TRIAL_ATTAINMENT:
            return p, reps
    return max(cands, key=lambda c: _trial(ms, c[1]))


def gslice(models, table_alone, pool, knobs: Knobs = DEFAULT) -> Plan:
    t0 = time.perf_counter()
    tries = []
    # per-model shares (GSLICE's tuner), packed by share
    chosen = []
    for ms, cfgs in zip(models, table_alone):
        cands = _share_candidates(ms, [k for k in cheapest_type(ms, cfgs, pool)
                                       if k.alpha == 1.0], GSLICE_SHARES, models, knobs)
        if not cands:
            chosen = None
            break
        chosen.extend(_tuned(ms, cands)[1])
    if chosen:
        def fits(g, r):
            return sum(x.share for x in g.replicas) + r.share <= 1.0 + 1e-9 and _memory_ok(g, r)
        gpus = _first_fit(sorted(chosen, key=lambda r: -r.share), pool, knobs, fits)
        tries.append((len(gpus), gpus, {"shares": "per model"}))
    # even slicing: p equal slices per GPU
    for p in range(1, 9):
        sized = [(ms, _sized_on_share(ms, [k for k in cheapest_type(ms, cfgs, pool)
                                           if k.alpha == 1.0], 1.0 / p, models, knobs))
                 for ms, cfgs in zip(models, table_alone)]
        if not all(r for _, r in sized):
            continue
        gpus = _first_fit([x for _, r in sized for x in r], pool, knobs,
                          lambda g, r, p=p: len(g.replicas) < p and _memory_ok(g, r))
        # trials only rule a slicing out, and ties go to the earlier try: a slicing no smaller
        # than the best so far is not tried (its trials are most of gslice's solve time)
        if tries and len(gpus) >= min(t[0] for t in tries):
            continue
        # equal slices have no other share to grow into: a slice that misses its trial
        # rules this slicing out
        if all(_trial(ms, r) >= TRIAL_ATTAINMENT for ms, r in sized):
            tries.append((len(gpus), gpus, {"shares": f"{p} equal slices"}))
    if not tries:
        raise infeasible(models, table_alone, pool, "gslice")
    _, gpus, notes = min(tries, key=lambda t: t[0])
    _check_counts(gpus, models, table_alone, pool, "gslice")
    return Plan("gslice", gpus, time.perf_counter() - t0,
                notes={**notes, "replay_policy": MPS_POLICY})


def _gpulet_options(ms, cfgs, models, knobs) -> dict[float, list[tuple[float, list[Replica]]]]:
    """Per slowdown budget: the (partition, replicas) serving ``ms``, smallest share first."""
    out = {}
    for a in knobs.alphas:
        got = _share_candidates(ms, [k for k in cfgs if k.alpha == a], GPULET_PARTITIONS,
                                models, knobs)
        if got:
            out[a] = got
    return out


def _gpulet_pack(chosen: list[tuple[float, list[Replica]]], pool, knobs) -> list[GpuState]:
    """Replicas by decreasing rate; each onto the open single-gpu-let GPU where the partitions
    fit in 100%, memory holds and the pair's predicted slowdowns stay within both budgets,
    the fullest such GPU first; else a new GPU."""
    by = {t.name: t for t in pool}
    reps = sorted((r for _, rs in chosen for r in rs), key=lambda r: -r.rate)
    gpus: list[GpuState] = []
    for r in reps:
        best, best_used = None, -1.0
        for g in gpus:
            if len(g.replicas) != 1 or g.type.name != r.cfg.gpu:
                continue
            (o,) = g.replicas
            total = o.share + r.share
            if total > 1.0 + 1e-9 or not _memory_ok(g, r):
                continue
            if 1 + beta99(r, o) > r.cfg.alpha + 1e-9 or 1 + beta99(o, r) > o.cfg.alpha + 1e-9:
                continue
            if total > best_used:
                best, best_used = g, total
        if best is None:
            best = GpuState(by[r.cfg.gpu], knobs)
            gpus.append(best)
        best.add(r)
    return gpus


def gpulet(models, table, pool, knobs: Knobs = DEFAULT, alpha: float | None = None) -> Plan:
    """``alpha``: one budget for every model (the first version's fixed 1.5); default: the
    best of the budget choices in the module's docstring."""
    t0 = time.perf_counter()
    opts = [_gpulet_options(ms, cheapest_type(ms, cfgs, pool), models, knobs)
            for ms, cfgs in zip(models, table)]
    for ms, o in zip(models, opts):
        if not o:
            raise SpecError(f"line {ms.line}: model {ms.name!r}: gpulet finds no partition and "
                            f"batch that meet its {ms.slo_ms:g} ms SLO at {ms.rate:g} req/s")
    choices: list[tuple[str, list[float]]] = []
    budgets = [alpha] if alpha is not None else list(knobs.alphas)
    for a in budgets:
        if all(a in o for o in opts):
            choices.append((f"{a:g} for every model", [a] * len(models)))
    if alpha is None:   # (each budget's smallest partition by the model: ``o[a][0]``)
        cheapest = [min(o, key=lambda a: (o[a][0][0] * len(o[a][0][1]), len(o[a][0][1]), -a))
                    for o in opts]
        choices.append(("per model: least share", cheapest))
        roomy = [max(a for a in o if len(o[a][0][1]) <= min(len(v[0][1]) for v in o.values()))
                 for o in opts]
        choices.append(("per model: largest budget at its fewest replicas", roomy))
    if not choices:
        ms = next(ms for ms, o in zip(models, opts) if not any(a in o for a in budgets))
        raise SpecError(f"line {ms.line}: model {ms.name!r}: gpulet with slowdown budget "
                        f"{'/'.join(f'{a:g}' for a in budgets)} finds no partition and batch that "
                        f"meet its {ms.slo_ms:g} ms SLO at {ms.rate:g} req/s")
    best = None
    for what, per_model in choices:
        gpus = _gpulet_pack([_tuned(ms, o[a]) for ms, o, a in zip(models, opts, per_model)],
                            pool, knobs)
        if best is None or len(gpus) < len(best[1]):
            best = (what, gpus, per_model)
    what, gpus, per_model = best
    _check_counts(gpus, models, table, pool, "gpulet")
    return Plan("gpulet", gpus, time.perf_counter() - t0,
                notes={"budgets": what, "replay_policy": MPS_POLICY,
                       "budget_per_model": {ms.name: a for ms, a in zip(models, per_model)}})


def shepherd(models, table, pool, knobs: Knobs = DEFAULT) -> Plan:
    """Time sharing: per model its least-busy configuration whose budget covers waiting for one
    batch of the slowest other model on its GPU; best fit by busy time, at most ``rho_max``."""
    t0 = time.perf_counter()
    by = {t.name: t for t in pool}
    sized = []
    for ms, cfgs in zip(models, table):
        ks = cheapest_type(ms, cfgs, pool)
        # the most room to share: the largest budget among the least-busy sizings
        options = [(a, size_replicas(ms, [k for k in ks if k.alpha == a])) for a in knobs.alphas]
        options = [(a, r) for a, r in options if r]
        if not options:
            raise SpecError(f"line {ms.line}: model {ms.name!r}: shepherd finds no batch that "
                            f"meets its {ms.slo_ms:g} ms SLO at {ms.rate:g} req/s")
        sized.append(options)
    reps = []
    for options in sized:
        least = min(sum(r.u for r in rs) for _, rs in options)
        _, rs = max(((a, rs) for a, rs in options if sum(r.u for r in rs) <= least * 1.1),
                    key=lambda x: x[0])
        reps.extend(rs)
    reps.sort(key=lambda r: -r.u)
    gpus: list[GpuState] = []
    for r in reps:
        best, best_u = None, -1.0
        for g in gpus:
            if g.type.name == r.cfg.gpu and g.U > best_u and _time_shared_ok(g, r, knobs):
                best, best_u = g, g.U
        if best is None:
            best = GpuState(by[r.cfg.gpu], knobs)
            gpus.append(best)
        best.add(r)
    _check_counts(gpus, models, table, pool, "shepherd")
    return Plan("shepherd", gpus, time.perf_counter() - t0,
                notes={"replay_policy": SHEPHERD_POLICY})


def _time_shared_ok(g: GpuState, r: Replica, knobs: Knobs) -> bool:
    if g.U + r.u > knobs.rho_max + 1e-9 or not _memory_ok(g, r):
        return False
    every = g.replicas + [r]
    for x in every:
        wait = max((y.cfg.latency_ms for y in every if y is not x), default=0.0)
        if 1 + wait / x.cfg.latency_ms > x.cfg.alpha + 1e-9:
            return False
    return True


BASELINES = {"one-per-gpu": one_per_gpu, "mem-packing": mem_packing, "gslice": gslice,
             "gpulet": gpulet, "shepherd": shepherd}
