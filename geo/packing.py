"""Regional packing for ``decomposed``: hand the GPUs left after placement to the jobs where
they gain the most (``grow``), the exchange pass (``polish``) and the local improvement of the
plan kept (``relocate``: exact sizes per pool, jobs moved between pools). All work on a
fleet's free GPU vectors and a ``placed`` map job -> (site index, GPU type, GPUs), changed in
place.
"""
from __future__ import annotations

import heapq

import numpy as np

from geo.baselines import _Fleet, _site_options, _site_vectors
from geo.candidates import PLACED, JobOptions, Model, gpu_sizes, step_single_s
from geo.feasibility import within_budget
from geo.spec import Job


def _sizes(fleet: _Fleet, job: Job, t: str) -> list[int]:
    """``gpu_sizes`` of a job for type t up to the fleet's largest pool (cached per solve)."""
    key = (job.name, t)
    got = fleet._sizes.get(key)
    if got is None:
        got = fleet._sizes[key] = gpu_sizes(job, int(fleet.max_cap[t]))
    return got


def grow(model: Model, fleet: _Fleet, objective: str, placed: dict, jobs: dict[str, Job],
          options: dict[str, JobOptions]) -> None:
    """Regional packing: hand the GPUs left over to the placed jobs where they gain the most
    objective per extra GPU (a job may move to another site to grow); for makespan, grow the
    job that finishes last until it cannot. Cost never grows a job."""
    if objective == "cost":
        return
    heap: list = []
    gpus_all = max(1.0, float(sum(v.sum() for v in fleet.cap.values())))

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
            nxt = [m for m in _sizes(fleet, job, t2) if m > n]
            if not nxt:
                continue
            n2 = nxt[0]
            it, h, tot, ok0 = _site_options(fleet, job, t2, n2)
            ok = ok0 & (fleet.free[t2] >= n2)
            if t2 == t:  # its own GPUs count where it runs
                ok[i] = ok0[i] and fleet.free[t2][i] + n >= n2
            if fleet.budget is not None:  # the fleet's $/h after the step
                ok &= within_budget(fleet.spend - n * float(fleet.price[t][i]),
                                    n2 * fleet.price[t2], fleet.budget)
            if not ok.any():
                continue
            key = np.where(ok, it, np.inf)
            k = int(np.argmin(key))
            use = n2 - n  # GPUs; with a fleet budget, GPUs and dollars both
            if fleet.budget is not None:
                dh = n2 * float(fleet.price[t2][k]) - n * float(fleet.price[t][i])
                use = (n2 - n) / gpus_all + max(dh, 0.0) / fleet.budget
            gain = (value(job, float(it[k])) - value(job, it0)) / max(use, 1e-12) \
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
        dh = n2 * float(fleet.price[t2][k]) - n * float(fleet.price[t][i])
        if fleet.free[t2][k] >= n2 and within_budget(fleet.spend, dh, fleet.budget):
            fleet.free[t2][k] -= n2
            fleet.spend += dh
            placed[name] = (k, t2, n2)
        else:  # others took those GPUs (or that budget) meanwhile: look again
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
            if not _site_options(fleet, jq, t, n2)[3][i]:  # the rule at the grown size
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
                it, h, tot, ok = _site_options(fleet, job, t2, m)
                ok = ok & (fleet.free[t2] >= m)
                if t2 == t:
                    ok[i] = False
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


def _at(fleet: _Fleet, job: Job, i: int, t: str, n: int) -> tuple[float, float, float]:
    """``_site_vectors`` at one site: (iteration s, hours, total $) of n GPUs of type t at i."""
    m = fleet.model
    left = job.iterations - job.done_iterations
    it = step_single_s(m, job, t, n)
    read_usd = 0.0
    if job.dataset is not None and m.datasets[job.dataset].size_gb > 0:
        beta, usd = fleet.read(job.dataset)
        gb = m.datasets[job.dataset].size_gb * (1 - job.done_iterations / job.iterations)
        if np.isfinite(beta[i]):
            it = max(it, gb * 1e9 / max(1, left) / float(beta[i]))
            read_usd = gb * float(usd[i])
    hours = left * it / 3600
    return it, hours, n * float(fleet.price[t][i]) * hours + read_usd



RELOCATE_MAX_JOBS = 2000  # like polish: the pass costs jobs x pools per round


class _Pools:
    """Jobs per pool (site x GPU type) with each pool's exact best sizes (``_dp``): the state
    of ``relocate``. ``best[(i, t)][c]`` = the best value of the pool's jobs within c GPUs,
    every job at one of its sizes (-inf when c cannot hold their minimums)."""

    def __init__(self, fleet: _Fleet, placed: dict, jobs: dict[str, Job],
                 options: dict[str, JobOptions], mu: float = 0.0):
        self.fleet, self.placed, self.jobs, self.options = fleet, placed, jobs, options
        self.mu = mu  # the price of a $/h of the fleet budget: values are v - mu * $/h
        self.members: dict[tuple[int, str], list[str]] = {}
        for name, (i, t, n) in placed.items():
            self.members.setdefault((i, t), []).append(name)
        self.cap = {(i, t): int(fleet.free[t][i]) for t in fleet.free
                    for i in range(len(fleet.free[t]))}
        for name, (i, t, n) in placed.items():
            self.cap[(i, t)] += n
        self.tables: dict[str, dict[str, tuple[list[int], np.ndarray]]] = {}
        self.best: dict[tuple[int, str], np.ndarray] = {}
        self.version: dict[tuple[int, str], int] = {}
        self._without: dict[str, tuple[int, float]] = {}
        self._items: dict[tuple[str, int, str], tuple[list[int], list[float]]] = {}
        self.rows = {t: np.full((len(fleet.free[t]), max(self.cap[(i, t)] for i in
                                 range(len(fleet.free[t]))) + 1), -np.inf)
                     for t in fleet.free if len(fleet.free[t])}
        for key in self.cap:
            self.refresh(key, apply=False)

    def table(self, name: str) -> dict[str, tuple[list[int], np.ndarray]]:
        """Per GPU type: (sizes, value per size and site; -inf where the size misses the
        deadline or budget or exceeds the site's pool)."""
        if name not in self.tables:
            job, fl = self.jobs[name], self.fleet
            ref = self.options[name].ref_speed
            out = {}
            for t in job.gpu_types:
                if t not in fl.cap:
                    continue
                sizes = gpu_sizes(job, int(fl.max_cap[t]))
                if not sizes:
                    continue
                vals = np.empty((len(sizes), len(fl.cap[t])))
                for k, n in enumerate(sizes):
                    it, _, _, ok = _site_options(fl, job, t, n)
                    vals[k] = np.where(ok, job.priority * (PLACED + 1 / it / ref)
                                       - self.mu * n * fl.price[t], -np.inf)
                out[t] = (sizes, vals)
            self.tables[name] = out
        return self.tables[name]

    def items(self, name: str, i: int, t: str) -> tuple[list[int], list[float]]:
        """The sizes job ``name`` may take in pool (i, t), with values; its current size
        there always among them (a DP can always keep the plan as it is)."""
        got = self._items.get((name, i, t))
        if got is None:
            sizes, vals = self.table(name).get(t, ([], None))
            ns = [n for k, n in enumerate(sizes) if np.isfinite(vals[k, i])]
            vs = [float(vals[k, i]) for k, n in enumerate(sizes) if np.isfinite(vals[k, i])]
            got = self._items[(name, i, t)] = (ns, vs)
        pi, pt, pn = self.placed.get(name, (None, None, None))
        if (pi, pt) == (i, t) and pn not in got[0]:
            job = self.jobs[name]
            it = _at(self.fleet, job, i, t, pn)[0]
            return [*got[0], pn], [*got[1], job.priority * (PLACED + 1 / it /
                                                          self.options[name].ref_speed)
                                   - self.mu * pn * float(self.fleet.price[t][i])]
        return got

    def dp(self, key: tuple[int, str], names: list[str], track: bool = False):
        i, t = key
        C = self.cap[key]
        best = np.zeros(C + 1)
        args = []
        stack = np.empty((4, C + 1))
        for q in names:
            sizes, vals = self.items(q, i, t)
            K = len(sizes)
            if K > len(stack):
                stack = np.empty((K, C + 1))
            st = stack[:max(K, 1)]
            st.fill(-np.inf)
            for k, (n, v) in enumerate(zip(sizes, vals)):
                if n <= C:
                    st[k, n:] = best[:C + 1 - n] + v
            if track:
                args.append((q, sizes, st.argmax(axis=0)))
            best = st.max(axis=0)
        return best, args

    def refresh(self, key: tuple[int, str], apply: bool = True) -> None:
        """Re-solve one pool's sizes exactly; with ``apply``, give its jobs those sizes."""
        names = self.members.get(key, [])
        best, args = self.dp(key, names, track=apply)
        self.best[key] = best
        self.version[key] = self.version.get(key, 0) + 1
        i, t = key
        row = self.rows[t][i]
        row[:] = -np.inf
        row[:len(best)] = best
        if not apply or not names:
            return
        c = self.cap[key]
        if not np.isfinite(best[c]):  # never (every job may keep its size): keep the plan
            return
        used = 0
        for q, sizes, arg in reversed(args):
            n = sizes[int(arg[c])]
            self.placed[q] = (i, t, n)
            c -= n
            used += n
        self.fleet.free[t][i] = self.cap[key] - used

    def without(self, name: str) -> float:
        """The best value of the other jobs of ``name``'s pool, in the whole pool."""
        i, t, _ = self.placed[name]
        key = (i, t)
        got = self._without.get(name)
        if got is None or got[0] != self.version[key]:
            best, _ = self.dp(key, [q for q in self.members[key] if q != name])
            got = (self.version[key], float(best[self.cap[key]]))
            self._without[name] = got
        return got[1]

    def best_move(self, name: str, exclude: tuple[int, str] | None):
        """(gain for the pools it joins, pool) of the best pool for ``name`` but ``exclude``:
        its value there plus the best of that pool's jobs in what is left, minus theirs now."""
        best = None
        for t, (sizes, vals) in self.table(name).items():
            rows = self.rows[t]
            S = rows.shape[0]
            caps = np.array([self.cap[(i, t)] for i in range(S)])
            now = rows[np.arange(S), caps]
            top = np.full(S, -np.inf)
            for k, n in enumerate(sizes):
                idx = caps - n
                got = np.where(idx >= 0, rows[np.arange(S), np.maximum(idx, 0)], -np.inf)
                top = np.maximum(top, got + vals[k])
            gain = top - now
            if exclude is not None and exclude[1] == t:
                gain[exclude[0]] = -np.inf
            s = int(np.argmax(gain))
            if np.isfinite(gain[s]) and (best is None or gain[s] > best[0]):
                best = (float(gain[s]), (s, t))
        return best

    def floor(self, name: str, key: tuple[int, str]) -> float:
        """$/h of ``name``'s smallest size in pool ``key``: the least it can spend there."""
        ns = self.items(name, *key)[0]
        return min(ns) * float(self.fleet.price[key[1]][key[0]]) if ns else np.inf

    def move(self, name: str, to: tuple[int, str]) -> None:
        frm = None
        if name in self.placed:
            i, t, _ = self.placed.pop(name)  # sized again by the refresh of its new pool
            frm = (i, t)
            self.members[frm].remove(name)
        self.members.setdefault(to, []).append(name)
        if frm is not None:
            self.refresh(frm)
        self.refresh(to)


def relocate(fleet: _Fleet, objective: str, placed: dict, jobs: dict[str, Job],
             options: dict[str, JobOptions], waiting: list[str] = (), passes: int = 3,
             mu: float = 0.0) -> None:
    """Local improvement (throughput only): sizes exact per pool, and jobs moved between pools.

    Each pool's sizes are chosen together by dynamic programming over its GPUs (a
    multiple-choice knapsack: every job takes one of its sizes that meets its deadline and
    budget; value = its throughput term): one size step at a time (``grow``) stops where two
    jobs would have to trade sizes. Then, job by job, the best other pool for it: its value
    there plus the best re-sizing of that pool's jobs in what is left, plus the best re-sizing
    of the jobs it leaves behind, against both pools now; a move is made when it gains. Jobs
    that wait (``waiting``, single-site jobs nothing placed) are tried first, highest priority
    first, in any pool that can still hold them with its jobs at their minimums: serving comes
    before the objective. Up to ``passes`` rounds, until no move gains."""
    if objective != "throughput" or not 1 < len(placed) + len(waiting) <= RELOCATE_MAX_JOBS:
        return  # one job (an arrival): grow has sized and placed it exactly already
    pools = _Pools(fleet, placed, jobs, options, mu)
    # with a fleet budget: $/h the plan spends at the least (every job at its smallest size
    # where it is), kept within what is left, so that shrinking jobs can always repair it
    left = None if fleet.budget is None else fleet.budget - (
        fleet.spend - sum(n * float(fleet.price[t][i]) for i, t, n in placed.values()))
    least = sum(pools.floor(q, (i, t)) for q, (i, t, _) in placed.items())

    def affords(add: float) -> bool:
        return left is None or within_budget(least, add, left)

    for key in list(pools.members):
        pools.refresh(key)
    for name in sorted(waiting, key=lambda n: -jobs[n].priority):
        mv = pools.best_move(name, None)
        if mv is not None and affords(pools.floor(name, mv[1])):
            least += pools.floor(name, mv[1])
            pools.move(name, mv[1])
    for _ in range(passes):
        moved = False
        for name in list(placed):
            i, t, _ = placed[name]
            mv = pools.best_move(name, (i, t))
            if mv is None:
                continue
            gain = mv[0] + pools.without(name) - float(pools.best[(i, t)][pools.cap[(i, t)]])
            add = pools.floor(name, mv[1]) - pools.floor(name, (i, t))
            if gain > 1e-9 * max(1.0, jobs[name].priority) and affords(add):
                least += add
                pools.move(name, mv[1])
                moved = True
        if not moved:
            break
