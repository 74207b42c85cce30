"""A raw-CUDA model's checks against a compiled module and a GPU (the structs: ``wire/cuda.py``).

``validate_model`` refuses what could not launch, with a
message naming the launch, the kernel and the limit; ``kernel_specs`` gives the scheduler one
``KernelSpec`` per launch so the core and the simulated GPU reason about them like any kernel.
"""
from __future__ import annotations

import math

from scheduler_daemon.cuda.limits import LaunchLimits
from scheduler_daemon.wire.cuda import Buf, CudaLaunch, CudaModel, Scalar
from scheduler_daemon.wire.kernels import KernelSpec

_RANGES = {"int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1), "int64": (-2**63, 2**63 - 1),
           "uint64": (0, 2**64 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38


def _shape(d) -> str:
    return "x".join(map(str, d))


def validate_model(model: CudaModel, compiled, limits: LaunchLimits | None = None) -> None:
    """Raise ``ValueError`` for anything that could not launch on a device with ``limits``.
    ``compiled`` is the module (``nvrtc.Compiled``) built from the model."""
    lim = limits or LaunchLimits()
    if bool(model.source) == bool(model.ptx):
        raise ValueError("a CUDA model needs exactly one of source (CUDA C++) or ptx")
    if model.instrument and model.ptx:
        raise ValueError("instrument needs CUDA source: PTX given directly cannot be "
                         "instrumented")
    if model.instrument and not compiled.instrumented:
        raise ValueError("the model asks for instrumentation but the module was compiled "
                         "without it")
    names = [b.name for b in model.buffers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"buffer names must be unique: {', '.join(sorted(dup))}")
    total = sum(b.nbytes() for b in model.buffers)
    if total > lim.max_job_bytes:
        raise ValueError(f"the buffers of one job take {total} bytes; {lim.device} allows "
                         f"{lim.max_job_bytes} per job")
    for i, launch in enumerate(model.launches):
        _check_launch(i, launch, model, compiled, lim)


def _check_launch(i: int, launch: CudaLaunch, model: CudaModel, compiled,
                  lim: LaunchLimits) -> None:
    where = f"launch {i} ({launch.kernel})"
    if launch.kernel not in compiled.params:
        have = ", ".join(compiled.kernels) or "none"
        raise ValueError(f"{where}: the module has no kernel {launch.kernel!r} (it has: {have}; "
                         'kernels need extern "C" to keep their names)')
    grid, block = launch.dims()
    threads = math.prod(block)
    if threads > lim.max_threads_per_block:
        raise ValueError(f"{where}: block {_shape(block)} = {threads} threads, the device "
                         f"allows at most {lim.max_threads_per_block} per block")
    for axis, n, top in zip("xyz", block, lim.max_block):
        if n > top:
            raise ValueError(f"{where}: block {_shape(block)}: block {axis} is {n}, the device "
                             f"allows at most {top} (block limits {_shape(lim.max_block)})")
    for axis, n, top in zip("xyz", grid, lim.max_grid):
        if n > top:
            raise ValueError(f"{where}: grid {_shape(grid)}: grid {axis} is {n}, the device "
                             f"allows at most {top} (grid limits {_shape(lim.max_grid)})")
    if launch.smem > lim.smem_optin:
        raise ValueError(f"{where}: smem {launch.smem} bytes of dynamic shared memory, "
                         f"{lim.device} allows at most {lim.smem_optin} bytes per block "
                         f"({lim.smem_per_block} without opt-in)")
    _check_args(where, launch, model, compiled)


def _check_args(where: str, launch: CudaLaunch, model: CudaModel, compiled) -> None:
    params = list(compiled.params[launch.kernel])
    if compiled.instrumented:
        params = params[:-1]  # the progress counter, passed by the device
    if len(launch.args) != len(params):
        raise ValueError(f"{where}: {len(launch.args)} arguments given, the kernel takes "
                         f"{len(params)}")
    for j, (arg, p) in enumerate(zip(launch.args, params)):
        at = f"{where}: argument {j}"
        if not p.is_scalar:
            raise ValueError(f"{at}: the kernel takes a {p.describe()} by value; pass struct "
                             "fields as separate parameters or a buffer")
        if isinstance(arg, Buf):
            if arg.index >= len(model.buffers):
                raise ValueError(f"{at}: buffer index {arg.index} out of range (the model has "
                                 f"{len(model.buffers)} buffers)")
            if p.bits != 64 or p.kind == "f":
                raise ValueError(f"{at}: a buffer (pointer) is passed, the kernel takes "
                                 f"{p.describe()}")
            continue
        _check_scalar(at, arg, p)


def _check_scalar(at: str, arg: Scalar, p) -> None:
    bits = 32 if arg.dtype in ("int32", "uint32", "float32") else 64
    is_float = arg.dtype.startswith("float")
    if p.bits != bits or ((p.kind == "f") != is_float and p.kind != "b"):
        raise ValueError(f"{at}: a {arg.dtype} is passed, the kernel takes {p.describe()}")
    v = arg.value
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{at}: {arg.dtype} value {v!r} is not a number")  # noqa: TRY004
    if not is_float:
        if not isinstance(v, int):
            raise ValueError(f"{at}: {arg.dtype} value {v!r} is not an integer")
        lo, hi = _RANGES[arg.dtype]
        if not lo <= v <= hi:
            raise ValueError(f"{at}: {v} is out of range for {arg.dtype} ({lo}..{hi})")
    elif arg.dtype == "float32" and math.isfinite(v) and abs(v) > _FLOAT32_MAX:
        raise ValueError(f"{at}: {v} overflows float32")


def kernel_specs(model: CudaModel, func_attrs: dict | None = None) -> list[KernelSpec]:
    """One ``KernelSpec`` per launch (grid and block as products). ``func_attrs`` (kernel ->
    (registers per thread, static shared memory bytes)), from the driver, refines the SM demand."""
    out = []
    for launch in model.launches:
        grid, block = launch.dims()
        regs, static = (func_attrs or {}).get(launch.kernel, (32, 0))
        out.append(KernelSpec(name=launch.kernel[:256], est_us=launch.est_us,
                              grid=min(math.prod(grid), 2**31 - 1),
                              block=min(math.prod(block), 1024),
                              smem=min(launch.smem + static, 256 * 1024),
                              regs=max(1, min(int(regs), 255)), op=f"cuda:{launch.kernel}"[:256]))
    return out
