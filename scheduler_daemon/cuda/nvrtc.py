"""Compile CUDA C++ to PTX (and a cubin for a real device) with NVRTC, in process.

NVRTC needs no GPU, so the daemon and the tests compile on any machine with the ``cuda`` extra
(cuda-python and the NVRTC wheel). ``compute_XY`` targets give PTX only (the driver JIT-compiles
it, which needs a driver at least as new as this NVRTC); ``sm_XY`` targets add a cubin, which
loads on any driver that knows the GPU, so the driver backend compiles for ``sm_<its GPU>``.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from scheduler_daemon.cuda import ptx as ptxmod
from scheduler_daemon.cuda.errors import (
    INSTALL_HINT,
    CudaCompileError,
    CudaUnavailable,
    truncate_log,
)
from scheduler_daemon.cuda.safety import arch_option, check_options, check_source

log = logging.getLogger("gpusched.device.cuda.nvrtc")

DEFAULT_ARCH = "compute_80"


@dataclass(frozen=True)
class Compiled:
    """A compiled module: PTX text (bytes, no NUL), an optional cubin, the compiler log, the
    kernels' names and their parameters as the PTX declares them."""

    ptx: bytes
    log: str
    kernels: list[str]
    arch: str
    params: dict = field(default_factory=dict)  # kernel -> tuple[PtxParam, ...]
    cubin: bytes | None = None
    instrumented: bool = False

    @property
    def image(self) -> bytes:
        """What ``cuModuleLoadData`` takes: the cubin if there is one, else NUL-ended PTX."""
        return self.cubin if self.cubin else self.ptx + b"\0"


def _bindings():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # cuda-python < 12.6
        except ImportError as e:
            raise CudaUnavailable(f"cuda-python is not installed ({e}): {INSTALL_HINT}") from None
    return nvrtc


@functools.cache
def nvrtc_info() -> tuple[tuple[int, int], tuple[int, ...]]:
    """(NVRTC version, supported compute capabilities as 10*major+minor)."""
    nv = _bindings()
    try:
        err, major, minor = nv.nvrtcVersion()
        _ok(nv, err, "nvrtcVersion")
        err, archs = nv.nvrtcGetSupportedArchs()
        _ok(nv, err, "nvrtcGetSupportedArchs")
    except CudaUnavailable:
        raise
    except Exception as e:  # the bindings load libnvrtc on first use
        raise CudaUnavailable(f"libnvrtc could not be loaded ({type(e).__name__}: {e}): "
                              f"{INSTALL_HINT}") from None
    return (major, minor), tuple(int(a) for a in archs)


def _ok(nv, err, call: str) -> None:
    if err != nv.nvrtcResult.NVRTC_SUCCESS:
        name = getattr(err, "name", str(err))
        raise CudaUnavailable(f"{call} failed: {name}")


def default_arch() -> str:
    """``compute_80`` when this NVRTC supports it (any since 11.0), else its newest target."""
    archs = nvrtc_info()[1]
    return DEFAULT_ARCH if 80 in archs else f"compute_{max(archs)}"


def arch_for(cc: tuple[int, int], cubin: bool = True) -> str:
    """The target for a GPU of compute capability ``cc``: ``sm_XY`` (cubin + PTX) when NVRTC
    supports it, else PTX of the newest capability below it (the driver JITs that)."""
    want = cc[0] * 10 + cc[1]
    archs = nvrtc_info()[1]
    if want in archs:
        return f"{'sm' if cubin else 'compute'}_{want}"
    lower = [a for a in archs if a <= want]
    if not lower:
        raise CudaUnavailable(f"this NVRTC cannot target compute capability {cc[0]}.{cc[1]} "
                              f"(it supports {', '.join(map(str, archs))})")
    return f"compute_{max(lower)}"


def compile_source(source: str, name: str = "kernel.cu", options: list[str] | None = None,
                   arch: str | None = None) -> Compiled:
    """Compile CUDA C++ source. Raises ``CudaCompileError`` (with the log) if it does not
    compile, ``ValueError`` for refused source or options, ``CudaUnavailable`` without NVRTC."""
    options = list(options or [])
    check_source(source)
    check_options(options)
    nv = _bindings()
    nvrtc_info()
    chosen = arch_option(options)
    if chosen is None:
        chosen = arch or default_arch()
        options.append(f"--gpu-architecture={chosen}")
    opts = [o.encode() for o in options + ["-no-source-include"]]
    err, prog = nv.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    _ok(nv, err, "nvrtcCreateProgram")
    try:
        (res,) = nv.nvrtcCompileProgram(prog, len(opts), opts)
        text = _log(nv, prog)
        if res != nv.nvrtcResult.NVRTC_SUCCESS:
            # the log starts on the first line: "... for compute_80: k.cu(3): error: ..."
            raise CudaCompileError(f"the CUDA source {name} did not compile "
                                   f"({getattr(res, 'name', res)}) for {chosen}: "
                                   f"{truncate_log(text)}", text)
        ptx = _blob(nv, prog, nv.nvrtcGetPTXSize, nv.nvrtcGetPTX).rstrip(b"\0")
        cubin = None
        if chosen.startswith("sm_"):
            cubin = _blob(nv, prog, nv.nvrtcGetCUBINSize, nv.nvrtcGetCUBIN) or None
    finally:
        nv.nvrtcDestroyProgram(prog)
    params = ptxmod.entries(ptx.decode("ascii", "replace"))
    if not params:
        raise CudaCompileError(f"the CUDA source {name} compiled but defines no kernel: "
                               'declare them extern "C" __global__', text)
    log.debug("nvrtc: compiled %s for %s: kernels %s", name, chosen, ", ".join(params))
    return Compiled(ptx=ptx, log=text, kernels=list(params), arch=chosen, params=params,
                    cubin=cubin)


def load_ptx_text(ptx: str) -> Compiled:
    """PTX given directly (the driver JIT-compiles it). Raises ``ValueError`` if it is not PTX."""
    if not isinstance(ptx, str) or not ptx.isascii() or "\0" in ptx:
        raise ValueError("PTX must be ASCII text without NUL characters")
    ptxmod.check_text(ptx)
    params = ptxmod.entries(ptx)
    target = next((ln.split()[1].rstrip(",") for ln in ptx.splitlines()
                   if ln.strip().startswith(".target") and len(ln.split()) > 1), "")
    return Compiled(ptx=ptx.encode(), log="", kernels=list(params),
                    arch=target.replace("sm_", "compute_"), params=params)


def _log(nv, prog) -> str:
    err, size = nv.nvrtcGetProgramLogSize(prog)
    if err != nv.nvrtcResult.NVRTC_SUCCESS or size <= 1:
        return ""
    buf = b" " * size
    nv.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\0").decode("utf-8", "replace")


def _blob(nv, prog, size_fn, get_fn) -> bytes:
    err, size = size_fn(prog)
    _ok(nv, err, size_fn.__name__)
    if size == 0:
        return b""
    buf = b" " * size
    (err,) = get_fn(prog, buf)
    _ok(nv, err, get_fn.__name__)
    return buf
