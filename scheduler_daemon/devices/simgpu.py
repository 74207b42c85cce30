"""The simulated GPU: SMs, hardware queues, a block dispatcher, and shared memory bandwidth.

What it models (the mechanisms Paella's paper documents):

- **SMs with per-SM limits** (threads, resident blocks, registers, shared memory). A kernel's
  blocks are placed breadth-first over the SMs where they fit (the hardware's round-robin
  block distribution); a block holds its SM resources until it finishes.
- **Hardware queues.** A kernel launched on stream ``s`` goes to queue ``s % hw_queues``
  (CUDA_DEVICE_MAX_CONNECTIONS, default 8, up to 32). Each queue is served in order: only its
  head may dispatch blocks, and the kernel behind it does not start until the head has finished
  (the head-of-line blocking that leaves SMs idle). Queues are visited round-robin.
- **Waves.** A kernel of ``G`` blocks, ``C`` of which fit on the idle GPU, runs in
  ``W = ceil(G / C)`` waves; each block takes ``est / W`` alone, so a kernel alone on the GPU
  takes exactly its estimated duration ``est``.
- **Memory bandwidth.** A kernel spends ``mem_frac`` of its solo time bound by DRAM bandwidth;
  alone with all ``min(G, C)`` of its blocks resident it uses the whole bandwidth. With resident
  blocks ``n_k`` of each kernel ``k``, demand ``D = sum_k n_k * mem_frac_k / min(G_k, C_k)``
  (1.0 = the GPU's bandwidth); when ``D > 1`` each block of kernel ``k`` progresses at rate
  ``1 / (1 + mem_frac_k * (D - 1))``, so memory-bound kernels running together slow each other.

Blocks dispatched together finish together, so the simulator moves groups of blocks, not single
blocks: a kernel costs about one event per wave. It runs in any environment: virtual time for
experiments, real time under the daemon.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from ..clock import Timer
from ..gpu_specs import GpuSpec
from ..jobs import Job
from .base import Device

MAX_HW_QUEUES = 32


class _Kernel:
    __slots__ = ("job", "res", "dims", "left", "running", "block_work", "bw", "mem_frac", "start",
                 "tried")

    def __init__(self, job: Job, res, dims, grid: int, block_work: float, bw: float,
                 mem_frac: float):
        self.job, self.res, self.dims, self.left, self.running = job, res, dims, grid, 0
        self.block_work, self.bw, self.mem_frac = block_work, bw, mem_frac
        self.start: float | None = None
        self.tried = -1  # the free-resource generation at which none of its blocks fit


class _Group:
    """Blocks of one kernel dispatched at the same moment (they finish together)."""
    __slots__ = ("kernel", "take", "n", "work", "rate")

    def __init__(self, kernel: _Kernel, take, n: int):
        self.kernel, self.take, self.n = kernel, take, n
        self.work = kernel.block_work
        self.rate = 1.0


class SimGpu(Device):
    name = "sim"

    def __init__(self, spec: GpuSpec, hw_queues: int = 8, speed: float = 1.0):
        if not 1 <= hw_queues <= MAX_HW_QUEUES:
            raise ValueError(f"hw_queues must be 1..{MAX_HW_QUEUES} (CUDA_DEVICE_MAX_CONNECTIONS)")
        self.spec = spec
        self.speed = speed
        self.limits = np.array([spec.threads_per_sm, spec.blocks_per_sm, spec.regs_per_sm,
                                spec.smem_per_sm], dtype=np.int64)
        self.free = np.tile(self.limits[:, None], (1, spec.sms))  # (4 resources, SMs)
        self._threads_used = 0
        self._demand = 0.0  # bandwidth demand of the resident blocks (1.0 = all of it)
        self.queues: list[deque[_Kernel]] = [deque() for _ in range(hw_queues)]
        self.groups: list[_Group] = []
        self._shapes: dict = {}
        self._last = 0.0
        self._timer: Timer | None = None
        self._rr = 0
        self._sm_rr = 0
        self._threads_total = spec.threads_per_sm * spec.sms
        self._contended = False
        self._gen = 0  # bumped whenever resources are freed: a head that did not fit retries
        self.kernels_done = 0
        self.busy_s = 0.0  # integral of the fraction of thread slots in use

    def describe(self) -> str:
        return f"simulated {self.spec.name} ({self.spec.sms} SMs, {len(self.queues)} hw queues)"

    # -- shapes ---------------------------------------------------------------------------------
    def _shape(self, k) -> tuple:
        """(per-block resources as a column, the (dimension, amount) pairs it uses, blocks that
        fit on an idle GPU)."""
        key = (k.block, k.regs, k.smem)
        got = self._shapes.get(key)
        if got is None:
            res = np.array([k.block, 1, k.block * k.regs, k.smem], dtype=np.int64)
            dims = tuple((d, int(res[d])) for d in (0, 2, 3) if res[d])  # blocks: always 1
            per_sm = int(min([self.limits[1]] + [self.limits[d] // r for d, r in dims]))
            got = self._shapes[key] = (res[:, None], dims, per_sm * self.spec.sms)
        return got

    def validate(self, kernels: list) -> None:
        for i, k in enumerate(kernels):
            if self._shape(k)[2] == 0:
                raise ValueError(
                    f"kernel {i} ({k.name}): a block of {k.block} threads x {k.regs} registers "
                    f"with {k.smem} B shared memory does not fit on one {self.spec.name} SM "
                    f"({self.spec.regs_per_sm} registers, {self.spec.smem_per_sm} B)")

    # -- launch and completion ------------------------------------------------------------------
    def launch(self, job: Job) -> None:
        k = job.model.kernels[job.cur]
        res, dims, cap = self._shape(k)
        now = self.env.now
        if cap == 0:  # reported asynchronously, like a CUDA launch error
            self.env.schedule(0.0, lambda: self.on_fail(job, self.env.now,
                                                        f"kernel {k.name}: launch shape does not fit an SM"))
            return
        waves = -(-k.grid // cap)
        resident = min(k.grid, cap)
        kern = _Kernel(job, res, dims, k.grid, k.est_us * 1e-6 * self.speed / waves,
                       k.mem_frac / resident, k.mem_frac)
        self._advance(now)
        self.queues[job.stream % len(self.queues)].append(kern)
        self._dispatch(now)
        self._reschedule()

    def _advance(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:
            if self.groups:
                for g in self.groups:
                    g.work -= dt * g.rate
                self.busy_s += dt * self._threads_used / self._threads_total
            self._last = now

    def _spread(self, fit: np.ndarray, n: int) -> np.ndarray:
        """Place ``n`` blocks breadth-first: every SM gets one before any gets two."""
        total = int(fit.sum())
        if n >= total:
            return fit.copy()
        counts = np.bincount(fit)
        ge = len(fit) - np.cumsum(counts)  # ge[L-1]: SMs that can take at least L blocks
        level, placed = 0, 0
        while placed + ge[level] < n:
            placed += ge[level]
            level += 1
        take = np.minimum(fit, level)
        rest = n - placed
        cand = np.flatnonzero(fit > level)
        start = self._sm_rr % len(cand)
        chosen = np.concatenate([cand[start:], cand[:start]])[:rest]
        take[chosen] += 1
        self._sm_rr += rest
        return take

    def _dispatch(self, now: float) -> None:
        """Serve the hardware queues' heads round-robin: each head places as many blocks as
        fit; a head whose blocks are all placed blocks its queue until it finishes."""
        queues, free = self.queues, self.free
        nq = len(queues)
        for i in range(nq):
            q = queues[(self._rr + i) % nq]
            if not q:
                continue
            head = q[0]
            if head.left == 0 or head.tried == self._gen:
                continue
            fit = free[1].copy()
            for d, r in head.dims:
                np.minimum(fit, free[d] // r, out=fit)
            total = int(fit.sum())
            if total == 0:
                head.tried = self._gen
                continue
            n = min(head.left, total)
            take = fit if n == total else self._spread(fit, n)
            free -= head.res * take
            self._threads_used += n * int(head.res[0, 0])
            self._demand += n * head.bw
            head.left -= n
            head.running += n
            if head.start is None:
                head.start = now
            self.groups.append(_Group(head, take, n))
        self._rr = (self._rr + 1) % nq
        self._rates()

    def _rates(self) -> None:
        over = self._demand - 1.0
        if over > 1e-9:
            for g in self.groups:
                g.rate = 1.0 / (1.0 + g.kernel.mem_frac * over)
            self._contended = True
        elif self._contended:  # back under the bandwidth: everyone at full speed again
            for g in self.groups:
                g.rate = 1.0
            self._contended = False

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.groups:
            nxt = min(g.work / g.rate for g in self.groups)
            self._timer = self.env.schedule(max(0.0, nxt), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.env.now
        self._advance(now)
        tol = 1e-12 + 4 * math.ulp(now)
        finished_kernels = []
        keep = []
        for g in self.groups:
            if g.work > tol:
                keep.append(g)
                continue
            kern = g.kernel
            self.free += kern.res * g.take
            self._threads_used -= g.n * int(kern.res[0, 0])
            self._demand -= g.n * kern.bw
            self._gen += 1
            kern.running -= g.n
            if kern.left == 0 and kern.running == 0:
                q = self.queues[kern.job.stream % len(self.queues)]
                q.remove(kern) if q[0] is not kern else q.popleft()
                finished_kernels.append(kern)
        self.groups = keep
        if not keep:
            self._demand = 0.0  # no drift from summing floats
        self._dispatch(now)
        self._reschedule()
        for kern in finished_kernels:
            self.kernels_done += 1
            self.on_complete(kern.job, now, now - kern.start)

    # -- introspection --------------------------------------------------------------------------
    def utilisation(self) -> float:
        return self._threads_used / self._threads_total

    def queued_kernels(self) -> int:
        return sum(len(q) for q in self.queues)
