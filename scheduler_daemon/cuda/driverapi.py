"""The CUDA driver API of cuda-python, with every failing call raised as ``CudaError``.

cuda-python returns ``(CUresult, *values)`` from each call; ``Checked(api).cuMemAlloc(n)``
returns the value(s) or raises ``CudaError`` naming the call and the CUresult
(``cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY``). ``api`` is the bindings module
(``cuda.bindings.driver``, or ``cuda.cuda`` of cuda-python < 12.6), or a stand-in in tests.
"""
from __future__ import annotations

from scheduler_daemon.cuda.errors import INSTALL_HINT, CudaError, CudaUnavailable


def driver_module():
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6
        except ImportError as e:
            raise CudaUnavailable(f"cuda-python is not installed ({e}): {INSTALL_HINT}") from None
    return driver


def error_name(api, err) -> str:
    try:
        e2, name = api.cuGetErrorName(err)
        if e2 == api.CUresult.CUDA_SUCCESS and name:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    return getattr(err, "name", str(err))


class Checked:
    """``Checked(api).NAME(*args)``: call ``api.NAME``, raise ``CudaError`` unless it succeeded,
    return the result values (``None``, one value, or a tuple)."""

    def __init__(self, api):
        self.api = api
        self._ok = api.CUresult.CUDA_SUCCESS

    def __getattr__(self, name: str):
        fn = getattr(self.api, name)
        ok, api = self._ok, self.api

        def call(*args):
            res = fn(*args)
            if res[0] != ok:
                raise CudaError(name, error_name(api, res[0]))
            rest = res[1:]
            return None if not rest else rest[0] if len(rest) == 1 else rest

        call.__name__ = name
        self.__dict__[name] = call  # cached: later lookups skip __getattr__
        return call


def init(api) -> Checked:
    """``cuInit(0)``; a machine without the driver library is ``CudaUnavailable``."""
    chk = Checked(api)
    try:
        chk.cuInit(0)
    except CudaError:
        raise
    except Exception as e:  # cuda-pathfinder: libcuda.so not found, and the like
        raise CudaUnavailable(f"no CUDA driver on this machine ({type(e).__name__}: {e})") from None
    return chk
