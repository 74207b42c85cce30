"""Compile a tenant's CUDA source in a sandboxed child process.

NVRTC runs a C++ front end on the tenant's text: a nested macro can make it work for minutes
and gigabytes, and an ``#include`` the source check missed would read a host file. So every
compile runs in ``python -I -m scheduler_daemon.cuda.sandbox``, a child that:

- has limits on CPU time (``RLIMIT_CPU``), memory (``RLIMIT_AS``) and files it may write
  (``RLIMIT_FSIZE`` 0), and is killed by the parent at its wall-clock limit;
- after loading NVRTC (and its built-in headers, by compiling a trivial kernel), drops every
  filesystem right with Landlock (Linux 5.13+; where the kernel has none, it says so in the log
  and only the limits and the source check of ``safety.py`` remain);
- starts in an empty directory with an empty environment, and answers on stdout.

The parent parses the PTX it gets back (kernels, parameters) itself; the child's answer is
msgpack of plain fields, never pickled.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile

import msgspec

from scheduler_daemon.cuda.errors import CudaCompileError, CudaUnavailable
from scheduler_daemon.wire.cuda import CudaModel

log = logging.getLogger("gpusched.device.cuda.sandbox")

TIME_S = 30.0
MEMORY_BYTES = 4 << 30


class _Request(msgspec.Struct):
    source: str
    options: list[str]
    instrument: bool
    arch: str | None
    time_s: float
    memory: int


class _Answer(msgspec.Struct):
    kind: str            # ok | compile | value | unavailable
    message: str = ""
    log: str = ""
    ptx: bytes = b""
    cubin: bytes | None = None
    arch: str = ""
    instrumented: bool = False
    landlock: bool = False


def compile_isolated(model: CudaModel, arch: str | None = None, time_s: float = TIME_S,
                     memory: int = MEMORY_BYTES):
    """The model's module, compiled in the sandbox. Raises what an in-process compile would
    (``CudaCompileError`` with the log, ``ValueError``, ``CudaUnavailable``), and a
    ``CudaCompileError`` when the compile passes its time or memory limit."""
    from scheduler_daemon.cuda.nvrtc import Compiled, load_ptx_text
    if model.ptx:                 # PTX needs no compiler: checked here, loaded by the driver
        from scheduler_daemon.cuda.build import compile_model
        return compile_model(model, arch)
    req = msgspec.msgpack.encode(_Request(model.source, list(model.options), model.instrument,
                                          arch, time_s, memory))
    with tempfile.TemporaryDirectory(prefix="gpusched-nvrtc-") as empty:
        try:
            p = subprocess.run([sys.executable, "-I", "-m", "scheduler_daemon.cuda.sandbox"],
                               input=req, capture_output=True, cwd=empty, timeout=time_s + 5,
                               env={"PATH": "/usr/bin:/bin", "LANG": "C"})
        except subprocess.TimeoutExpired:
            raise CudaCompileError(f"the CUDA source took longer than {time_s:g} s to compile: "
                                   "simplify it (deeply nested macros or templates?)") from None
    if p.returncode != 0 or not p.stdout:
        why = ("its CPU time limit" if p.returncode in (-9, -24) else
               "its memory limit" if b"MemoryError" in p.stderr or p.returncode == -6
               else f"exit status {p.returncode}")
        log.warning("sandbox: compile failed (%s): %s", why, p.stderr[-500:].decode("utf-8",
                                                                                   "replace"))
        raise CudaCompileError(f"the CUDA compiler stopped ({why}): simplify the source")
    ans = msgspec.msgpack.decode(p.stdout, type=_Answer)
    if not ans.landlock:
        log.warning("sandbox: this kernel has no Landlock: NVRTC ran with the source check "
                    "and resource limits only")
    if ans.kind == "compile":
        raise CudaCompileError(ans.message, ans.log)
    if ans.kind == "value":
        raise ValueError(ans.message)
    if ans.kind == "unavailable":
        raise CudaUnavailable(ans.message)
    parsed: Compiled = load_ptx_text(ans.ptx.decode("ascii"))   # kernels and params, ours
    return dataclasses.replace(parsed, log=ans.log, arch=ans.arch, cubin=ans.cubin,
                               instrumented=ans.instrumented)


# -- the child ---------------------------------------------------------------------------------
def _limit(resource_id: int, value: int) -> None:
    import resource
    soft, hard = resource.getrlimit(resource_id)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(resource_id, (value, value))


def _landlock() -> bool:
    """Drop every filesystem right of this process (Landlock ABI 1+); False if unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    sys_create, sys_restrict = 444, 446      # landlock_create_ruleset, landlock_restrict_self
    abi = libc.syscall(sys_create, None, 0, 1)   # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return False
    handled = (1 << 13) - 1 if abi < 2 else (1 << 14) - 1 if abi < 3 else (1 << 15) - 1

    class Attr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64)]
    attr = Attr(handled)
    fd = libc.syscall(sys_create, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if fd < 0:
        return False
    if libc.prctl(38, 1, 0, 0, 0) != 0:      # PR_SET_NO_NEW_PRIVS
        return False
    ok = libc.syscall(sys_restrict, fd, 0) == 0
    os.close(fd)
    return ok


def _child() -> None:
    import resource
    req = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=_Request)
    _limit(resource.RLIMIT_CPU, int(req.time_s) + 1)
    _limit(resource.RLIMIT_AS, req.memory)
    _limit(resource.RLIMIT_FSIZE, 0)
    from scheduler_daemon.cuda.build import compile_model
    from scheduler_daemon.cuda.nvrtc import compile_source
    try:   # load NVRTC and its built-in headers while files may still be read
        compile_source('extern "C" __global__ void warm() {}', "warm.cu")
    except Exception:
        pass
    sealed = _landlock()
    try:
        model = CudaModel(source=req.source, options=req.options, instrument=req.instrument,
                          buffers=[], launches=[])   # what compiling reads of it
        c = compile_model(model, req.arch)
        ans = _Answer("ok", log=c.log, ptx=c.ptx, cubin=c.cubin, arch=c.arch,
                      instrumented=c.instrumented, landlock=sealed)
    except CudaCompileError as e:
        ans = _Answer("compile", str(e), e.log, landlock=sealed)
    except CudaUnavailable as e:
        ans = _Answer("unavailable", str(e), landlock=sealed)
    except ValueError as e:
        ans = _Answer("value", str(e), landlock=sealed)
    sys.stdout.buffer.write(msgspec.msgpack.encode(ans))


if __name__ == "__main__":
    _child()
