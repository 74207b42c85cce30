"""A proven upper bound on the throughput objective of a plan: the LP relaxation over every
candidate the estimate builds (none pruned), by column generation, each round certified by
its Lagrangian dual. What the benchmark's ``gap_to_bound`` is measured against.

The decision space is the planners' own: each job j takes at most one candidate c of C_j,
every candidate that meets the rule (geo/feasibility.py): single-site, every site s and GPU type
g it allows, n GPUs for n in ``gpu_sizes`` (min, max, powers of two between: the sizes every
method chooses from); multi-site, every candidate ``options.generate`` builds (and, for a job
with none, those of the exact search). A plan with other sizes is outside it (no method makes
one). Symbols as in the code:
  v_c     the objective term of c, p_j (1 + speed_c / ideal_j) (``plan.objective_value``)
  n[c,q]  GPUs of c in pool q (a site x type); cap[q] the pool's GPUs
  h_c     $/h of c; B the fleet budget (when the spec has one)
Primal (LP relaxation):
  max sum_{j,c} v_c x[j,c]  s.t.  sum_c x[j,c] <= 1 (all j),  sum_{j,c} n[c,q] x[j,c] <= cap[q]
  (all q),  sum_{j,c} h_c x[j,c] <= B,  x >= 0.
Dual bound, for any lambda >= 0 (per pool) and mu >= 0 (budget):
  U(lambda, mu) = sum_j max(0, max_{c in C_j} v_c - lambda . n[c] - mu h_c)
                  + lambda . cap + mu B  >=  LP optimum  >=  any plan's objective
(weak duality: a plan's x is feasible, so each of its terms is at most the max).
Column generation: solve the LP on a few columns per job (GLOP); take its row duals as
(lambda, mu); price every column at once (numpy over sites and jobs): U is a bound at every
round (the smallest is kept), and each job's best column joins when it beats the job's
columns so far. It stops when none joins (then U = the LP optimum) or after ROUNDS.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from geo.baselines import _Fleet, _site_options
from geo.candidates import PLACED, Model, gpu_sizes, ideal_speed
from geo.feasibility import meets
from geo.options import exact_candidates, generate

log = logging.getLogger("geo.bound")

ROUNDS = 60
TOL = 1e-9
SHORT_PENALTY = 10.0  # per unit of priority the restricted LP leaves unserved (v_c <= 2 p_j)


@dataclass
class Bound:
    value: float  # the proven upper bound (the smallest U seen)
    any_served: float  # a bound over every plan, whatever it serves (U with sigma = 0)
    lp: float  # the last restricted LP's optimum (a lower estimate of the LP optimum)
    optimal: bool  # column generation ended: value is the LP optimum itself
    rounds: int
    columns: int  # columns the LP held at the end
    candidates: int  # every candidate priced
    seconds: float
    levels: dict = None  # served priority -> bound there (filled by the benchmark)
    # the last restricted LP's row duals (lambda per pool, in pool order type x sites + site;
    # mu for the fleet budget; sigma for the serve-first row), None if no LP was solved: the
    # prices ``decomposed``'s priced packing pass values candidates at
    duals: tuple[np.ndarray, float, float] | None = None


class _Columns:
    """Every candidate as arrays. Single-site, per (type, k-th size) group: values V[j, s]
    (-inf where the rule or the pool rules it out), GPUs N[j], $/h per GPU by site. Multi-site:
    one row per candidate (job, value, $/h, pools and GPUs padded with pool -1)."""

    def __init__(self, model: Model):
        spec = model.spec
        self.model = model
        fleet = _Fleet(model)
        self.fleet = fleet
        self.types = sorted(fleet.cap)
        S = len(model.sites)
        self.S = S
        self.pool = {(t, i): k * S + i for k, t in enumerate(self.types) for i in range(S)}
        self.cap = np.concatenate([fleet.cap[t] for t in self.types]).astype(float)
        jobs = spec.jobs
        self.J = len(jobs)
        self.groups = []  # (type index, V (J x S), N (J,))
        width = 0
        rows: dict[tuple[int, int], tuple[list, list, list]] = {}
        for j, job in enumerate(jobs):
            ref = ideal_speed(model, job)
            left = job.iterations - job.done_iterations
            if "single-site" in job.modes:
                for ti, t in enumerate(self.types):
                    if t not in job.gpu_types:
                        continue
                    for k, n in enumerate(gpu_sizes(job, int(fleet.max_cap[t]))):
                        it, hours, total, ok = _site_options(fleet, job, t, n)
                        speed = left / np.maximum(hours * 3600, 1e-300) if left else 1 / it
                        v = np.where(ok, job.priority * (PLACED + speed / ref), -np.inf)
                        r = rows.setdefault((ti, k), ([], [], []))
                        r[0].append(j)
                        r[1].append(v)
                        r[2].append(n)
                        width = max(width, k + 1)
        self.group_of: dict[tuple[int, int], int] = {}  # (type index, n) -> group
        for (ti, k), (js, vs, ns) in sorted(rows.items()):
            for j, n in zip(js, ns):
                self.group_of[(j, ti, n)] = len(self.groups)
            V = np.full((self.J, S), -np.inf)
            N = np.zeros(self.J)
            V[js] = np.array(vs)
            N[js] = ns
            self.groups.append((ti, V, N))
        self.price = {ti: fleet.price[t] for ti, t in enumerate(self.types)}
        # multi-site candidates, explicit
        mj, mv, mh, mp, mn = [], [], [], [], []
        cap = {k: v[0] for k, v in model.pools.items()}
        B = spec.planner.budget_usd_per_hour
        self.multi_count = 0
        for j, job in enumerate(jobs):
            if not any(m in job.modes for m in ("data-parallel", "local-sgd", "pipeline")):
                continue
            ref = ideal_speed(model, job)
            cands = [c for c in generate(model, job, cap) if len(c.alloc) > 1]
            ok = [c for c in cands if meets(job, c.finish_h, c.total_usd, c.cost_per_hour, B)]
            if not ok and not self._single_ok(j):
                ok = [c for c in exact_candidates(model, job, cap) if len(c.alloc) > 1 and
                      meets(job, c.finish_h, c.total_usd, c.cost_per_hour, B)]
            for c in ok:
                mj.append(j)
                mv.append(job.priority * (PLACED + c.speed / ref))
                mh.append(c.cost_per_hour)
                mp.append([self.pool[(c.gpu_type, model.sites.index(s))] for s, _ in c.alloc])
                mn.append([n for _, n in c.alloc])
        K = max((len(p) for p in mp), default=1)
        self.mj = np.array(mj, int)
        self.mv = np.array(mv, float)
        self.mh = np.array(mh, float)
        self.mp = np.full((len(mj), K), -1, int)
        self.mn = np.zeros((len(mj), K))
        for r, (p, n) in enumerate(zip(mp, mn)):
            self.mp[r, :len(p)] = p
            self.mn[r, :len(n)] = n
        self.count = sum(int(np.isfinite(V).sum()) for _, V, _ in self.groups) + len(mj)

    def smallest(self) -> list:
        """Per job, a column with its fewest GPUs (the first size group of its best site)."""
        out: list = [None] * self.J
        fewest = np.full(self.J, np.inf)
        for g, (ti, V, N) in enumerate(self.groups):
            ok = np.isfinite(V)
            s = np.argmax(np.where(ok, V, -np.inf), axis=1)
            for j in np.flatnonzero(ok.any(axis=1) & (N < fewest)):
                fewest[j] = N[j]
                out[j] = ("s", g, int(s[j]))
        for r in range(len(self.mj)):
            j = int(self.mj[r])
            n = float(self.mn[r].sum())
            if n < fewest[j]:
                fewest[j] = n
                out[j] = ("m", r)
        return out

    def of_plan(self, plan) -> list:
        """Per job, the column of where ``plan`` runs it (None if it waits or is not one)."""
        out: list = [None] * self.J
        names = {j.name: k for k, j in enumerate(self.model.spec.jobs)}
        types = {t: k for k, t in enumerate(self.types)}
        for jp in plan.jobs:
            j = names.get(jp.name)
            if j is None or not jp.running or jp.gpu_type not in types:
                continue
            ti = types[jp.gpu_type]
            if len(jp.sites) == 1:
                (site, n), = jp.sites.items()
                g = self.group_of.get((j, ti, n))
                i = self.model.sites.index(site)
                if g is not None and np.isfinite(self.groups[g][1][j, i]):
                    out[j] = ("s", g, i)
                continue
            want = sorted((self.pool[(jp.gpu_type, self.model.sites.index(s))], n)
                          for s, n in jp.sites.items())
            for r in np.flatnonzero(self.mj == j):
                got = sorted((int(p), int(n)) for p, n in zip(self.mp[r], self.mn[r]) if p >= 0)
                if got == want:
                    out[j] = ("m", int(r))
                    break
        return out

    def _single_ok(self, j: int) -> bool:
        return any(np.isfinite(V[j]).any() for _, V, _ in self.groups)

    def price_all(self, lam: np.ndarray, mu: float, bonus: np.ndarray):
        """Per job, its best reduced value v + bonus_j - lambda n - mu h over every column
        (bonus: sigma p_j of the serve-first row), and which column: ('s', group, site) or
        ('m', row)."""
        best = np.zeros(self.J)  # 0: taking nothing
        arg: list = [None] * self.J
        S = self.S
        for g, (ti, V, N) in enumerate(self.groups):
            lam_t = lam[ti * S:(ti + 1) * S]
            red = V + bonus[:, None] - N[:, None] * (lam_t[None, :] +
                                                      mu * self.price[ti][None, :])
            s = np.argmax(red, axis=1)
            val = red[np.arange(self.J), s]
            better = np.flatnonzero(val > best + TOL)
            best[better] = val[better]
            for j in better:
                arg[j] = ("s", g, int(s[j]))
        if len(self.mj):
            lam_pad = np.append(lam, 0.0)
            red = self.mv + bonus[self.mj] - (lam_pad[self.mp] * self.mn).sum(axis=1) - \
                mu * self.mh
            order = np.lexsort((-red, self.mj))  # by job, best first
            first = order[np.unique(self.mj[order], return_index=True)[1]]
            for r in first:
                j = int(self.mj[r])
                if red[r] > best[j] + TOL:
                    best[j] = red[r]
                    arg[j] = ("m", int(r))
        return best, arg

    def column(self, key) -> tuple[int, float, list[tuple[int, float]], float]:
        """(job, value, [(pool, GPUs)], $/h) of a column key from ``price_all``."""
        if key[0] == "s":
            _, g, s = key
            ti, V, N = self.groups[g]
            return -1, 0.0, [(ti * self.S + s, 0.0)], 0.0  # job filled by the caller
        r = key[1]
        pools = [(int(p), float(n)) for p, n in zip(self.mp[r], self.mn[r]) if p >= 0]
        return int(self.mj[r]), float(self.mv[r]), pools, float(self.mh[r])


def columns(model: Model) -> _Columns:
    """Every candidate of ``model.spec`` priced once, kept on the model for that spec (the
    geo service gives a kept Model a new spec): every ``throughput_bound`` of one model and
    spec (decomposed's step 4, CP-SAT's warm start, the benchmark's bound) shares them."""
    spec, cols = getattr(model, "_bound_columns", (None, None))
    if spec is not model.spec:
        cols = _Columns(model)
        model._bound_columns = (model.spec, cols)
    return cols


def throughput_bound(model: Model, *, rounds: int = ROUNDS, served: float | None = None,
                     time_limit_s: float | None = None, cols: _Columns | None = None,
                     plans: tuple = ()) -> Bound:
    """The bound of the module docstring for ``model.spec`` (throughput objective).
    ``served``: with it, the bound holds over the plans that start jobs of at least that
    total priority (the serve-first row, dual sigma). ``time_limit_s``: stop after the round
    that passes it (the bound holds, but may be above the LP optimum: ``optimal`` False).
    ``plans``: plans whose columns start the LP (they change how fast it converges, not the
    bound)."""
    from ortools.linear_solver import pywraplp

    t0 = time.perf_counter()
    cols = cols or columns(model)
    B = model.spec.planner.budget_usd_per_hour
    Q = len(cols.cap)
    lp = pywraplp.Solver.CreateSolver("GLOP")
    conv = [lp.Constraint(0.0, 1.0) for _ in range(cols.J)]
    caprow = [lp.Constraint(0.0, float(c)) for c in cols.cap]
    budrow = lp.Constraint(0.0, float(B)) if B is not None else None
    pri = np.array([j.priority for j in model.spec.jobs], float)
    W = None if served is None else served * (1 - 1e-9)
    serverow = lp.Constraint(W, lp.infinity()) if W is not None else None
    if serverow is not None:  # soft in the LP (a few columns may not serve W yet): only its
        short = lp.NumVar(0.0, lp.infinity(), "short")  # duals are used, and U is valid for
        serverow.SetCoefficient(short, 1.0)  # any sigma >= 0
        lp.Objective().SetCoefficient(short, -SHORT_PENALTY)
    obj = lp.Objective()
    obj.SetMaximization()
    have: set = set()
    held: dict[str, list] = {"s": [], "m": []}  # the LP's columns, for ``_restricted``
    restricted_best = np.zeros(cols.J)
    nvars = 0

    def add(j: int, key) -> None:
        nonlocal nvars
        if (j, key) in have:
            return
        have.add((j, key))
        if key[0] == "s":
            _, g, s = key
            held["s"].append((g, j, s))
            ti, V, N = cols.groups[g]
            v, pools, h = float(V[j, s]), [(ti * cols.S + s, float(N[j]))], \
                float(N[j] * cols.price[ti][s])
        else:
            _, v, pools, h = cols.column(key)
            held["m"].append(key[1])
        x = lp.NumVar(0.0, 1.0, f"x{nvars}")
        nvars += 1
        conv[j].SetCoefficient(x, 1.0)
        if serverow is not None:
            serverow.SetCoefficient(x, float(pri[j]))
        for q, n in pools:
            caprow[q].SetCoefficient(x, n)
        if budrow is not None:
            budrow.SetCoefficient(x, h)
        obj.SetCoefficient(x, v)

    lam, mu, sigma = np.zeros(Q), 0.0, 0.0
    best_u, best_any, lp_val, done, k = np.inf, np.inf, 0.0, False, 0
    solved = False
    for k in range(1, rounds + 1):
        red, arg = cols.price_all(lam, mu, sigma * pri)
        base = float(lam @ cols.cap + (mu * B if B is not None else 0.0))
        u = float(red.sum()) + base - (sigma * W if W is not None else 0.0)
        best_u = min(best_u, u)
        if sigma == 0.0:
            best_any = min(best_any, u + (sigma * W if W is not None else 0.0))
        else:  # the same prices without the serve-first row: a bound over every plan
            best_any = min(best_any, float(cols.price_all(lam, mu, 0.0 * pri)[0].sum()) + base)
        # the restricted columns' best at these prices: a job's column joins when it beats it
        joined = 0
        if k == 1:  # each job's smallest column too (the restricted LP can serve them
            # all), and the columns of ``plans`` (a good start: fewer rounds)
            for keys in [cols.smallest(), *(cols.of_plan(p) for p in plans)]:
                for j, key in enumerate(keys):
                    if key is not None:
                        add(j, key)
        for j in range(cols.J):
            if arg[j] is not None and (k == 1 or red[j] > restricted_best[j] + 1e-7 *
                                       max(1.0, abs(red[j]))):
                add(j, arg[j])
                joined += 1
        if joined == 0:
            done = True
            break
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            break  # U above is a bound already; the LP optimum is not proven
        status = lp.Solve()
        if status != pywraplp.Solver.OPTIMAL:
            log.warning("geo: bound LP status %s at round %d", status, k)
            break
        lp_val = obj.Value()
        solved = True
        lam = np.maximum(0.0, np.array([c.dual_value() for c in caprow]))
        mu = max(0.0, budrow.dual_value()) if budrow is not None else 0.0
        sigma = max(0.0, -serverow.dual_value()) if serverow is not None else 0.0
        # the restricted columns' best reduced value per job at the new prices
        restricted_best = _restricted(cols, held, lam, mu, sigma * pri)
    log.info("geo: bound %.4f (LP %.4f, %s) after %d rounds, %d of %d columns, %.2fs",
             best_u, lp_val, "optimal" if done else "stopped", k, nvars, cols.count,
             time.perf_counter() - t0)
    return Bound(best_u, max(best_any, best_u), lp_val, done, k, nvars, cols.count,
                 time.perf_counter() - t0, duals=(lam, mu, sigma) if solved else None)


def _restricted(cols: _Columns, have: dict, lam: np.ndarray, mu: float, bonus: np.ndarray
                ) -> np.ndarray:
    """Per job, the best reduced value among the columns the LP holds (0: none)."""
    out = np.zeros(cols.J)
    if have["s"]:
        g, j, s = (np.array(x) for x in zip(*have["s"]))
        vals = np.empty(len(g))
        for gi in np.unique(g):
            ti, V, N = cols.groups[gi]
            sel = g == gi
            jj, ss = j[sel], s[sel]
            vals[sel] = V[jj, ss] - N[jj] * (lam[ti * cols.S + ss] + mu * cols.price[ti][ss])
        np.maximum.at(out, j, vals + bonus[j])
    if have["m"]:
        rows = np.array(have["m"])
        lam_pad = np.append(lam, 0.0)
        vals = cols.mv[rows] - (lam_pad[cols.mp[rows]] * cols.mn[rows]).sum(axis=1) - \
            mu * cols.mh[rows]
        jj = cols.mj[rows]
        np.maximum.at(out, jj, vals + bonus[jj])
    return out
