"""The CUDA driver backend: raw kernels (``CudaModel``) on one GPU through cuda-python.

One primary context on device ``ordinal``, made current on every thread that calls the driver
(the current context is per thread: the daemon's, each waiter's, whoever closes the device); a
pool of non-blocking streams, each with a waiter thread that blocks in ``cuEventSynchronize``
(the GIL is released) on the launches of its stream in order, times them with
``cuEventElapsedTime`` and posts the completion to the ``Mailbox`` the daemon polls, as the
torch backend does (``wake_fd``/``collect``). The events are blocking-sync
(``CU_EVENT_BLOCKING_SYNC``): a waiter sleeps in the driver until its kernel is done instead of
spinning a CPU core for the kernel's whole duration (8 streams would otherwise keep up to 8
cores busy); the price is the OS wake-up, typically some tens of microseconds per kernel,
added to the completion latency.

A job is pinned to nothing: each launch goes on an idle stream of the pool, starting from
``job.stream``, except that a job's kernels that overlap (the experiment baselines dispatch them
all at once) stay on one stream, in order. A job's buffers are allocated and its inputs copied
on a copy stream in ``prepare`` (stream-ordered ``cuMemAllocAsync`` where the GPU has memory
pools, else ``cuMemAlloc``); its first launch waits on an event recorded after them. Outputs are
copied back on their own stream. Memory of a job the daemon drops without asking for outputs
(cancelled, failed, shed) is freed when the job's state is garbage collected: the free is
queued and done on the daemon's thread, ordered after the job's kernels on their stream.
``job_device_bytes`` tells the daemon what a job will hold (all its buffers, allocated at
submit or at its first launch), which it counts against the tenant's quota.

A module whose cubin does not run on this GPU (a tenant's ``-arch=sm_80`` on an H100:
``CUDA_ERROR_NO_BINARY_FOR_GPU``) is loaded again from its PTX, which the driver JIT-compiles.

``close`` stops the waiters, waits until the GPU has finished everything queued (kernels,
copies, frees) and only then unloads modules, frees the mapped counters and the jobs' memory
and releases the context; kernels still running after ``close_grace_s`` keep their memory (the
driver reclaims it at exit) rather than have it freed under them.

A failing launch fails its job only (``on_fail``). A faulting kernel (illegal address and the
like) leaves the context unusable, as on any CUDA process: that and every later job then fail
with a message saying to restart the daemon.
"""
from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
import weakref
from collections import deque

from scheduler_daemon.core.gpu_specs import GpuSpec
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.cuda.build import compile_model
from scheduler_daemon.cuda.checks import kernel_specs, validate_model
from scheduler_daemon.cuda.detect import CudaGpu, nvml_handle, query
from scheduler_daemon.cuda.driverapi import driver_module, init
from scheduler_daemon.cuda.errors import CudaError
from scheduler_daemon.cuda.nvrtc import Compiled, arch_for
from scheduler_daemon.devices.base import Capabilities, Device
from scheduler_daemon.devices.cuda_counters import CounterSlots
from scheduler_daemon.devices.mailbox import Mailbox
from scheduler_daemon.wire.cuda import Buf, CudaModel
from scheduler_daemon.wire.tensors import TensorMeta

log = logging.getLogger("gpusched.device.cuda")

_CTYPES = {"int32": ctypes.c_int32, "uint32": ctypes.c_uint32, "int64": ctypes.c_int64,
           "uint64": ctypes.c_uint64, "float32": ctypes.c_float, "float64": ctypes.c_double}
# errors after which the context is unusable (a kernel faulted)
_STICKY = frozenset({"CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED",
                     "CUDA_ERROR_ILLEGAL_INSTRUCTION", "CUDA_ERROR_MISALIGNED_ADDRESS",
                     "CUDA_ERROR_INVALID_ADDRESS_SPACE", "CUDA_ERROR_INVALID_PC",
                     "CUDA_ERROR_HARDWARE_STACK_ERROR", "CUDA_ERROR_ASSERT",
                     "CUDA_ERROR_ECC_UNCORRECTABLE", "CUDA_ERROR_CONTEXT_IS_DESTROYED"})
_DEFAULT_SMEM = 48 * 1024
# a cubin for another architecture: the module's PTX may still JIT for this GPU
_NO_BINARY = frozenset({"CUDA_ERROR_NO_BINARY_FOR_GPU", "CUDA_ERROR_INVALID_IMAGE"})


class _Launch:
    __slots__ = ("block", "blocks", "fn", "grid", "index", "kernel", "plan", "smem")

    def __init__(self, index, launch, fn):
        self.index, self.kernel, self.fn = index, launch.kernel, fn
        self.grid, self.block = launch.dims()
        self.smem = launch.smem
        self.blocks = self.grid[0] * self.grid[1] * self.grid[2]
        # per argument: a buffer index, or a ctypes scalar built once
        self.plan = [a.index if isinstance(a, Buf) else _CTYPES[a.dtype](a.value)
                     for a in launch.args]


class _Loaded:
    """A model loaded on the device: its module, functions and launches."""

    __slots__ = ("dead", "instrumented", "jobs", "key", "launches", "model", "module", "specs")

    def __init__(self, key, model, module, launches, specs, instrumented):
        self.key, self.model, self.module = key, model, module
        self.launches, self.specs, self.instrumented = launches, specs, instrumented
        self.jobs = 0        # live job states using it
        self.dead = False    # replaced or forgotten: unload when no job uses it


class _Mem:
    """A job's device allocations; ``stream`` is where their free is ordered."""

    __slots__ = ("loaded", "ptrs", "ready", "stream")

    def __init__(self, loaded, stream):
        self.ptrs: list[int] = []
        self.stream = stream
        self.loaded = loaded
        self.ready = None    # event after the inputs' copies, until the first launch waits


class _JobState:
    """What the device keeps for a job (it is the job's ``payload`` once prepared)."""

    __slots__ = (
        "__weakref__",
        "inflight",
        "loaded",
        "mem",
        "progress",
        "release",
        "slots",
        "stream",
    )

    def __init__(self, mem: _Mem, frees: queue.SimpleQueue):
        self.mem, self.loaded = mem, mem.loaded
        self.stream = -1       # pool stream of its kernels in flight
        self.inflight = 0
        # (counter slot, blocks) of each instrumented launch in flight, oldest first (a run
        # queues several; the oldest is the one running)
        self.slots: deque = deque()
        self.progress = None   # (blocks done, blocks) of the last instrumented launch
        self.release = weakref.finalize(self, frees.put, mem)


class _Run:
    """The launches of one dispatch of ``n`` kernels (the core's quantum): reported once, when
    the last has finished, with each one's duration, or ``error`` (a later launch of it
    failed) once the ``n`` that were queued have run; after a failure, not again."""

    __slots__ = ("durs", "error", "failed", "n")

    def __init__(self, n: int):
        self.n, self.durs, self.failed, self.error = n, [], False, None


class _Record:
    __slots__ = ("blocks_done", "end", "job", "launch", "run", "slot", "start", "state",
                 "stream")

    def __init__(self, job, state, launch, start, end, stream, slot, run=None):
        self.job, self.state, self.launch = job, state, launch
        self.start, self.end, self.stream, self.slot = start, end, stream, slot
        self.run = run
        self.blocks_done = None


class CudaDriverDevice(Device):
    name = "cuda"
    # runs: a dispatch's kernels are queued on one stream at once (not stoppable: the core
    # bounds them by the quantum and its 64-kernel cap)
    caps = Capabilities(cuda=True, runs=True)
    default_quantum_s = 250e-6   # as the torch backend on a GPU (not measured here: no GPU)
    close_grace_s = 10.0   # how long close waits for kernels still running

    def __init__(self, ordinal: int = 0, gpu: CudaGpu | None = None, spec: GpuSpec | None = None,
                 streams: int = 8, api=None):
        self.api = api or driver_module()
        self.chk = chk = init(self.api)
        self.ordinal = ordinal
        self.gpu = gpu or query(chk, ordinal)
        self.spec = spec or self.gpu.spec()
        self.limits = self.gpu.limits()
        self.arch = arch_for(self.gpu.cc)
        self._dev = chk.cuDeviceGet(ordinal)
        self._ctx = chk.cuDevicePrimaryCtxRetain(self._dev)
        self._tls = threading.local()
        self._bind()
        self._event_flags = self.api.CUevent_flags.CU_EVENT_BLOCKING_SYNC
        flags = self.api.CUstream_flags.CU_STREAM_NON_BLOCKING
        self._streams = [chk.cuStreamCreate(flags) for _ in range(max(1, streams))]
        self._copy_in = chk.cuStreamCreate(flags)
        self._copy_out = chk.cuStreamCreate(flags)
        self._pending = [0] * len(self._streams)
        self._rr = 0
        self._events: list = []
        self._models: dict = {}
        self._mems: set = set()   # job memory not freed yet (close frees what is left)
        self._frees: queue.SimpleQueue = queue.SimpleQueue()
        self._mailbox = Mailbox()
        self._counters = CounterSlots(chk)
        self._broken: str | None = None
        self._closed = False
        self._async_alloc = self.gpu.memory_pools and hasattr(self.api, "cuMemAllocAsync")
        if self._async_alloc:
            self._keep_pool_memory()
        self._nvml = _nvml_handle(self.gpu.pci_bus_id)
        self._waiters = [_Waiter(self, i) for i in range(len(self._streams))]
        for w in self._waiters:
            w.start()
        log.info("device: cuda driver on GPU %d: %s (cc %d.%d, %d SMs, %s), %d streams, "
                 "compiling for %s, scheduled as %s", ordinal, self.gpu.name, *self.gpu.cc,
                 self.gpu.sms, "memory pools" if self._async_alloc else "cuMemAlloc",
                 len(self._streams), self.arch, self.spec.name)

    def _bind(self) -> None:
        """Make the context current on the calling thread (the CUDA driver's current context is
        per thread; the daemon may build, run and close the device on different threads)."""
        if not getattr(self._tls, "bound", False):
            self.chk.cuCtxSetCurrent(self._ctx)
            self._tls.bound = True

    # -- models ---------------------------------------------------------------------------
    def describe(self) -> str:
        g = self.gpu
        return (f"cuda driver on GPU {self.ordinal}: {g.name} (cc {g.cc[0]}.{g.cc[1]}, "
                f"{g.sms} SMs; scheduled as {self.spec.name})")

    def validate(self, kernels: list) -> None:
        raise ValueError("the cuda backend runs raw CUDA models (source or PTX with buffers "
                         "and launches: register them as CUDA models); plain kernel lists "
                         "need --backend sim or torch")

    def compile(self, model: CudaModel) -> Compiled:
        """The model's module for this GPU (cubin for its architecture where NVRTC can)."""
        return compile_model(model, self.arch)

    def compile_target(self) -> str:
        return self.arch

    def load_cuda(self, key, model: CudaModel, compiled: Compiled | None = None) -> list:
        """Load a model's module (compiling it if ``compiled`` is None) and return one
        ``KernelSpec`` per launch. Raises ``ValueError`` for what this GPU cannot run."""
        self._bind()
        self._drain()
        compiled = compiled if compiled is not None else self.compile(model)
        validate_model(model, compiled, self.limits)
        chk, api = self.chk, self.api
        module = self._load_module(compiled)
        try:
            fns, attrs = {}, {}
            FA = api.CUfunction_attribute
            for name in {ln.kernel for ln in model.launches}:
                fn = chk.cuModuleGetFunction(module, name.encode())
                fns[name] = fn
                attrs[name] = (int(chk.cuFuncGetAttribute(FA.CU_FUNC_ATTRIBUTE_NUM_REGS, fn)),
                               int(chk.cuFuncGetAttribute(FA.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                                                          fn)),
                               int(chk.cuFuncGetAttribute(
                                   FA.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fn)))
            self._check_functions(model, fns, attrs)
        except BaseException:
            self._unload(module)
            raise
        launches = [_Launch(i, ln, fns[ln.kernel]) for i, ln in enumerate(model.launches)]
        specs = kernel_specs(model, {k: v[:2] for k, v in attrs.items()})
        old = self._models.pop(key, None)
        if old is not None:
            self._retire(old)
        self._models[key] = _Loaded(key, model, module, launches, specs, compiled.instrumented)
        log.info("device: loaded CUDA model %s: kernels %s, %d launches per job%s", key,
                 ", ".join(sorted(fns)), len(launches),
                 ", instrumented" if compiled.instrumented else "")
        return specs

    def _load_module(self, compiled: Compiled):
        """``cuModuleLoadData`` of the cubin, and of the PTX when the cubin is for another
        architecture (the driver JIT-compiles PTX for this GPU)."""
        chk = self.chk
        try:
            return chk.cuModuleLoadData(compiled.image)
        except CudaError as e:
            first = e
        if compiled.cubin and first.code in _NO_BINARY:
            try:
                module = chk.cuModuleLoadData(compiled.ptx + b"\0")
            except CudaError as e:
                raise ValueError(f"the module does not load on {self.gpu.name} (cc "
                                 f"{self.gpu.cc[0]}.{self.gpu.cc[1]}): its cubin for "
                                 f"{compiled.arch} gave {first.code} and its PTX {e.code}; "
                                 f"compile for sm_{self.gpu.cc[0]}{self.gpu.cc[1]} or an older "
                                 "compute_XY") from None
            log.info("device: the cubin for %s does not run on %s (%s): loaded its PTX "
                     "(JIT-compiled by the driver)", compiled.arch, self.gpu.name, first.code)
            return module
        raise ValueError(f"the module does not load on {self.gpu.name}: {first.code} (built "
                         f"for {compiled.arch or 'unknown target'})") from None

    def _check_functions(self, model: CudaModel, fns: dict, attrs: dict) -> None:
        """Limits only the loaded function knows: registers cap the block size, static shared
        memory adds to the dynamic; ask for opt-in shared memory where a launch needs it."""
        lim, need = self.limits, {}
        for i, ln in enumerate(model.launches):
            regs, static, max_threads = attrs[ln.kernel]
            _, block = ln.dims()
            threads = block[0] * block[1] * block[2]
            where = f"launch {i} ({ln.kernel})"
            if threads > max_threads:
                raise ValueError(f"{where}: block of {threads} threads, the kernel (using {regs} "
                                 f"registers per thread) allows at most {max_threads} per block "
                                 f"on {self.gpu.name}")
            if static + ln.smem > lim.smem_optin:
                raise ValueError(f"{where}: {static} bytes of static and {ln.smem} of dynamic "
                                 f"shared memory, {self.gpu.name} allows at most "
                                 f"{lim.smem_optin} per block")
            if static + ln.smem > lim.smem_per_block or ln.smem > _DEFAULT_SMEM:
                need[ln.kernel] = max(need.get(ln.kernel, 0), ln.smem)
        attr = self.api.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        for name, smem in need.items():
            try:
                self.chk.cuFuncSetAttribute(fns[name], attr, smem)
            except CudaError as e:
                raise ValueError(f"kernel {name}: {smem} bytes of dynamic shared memory refused "
                                 f"by the driver ({e.code})") from None

    def forget(self, key) -> None:
        """Drop a loaded model; its module is unloaded once no job uses it."""
        self._bind()
        old = self._models.pop(key, None)
        if old is not None:
            self._retire(old)

    def _retire(self, loaded: _Loaded) -> None:
        loaded.dead = True
        if loaded.jobs == 0:
            self._unload(loaded.module)

    def _unload(self, module) -> None:
        try:
            self.chk.cuModuleUnload(module)
        except CudaError as e:
            log.warning("device: cuModuleUnload: %s", e)

    # -- jobs -----------------------------------------------------------------------------
    def _loaded_for(self, job: Job) -> _Loaded:
        loaded = self._models.get(job.model.key)
        if loaded is None:
            raise ValueError(f"model {job.model.name!r} is not a CUDA model loaded on this "
                             "device: register it as a CUDA model")
        return loaded

    def job_device_bytes(self, model) -> int:
        """Device memory a job of ``model`` holds from its submit (or first launch) until its
        outputs are taken or it is dropped: every buffer. 0 for a model not loaded here."""
        loaded = self._models.get(model.key)
        return sum(b.nbytes() for b in loaded.model.buffers) if loaded is not None else 0

    def prepare(self, job: Job) -> None:
        """Allocate the job's buffers and copy its input tensors in (asynchronously)."""
        self._bind()
        self._drain()
        loaded = self._loaded_for(job)
        job.payload = self._new_state(loaded, list(job.payload or []))

    def _new_state(self, loaded: _Loaded, inputs: list) -> _JobState:
        model = loaded.model
        want = model.inputs()
        if len(inputs) != len(want):
            raise ValueError(f"the model takes {len(want)} input tensors "
                             f"({', '.join(model.buffers[i].name for i in want) or 'none'}); "
                             f"{len(inputs)} were sent")
        for n, (i, (meta, buf)) in enumerate(zip(want, inputs)):
            b = model.buffers[i]
            if meta.dtype != b.dtype or list(meta.shape) != list(b.shape):
                raise ValueError(f"input {n} ({b.name}): got {meta.dtype}{list(meta.shape)}, the "
                                 f"model's buffer is {b.dtype}{list(b.shape)}")
            if len(buf) != b.nbytes():
                raise ValueError(f"input {n} ({b.name}): {len(buf)} bytes, expected {b.nbytes()}")
        if self._broken:
            raise ValueError(self._broken_message())
        chk, s = self.chk, self._copy_in
        mem = _Mem(loaded, s)
        state = _JobState(mem, self._frees)   # from here on, a failure frees what was allocated
        self._mems.add(mem)
        loaded.jobs += 1
        try:
            for b in model.buffers:
                n = b.nbytes()
                mem.ptrs.append(self._alloc(n, s) if n else 0)
            feed = dict(zip(want, inputs))
            for i, b in enumerate(model.buffers):
                n = b.nbytes()
                if not n:
                    continue
                if i in feed:
                    src = feed[i][1]
                    chk.cuMemcpyHtoDAsync(mem.ptrs[i], _host_addr(src), n, s)
                else:
                    chk.cuMemsetD8Async(mem.ptrs[i], 0, n, s)
            mem.ready = self._event()
            chk.cuEventRecord(mem.ready, s)
        except CudaError as e:
            state.release()
            self._drain()
            self._note_sticky(e)
            raise ValueError(f"device memory for the job: {e}") from None
        return state

    def _alloc(self, n: int, stream) -> int:
        if self._async_alloc:
            return int(self.chk.cuMemAllocAsync(n, stream))
        return int(self.chk.cuMemAlloc(n))

    def launch(self, job: Job) -> None:
        try:
            self._bind()
            self._drain()
            if self._broken:
                raise CudaError("launch", self._broken)
            state = job.payload
            if not isinstance(state, _JobState):
                state = job.payload = self._new_state(self._loaded_for(job), [])
        except (CudaError, ValueError) as e:
            self._note_sticky(e)
            self._mailbox.post((None, job, 0.0, self._launch_message(job, job.cur, e)))
            return
        n = job.run_len
        run = _Run(n) if n > 1 else None
        for idx in range(job.cur, job.cur + max(1, n)):
            try:
                self._launch(job, state, idx, run)
            except (CudaError, ValueError) as e:
                self._note_sticky(e)
                msg = self._launch_message(job, idx, e)
                if run is not None and idx > job.cur:
                    # what of it is queued runs on: the job fails when that has finished,
                    # so the core never frees what the GPU still holds
                    run.n, run.error = idx - job.cur, msg
                else:
                    self._mailbox.post((None, job, 0.0, msg))
                return

    def _launch(self, job: Job, state: _JobState, idx: int, run: _Run | None) -> None:
        chk, loaded = self.chk, state.loaded
        if idx >= len(loaded.launches):
            raise ValueError(f"kernel {idx} of a model with {len(loaded.launches)} launches")
        ln = loaded.launches[idx]
        si = state.stream if state.inflight else self._pick(job)
        stream = self._streams[si]
        mem = state.mem
        if mem.ready is not None:
            chk.cuStreamWaitEvent(stream, mem.ready, 0)
            self._events.append(mem.ready)  # the wait is enqueued: the event may be re-recorded
            mem.ready = None
        values = [ctypes.c_uint64(mem.ptrs[p]) if isinstance(p, int) else p for p in ln.plan]
        slot = None
        if loaded.instrumented:
            slot, dptr = self._counters.take()
            values.append(ctypes.c_uint64(dptr))
        argv = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        start, end = self._event(), self._event()
        try:
            chk.cuEventRecord(start, stream)
            chk.cuLaunchKernel(ln.fn, *ln.grid, *ln.block, ln.smem, stream,
                               ctypes.addressof(argv), 0)
            chk.cuEventRecord(end, stream)
        except CudaError:
            self._events += [start, end]
            if slot is not None:
                self._counters.give(slot)
            raise
        state.stream, mem.stream = si, stream
        state.inflight += 1
        if slot is not None:
            state.slots.append((slot, ln.blocks))
        self._pending[si] += 1
        self._waiters[si].q.put(_Record(job, state, ln, start, end, si, slot, run))

    def _pick(self, job: Job) -> int:
        """An idle stream, starting from the job's stream number (round robin)."""
        n = len(self._streams)
        if job.stream >= 0:
            base = job.stream % n
        else:
            base = self._rr = (self._rr + 1) % n
        for off in range(n):
            if self._pending[(base + off) % n] == 0:
                return (base + off) % n
        return base

    def _event(self):
        if self._events:
            return self._events.pop()
        return self.chk.cuEventCreate(self._event_flags)

    def wake_fd(self) -> int:
        return self._mailbox.fileno()

    def collect(self) -> None:
        self._bind()
        now = self.env.now
        for rec, job, dur, err in self._mailbox.drain():
            run = None
            if rec is not None:
                self._finish_record(rec)
                run = rec.run
            if run is not None:    # one report per run: at its last kernel, or its failure
                if run.failed:
                    continue
                if err is not None:
                    run.failed = True
                    self.on_fail(job, now, err, len(run.durs))
                    continue
                run.durs.append(dur)
                if len(run.durs) == run.n:
                    if run.error is None:
                        self.on_complete(job, now, sum(run.durs), run.durs)
                    else:
                        self.on_fail(job, now, run.error, run.n)
                continue
            if err is None:
                self.on_complete(job, now, dur)
            else:
                self.on_fail(job, now, err)
        self._drain()

    def _finish_record(self, rec: _Record) -> None:
        self._pending[rec.stream] -= 1
        self._events += [rec.start, rec.end]
        st = rec.state
        st.inflight -= 1
        if rec.slot is not None:
            st.progress = (rec.blocks_done, rec.launch.blocks)
            if st.slots and st.slots[0][0] == rec.slot:
                st.slots.popleft()
            self._counters.give(rec.slot)

    def progress(self, job: Job) -> tuple[int, int] | None:
        """(blocks finished, blocks) of the job's instrumented launch in flight, else of its
        last one; None for a job of an uninstrumented model or before its first launch. The
        daemon reads it for STATUS (what is left of the kernel in flight)."""
        st = job.payload
        if not isinstance(st, _JobState):
            return None
        if st.slots:
            slot, blocks = st.slots[0]
            return min(self._counters.read(slot), blocks), blocks
        return st.progress

    def outputs(self, job: Job) -> list:
        """Copy the output buffers back and free the job's device memory."""
        st = job.payload
        if not isinstance(st, _JobState):
            return []
        self._bind()
        model, chk, s = st.loaded.model, self.chk, self._copy_out
        try:
            res = []
            for i in model.outputs():
                b = model.buffers[i]
                host = bytearray(b.nbytes())
                if len(host):
                    chk.cuMemcpyDtoHAsync(_host_addr(host), st.mem.ptrs[i], len(host), s)
                res.append((TensorMeta(dtype=b.dtype, shape=list(b.shape)), host))
            chk.cuStreamSynchronize(s)
        except CudaError as e:
            self._note_sticky(e)
            raise
        finally:
            if not st.inflight:
                st.mem.stream = s
            st.release()
            self._drain()
        return res

    def _drain(self) -> None:
        """Free the memory of jobs that are gone (on this, the daemon's, thread)."""
        while True:
            try:
                mem = self._frees.get_nowait()
            except queue.Empty:
                return
            if mem not in self._mems:   # already freed (close frees what is left at once)
                continue
            for p in mem.ptrs:
                if not p:
                    continue
                try:
                    if self._async_alloc:
                        self.chk.cuMemFreeAsync(p, mem.stream)
                    else:
                        self.chk.cuMemFree(p)
                except CudaError as e:
                    log.warning("device: freeing job memory: %s", e)
            mem.ptrs = []
            self._mems.discard(mem)
            if mem.ready is not None:
                self._events.append(mem.ready)
                mem.ready = None
            loaded = mem.loaded
            loaded.jobs -= 1
            if loaded.dead and loaded.jobs == 0:
                self._unload(loaded.module)

    # -- errors ---------------------------------------------------------------------------
    def _note_sticky(self, e: Exception) -> None:
        code = getattr(e, "code", "")
        if code in _STICKY and not self._broken:
            self._broken = code
            log.error("device: the CUDA context is unusable after %s (a kernel faulted): every "
                      "later job fails; restart the daemon", code)

    def _broken_message(self) -> str:
        return (f"the GPU's CUDA context is unusable after {self._broken} (a kernel faulted "
                "earlier): restart the daemon")

    def _launch_message(self, job: Job, idx: int, e: Exception) -> str:
        kernels = job.model.kernels
        name = kernels[idx].name if idx < len(kernels) else "?"
        if self._broken and getattr(e, "code", "") == self._broken:
            return f"kernel {idx} ({name}): {self._broken_message()}"
        return f"kernel {idx} ({name}) could not launch: {e}"

    # -- the rest -------------------------------------------------------------------------
    def _keep_pool_memory(self) -> None:
        """Let the default memory pool keep freed memory (up to a quarter of the GPU) instead
        of returning it at every synchronisation."""
        try:
            pool = self.chk.cuDeviceGetDefaultMemPool(self._dev)
            attr = self.api.CUmemPool_attribute.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
            self.chk.cuMemPoolSetAttribute(pool, attr, self.api.cuuint64_t(self.gpu.total_mem // 4))
        except Exception as e:
            log.debug("device: memory pool release threshold not set: %s", e)

    def utilisation(self) -> float:
        if self._nvml is not None:
            try:
                import pynvml
                return pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu / 100.0
            except Exception:
                pass
        return sum(1 for p in self._pending if p) / len(self._pending)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bind()
        for w in self._waiters:
            w.q.put(None)
        deadline = time.monotonic() + self.close_grace_s
        for w in self._waiters:
            w.join(timeout=max(0.0, deadline - time.monotonic()))
        self._drain()
        if self._quiet(deadline):
            for w in self._waiters:        # the GPU is idle: they return at once
                w.join(timeout=1.0)
            for rec, _job, _dur, _err in self._mailbox.drain():   # completions nobody collects
                if rec is not None:
                    self._finish_record(rec)
            for mem in list(self._mems):   # jobs still referenced somewhere: freed now
                self._frees.put(mem)
            self._drain()
            self._quiet(deadline + 1.0)     # the frees just queued
            self._teardown()
        else:
            log.error("device: close: kernels still running after %.0f s: their memory, "
                      "modules and counters are left to the driver's clean-up at exit (freeing "
                      "them under a running kernel would corrupt it)", self.close_grace_s)
        self._mailbox.close()
        if self._nvml is not None:
            try:
                import pynvml
                pynvml.nvmlShutdown()
            except Exception:
                pass

    def _quiet(self, deadline: float) -> bool:
        """Wait (until ``deadline``) for every stream to finish its work, then synchronise the
        context: True when nothing queued on the GPU can touch what close frees next."""
        chk = self.chk
        streams = self._streams + [self._copy_in, self._copy_out]
        while True:
            try:
                busy = [s for s in streams if not _idle(chk, s)]
            except CudaError:   # a faulted context: nothing runs any more
                return True
            if not busy:
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        try:
            chk.cuCtxSynchronize()
        except CudaError as e:
            log.debug("device: close: cuCtxSynchronize: %s", e)
        return True

    def _teardown(self) -> None:
        chk = self.chk
        for loaded in list(self._models.values()):
            self._unload(loaded.module)
        self._models.clear()
        self._counters.close()
        for obj, fn in ([(e, chk.cuEventDestroy) for e in self._events]
                        + [(s, chk.cuStreamDestroy) for s in
                           self._streams + [self._copy_in, self._copy_out]]):
            try:
                fn(obj)
            except CudaError as e:
                log.debug("device: close: %s", e)
        self._events.clear()
        try:
            chk.cuDevicePrimaryCtxRelease(self._dev)
        except CudaError as e:
            log.debug("device: close: %s", e)


class _Waiter(threading.Thread):
    """Waits for the launches of one stream, in order, and queues their completions."""

    def __init__(self, dev: CudaDriverDevice, index: int):
        super().__init__(name=f"gpusched-cuda-wait-{index}", daemon=True)
        self.dev = dev
        self.q: queue.SimpleQueue = queue.SimpleQueue()

    def run(self) -> None:
        dev, chk = self.dev, self.dev.chk
        try:
            chk.cuCtxSetCurrent(dev._ctx)
        except CudaError as e:
            log.error("device: waiter thread has no context: %s", e)
        while True:
            rec = self.q.get()
            if rec is None:
                return
            err, dur = None, 0.0
            try:
                chk.cuEventSynchronize(rec.end)
                dur = float(chk.cuEventElapsedTime(rec.start, rec.end)) / 1000.0
            except CudaError as e:
                dev._note_sticky(e)
                err = (f"kernel {rec.launch.index} ({rec.launch.kernel}) failed: "
                       + (dev._broken_message() if dev._broken else str(e)))
            except Exception as e:  # never let the waiter die: the job would hang
                err = f"kernel {rec.launch.index} ({rec.launch.kernel}): {type(e).__name__}: {e}"
            if rec.slot is not None:
                rec.blocks_done = dev._counters.read(rec.slot)
            dev._mailbox.post((rec, rec.job, dur, err))
            # not kept while this thread waits for the next launch: a cancelled job's state
            # (and its device memory) must go when the daemon drops the completion
            rec = None


def _idle(chk, stream) -> bool:
    """Whether a stream has finished its work (``cuStreamQuery``)."""
    try:
        chk.cuStreamQuery(stream)
    except CudaError as e:
        if e.code == "CUDA_ERROR_NOT_READY":
            return False
        raise
    return True


def _host_addr(buf) -> int:
    """The address of a contiguous host buffer (read-only ones too: received frames)."""
    import numpy as np
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


def _nvml_handle(pci_bus_id: str):
    """This GPU in NVML, by PCI bus id (NVML's indices are not CUDA's); None without NVML.
    An ``nvmlInit`` that found no such GPU is undone at once (close shuts NVML down only when
    a handle was kept)."""
    if not pci_bus_id:
        return None
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        return nvml_handle(pynvml, pci_bus_id)
    except Exception:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
        return None
