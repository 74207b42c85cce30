"""Time behind an environment, after SimPy's ``Environment`` / ``RealtimeEnvironment``.

One virtual-time implementation (``Environment``) drives the simulator and the policy tests;
``RealtimeEnvironment`` only changes how ``step`` waits and adds ``tick`` to read the wall clock,
so the daemon and the simulator schedule device events through the very same code. Ties at equal
times are broken by an insertion counter, which makes every run with the same inputs identical.

``now`` is a plain attribute. In real time it is the loop's cached clock (as libuv's
``uv_now``): the daemon calls ``tick()`` after waiting for I/O and again before advancing the
device, so a burst of work reads the clock a few times per loop iteration, not once per use.
"""
from __future__ import annotations

import time
from typing import Callable

INF = float("inf")


class Timer:
    """Handle for a scheduled callback; ``cancel()`` is idempotent."""

    __slots__ = ("arg", "at", "cancelled", "fn", "has_arg", "seq")

    def __init__(self, at: float, fn: Callable, arg=None, has_arg: bool = False):
        self.at = at
        self.fn = fn
        self.cancelled = False
        self.arg = arg          # called as fn(arg) when has_arg, else fn()
        self.has_arg = has_arg
        self.seq = 0            # insertion order: breaks ties at equal times

    def cancel(self) -> None:
        self.cancelled = True


# The event heap: heapq's algorithm on Timers ordered by (at, seq), the comparison written out
# so that compiled (clock.pxd) it is two C comparisons, not a tuple's.
def _timer_push(heap: list, t: Timer) -> int:
    heap.append(t)
    pos = len(heap) - 1
    while pos > 0:
        parentpos = (pos - 1) >> 1
        parent = heap[parentpos]
        if t.at < parent.at or (t.at == parent.at and t.seq < parent.seq):
            heap[pos] = parent
            pos = parentpos
            continue
        break
    heap[pos] = t
    return 0


def _timer_pop(heap: list) -> Timer:
    """heapq.heappop, and like it: the hole left at the top goes down the smaller children
    to a leaf, where the last timer is put and sifted back up (fewer comparisons)."""
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
            if r.at < c.at or (r.at == c.at and r.seq < c.seq):
                child = right
                c = r
        heap[pos] = c
        pos = child
        child = 2 * pos + 1
    while pos > 0:
        parentpos = (pos - 1) >> 1
        parent = heap[parentpos]
        if last.at < parent.at or (last.at == parent.at and last.seq < parent.seq):
            heap[pos] = parent
            pos = parentpos
            continue
        break
    heap[pos] = last
    return ret


class Environment:
    """Virtual time: ``now`` only moves when ``step`` processes the next event."""

    def __init__(self, start: float = 0.0):
        self.now = start
        self._heap: list[Timer] = []
        self._counter = 0

    def schedule(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.schedule_at(self.now + max(0.0, delay), fn)

    def schedule_at(self, at: float, fn: Callable[[], None]) -> Timer:
        timer = Timer.__new__(Timer)
        timer.at = at
        timer.fn = fn
        timer.cancelled = False
        timer.arg = None
        timer.has_arg = False
        self._counter += 1
        timer.seq = self._counter
        _timer_push(self._heap, timer)
        return timer

    def call_at(self, at: float, fn: Callable, arg) -> Timer:
        """``schedule_at`` for ``fn(arg)``, without a closure per event."""
        timer = Timer.__new__(Timer)
        timer.at = at
        timer.fn = fn
        timer.cancelled = False
        timer.arg = arg
        timer.has_arg = True
        self._counter += 1
        timer.seq = self._counter
        _timer_push(self._heap, timer)
        return timer

    def rearm(self, timer: Timer, at: float) -> Timer:
        """Schedule a timer that has run (or was never scheduled) again, at ``at``: the same
        as a new ``schedule_at`` of its callback, without a new object."""
        timer.at = at
        timer.cancelled = False
        self._counter += 1
        timer.seq = self._counter
        _timer_push(self._heap, timer)
        return timer

    def peek(self) -> float:
        """Time of the next live event, or ``inf``."""
        heap = self._heap
        while heap:
            timer = heap[0]
            if not timer.cancelled:
                return timer.at
            _timer_pop(heap)
        return INF

    def step(self) -> bool:
        """Advance to the next event and run it. Returns False when none is left."""
        if self.peek() == INF:    # (peek drops cancelled timers from the top)
            return False
        timer = _timer_pop(self._heap)
        if timer.at > self.now:
            self.now = timer.at
        if timer.has_arg:
            timer.fn(timer.arg)
        else:
            timer.fn()
        return True

    def run(self, until: float | None = None) -> None:
        end = INF if until is None else until
        while self.peek() <= end:
            if not self.step():
                break
        if until is not None and until > self.now:
            self.now = until

    def tick(self) -> float:
        """Read the clock into ``now``: virtual time has none, so nothing changes."""
        return self.now

    def run_due(self) -> int:
        """Run every event due at or before ``now``; never waits. Returns how many ran."""
        n = 0
        while self.peek() <= self.now:
            self.step()
            n += 1
        return n


class RealtimeEnvironment(Environment):
    """Wall-clock time: monotonic seconds since creation, times ``factor``.

    ``step`` sleeps until the next event is due; ``tick`` refreshes ``now`` from the clock.
    """

    def __init__(self, factor: float = 1.0):
        super().__init__(0.0)
        self._t0 = time.monotonic()
        self._factor = factor

    def tick(self) -> float:
        self.now = (time.monotonic() - self._t0) * self._factor
        return self.now

    def step(self) -> bool:
        at = self.peek()
        if at == INF:
            return False
        wait = (at - self.tick()) / self._factor
        if wait > 0:
            time.sleep(wait)
            self.tick()
        timer = _timer_pop(self._heap)
        if timer.has_arg:
            timer.fn(timer.arg)
        else:
            timer.fn()
        return True
