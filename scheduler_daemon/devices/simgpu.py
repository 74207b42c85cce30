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
  queue ``launch_us`` after ``launch``. A run (the core's quantum: ``job.run_len`` kernels of a
  job launched by one host thread back to back on the job's stream) is ``run_len`` launches
  one launch floor apart: its ``i``-th kernel (from 0) enters its queue ``(i + 1) * launch_us``
  after ``launch``; it is one completion, reported when its last kernel finishes, with each
  kernel's duration (``on_started`` likewise when the last kernel's blocks are all out). A
  stream's launches reach their queues in launch order (CUDA runs a stream's work in issue
  order): a launch behind a run on its stream arrives no earlier than the run's last kernel.
- **R8 MPS partitions** (CUDA MPS, "Volta MPS execution resource provisioning":
  ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` confines a client's kernels to a portion of the SMs;
  GSLICE and gpulet partition a GPU this way): a tenant given a share ``p`` of the SMs
  (``partitions``) places its blocks only on its own ``p * SMs`` SMs (rounded by largest
  remainder, at least one), a range no other partition uses. MPS limits how many SMs a client uses, not which; fixed
  disjoint ranges are that limit when the shares sum to at most 100%, as those systems give
  them. Its kernels keep their blocks and block times (R5), so a kernel wider than its
  partition runs in more waves. DRAM bandwidth stays shared (R6: MPS does not partition it).
  A tenant without a partition may use every SM.

Blocks dispatched together finish together, so the simulator moves groups of blocks: a kernel
costs about one event per wave. A group's rate is fixed when it is dispatched, from the demand
at that moment including its own. Finish times are rounded up to a ``quantum`` (0.5 us) so that
groups finishing within it free their SMs together.

The device reports a kernel's start (``on_started``: all of its blocks have been dispatched,
when Paella's dispatcher frees its extra slot) and its completion (``on_complete``); and it
answers ``fits_now(kernel)``: whether the SMs could take all of a kernel's blocks now, the
per-SM fit test Paella's dispatcher makes from its block-level notices.

How it is computed (none of this changes a number): per-SM free resources are one int64 array
(``array('q')``, dimension-major; ``free`` is a numpy view of it), and each dispatched group's
per-SM block counts live in a slab of the same kind, so the block placement is plain loops over
SMs; ``simgpu.pxd`` compiles those loops to C with Cython (``tools/build_sim.py``), and the same
source runs interpreted where it is not built (or with ``GPUSCHED_PURE=1``). A dispatch pass
visits only the queues that can have changed since the last one: after an arrival, the queues
that got a new first kernel; after blocks finish, every non-empty queue except those whose
first kernel still waits for its stream predecessor (R1). A block shape that did not fit is not
tried again until blocks finish. Queues are still visited in the same round-robin order.
"""
from __future__ import annotations

from array import array
from collections import deque

import numpy as np

from scheduler_daemon.core.gpu_specs import GpuSpec
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.devices import _gctrack
from scheduler_daemon.devices.base import Capabilities, Device

MAX_HW_QUEUES = 32
INF = float("inf")


class _Shape:
    """A block shape on one GPU: what one block holds on its SM (threads, registers, shared
    memory, and one block slot), the SMs it may use (``lo`` to ``hi``: all of them, or an
    MPS partition's, R8), how many blocks fit on them idle (``cap``), and the free-resource
    generation at which none of its blocks fit (``tried``)."""

    __slots__ = ("threads", "regs", "smem", "cap", "tried", "lo", "hi")

    def __init__(self, threads: int, regs: int, smem: int, cap: int, lo: int, hi: int):
        self.threads = threads
        self.regs = regs
        self.smem = smem
        self.cap = cap
        self.tried = -1
        self.lo = lo
        self.hi = hi

    @property
    def res(self) -> np.ndarray:
        """Per-block resources as a column (threads, blocks, registers, shared memory)."""
        return np.array([[self.threads], [1], [self.regs], [self.smem]], dtype=np.int64)


class _KInfo:
    """What the device derives once from a kernel spec."""

    __slots__ = ("spec", "shape", "grid", "resident", "block_work", "mem_frac", "comp_frac")

    def __init__(self, spec, shape: _Shape, speed: float, cap: int):
        # ``cap``: blocks that fit on the whole idle GPU (R5's waves and R6's demand per block
        # count the whole GPU; on a partition, ``shape.cap`` is less and the kernel takes more
        # waves of the same blocks)
        self.spec = spec
        self.shape = shape
        self.grid = spec.grid
        self.resident = min(spec.grid, cap)
        self.block_work = 0.0
        if cap:
            waves = -(-spec.grid // cap)
            self.block_work = spec.est_us * 1e-6 * speed / waves
        self.mem_frac = spec.mem_frac
        self.comp_frac = spec.comp_frac


class _Kernel:
    __slots__ = ("job", "shape", "grid", "left", "running", "block_work", "bw", "cw",
                 "mem_frac", "comp_frac", "start", "qi", "pred", "done", "arrived", "stream",
                 "durs", "last", "due")

    def __init__(self, job: Job, shape: _Shape, grid: int, block_work: float, resident: int,
                 mem_frac: float, comp_frac: float, qi: int, pred: "_Kernel | None"):
        self.job, self.shape, self.grid = job, shape, grid
        self.left, self.running = grid, 0
        self.block_work = block_work
        self.bw, self.cw = mem_frac / resident, comp_frac / resident  # demand per block
        self.mem_frac, self.comp_frac = mem_frac, comp_frac
        self.start = None   # when its first block was dispatched
        self.qi = qi        # its hardware queue
        self.pred = pred  # the kernel launched before it on its stream, if still unfinished
        self.done = False
        self.arrived = 0.0  # when it entered its hardware queue
        self.stream = job.stream
        self.durs = None    # a run's kernel durations so far (shared by its kernels)
        self.last = True    # the last kernel of its launch (what is reported)
        self.due = 0.0      # when it reaches its hardware queue (R7)

    @property
    def res(self) -> np.ndarray:
        return self.shape.res


def _new_kernel(job: Job, info: _KInfo, qi: int, pred: _Kernel | None) -> _Kernel:
    """``_Kernel(job, info.shape, ...)`` without the call's argument parsing."""
    kern = _Kernel.__new__(_Kernel)
    kern.job = job
    kern.shape = info.shape
    kern.grid = info.grid
    kern.left = info.grid
    kern.running = 0
    kern.block_work = info.block_work
    kern.bw = info.mem_frac / info.resident
    kern.cw = info.comp_frac / info.resident
    kern.mem_frac = info.mem_frac
    kern.comp_frac = info.comp_frac
    kern.start = None
    kern.qi = qi
    kern.pred = pred
    kern.done = False
    kern.arrived = 0.0
    kern.stream = job.stream
    kern.durs = None
    kern.last = True
    kern.due = 0.0
    _gctrack.untrack(kern)   # (compiled: not walked by the cyclic GC; see _gctrack.py)
    return kern


class _SimGpuBase:
    """The simulated GPU's state and rules (compiled as one extension type); ``SimGpu`` adds
    the ``Device`` interface.

    Blocks of one kernel dispatched together form a group: they finish together. A group is a
    slot: its per-SM block counts are row ``slot`` of ``_slab``; its finish time, unrounded
    finish time and start are ``_gd[3 * slot:3 * slot + 3]``, its sequence number and block
    count ``_gi[2 * slot:2 * slot + 2]``, its kernel ``_gkern[slot]``; ``_heap`` orders the
    dispatched slots by (finish time, sequence), as heapq would order those tuples.
    """

    def __init__(self, spec: GpuSpec, hw_queues: int = 32, speed: float = 1.0,
                 quantum_us: float = 0.5, launch_us: float = 0.0,
                 partitions: dict | None = None):
        """``partitions``: tenant -> its share of the SMs (R8), for MPS-partitioned sharing."""
        if not 1 <= hw_queues <= MAX_HW_QUEUES:
            raise ValueError(f"hw_queues must be 1..{MAX_HW_QUEUES} (CUDA_DEVICE_MAX_CONNECTIONS)")
        self.spec = spec
        self.speed = speed
        self.quantum = quantum_us * 1e-6
        self.launch_delay = launch_us * 1e-6
        self.limits = np.array([spec.threads_per_sm, spec.blocks_per_sm, spec.regs_per_sm,
                                spec.smem_per_sm], dtype=np.int64)
        sms = spec.sms
        self._sms = sms
        self._max_grids = spec.max_grids
        # free resources per SM, dimension-major: [d * sms + sm], d = threads, blocks, regs, smem
        self._freebuf = array("q", [spec.threads_per_sm] * sms + [spec.blocks_per_sm] * sms
                              + [spec.regs_per_sm] * sms + [spec.smem_per_sm] * sms)
        self._free = self._freebuf
        self._fitv = array("q", bytes(8 * sms))         # scratch: blocks each SM can take
        self._counts = array("q", bytes(8 * (spec.blocks_per_sm + 2)))  # scratch: histogram
        self._freed = array("q", bytes(8 * sms))  # per SM: the generation its last free began
        # groups (see the class docstring), 64 slots to start with
        self._nslots = 0
        self._slab = array("q")
        self._gd = array("d")
        self._gi = array("q")
        self._gkern: list = []
        self._heap = array("q")
        self._nheap = 0
        self._spare = array("q")      # free slots (a stack)
        self._nspare = 0
        self._placed = array("q")     # scratch: the slots one dispatch pass placed
        self._grow(64)
        self.queues: list[deque[_Kernel]] = [deque() for _ in range(hw_queues)]
        self._heads: list = [None] * hw_queues   # each queue's first kernel (or None)
        self._nq = hw_queues
        self._nonempty = 0     # bit q: queue q has kernels
        self._ready = 0        # bit q: queue q may place blocks at the next pass
        self._waiting = 0      # bit q: queue q's first kernel waits for its stream predecessor
        self._tails: dict[int, _Kernel] = {}  # stream -> its last launched kernel
        self._seq = 0
        self._timer_at = INF
        self._timer = None
        self._timer_spare = None     # the finish timer that last ran: armed again, not remade
        self._arrival_timer = None
        self._arrival_spare = None
        self._demand_m = 0.0
        self._demand_c = 0.0
        self._grids = 0       # kernels with blocks dispatched and not all finished (R3)
        self._shapes: dict = {}
        self._infos: dict = {}  # id(kernel spec) -> _KInfo
        self._parts = self._partitions(partitions) if partitions else None
        self._last = 0.0
        self._rr = 0
        self._sm_rr = 0
        self._threads_used = 0
        self._threads_total = spec.threads_per_sm * sms
        self._dispatch_due = False
        self._gen = 0  # bumped whenever resources are freed: a shape that did not fit retries
        self.env = None
        self.on_complete = None
        self.on_fail = None
        self.on_started = None
        self._arrival_cb = None
        self._arrive_cb = None
        self._timer_cb = None
        self.kernels_done = 0
        self.busy_s = 0.0  # integral of the fraction of thread slots in use
        self.comp_s = 0.0  # integral of the arithmetic demand
        self.mem_s = 0.0   # integral of the bandwidth demand

    def _grow(self, n: int) -> None:
        """Room for ``n`` more groups (the arrays are copied: rare)."""
        old = self._nslots
        new = old + n
        sms = self._sms
        slab = array("q", bytes(8 * sms * new))
        gd = array("d", bytes(8 * 3 * new))
        gi = array("q", bytes(8 * 2 * new))
        heap = array("q", bytes(8 * new))
        spare = array("q", bytes(8 * new))
        for i in range(sms * old):
            slab[i] = self._slab[i]
        for i in range(3 * old):
            gd[i] = self._gd[i]
        for i in range(2 * old):
            gi[i] = self._gi[i]
        for i in range(self._nheap):
            heap[i] = self._heap[i]
        nspare = self._nspare
        for i in range(nspare):
            spare[i] = self._spare[i]
        for slot in range(new - 1, old - 1, -1):   # new slots are taken lowest first
            spare[nspare] = slot
            nspare += 1
        self._slab = slab
        self._gd = gd
        self._gi = gi
        self._heap = heap
        self._spare = spare
        self._nspare = nspare
        placed = array("q", bytes(8 * new))   # (a pass may be placing: keep what it has)
        for i in range(old):
            placed[i] = self._placed[i]
        self._placed = placed
        self._gkern.extend([None] * n)
        self._nslots = new

    def start(self, env, on_complete, on_fail, on_started=None) -> None:
        """``on_started``: all blocks of the job's kernel have been dispatched."""
        self.env = env
        self.on_complete = on_complete
        self.on_fail = on_fail
        self.on_started = on_started
        # the callbacks the environment calls, looked up once (a subclass may override them)
        self._arrival_cb = self._arrival_dispatch
        self._arrive_cb = self._arrive
        self._timer_cb = self._on_timer

    @property
    def free(self) -> np.ndarray:
        """Free resources per SM, shape (4, SMs): a view that shares the device's memory."""
        return np.frombuffer(self._freebuf, dtype=np.int64).reshape(4, self._sms)

    def _groups(self) -> list:
        """The dispatched groups, by finish time: (kernel, blocks per SM, blocks) each."""
        out = []
        sms = self._sms
        for i in range(self._nheap):
            slot = self._heap[i]
            take = np.array([self._slab[slot * sms + s] for s in range(sms)], dtype=np.int64)
            out.append((self._gd[3 * slot], self._gi[2 * slot], self._gkern[slot], take,
                        self._gi[2 * slot + 1]))
        out.sort(key=lambda g: (g[0], g[1]))
        return [g[2:] for g in out]

    # -- shapes ---------------------------------------------------------------------------------
    def _shape(self, k) -> _Shape:
        """The block shape of kernel spec ``k`` (with ``cap``: blocks that fit on an idle GPU)."""
        key = (k.block, k.regs, k.smem)
        got = self._shapes.get(key)
        if got is None:
            spec = self.spec
            threads, regs, smem = k.block, k.block * k.regs, k.smem
            per_sm = spec.blocks_per_sm   # every resource a block uses limits it
            for limit, r in ((spec.threads_per_sm, threads), (spec.regs_per_sm, regs),
                             (spec.smem_per_sm, smem)):
                if r:
                    per_sm = min(per_sm, limit // r)
            got = self._shapes[key] = _Shape(threads, regs, smem, per_sm * spec.sms, 0,
                                             spec.sms)
        return got

    def _info(self, k, part=None) -> _KInfo:
        """What the device derives from kernel spec ``k``, on the whole GPU or on the MPS
        partition ``part`` (R8: ``(lo, hi, shapes, infos)``, from ``_partitions``)."""
        infos = self._infos if part is None else part[3]
        got = infos.get(id(k))
        if got is None or got.spec is not k:
            if len(infos) > 100_000:   # specs come and go in a long-lived daemon
                infos.clear()
            shape = self._shape(k)
            if part is None:
                got = _KInfo(k, shape, self.speed, shape.cap)
            else:
                key = (shape.threads, shape.regs, shape.smem)
                mine = part[2].get(key)
                if mine is None:
                    lo, hi = part[0], part[1]
                    mine = part[2][key] = _Shape(shape.threads, shape.regs, shape.smem,
                                                 shape.cap // self._sms * (hi - lo), lo, hi)
                got = _KInfo(k, mine, self.speed, shape.cap)
            infos[id(k)] = got
        return got

    def _partitions(self, shares: dict) -> dict:
        """R8: tenant -> (first SM, SM past its last, its shapes, its kernel infos), each
        tenant's SMs after the previous tenant's: ``share * SMs`` rounded so that the counts
        add up to ``round(sum of shares * SMs)`` (largest remainders first), at least one each,
        never past the last SM."""
        sms = self._sms
        total = sum(shares.values())
        if total > 1.0 + 1e-9 or any(not 0.0 < p <= 1.0 for p in shares.values()):
            raise ValueError(f"MPS partitions: each share must be in (0, 1] and they must sum "
                             f"to at most 1 (got {sorted(shares.values())}, sum {total:g})")
        if len(shares) > sms:
            raise ValueError(f"MPS partitions: {len(shares)} partitions on {sms} SMs: at most "
                             f"one per SM")
        tenants = list(shares)
        target = max(len(tenants), min(sms, round(total * sms)))
        # one SM each first, then the shares beyond it, whole SMs, then the SMs left over (or
        # too many: shares raised to one SM) by largest remainder, until the counts add up
        want = {t: max(0.0, shares[t] * sms - 1) for t in tenants}
        counts = {t: 1 + int(want[t]) for t in tenants}
        by_rest = sorted(tenants, key=lambda t: counts[t] - 1 - want[t])
        extra = target - sum(counts.values())
        while extra > 0:
            for t in by_rest[:extra]:
                counts[t] += 1
            extra = target - sum(counts.values())
        while extra < 0:
            for t in reversed(by_rest):
                if extra < 0 and counts[t] > 1:
                    counts[t] -= 1
                    extra += 1
        out, lo = {}, 0
        for t in tenants:
            out[t] = (lo, lo + counts[t], {}, {})
            lo += counts[t]
        return out

    def validate(self, kernels: list) -> None:
        for i, k in enumerate(kernels):
            if self._shape(k).cap == 0:
                raise ValueError(
                    f"kernel {i} ({k.name}): a block of {k.block} threads x {k.regs} registers "
                    f"with {k.smem} B shared memory does not fit on one {self.spec.name} SM "
                    f"({self.spec.regs_per_sm} registers, {self.spec.smem_per_sm} B)")

    def _room(self, shape: _Shape) -> bool:
        """Whether some SM has room for one block of ``shape`` now. Only the SMs that got
        resources back since the shape last found no room anywhere can have room."""
        free = self._free
        freed = self._freed
        sms = self._sms
        threads, regs, smem = shape.threads, shape.regs, shape.smem
        tried = shape.tried
        for s in range(shape.lo, shape.hi):
            if (freed[s] > tried and free[sms + s] > 0 and free[s] >= threads
                    and free[2 * sms + s] >= regs and free[3 * sms + s] >= smem):
                return True
        return False

    def _fit_into(self, shape: _Shape) -> int:
        """Blocks of ``shape`` each SM can take now, into the scratch ``_fitv``; their sum.
        (``min(blocks, threads // t, regs // r, smem // m)`` per SM; a division only where
        that resource may be the limit.) Only the shape's SMs ``lo`` to ``hi`` are written
        (an MPS partition's, R8): every reader reads only those."""
        free = self._free
        fit = self._fitv
        sms = self._sms
        threads, regs, smem = shape.threads, shape.regs, shape.smem
        lo, hi = shape.lo, shape.hi
        total = 0
        for s in range(lo, hi):
            f = free[sms + s]
            if f > 0:
                x = free[s]
                if x < threads * f:
                    f = x // threads
                if f > 0:
                    x = free[2 * sms + s]
                    if x < regs * f:
                        f = x // regs
                    if f > 0:
                        x = free[3 * sms + s]
                        if x < smem * f:
                            f = x // smem
            fit[s] = f
            total += f
        return total

    def _fit_place(self, shape: _Shape, row: int) -> int:
        """``_fit_into`` and the placement of all those blocks, in one pass: the blocks of
        ``shape`` each SM can take go to slab row ``row`` and are taken from the SMs. (A free
        slot's row is all zeros, ``_on_timer``: only SMs ``lo`` to ``hi`` are written.)"""
        free = self._free
        slab = self._slab
        sms = self._sms
        threads, regs, smem = shape.threads, shape.regs, shape.smem
        lo, hi = shape.lo, shape.hi
        total = 0
        for s in range(lo, hi):
            f = free[sms + s]
            if f > 0:
                x = free[s]
                if x < threads * f:
                    f = x // threads
                if f > 0:
                    x = free[2 * sms + s]
                    if x < regs * f:
                        f = x // regs
                    if f > 0:
                        x = free[3 * sms + s]
                        if x < smem * f:
                            f = x // smem
                        if f > 0:
                            free[s] -= threads * f
                            free[sms + s] -= f
                            free[2 * sms + s] -= regs * f
                            free[3 * sms + s] -= smem * f
                            total += f
            slab[row + s] = f if f > 0 else 0
        return total

    def fit_per_sm(self, k) -> np.ndarray:
        """Blocks of kernel spec ``k`` (or of a ``_Shape``) each SM could take now."""
        shape = k if isinstance(k, _Shape) else self._shape(k)
        self._fit_into(shape)
        return np.array([self._fitv[s] if shape.lo <= s < shape.hi else 0
                         for s in range(self._sms)], dtype=np.int64)

    def fits_now(self, k) -> bool:
        """Whether the SMs could take all blocks of kernel spec ``k`` now (a full wave of a
        multi-wave one): Paella's per-SM fit test, over every SM (not an MPS partition's: the
        dispatcher's test and MPS partitions are not used together)."""
        info = self._info(k)
        shape = info.shape
        need = info.resident
        if shape.tried == self._gen:      # nothing fits, and nothing was freed since
            return need <= 0
        if not self._room(shape):
            shape.tried = self._gen
            return need <= 0
        free = self._free
        sms = self._sms
        threads, regs, smem = shape.threads, shape.regs, shape.smem
        total = 0
        for s in range(shape.lo, shape.hi):
            f = free[sms + s]
            if f > 0:
                x = free[s]
                if x < threads * f:
                    f = x // threads
                if f > 0:
                    x = free[2 * sms + s]
                    if x < regs * f:
                        f = x // regs
                    if f > 0:
                        x = free[3 * sms + s]
                        if x < smem * f:
                            f = x // smem
            total += f
            if total >= need:
                return True
        return False

    # -- launch, arrival, dispatch --------------------------------------------------------------
    def launch(self, job: Job) -> None:
        """R1 and R7: kernel ``cur`` (a run: ``run_len`` kernels from it) on the job's
        stream, each after the one before, one launch floor apart; a shape that cannot fit
        fails the launch before any of it goes (asynchronously, like a CUDA launch error)."""
        kernels = job.model.kernels
        cur = job.cur
        n = job.run_len if job.run_len > 1 else 1
        part = None
        if self._parts is not None:
            part = self._parts.get(job.tenant)   # R8: its MPS partition, if it has one
        for i in range(cur, cur + n):
            if self._info(kernels[i], part).shape.cap == 0:
                self.env.call_at(self.env.now, self._launch_failed, (job, kernels[i].name))
                return
        stream = job.stream
        pred = self._tails.get(stream)
        if pred is not None and pred.done:
            pred = None
        qi = stream % self._nq
        durs = [] if n > 1 else None    # a run's durations, reported at its last kernel
        env = self.env
        now = env.now
        step = self.launch_delay
        for i in range(n):
            kern = _new_kernel(job, self._info(kernels[cur + i], part), qi, pred)
            if durs is not None:
                kern.durs = durs
                kern.last = i == n - 1
            if step > 0:   # R7: it reaches the hardware queue later
                at = now + (i + 1) * step
                if pred is not None and pred.due > at:   # a stream's launches arrive in order
                    at = pred.due
                kern.due = at
                env.call_at(at, self._arrive_cb, kern)
            else:
                self._arrive(kern)
            pred = kern
        self._tails[stream] = pred

    def _launch_failed(self, what: tuple) -> None:
        job, name = what
        self.on_fail(job, self.env.now, f"kernel {name}: launch shape does not fit an SM")

    def _arrive(self, kern: _Kernel) -> None:
        env = self.env
        now = env.now
        self._advance(now)
        kern.arrived = now
        qi = kern.qi
        q = self.queues[qi]
        q.append(kern)
        if len(q) == 1:  # only a new first kernel can start now
            self._heads[qi] = kern
            bit = 1 << qi
            self._nonempty |= bit
            self._ready |= bit
            if not self._dispatch_due:
                # after every arrival of this instant: kernels arriving together are placed
                # together and share the contention they create
                self._dispatch_due = True
                timer = self._arrival_spare
                if timer is not None:
                    self._arrival_spare = None
                    env.rearm(timer, now)
                else:
                    timer = env.schedule_at(now, self._arrival_cb)
                self._arrival_timer = timer

    def _arrival_dispatch(self) -> None:
        self._dispatch_due = False
        self._arrival_spare = self._arrival_timer   # it has run: armed again next time
        self._arrival_timer = None
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

    def _spread(self, n: int, lo: int, hi: int) -> None:
        """Turn the scratch ``_fitv`` of SMs ``lo`` to ``hi`` into the placement of ``n``
        blocks (fewer than fit), breadth-first: every SM gets one before any gets two; the SMs
        that get one more than the others are taken round-robin from ``_sm_rr``."""
        fit = self._fitv
        counts = self._counts
        sms = hi - lo
        top = len(counts) - 1
        for i in range(top + 1):
            counts[i] = 0
        for s in range(lo, hi):
            f = fit[s]
            counts[f if f < top else top] += 1
        # ge: SMs that can take more than ``level`` blocks
        level = 0
        placed = 0
        below = counts[0]
        ge = sms - below
        while placed + ge < n:
            placed += ge
            level += 1
            below += counts[level] if level < top else 0
            ge = sms - below
        rest = n - placed
        start = self._sm_rr % ge
        rank = 0
        for s in range(lo, hi):
            if fit[s] > level:
                r = rank - start
                if r < 0:
                    r += ge
                fit[s] = level + 1 if r < rest else level
                rank += 1
        self._sm_rr += rest

    def _take_slot(self) -> int:
        if self._nspare == 0:
            self._grow(self._nslots)
        self._nspare -= 1
        return self._spare[self._nspare]

    def _heap_push(self, slot: int) -> None:
        """heapq.heappush of (finish time, sequence) of ``slot``, the comparison inline."""
        heap = self._heap
        gd = self._gd
        gi = self._gi
        end = gd[3 * slot]
        seq = gi[2 * slot]
        pos = self._nheap
        self._nheap = pos + 1
        while pos > 0:
            parentpos = (pos - 1) >> 1
            parent = heap[parentpos]
            pend = gd[3 * parent]
            if end < pend or (end == pend and seq < gi[2 * parent]):
                heap[pos] = parent
                pos = parentpos
                continue
            break
        heap[pos] = slot

    def _heap_pop(self) -> int:
        """heapq.heappop: the slot that finishes first."""
        heap = self._heap
        gd = self._gd
        gi = self._gi
        n = self._nheap - 1
        self._nheap = n
        last = heap[n]
        if n == 0:
            return last
        ret = heap[0]
        lend = gd[3 * last]
        lseq = gi[2 * last]
        pos = 0
        child = 1
        while child < n:
            c = heap[child]
            right = child + 1
            if right < n:
                r = heap[right]
                if gd[3 * r] < gd[3 * c] or (gd[3 * r] == gd[3 * c] and gi[2 * r] < gi[2 * c]):
                    child = right
                    c = r
            if gd[3 * c] < lend or (gd[3 * c] == lend and gi[2 * c] < lseq):
                heap[pos] = c
                pos = child
                child = 2 * pos + 1
            else:
                break
        heap[pos] = last
        return ret

    def _dispatch(self, now: float, base: float | None = None) -> list | None:
        """R2-R4: serve the hardware queues round-robin. A queue's first kernel, unless it
        waits for its stream's predecessor (R1) or for a free grid slot (R3), places as many
        blocks as fit; once all are placed it leaves the queue and the next may go at once.
        Returns the kernels whose last block was dispatched (None: none)."""
        queues = self.queues
        heads = self._heads
        nq = self._nq
        sms = self._sms
        free = self._free
        fit = self._fitv
        gen = self._gen
        nplaced = 0
        started = None              # a list only when a kernel's last block went out
        t0 = now if base is None else base  # when the resources used here became free
        start = self._rr
        visit = self._ready
        self._ready = 0
        for i in range(nq):
            if not visit:
                break
            qi = start + i
            if qi >= nq:
                qi -= nq
            bit = 1 << qi
            if not visit & bit:
                continue
            visit &= ~bit
            self._waiting &= ~bit
            head = heads[qi]
            while head is not None:
                pred = head.pred
                if pred is not None and not pred.done:
                    self._waiting |= bit      # a dependent first kernel blocks its queue
                    break
                if head.start is None and self._grids >= self._max_grids:
                    break
                shape = head.shape
                if shape.tried == gen:
                    break
                if not self._room(shape):     # no SM can take a block of it
                    shape.tried = gen
                    break
                threads = shape.threads
                if head.left >= shape.cap:        # more than fits even on an idle GPU
                    slot = self._take_slot()
                    n = self._fit_place(shape, slot * sms)    # all that fits, in one pass
                else:
                    total = self._fit_into(shape)
                    n = head.left
                    lo, hi = shape.lo, shape.hi
                    if n >= total:
                        n = total
                    else:
                        self._spread(n, lo, hi)
                    slot = self._take_slot()
                    slab = self._slab             # (the slots may have grown)
                    row = slot * sms
                    regs, smem = shape.regs, shape.smem
                    for s in range(lo, hi):       # (the row's other SMs are zero)
                        b = fit[s]
                        slab[row + s] = b
                        if b:
                            free[s] -= threads * b
                            free[sms + s] -= b
                            free[2 * sms + s] -= regs * b
                            free[3 * sms + s] -= smem * b
                self._threads_used += n * threads
                head.left -= n
                head.running += n
                arrived = head.arrived
                begin = arrived if arrived > t0 else t0     # min(now, max(t0, arrived))
                if now < begin:
                    begin = now
                if head.start is None:
                    head.start = begin
                    self._grids += 1
                self._demand_m += n * head.bw
                self._demand_c += n * head.cw
                self._gi[2 * slot + 1] = n
                self._gd[3 * slot + 2] = begin
                self._gkern[slot] = head
                self._placed[nplaced] = slot
                nplaced += 1
                self._rr = (qi + 1) % nq
                if head.left:
                    break                      # no room for the rest of it: next queue
                q = queues[qi]
                q.popleft()                    # all its blocks dispatched: the queue moves on
                if started is None:
                    started = []
                started.append(head)
                head = q[0] if q else None
                heads[qi] = head
            if head is None:
                self._nonempty &= ~bit
        # groups placed together share the demand they create together (R6)
        over_m = self._demand_m - 1.0
        over_m = over_m if over_m > 0.0 else 0.0
        over_c = self._demand_c - 1.0
        over_c = over_c if over_c > 0.0 else 0.0
        quantum = self.quantum
        gd = self._gd
        for i in range(nplaced):
            slot = self._placed[i]
            head = self._gkern[slot]
            ideal = gd[3 * slot + 2] + head.block_work * (1.0 + head.mem_frac * over_m
                                                          + head.comp_frac * over_c)
            end = ideal
            if quantum:  # up to the grid: blocks ending together free together
                # math.ceil(x) * quantum, with ceil as -floor(-x) (+ 0.0: never -0.0)
                end = (-(-(ideal / quantum - 1e-9) // 1.0) + 0.0) * quantum
                if end < now:
                    end = now
            self._seq += 1
            self._gi[2 * slot] = self._seq
            gd[3 * slot] = end
            gd[3 * slot + 1] = ideal
            self._heap_push(slot)
        return started

    def _report_started(self, started: list | None) -> None:
        on_started = self.on_started
        if started is not None and on_started is not None:
            now = self.env.now
            for kern in started:
                if kern.last:
                    on_started(kern.job, now)

    def _reschedule(self) -> None:
        at = INF
        if self._nheap:
            at = self._gd[3 * self._heap[0]]
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at < INF:
            timer = self._timer_spare
            if timer is not None:
                self._timer_spare = None
                self.env.rearm(timer, at)
            else:
                timer = self.env.schedule_at(at, self._timer_cb)
            self._timer = timer

    def _on_timer(self) -> None:
        self._timer_spare = self._timer   # it has run: armed again next time
        self._timer = None
        self._timer_at = INF
        now = self.env.now
        self._advance(now)
        sms = self._sms
        free = self._free
        slab = self._slab
        freed = self._freed
        gd = self._gd
        gen = self._gen + 1   # the generation these frees begin
        finished_kernels = None
        freed_at = 0.0  # the exact time the resources freed: rounding does not add up
        while self._nheap:
            slot = self._heap[0]
            if gd[3 * slot] > now:
                break
            self._heap_pop()
            ideal = gd[3 * slot + 1]
            if ideal > freed_at:
                freed_at = ideal
            kern = self._gkern[slot]
            self._gkern[slot] = None
            shape = kern.shape
            threads, regs, smem = shape.threads, shape.regs, shape.smem
            row = slot * sms
            for s in range(shape.lo, shape.hi):   # a free slot's row is left all zeros
                b = slab[row + s]
                if b:
                    free[s] += threads * b
                    free[sms + s] += b
                    free[2 * sms + s] += regs * b
                    free[3 * sms + s] += smem * b
                    freed[s] = gen
                    slab[row + s] = 0
            self._spare[self._nspare] = slot
            self._nspare += 1
            n = self._gi[2 * slot + 1]
            self._threads_used -= n * threads
            self._demand_m -= n * kern.bw
            self._demand_c -= n * kern.cw
            kern.running -= n
            if kern.left == 0 and kern.running == 0:
                kern.done = True          # R1: its stream's next kernel may start
                self._grids -= 1
                if self._tails.get(kern.stream) is kern:
                    del self._tails[kern.stream]
                self._waiting &= ~(1 << kern.qi)   # its successor heads that queue
                if finished_kernels is None:
                    finished_kernels = []
                finished_kernels.append(kern)
        self._gen = gen
        if not self._nheap:  # no drift from summing floats
            self._demand_m = self._demand_c = 0.0
        self._ready |= self._nonempty & ~self._waiting
        started = self._dispatch(now, freed_at)
        self._reschedule()
        self._report_started(started)
        if finished_kernels is not None:
            on_complete = self.on_complete
            for kern in finished_kernels:
                self.kernels_done += 1
                durs = kern.durs
                if durs is None:
                    on_complete(kern.job, now, now - kern.start)
                else:   # a run: reported once, at its last kernel
                    durs.append(now - kern.start)
                    if kern.last:
                        on_complete(kern.job, now, sum(durs), durs)


class SimGpu(_SimGpuBase, Device):
    name = "sim"
    caps = Capabilities(runs=True)
    # ten times this daemon's measured cost of one dispatch (~12 us, ``gpusched bench
    # overhead``), as ``Device.default_quantum_s`` asks
    default_quantum_s = 120e-6

    def describe(self) -> str:
        return f"simulated {self.spec.name} ({self.spec.sms} SMs, {len(self.queues)} hw queues)"

    # -- introspection --------------------------------------------------------------------------
    def utilisation(self) -> float:
        return self._threads_used / self._threads_total

    def queued_kernels(self) -> int:
        return sum(len(q) for q in self.queues)
