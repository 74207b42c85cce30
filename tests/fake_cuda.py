"""A stand-in for cuda-python's driver module, to test ``CudaDriverDevice`` without a GPU.

A pure-Python double, for the device's own bookkeeping (buffers, argument packing, failures,
freeing). It is not strict: kernels run synchronously, stream waits are no-ops, there is no
per-thread context and any image loads. What a real driver would punish is checked against the
strict stand-in driver instead (tests/stubs/cuda_stub.c, loaded as libcuda.so.1 under the real
``cuda.bindings``: tests/test_cuda_stub.py).

Device memory is host memory (ctypes buffers), so copies are memmoves; ``cuLaunchKernel`` reads
the argument array the device built (as the real driver does) and runs a Python emulation of
the kernel at once; events are timestamps. Enums, flags and ``CUresult`` come from the real
bindings, so the device sees the same types. Every allocation is tracked: tests check that
nothing leaks and nothing is freed twice.
"""
from __future__ import annotations

import ctypes
import itertools
import threading
import time

import numpy as np
from cuda.bindings import driver as real

R = real.CUresult
OK = R.CUDA_SUCCESS


class FakeKernel:
    """``sizes``: bytes of each parameter; ``fn(fake, grid, block, args)`` with args decoded
    (pointers and integers as int, floats as float); it may return a CUresult (a fault)."""

    def __init__(self, name, params, fn, regs=32, static_smem=0, max_threads=1024):
        self.name, self.params, self.fn = name, params, fn
        self.regs, self.static_smem, self.max_threads = regs, static_smem, max_threads


class Obj:
    _ids = itertools.count(1)

    def __init__(self, kind):
        self.kind, self.id = kind, next(self._ids)
        self.t = None

    def __repr__(self):
        return f"<fake {self.kind} {self.id}>"


class FakeDriver:
    def __init__(self, kernels=(), name="Fake H100 80GB HBM3", cc=(9, 0), sms=132,
                 memory_pools=True):
        self.kernels = {k.name: k for k in kernels}
        self.name, self.cc, self.sms, self.memory_pools = name, cc, sms, memory_pools
        self.live: dict[int, ctypes.Array] = {}     # device allocations
        self.host: dict[int, ctypes.Array] = {}     # mapped pinned host allocations
        self.modules: set = set()
        self.launches: list = []                    # (kernel, grid, block, smem, stream, args)
        self.func_attrs: dict = {}
        self.sticky = None                          # a faulted kernel breaks the context
        self.lock = threading.Lock()
        self.fail_next: dict[str, R] = {}           # call name -> error to return once

    def __getattr__(self, name):  # enums, flags, helper types
        return getattr(real, name)

    def _fail(self, call):
        if self.sticky is not None:
            return self.sticky
        return self.fail_next.pop(call, None)

    # -- device -------------------------------------------------------------------------
    def cuGetErrorName(self, err):
        return OK, err.name.encode()

    def cuInit(self, flags):
        return (OK,)

    def cuDriverGetVersion(self):
        return OK, 12090

    def cuDeviceGetCount(self):
        return OK, 1

    def cuDeviceGet(self, i):
        return (OK, 0) if i == 0 else (R.CUDA_ERROR_INVALID_DEVICE, None)

    def cuDeviceGetName(self, n, dev):
        return OK, self.name.encode().ljust(n, b"\0")

    def cuDeviceGetPCIBusId(self, n, dev):
        return OK, b"0000:00:00.0"

    def cuDeviceTotalMem(self, dev):
        return OK, 80 * 2**30

    def cuDeviceGetAttribute(self, attr, dev):
        n = attr.name.removeprefix("CU_DEVICE_ATTRIBUTE_")
        values = {"COMPUTE_CAPABILITY_MAJOR": self.cc[0], "COMPUTE_CAPABILITY_MINOR": self.cc[1],
                  "MULTIPROCESSOR_COUNT": self.sms, "MAX_THREADS_PER_BLOCK": 1024,
                  "MAX_BLOCK_DIM_X": 1024, "MAX_BLOCK_DIM_Y": 1024, "MAX_BLOCK_DIM_Z": 64,
                  "MAX_GRID_DIM_X": 2**31 - 1, "MAX_GRID_DIM_Y": 65535, "MAX_GRID_DIM_Z": 65535,
                  "MAX_SHARED_MEMORY_PER_BLOCK": 48 * 1024,
                  "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN": 227 * 1024,
                  "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR": 228 * 1024,
                  "MAX_THREADS_PER_MULTIPROCESSOR": 2048, "MAX_BLOCKS_PER_MULTIPROCESSOR": 32,
                  "MAX_REGISTERS_PER_MULTIPROCESSOR": 65536,
                  "MEMORY_POOLS_SUPPORTED": int(self.memory_pools), "CAN_MAP_HOST_MEMORY": 1}
        return OK, values.get(n, 0)

    def cuDevicePrimaryCtxRetain(self, dev):
        return OK, Obj("ctx")

    def cuDevicePrimaryCtxRelease(self, dev):
        return (OK,)

    def cuCtxSetCurrent(self, ctx):
        return (OK,)

    def cuDeviceGetDefaultMemPool(self, dev):
        return OK, Obj("pool")

    def cuMemPoolSetAttribute(self, pool, attr, value):
        return (OK,)

    # -- streams and events -------------------------------------------------------------
    def cuStreamCreate(self, flags):
        return OK, Obj("stream")

    def cuStreamDestroy(self, s):
        return (OK,)

    def cuStreamSynchronize(self, s):
        return (self._fail("cuStreamSynchronize") or OK,)

    def cuStreamWaitEvent(self, s, ev, flags):
        return (OK,)

    def cuStreamQuery(self, s):      # kernels run at once here: every stream is idle
        return (self.sticky or OK,)

    def cuCtxSynchronize(self):
        return (self.sticky or OK,)

    def cuEventCreate(self, flags):
        return OK, Obj("event")

    def cuEventDestroy(self, ev):
        return (OK,)

    def cuEventRecord(self, ev, s):
        ev.t = time.perf_counter()
        return (OK,)

    def cuEventSynchronize(self, ev):
        return (self.sticky or OK,)

    def cuEventElapsedTime(self, a, b):
        return OK, max(1e-3, (b.t - a.t) * 1e3)

    # -- memory -------------------------------------------------------------------------
    def _alloc(self, n, table):
        buf = (ctypes.c_char * n)()
        addr = ctypes.addressof(buf)
        with self.lock:
            table[addr] = buf
        return addr

    def cuMemAlloc(self, n):
        err = self._fail("cuMemAlloc")
        return (err, None) if err else (OK, self._alloc(n, self.live))

    def cuMemAllocAsync(self, n, s):
        err = self._fail("cuMemAlloc")
        return (err, None) if err else (OK, self._alloc(n, self.live))

    def cuMemFree(self, p):
        with self.lock:
            return (OK if self.live.pop(int(p), None) is not None
                    else R.CUDA_ERROR_INVALID_VALUE,)

    def cuMemFreeAsync(self, p, s):
        return self.cuMemFree(p)

    def cuMemsetD8Async(self, p, v, n, s):
        ctypes.memset(int(p), v, n)
        return (OK,)

    def cuMemcpyHtoDAsync(self, dst, src, n, s):
        ctypes.memmove(int(dst), int(src), n)
        return (OK,)

    def cuMemcpyDtoHAsync(self, dst, src, n, s):
        ctypes.memmove(int(dst), int(src), n)
        return (OK,)

    def cuMemHostAlloc(self, n, flags):
        assert flags & real.CU_MEMHOSTALLOC_DEVICEMAP
        return OK, self._alloc(n, self.host)

    def cuMemHostGetDevicePointer(self, p, flags):
        return OK, p

    def cuMemFreeHost(self, p):
        return (OK if self.host.pop(int(p), None) is not None else R.CUDA_ERROR_INVALID_VALUE,)

    # -- modules and launches -----------------------------------------------------------
    def cuModuleLoadData(self, image):
        names = [k for k in self.kernels if k.encode() in bytes(image)]
        m = Obj("module")
        m.names = names
        self.modules.add(m)
        return OK, m

    def cuModuleUnload(self, m):
        self.modules.discard(m)
        return (OK,)

    def cuModuleGetFunction(self, m, name):
        name = name.decode()
        if name not in m.names:
            return R.CUDA_ERROR_NOT_FOUND, None
        f = Obj("function")
        f.kernel = self.kernels[name]
        return OK, f

    def cuFuncGetAttribute(self, attr, f):
        k = f.kernel
        return OK, {"CU_FUNC_ATTRIBUTE_NUM_REGS": k.regs,
                    "CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES": k.static_smem,
                    "CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK": k.max_threads}[attr.name]

    def cuFuncSetAttribute(self, f, attr, value):
        self.func_attrs[(f.kernel.name, attr.name)] = value
        return (OK,)

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        err = self._fail("cuLaunchKernel")
        if err:
            return (err,)
        k = f.kernel
        if bx * by * bz > k.max_threads or bz > 64:
            return (R.CUDA_ERROR_INVALID_VALUE,)
        argv = (ctypes.c_void_p * max(1, len(k.params))).from_address(params)
        args = []
        for i, kind in enumerate(k.params):
            ctype = {"ptr": ctypes.c_uint64, "i32": ctypes.c_int32, "u32": ctypes.c_uint32,
                     "f32": ctypes.c_float, "i64": ctypes.c_int64, "f64": ctypes.c_double}[kind]
            args.append(ctype.from_address(argv[i]).value)
        self.launches.append((k.name, (gx, gy, gz), (bx, by, bz), smem, stream, args))
        res = k.fn(self, (gx, gy, gz), (bx, by, bz), args)
        if res is not None:
            self.sticky = res
        return (OK,)


def f32(addr: int, n: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(addr))


def vec_add(fake, grid, block, args):
    a, b, c, n = args[:4]
    f32(c, n)[:] = f32(a, n) + f32(b, n)
    if len(args) > 4:  # instrumented: every block bumps the counter
        ctypes.c_uint64.from_address(args[4]).value += grid[0] * grid[1] * grid[2]


def scale(fake, grid, block, args):
    x, alpha, n = args
    f32(x, n)[:] *= alpha


def fault(fake, grid, block, args):
    return R.CUDA_ERROR_ILLEGAL_ADDRESS


KERNELS = [FakeKernel("vec_add", ["ptr", "ptr", "ptr", "i32"], vec_add),
           FakeKernel("scale", ["ptr", "f32", "i32"], scale),
           FakeKernel("fault", ["ptr"], fault)]
INSTRUMENTED = [FakeKernel("vec_add", ["ptr", "ptr", "ptr", "i32", "ptr"], vec_add)]
