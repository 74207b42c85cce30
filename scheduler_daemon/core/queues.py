"""Ready queues: which queued job's next kernel goes first. O(log n) per operation.

Entries are removed lazily: re-pushing or discarding a job bumps ``job.qseq`` and the old heap
entry is skipped when it surfaces.
"""
from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Callable, Iterator

from scheduler_daemon.core.jobs import Job

KeyFn = Callable[[Job, float], float]


class ReadyQueue:
    """What the core needs of a ready queue."""

    def __len__(self) -> int:
        raise NotImplementedError

    def push(self, job: Job, now: float) -> None:
        raise NotImplementedError

    def peek(self) -> Job | None:
        raise NotImplementedError

    def pop(self) -> Job | None:
        raise NotImplementedError

    def discard(self, job: Job) -> None:
        raise NotImplementedError

    def jobs(self) -> Iterator[Job]:
        raise NotImplementedError


class HeapQueue(ReadyQueue):
    def __init__(self, key: KeyFn):
        self._key = key
        self._heap: list[tuple[float, int, int, Job]] = []
        self._counter = 0
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, job: Job, now: float) -> None:
        """Queue ``job``, or re-key it if it is queued already."""
        job.qseq += 1
        self._counter += 1
        heappush(self._heap, (self._key(job, now), self._counter, job.qseq, job))
        if not job.in_queue:
            job.in_queue = True
            self._live += 1

    def peek(self) -> Job | None:
        heap = self._heap
        while heap:
            entry = heap[0]
            job = entry[3]
            if entry[2] == job.qseq and job.in_queue:
                return job
            heappop(heap)
        return None

    def head_key(self) -> float:
        return self._heap[0][0] if self.peek() is not None else float("inf")

    def pop(self) -> Job | None:
        job = self.peek()
        if job is not None:
            heappop(self._heap)
            job.in_queue = False
            self._live -= 1
        return job

    def discard(self, job: Job) -> None:
        """Forget a queued job (its entry is skipped later); a no-op for one not queued."""
        if job.in_queue:
            job.qseq += 1
            job.in_queue = False
            self._live -= 1
            if len(self._heap) > 2 * self._live + 1024:  # dead entries would pin their jobs
                self._heap = [e for e in self._heap if e[2] == e[3].qseq and e[3].in_queue]
                heapify(self._heap)

    def jobs(self) -> Iterator[Job]:
        for _, _, seq, job in self._heap:
            if seq == job.qseq and job.in_queue:  # one live entry per job
                yield job


class FairQueue(ReadyQueue):
    """Paella's fairness: SRPT across all jobs, unless the most-starved model type's deficit
    counter has passed ``threshold``; then that type's best job goes first.

    Each dispatch credits every type with queued work 1/#types and debits the dispatched type 1,
    so a type that keeps losing to shorter jobs accumulates credit until it must be served. A
    type whose queue empties starts again from zero (its old credit or debt was for jobs that
    are gone).
    """

    def __init__(self, key: KeyFn, threshold: float):
        self._key = key
        self._threshold = threshold
        self._by_type: dict[int, HeapQueue] = {}
        self.deficit: dict[int, float] = {}
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def _queue(self, type_id: int) -> HeapQueue:
        q = self._by_type.get(type_id)
        if q is None:
            q = self._by_type[type_id] = HeapQueue(self._key)
            self.deficit[type_id] = 0.0
        return q

    def push(self, job: Job, now: float) -> None:
        if not job.in_queue:
            self._live += 1
        self._queue(job.model.type_id).push(job, now)

    def _choose(self) -> HeapQueue | None:
        best_q, best_key, starved_q, starved = None, float("inf"), None, -float("inf")
        for t, q in self._by_type.items():
            if q.peek() is None:
                continue
            k = q.head_key()
            if k < best_key:
                best_q, best_key = q, k
            if self.deficit[t] > starved:
                starved_q, starved = q, self.deficit[t]
        if starved_q is not None and starved >= self._threshold:
            return starved_q
        return best_q

    def peek(self) -> Job | None:
        q = self._choose()
        return q.peek() if q is not None else None

    def pop(self) -> Job | None:
        q = self._choose()
        if q is None:
            return None
        active = [t for t, tq in self._by_type.items() if len(tq)]
        job = q.pop()
        self._live -= 1
        credit = 1.0 / len(active)
        for t in active:
            self.deficit[t] += credit
        self.deficit[job.model.type_id] -= 1.0
        if not len(q):
            self.deficit[job.model.type_id] = 0.0
        return job

    def discard(self, job: Job) -> None:
        q = self._by_type.get(job.model.type_id)
        if q is not None and job.in_queue:
            q.discard(job)
            self._live -= 1
            if not len(q):
                self.deficit[job.model.type_id] = 0.0

    def jobs(self) -> Iterator[Job]:
        for q in self._by_type.values():
            yield from q.jobs()
