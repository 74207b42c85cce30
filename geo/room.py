"""The re-plan's moves on the jobs it keeps (geo/replan.py): making room for a displaced job by
shrinking others, moving a kept job whose deadline or budget an event broke, and moving a kept
job when moving pays. Every move keeps the feasibility rule (geo/feasibility.py): sizes,
deadlines, budgets per job, capacity and the fleet budget.

State (``Room``): ``kept`` job -> its candidate now, ``free`` GPUs per pool, ``spend`` $/h of
the jobs that run, the ``diff`` the re-plan reports; all changed in place.
"""
from __future__ import annotations

import logging

from geo.candidates import Candidate, Model, gpu_sizes, ideal_speed, score, single_site
from geo.feasibility import fleet_budget, job_violations, may_run, within_budget
from geo.options import job_options
from geo.protocol import Change
from geo.spec import Job

log = logging.getLogger("geo.room")


def alloc_str(c: Candidate) -> str:
    return ", ".join(f"{s}:{n}x{c.gpu_type}" for s, n in c.alloc)


class Room:
    def __init__(self, model: Model, kept: dict[str, Candidate],
                 free: dict[tuple[str, str], int], spend: float, diff: list[Change],
                 by_name: dict[str, Job]):
        self.model, self.kept, self.free, self.spend = model, kept, free, spend
        self.diff, self.by_name = diff, by_name
        self.budget = fleet_budget(model)

    def _take(self, c: Candidate) -> None:
        for s, n in c.alloc:
            self.free[(s, c.gpu_type)] = self.free.get((s, c.gpu_type), 0) - n
        self.spend += c.cost_per_hour

    def _give(self, c: Candidate) -> None:
        for s, n in c.alloc:
            self.free[(s, c.gpu_type)] = self.free.get((s, c.gpu_type), 0) + n
        self.spend -= c.cost_per_hour

    def _smaller(self, name: str, need: int) -> Candidate | None:
        """Kept single-site job ``name`` at the largest size below its own that gives up to
        ``need`` GPUs and still meets the rule (else the smallest that meets it)."""
        job, c = self.by_name[name], self.kept[name]
        (s, cur), = c.alloc
        best = None
        for m in range(cur - 1, job.min_gpus - 1, -1):
            d = single_site(self.model, job, s, c.gpu_type, m)
            if may_run(job, d, self.budget):
                best = d
                if cur - m >= need:
                    break
        return best

    def make_room(self, job: Job) -> Candidate | None:
        """A displaced job with no free place: shrink kept single-site jobs of no higher
        priority, in one pool, just enough to fit the job at its smallest size that meets the
        rule; every shrunk job still meets it, and so does the fleet budget. Shrinking restarts
        those jobs in place (no WAN move); the diff says so. Only for a job that may run in
        one site. Returns the job's candidate, or None (it waits)."""
        if "single-site" not in job.modes:
            return None
        by_pool: dict[tuple[str, str], list[str]] = {}
        for n, c in self.kept.items():
            if c.gpu_type not in job.gpu_types or len(c.alloc) != 1:
                continue
            donor = self.by_name[n]
            if donor.priority <= job.priority and c.gpus > donor.min_gpus and \
                    may_run(donor, c, self.budget):
                by_pool.setdefault((c.alloc[0][0], c.gpu_type), []).append(n)
        best = None  # (GPUs taken, site, type, candidate, {donor: smaller candidate})
        for (s, t), donors in sorted(by_pool.items()):
            cap = self.model.capacity(s, t)
            for n in sorted({job.min_gpus, *gpu_sizes(job, cap)}):
                if n > cap:
                    continue
                c = single_site(self.model, job, s, t, n)
                if not may_run(job, c, self.budget):
                    continue
                need = n - self.free.get((s, t), 0)
                if need <= 0 or (best is not None and need >= best[0]):
                    break
                shrink, got = {}, 0
                for d in sorted(donors, key=lambda d: -self.kept[d].gpus):
                    if got >= need:
                        break
                    sm = self._smaller(d, need - got)
                    if sm is not None:
                        shrink[d] = sm
                        got += self.kept[d].gpus - sm.gpus
                if got < need:
                    continue
                dh = c.cost_per_hour + sum(sm.cost_per_hour - self.kept[d].cost_per_hour
                                           for d, sm in shrink.items())
                if within_budget(self.spend, dh, self.budget):
                    best = (need, s, t, c, shrink)
                    break  # the smallest size of this pool that works
        if best is None:
            return None
        _, s, t, c, shrink = best
        for d, sm in shrink.items():
            old = self.kept[d]
            self._give(old)
            self._take(sm)
            self.kept[d] = sm
            self.diff.append(Change(d, "resized", alloc_str(old), alloc_str(sm),
                                    f"gives {old.gpus - sm.gpus} GPUs to displaced job "
                                    f"{job.name} (its deadline and budget still hold)"))
        self._take(c)
        return c

    def _best_move(self, job: Job, stay: Candidate, objective: str) -> Candidate | None:
        """The best candidate of ``job`` in the free GPUs plus its own, within the fleet
        budget after it leaves ``stay``; None if none meets the rule."""
        room = dict(self.free)
        for s, n in stay.alloc:
            room[(s, stay.gpu_type)] = room.get((s, stay.gpu_type), 0) + n
        o = job_options(self.model, job, objective, capacity=room, max_candidates=1000,
                        exact=False)
        ok = [c for c in o.candidates if within_budget(self.spend - stay.cost_per_hour,
                                                       c.cost_per_hour, self.budget)]
        if not ok:
            return None
        best = max(ok, key=lambda c: c.score)
        best.score = score(best, objective, o.ref_speed, job.priority)
        return best

    def keep_promises(self, objective: str, reason: str) -> dict[str, str]:
        """Kept jobs whose deadline or budget the event broke where they run (a price rise)
        move to the best place that keeps them; those with none stay, and the returned note
        says why (the plan reports them at risk)."""
        notes = {}
        for name in list(self.kept):
            stay, job = self.kept[name], self.by_name[name]
            broken = [v for v in job_violations(job, stay, self.budget)
                      if v.constraint in ("deadline", "budget")]
            if not broken:
                continue
            best = self._best_move(job, stay, objective)
            if best is None:
                notes[name] = ("no free GPUs keep it: it keeps running where it is "
                               f"(after {reason})")
                continue
            self._give(stay)
            self._take(best)
            self.kept[name] = best
            self.diff.append(Change(name, "moved", alloc_str(stay), alloc_str(best),
                                    f"{reason}: its {broken[0].constraint} no longer held "
                                    f"there ({broken[0].reason}); moved to keep it"))
        return notes

    def improve(self, objective: str, reason: str) -> None:
        """Move a kept job when its best candidate, migration penalty included, beats
        staying (and keeps the rule, the fleet budget included)."""
        for name in list(self.kept):
            stay, job = self.kept[name], self.by_name[name]
            best = self._best_move(job, stay, objective)
            if best is None or not best.moved:
                continue  # staying (or a resize in place) is best
            stay_score = score(stay, objective, ideal_speed(self.model, job), job.priority)
            if best.score <= stay_score:
                continue
            self._give(stay)
            self._take(best)
            self.kept[name] = best
            gain = {"throughput": f"speed x{best.speed / stay.speed:.2f}",
                    "balance": f"speed x{best.speed / stay.speed:.2f}",
                    "cost": f"saves ${stay.total_usd - best.total_usd:,.0f}",
                    "makespan": f"finishes {stay.finish_h - best.finish_h:.2f} h earlier"
                    }[objective]
            self.diff.append(Change(name, "moved", alloc_str(stay), alloc_str(best),
                                    f"{reason}: moving pays ({gain} after "
                                    f"{best.migration_s:.0f} s migration)"))
