"""Regional packing for ``decomposed``: hand the GPUs left after placement to the jobs where
they gain the most (``grow``), and the exchange pass (``polish``). Both work on a fleet's free
GPU vectors and a ``placed`` map job -> (site index, GPU type, GPUs), changed in place.
"""
from __future__ import annotations

import heapq

import numpy as np

from .baselines import _Fleet, _site_vectors
from .candidates import PLACED, JobOptions, Model, gpu_sizes
from .spec import Job


def grow(model: Model, fleet: _Fleet, objective: str, placed: dict, jobs: dict[str, Job],
          options: dict[str, JobOptions]) -> None:
    """Regional packing: hand the GPUs left over to the placed jobs where they gain the most
    objective per extra GPU (a job may move to another site to grow); for makespan, grow the
    job that finishes last until it cannot. Cost never grows a job."""
    if objective == "cost":
        return
    heap: list = []

    def value(job, it):
        return job.priority / it / options[job.name].ref_speed

    def push(name):
        i, t, n = placed[name]
        job = jobs[name]
        it0, h0, _ = (float(v[i]) for v in _site_vectors(fleet, job, t, n))
        best = None  # (gain per GPU, site, type, n2)
        for t2 in job.gpu_types:
            if t2 not in fleet.cap:
                continue
            room = fleet.free[t2] + (n if t2 == t else 0) * (np.arange(len(fleet.free[t2])) == i)
            nxt = [m for m in gpu_sizes(job, int(fleet.max_cap[t2])) if m > n]
            if not nxt:
                continue
            n2 = nxt[0]
            it, h, tot = _site_vectors(fleet, job, t2, n2)
            ok = room >= n2
            if job.deadline_h is not None:
                ok &= h <= job.deadline_h
            if job.budget_usd is not None:
                ok &= tot <= job.budget_usd
            if not ok.any():
                continue
            key = np.where(ok, it, np.inf)
            k = int(np.argmin(key))
            gain = (value(job, float(it[k])) - value(job, it0)) / (n2 - n) \
                if objective == "throughput" else h0 - float(h[k])
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, k, t2, n2)
        if best is not None:
            gain, k, t2, n2 = best
            prio = -gain if objective == "throughput" else -h0
            heapq.heappush(heap, (prio, name, (i, t, n), (k, t2, n2)))
        elif objective == "makespan":
            stuck.append((h0, name))

    stuck: list = []
    for name in placed:
        push(name)
    while heap:
        _, name, was, (k, t2, n2) = heapq.heappop(heap)
        if placed[name] != was:
            continue  # stale entry
        i, t, n = was
        fleet.free[t][i] += n
        if fleet.free[t2][k] >= n2:
            fleet.free[t2][k] -= n2
            placed[name] = (k, t2, n2)
        else:  # others took those GPUs meanwhile: look again
            fleet.free[t][i] -= n
        if objective == "makespan" and heap and stuck and max(stuck)[0] >= -heap[0][0]:
            break  # a job that cannot grow finishes last: the makespan is fixed
        push(name)


POLISH_MAX_JOBS = 2000  # the exchange pass costs jobs x jobs-per-pool: skipped above this


def polish(fleet: _Fleet, objective: str, placed: dict, jobs: dict[str, Job],
            options: dict[str, JobOptions], passes: int = 2) -> None:
    """Exchange pass (throughput only): move a job to another pool (site x GPU type) at its
    smallest size when its GPUs, handed to the other jobs of its pool as one growth step each
    (best gain per GPU first), gain more than the move loses. This finds what the one-job-at-a-
    time steps miss: a flexible job stepping onto slower GPUs so that others can grow."""
    if objective != "throughput" or len(placed) > POLISH_MAX_JOBS:
        return

    def val(job, i, t, n):
        it = float(_site_vectors(fleet, job, t, n)[0][i])
        return job.priority * (PLACED + 1 / it / options[job.name].ref_speed)

    def growth(pool, budget, skip):
        """Best one-step growths of the jobs in ``pool`` within ``budget`` GPUs."""
        steps = []
        for q in members.get(pool, ()):
            if q == skip:
                continue
            i, t, n = placed[q]
            jq = jobs[q]
            nxt = [m for m in gpu_sizes(jq, int(fleet.cap[t][i])) if m > n]
            if not nxt:
                continue
            n2 = min(nxt[0], n + budget)
            if n2 <= n:
                continue
            h = float(_site_vectors(fleet, jq, t, n2)[1][i])
            if jq.deadline_h is not None and h > jq.deadline_h:
                continue
            g = val(jq, i, t, n2) - val(jq, i, t, n)
            if g > 0:
                steps.append((g / (n2 - n), q, n2 - n, n2))
        steps.sort(reverse=True)
        out, gain, left = [], 0.0, budget
        for gpg, q, extra, n2 in steps:
            if extra <= left:
                out.append((q, n2))
                gain += gpg * extra
                left -= extra
        return gain, out

    members: dict[tuple[int, str], list[str]] = {}
    for name, (i, t, n) in placed.items():
        members.setdefault((i, t), []).append(name)
    for _ in range(passes):
        moved = False
        for name in list(placed):
            i, t, n = placed[name]
            job = jobs[name]
            v0 = val(job, i, t, n)
            best = None
            for t2 in job.gpu_types:
                if t2 not in fleet.cap:
                    continue
                sizes = gpu_sizes(job, int(fleet.max_cap[t2]))
                if not sizes:
                    continue
                m = sizes[0]
                it, h, tot = _site_vectors(fleet, job, t2, m)
                ok = fleet.free[t2] >= m
                if t2 == t:
                    ok[i] = False
                if job.deadline_h is not None:
                    ok &= h <= job.deadline_h
                if job.budget_usd is not None:
                    ok &= tot <= job.budget_usd
                if not ok.any():
                    continue
                k = int(np.argmin(np.where(ok, it, np.inf)))
                v1 = job.priority * (PLACED + 1 / float(it[k]) / options[name].ref_speed)
                gain, grow = growth((i, t), n + int(fleet.free[t][i]), name)
                delta = v1 - v0 + gain
                if delta > 1e-9 and (best is None or delta > best[0]):
                    best = (delta, k, t2, m, grow)
            if best is None:
                continue
            _, k, t2, m, grow = best
            fleet.free[t][i] += n
            members[(i, t)].remove(name)
            fleet.free[t2][k] -= m
            placed[name] = (k, t2, m)
            members.setdefault((k, t2), []).append(name)
            for q, n2 in grow:
                qi, qt, qn = placed[q]
                fleet.free[qt][qi] -= n2 - qn
                placed[q] = (qi, qt, n2)
            moved = True
        if not moved:
            break
