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
- **Memory bandwidth and arithmetic throughput.** A kernel spends ``mem_frac`` of its solo time
  bound by DRAM bandwidth and ``comp_frac`` bound by the SMs' arithmetic; alone, with all
  ``min(G, C)`` of its blocks resident, it uses ``mem_frac`` of the bandwidth and ``comp_frac``
  of the arithmetic. With ``n_k`` resident blocks of each kernel ``k`` the demands are
  ``D_m = sum_k n_k * mem_frac_k / min(G_k, C_k)`` and likewise ``D_c`` (1.0 = all of it);
  blocks of kernel ``k`` then progress at rate
  ``1 / (1 + mem_frac_k * max(0, D_m - 1) + comp_frac_k * max(0, D_c - 1))``, so kernels that
  need the same resource slow each other and complementary ones do not.

Blocks dispatched together finish together, so the simulator moves groups of blocks, not single
blocks: a kernel costs about one event per wave. A group's rate is fixed when it is dispatched,
from the demand at that moment including its own (not revised when others come and go later):
this keeps an event O(log groups) instead of O(groups), which matters when the hardware queues
hold hundreds of kernels. It runs in any environment: virtual time for experiments, real time
under the daemon.
"""
from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from scheduler_daemon.clock import Timer
from scheduler_daemon.core.gpu_specs import GpuSpec
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.devices.base import Device

MAX_HW_QUEUES = 32


class _Kernel:
    __slots__ = ("job", "res", "dims", "left", "running", "block_work", "bw", "cw", "mem_frac",
                 "comp_frac", "start", "tried", "queue", "launched")

    def __init__(self, job: Job, res, dims, grid: int, block_work: float, resident: int,
                 mem_frac: float, comp_frac: float, queue):
        self.job, self.res, self.dims, self.left, self.running = job, res, dims, grid, 0
        self.block_work = block_work
        self.bw, self.cw = mem_frac / resident, comp_frac / resident  # demand per block
        self.mem_frac, self.comp_frac = mem_frac, comp_frac
        self.start: float | None = None
        self.tried = -1  # the free-resource generation at which none of its blocks fit
        self.queue = queue
        self.launched = 0.0


class SimGpu(Device):
    name = "sim"

    def __init__(self, spec: GpuSpec, hw_queues: int = 8, speed: float = 1.0,
                 quantum_us: float = 0.5):
        if not 1 <= hw_queues <= MAX_HW_QUEUES:
            raise ValueError(f"hw_queues must be 1..{MAX_HW_QUEUES} (CUDA_DEVICE_MAX_CONNECTIONS)")
        self.spec = spec
        self.speed = speed
        self.quantum = quantum_us * 1e-6
        self.limits = np.array([spec.threads_per_sm, spec.blocks_per_sm, spec.regs_per_sm,
                                spec.smem_per_sm], dtype=np.int64)
        self.free = np.tile(self.limits[:, None], (1, spec.sms))  # (4 resources, SMs)
        self._threads_used = 0
        self.queues: list[deque[_Kernel]] = [deque() for _ in range(hw_queues)]
        self._finishing: list = []  # heap of (finish time, seq, kernel, take, n)
        self._seq = 0
        self._timer_at = float("inf")
        self._demand_m = 0.0
        self._demand_c = 0.0
        self._resident = 0  # resident block groups
        self._shapes: dict = {}
        self._last = 0.0
        self._timer: Timer | None = None
        self._rr = 0
        self._sm_rr = 0
        self._threads_total = spec.threads_per_sm * spec.sms
        self._dispatch_due = False
        self._gen = 0  # bumped whenever resources are freed: a head that did not fit retries
        self.kernels_done = 0
        self.busy_s = 0.0  # integral of the fraction of thread slots in use
        self.comp_s = 0.0  # integral of the arithmetic demand
        self.mem_s = 0.0   # integral of the bandwidth demand

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
        q = self.queues[job.stream % len(self.queues)]
        kern = _Kernel(job, res, dims, k.grid, k.est_us * 1e-6 * self.speed / waves,
                       min(k.grid, cap), k.mem_frac, k.comp_frac, q)
        self._advance(now)
        kern.launched = now
        q.append(kern)
        if len(q) == 1 and not self._dispatch_due:  # only a new head can start at once
            # after every launch of this instant: kernels launched together are placed
            # together and share the contention they create
            self._dispatch_due = True
            self.env.schedule(0.0, self._launch_dispatch)

    def _launch_dispatch(self) -> None:
        self._dispatch_due = False
        self._dispatch(self.env.now)
        self._reschedule()

    def _advance(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:
            self.busy_s += dt * self._threads_used / self._threads_total
            # time integrals of the arithmetic and bandwidth demand (capped at the whole GPU):
            # a model's compute and memory demand for the profilers
            self.comp_s += dt * min(1.0, self._demand_c)
            self.mem_s += dt * min(1.0, self._demand_m)
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

    def _dispatch(self, now: float, base: float | None = None) -> None:
        """Serve the hardware queues' heads round-robin: each head places as many blocks as
        fit; a head whose blocks are all placed blocks its queue until it finishes. The next
        pass starts after the last queue served, so busy queues take turns."""
        queues, free = self.queues, self.free
        nq = len(queues)
        placed = []
        t0 = now if base is None else base  # when the resources used here became free
        start = self._rr
        for i in range(nq):
            qi = (start + i) % nq
            q = queues[qi]
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
            head.left -= n
            head.running += n
            begin = min(now, max(t0, head.launched))
            if head.start is None:
                head.start = begin
            self._demand_m += n * head.bw
            self._demand_c += n * head.cw
            placed.append((head, take, n, begin))
            self._rr = (qi + 1) % nq
        # groups placed together share the demand they create together
        over_m = max(0.0, self._demand_m - 1.0)
        over_c = max(0.0, self._demand_c - 1.0)
        for head, take, n, begin in placed:
            ideal = begin + head.block_work * (1.0 + head.mem_frac * over_m + head.comp_frac * over_c)
            end = ideal
            if self.quantum:  # up to the grid: blocks ending together free together
                end = max(now, math.ceil(ideal / self.quantum - 1e-9) * self.quantum)
            self._seq += 1
            self._resident += 1
            heapq.heappush(self._finishing, (end, self._seq, head, take, n, ideal))

    def _reschedule(self) -> None:
        at = self._finishing[0][0] if self._finishing else float("inf")
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at < float("inf"):
            self._timer = self.env.schedule_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self.env.now
        self._advance(now)
        finishing, free = self._finishing, self.free
        finished_kernels = []
        freed_at = 0.0  # the exact time the resources freed: rounding does not add up
        while finishing and finishing[0][0] <= now:
            _, _, kern, take, n, ideal = heapq.heappop(finishing)
            freed_at = max(freed_at, ideal)
            free += kern.res * take
            self._threads_used -= n * int(kern.res[0, 0])
            self._demand_m -= n * kern.bw
            self._demand_c -= n * kern.cw
            self._resident -= 1
            kern.running -= n
            if kern.left == 0 and kern.running == 0:
                q = kern.queue
                q.popleft() if q[0] is kern else q.remove(kern)
                finished_kernels.append(kern)
        self._gen += 1
        if not finishing:  # no drift from summing floats
            self._demand_m = self._demand_c = 0.0
        self._dispatch(now, freed_at)
        self._reschedule()
        for kern in finished_kernels:
            self.kernels_done += 1
            self.on_complete(kern.job, now, now - kern.start)

    # -- introspection --------------------------------------------------------------------------
    def utilisation(self) -> float:
        return self._threads_used / self._threads_total

    def queued_kernels(self) -> int:
        return sum(len(q) for q in self.queues)
