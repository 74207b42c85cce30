"""Online per-(model, kernel position) duration estimates, Paella's ``est = (est + measured) / 2``.

Kept in a Fenwick tree so a job's estimated remaining time (a suffix sum over its model's
remaining kernels) costs O(log K), and an update after a completion costs O(log K), K kernels.
The estimates and the tree are arrays of doubles (``array('d')``): compiled, the loops below are
C loops over them (``estimates.pxd``); interpreted, the same code indexes the arrays.
"""
from __future__ import annotations

from array import array


class DurationEstimates:
    __slots__ = ("_est", "_tree", "_n")

    def __init__(self, initial_s: list[float]):
        n = len(initial_s)
        self._n = n
        self._est = array("d", initial_s)
        self._tree = array("d", bytes(8 * (n + 1)))
        for i in range(n):
            self._add(i, self._est[i])

    def _add(self, i: int, delta: float) -> None:
        i += 1
        n = self._n
        while i <= n:
            self._tree[i] += delta
            i += i & -i

    def _prefix(self, i: int) -> float:
        """Sum of estimates of positions [0, i)."""
        s = 0.0
        while i > 0:
            s += self._tree[i]
            i -= i & -i
        return s

    def __len__(self) -> int:
        return self._n

    def get(self, pos: int) -> float:
        return self._est[pos]

    def total(self) -> float:
        return self._prefix(self._n)

    def remaining(self, pos: int) -> float:
        """Estimated time of kernels pos..K-1."""
        return self._prefix(self._n) - self._prefix(pos)

    def __reduce__(self):
        # (compiled, the arrays are typed memoryviews, which do not pickle by themselves)
        return (_restore, (list(self._est), list(self._tree)))

    def observe(self, pos: int, measured_s: float) -> None:
        old = self._est[pos]
        new = (old + measured_s) / 2.0
        self._est[pos] = new
        self._add(pos, new - old)


def _restore(est: list, tree: list) -> DurationEstimates:
    """A pickled ``DurationEstimates``, the tree as it was (not re-summed: same floats)."""
    e = DurationEstimates.__new__(DurationEstimates)
    e._n = len(est)
    e._est = array("d", est)
    e._tree = array("d", tree)
    return e
