"""Scheduling policies: pluggable objects that order the ready queue.

A policy gives each queued job a key when it is (re)queued; smaller keys go first. Keys depend
only on the job and on quantities shared by all jobs, so a heap orders them in O(log n):
least slack ``deadline - now - remaining`` orders the same as ``deadline - remaining``.
"""
from __future__ import annotations

from .jobs import Job
from .queues import FairQueue, HeapQueue

LATE_PENALTY = 1e12  # flagged (hopeless) jobs sort after every job that can still make it


class Policy:
    name = "base"
    checks_slack = False  # whether the core asks ``hopeless`` before dispatching the head

    def key(self, job: Job, now: float) -> float:
        raise NotImplementedError

    def make_queue(self):
        return HeapQueue(self.key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Fifo(Policy):
    """First come, first served (by arrival time; ties by submission order)."""
    name = "fifo"

    def key(self, job, now):
        return job.arrival


class Srpt(Policy):
    """Shortest estimated remaining processing time first (Paella's best policy)."""
    name = "srpt"

    def key(self, job, now):
        return job.remaining_s()


class Edf(Policy):
    """Earliest deadline (arrival + SLO) first."""
    name = "edf"

    def key(self, job, now):
        return job.deadline


class Paella(Srpt):
    """SRPT with Paella's deficit-counter fairness threshold."""
    name = "paella"

    def __init__(self, threshold: float = 8.0):
        self.threshold = threshold

    def make_queue(self):
        return FairQueue(self.key, self.threshold)


class Slo(Policy):
    """Least slack first; a job that can no longer meet its SLO is shed or flagged.

    Flagged jobs are not dropped: they move behind every job that can still make its SLO,
    so one hopeless job cannot drag the others past their deadlines (the EDF domino effect).
    """
    name = "slo"
    checks_slack = True

    def key(self, job, now):
        return job.deadline - job.remaining_s() + (LATE_PENALTY if job.late else 0.0)

    @staticmethod
    def hopeless(job: Job, now: float) -> bool:
        return now + job.remaining_s() > job.deadline


POLICIES = {p.name: p for p in (Fifo, Srpt, Edf, Paella, Slo)}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}: choose one of {', '.join(POLICIES)}") from None
