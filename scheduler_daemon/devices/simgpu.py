"""The simulated GPU: streams, hardware queues, a block dispatcher over SMs, shared bandwidth.

Each rule models one documented behaviour of NVIDIA GPUs (sources in docs/simulator.md):

- **R1 Streams** (CUDA programming guide, "Streams"): a kernel launched on stream ``s`` does
  not start until the kernel launched before it on ``s`` has completed.
- **R2 Hardware queues** (CUDA_DEVICE_MAX_CONNECTIONS, default 8 on the GPU, 32 here as in
  Paella's evaluation; Paella Fig. 2, ``hol.cu``): streams are folded onto ``hw_queues`` FIFO
  queues (stream ``s`` onto queue ``s % hw_queues``). Only a queue's first kernel may dispatch
  blocks; when all of its blocks have been dispatched it leaves the queue (it keeps running)
  and the next kernel may start. A first kernel that waits for its own stream's predecessor
  (R1) holds up every kernel behind it, whatever their streams: the false dependency, and the
  head-of-line blocking Paella's Fig. 2 shows.
- **R3 Resident grids** (CUDA programming guide, compute capability table: "maximum number of
  resident grids per device", 128 for 7.x-9.0): at most ``spec.max_grids`` kernels have blocks
  on the SMs or are dispatching them.
- **R4 Block dispatch per SM** (the block scheduler's round-robin placement; occupancy limits of
  the CUDA occupancy calculator): queues are served round-robin; a queue's first kernel places as
  many blocks as fit on the SMs' free threads, block slots, registers and shared memory,
  breadth-first (every SM gets one before any gets two); a block holds its SM resources until it
  finishes.
- **R5 Waves** (the hardware executes a grid in waves of resident blocks): a kernel of ``G``
  blocks, ``C`` of which fit on an idle GPU, runs in ``W = ceil(G / C)`` waves; each block takes
  ``est / W`` alone, so a kernel alone on the GPU takes exactly its estimated duration.
- **R6 Shared bandwidth and arithmetic** (DRAM bandwidth and the SMs' math throughput are shared
  by co-resident kernels): a kernel spends ``mem_frac`` of its solo time bound by bandwidth and
  ``comp_frac`` bound by arithmetic; with ``n_k`` resident blocks of kernel ``k`` the demands are
  ``D_m = sum_k n_k * mem_frac_k / min(G_k, C_k)`` and likewise ``D_c``; blocks of ``k`` progress
  at rate ``1 / (1 + mem_frac_k * max(0, D_m - 1) + comp_frac_k * max(0, D_c - 1))``.
- **R7 Launch latency** (a launch is asynchronous: the host call returns, and the kernel reaches
  the hardware queue ``launch_us`` later, calibration.md's launch floor): a kernel enters its
  queue ``launch_us`` after ``launch``.

Blocks dispatched together finish together, so the simulator moves groups of blocks: a kernel
costs about one event per wave. A group's rate is fixed when it is dispatched, from the demand
at that moment including its own. Finish times are rounded up to a ``quantum`` (0.5 us) so that
groups finishing within it free their SMs together.

The device reports a kernel's start (``on_started``: all of its blocks have been dispatched,
when Paella's dispatcher frees its extra slot) and its completion (``on_complete``); and it
answers ``fits_now(kernel)``: whether the SMs could take all of a kernel's blocks now, the
per-SM fit test Paella's dispatcher makes from its block-level notices.
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
    __slots__ = ("job", "res", "dims", "grid", "left", "running", "block_work", "bw", "cw",
                 "mem_frac", "comp_frac", "start", "tried", "queue", "pred", "done", "arrived",
                 "stream")

    def __init__(self, job: Job, res, dims, grid: int, block_work: float, resident: int,
                 mem_frac: float, comp_frac: float, queue: deque, pred: "_Kernel | None"):
        self.job, self.res, self.dims, self.grid = job, res, dims, grid
        self.left, self.running = grid, 0
        self.block_work = block_work
        self.bw, self.cw = mem_frac / resident, comp_frac / resident  # demand per block
        self.mem_frac, self.comp_frac = mem_frac, comp_frac
        self.start: float | None = None   # when its first block was dispatched
        self.tried = -1   # the free-resource generation at which none of its blocks fit
        self.queue = queue
        self.pred = pred  # the kernel launched before it on its stream, if still unfinished
        self.done = False
        self.arrived = 0.0  # when it entered its hardware queue
        self.stream = job.stream


class SimGpu(Device):
    name = "sim"

    def __init__(self, spec: GpuSpec, hw_queues: int = 32, speed: float = 1.0,
                 quantum_us: float = 0.5, launch_us: float = 0.0):
        if not 1 <= hw_queues <= MAX_HW_QUEUES:
            raise ValueError(f"hw_queues must be 1..{MAX_HW_QUEUES} (CUDA_DEVICE_MAX_CONNECTIONS)")
        self.spec = spec
        self.speed = speed
        self.quantum = quantum_us * 1e-6
        self.launch_delay = launch_us * 1e-6
        self.limits = np.array([spec.threads_per_sm, spec.blocks_per_sm, spec.regs_per_sm,
                                spec.smem_per_sm], dtype=np.int64)
        self.free = np.tile(self.limits[:, None], (1, spec.sms))  # (4 resources, SMs)
        self.queues: list[deque[_Kernel]] = [deque() for _ in range(hw_queues)]
        self._tails: dict[int, _Kernel] = {}  # stream -> its last launched kernel
        self._finishing: list = []  # heap of (finish time, seq, kernel, take, n, ideal)
        self._seq = 0
        self._timer_at = float("inf")
        self._timer: Timer | None = None
        self._demand_m = 0.0
        self._demand_c = 0.0
        self._grids = 0       # kernels with blocks dispatched and not all finished (R3)
        self._shapes: dict = {}
        self._last = 0.0
        self._rr = 0
        self._sm_rr = 0
        self._threads_used = 0
        self._threads_total = spec.threads_per_sm * spec.sms
        self._dispatch_due = False
        self._gen = 0  # bumped whenever resources are freed: a head that did not fit retries
        self.on_started = None
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

    def _fit(self, dims) -> np.ndarray:
        """Blocks of this shape each SM can take now."""
        free = self.free
        fit = free[1].copy()
        for d, r in dims:
            np.minimum(fit, free[d] // r, out=fit)
        return fit

    def fits_now(self, k) -> bool:
        """Whether the SMs could take all blocks of kernel spec ``k`` now (a full wave of a
        multi-wave one): Paella's per-SM fit test."""
        _, dims, cap = self._shape(k)
        return int(self._fit(dims).sum()) >= min(k.grid, cap)

    # -- launch, arrival, dispatch --------------------------------------------------------------
    def launch(self, job: Job) -> None:
        k = job.model.kernels[job.cur]
        res, dims, cap = self._shape(k)
        if cap == 0:  # reported asynchronously, like a CUDA launch error
            self.env.schedule(0.0, lambda: self.on_fail(
                job, self.env.now, f"kernel {k.name}: launch shape does not fit an SM"))
            return
        waves = -(-k.grid // cap)
        stream = job.stream
        pred = self._tails.get(stream)
        q = self.queues[stream % len(self.queues)]
        kern = _Kernel(job, res, dims, k.grid, k.est_us * 1e-6 * self.speed / waves,
                       min(k.grid, cap), k.mem_frac, k.comp_frac, q,
                       pred if pred is not None and not pred.done else None)
        self._tails[stream] = kern
        if self.launch_delay > 0:   # R7: it reaches the hardware queue later
            self.env.schedule(self.launch_delay, lambda: self._arrive(kern))
        else:
            self._arrive(kern)

    def _arrive(self, kern: _Kernel) -> None:
        now = self.env.now
        self._advance(now)
        kern.arrived = now
        q = kern.queue
        q.append(kern)
        if len(q) == 1 and not self._dispatch_due:  # only a new first kernel can start now
            # after every arrival of this instant: kernels arriving together are placed
            # together and share the contention they create
            self._dispatch_due = True
            self.env.schedule(0.0, self._arrival_dispatch)

    def _arrival_dispatch(self) -> None:
        self._dispatch_due = False
        started = self._dispatch(self.env.now)
        self._reschedule()
        self._report_started(started)

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

    def _dispatch(self, now: float, base: float | None = None) -> list[_Kernel]:
        """R2-R4: serve the hardware queues round-robin. A queue's first kernel, unless it
        waits for its stream's predecessor (R1) or for a free grid slot (R3), places as many
        blocks as fit; once all are placed it leaves the queue and the next may go at once.
        Returns the kernels whose last block was dispatched."""
        queues = self.queues
        nq = len(queues)
        placed = []
        started: list[_Kernel] = []
        t0 = now if base is None else base  # when the resources used here became free
        start = self._rr
        for i in range(nq):
            qi = (start + i) % nq
            q = queues[qi]
            while q:
                head = q[0]
                if head.pred is not None and not head.pred.done:
                    break                      # a dependent first kernel blocks its queue
                if head.start is None and self._grids >= self.spec.max_grids:
                    break
                if head.tried == self._gen:
                    break
                fit = self._fit(head.dims)
                total = int(fit.sum())
                if total == 0:
                    head.tried = self._gen
                    break
                n = min(head.left, total)
                take = fit if n == total else self._spread(fit, n)
                self.free -= head.res * take
                self._threads_used += n * int(head.res[0, 0])
                head.left -= n
                head.running += n
                begin = min(now, max(t0, head.arrived))
                if head.start is None:
                    head.start = begin
                    self._grids += 1
                self._demand_m += n * head.bw
                self._demand_c += n * head.cw
                placed.append((head, take, n, begin))
                self._rr = (qi + 1) % nq
                if head.left:
                    break                      # no room for the rest of it: next queue
                q.popleft()                    # all its blocks dispatched: the queue moves on
                started.append(head)
        # groups placed together share the demand they create together (R6)
        over_m = max(0.0, self._demand_m - 1.0)
        over_c = max(0.0, self._demand_c - 1.0)
        for head, take, n, begin in placed:
            ideal = begin + head.block_work * (1.0 + head.mem_frac * over_m
                                               + head.comp_frac * over_c)
            end = ideal
            if self.quantum:  # up to the grid: blocks ending together free together
                end = max(now, math.ceil(ideal / self.quantum - 1e-9) * self.quantum)
            self._seq += 1
            heapq.heappush(self._finishing, (end, self._seq, head, take, n, ideal))
        return started

    def _report_started(self, started: list[_Kernel]) -> None:
        if self.on_started is not None:
            now = self.env.now
            for kern in started:
                self.on_started(kern.job, now)

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
        finishing = self._finishing
        finished_kernels = []
        freed_at = 0.0  # the exact time the resources freed: rounding does not add up
        while finishing and finishing[0][0] <= now:
            _, _, kern, take, n, ideal = heapq.heappop(finishing)
            freed_at = max(freed_at, ideal)
            self.free += kern.res * take
            self._threads_used -= n * int(kern.res[0, 0])
            self._demand_m -= n * kern.bw
            self._demand_c -= n * kern.cw
            kern.running -= n
            if kern.left == 0 and kern.running == 0:
                kern.done = True          # R1: its stream's next kernel may start
                self._grids -= 1
                if self._tails.get(kern.stream) is kern:
                    del self._tails[kern.stream]
                finished_kernels.append(kern)
        self._gen += 1
        if not finishing:  # no drift from summing floats
            self._demand_m = self._demand_c = 0.0
        started = self._dispatch(now, freed_at)
        self._reschedule()
        self._report_started(started)
        for kern in finished_kernels:
            self.kernels_done += 1
            self.on_complete(kern.job, now, now - kern.start)

    # -- introspection --------------------------------------------------------------------------
    def utilisation(self) -> float:
        return self._threads_used / self._threads_total

    def queued_kernels(self) -> int:
        return sum(len(q) for q in self.queues)
