"""Ready queues: which queued job's next kernel goes first. O(log n) per operation.

Entries are removed lazily: re-pushing or discarding a job bumps ``job.qseq`` and the old heap
entry is skipped when it surfaces.
"""
from __future__ import annotations

from typing import Callable, Iterator

from scheduler_daemon.core.jobs import Job

KeyFn = Callable[[Job, float], float]


class KeyOrder:
    """Orders jobs: ``key(job, now)``, smaller first. The policies are key orders; a ready queue
    made from one calls its ``key`` directly (compiled: a C call, not a bound method's)."""

    def key(self, job: Job, now: float) -> float:
        raise NotImplementedError


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


class _Entry:
    """A heap entry: the job's key when pushed, the push order, the job's queue version."""

    __slots__ = ("job", "key", "qseq", "seq")


def _entry_push(heap: list, e: _Entry) -> int:
    """heapq.heappush by (key, seq), the comparison written out (compiled: C comparisons)."""
    heap.append(e)
    pos = len(heap) - 1
    while pos > 0:
        parentpos = (pos - 1) >> 1
        parent = heap[parentpos]
        if e.key < parent.key or (e.key == parent.key and e.seq < parent.seq):
            heap[pos] = parent
            pos = parentpos
            continue
        break
    heap[pos] = e
    return 0


def _entry_pop(heap: list) -> _Entry:
    """heapq.heappop by (key, seq)."""
    last = heap.pop()
    if not heap:
        return last
    ret = heap[0]
    n = len(heap)
    pos = 0
    child = 1
    while child < n:
        right = child + 1
        c = heap[child]
        if right < n:
            r = heap[right]
            if r.key < c.key or (r.key == c.key and r.seq < c.seq):
                child = right
                c = r
        if c.key < last.key or (c.key == last.key and c.seq < last.seq):
            heap[pos] = c
            pos = child
            child = 2 * pos + 1
        else:
            break
    heap[pos] = last
    return ret


class HeapQueue(ReadyQueue):
    def __init__(self, key: KeyOrder | KeyFn):
        """``key``: a ``KeyOrder`` (a policy) or a function ``(job, now) -> float``."""
        self._order = key if isinstance(key, KeyOrder) else None
        self._key = key
        self._heap: list[_Entry] = []
        self._counter = 0
        self._live = 0
        self._pool: list[_Entry] = []   # popped entries, for reuse

    def __len__(self) -> int:
        return self._live

    def push(self, job: Job, now: float) -> None:
        """Queue ``job``, or re-key it if it is queued already."""
        job.qseq += 1
        self._counter += 1
        pool = self._pool
        e = pool.pop() if pool else _Entry.__new__(_Entry)
        order = self._order
        e.key = order.key(job, now) if order is not None else self._key(job, now)
        e.seq = self._counter
        e.qseq = job.qseq
        e.job = job
        _entry_push(self._heap, e)
        if not job.in_queue:
            job.in_queue = True
            self._live += 1

    def peek(self) -> Job | None:
        heap = self._heap
        while heap:
            e = heap[0]
            job = e.job
            if e.qseq == job.qseq and job.in_queue:
                return job
            self._recycle(_entry_pop(heap))
        return None

    def _recycle(self, e: _Entry) -> None:
        e.job = None
        if len(self._pool) < 1024:
            self._pool.append(e)

    def head_key(self) -> float:
        return self._heap[0].key if self.peek() is not None else float("inf")

    def pop(self) -> Job | None:
        job = self.peek()
        if job is not None:
            self._recycle(_entry_pop(self._heap))
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
                live = [e for e in self._heap if e.qseq == e.job.qseq and e.job.in_queue]
                self._heap = []
                for e in live:
                    _entry_push(self._heap, e)

    def jobs(self) -> Iterator[Job]:
        for e in self._heap:
            if e.qseq == e.job.qseq and e.job.in_queue:  # one live entry per job
                yield e.job


class FairQueue(ReadyQueue):
    """Paella's fairness: SRPT across all jobs, unless the most-starved model type's deficit
    counter has passed ``threshold``; then that type's best job goes first.

    Each dispatch credits every type with queued work 1/#types and debits the dispatched type 1,
    so a type that keeps losing to shorter jobs accumulates credit until it must be served. A
    type whose queue empties starts again from zero (its old credit or debt was for jobs that
    are gone).
    """

    def __init__(self, key: KeyOrder | KeyFn, threshold: float):
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
