"""Bytes one tenant holds in the daemon, counted where they are spent, against its quota.

One ledger per tenant, shared by all its connections (a quota per connection let ten
connections hold ten quotas). Tensors are counted by the storage they live in: a view adds
nothing, its base and every other view keep the storage counted, and the bytes come back only
when the last tensor of a storage is let go (freeing a view's base while the view lives used to
free bytes that were still held). Fixed sums (a registered model's weights, a job's input
frames) are counted by a name. Ops run in device worker threads: every method takes a lock.
"""
from __future__ import annotations

import threading


class Ledger:
    __slots__ = ("quota", "used", "_storages", "_fixed", "_lock")

    def __init__(self, quota: int):
        self.quota = quota
        self.used = 0
        self._storages: dict = {}   # storage key -> [tensors holding it, bytes]
        self._fixed: dict = {}      # name -> bytes
        self._lock = threading.Lock()

    def room(self) -> int:
        return self.quota - self.used

    # -- tensors, by storage ------------------------------------------------------------------
    def hold(self, key, nbytes: int) -> None:
        """One more tensor of storage ``key`` (``nbytes`` its size)."""
        with self._lock:
            ent = self._storages.get(key)
            if ent is None:
                self._storages[key] = [1, nbytes]
                self.used += nbytes
            else:
                ent[0] += 1

    def release(self, key) -> None:
        with self._lock:
            ent = self._storages.get(key)
            if ent is None:
                return
            ent[0] -= 1
            if ent[0] == 0:
                del self._storages[key]
                self.used -= ent[1]

    # -- fixed sums ---------------------------------------------------------------------------
    def charge(self, name, nbytes: int) -> None:
        """Count ``nbytes`` under ``name`` (replacing what was counted under it)."""
        with self._lock:
            self.used += nbytes - self._fixed.get(name, 0)
            self._fixed[name] = nbytes

    def charged(self, name) -> int:
        return self._fixed.get(name, 0)

    def refund(self, name) -> None:
        with self._lock:
            self.used -= self._fixed.pop(name, 0)


def storage_key(t) -> tuple:
    """What identifies the storage a torch tensor lives in, and its size in bytes."""
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr()), s.nbytes()
