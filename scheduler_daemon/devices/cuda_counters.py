"""Block-progress counters in host-mapped pinned memory (Paella's instrumentation).

An instrumented kernel gets a pointer to one 64-bit slot as its last argument and each of its
blocks adds 1 when done; the slot lives in ``cuMemHostAlloc(DEVICEMAP)`` memory, so the host
reads it with a plain load while the kernel runs. Slots are taken per launch and given back
when the launch's completion is collected; slabs of slots are added as needed.
"""
from __future__ import annotations

import ctypes
import logging

from scheduler_daemon.cuda.errors import CudaError

log = logging.getLogger("gpusched.device.cuda.counters")

SLOT = 8


class CounterSlots:
    def __init__(self, chk, slots_per_slab: int = 512):
        self.chk = chk
        self.per_slab = slots_per_slab
        self._slabs: list[tuple[int, int]] = []  # (host address, device address)
        self._free: list[int] = []

    def _grow(self) -> None:
        api = self.chk.api
        flags = api.CU_MEMHOSTALLOC_DEVICEMAP | api.CU_MEMHOSTALLOC_PORTABLE
        host = int(self.chk.cuMemHostAlloc(self.per_slab * SLOT, flags))
        dev = int(self.chk.cuMemHostGetDevicePointer(host, 0))
        ctypes.memset(host, 0, self.per_slab * SLOT)
        base = len(self._slabs) * self.per_slab
        self._slabs.append((host, dev))
        self._free.extend(range(base + self.per_slab - 1, base - 1, -1))
        log.debug("device: counter slab %d mapped (host %#x, device %#x)", len(self._slabs),
                  host, dev)

    def take(self) -> tuple[int, int]:
        """A zeroed slot: (slot id, device address to pass to the kernel)."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        host, dev = self._slabs[slot // self.per_slab]
        off = (slot % self.per_slab) * SLOT
        ctypes.c_uint64.from_address(host + off).value = 0
        return slot, dev + off

    def read(self, slot: int) -> int:
        host, _ = self._slabs[slot // self.per_slab]
        return ctypes.c_uint64.from_address(host + (slot % self.per_slab) * SLOT).value

    def give(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        for host, _ in self._slabs:
            try:
                self.chk.cuMemFreeHost(host)
            except CudaError as e:
                log.warning("device: cuMemFreeHost failed: %s", e)
        self._slabs.clear()
        self._free.clear()
